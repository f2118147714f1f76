//! The builder's `/out` → the five canonical files and the manifest, in bounded memory.
//!
//! Two stages overlap. **Collect** ([`super::collect`]) brings the four raw files out of the
//! stopped container one at a time onto disk, the longest chain first (`full.tar`, then
//! `rootfs.ext4`, `small.tar`, `initrd.img`). **Process** starts each file's work on its own
//! blocking thread as soon as the file has landed, reading it from disk:
//!
//! | raw file      | work                                              | outputs                                     |
//! |---------------|---------------------------------------------------|---------------------------------------------|
//! | `full.tar`    | canonical tar, then xz and cpio+gzip side by side | `full.rootfs.tar.xz`, `full.rootfs.cpio.gz` |
//! | `rootfs.ext4` | xz                                                | `rootfs.ext4.xz`                            |
//! | `small.tar`   | canonical tar, cpio+gzip                          | `rootfs.cpio.gz`                            |
//! | `initrd.img`  | canonical cpio+gzip                               | `initrd.cpio.gz`                            |
//!
//! **Memory.** The xz encoders are nearly all of it: each liblzma thread holds a match
//! finder, a dictionary and two block buffers (~165 MiB at preset 6, see
//! [`artifact::xz_thread_memory`]); gzip, cpio and tar work in a few MiB. So every xz
//! encoder leases its threads from one [`XzBudget`] shared by all the jobs of a run: as
//! many threads as both the free memory and the free cores allow, at least one, waiting
//! while another encoder holds what it needs. With the default budget the two preset-6
//! encoders of a rootfs take turns with one thread each, instead of running side by side
//! with two threads each (576 MB, issue 10). The bytes never depend on the thread count.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

use super::artifact::{self, Artifact};
use super::collect::{self, Transfer};
use super::plan::RootfsJob;
use crate::core::rootfs_lock::{ArtifactInfo, RootfsManifest};
use crate::fsutil;
use crate::layer::{self, Section};

/// The manifest's name in a stored rootfs directory.
pub const MANIFEST: &str = "manifest.json";

/// Moves a complete key directory `out` into place as `final_dir`. When another run stored
/// the same key first, that is fine: same inputs, same bytes (`out` is left to its temp dir).
pub fn commit_key_dir(out: &Path, final_dir: &Path) -> std::io::Result<()> {
    match std::fs::rename(out, final_dir) {
        Ok(()) => Ok(()),
        Err(_) if final_dir.join(MANIFEST).is_file() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Memory the xz encoders of a run may take at once unless `--xz-memory` says otherwise:
/// one thread at preset 6 by liblzma's account (165 MiB, worst case: incompressible data),
/// so the whole process stays under 300 MB whatever the config (two threads would be
/// 330 MiB at worst, and were 304 MiB in practice for `bookworm-kselftest`); two threads
/// at presets ≤ 3 (80–125 MiB each). With `-j2` the free core runs the other build.
pub const DEFAULT_XZ_MEMORY: u64 = 192 << 20;

/// How packing is set up (CLI and environment, resolved once by `main`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackSettings {
    pub transfer: Transfer,
    /// Bytes the xz encoders of a run may take at once.
    pub xz_memory: u64,
}

impl Default for PackSettings {
    fn default() -> PackSettings {
        PackSettings {
            transfer: Transfer::default(),
            xz_memory: DEFAULT_XZ_MEMORY,
        }
    }
}

impl PackSettings {
    /// The state every job of one run shares.
    pub fn resolve(&self) -> Packing {
        Packing::new(self.transfer, self.xz_memory)
    }
}

/// What every packing job of one run shares: download rules and the xz budget.
#[derive(Debug)]
pub struct Packing {
    pub transfer: Transfer,
    pub xz: XzBudget,
}

impl Packing {
    pub fn new(transfer: Transfer, xz_memory: u64) -> Packing {
        let cores = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        Packing {
            transfer,
            xz: XzBudget::new(xz_memory, cores),
        }
    }
}

/// A budget of memory and cores that xz encoders lease threads from.
#[derive(Debug)]
pub struct XzBudget {
    total: (u64, u32),
    free: Mutex<(u64, u32)>,
    freed: Condvar,
}

/// Threads leased from an [`XzBudget`], given back on drop.
#[derive(Debug)]
pub struct Lease<'a> {
    budget: &'a XzBudget,
    pub threads: u32,
    memory: u64,
}

impl XzBudget {
    pub fn new(memory: u64, cores: u32) -> XzBudget {
        let total = (memory, cores.max(1));
        XzBudget {
            total,
            free: Mutex::new(total),
            freed: Condvar::new(),
        }
    }

