//! The apt cache: every byte a build installs from Debian goes through kci-build, is checked
//! against the pinned index, and is kept in the content-addressed store.
//!
//! A build's apt (mmdebstrap on the host, `apt-get` in a `docker build`, the rootfs builder)
//! reaches the archive through a [`Proxy`] on loopback, as its HTTP proxy (`http_proxy`):
//! the sources list keeps naming the archive it names, so no port or cache host enters an
//! image. The proxy answers from the store; what the store lacks it fetches from the
//! upstream (`$KCI_APT_UPSTREAM`, else the URL apt asked for), verifies, then renames into
//! place — nothing unverified is ever served or kept:
//!
//! - `InRelease` of a pinned suite: its bytes must hash to the pin (`core::apt`);
//! - an index file or a by-hash file: listed in that `InRelease`, with that sha256;
//! - a `.deb`: listed in a `Packages` index of a pinned suite of its archive, with that
//!   sha256.
//!
//! A suite no lockfile pins is refused, never fetched. A cached file that no longer hashes
//! to its name is evicted and fetched again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::convert::Infallible;
use std::io::{Read, Write as _};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use hyper::body::Incoming;
use hyper::{Method, StatusCode};

use crate::core::apt::{deb_file_parts, parse_packages, Deb, Release, Request, SuiteId};
use crate::core::names::Digest;
use crate::httpserve::{blob_response, text, Response};
use crate::pinserve::{self, Downloads, FetchLog};
use crate::settings::AptUpstream;
use crate::store::{Store, StoreError};

/// Why a file could not be served.
#[derive(Debug, thiserror::Error)]
pub enum AptError {
    #[error("apt asked for suite {suite}, which the lockfile does not pin; {}", self.hint())]
    NotPinned { suite: SuiteId },
    #[error("{what} is neither in the apt cache nor on the upstream mirror ({url}): {reason}; {}", self.hint())]
    Gone {
        what: String,
        url: String,
        reason: String,
    },
    #[error("the upstream mirror sent other bytes for {what} ({url}): expected {expected}, got {actual}; {}", self.hint())]
    Mismatch {
        what: String,
        url: String,
        expected: Digest,
        actual: Digest,
    },
    #[error("{what} is not listed by the pinned index of {archive}")]
    NotListed { what: String, archive: String },
    #[error("{what}: {message}")]
    Invalid { what: String, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl AptError {
    pub fn fault(&self) -> crate::error::Fault {
        use crate::error::Fault;
        match self {
            AptError::NotPinned { .. } | AptError::NotListed { .. } => Fault::BadInput,
            _ => Fault::Environment,
        }
    }

    pub fn hint(&self) -> &'static str {
        match self {
            AptError::NotPinned { .. } => {
                "pin it with `kci-build lock --refresh` (only the suites of bootstrap recipes and rootfs configs can be pinned)"
            }
            AptError::Gone { .. } => {
                "the mirror no longer has the pinned file: `kci-build lock --refresh` moves to today's index, or pull a cache that has it (`kci-build fetch` on a machine that does)"
            }
            AptError::Mismatch { .. } => "the mirror is inconsistent or tampered with: try again later or another mirror (KCI_APT_UPSTREAM)",
            _ => "",
        }
    }
}

/// Counters of one cache, for reports and benchmarks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct AptStats {
    /// Bytes fetched from upstream.
    pub upstream_bytes: u64,
    /// Files answered from the store.
    pub hits: u64,
    /// Files fetched from upstream.
    pub misses: u64,
    /// Cached files that did not hash to their name and were evicted.
    pub evicted: u64,
}

/// The cache over the store, for one set of pins. Cheap to clone.
#[derive(Clone)]
pub struct AptCache {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    upstream: AptUpstream,
    client: reqwest::Client,
    pins: BTreeMap<SuiteId, Digest>,
    /// What a script may download besides apt ([`crate::pinserve`]).
    downloads: Arc<Downloads>,
    releases: Mutex<HashMap<SuiteId, Arc<Release>>>,
    debs: Mutex<DebIndex>,
    verified: Mutex<HashSet<Digest>>,
    upstream_bytes: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    evicted: AtomicU64,
}

