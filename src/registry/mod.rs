//! An OCI distribution client (Docker Hub in production, Debian's docker-registry in the
//! tests), written on reqwest so kci-build controls every request:
//! HEAD before every upload, chunked uploads that resume from the offset the registry
//! reports, retries with backoff on 5xx/429 (honouring `Retry-After`) and dropped
//! connections, Basic and Bearer-token auth with per-repository scopes.

pub mod auth;

use crate::settings::RegistrySettings;
use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{
    HeaderMap, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE, RETRY_AFTER,
    WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode};

use self::auth::{Challenge, Credentials};
use crate::core::names::Digest;

pub const MANIFEST_MEDIA_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";
pub const INDEX_MEDIA_TYPE: &str = "application/vnd.oci.image.index.v1+json";
const ACCEPT_MANIFESTS: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

/// The largest manifest or index kci-build reads: the OCI distribution spec's 4 MiB, which
/// registries must accept. A bigger answer is refused before it is all in memory.
pub const MAX_MANIFEST: usize = 4 << 20;
const MAX_TOKEN_ANSWER: usize = 1 << 20;

/// A response body of at most `limit` bytes, read chunk by chunk.
async fn read_limited(
    mut resp: reqwest::Response,
    limit: usize,
    what: &str,
) -> Result<Vec<u8>, RegistryError> {
    let url = redact(resp.url().as_str());
    if resp.content_length().is_some_and(|n| n > limit as u64) {
        return Err(RegistryError::Protocol(format!(
            "{what} from {url}: {} bytes, over the limit of {limit}",
            resp.content_length().unwrap_or(0)
        )));
    }
    let mut out = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|source| RegistryError::Transport {
            method: Method::GET,
            url: url.clone(),
            source,
        })?
    {
        if out.len() + chunk.len() > limit {
            return Err(RegistryError::Protocol(format!(
                "{what} from {url}: over the limit of {limit} bytes"
            )));
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{method} {url}: HTTP {status}: {body}")]
    Status {
        method: Method,
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("{method} {url}: {source}")]
    Transport {
        method: Method,
        url: String,
        source: reqwest::Error,
    },
    #[error("{0} requires credentials: set KCI_REGISTRY_USER and KCI_REGISTRY_PASSWORD, or `docker login` to it")]
    NeedsCredentials(String),
    #[error("{0}")]
    Protocol(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
}

impl RegistryError {
    /// An unreachable or failing registry is the environment's; a request it refuses (4xx)
    /// or missing credentials are the input's.
    pub fn fault(&self) -> crate::error::Fault {
        use crate::error::Fault;
        match self {
            RegistryError::Status { status, .. }
                if status.is_client_error() && *status != StatusCode::TOO_MANY_REQUESTS =>
            {
                Fault::BadInput
            }
            RegistryError::NeedsCredentials(_) => Fault::BadInput,
            RegistryError::Status { .. }
            | RegistryError::Transport { .. }
            | RegistryError::Protocol(_)
            | RegistryError::Io { .. } => Fault::Environment,
        }
    }
}

/// Counters for reports and benchmarks.
#[derive(Debug, Default)]
pub struct Stats {
    pub blobs_uploaded: AtomicU64,
    pub bytes_uploaded: AtomicU64,
    pub blobs_skipped: AtomicU64,
    pub blobs_mounted: AtomicU64,
    pub retries: AtomicU64,
    pub resumes: AtomicU64,
    pub restarts: AtomicU64,
}

#[derive(Clone)]
pub struct Registry {
    http: reqwest::Client,
    /// `scheme://host[:port]`.
    base: String,
    host: String,
    creds: Option<Credentials>,
    /// Authorization header value per repository (or "*" for Basic).
    auth: Arc<Mutex<HashMap<String, String>>>,
    pub chunk_size: u64,
    pub max_attempts: u32,
    pub stats: Arc<Stats>,
}

/// How a request may be repeated after a failure.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Retry {
    /// Safe to send again as it is.
    Idempotent,
    /// Send once; the caller recovers (an upload chunk).
    Once,
}

impl Registry {
    /// `registry` is `host[:port]` (https; plain http for loopback hosts, as Docker does)
    /// or an explicit `http://…`/`https://…` URL; credentials and the upload chunk size come
    /// from `settings`.
    pub fn new(registry: &str, settings: &RegistrySettings) -> Result<Registry, RegistryError> {
        let (base, host) = if let Some(h) = registry.strip_prefix("http://") {
            (
                format!("http://{}", h.trim_end_matches('/')),
                h.trim_end_matches('/').to_owned(),
            )
        } else if let Some(h) = registry.strip_prefix("https://") {
            (
                format!("https://{}", h.trim_end_matches('/')),
                h.trim_end_matches('/').to_owned(),
            )
        } else {
            let h = registry.trim_end_matches('/');
            let name = h.rsplit_once(':').map(|(n, _)| n).unwrap_or(h);
            let scheme = if name == "localhost" || name.starts_with("127.") || name == "[::1]" {
                "http"
            } else {
                "https"
            };
            (format!("{scheme}://{h}"), h.to_owned())
        };
        let http = reqwest::Client::builder()
            .user_agent(concat!("kci-build/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(20))
            .read_timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| RegistryError::Protocol(format!("HTTP client: {e}")))?;
        Ok(Registry {
            http,
            creds: auth::credentials_for(&host, settings),
            base,
            host,
            auth: Arc::default(),
            chunk_size: settings.chunk_size,
            max_attempts: 6,
            stats: Arc::default(),
        })
    }

    pub fn host(&self) -> &str {
        &self.host
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        }
    }

    /// Sends a request built by `make` (called again for each attempt), handling auth
    /// challenges and retrying transient failures.
    async fn send(
        &self,
        repo: &str,
        method: Method,
        url: &str,
        retry: Retry,
        make: &(dyn Fn(reqwest::RequestBuilder) -> reqwest::RequestBuilder + Sync),
    ) -> Result<reqwest::Response, RegistryError> {
        let url = self.url(url);
        let mut attempt = 0;
        let mut authed_once = false;
        loop {
            attempt += 1;
            let mut req = make(self.http.request(method.clone(), &url));
            if let Some(h) = self.auth_header(repo) {
                req = req.header(AUTHORIZATION, h);
            }
            let result = req.send().await;
            let transient_delay = match &result {
                Ok(resp) if resp.status() == StatusCode::UNAUTHORIZED && !authed_once => {
                    authed_once = true;
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(auth::parse_challenge);
                    self.authenticate(repo, challenge).await?;
                    attempt -= 1;
                    continue;
                }
                Ok(resp)
                    if resp.status() == StatusCode::TOO_MANY_REQUESTS
                        || resp.status().is_server_error() =>
                {
                    Some(retry_after(resp.headers()).unwrap_or_else(|| backoff(attempt)))
                }
                Ok(_) => None,
                Err(e) if e.is_connect() || e.is_timeout() || e.is_request() || e.is_body() => {
                    Some(backoff(attempt))
                }
                Err(_) => None,
            };
            match (transient_delay, result) {
                (Some(delay), result)
                    if retry == Retry::Idempotent && attempt < self.max_attempts =>
                {
                    let why = match &result {
                        Ok(r) => format!("HTTP {}", r.status()),
                        Err(e) => e.to_string(),
                    };
                    tracing::info!(%method, url = %redact(&url), %why, ?delay, attempt, "retrying");
                    self.stats.retries.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(delay).await;
                }
                (_, Ok(resp)) => return Ok(resp),
                (_, Err(source)) => {
                    return Err(RegistryError::Transport {
                        method,
                        url: redact(&url),
                        source,
                    })
                }
            }
        }
    }

    fn auth_header(&self, repo: &str) -> Option<String> {
        let map = self.auth.lock().expect("auth cache");
        map.get(repo).or_else(|| map.get("*")).cloned()
    }

    async fn authenticate(
        &self,
        repo: &str,
        challenge: Option<Challenge>,
    ) -> Result<(), RegistryError> {
        let need = || RegistryError::NeedsCredentials(self.host.clone());
        match challenge {
            Some(Challenge::Basic) | None => {
                let creds = self.creds.as_ref().ok_or_else(need)?;
                self.auth
                    .lock()
                    .expect("auth cache")
                    .insert("*".into(), creds.basic_header());
            }
            Some(Challenge::Bearer { realm, service, .. }) => {
                let scope = format!("repository:{repo}:pull,push");
                let mut req = self.http.get(&realm).query(&[("scope", scope.as_str())]);
                if let Some(s) = &service {
                    req = req.query(&[("service", s.as_str())]);
                }
                if let Some(c) = &self.creds {
                    req = req.header(AUTHORIZATION, c.basic_header());
                }
                let resp = req
                    .send()
                    .await
                    .map_err(|source| RegistryError::Transport {
                        method: Method::GET,
                        url: realm.clone(),
                        source,
                    })?;
                if resp.status() == StatusCode::UNAUTHORIZED && self.creds.is_none() {
                    return Err(need());
                }
                if !resp.status().is_success() {
                    return Err(RegistryError::Status {
                        method: Method::GET,
                        url: realm,
                        status: resp.status(),
                        body: String::new(),
                    });
                }
                #[derive(serde::Deserialize)]
                struct TokenAnswer {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let body = read_limited(resp, MAX_TOKEN_ANSWER, "the token answer").await?;
                let t: TokenAnswer = serde_json::from_slice(&body).map_err(|e| {
                    RegistryError::Protocol(format!("the token service ({realm}) answered: {e}"))
                })?;
                let token = t.token.or(t.access_token).ok_or_else(|| {
                    RegistryError::Protocol("the token service answered without a token".into())
                })?;
                self.auth
                    .lock()
                    .expect("auth cache")
                    .insert(repo.to_owned(), format!("Bearer {token}"));
            }
        }
        Ok(())
    }

    async fn expect(
        resp: reqwest::Response,
        method: Method,
        ok: &[StatusCode],
    ) -> Result<reqwest::Response, RegistryError> {
        if ok.contains(&resp.status()) {
            return Ok(resp);
        }
        let (status, url) = (resp.status(), redact(resp.url().as_str()));
        let body = read_limited(resp, 64 << 10, "an error body")
            .await
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        Err(RegistryError::Status {
            method,
            url,
            status,
            body: body.chars().take(300).collect(),
        })
    }

    pub async fn blob_exists(&self, repo: &str, digest: &Digest) -> Result<bool, RegistryError> {
        let resp = self
            .send(
                repo,
                Method::HEAD,
                &format!("/v2/{repo}/blobs/{digest}"),
                Retry::Idempotent,
                &|r| r,
            )
            .await?;
        match resp.status() {
            StatusCode::OK => Ok(true),
            StatusCode::NOT_FOUND => Ok(false),
            _ => Self::expect(resp, Method::HEAD, &[]).await.map(|_| false),
        }
    }

    /// Uploads the file at `path` (whose sha256 is `digest`) unless the registry has it.
    /// Returns whether bytes were sent.
    pub async fn push_blob(
        &self,
        repo: &str,
        digest: &Digest,
        path: &Path,
    ) -> Result<bool, RegistryError> {
        if self.blob_exists(repo, digest).await? {
            self.stats.blobs_skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(false);
        }
        let size = std::fs::metadata(path)
            .map_err(|source| RegistryError::Io {
                context: format!("reading {}", path.display()),
                source,
            })?
            .len();
        let mut restarts = 0;
        'session: loop {
            let mut location = self.start_upload(repo).await?;
            let mut offset = 0u64;
            while offset < size {
                let end = (offset + self.chunk_size).min(size);
                let chunk = read_range(path, offset, end)?;
                match self.patch(repo, &location, offset, chunk).await {
                    Ok((next, received)) => {
                        location = next;
                        offset = received;
                    }
                    Err(e) => {
                        // Ask the registry how much it has; resume there, or start over if
                        // the session is gone (Distribution drops it when a chunk breaks).
                        tracing::info!(error = %e, offset, "upload chunk failed; asking the registry for the offset");
                        match self.upload_status(repo, &location).await {
                            Ok(Some((next, received))) => {
                                self.stats.resumes.fetch_add(1, Ordering::Relaxed);
                                location = next;
                                offset = received;
                            }
                            _ => {
                                restarts += 1;
                                self.stats.restarts.fetch_add(1, Ordering::Relaxed);
                                if restarts > self.max_attempts {
                                    return Err(e);
                                }
                                tokio::time::sleep(backoff(restarts)).await;
                                continue 'session;
                            }
                        }
                    }
                }
            }
            let sep = if location.contains('?') { '&' } else { '?' };
            let url = format!("{location}{sep}digest={digest}");
            let resp = self
                .send(repo, Method::PUT, &url, Retry::Idempotent, &|r| {
                    r.header(CONTENT_LENGTH, 0)
                })
                .await?;
            if resp.status() == StatusCode::CREATED {
                break;
            }
            // The session was lost between the last chunk and the PUT (404), or the
            // registry's bytes are not ours (400 DIGEST_INVALID after an ambiguous resume):
            // start this blob over; anything else is an error.
            let status = resp.status();
            restarts += 1;
            self.stats.restarts.fetch_add(1, Ordering::Relaxed);
            if restarts > self.max_attempts
                || !matches!(status, StatusCode::NOT_FOUND | StatusCode::BAD_REQUEST)
            {
                Self::expect(resp, Method::PUT, &[StatusCode::CREATED]).await?;
            }
            tracing::info!(%status, "finishing the upload failed; starting the blob over");
        }
        self.stats.blobs_uploaded.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes_uploaded.fetch_add(size, Ordering::Relaxed);
        Ok(true)
    }

    /// Makes `digest` appear in `repo` by mounting it from `from` (no bytes sent). False
    /// when the registry does not mount (answers 202: a plain upload session instead).
    pub async fn mount_blob(
        &self,
        repo: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<bool, RegistryError> {
        if self.blob_exists(repo, digest).await? {
            self.stats.blobs_skipped.fetch_add(1, Ordering::Relaxed);
            return Ok(true);
        }
        let url = format!("/v2/{repo}/blobs/uploads/?mount={digest}&from={from}");
        let resp = self
            .send(repo, Method::POST, &url, Retry::Idempotent, &|r| {
                r.header(CONTENT_LENGTH, 0)
            })
            .await?;
        let mounted = resp.status() == StatusCode::CREATED;
        if mounted {
            self.stats.blobs_mounted.fetch_add(1, Ordering::Relaxed);
        }
        Ok(mounted)
    }

    async fn start_upload(&self, repo: &str) -> Result<String, RegistryError> {
        let resp = self
            .send(
                repo,
                Method::POST,
                &format!("/v2/{repo}/blobs/uploads/"),
                Retry::Idempotent,
                &|r| r.header(CONTENT_LENGTH, 0),
            )
            .await?;
        let resp = Self::expect(resp, Method::POST, &[StatusCode::ACCEPTED]).await?;
        location(&resp)
    }

    /// Sends one chunk; returns the next location and the number of bytes the registry holds.
    async fn patch(
        &self,
        repo: &str,
        location: &str,
        offset: u64,
        chunk: bytes::Bytes,
    ) -> Result<(String, u64), RegistryError> {
        let end = offset + chunk.len() as u64;
        let range = format!("{offset}-{}", end - 1);
        let resp = self
            .send(repo, Method::PATCH, location, Retry::Once, &|r| {
                r.header(CONTENT_TYPE, "application/octet-stream")
                    .header("Content-Range", range.as_str())
                    .header(CONTENT_LENGTH, chunk.len())
                    .body(chunk.clone())
            })
            .await?;
        let resp = Self::expect(
            resp,
            Method::PATCH,
            &[StatusCode::ACCEPTED, StatusCode::NO_CONTENT],
        )
        .await?;
        // Accepted means the whole chunk landed (`Range: 0-0` would be ambiguous here).
        Ok((location_or(&resp, location), end))
    }

    async fn upload_status(
        &self,
        repo: &str,
        location: &str,
    ) -> Result<Option<(String, u64)>, RegistryError> {
        let resp = self
            .send(repo, Method::GET, location, Retry::Idempotent, &|r| r)
            .await?;
        if resp.status() != StatusCode::NO_CONTENT {
            return Ok(None);
        }
        Ok(Some((
            location_or(&resp, location),
            received(resp.headers()).unwrap_or(0),
        )))
    }

    /// PUTs manifest bytes under `reference` (a digest or a tag); checks the digest the
    /// registry computed.
    pub async fn put_manifest(
        &self,
        repo: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(), RegistryError> {
        let body = bytes::Bytes::copy_from_slice(bytes);
        let resp = self
            .send(
                repo,
                Method::PUT,
                &format!("/v2/{repo}/manifests/{reference}"),
                Retry::Idempotent,
                &|r| r.header(CONTENT_TYPE, media_type).body(body.clone()),
            )
            .await?;
        let resp = Self::expect(resp, Method::PUT, &[StatusCode::CREATED, StatusCode::OK]).await?;
        let expected = Digest::of(bytes);
        if let Some(d) = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
        {
            if d != expected.as_str() {
                return Err(RegistryError::Protocol(format!(
                    "{repo}:{reference}: the registry stored {d}, kci-build sent {expected}"
                )));
            }
        }
        Ok(())
    }

    /// The digest `reference` points at, if it exists.
    pub async fn manifest_digest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<Digest>, RegistryError> {
        let resp = self
            .send(
                repo,
                Method::HEAD,
                &format!("/v2/{repo}/manifests/{reference}"),
                Retry::Idempotent,
                &|r| r.header("Accept", ACCEPT_MANIFESTS),
            )
            .await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let resp = Self::expect(resp, Method::HEAD, &[StatusCode::OK]).await?;
        let d = resp
            .headers()
            .get("Docker-Content-Digest")
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                RegistryError::Protocol("HEAD manifest without Docker-Content-Digest".into())
            })?;
        d.parse()
            .map(Some)
            .map_err(|e| RegistryError::Protocol(format!("{e}")))
    }

    /// Manifest bytes, verified against `digest` (at most [`MAX_MANIFEST`]).
    pub async fn get_manifest(
        &self,
        repo: &str,
        digest: &Digest,
    ) -> Result<Vec<u8>, RegistryError> {
        let resp = self
            .send(
                repo,
                Method::GET,
                &format!("/v2/{repo}/manifests/{digest}"),
                Retry::Idempotent,
                &|r| r.header("Accept", ACCEPT_MANIFESTS),
            )
            .await?;
        let resp = Self::expect(resp, Method::GET, &[StatusCode::OK]).await?;
        let bytes = read_limited(resp, MAX_MANIFEST, &format!("manifest {digest}")).await?;
        if Digest::of(&bytes) != *digest {
            return Err(RegistryError::Protocol(format!(
                "manifest {digest}: content does not match its digest"
            )));
        }
        Ok(bytes.to_vec())
    }

    /// Streams a blob into `out`.
    pub async fn get_blob(
        &self,
        repo: &str,
        digest: &Digest,
        out: &mut (dyn std::io::Write + Send),
    ) -> Result<(), RegistryError> {
        let resp = self
            .send(
                repo,
                Method::GET,
                &format!("/v2/{repo}/blobs/{digest}"),
                Retry::Idempotent,
                &|r| r,
            )
            .await?;
        let mut resp = Self::expect(resp, Method::GET, &[StatusCode::OK]).await?;
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|source| RegistryError::Transport {
                method: Method::GET,
                url: format!("blob {digest}"),
                source,
            })?
        {
            out.write_all(&chunk).map_err(|source| RegistryError::Io {
                context: format!("writing blob {digest}"),
                source,
            })?;
        }
        Ok(())
    }
}