    /// Waits until at least one thread of `per_thread` bytes fits (or nothing is leased:
    /// a budget smaller than one thread still runs one encoder at a time), then takes as
    /// many as the free memory and cores allow.
    pub fn lease(&self, per_thread: u64) -> Lease<'_> {
        let mut free = self.free.lock().expect("xz budget lock");
        loop {
            let idle = *free == self.total;
            let by_memory = (free.0 / per_thread.max(1)).min(u32::MAX as u64) as u32;
            let threads = by_memory.min(free.1);
            if threads >= 1 || idle {
                let threads = threads.max(1);
                let memory = (per_thread * threads as u64).min(free.0);
                free.0 -= memory;
                free.1 = free.1.saturating_sub(threads);
                return Lease {
                    budget: self,
                    threads,
                    memory,
                };
            }
            free = self.freed.wait(free).expect("xz budget lock");
        }
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let mut free = self.budget.free.lock().expect("xz budget lock");
        free.0 += self.memory;
        free.1 = (free.1 + self.threads).min(self.budget.total.1);
        self.budget.freed.notify_all();
    }
}

/// The raw files of `/out`, in download order, and the work each one starts.
const RAW_FILES: [(&str, Step); 4] = [
    ("full.tar", full),
    ("rootfs.ext4", ext4),
    ("small.tar", small),
    ("initrd.img", initrd),
];

type Step = fn(&Ctx, &Path) -> anyhow::Result<Made>;

/// Collects `/out` of `container` into `raw` and makes the five files and the manifest in
/// `out`. Every step that started runs to its end before this returns, even when another
/// failed, so none is still writing when the caller removes the temp dir.
pub async fn pack<E: crate::engine::Engine>(
    engine: &E,
    container: &str,
    job: &RootfsJob,
    raw: &Path,
    out: &Path,
    packing: &Arc<Packing>,
    debs: BTreeMap<String, crate::core::names::Digest>,
) -> anyhow::Result<RootfsManifest> {
    let ctx = Arc::new(Ctx::of(job, out, packing));
    let _ = peak_rss::reset();
    let started = Instant::now();
    let mut work = Vec::new();
    let names = RAW_FILES.map(|(file, _)| file);
    let collected = collect::fetch_each(
        engine,
        container,
        &names,
        raw,
        &packing.transfer,
        |file, dest| {
            let step = RAW_FILES.iter().find(|(f, _)| *f == file).map(|(_, s)| *s);
            let (ctx, step) = (ctx.clone(), step.expect("a raw file's step"));
            work.push(tokio::task::spawn_blocking(move || step(&ctx, &dest)));
        },
    )
    .await;
    if let Ok(n) = &collected {
        tracing::info!(
            "{}: collected {} in {:.1}s, peak RSS {}",
            ctx.label,
            crate::printer::human_bytes(*n),
            started.elapsed().as_secs_f64(),
            peak_rss::show()
        );
    }
    let made = join_steps(work).await;
    collected?;
    let made = made?;
    tracing::info!(
        "{}: packed in {:.1}s, peak RSS {}",
        ctx.label,
        started.elapsed().as_secs_f64(),
        peak_rss::show()
    );
    manifest(job, made, debs, out)
}

/// Makes the five files and the manifest in `out` from the raw files already in `raw`
/// (a Swarm task packs its own `/out` where it built it: `kci-build rootfs-task`).
pub async fn pack_dir(
    job: &RootfsJob,
    raw: &Path,
    out: &Path,
    packing: &Arc<Packing>,
    debs: BTreeMap<String, crate::core::names::Digest>,
) -> anyhow::Result<RootfsManifest> {
    let ctx = Arc::new(Ctx::of(job, out, packing));
    let mut work = Vec::new();
    for (file, step) in RAW_FILES {
        let path = raw.join(file);
        if !path.is_file() {
            anyhow::bail!("the build made no {}", path.display());
        }
        let ctx = ctx.clone();
        work.push(tokio::task::spawn_blocking(move || step(&ctx, &path)));
    }
    let made = join_steps(work).await?;
    manifest(job, made, debs, out)
}

/// Waits for every step (none is left writing), then returns what they made or the first
/// error.
async fn join_steps(
    work: Vec<tokio::task::JoinHandle<anyhow::Result<Made>>>,
) -> anyhow::Result<Vec<Made>> {
    let mut made = Vec::new();
    let mut failed = None;
    for w in work {
        match w.await {
            Ok(Ok(m)) => made.push(m),
            Ok(Err(e)) => drop(failed.get_or_insert(e)),
            Err(e) => drop(failed.get_or_insert(anyhow::anyhow!("a packing step panicked: {e}"))),
        }
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(made),
    }
}

