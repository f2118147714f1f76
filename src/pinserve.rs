//! The build proxy's downloads: what a rootfs script fetches with curl or wget besides
//! apt, answered from the store when a lockfile pins the URL, refused (and recorded, so the
//! build fails naming it) otherwise.
//!
//! `http://` requests reach the proxy as absolute-form `GET`s. `https://` ones come as a
//! `CONNECT host:443`: for a host with pinned downloads the proxy accepts the tunnel and
//! answers the TLS handshake with a certificate of the store's authority ([`crate::mitm`]),
//! then serves the requests inside; any other `CONNECT` is refused (the script sees
//! "CONNECT tunnel failed"). Either way a URL that is not pinned gets a 404. Every download
//! served and every refusal is a line of `<clients>/<client>.fetches` (the client is the
//! build's key): the build reads them back ([`read_unpinned`], [`read_served`]) and fails
//! on a refusal, or on a download its own recipe does not pin (the proxy serves every pin of
//! the run, but only the recipe's own are in its key).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http_body_util::BodyExt as _;
use hyper::{Method, StatusCode};

use crate::core::names::Digest;
use crate::core::urlsource;
use crate::httpserve::{blob_response, text, Response};
use crate::mitm::Authority;
use crate::store::Store;

/// The pinned downloads a proxy serves.
#[derive(Default)]
pub struct Downloads {
    /// Normalized URL ([`urlsource::normalized`]) → sha256.
    urls: BTreeMap<String, Digest>,
    /// Present when some pinned URL is `https://`.
    authority: Option<Arc<Authority>>,
}

impl Downloads {
    /// `urls` (URL → sha256, as the lockfile pins them); `authority` answers TLS for their
    /// hosts.
    pub fn new(urls: &BTreeMap<String, Digest>, authority: Option<Arc<Authority>>) -> Downloads {
        Downloads {
            urls: urls
                .iter()
                .map(|(u, d)| (urlsource::normalized(u), d.clone()))
                .collect(),
            authority,
        }
    }

    /// The sha256 a pinned `url` is served as.
    pub fn pinned(&self, url: &str) -> Option<&Digest> {
        self.urls.get(&urlsource::normalized(url))
    }

    /// Whether some pinned `https://` URL is on `host:port`.
    fn tunnels_to(&self, host: &str, port: u16) -> bool {
        self.authority.is_some()
            && self.urls.keys().any(|u| {
                u.starts_with("https://")
                    && urlsource::authority_of(u).is_some_and(|(h, p)| h == host && p == port)
            })
    }
}

/// Where a proxy records, per client (build), the downloads it served and those it refused:
/// the build checks both against its own pins (the proxy serves every pin of the run).
#[derive(Clone)]
pub struct FetchLog {
    pub dir: Option<PathBuf>,
    pub client: Option<String>,
}

impl FetchLog {
    /// Appends one refusal to the client's list (one short `O_APPEND` write).
    pub fn record(&self, what: &Refused) {
        self.append(match what {
            Refused::Url(url) => format!("url {url}\n"),
            Refused::Host(origin) => format!("host {origin}\n"),
        });
    }

    /// Appends a pinned download served to the client.
    pub fn served(&self, url: &str) {
        self.append(format!("served {url}\n"));
    }

    fn append(&self, line: String) {
        let (Some(dir), Some(client)) = (&self.dir, &self.client) else {
            return;
        };
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(fetch_log_path(dir, client))?;
            f.write_all(line.as_bytes())
        };
        if let Err(e) = write() {
            tracing::warn!(
                "build proxy: cannot record {} for {client}: {e}",
                line.trim()
            );
        }
    }
}

/// A fetch the proxy refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refused {
    /// A URL no download pins.
    Url(String),
    /// A tunnel to `https://host[:port]`, where no download is pinned (what the client
    /// would have asked inside it, the proxy never sees; its log names it).
    Host(String),
}

fn fetch_log_path(dir: &Path, client: &str) -> PathBuf {
    dir.join(format!("{client}.fetches"))
}

/// What a client fetched without a pin, each once, in order.
pub fn read_unpinned(dir: &Path, client: &str) -> Vec<Refused> {
    let text = std::fs::read_to_string(fetch_log_path(dir, client)).unwrap_or_default();
    let mut out: Vec<Refused> = Vec::new();
    for l in text.lines() {
        let r = match l.split_once(' ') {
            Some(("url", url)) => Refused::Url(url.to_owned()),
            Some(("host", origin)) => Refused::Host(origin.to_owned()),
            _ => continue,
        };
        if !out.contains(&r) {
            out.push(r);
        }
    }
    out
}

/// The pinned downloads a client was served, each once, in order.
pub fn read_served(dir: &Path, client: &str) -> Vec<String> {
    let text = std::fs::read_to_string(fetch_log_path(dir, client)).unwrap_or_default();
    let mut out: Vec<String> = Vec::new();
    for url in text.lines().filter_map(|l| l.strip_prefix("served ")) {
        if !out.iter().any(|o| o == url) {
            out.push(url.to_owned());
        }
    }
    out
}

/// Forgets what a client fetched and was refused (a new build under the same key starts
/// clean).
pub fn clear_unpinned(dir: &Path, client: &str) {
    let _ = std::fs::remove_file(fetch_log_path(dir, client));
}

