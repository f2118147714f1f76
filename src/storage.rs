//! Where finished rootfs artifacts go: a local directory, or KernelCI's storage API.
//!
//! KernelCI serves rootfs images from plain web storage laid out as
//! `<prefix>/<config>/<version>/<arch>/<file>`. Its storage API has no checksums and a
//! re-upload silently overwrites, so this module does the bookkeeping itself: a file already
//! served with the same size and sha256 is skipped, the rest are uploaded in one request, and
//! every uploaded file is read back from where it is served and compared before a sync counts
//! as done. The local backend keeps the same layout and writes every file atomically, so a
//! killed run never leaves half a file under its final name.
//!
//! The storage API protocol (the only parts of it this module relies on): one multipart
//! `POST {api}/upload` with header `Authorization: <token>`, a text field
//! `path=<prefix>/<config>/<version>` and one file part per artifact whose field name is
//! `<arch>/<file>`; the server stores each part at `<root>/<path>/<field name>`, and a plain
//! web server serves it read-only at `{public_url}/<config>/<version>/<arch>/<file>`.

use std::collections::HashSet;
use std::fmt;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt as _;
use sha2::Digest as _;

use crate::core::names::Digest;

/// The environment variable holding the storage API token.
pub const TOKEN_ENV: &str = "KCI_STORAGE_TOKEN";

/// The upload path prefix KernelCI uses for Debian rootfs images.
pub const DEFAULT_PREFIX: &str = "images/rootfs/debian";

/// Attempts per request when the server cannot be reached or answers 5xx.
const ATTEMPTS: u32 = 3;

/// One artifact to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadFile {
    /// Destination name below the version directory: `<arch>/<file>`.
    pub name: String,
    /// The local file to send.
    pub path: PathBuf,
    pub size: u64,
    pub sha256: Digest,
}

impl UploadFile {
    /// Describes a local file, reading it once to measure and hash it.
    pub fn from_file(name: &str, path: &Path) -> Result<UploadFile, StorageError> {
        let (size, sha256) = digest_file(path).map_err(|source| StorageError::Io {
            action: "reading",
            path: path.to_owned(),
            source,
        })?;
        Ok(UploadFile {
            name: name.to_owned(),
            path: path.to_owned(),
            size,
            sha256,
        })
    }
}

/// What a [`Storage::sync`] did, by file name (`<arch>/<file>`), in the order given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    pub uploaded: Vec<String>,
    pub skipped: Vec<String>,
}

/// Why storing artifacts failed. No variant ever carries the API token.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("the storage API needs a token: set {var}")]
    MissingToken { var: &'static str },
    #[error("storage API token is not usable as an HTTP header value (it must be visible ASCII)")]
    BadToken,
    #[error("storage destination `{dest}`: {reason}")]
    BadDestination { dest: String, reason: String },
    #[error("invalid storage name `{name}`: {reason}")]
    BadName { name: String, reason: String },
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{file}: local file is {actual} bytes, expected {expected} (it changed after it was measured)")]
    Changed {
        file: String,
        expected: u64,
        actual: u64,
    },
    #[error("{action} {url}: {source}")]
    Http {
        action: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the storage API at {url} refused the token (HTTP {status}); check KCI_STORAGE_TOKEN")]
    Refused { url: String, status: u16 },
    #[error("{action} {url}: HTTP {status}{detail}")]
    Status {
        action: String,
        url: String,
        status: u16,
        /// The start of the response body, prefixed with ": ", or empty.
        detail: String,
    },
    #[error(
        "{file} at {url} does not match what was sent: expected {expected_size} bytes {expected_sha256}, got {actual_size} bytes {actual_sha256}"
    )]
    Mismatch {
        file: String,
        url: String,
        expected_size: u64,
        expected_sha256: Digest,
        actual_size: u64,
        actual_sha256: Digest,
    },
}