fn read_range(path: &Path, start: u64, end: u64) -> Result<bytes::Bytes, RegistryError> {
    let io = |source| RegistryError::Io {
        context: format!("reading {}", path.display()),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(io)?;
    f.seek(SeekFrom::Start(start)).map_err(io)?;
    let mut buf = vec![0; (end - start) as usize];
    f.read_exact(&mut buf).map_err(io)?;
    Ok(buf.into())
}

fn location(resp: &reqwest::Response) -> Result<String, RegistryError> {
    resp.headers()
        .get(LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| RegistryError::Protocol("upload answer without Location".into()))
}

fn location_or(resp: &reqwest::Response, fallback: &str) -> String {
    location(resp).unwrap_or_else(|_| fallback.to_owned())
}

/// Bytes the registry holds, from `Range: 0-<last>`. Distribution answers `0-0` for an
/// empty upload too, so that reads as nothing received (if one byte was there after all,
/// the final digest check fails and the blob starts over).
fn received(h: &HeaderMap) -> Option<u64> {
    let r = h.get(RANGE)?.to_str().ok()?;
    let last: u64 = r.rsplit('-').next()?.parse().ok()?;
    Some(if last == 0 { 0 } else { last + 1 })
}

fn retry_after(h: &HeaderMap) -> Option<Duration> {
    let secs: u64 = h.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(secs.min(60)))
}