/// The `.deb`s of the `Packages` indexes read so far, by `<archive>/<pool path>`.
#[derive(Default)]
struct DebIndex {
    by_path: HashMap<String, Deb>,
    loaded: HashSet<(SuiteId, String)>,
    /// Architectures apt asked `Packages` for: where an `_all.deb` is looked up.
    arches: BTreeSet<String>,
}

impl AptCache {
    pub fn new(store: Store, upstream: AptUpstream, pins: BTreeMap<SuiteId, Digest>) -> AptCache {
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(Duration::from_secs(120))
            .build()
            .expect("a plain HTTP client builds");
        AptCache {
            inner: Arc::new(Inner {
                store,
                upstream,
                client,
                pins,
                downloads: Arc::default(),
                releases: Mutex::default(),
                debs: Mutex::default(),
                verified: Mutex::default(),
                upstream_bytes: AtomicU64::new(0),
                hits: AtomicU64::new(0),
                misses: AtomicU64::new(0),
                evicted: AtomicU64::new(0),
            }),
        }
    }

    /// The same cache, also serving `downloads` (a script's pinned curl and wget fetches).
    pub fn with_downloads(self, downloads: Downloads) -> AptCache {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|_| {
            panic!("with_downloads is called on a new cache, before any clone")
        });
        AptCache {
            inner: Arc::new(Inner {
                downloads: Arc::new(downloads),
                ..inner
            }),
        }
    }

    pub fn pins(&self) -> &BTreeMap<SuiteId, Digest> {
        &self.inner.pins
    }

    pub fn stats(&self) -> AptStats {
        let i = &self.inner;
        AptStats {
            upstream_bytes: i.upstream_bytes.load(Ordering::Relaxed),
            hits: i.hits.load(Ordering::Relaxed),
            misses: i.misses.load(Ordering::Relaxed),
            evicted: i.evicted.load(Ordering::Relaxed),
        }
    }

    /// Today's `InRelease` of a suite, fetched from upstream and kept: what `lock --refresh`
    /// pins.
    pub async fn current(
        &self,
        origin: &str,
        suite: &SuiteId,
    ) -> Result<(Digest, Release), AptError> {
        let path = suite.inrelease_path();
        let what = format!("the index of {suite} (InRelease)");
        let digest = self.fetch(origin, &path, &what, None).await?;
        let release = self.read_release(&digest, suite)?;
        Ok((digest, release))
    }

    /// The pinned `InRelease` of a suite, parsed.
    pub async fn release(&self, origin: &str, suite: &SuiteId) -> Result<Arc<Release>, AptError> {
        if let Some(r) = self.inner.releases.lock().unwrap().get(suite) {
            return Ok(r.clone());
        }
        let pin = self.pin(suite)?.clone();
        let what = format!("the pinned index of {suite} (InRelease {pin})");
        let path = suite.inrelease_path();
        match self.ensure(origin, &path, &what, &pin).await {
            Err(AptError::Mismatch { url, actual, .. }) => {
                return Err(AptError::Gone {
                    what,
                    url,
                    reason: format!("the mirror has moved on to InRelease {actual}"),
                })
            }
            other => other?,
        }
        let release = Arc::new(self.read_release(&pin, suite)?);
        self.inner
            .releases
            .lock()
            .unwrap()
            .insert(suite.clone(), release.clone());
        Ok(release)
    }

    fn pin(&self, suite: &SuiteId) -> Result<&Digest, AptError> {
        self.inner
            .pins
            .get(suite)
            .ok_or_else(|| AptError::NotPinned {
                suite: suite.clone(),
            })
    }

    fn read_release(&self, digest: &Digest, suite: &SuiteId) -> Result<Release, AptError> {
        let bytes = self.inner.store.read_blob(digest)?;
        let text = String::from_utf8_lossy(&bytes);
        Release::parse(&text).map_err(|message| AptError::Invalid {
            what: format!("InRelease of {suite} ({digest})"),
            message,
        })
    }

    /// The listed index file `path` of a suite (by path below `dists/<suite>/`).
    pub async fn index_file(
        &self,
        origin: &str,
        suite: &SuiteId,
        path: &str,
    ) -> Result<Digest, AptError> {
        let release = self.release(origin, suite).await?;
        let listed = release.files.get(path).ok_or_else(|| AptError::NotListed {
            what: format!("dists/{}/{path}", suite.suite()),
            archive: suite.archive().to_owned(),
        })?;
        if let Some(arch) = binary_arch(path) {
            self.inner
                .debs
                .lock()
                .unwrap()
                .arches
                .insert(arch.to_owned());
        }
        let full = format!("/{}/dists/{}/{path}", suite.archive(), suite.suite());
        self.ensure(origin, &full, &full, &listed.sha256).await?;
        Ok(listed.sha256.clone())
    }

    /// A by-hash file of a suite: it must be one its `InRelease` lists.
    async fn by_hash(
        &self,
        origin: &str,
        suite: &SuiteId,
        sha: &Digest,
    ) -> Result<Digest, AptError> {
        let release = self.release(origin, suite).await?;
        let (path, _) = release.by_hash(sha).ok_or_else(|| AptError::NotListed {
            what: format!("by-hash file {sha}"),
            archive: suite.archive().to_owned(),
        })?;
        let path = path.to_owned();
        self.index_file(origin, suite, &path).await
    }

    /// A `.deb` of `archive`, checked against the pinned `Packages` indexes.
    pub async fn deb(&self, origin: &str, archive: &str, path: &str) -> Result<Deb, AptError> {
        let deb = self.lookup_deb(origin, archive, path).await?;
        let full = format!("/{archive}/{path}");
        let what = format!(
            "{} {} ({}) {}",
            deb.package, deb.version, deb.arch, deb.listed.sha256
        );
        self.ensure(origin, &full, &what, &deb.listed.sha256)
            .await?;
        Ok(deb)
    }

    async fn lookup_deb(&self, origin: &str, archive: &str, path: &str) -> Result<Deb, AptError> {
        let key = format!("{archive}/{path}");
        let arches: Vec<String> = {
            let idx = self.inner.debs.lock().unwrap();
            if let Some(d) = idx.by_path.get(&key) {
                return Ok(d.clone());
            }
            match deb_file_parts(path).map(|p| p.2) {
                Some("all") | None => idx.arches.iter().cloned().collect(),
                Some(arch) => vec![arch.to_owned()],
            }
        };
        let suites: Vec<SuiteId> = self
            .inner
            .pins
            .keys()
            .filter(|s| s.archive() == archive)
            .cloned()
            .collect();
        for suite in &suites {
            let release = self.release(origin, suite).await?;
            for arch in &arches {
                for (ipath, _) in release.packages_indexes(arch) {
                    self.load_packages(origin, suite, ipath).await?;
                }
            }
            if let Some(d) = self.inner.debs.lock().unwrap().by_path.get(&key) {
                return Ok(d.clone());
            }
        }
        Err(AptError::NotListed {
            what: path.to_owned(),
            archive: archive.to_owned(),
        })
    }

    async fn load_packages(
        &self,
        origin: &str,
        suite: &SuiteId,
        path: &str,
    ) -> Result<(), AptError> {
        let id = (suite.clone(), path.to_owned());
        if self.inner.debs.lock().unwrap().loaded.contains(&id) {
            return Ok(());
        }
        let digest = self.index_file(origin, suite, path).await?;
        let file = self.inner.store.blob_path(&digest);
        let what = format!("dists/{}/{path}", suite.suite());
        let xz = path.ends_with(".xz");
        let debs = tokio::task::spawn_blocking(move || read_packages(&file, xz))
            .await
            .expect("the Packages reader does not panic")
            .map_err(|message| AptError::Invalid { what, message })?;
        let mut idx = self.inner.debs.lock().unwrap();
        for d in debs {
            idx.by_path
                .insert(format!("{}/{}", suite.archive(), d.filename), d);
        }
        idx.loaded.insert(id);
        Ok(())
    }

    /// The store holds `digest`, intact: a cached copy is re-hashed once per process and
    /// evicted when it does not match; a missing one is fetched from upstream and verified.
    async fn ensure(
        &self,
        origin: &str,
        path: &str,
        what: &str,
        digest: &Digest,
    ) -> Result<(), AptError> {
        let store = &self.inner.store;
        if store.has_blob(digest) {
            if self.inner.verified.lock().unwrap().contains(digest) {
                self.inner.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            let (s, d) = (store.clone(), digest.clone());
            let intact = tokio::task::spawn_blocking(move || s.blob_is_intact(&d))
                .await
                .expect("hashing does not panic")?;
            if intact {
                self.inner.verified.lock().unwrap().insert(digest.clone());
                self.inner.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(());
            }
            tracing::warn!(%digest, what, "cached file is corrupt: evicting it");
            self.inner.evicted.fetch_add(1, Ordering::Relaxed);
            let _ = std::fs::remove_file(store.blob_path(digest));
        }
        self.fetch(origin, path, what, Some(digest)).await?;
        self.inner.verified.lock().unwrap().insert(digest.clone());
        Ok(())
    }

    /// Fetches `origin`+`path` from upstream into the store; with `expected`, only bytes
    /// with that digest are kept.
    async fn fetch(
        &self,
        origin: &str,
        path: &str,
        what: &str,
        expected: Option<&Digest>,
    ) -> Result<Digest, AptError> {
        let url = self.inner.upstream.url(origin, path);
        let gone = |reason: String| AptError::Gone {
            what: what.to_owned(),
            url: crate::weburl::redact(&url),
            reason,
        };
        tracing::debug!(%url, "apt cache: fetching from upstream");
        let resp = self
            .inner
            .client
            .get(&url)
            .send()
            .await
            .map_err(|e| gone(crate::error::chain(&e)))?;
        if !resp.status().is_success() {
            return Err(gone(format!("HTTP {}", resp.status())));
        }
        let store = &self.inner.store;
        let mut w = store.blob_writer()?;
        let mut body = resp.bytes_stream();
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| gone(crate::error::chain(&e)))?;
            self.inner
                .upstream_bytes
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            w.write_all(&chunk)
                .map_err(|e| StoreError::io(store, "writing a fetched file", e))?;
        }
        self.inner.misses.fetch_add(1, Ordering::Relaxed);
        match expected {
            None => Ok(w.commit()?.0),
            Some(expected) => match w.commit_expecting(expected)? {
                Ok(_) => Ok(expected.clone()),
                Err(actual) => Err(AptError::Mismatch {
                    what: what.to_owned(),
                    url: crate::weburl::redact(&url),
                    expected: expected.clone(),
                    actual,
                }),
            },
        }
    }

    /// Starts a proxy for one build on a free loopback port.
    pub async fn serve(&self) -> std::io::Result<Proxy> {
        self.serve_at(None).await
    }

    /// Starts a proxy on `preferred` when it is free (a resumed rootfs container still
    /// names the port of the run that started it), else on a free loopback port.
    pub async fn serve_at(&self, preferred: Option<SocketAddr>) -> std::io::Result<Proxy> {
        self.serve_with(Listen {
            preferred,
            ..Listen::default()
        })
        .await
    }

    /// A proxy set up by `listen`.
    pub async fn serve_with(&self, listen: Listen) -> std::io::Result<Proxy> {
        let Listen {
            preferred,
            control,
            clients,
        } = listen;
        let listener = match preferred {
            Some(addr) => match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => l,
                Err(_) => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
            },
            None => tokio::net::TcpListener::bind("127.0.0.1:0").await?,
        };
        let addr = listener.local_addr()?;
        let session = Arc::new(Session {
            clients,
            ..Session::default()
        });
        let (cache, s) = (self.clone(), session.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((conn, _)) = listener.accept().await else {
                    continue;
                };
                let (cache, s, control) = (cache.clone(), s.clone(), control.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| {
                        let (cache, s, control) = (cache.clone(), s.clone(), control.clone());
                        async move {
                            if let Some(answer) = control_request(control.as_ref(), &req) {
                                return Ok::<_, Infallible>(answer);
                            }
                            if req.method() == Method::CONNECT {
                                let log = s.fetch_log(req.headers());
                                return Ok(pinserve::connect(
                                    cache.inner.store.clone(),
                                    cache.inner.downloads.clone(),
                                    log,
                                    req,
                                ));
                            }
                            Ok::<_, Infallible>(cache.answer(&s, req).await)
                        }
                    });
                    let io = hyper_util::rt::TokioIo::new(conn);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Ok(Proxy {
            addr,
            session,
            task,
        })
    }

    async fn answer(&self, session: &Session, req: hyper::Request<Incoming>) -> Response {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return text(
                StatusCode::METHOD_NOT_ALLOWED,
                "kci-build's apt cache only serves GET",
            );
        }
        let uri = req.uri();
        let origin = match (uri.scheme_str(), uri.authority()) {
            (Some(scheme), Some(auth)) => format!("{scheme}://{auth}"),
            _ => match req
                .headers()
                .get(hyper::header::HOST)
                .and_then(|h| h.to_str().ok())
            {
                Some(host) => format!("http://{host}"),
                None => return text(StatusCode::BAD_REQUEST, "no host"),
            },
        };
        let path = uri.path().to_owned();
        let head = req.method() == Method::HEAD;
        if Request::parse(&path).is_none()
            || self.inner.downloads.pinned(&uri.to_string()).is_some()
        {
            // Not apt: a script's download, pinned or refused.
            let url = format!(
                "{origin}{}",
                uri.path_and_query().map_or("/", |p| p.as_str())
            );
            let log = session.fetch_log(req.headers());
            return pinserve::get(&self.inner.store, &self.inner.downloads, &url, head, &log).await;
        }
        let client = proxy_client(req.headers());
        match self
            .resolve(&origin, &path, session, client.as_deref())
            .await
        {
            Ok(digest) => blob_response(&self.inner.store, &digest, head).await,
            Err(e @ AptError::NotListed { .. }) => text(StatusCode::NOT_FOUND, &e.to_string()),
            Err(e) if matches!(e, AptError::Gone { .. }) && is_index(&path) => {
                // apt tries the next compression of an index; a missing translation is fine.
                tracing::debug!(%e, "apt cache: index not available");
                text(StatusCode::NOT_FOUND, &e.to_string())
            }
            Err(e) => {
                let message = e.to_string();
                let mut errors = session.errors.lock().unwrap();
                if !errors.contains(&message) {
                    errors.push(message.clone());
                }
                text(StatusCode::BAD_GATEWAY, &message)
            }
        }
    }

    async fn resolve(
        &self,
        origin: &str,
        path: &str,
        session: &Session,
        client: Option<&str>,
    ) -> Result<Digest, AptError> {
        let not_served = || AptError::NotListed {
            what: path.to_owned(),
            archive: "any pinned suite".into(),
        };
        match Request::parse(path).ok_or_else(not_served)? {
            Request::InRelease(suite) => {
                self.release(origin, &suite).await?;
                Ok(self.pin(&suite)?.clone())
            }
            Request::DetachedRelease(_) => Err(not_served()),
            Request::Index { suite, path } => self.index_file(origin, &suite, &path).await,
            Request::ByHash { suite, sha256 } => self.by_hash(origin, &suite, &sha256).await,
            Request::Pool { archive, path } => {
                let deb = self.deb(origin, &archive, &path).await?;
                let name = format!("{archive}/{path}");
                if let (Some(dir), Some(client)) = (&session.clients, client) {
                    record_served(dir, client, &name, &deb.listed.sha256);
                }
                session
                    .served
                    .lock()
                    .unwrap()
                    .insert(name, deb.listed.sha256.clone());
                Ok(deb.listed.sha256)
            }
        }
    }
}