impl StorageError {
    /// A storage that cannot be reached, fails, or loses bytes is the environment's; a
    /// missing or refused token and a bad destination or name are the input's.
    pub fn fault(&self) -> crate::error::Fault {
        use crate::error::Fault;
        match self {
            StorageError::MissingToken { .. }
            | StorageError::BadToken
            | StorageError::BadDestination { .. }
            | StorageError::BadName { .. }
            | StorageError::Refused { .. } => Fault::BadInput,
            StorageError::Status { status, .. }
                if (400..500).contains(status) && *status != 429 =>
            {
                Fault::BadInput
            }
            StorageError::Io { .. }
            | StorageError::Changed { .. }
            | StorageError::Http { .. }
            | StorageError::Status { .. }
            | StorageError::Mismatch { .. } => Fault::Environment,
        }
    }
}

/// A destination for rootfs artifacts.
#[derive(Debug)]
pub enum Storage {
    Local(LocalStorage),
    Api(ApiStorage),
}

/// A directory on this machine, laid out like the web storage.
#[derive(Debug)]
pub struct LocalStorage {
    root: PathBuf,
    public_url: String,
}

/// KernelCI's storage API plus the web server that serves what it stores.
#[derive(Debug)]
pub struct ApiStorage {
    api: String,
    public_url: String,
    prefix: String,
    token: Token,
    client: reqwest::Client,
}

/// The API token; its `Debug` never shows it.
struct Token(String);

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(<redacted>)")
    }
}