fn manifest(
    job: &RootfsJob,
    made: Vec<Made>,
    debs: BTreeMap<String, crate::core::names::Digest>,
    out: &Path,
) -> anyhow::Result<RootfsManifest> {
    let mut packages = BTreeMap::new();
    let mut artifacts = BTreeMap::new();
    for m in made {
        packages.extend(m.packages);
        for a in m.artifacts {
            artifacts.insert(
                a.name.clone(),
                ArtifactInfo {
                    sha256: a.sha256,
                    size: a.size,
                    url: None,
                },
            );
        }
    }
    let manifest = RootfsManifest {
        config: job.config.clone(),
        arch: job.arch.clone(),
        key: job.key.clone(),
        source_date_epoch: job.source_date_epoch,
        packages,
        artifacts,
        debs,
    };
    fsutil::atomic_write(
        &out.join(MANIFEST),
        &crate::core::key::canonical_json(&manifest),
    )?;
    Ok(manifest)
}

/// `full.tar` → `full.rootfs.tar.xz` and `full.rootfs.cpio.gz` (and the package list).
fn full(c: &Ctx, raw: &Path) -> anyhow::Result<Made> {
    let (tar, canonical) = c.canonical(raw)?;
    let (xz, gz) = std::thread::scope(|s| {
        let xz = s.spawn(|| c.xz(&tar, "full.rootfs.tar.xz"));
        let gz = c.timed("full.rootfs.cpio.gz", || {
            artifact::cpio_gz_from_tar(&tar, &c.out.join("full.rootfs.cpio.gz"), c.sde)
        });
        (xz.join(), gz)
    });
    let xz = xz.map_err(|_| anyhow::anyhow!("the xz of full.rootfs.tar.xz panicked"))?;
    Ok(Made {
        artifacts: vec![xz?, gz?],
        packages: canonical
            .dpkg_status
            .as_deref()
            .map(crate::dpkg::installed)
            .unwrap_or_default(),
    })
}

/// `rootfs.ext4` → `rootfs.ext4.xz` (the 1 GiB raw image is removed at once).
fn ext4(c: &Ctx, raw: &Path) -> anyhow::Result<Made> {
    let a = c.xz(raw, "rootfs.ext4.xz")?;
    std::fs::remove_file(raw)?;
    Ok(Made::file(a))
}

/// `small.tar` → `rootfs.cpio.gz`.
fn small(c: &Ctx, raw: &Path) -> anyhow::Result<Made> {
    let tar = c.canonical(raw)?.0;
    let a = c.timed("rootfs.cpio.gz", || {
        artifact::cpio_gz_from_tar(&tar, &c.out.join("rootfs.cpio.gz"), c.sde)
    })?;
    Ok(Made::file(a))
}

/// `initrd.img` (mkinitramfs output) → `initrd.cpio.gz`.
fn initrd(c: &Ctx, raw: &Path) -> anyhow::Result<Made> {
    let a = c.timed("initrd.cpio.gz", || {
        artifact::initrd(raw, &c.out.join("initrd.cpio.gz"), c.sde)
    })?;
    Ok(Made::file(a))
}

/// What one raw file's work made.
struct Made {
    artifacts: Vec<Artifact>,
    packages: BTreeMap<String, String>,
}

impl Made {
    fn file(a: Artifact) -> Made {
        Made {
            artifacts: vec![a],
            packages: BTreeMap::new(),
        }
    }
}

/// What every step needs, owned so it can move into a blocking task.
struct Ctx {
    label: String,
    out: PathBuf,
    sde: u64,
    preset: u32,
    packing: Arc<Packing>,
}

impl Ctx {
    fn of(job: &RootfsJob, out: &Path, packing: &Arc<Packing>) -> Ctx {
        Ctx {
            label: job.label(),
            out: out.to_owned(),
            sde: job.source_date_epoch,
            preset: job.xz_preset,
            packing: packing.clone(),
        }
    }

    /// Runs one step, tracing how long it took (`-v`).
    fn timed<T, E>(&self, step: &str, f: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let t = Instant::now();
        let r = f();
        tracing::info!(
            "{}: {step} in {:.1}s",
            self.label,
            t.elapsed().as_secs_f64()
        );
        r
    }