/// How a proxy listens and what it does besides apt.
#[derive(Default)]
pub struct Listen {
    /// The address to take when it is free (a resumed rootfs container still names the
    /// port of the run that started it), else a free loopback port.
    pub preferred: Option<SocketAddr>,
    /// Answers kci-build's own requests (origin-form `GET /-/kci-build/…`); 404 without.
    pub control: Option<Control>,
    /// Where to append, per client, the `.deb`s it was served: `<dir>/<client>.debs`, one
    /// `<archive>/<pool path> <sha256>` line each. A client names itself as the user of its
    /// proxy URL (`http://<client>:kci@127.0.0.1:<port>`; apt, curl and wget send it as
    /// Proxy-Authorization).
    pub clients: Option<PathBuf>,
}

/// What one build's proxy saw.
#[derive(Default)]
struct Session {
    served: Mutex<BTreeMap<String, Digest>>,
    errors: Mutex<Vec<String>>,
    clients: Option<PathBuf>,
}

impl Session {
    /// Where a request's client has its fetches without a pin recorded.
    fn fetch_log(&self, headers: &hyper::HeaderMap) -> FetchLog {
        FetchLog {
            dir: self.clients.clone(),
            client: proxy_client(headers),
        }
    }
}

/// The client a request names: the user of a `Basic` Proxy-Authorization, when it is 1–64
/// lowercase hex digits (it names a file).
fn proxy_client(headers: &hyper::HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let value = headers
        .get(hyper::header::PROXY_AUTHORIZATION)?
        .to_str()
        .ok()?;
    let encoded = value.strip_prefix("Basic ")?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split(':').next()?;
    let ok = (1..=64).contains(&user.len())
        && user
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    ok.then(|| user.to_owned())
}