impl Storage {
    /// Opens a destination with the API token (`KCI_STORAGE_TOKEN`, resolved by
    /// [`crate::settings`]).
    ///
    /// `dest` is a directory (local backend) or an `http(s)://` storage API URL.
    /// `public_url` is where files are served: required for the API, optional for a directory
    /// (default: its `file://` URL). `prefix` is the upload path prefix, API only, default
    /// [`DEFAULT_PREFIX`].
    pub fn open_with_token(
        dest: &str,
        public_url: Option<&str>,
        prefix: Option<&str>,
        token: Option<String>,
    ) -> Result<Storage, StorageError> {
        let bad = |reason: &str| StorageError::BadDestination {
            dest: dest.to_owned(),
            reason: reason.to_owned(),
        };
        if dest.starts_with("http://") || dest.starts_with("https://") {
            let url = reqwest::Url::parse(dest).map_err(|e| bad(&e.to_string()))?;
            if url.query().is_some() || url.fragment().is_some() {
                return Err(bad("the API URL takes no query or fragment"));
            }
            let public_url = public_url
                .ok_or_else(|| bad("a public URL is needed to check what the server holds"))?;
            if !(public_url.starts_with("http://") || public_url.starts_with("https://")) {
                return Err(bad("the public URL must be http(s)"));
            }
            let prefix = prefix.unwrap_or(DEFAULT_PREFIX).trim_matches('/');
            if !prefix.is_empty() {
                check_relative("prefix", prefix)?;
            }
            let token = token.ok_or(StorageError::MissingToken { var: TOKEN_ENV })?;
            if reqwest::header::HeaderValue::from_str(&token).is_err() {
                return Err(StorageError::BadToken);
            }
            let client = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(30))
                .read_timeout(Duration::from_secs(300))
                .user_agent(concat!("kci-build/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|source| StorageError::Http {
                    action: "setting up a client for".into(),
                    url: dest.to_owned(),
                    source,
                })?;
            return Ok(Storage::Api(ApiStorage {
                api: dest.trim_end_matches('/').to_owned(),
                public_url: public_url.trim_end_matches('/').to_owned(),
                prefix: prefix.to_owned(),
                token: Token(token),
                client,
            }));
        }
        if dest.contains("://") {
            return Err(bad("expected a directory or an http(s) URL"));
        }
        if dest.is_empty() {
            return Err(bad("empty"));
        }
        let root = std::path::absolute(dest).map_err(|e| bad(&e.to_string()))?;
        let public_url = match public_url {
            Some(u) => u.trim_end_matches('/').to_owned(),
            None => format!("file://{}", root.display())
                .trim_end_matches('/')
                .to_owned(),
        };
        Ok(Storage::Local(LocalStorage { root, public_url }))
    }

    /// The public URL of `name` (`<arch>/<file>`) in `dir` (`<config>/<version>`).
    pub fn url(&self, dir: &str, name: &str) -> String {
        let base = match self {
            Storage::Local(l) => &l.public_url,
            Storage::Api(a) => &a.public_url,
        };
        format!("{base}/{}/{name}", dir.trim_matches('/'))
    }

    /// The bytes of a small file (a manifest) in `dir`, `None` when it is not there.
    pub async fn fetch(&self, dir: &str, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let dir = checked_dir(dir)?;
        check_relative("file name", name)?;
        match self {
            Storage::Local(l) => {
                let path = l.root.join(dir).join(name);
                match std::fs::read(&path) {
                    Ok(b) => Ok(Some(b)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(StorageError::Io {
                        action: "reading",
                        path,
                        source,
                    }),
                }
            }
            Storage::Api(a) => {
                let url = a.public(dir, name);
                let action = format!("downloading {name}:");
                let resp = a.send(&action, &url, || Ok(a.client.get(&url))).await?;
                match resp.status().as_u16() {
                    404 | 410 => Ok(None),
                    200 => resp
                        .bytes()
                        .await
                        .map(|b| Some(b.to_vec()))
                        .map_err(|source| StorageError::Http {
                            action,
                            url: url.clone(),
                            source,
                        }),
                    status => Err(status_error(action, &url, status, String::new())),
                }
            }
        }
    }

    /// Size and sha256 of a file in `dir` as served, `None` when absent. The API backend
    /// downloads it from the public URL: a HEAD's `Content-Length` says nothing of the bytes.
    pub async fn served(
        &self,
        dir: &str,
        name: &str,
    ) -> Result<Option<(u64, Digest)>, StorageError> {
        let dir = checked_dir(dir)?;
        check_relative("file name", name)?;
        match self {
            Storage::Local(l) => {
                let path = l.root.join(dir).join(name);
                match digest_file(&path) {
                    Ok(found) => Ok(Some(found)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
                    Err(source) => Err(StorageError::Io {
                        action: "reading",
                        path,
                        source,
                    }),
                }
            }
            Storage::Api(a) => a.download_digest(&a.public(dir, name), name).await,
        }
    }

    /// The size of a file in `dir` as served (HEAD for the API), `None` when absent.
    pub async fn size(&self, dir: &str, name: &str) -> Result<Option<u64>, StorageError> {
        let dir = checked_dir(dir)?;
        check_relative("file name", name)?;
        match self {
            Storage::Local(l) => Ok(std::fs::metadata(l.root.join(dir).join(name))
                .ok()
                .filter(|m| m.is_file())
                .map(|m| m.len())),
            Storage::Api(a) => {
                let url = a.public(dir, name);
                let action = format!("checking {name}:");
                let resp = a.send(&action, &url, || Ok(a.client.head(&url))).await?;
                match resp.status().as_u16() {
                    404 | 410 => Ok(None),
                    200 => Ok(resp
                        .headers()
                        .get(reqwest::header::CONTENT_LENGTH)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<u64>().ok())),
                    status => Err(status_error(action, &url, status, String::new())),
                }
            }
        }
    }

    /// Makes `dir` (`<config>/<version>`) hold these files.
    ///
    /// A file already there with the same size and sha256 is skipped; the others are stored
    /// (the API backend sends them all in one multipart upload, streamed from disk), then each
    /// stored file is read back from where it is served and compared, size and sha256. Files in
    /// `dir` that are not listed are left alone: neither backend deletes.
    pub async fn sync(&self, dir: &str, files: &[UploadFile]) -> Result<SyncReport, StorageError> {
        let dir = checked_dir(dir)?;
        let mut seen = HashSet::new();
        for f in files {
            check_relative("file name", &f.name)?;
            if !seen.insert(f.name.as_str()) {
                return Err(StorageError::BadName {
                    name: f.name.clone(),
                    reason: "listed twice".into(),
                });
            }
        }
        match self {
            Storage::Local(l) => {
                let (root, dir, files) = (l.root.clone(), dir.to_owned(), files.to_vec());
                tokio::task::spawn_blocking(move || local_sync(&root, &dir, &files))
                    .await
                    .expect("local sync panicked")
            }
            Storage::Api(a) => a.sync(dir, files).await,
        }
    }
}