/// Exponential backoff with jitter: ~0.2 s, 0.4 s, 0.8 s… capped at 8 s.
fn backoff(attempt: u32) -> Duration {
    let base = 200u64.saturating_mul(1 << attempt.min(6)).min(8000);
    let jitter = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64 % (base / 4 + 1))
        .unwrap_or(0);
    Duration::from_millis(base + jitter)
}

/// Upload URLs carry state tokens; keep logs short and free of them.
fn redact(url: &str) -> String {
    url.split('?').next().unwrap_or(url).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_registries_use_http_others_https() {
        assert_eq!(
            Registry::new("127.0.0.1:5000", &RegistrySettings::default())
                .unwrap()
                .base,
            "http://127.0.0.1:5000"
        );
        assert_eq!(
            Registry::new("localhost:5000", &RegistrySettings::default())
                .unwrap()
                .base,
            "http://localhost:5000"
        );
        assert_eq!(
            Registry::new("reg.example", &RegistrySettings::default())
                .unwrap()
                .base,
            "https://reg.example"
        );
        assert_eq!(
            Registry::new("http://reg.example:80/", &RegistrySettings::default())
                .unwrap()
                .base,
            "http://reg.example:80"
        );
    }

    #[test]
    fn range_and_retry_after() {
        let mut h = HeaderMap::new();
        h.insert(RANGE, "0-1048575".parse().unwrap());
        h.insert(RETRY_AFTER, "3".parse().unwrap());
        assert_eq!(received(&h), Some(1 << 20));
        h.insert(RANGE, "0-0".parse().unwrap());
        assert_eq!(received(&h), Some(0));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        assert!(
            backoff(1) >= Duration::from_millis(400)
                && backoff(20) <= Duration::from_millis(10_000)
        );
    }
}