/// Appends one served `.deb` to the client's list (one short `O_APPEND` write: whole lines
/// even with concurrent requests). A list that cannot be written costs the lockfile its
/// `deb` lines for that build, not the build.
fn record_served(dir: &std::path::Path, client: &str, name: &str, sha256: &Digest) {
    let line = format!("{name} {sha256}\n");
    let write = || -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join(format!("{client}.debs")))?;
        f.write_all(line.as_bytes())
    };
    if let Err(e) = write() {
        tracing::warn!("apt cache: cannot record {name} for {client}: {e}");
    }
}

/// The `.deb`s a client's list names (see [`Listen::clients`]); empty when there is none.
/// Lines that do not parse are skipped.
pub fn read_served(dir: &std::path::Path, client: &str) -> BTreeMap<String, Digest> {
    let text = std::fs::read_to_string(dir.join(format!("{client}.debs"))).unwrap_or_default();
    parse_served(&text)
}

/// The `<name> <sha256>` lines of a client's list.
pub fn parse_served(text: &str) -> BTreeMap<String, Digest> {
    text.lines()
        .filter_map(|l| {
            let (name, sha) = l.split_once(' ')?;
            Some((name.to_owned(), sha.parse().ok()?))
        })
        .collect()
}

/// A running proxy; it stops when dropped.
pub struct Proxy {
    addr: SocketAddr,
    session: Arc<Session>,
    task: tokio::task::JoinHandle<()>,
}