/// The answer to a `GET` for `url` that is no apt request: the pinned bytes, or a refusal.
pub async fn get(
    store: &Store,
    downloads: &Downloads,
    url: &str,
    head: bool,
    log: &FetchLog,
) -> Response {
    match downloads.pinned(url) {
        Some(d) => {
            log.served(url);
            blob_response(store, d, head).await
        }
        None => {
            log.record(&Refused::Url(url.to_owned()));
            text(
                StatusCode::NOT_FOUND,
                &format!("kci-build: {url} is not a pinned download of this build (pin it with [url-source] in its recipe)"),
            )
        }
    }
}

/// The answer to a `CONNECT`: a tunnel into the proxy's own TLS for a host with pinned
/// `https://` downloads, else a refusal.
pub fn connect(
    store: Store,
    downloads: Arc<Downloads>,
    log: FetchLog,
    req: hyper::Request<hyper::body::Incoming>,
) -> Response {
    let Some((host, port)) = req
        .uri()
        .authority()
        .and_then(|a| urlsource::authority_of(&format!("https://{a}")))
    else {
        return text(StatusCode::BAD_REQUEST, "CONNECT needs host:port");
    };
    let origin = format!("https://{}", urlsource::authority("https", &host, port));
    let config = match downloads.tunnels_to(&host, port) {
        true => downloads.authority.as_ref().map(|a| a.server_config(&host)),
        false => None,
    };
    let config = match config {
        Some(Ok(c)) => c,
        Some(Err(e)) => {
            return text(
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("kci-build: TLS for {host}: {e:#}"),
            )
        }
        None => {
            log.record(&Refused::Host(origin));
            return text(
                StatusCode::FORBIDDEN,
                &format!("kci-build: no pinned download on {host}"),
            );
        }
    };
    tokio::spawn(async move {
        let upgraded = match hyper::upgrade::on(req).await {
            Ok(u) => u,
            Err(e) => return tracing::debug!("build proxy: CONNECT {origin}: {e}"),
        };
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let tls = match acceptor
            .accept(hyper_util::rt::TokioIo::new(upgraded))
            .await
        {
            Ok(t) => t,
            Err(e) => return tracing::debug!("build proxy: TLS with a client of {origin}: {e}"),
        };
        let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
            let (store, downloads, log, origin) = (
                store.clone(),
                downloads.clone(),
                log.clone(),
                origin.clone(),
            );
            async move {
                if req.method() != Method::GET && req.method() != Method::HEAD {
                    return Ok::<_, Infallible>(text(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "kci-build serves pinned downloads with GET only",
                    ));
                }
                let path = req
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_owned();
                let url = format!("{origin}{path}");
                let head = req.method() == Method::HEAD;
                Ok(get(&store, &downloads, &url, head, &log).await)
            }
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
            .await;
    });
    hyper::Response::builder()
        .status(StatusCode::OK)
        .body(http_body_util::Empty::new().map_err(|n| match n {}).boxed())
        .expect("a valid response")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aptcache::{AptCache, Listen};

    /// A real proxy, a real TLS client (reqwest with rustls) trusting only the store's
    /// authority: a pinned https URL gets the store's bytes, an unpinned one on that host a
    /// 404, a tunnel to another host is refused; each refusal is recorded for the client.
    #[tokio::test]
    async fn pinned_https_downloads_are_served_through_the_stores_authority() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut w = store.blob_writer().unwrap();
        std::io::Write::write_all(&mut w, b"pinned bytes").unwrap();
        let (digest, _) = w.commit().unwrap();
        let authority = Arc::new(Authority::of_store(dir.path()).unwrap());
        let pins = BTreeMap::from([
            ("https://dl.example.org/a.tar.gz".to_owned(), digest.clone()),
            ("http://plain.example.org/b".to_owned(), digest.clone()),
        ]);
        let clients = dir.path().join("clients");
        let proxy = AptCache::new(store.clone(), Default::default(), BTreeMap::new())
            .with_downloads(Downloads::new(&pins, Some(authority.clone())))
            .serve_with(Listen {
                clients: Some(clients.clone()),
                ..Listen::default()
            })
            .await
            .unwrap();
        let client = "ab12";
        let proxy_url = format!("http://{client}:x@{}", proxy.addr());
        let http = reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(&proxy_url).unwrap())
            .tls_built_in_root_certs(false)
            .add_root_certificate(
                reqwest::Certificate::from_pem(authority.cert_pem().as_bytes()).unwrap(),
            )
            .build()
            .unwrap();
        let get = |url: &'static str| {
            let http = http.clone();
            async move { http.get(url).send().await }
        };
        let ok = get("https://dl.example.org/a.tar.gz").await.unwrap();
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.bytes().await.unwrap().as_ref(), b"pinned bytes");
        let plain = get("http://plain.example.org/b").await.unwrap();
        assert_eq!(plain.bytes().await.unwrap().as_ref(), b"pinned bytes");
        let missing = get("https://dl.example.org/other.tar.gz").await.unwrap();
        assert_eq!(missing.status(), 404);
        assert!(get("https://elsewhere.example.net/c").await.is_err());
        assert_eq!(
            get("http://plain.example.org/x").await.unwrap().status(),
            404
        );
        assert_eq!(
            read_unpinned(&clients, client),
            [
                Refused::Url("https://dl.example.org/other.tar.gz".into()),
                Refused::Host("https://elsewhere.example.net".into()),
                Refused::Url("http://plain.example.org/x".into()),
            ]
        );
        assert_eq!(
            read_served(&clients, client),
            [
                "https://dl.example.org/a.tar.gz",
                "http://plain.example.org/b"
            ]
        );
        clear_unpinned(&clients, client);
        assert!(read_unpinned(&clients, client).is_empty());
    }
}
