//! Bringing the builder's raw files out of its stopped container: one at a time, each
//! drained at disk speed into a file, a stalled or broken stream retried.
//!
//! Why not several at once, nor straight into a compressor: the Docker daemon holds a
//! container's lock for as long as one archive stream of it is open, so a second archive
//! request for the same container gets no answer until the first stream is closed — and
//! bollard gives up on a request whose answer takes longer than its timeout (120 s unless
//! `KCI_BUILD_DOCKER_TIMEOUT` says otherwise). Streaming `rootfs.ext4` straight into xz kept
//! its stream open for minutes, and the download queued behind it failed with "Timeout
//! error" whenever it came second (issue 10). Here no request is made while another is open,
//! no stream waits on a consumer, and the compressors read the files.
//!
//! A stream fails on lack of progress — no bytes for [`Transfer::stall`] — never on its
//! total duration. A transient failure (a stall, a cut or reset connection, a stream that
//! ends short, a 5xx from the daemon) downloads that file again from its start, up to
//! [`Transfer::attempts`] times; a permanent one (no such file, a full disk) fails at once.

use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

/// How patient a download is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transfer {
    /// A stream that yields no byte for this long is abandoned (and retried).
    pub stall: Duration,
    /// Attempts per file, the first included.
    pub attempts: u32,
    /// Pause before the second attempt; doubled before each next one.
    pub backoff: Duration,
}

impl Default for Transfer {
    fn default() -> Transfer {
        Transfer {
            stall: Duration::from_secs(120),
            attempts: 4,
            backoff: Duration::from_secs(2),
        }
    }
}

pub use crate::engine::ArchiveStream;
use crate::engine::Engine;

/// Why one attempt failed: the source (retried when transient) or the destination (never).
#[derive(Debug)]
enum Failed {
    Source(io::Error),
    Sink(io::Error),
    Invalid(String),
}

/// Downloads `/out/<file>` of the stopped `container` into `dir/<file>` for each of
/// `files`, in order, one at a time; calls `landed(file, path)` as soon as each is complete
/// on disk (it may start work on it: nothing it does can hold up a stream). Returns the
/// bytes collected; stops at the first file that cannot be downloaded.
pub async fn fetch_each<E: Engine>(
    engine: &E,
    container: &str,
    files: &[&str],
    dir: &Path,
    transfer: &Transfer,
    mut landed: impl FnMut(&str, PathBuf),
) -> anyhow::Result<u64> {
    let mut total = 0;
    for file in files {
        let (dest, path) = (dir.join(file), format!("/out/{file}"));
        let t = std::time::Instant::now();
        // One archive request at a time: the daemon holds the container's lock until a stream
        // is closed, so the next file is requested only when this one is drained.
        let open = || engine.archive(container, &path);
        let n = fetch(open, &format!("{path} of {container}"), &dest, transfer).await?;
        tracing::info!(
            "{container}: collected {file} ({}) in {:.1}s",
            crate::printer::human_bytes(n),
            t.elapsed().as_secs_f64()
        );
        total += n;
        landed(file, dest);
    }
    Ok(total)
}

/// Downloads the single file that `open` streams (a new request per attempt) into `dest`,
/// under `transfer`'s rules. Returns its size. `what` names it in errors and warnings.
pub async fn fetch(
    open: impl Fn() -> ArchiveStream,
    what: &str,
    dest: &Path,
    transfer: &Transfer,
) -> anyhow::Result<u64> {
    let mut pause = transfer.backoff;
    for attempt in 1..=transfer.attempts.max(1) {
        match fetch_once(open(), dest.to_owned(), transfer.stall).await {
            Ok(n) => return Ok(n),
            Err(Failed::Source(e)) if attempt < transfer.attempts && transient(&e) => {
                tracing::warn!(
                    "{what}: {e}; downloading it again in {}s (attempt {} of {})",
                    pause.as_secs_f64(),
                    attempt + 1,
                    transfer.attempts
                );
                tokio::time::sleep(pause).await;
                pause *= 2;
            }
            Err(Failed::Source(e)) => {
                anyhow::bail!(
                    "downloading {what}: {e} (attempt {attempt} of {})",
                    transfer.attempts
                )
            }
            // The io::Error stays in the chain: a full disk is told as such (exit 2).
            Err(Failed::Sink(e)) => {
                return Err(anyhow::Error::new(e).context(format!("writing {}", dest.display())))
            }
            Err(Failed::Invalid(m)) => anyhow::bail!("{what}: {m}"),
        }
    }
    unreachable!("the last attempt returns")
}

async fn fetch_once(stream: ArchiveStream, dest: PathBuf, stall: Duration) -> Result<u64, Failed> {
    let reader = tokio_util::io::SyncIoBridge::new(tokio_util::io::StreamReader::new(
        stall_limited(stream, stall),
    ));
    tokio::task::spawn_blocking(move || unwrap_single_file(reader, &dest))
        .await
        .map_err(|e| Failed::Source(io::Error::other(e)))?
}

/// `stream`, its errors as `io::Error`s, failing with `TimedOut` when no item comes for
/// `stall` (the first item included: it waits for the daemon's answer).
fn stall_limited(
    stream: ArchiveStream,
    stall: Duration,
) -> impl futures_util::Stream<Item = io::Result<Bytes>> + Send + Unpin {
    futures_util::stream::unfold(Some(stream), move |state| async move {
        let mut s = state?;
        match tokio::time::timeout(stall, s.next()).await {
            Ok(Some(Ok(b))) => Some((Ok(b), Some(s))),
            Ok(Some(Err(e))) => Some((Err(io::Error::other(e)), None)),
            Ok(None) => None,
            Err(_) => Some((
                Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no data for {}s", stall.as_secs_f64()),
                )),
                None,
            )),
        }
    })
    .boxed()
}

/// The archive endpoint wraps the file in a tar of one entry: its bytes go to `dest`.
fn unwrap_single_file(reader: impl Read, dest: &Path) -> Result<u64, Failed> {
    let mut archive = tar::Archive::new(reader);
    let mut entries = archive.entries().map_err(Failed::Source)?;
    let mut entry = match entries.next() {
        Some(e) => e.map_err(Failed::Source)?,
        None => {
            return Err(Failed::Source(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the daemon sent an empty archive",
            )))
        }
    };
    if entry.header().entry_type() != tar::EntryType::Regular {
        return Err(Failed::Invalid("not a regular file".into()));
    }
    let expected = entry.size();
    let mut out =
        BufWriter::with_capacity(1 << 20, std::fs::File::create(dest).map_err(Failed::Sink)?);
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let k = match entry.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failed::Source(e)),
        };
        out.write_all(&buf[..k]).map_err(Failed::Sink)?;
        n += k as u64;
    }
    if n != expected {
        return Err(Failed::Source(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("the stream ended after {n} of {expected} bytes"),
        )));
    }
    out.into_inner()
        .map_err(|e| Failed::Sink(e.into_error()))?
        .sync_all()
        .map_err(Failed::Sink)?;
    Ok(n)
}

/// Worth another attempt: the connection or the daemon failed, not the request.
fn transient(e: &io::Error) -> bool {
    if let Some(b) = e
        .get_ref()
        .and_then(|i| i.downcast_ref::<bollard::errors::Error>())
    {
        use bollard::errors::Error as B;
        return match b {
            B::DockerResponseServerError { status_code, .. } => *status_code >= 500,
            B::RequestTimeoutError | B::HyperResponseError { .. } | B::IOError { .. } => true,
            _ => false,
        };
    }
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut
            | io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
    )
}

#[cfg(test)]
mod tests;