#[cfg(test)]
mod limits {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    /// A server that answers every request with `body` (chunked: no Content-Length, so the
    /// limit must hold while reading) or with a Content-Length over the limit.
    async fn serve(body: Vec<u8>, announce: Option<usize>) -> std::net::SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let body = body.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    let _ = conn.read(&mut buf).await;
                    let head = match announce {
                        Some(n) => format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n"),
                        None => "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".into(),
                    };
                    let _ = conn.write_all(head.as_bytes()).await;
                    if announce.is_none() {
                        for part in body.chunks(1 << 16) {
                            let _ = conn
                                .write_all(format!("{:x}\r\n", part.len()).as_bytes())
                                .await;
                            let _ = conn.write_all(part).await;
                            let _ = conn.write_all(b"\r\n").await;
                        }
                        let _ = conn.write_all(b"0\r\n\r\n").await;
                    }
                });
            }
        });
        addr
    }

    #[tokio::test]
    async fn a_manifest_over_4_mib_is_refused_while_it_streams_or_when_announced() {
        for announce in [None, Some(MAX_MANIFEST + 1)] {
            let addr = serve(vec![b'{'; MAX_MANIFEST + 1], announce).await;
            let reg = Registry::new(&addr.to_string(), &RegistrySettings::default()).unwrap();
            let e = reg
                .get_manifest("kernelci/x", &Digest::of(b"m"))
                .await
                .unwrap_err();
            assert!(
                e.to_string().contains("over the limit of 4194304"),
                "{announce:?}: {e}"
            );
            assert_eq!(e.fault(), crate::error::Fault::Environment);
        }
    }
}