/// Size and sha256 of a file, read in pieces.
pub fn digest_file(path: &Path) -> io::Result<(u64, Digest)> {
    let mut file = File::open(path)?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((size, Digest::from_hash(hasher.finalize().as_slice())))
}

/// Accepts `a/b/c` made of `[A-Za-z0-9._+~-]` components, none empty nor starting with `.`:
/// safe as a path below a root and as a URL path without escaping.
/// `dir` without surrounding slashes, once it is known to stay below the root.
fn checked_dir(dir: &str) -> Result<&str, StorageError> {
    let dir = dir.trim_matches('/');
    check_relative("directory", dir)?;
    Ok(dir)
}

fn check_relative(what: &str, s: &str) -> Result<(), StorageError> {
    let bad = |reason: String| StorageError::BadName {
        name: s.to_owned(),
        reason,
    };
    if s.is_empty() {
        return Err(bad(format!("the {what} is empty")));
    }
    for part in s.split('/') {
        if part.is_empty() {
            return Err(bad(format!("the {what} has an empty path component")));
        }
        if part.starts_with('.') {
            return Err(bad(format!("the {what} has a component starting with `.`")));
        }
        if let Some(c) = part
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "._+~-".contains(*c)))
        {
            return Err(bad(format!("the {what} contains {c:?}")));
        }
    }
    Ok(())
}

fn local_sync(root: &Path, dir: &str, files: &[UploadFile]) -> Result<SyncReport, StorageError> {
    let mut report = SyncReport::default();
    let base = root.join(dir);
    for f in files {
        let target = base.join(&f.name);
        if local_matches(&target, f)? {
            report.skipped.push(f.name.clone());
            continue;
        }
        local_copy(f, &target)?;
        report.uploaded.push(f.name.clone());
    }
    for name in &report.uploaded {
        let f = files.iter().find(|f| &f.name == name).expect("listed");
        let target = base.join(name);
        let (size, sha) = digest_file(&target).map_err(|source| StorageError::Io {
            action: "reading back",
            path: target.clone(),
            source,
        })?;
        check_same(f, &target.display().to_string(), size, sha)?;
    }
    Ok(report)
}

fn local_matches(target: &Path, f: &UploadFile) -> Result<bool, StorageError> {
    let io_err = |source| StorageError::Io {
        action: "checking",
        path: target.to_owned(),
        source,
    };
    match std::fs::metadata(target) {
        Ok(m) if m.is_file() && m.len() == f.size => {
            let (size, sha) = digest_file(target).map_err(io_err)?;
            Ok(size == f.size && sha == f.sha256)
        }
        Ok(_) => Ok(false),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err(e)),
    }
}