    /// `input` xz-compressed into `out/name`, with the threads leased from the budget.
    fn xz(&self, input: &Path, name: &str) -> anyhow::Result<Artifact> {
        let per_thread = artifact::xz_thread_memory(self.preset);
        let waited = Instant::now();
        let lease = self.packing.xz.lease(per_thread);
        tracing::info!(
            "{}: {name} with {} xz thread(s) of {} each, after waiting {:.1}s",
            self.label,
            lease.threads,
            crate::printer::human_bytes(per_thread),
            waited.elapsed().as_secs_f64()
        );
        let dest = self.out.join(name);
        Ok(self.timed(name, || {
            artifact::xz_file(input, &dest, self.preset, lease.threads)
        })?)
    }

    /// The canonical tar of a raw builder tar (the raw one is removed).
    fn canonical(&self, raw_tar: &Path) -> anyhow::Result<(PathBuf, layer::Canonical)> {
        let name = raw_tar.file_name().unwrap_or_default().to_string_lossy();
        let dest = raw_tar.with_extension("canonical.tar");
        let c = self.timed(&format!("canonical {name}"), || -> anyhow::Result<_> {
            let src = Section::whole(std::fs::File::open(raw_tar)?)?;
            let w = std::io::BufWriter::new(std::fs::File::create(&dest)?);
            let c = layer::canonicalize(src, self.sde, w)?;
            std::fs::remove_file(raw_tar)?;
            Ok(c)
        })?;
        Ok((dest, c))
    }
}

/// The process's peak resident set, per phase: Linux keeps the high-water mark in
/// `/proc/self/status` (VmHWM) and resets it when 5 is written to `/proc/self/clear_refs`.
/// Process-wide: with `-j2` two jobs' phases share one mark.
pub mod peak_rss {
    /// Starts a new phase; false where the kernel does not allow it.
    pub fn reset() -> bool {
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }

    /// VmHWM in bytes.
    pub fn get() -> Option<u64> {
        status_bytes("VmHWM:")
    }

    /// A `kB` field of `/proc/self/status`, in bytes.
    pub(super) fn status_bytes(field: &str) -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let kb = status
            .lines()
            .find_map(|l| l.strip_prefix(field))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse::<u64>()
            .ok()?;
        Some(kb * 1024)
    }

    pub fn show() -> String {
        get().map_or("unknown".into(), crate::printer::human_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn two_encoders_take_turns_when_the_budget_holds_two_threads() {
        let b = XzBudget::new(340 * MIB, 2);
        let first = b.lease(165 * MIB);
        assert_eq!(first.threads, 2);
        // The second waits until the first is done, then gets both threads.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            s.spawn(|| {
                let second = b.lease(165 * MIB);
                tx.send(second.threads).unwrap();
            });
            assert!(rx
                .recv_timeout(std::time::Duration::from_millis(200))
                .is_err());
            drop(first);
            assert_eq!(
                rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap(),
                2
            );
        });
    }

    #[test]
    fn threads_are_bounded_by_memory_and_by_cores() {
        // Plenty of memory, 2 cores: 2 threads. Plenty of cores, memory for 3: 3.
        assert_eq!(XzBudget::new(4096 * MIB, 2).lease(165 * MIB).threads, 2);
        assert_eq!(XzBudget::new(500 * MIB, 16).lease(165 * MIB).threads, 3);
        // Two encoders side by side when each fits one thread.
        let b = XzBudget::new(340 * MIB, 4);
        let (x, y) = (b.lease(165 * MIB), b.lease(10 * MIB));
        assert_eq!((x.threads, y.threads), (2, 1));
    }

    #[test]
    fn a_budget_below_one_thread_still_runs_one_encoder_at_a_time() {
        let b = XzBudget::new(50 * MIB, 2);
        let one = b.lease(165 * MIB);
        assert_eq!(one.threads, 1);
        drop(one);
        assert_eq!(b.lease(165 * MIB).threads, 1);
        assert_eq!(*b.free.lock().unwrap(), (50 * MIB, 2));
    }

    #[test]
    fn peak_rss_is_read_and_can_be_reset() {
        // Other tests run in this process and may have peaked higher already: assert what
        // holds whatever they do. 64 MiB touched here are resident, and the mark is never
        // below what is resident.
        let big = std::hint::black_box(vec![1u8; 64 << 20]);
        let resident = peak_rss::status_bytes("VmRSS:").unwrap();
        let peak = peak_rss::get().unwrap();
        assert!(resident >= 64 << 20, "VmRSS {resident}");
        assert!(peak >= resident, "VmHWM {peak} < VmRSS {resident}");
        assert!(peak_rss::reset());
        assert!(peak_rss::get().unwrap() >= 64 << 20);
        drop(big);
    }
}