impl Proxy {
    /// `http://127.0.0.1:<port>`: the value of `http_proxy` for the build.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `.deb`s served so far: `<archive>/<pool path>` → sha256.
    pub fn served(&self) -> BTreeMap<String, Digest> {
        self.session.served.lock().unwrap().clone()
    }

    /// What could not be served (a build that failed says why).
    pub fn errors(&self) -> Vec<String> {
        self.session.errors.lock().unwrap().clone()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Answers kci-build's own requests to a proxy: `(path, query) → (status, body)`. The
/// detached rootfs proxy takes its leases this way ([`crate::aptproxy`]).
pub type Control = Arc<dyn Fn(&str, &str) -> (StatusCode, String) + Send + Sync>;

/// Where kci-build's own requests go: a path no apt archive has.
pub const CONTROL_PREFIX: &str = "/-/kci-build/";

/// The answer to an origin-form request below [`CONTROL_PREFIX`]; `None` for apt's own.
fn control_request<B>(control: Option<&Control>, req: &hyper::Request<B>) -> Option<Response> {
    let uri = req.uri();
    if uri.scheme().is_some() || !uri.path().starts_with(CONTROL_PREFIX) {
        return None;
    }
    Some(match control {
        Some(c) => {
            let (status, body) = c(uri.path(), uri.query().unwrap_or(""));
            text(status, &body)
        }
        None => text(StatusCode::NOT_FOUND, "no control requests here"),
    })
}

fn is_index(path: &str) -> bool {
    path.contains("/dists/") && !path.ends_with("/InRelease")
}

fn binary_arch(path: &str) -> Option<&str> {
    let (_, rest) = path.split_once("binary-")?;
    rest.split('/').next()
}

/// Reads a compressed `Packages` index.
fn read_packages(file: &std::path::Path, xz: bool) -> Result<Vec<Deb>, String> {
    let f = std::fs::File::open(file).map_err(|e| e.to_string())?;
    let mut text = String::new();
    let r: Box<dyn Read> = if xz {
        Box::new(liblzma::read::XzDecoder::new(std::io::BufReader::new(f)))
    } else {
        Box::new(flate2::read::GzDecoder::new(std::io::BufReader::new(f)))
    };
    let mut r = r;
    r.read_to_string(&mut text).map_err(|e| e.to_string())?;
    parse_packages(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(auth: &str) -> hyper::HeaderMap {
        let mut h = hyper::HeaderMap::new();
        h.insert(
            hyper::header::PROXY_AUTHORIZATION,
            auth.parse().expect("a header value"),
        );
        h
    }

    #[test]
    fn a_client_is_the_hex_user_of_the_proxy_url_and_nothing_else() {
        use base64::Engine as _;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        // What apt sends for http_proxy=http://0123abcd@127.0.0.1:PORT.
        assert_eq!(
            proxy_client(&headers("Basic MDEyM2FiY2Q6")).as_deref(),
            Some("0123abcd")
        );
        for bad in [
            format!("Basic {}", b64("../../etc:")),
            format!("Basic {}", b64("ABCD:")),
            format!("Basic {}", b64(&format!("{}:", "a".repeat(65)))),
            format!("Basic {}", b64(":")),
            "Bearer 0123abcd".to_owned(),
            "Basic !!!".to_owned(),
        ] {
            assert_eq!(proxy_client(&headers(&bad)), None, "{bad}");
        }
        assert_eq!(proxy_client(&hyper::HeaderMap::new()), None);
    }

    #[test]
    fn served_debs_are_appended_per_client_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let served = dir.path().join("apt-served");
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        record_served(&served, "aa", "debian/pool/main/a/a_1_all.deb", &a);
        record_served(&served, "aa", "debian/pool/main/b/b_2_amd64.deb", &b);
        record_served(&served, "bb", "debian/pool/main/a/a_1_all.deb", &a);
        std::fs::OpenOptions::new()
            .append(true)
            .open(served.join("aa.debs"))
            .unwrap()
            .write_all(b"half a line")
            .unwrap();
        assert_eq!(
            read_served(&served, "aa"),
            BTreeMap::from([
                ("debian/pool/main/a/a_1_all.deb".to_owned(), a.clone()),
                ("debian/pool/main/b/b_2_amd64.deb".to_owned(), b),
            ])
        );
        assert_eq!(read_served(&served, "bb").len(), 1);
        assert!(read_served(&served, "cc").is_empty());
    }
}