/// Copies into a temp file next to `target`, checks what was copied, then renames it into
/// place: `target` is either untouched or complete and correct.
fn local_copy(f: &UploadFile, target: &Path) -> Result<(), StorageError> {
    let dir = target.parent().expect("target is below the root");
    let io_err = |action, path: &Path| {
        let path = path.to_owned();
        move |source| StorageError::Io {
            action,
            path,
            source,
        }
    };
    std::fs::create_dir_all(dir).map_err(io_err("creating", dir))?;
    let mut src = File::open(&f.path).map_err(io_err("reading", &f.path))?;
    let mut tmp =
        crate::fsutil::temp_for(dir, target).map_err(io_err("creating a temp file in", dir))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = src.read(&mut buf).map_err(io_err("reading", &f.path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        tmp.write_all(&buf[..n])
            .map_err(io_err("writing", tmp.path()))?;
        size += n as u64;
    }
    let sha = Digest::from_hash(hasher.finalize().as_slice());
    check_same(f, &f.path.display().to_string(), size, sha)?;
    crate::fsutil::persist(tmp, target).map_err(io_err("writing", target))
}

fn check_same(f: &UploadFile, url: &str, size: u64, sha: Digest) -> Result<(), StorageError> {
    if size == f.size && sha == f.sha256 {
        return Ok(());
    }
    Err(StorageError::Mismatch {
        file: f.name.clone(),
        url: url.to_owned(),
        expected_size: f.size,
        expected_sha256: f.sha256.clone(),
        actual_size: size,
        actual_sha256: sha,
    })
}

/// What the public web server holds at a URL.
enum Remote {
    Missing,
    Same,
    Different,
}

impl ApiStorage {
    async fn sync(&self, dir: &str, files: &[UploadFile]) -> Result<SyncReport, StorageError> {
        let mut report = SyncReport::default();
        let mut missing = Vec::new();
        for f in files {
            match self.remote(dir, f).await? {
                Remote::Same => report.skipped.push(f.name.clone()),
                Remote::Missing | Remote::Different => {
                    report.uploaded.push(f.name.clone());
                    missing.push(f);
                }
            }
        }
        if missing.is_empty() {
            return Ok(report);
        }
        self.upload(dir, &missing).await?;
        for f in missing {
            let url = self.public(dir, &f.name);
            let (size, sha) =
                self.download_digest(&url, &f.name)
                    .await?
                    .ok_or_else(|| StorageError::Status {
                        action: format!("verifying {}:", f.name),
                        url: url.clone(),
                        status: 404,
                        detail: ": not served after upload".into(),
                    })?;
            check_same(f, &url, size, sha)?;
        }
        Ok(report)
    }

    fn public(&self, dir: &str, name: &str) -> String {
        format!("{}/{dir}/{name}", self.public_url)
    }

    /// HEAD first, so a missing or differently sized file costs no download.
    async fn remote(&self, dir: &str, f: &UploadFile) -> Result<Remote, StorageError> {
        let url = self.public(dir, &f.name);
        let action = format!("checking {}:", f.name);
        let resp = self
            .send(&action, &url, || Ok(self.client.head(&url)))
            .await?;
        match resp.status().as_u16() {
            404 | 410 => return Ok(Remote::Missing),
            200 => {}
            status => return Err(status_error(action, &url, status, String::new())),
        }
        // Read the header itself: for HEAD the body is empty and its length says nothing.
        let length = resp
            .headers()
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if length != Some(f.size) {
            return Ok(Remote::Different);
        }
        Ok(match self.download_digest(&url, &f.name).await? {
            None => Remote::Missing,
            Some((size, sha)) if size == f.size && sha == f.sha256 => Remote::Same,
            Some(_) => Remote::Different,
        })
    }

    /// Size and sha256 of what the public server serves at `url`; `None` when it is absent.
    async fn download_digest(
        &self,
        url: &str,
        name: &str,
    ) -> Result<Option<(u64, Digest)>, StorageError> {
        let action = format!("downloading {name}:");
        let resp = self.send(&action, url, || Ok(self.client.get(url))).await?;
        match resp.status().as_u16() {
            404 | 410 => return Ok(None),
            200 => {}
            status => {
                let detail = body_detail(resp, None).await;
                return Err(status_error(action, url, status, detail));
            }
        }
        let mut hasher = sha2::Sha256::new();
        let mut size = 0u64;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|source| StorageError::Http {
                action: action.clone(),
                url: url.to_owned(),
                source,
            })?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
        }
        Ok(Some((
            size,
            Digest::from_hash(hasher.finalize().as_slice()),
        )))
    }

    /// One multipart POST carrying every file, each streamed from disk.
    async fn upload(&self, dir: &str, files: &[&UploadFile]) -> Result<(), StorageError> {
        let url = format!("{}/upload", self.api);
        let path = if self.prefix.is_empty() {
            dir.to_owned()
        } else {
            format!("{}/{dir}", self.prefix)
        };
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        let action = format!("uploading {}:", names.join(", "));
        let mut token = reqwest::header::HeaderValue::from_str(&self.token.0)
            .map_err(|_| StorageError::BadToken)?;
        token.set_sensitive(true);
        // Open every file up front for each attempt so a missing one fails before sending.
        let resp = self
            .send_async(&action, &url, || async {
                // Names are plain `[A-Za-z0-9._+~-]` paths: send them as they are, `/` included,
                // since the server stores each part under its field name.
                let mut form = reqwest::multipart::Form::new()
                    .percent_encode_noop()
                    .text("path", path.clone());
                for f in files {
                    let io_err = |source| StorageError::Io {
                        action: "reading",
                        path: f.path.clone(),
                        source,
                    };
                    let file = tokio::fs::File::open(&f.path).await.map_err(io_err)?;
                    let len = file.metadata().await.map_err(io_err)?.len();
                    if len != f.size {
                        return Err(StorageError::Changed {
                            file: f.name.clone(),
                            expected: f.size,
                            actual: len,
                        });
                    }
                    let base = f.name.rsplit('/').next().unwrap_or(&f.name).to_owned();
                    let body = reqwest::Body::wrap_stream(
                        tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024),
                    );
                    let part = reqwest::multipart::Part::stream_with_length(body, f.size)
                        .file_name(base)
                        .mime_str("application/octet-stream")
                        .expect("a valid MIME type");
                    form = form.part(f.name.clone(), part);
                }
                Ok(self
                    .client
                    .post(&url)
                    .header(reqwest::header::AUTHORIZATION, token.clone())
                    .multipart(form))
            })
            .await?;
        match resp.status().as_u16() {
            200..=299 => Ok(()),
            status @ (401 | 403) => Err(StorageError::Refused { url, status }),
            status => {
                let detail = body_detail(resp, Some(&self.token.0)).await;
                Err(status_error(action, &url, status, detail))
            }
        }
    }

    async fn send<F>(
        &self,
        action: &str,
        url: &str,
        make: F,
    ) -> Result<reqwest::Response, StorageError>
    where
        F: Fn() -> Result<reqwest::RequestBuilder, StorageError>,
    {
        self.send_async(action, url, || std::future::ready(make()))
            .await
    }

    /// Sends the request `make` builds, again with backoff when the server cannot be reached
    /// or answers 5xx; the last answer is returned whatever its status.
    async fn send_async<F, Fut>(
        &self,
        action: &str,
        url: &str,
        make: F,
    ) -> Result<reqwest::Response, StorageError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<reqwest::RequestBuilder, StorageError>>,
    {
        let mut delay = Duration::from_millis(200);
        let mut attempt = 1;
        loop {
            let last = attempt == ATTEMPTS;
            match make().await?.send().await {
                Ok(resp) if resp.status().is_server_error() && !last => {
                    tracing::warn!(
                        url,
                        status = resp.status().as_u16(),
                        attempt,
                        "{action} retrying"
                    );
                }
                Ok(resp) => return Ok(resp),
                Err(e) if !last && (e.is_connect() || e.is_timeout() || e.is_request()) => {
                    tracing::warn!(url, error = %e, attempt, "{action} retrying");
                }
                Err(source) => {
                    return Err(StorageError::Http {
                        action: action.to_owned(),
                        url: url.to_owned(),
                        source: source.without_url(),
                    })
                }
            }
            tokio::time::sleep(delay).await;
            delay *= 4;
            attempt += 1;
        }
    }
}

fn status_error(action: String, url: &str, status: u16, detail: String) -> StorageError {
    StorageError::Status {
        action,
        url: url.to_owned(),
        status,
        detail,
    }
}

/// The start of an error body, for the message; the token is cut out in case it is echoed.
async fn body_detail(resp: reqwest::Response, token: Option<&str>) -> String {
    let text = resp.text().await.unwrap_or_default();
    let mut text: String = text.trim().chars().take(300).collect();
    if let Some(token) = token {
        text = text.replace(token, "<redacted>");
    }
    if text.is_empty() {
        text
    } else {
        format!(": {text}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "s3cr3t-t0ken-value";

    fn api() -> Storage {
        Storage::open_with_token(
            "http://127.0.0.1:9/",
            Some("http://127.0.0.1:9/images/rootfs/debian/"),
            None,
            Some(SECRET.into()),
        )
        .unwrap()
    }

    #[test]
    fn token_never_shows_in_debug_or_errors() {
        let s = api();
        let debug = format!("{s:?} {s:#?}");
        assert!(!debug.contains(SECRET), "{debug}");
        assert!(debug.contains("redacted"), "{debug}");

        let url = "http://127.0.0.1:9/upload".to_string();
        let errors = [
            StorageError::MissingToken { var: TOKEN_ENV },
            StorageError::BadToken,
            StorageError::Refused {
                url: url.clone(),
                status: 401,
            },
            StorageError::Status {
                action: "uploading a:".into(),
                url: url.clone(),
                status: 500,
                detail: String::new(),
            },
        ];
        for e in &errors {
            let text = format!("{e} {e:?}");
            assert!(!text.contains(SECRET), "{text}");
        }
        let refused = errors[2].to_string();
        assert!(refused.contains("refused the token"), "{refused}");
        assert!(refused.contains("401"), "{refused}");
    }

    #[tokio::test]
    async fn unreachable_server_error_has_no_token() {
        let s = api();
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let f = UploadFile::from_file("arm64/f", &p).unwrap();
        let e = s.sync("bookworm/1", &[f]).await.unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(!text.contains(SECRET), "{text}");
        assert!(matches!(e, StorageError::Http { .. }), "{text}");
    }

    #[test]
    fn open_picks_backend_and_checks_inputs() {
        let e = Storage::open_with_token("https://h/", Some("https://p/"), None, None);
        assert!(matches!(e, Err(StorageError::MissingToken { .. })), "{e:?}");
        let e = Storage::open_with_token("https://h/", None, None, Some("t".into()));
        assert!(matches!(e, Err(StorageError::BadDestination { .. })));
        let e = Storage::open_with_token(
            "https://h/",
            Some("https://p"),
            Some("a/../b"),
            Some("t".into()),
        );
        assert!(matches!(e, Err(StorageError::BadName { .. })));

        let s = api();
        assert_eq!(
            s.url("bookworm/20240601.0", "arm64/rootfs.cpio.gz"),
            "http://127.0.0.1:9/images/rootfs/debian/bookworm/20240601.0/arm64/rootfs.cpio.gz"
        );
        let s = Storage::open_with_token("/srv/x/", None, None, None).unwrap();
        assert!(matches!(s, Storage::Local(_)));
        assert_eq!(s.url("c/v", "amd64/f"), "file:///srv/x/c/v/amd64/f");
    }

    #[test]
    fn names_must_stay_below_the_root() {
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "../a",
            "a/..",
            "a/.hidden",
            "a b",
            "a\\b",
            "a?b",
        ] {
            assert!(check_relative("file name", bad).is_err(), "{bad:?}");
        }
        for good in [
            "arm64/rootfs.cpio.gz",
            "bookworm/20240601.0",
            "x86_64/full.rootfs.tar.xz",
        ] {
            check_relative("file name", good).unwrap();
        }
    }

    #[tokio::test]
    async fn sync_refuses_bad_and_duplicate_names() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"x").unwrap();
        let s =
            Storage::open_with_token(dir.path().join("out").to_str().unwrap(), None, None, None)
                .unwrap();
        let f = UploadFile::from_file("arm64/f", &p).unwrap();
        let e = s.sync("c/v", &[f.clone(), f.clone()]).await.unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
        let mut g = f.clone();
        g.name = "../f".into();
        assert!(s.sync("c/v", &[g]).await.is_err());
        assert!(s.sync("c/../v", &[f]).await.is_err());
        assert!(!dir.path().join("out").exists());
    }
}
