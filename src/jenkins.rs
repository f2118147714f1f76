//! Jenkins, as KernelCI's production procedure talks to it (PROCEDURE.md §1.1): one trait,
//! [`JenkinsApi`], of the calls the Monday procedure makes — probe the instance, read a job
//! and a build, enable, disable, stop, trigger and follow a queue item, who am I, the agents,
//! a safe restart — so the algorithms above it (`prod::pause`, `prod::restart`,
//! `prod::trigger`) are written once and tested on an in-memory [`fake`] as well as on the
//! real thing.
//!
//! [`HttpJenkins`] is the real implementation (reqwest, the REST API): Basic auth with a user
//! and an API token or a password; with a password every POST carries a CSRF crumb and the
//! session cookie of the request that issued it. The secret is a [`Secret`]: no error,
//! `Debug` output or log line ever contains it, and URLs in messages never carry credentials.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{HeaderMap, HeaderValue, LOCATION, SET_COOKIE};
use reqwest::{Method, StatusCode, Url};
use serde::{Deserialize, Serialize};

use crate::error::Fault;
use crate::settings::Secret;

/// Build parameters, sorted by name: what a trigger sends and what a build reports.
pub type Params = BTreeMap<String, String>;

/// How many entries of a job's `builds` the procedure looks at (kernelci-deploy's choice).
pub const BUILDS_SCANNED: usize = 100;

/// What Jenkins answers to `GET /api/json` right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum Probe {
    /// Connection refused or timed out, or a reverse proxy's 502/504: the process is down.
    Down { reason: String },
    /// 503: starting, loading or restarting.
    Starting,
    /// 401/403: the credentials are refused.
    Denied { status: u16 },
    /// 200: a running instance.
    Up(Instance),
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Down { reason } => write!(f, "down ({reason})"),
            Probe::Starting => f.write_str("starting (HTTP 503)"),
            Probe::Denied { status } => write!(f, "credentials refused (HTTP {status})"),
            Probe::Up(i) => write!(f, "up: {}, session {}", i.version, short(&i.session)),
        }
    }
}

/// A running controller, as its root page and headers describe it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Instance {
    /// `X-Jenkins`.
    pub version: String,
    /// `X-Jenkins-Session`: changes on every start of the controller.
    pub session: String,
    /// `NORMAL`/`EXCLUSIVE`; absent while Jenkins is not fully loaded.
    pub mode: Option<String>,
    pub quieting_down: bool,
    pub jobs: Vec<JobSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSummary {
    pub name: String,
    #[serde(default)]
    pub color: String,
}

/// A job: its builds, newest first, and its ball colour.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobState {
    pub name: String,
    /// `disabled`, `blue`, `red`, `notbuilt`, … with `_anime` while a build runs.
    pub color: String,
    /// Build numbers, newest first.
    pub builds: Vec<u64>,
}

impl JobState {
    pub fn disabled(&self) -> bool {
        self.color == "disabled"
    }
}

/// One build of a job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildState {
    pub number: u64,
    pub url: String,
    pub building: bool,
    /// `SUCCESS`, `FAILURE`, `ABORTED`, `UNSTABLE`; `None` while building.
    pub result: Option<String>,
    /// How many artifacts it has archived so far.
    pub artifacts: usize,
    /// When it started, milliseconds since the epoch.
    pub timestamp_ms: u64,
    /// Its parameters (`actions[].parameters[]`), values as text.
    pub parameters: Params,
}

/// A queue item, as `GET /queue/item/<N>/api/json` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum QueueItem {
    /// Still in the queue; `why` is Jenkins's reason.
    Waiting { why: Option<String> },
    /// Left the queue as build `number`.
    Started { number: u64, url: String },
    /// Left the queue without a build.
    Cancelled,
    /// 404: never existed, or left the queue more than 5 minutes ago.
    Gone,
}

/// `GET /whoAmI/api/json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WhoAmI {
    pub name: String,
    pub authenticated: bool,
    pub anonymous: bool,
}

/// A build agent (the controller's own built-in node is left out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Agent {
    pub name: String,
    pub online: bool,
}

/// What the procedure asks of Jenkins (PROCEDURE.md §1.1).
pub trait JenkinsApi: Clone + Send + Sync + 'static {
    /// `GET /api/json?tree=mode,quietingDown,jobs[name,color]`, classified; never an error for
    /// a down, starting or refusing instance.
    fn probe(&self) -> impl Future<Output = Result<Probe, JenkinsError>> + Send;
    fn job(&self, job: &str) -> impl Future<Output = Result<JobState, JenkinsError>> + Send;
    fn build(
        &self,
        job: &str,
        number: u64,
    ) -> impl Future<Output = Result<BuildState, JenkinsError>> + Send;
    fn enable(&self, job: &str) -> impl Future<Output = Result<(), JenkinsError>> + Send;
    fn disable(&self, job: &str) -> impl Future<Output = Result<(), JenkinsError>> + Send;
    /// Asks a build to abort; Jenkins stops it shortly after.
    fn stop(&self, job: &str, number: u64)
        -> impl Future<Output = Result<(), JenkinsError>> + Send;
    /// Queues a build and returns its queue item number.
    fn trigger(
        &self,
        job: &str,
        params: &Params,
    ) -> impl Future<Output = Result<u64, JenkinsError>> + Send;
    fn queue_item(&self, id: u64) -> impl Future<Output = Result<QueueItem, JenkinsError>> + Send;
    fn who_am_i(&self) -> impl Future<Output = Result<WhoAmI, JenkinsError>> + Send;
    fn computers(&self) -> impl Future<Output = Result<Vec<Agent>, JenkinsError>> + Send;
    /// `POST /safeRestart`: restart once running builds are done.
    fn safe_restart(&self) -> impl Future<Output = Result<(), JenkinsError>> + Send;
}

/// Why a Jenkins call failed. No variant ever carries the secret, and URLs carry no
/// credentials.
#[derive(Debug, thiserror::Error)]
pub enum JenkinsError {
    #[error("Jenkins URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("Jenkins at {url} is unreachable: {reason}")]
    Unreachable { url: String, reason: String },
    #[error("Jenkins at {url} refused the credentials{who} (HTTP {status}){hint}")]
    Credentials {
        url: String,
        /// ` of user `name``, or empty when the caller does not know it.
        who: String,
        status: u16,
        hint: &'static str,
    },
    #[error("{action}: {url} answered HTTP {status}")]
    Status {
        action: String,
        url: String,
        status: u16,
    },
    #[error("cannot trigger job `{job}`: it is disabled ({url} answered 409)")]
    JobDisabled { job: String, url: String },
    #[error("Jenkins has no job `{job}` ({url} answered 404)")]
    UnknownJob { job: String, url: String },
    #[error("Jenkins has no build {job} #{number} ({url} answered 404)")]
    UnknownBuild {
        job: String,
        number: u64,
        url: String,
    },
    #[error("{url}: unexpected answer: {reason}")]
    Protocol { url: String, reason: String },
    #[error("queue item {queue_item} of job `{job}` was cancelled before it started")]
    Cancelled { job: String, queue_item: u64 },
    #[error("queue item {queue_item} of job `{job}` left the queue and was forgotten before its build was seen, and no matching build was found")]
    Lost { job: String, queue_item: u64 },
    #[error("Jenkins at {url} is not up: {state}")]
    NotUp { url: String, state: String },
    #[error("{what}: not done after {waited}")]
    Timeout { what: String, waited: String },
}

impl JenkinsError {
    /// A Jenkins that cannot be reached, fails, refuses the credentials or loses a queue item
    /// is the environment's; a disabled or unknown job and a bad URL are the input's.
    pub fn fault(&self) -> Fault {
        match self {
            JenkinsError::BadUrl { .. }
            | JenkinsError::JobDisabled { .. }
            | JenkinsError::UnknownJob { .. }
            | JenkinsError::UnknownBuild { .. } => Fault::BadInput,
            JenkinsError::Status { status, .. }
                if (400..500).contains(status) && *status != 429 =>
            {
                Fault::BadInput
            }
            JenkinsError::Unreachable { .. }
            | JenkinsError::Credentials { .. }
            | JenkinsError::Status { .. }
            | JenkinsError::Protocol { .. }
            | JenkinsError::Cancelled { .. }
            | JenkinsError::Lost { .. }
            | JenkinsError::NotUp { .. }
            | JenkinsError::Timeout { .. } => Fault::Environment,
        }
    }
}

/// The first characters of a session id, for people: `3f2a…`.
pub fn short(session: &str) -> String {
    if session.is_empty() {
        return "(none)".into();
    }
    let head: String = session.chars().take(4).collect();
    if head.len() < session.len() {
        format!("{head}…")
    } else {
        head
    }
}

/// A duration for people: `250ms`, `42s`, `10 min`, `3m05s`.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        format!("{}ms", d.as_millis())
    } else if secs < 60 {
        format!("{secs}s")
    } else if secs.is_multiple_of(60) {
        format!("{} min", secs / 60)
    } else {
        format!("{}m{:02}s", secs / 60, secs % 60)
    }
}

/// How the user proves who they are.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// An API token: no CSRF crumb needed.
    ApiToken(Secret),
    /// A password: every POST needs a crumb and the session cookie that goes with it.
    Password(Secret),
}

impl Credential {
    fn secret(&self) -> &Secret {
        match self {
            Credential::ApiToken(s) | Credential::Password(s) => s,
        }
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::ApiToken(_) => f.write_str("ApiToken(***)"),
            Credential::Password(_) => f.write_str("Password(***)"),
        }
    }
}

/// The real Jenkins, over HTTP.
#[derive(Clone)]
pub struct HttpJenkins {
    inner: Arc<Inner>,
}

struct Inner {
    /// The base URL with a trailing slash, no credentials.
    base: Url,
    user: String,
    credential: Credential,
    client: reqwest::Client,
    crumb: Mutex<CrumbState>,
}

#[derive(Clone)]
enum CrumbState {
    Unknown,
    /// The crumb issuer answered 404: CSRF protection is off.
    Off,
    Have {
        field: String,
        crumb: String,
        /// `name=value; …` of the crumb request's cookies.
        cookie: String,
    },
}

impl fmt::Debug for HttpJenkins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpJenkins")
            .field("url", &self.inner.base.as_str())
            .field("user", &self.inner.user)
            .field("credential", &self.inner.credential)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RootJson {
    mode: Option<String>,
    #[serde(default)]
    quieting_down: bool,
    #[serde(default)]
    jobs: Vec<JobSummary>,
}

#[derive(Deserialize)]
struct BuildRefJson {
    number: u64,
}

#[derive(Deserialize)]
struct JobJson {
    name: Option<String>,
    #[serde(default)]
    color: Option<String>,
    #[serde(default)]
    builds: Vec<BuildRefJson>,
}

#[derive(Deserialize)]
struct BuildJson {
    number: u64,
    #[serde(default)]
    url: String,
    #[serde(default)]
    building: bool,
    result: Option<String>,
    #[serde(default)]
    artifacts: Vec<serde_json::Value>,
    #[serde(default)]
    timestamp: u64,
    #[serde(default)]
    actions: Vec<serde_json::Value>,
}

#[derive(Deserialize)]
struct ExecutableJson {
    number: u64,
    #[serde(default)]
    url: String,
}

#[derive(Deserialize)]
struct QueueItemJson {
    why: Option<String>,
    cancelled: Option<bool>,
    executable: Option<ExecutableJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ComputerJson {
    #[serde(rename = "_class", default)]
    class: String,
    display_name: String,
    #[serde(default)]
    offline: bool,
}

#[derive(Deserialize)]
struct ComputersJson {
    #[serde(default)]
    computer: Vec<ComputerJson>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CrumbJson {
    crumb: String,
    crumb_request_field: String,
}

/// The parameters of a build, from its `actions[].parameters[]`.
pub fn parameters_of(actions: &[serde_json::Value]) -> Params {
    let mut out = Params::new();
    for action in actions {
        let Some(list) = action.get("parameters").and_then(|p| p.as_array()) else {
            continue;
        };
        for p in list {
            let Some(name) = p.get("name").and_then(|n| n.as_str()) else {
                continue;
            };
            let value = match p.get("value") {
                Some(serde_json::Value::String(s)) => s.clone(),
                None | Some(serde_json::Value::Null) => String::new(),
                Some(v) => v.to_string(),
            };
            out.insert(name.to_owned(), value);
        }
    }
    out
}

/// The innermost cause of an error, which is where reqwest says what really happened.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The queue item number of a `Location: <base>/queue/item/<N>/`.
fn queue_item_of(location: &str) -> Option<u64> {
    let rest = &location[location.find("/queue/item/")? + "/queue/item/".len()..];
    rest.trim_end_matches('/').parse().ok()
}

impl HttpJenkins {
    /// A client for the Jenkins at `url` (credentials in the URL are refused: they would
    /// end up in messages).
    pub fn new(url: &str, user: &str, credential: Credential) -> Result<HttpJenkins, JenkinsError> {
        HttpJenkins::with_timeout(url, user, credential, Duration::from_secs(30))
    }

    /// As [`HttpJenkins::new`], with the time one request may take.
    pub fn with_timeout(
        url: &str,
        user: &str,
        credential: Credential,
        timeout: Duration,
    ) -> Result<HttpJenkins, JenkinsError> {
        let bad = |reason: String| JenkinsError::BadUrl {
            url: crate::weburl::redact(url),
            reason,
        };
        let base = crate::weburl::base(url, "Jenkins").map_err(bad)?;
        if credential.secret().expose().is_empty() || user.is_empty() {
            return Err(bad(
                "the user and its token or password must not be empty".into()
            ));
        }
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .timeout(timeout)
            .build()
            .map_err(|e| JenkinsError::Unreachable {
                url: base.to_string(),
                reason: root_cause(&e),
            })?;
        Ok(HttpJenkins {
            inner: Arc::new(Inner {
                base,
                user: user.to_owned(),
                credential,
                client,
                crumb: Mutex::new(CrumbState::Unknown),
            }),
        })
    }

    /// The base URL, with a trailing slash.
    pub fn url(&self) -> &str {
        self.inner.base.as_str()
    }

    fn at(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        url.path_segments_mut()
            .expect("http URLs have paths")
            .pop_if_empty()
            .extend(segments);
        url
    }

    fn job_url(&self, job: &str, rest: &[&str]) -> Url {
        let mut segs = vec!["job", job];
        segs.extend_from_slice(rest);
        self.at(&segs)
    }

    /// One request with Basic auth; transport errors are returned as they are.
    async fn raw(
        &self,
        method: Method,
        url: &Url,
        query: &[(&str, &str)],
        crumb: Option<&CrumbState>,
    ) -> Result<reqwest::Response, reqwest::Error> {
        let mut req = self.inner.client.request(method, url.clone()).basic_auth(
            &self.inner.user,
            Some(self.inner.credential.secret().expose()),
        );
        if !query.is_empty() {
            req = req.query(query);
        }
        if let Some(CrumbState::Have {
            field,
            crumb,
            cookie,
        }) = crumb
        {
            req = req.header(field.as_str(), crumb.as_str());
            if !cookie.is_empty() {
                if let Ok(mut v) = HeaderValue::from_str(cookie) {
                    v.set_sensitive(true);
                    req = req.header(reqwest::header::COOKIE, v);
                }
            }
        }
        req.send().await.map_err(|e| e.without_url())
    }

    fn unreachable(&self, url: &Url, e: reqwest::Error) -> JenkinsError {
        JenkinsError::Unreachable {
            url: url.to_string(),
            reason: root_cause(&e),
        }
    }

    fn credentials(&self, status: StatusCode) -> JenkinsError {
        JenkinsError::Credentials {
            url: self.inner.base.to_string(),
            who: format!(" of user `{}`", self.inner.user),
            status: status.as_u16(),
            hint: if status == StatusCode::FORBIDDEN {
                ": the user lacks the permission, or the CSRF crumb was refused"
            } else {
                "; check the user and its API token"
            },
        }
    }

    /// A crumb for the next POST: fetched once (with its session cookie) and kept.
    async fn crumb(&self, fresh: bool) -> Result<CrumbState, JenkinsError> {
        if !fresh {
            let cached = self.inner.crumb.lock().unwrap().clone();
            if !matches!(cached, CrumbState::Unknown) {
                return Ok(cached);
            }
        }
        let url = self.at(&["crumbIssuer", "api", "json"]);
        let resp = self
            .raw(Method::GET, &url, &[], None)
            .await
            .map_err(|e| self.unreachable(&url, e))?;
        let status = resp.status();
        let state = match status {
            StatusCode::NOT_FOUND => CrumbState::Off,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(self.credentials(status))
            }
            s if s.is_success() => {
                let cookie = cookies_of(resp.headers());
                let json: CrumbJson = self.json(&url, resp).await?;
                // Sent as a header on every POST: a field or crumb that cannot be one is the
                // issuer's fault, not a network failure of the POST.
                if reqwest::header::HeaderName::from_bytes(json.crumb_request_field.as_bytes())
                    .is_err()
                    || HeaderValue::from_str(&json.crumb).is_err()
                {
                    return Err(JenkinsError::Protocol {
                        url: url.to_string(),
                        reason: "`crumbRequestField` or `crumb` cannot be an HTTP header".into(),
                    });
                }
                CrumbState::Have {
                    field: json.crumb_request_field,
                    crumb: json.crumb,
                    cookie,
                }
            }
            s => {
                return Err(JenkinsError::Status {
                    action: "fetching a CSRF crumb".into(),
                    url: url.to_string(),
                    status: s.as_u16(),
                })
            }
        };
        *self.inner.crumb.lock().unwrap() = state.clone();
        Ok(state)
    }

    /// A request whose transport errors and refused credentials are errors; with a
    /// password, a POST carries a crumb and is retried once with a fresh one on 403 (the
    /// session may have expired or the controller restarted).
    async fn send(
        &self,
        method: Method,
        url: &Url,
        query: &[(&str, &str)],
    ) -> Result<reqwest::Response, JenkinsError> {
        let needs_crumb =
            method == Method::POST && matches!(self.inner.credential, Credential::Password(_));
        let mut fresh = false;
        loop {
            let crumb = if needs_crumb {
                Some(self.crumb(fresh).await?)
            } else {
                None
            };
            let resp = self
                .raw(method.clone(), url, query, crumb.as_ref())
                .await
                .map_err(|e| self.unreachable(url, e))?;
            match resp.status() {
                StatusCode::FORBIDDEN if needs_crumb && !fresh => fresh = true,
                s @ (StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => {
                    return Err(self.credentials(s))
                }
                _ => return Ok(resp),
            }
        }
    }

    async fn json<T: serde::de::DeserializeOwned>(
        &self,
        url: &Url,
        resp: reqwest::Response,
    ) -> Result<T, JenkinsError> {
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(url, e))?;
        serde_json::from_slice(&bytes).map_err(|e| JenkinsError::Protocol {
            url: url.to_string(),
            reason: format!("not the JSON expected: {e}"),
        })
    }

    fn status(&self, action: String, url: &Url, status: StatusCode) -> JenkinsError {
        JenkinsError::Status {
            action,
            url: url.to_string(),
            status: status.as_u16(),
        }
    }

    /// GET a job's page; 404 is an unknown job.
    async fn get_job_json<T: serde::de::DeserializeOwned>(
        &self,
        job: &str,
        url: &Url,
        action: &str,
    ) -> Result<T, JenkinsError> {
        let resp = self.send(Method::GET, url, &[]).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Err(JenkinsError::UnknownJob {
                job: job.into(),
                url: url.to_string(),
            }),
            s if s.is_success() => self.json(url, resp).await,
            s => Err(self.status(format!("{action} `{job}`"), url, s)),
        }
    }

    /// POST to a job's page; 200 or a redirect is done.
    async fn post_job(&self, job: &str, url: &Url, action: &str) -> Result<(), JenkinsError> {
        let resp = self.send(Method::POST, url, &[]).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Err(JenkinsError::UnknownJob {
                job: job.into(),
                url: url.to_string(),
            }),
            s if s.is_success() || s.is_redirection() => Ok(()),
            s => Err(self.status(format!("{action} `{job}`"), url, s)),
        }
    }
}

/// `name=value; …` of every `Set-Cookie` of a response.
fn cookies_of(headers: &HeaderMap) -> String {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .map(str::trim)
        .filter(|kv| kv.contains('='))
        .collect::<Vec<_>>()
        .join("; ")
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

impl JenkinsApi for HttpJenkins {
    async fn probe(&self) -> Result<Probe, JenkinsError> {
        let url = self.at(&["api", "json"]);
        let resp = match self
            .raw(
                Method::GET,
                &url,
                &[("tree", "mode,quietingDown,jobs[name,color]")],
                None,
            )
            .await
        {
            Ok(r) => r,
            Err(e) => {
                return Ok(Probe::Down {
                    reason: root_cause(&e),
                })
            }
        };
        let status = resp.status();
        match status.as_u16() {
            502 | 504 => Ok(Probe::Down {
                reason: format!("HTTP {}", status.as_u16()),
            }),
            503 => Ok(Probe::Starting),
            401 | 403 => Ok(Probe::Denied {
                status: status.as_u16(),
            }),
            200 => {
                let version = header(resp.headers(), "x-jenkins");
                let session = header(resp.headers(), "x-jenkins-session");
                let root: RootJson = match self.json(&url, resp).await {
                    Ok(r) => r,
                    // The connection dropped mid-answer: the process is going down.
                    Err(JenkinsError::Unreachable { reason, .. }) => {
                        return Ok(Probe::Down { reason })
                    }
                    Err(e) => return Err(e),
                };
                Ok(Probe::Up(Instance {
                    version,
                    session,
                    mode: root.mode,
                    quieting_down: root.quieting_down,
                    jobs: root.jobs,
                }))
            }
            _ => Err(self.status("probing Jenkins".into(), &url, status)),
        }
    }

    async fn job(&self, job: &str) -> Result<JobState, JenkinsError> {
        let url = self.job_url(job, &["api", "json"]);
        let json: JobJson = self.get_job_json(job, &url, "reading job").await?;
        Ok(JobState {
            name: json.name.unwrap_or_else(|| job.to_owned()),
            color: json.color.unwrap_or_default(),
            builds: json.builds.into_iter().map(|b| b.number).collect(),
        })
    }

    async fn build(&self, job: &str, number: u64) -> Result<BuildState, JenkinsError> {
        let n = number.to_string();
        let url = self.job_url(job, &[&n, "api", "json"]);
        let resp = self.send(Method::GET, &url, &[]).await?;
        let json: BuildJson = match resp.status() {
            StatusCode::NOT_FOUND => {
                return Err(JenkinsError::UnknownBuild {
                    job: job.into(),
                    number,
                    url: url.to_string(),
                })
            }
            s if s.is_success() => self.json(&url, resp).await?,
            s => return Err(self.status(format!("reading build {job} #{number}"), &url, s)),
        };
        Ok(BuildState {
            number: json.number,
            url: json.url,
            building: json.building,
            result: json.result,
            artifacts: json.artifacts.len(),
            timestamp_ms: json.timestamp,
            parameters: parameters_of(&json.actions),
        })
    }

    async fn enable(&self, job: &str) -> Result<(), JenkinsError> {
        let url = self.job_url(job, &["enable"]);
        self.post_job(job, &url, "enabling").await
    }

    async fn disable(&self, job: &str) -> Result<(), JenkinsError> {
        let url = self.job_url(job, &["disable"]);
        self.post_job(job, &url, "disabling").await
    }

    async fn stop(&self, job: &str, number: u64) -> Result<(), JenkinsError> {
        let n = number.to_string();
        let url = self.job_url(job, &[&n, "stop"]);
        let resp = self.send(Method::POST, &url, &[]).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Err(JenkinsError::UnknownBuild {
                job: job.into(),
                number,
                url: url.to_string(),
            }),
            s if s.is_success() || s.is_redirection() => Ok(()),
            s => Err(self.status(format!("stopping build {job} #{number}"), &url, s)),
        }
    }

    async fn trigger(&self, job: &str, params: &Params) -> Result<u64, JenkinsError> {
        let (url, query): (Url, Vec<(&str, &str)>) = if params.is_empty() {
            (self.job_url(job, &["build"]), Vec::new())
        } else {
            (
                self.job_url(job, &["buildWithParameters"]),
                params
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
            )
        };
        let resp = self.send(Method::POST, &url, &query).await?;
        match resp.status() {
            StatusCode::CONFLICT => Err(JenkinsError::JobDisabled {
                job: job.into(),
                url: url.to_string(),
            }),
            StatusCode::NOT_FOUND => Err(JenkinsError::UnknownJob {
                job: job.into(),
                url: url.to_string(),
            }),
            s if s.is_success() || s.is_redirection() => {
                let location = header(resp.headers(), LOCATION.as_str());
                queue_item_of(&location).ok_or_else(|| JenkinsError::Protocol {
                    url: url.to_string(),
                    reason: format!(
                        "HTTP {} without a queue item in Location ({location:?})",
                        s.as_u16()
                    ),
                })
            }
            s => Err(self.status(format!("triggering `{job}`"), &url, s)),
        }
    }

    async fn queue_item(&self, id: u64) -> Result<QueueItem, JenkinsError> {
        let n = id.to_string();
        let url = self.at(&["queue", "item", &n, "api", "json"]);
        let resp = self.send(Method::GET, &url, &[]).await?;
        let json: QueueItemJson = match resp.status() {
            StatusCode::NOT_FOUND => return Ok(QueueItem::Gone),
            s if s.is_success() => self.json(&url, resp).await?,
            s => return Err(self.status(format!("reading queue item {id}"), &url, s)),
        };
        Ok(match json.executable {
            Some(e) => QueueItem::Started {
                number: e.number,
                url: e.url,
            },
            None if json.cancelled == Some(true) => QueueItem::Cancelled,
            None => QueueItem::Waiting { why: json.why },
        })
    }

    async fn who_am_i(&self) -> Result<WhoAmI, JenkinsError> {
        let url = self.at(&["whoAmI", "api", "json"]);
        let resp = self.send(Method::GET, &url, &[]).await?;
        match resp.status() {
            s if s.is_success() => self.json(&url, resp).await,
            s => Err(self.status("asking who am I".into(), &url, s)),
        }
    }

    async fn computers(&self) -> Result<Vec<Agent>, JenkinsError> {
        let url = self.at(&["computer", "api", "json"]);
        let resp = self
            .send(
                Method::GET,
                &url,
                &[("tree", "computer[displayName,offline,temporarilyOffline]")],
            )
            .await?;
        let json: ComputersJson = match resp.status() {
            s if s.is_success() => self.json(&url, resp).await?,
            s => return Err(self.status("listing agents".into(), &url, s)),
        };
        Ok(json
            .computer
            .into_iter()
            .filter(|c| !c.class.ends_with("MasterComputer"))
            .map(|c| Agent {
                name: c.display_name,
                online: !c.offline,
            })
            .collect())
    }

    async fn safe_restart(&self) -> Result<(), JenkinsError> {
        let url = self.at(&["safeRestart"]);
        let resp = self.send(Method::POST, &url, &[]).await?;
        match resp.status() {
            s if s.is_success() || s.is_redirection() => Ok(()),
            // The controller went down before answering: the restart is under way.
            s if s == StatusCode::SERVICE_UNAVAILABLE => Ok(()),
            s => Err(self.status("asking for a safe restart".into(), &url, s)),
        }
    }
}

#[cfg(test)]
pub mod fake {
    //! An in-memory Jenkins for the algorithms' unit tests: builds that finish after a
    //! number of polls, queue items that start after a number of polls, a scripted sequence
    //! of probe answers (a restart schedule), and a log of every call.

    use std::collections::{BTreeMap, VecDeque};
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Debug, Clone)]
    pub struct FakeBuild {
        pub number: u64,
        /// `build()` calls left before it finishes.
        pub polls_left: u32,
        pub result: String,
        pub artifacts: usize,
        pub parameters: Params,
        pub timestamp_ms: u64,
    }

    #[derive(Debug, Default)]
    struct FakeJob {
        disabled: bool,
        /// Oldest first.
        builds: Vec<FakeBuild>,
        /// Builds that appear at the n-th `job()` call: (call number, polls).
        later: Vec<(usize, u32)>,
        scans: usize,
    }

    #[derive(Debug)]
    struct FakeItem {
        job: String,
        params: Params,
        polls_left: u32,
        outcome: ItemOutcome,
        started: Option<u64>,
    }

    /// What a queue item does once its polls are used up.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum ItemOutcome {
        Start,
        Cancel,
        /// Starts a build, then answers 404 at once.
        Forget,
    }

    #[derive(Debug, Default)]
    struct State {
        jobs: BTreeMap<String, FakeJob>,
        items: BTreeMap<u64, FakeItem>,
        next_item: u64,
        /// Probe answers still to give; the last one repeats.
        probes: VecDeque<Probe>,
        who: Option<WhoAmI>,
        agents: Vec<Agent>,
        calls: Vec<String>,
        queue_polls: u32,
        build_polls: u32,
        outcome: Option<ItemOutcome>,
        clock_ms: u64,
    }

    #[derive(Debug, Clone, Default)]
    pub struct FakeJenkins {
        state: Arc<Mutex<State>>,
    }

    impl FakeJenkins {
        pub fn new() -> FakeJenkins {
            let f = FakeJenkins::default();
            {
                let mut s = f.state.lock().unwrap();
                s.next_item = 1;
                s.outcome = Some(ItemOutcome::Start);
            }
            f
        }

        pub fn add_job(&self, name: &str) {
            self.state
                .lock()
                .unwrap()
                .jobs
                .entry(name.into())
                .or_default();
        }

        /// A build that finishes (SUCCESS) after `polls` reads; returns its number.
        pub fn add_build(&self, job: &str, polls: u32, artifacts: usize, params: Params) -> u64 {
            let mut s = self.state.lock().unwrap();
            let ts = tick(&mut s);
            let j = s.jobs.entry(job.into()).or_default();
            let number = j.builds.last().map_or(1, |b| b.number + 1);
            j.builds.push(FakeBuild {
                number,
                polls_left: polls,
                result: "SUCCESS".into(),
                artifacts,
                parameters: params,
                timestamp_ms: ts,
            });
            number
        }

        /// A build of `polls` that appears at the `scan`-th read of the job (1-based).
        pub fn add_build_at_scan(&self, job: &str, scan: usize, polls: u32) {
            let mut s = self.state.lock().unwrap();
            s.jobs
                .entry(job.into())
                .or_default()
                .later
                .push((scan, polls));
        }

        /// Probe answers, in order; the last one repeats forever.
        pub fn script_probes(&self, probes: Vec<Probe>) {
            self.state.lock().unwrap().probes = probes.into();
        }

        pub fn set_who_am_i(&self, who: WhoAmI) {
            self.state.lock().unwrap().who = Some(who);
        }

        pub fn set_agents(&self, agents: Vec<Agent>) {
            self.state.lock().unwrap().agents = agents;
        }

        /// Queue items stay waiting for `polls` reads, then do `outcome`.
        pub fn set_queue(&self, polls: u32, outcome: ItemOutcome) {
            let mut s = self.state.lock().unwrap();
            s.queue_polls = polls;
            s.outcome = Some(outcome);
        }

        /// Triggered builds finish after `polls` reads.
        pub fn set_build_polls(&self, polls: u32) {
            self.state.lock().unwrap().build_polls = polls;
        }

        pub fn calls(&self) -> Vec<String> {
            self.state.lock().unwrap().calls.clone()
        }

        pub fn is_disabled(&self, job: &str) -> bool {
            self.state
                .lock()
                .unwrap()
                .jobs
                .get(job)
                .is_some_and(|j| j.disabled)
        }

        pub fn result_of(&self, job: &str, number: u64) -> Option<String> {
            let s = self.state.lock().unwrap();
            let b = s
                .jobs
                .get(job)?
                .builds
                .iter()
                .find(|b| b.number == number)?;
            (b.polls_left == 0).then(|| b.result.clone())
        }

        fn log(&self, call: String) {
            self.state.lock().unwrap().calls.push(call);
        }

        fn unknown(job: &str) -> JenkinsError {
            JenkinsError::UnknownJob {
                job: job.into(),
                url: format!("fake://job/{job}/"),
            }
        }
    }

    /// Now, in milliseconds since the epoch, later than every earlier tick.
    fn tick(s: &mut State) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        s.clock_ms = now.max(s.clock_ms + 1);
        s.clock_ms
    }

    fn start_build(s: &mut State, job: &str, params: Params) -> u64 {
        let ts = tick(s);
        let polls = s.build_polls;
        let j = s.jobs.entry(job.into()).or_default();
        let number = j.builds.last().map_or(1, |b| b.number + 1);
        j.builds.push(FakeBuild {
            number,
            polls_left: polls,
            result: "SUCCESS".into(),
            artifacts: 0,
            parameters: params,
            timestamp_ms: ts,
        });
        number
    }

    impl JenkinsApi for FakeJenkins {
        async fn probe(&self) -> Result<Probe, JenkinsError> {
            self.log("probe".into());
            let mut s = self.state.lock().unwrap();
            let p = if s.probes.len() > 1 {
                s.probes.pop_front()
            } else {
                s.probes.front().cloned()
            };
            Ok(p.unwrap_or(Probe::Down {
                reason: "nothing scripted".into(),
            }))
        }

        async fn job(&self, job: &str) -> Result<JobState, JenkinsError> {
            self.log(format!("job {job}"));
            let mut s = self.state.lock().unwrap();
            let polls_due = {
                let Some(j) = s.jobs.get_mut(job) else {
                    return Err(Self::unknown(job));
                };
                j.scans += 1;
                let scan = j.scans;
                let due: Vec<u32> = j
                    .later
                    .iter()
                    .filter(|(at, _)| *at == scan)
                    .map(|(_, p)| *p)
                    .collect();
                due
            };
            for polls in polls_due {
                let saved = s.build_polls;
                s.build_polls = polls;
                start_build(&mut s, job, Params::new());
                s.build_polls = saved;
            }
            let j = &s.jobs[job];
            let building = j.builds.iter().any(|b| b.polls_left > 0);
            let color = if j.disabled {
                "disabled".into()
            } else if building {
                "blue_anime".into()
            } else {
                "blue".into()
            };
            Ok(JobState {
                name: job.into(),
                color,
                builds: j.builds.iter().rev().map(|b| b.number).collect(),
            })
        }

        async fn build(&self, job: &str, number: u64) -> Result<BuildState, JenkinsError> {
            self.log(format!("build {job} #{number}"));
            let mut s = self.state.lock().unwrap();
            let j = s.jobs.get_mut(job).ok_or_else(|| Self::unknown(job))?;
            let b = j
                .builds
                .iter_mut()
                .find(|b| b.number == number)
                .ok_or_else(|| JenkinsError::UnknownBuild {
                    job: job.into(),
                    number,
                    url: String::new(),
                })?;
            let building = b.polls_left > 0;
            b.polls_left = b.polls_left.saturating_sub(1);
            Ok(BuildState {
                number,
                url: format!("fake://job/{job}/{number}/"),
                building,
                result: (!building).then(|| b.result.clone()),
                artifacts: b.artifacts,
                timestamp_ms: b.timestamp_ms,
                parameters: b.parameters.clone(),
            })
        }

        async fn enable(&self, job: &str) -> Result<(), JenkinsError> {
            self.log(format!("enable {job}"));
            let mut s = self.state.lock().unwrap();
            s.jobs
                .get_mut(job)
                .ok_or_else(|| Self::unknown(job))?
                .disabled = false;
            Ok(())
        }

        async fn disable(&self, job: &str) -> Result<(), JenkinsError> {
            self.log(format!("disable {job}"));
            let mut s = self.state.lock().unwrap();
            s.jobs
                .get_mut(job)
                .ok_or_else(|| Self::unknown(job))?
                .disabled = true;
            Ok(())
        }

        async fn stop(&self, job: &str, number: u64) -> Result<(), JenkinsError> {
            self.log(format!("stop {job} #{number}"));
            let mut s = self.state.lock().unwrap();
            let j = s.jobs.get_mut(job).ok_or_else(|| Self::unknown(job))?;
            if let Some(b) = j.builds.iter_mut().find(|b| b.number == number) {
                if b.polls_left > 0 {
                    // Aborting takes a moment: one more read shows it building.
                    b.polls_left = 1;
                    b.result = "ABORTED".into();
                }
            }
            Ok(())
        }

        async fn trigger(&self, job: &str, params: &Params) -> Result<u64, JenkinsError> {
            self.log(format!("trigger {job} {params:?}"));
            let mut s = self.state.lock().unwrap();
            let j = s.jobs.get(job).ok_or_else(|| Self::unknown(job))?;
            if j.disabled {
                return Err(JenkinsError::JobDisabled {
                    job: job.into(),
                    url: String::new(),
                });
            }
            let id = s.next_item;
            s.next_item += 1;
            let item = FakeItem {
                job: job.into(),
                params: params.clone(),
                polls_left: s.queue_polls,
                outcome: s.outcome.unwrap_or(ItemOutcome::Start),
                started: None,
            };
            s.items.insert(id, item);
            Ok(id)
        }

        async fn queue_item(&self, id: u64) -> Result<QueueItem, JenkinsError> {
            self.log(format!("queue {id}"));
            let mut s = self.state.lock().unwrap();
            let Some(item) = s.items.get_mut(&id) else {
                return Ok(QueueItem::Gone);
            };
            if item.polls_left > 0 {
                item.polls_left -= 1;
                return Ok(QueueItem::Waiting {
                    why: Some("Waiting for next available executor".into()),
                });
            }
            match item.outcome {
                ItemOutcome::Cancel => Ok(QueueItem::Cancelled),
                ItemOutcome::Start | ItemOutcome::Forget => {
                    let outcome = item.outcome;
                    let number = match item.started {
                        Some(n) => n,
                        None => {
                            let (job, params) = (item.job.clone(), item.params.clone());
                            let n = start_build(&mut s, &job, params);
                            s.items.get_mut(&id).unwrap().started = Some(n);
                            n
                        }
                    };
                    if outcome == ItemOutcome::Forget {
                        s.items.remove(&id);
                        return Ok(QueueItem::Gone);
                    }
                    let job = s.items[&id].job.clone();
                    Ok(QueueItem::Started {
                        number,
                        url: format!("fake://job/{job}/{number}/"),
                    })
                }
            }
        }

        async fn who_am_i(&self) -> Result<WhoAmI, JenkinsError> {
            self.log("whoAmI".into());
            Ok(self.state.lock().unwrap().who.clone().unwrap_or(WhoAmI {
                name: "kci".into(),
                authenticated: true,
                anonymous: false,
            }))
        }

        async fn computers(&self) -> Result<Vec<Agent>, JenkinsError> {
            self.log("computers".into());
            Ok(self.state.lock().unwrap().agents.clone())
        }

        async fn safe_restart(&self) -> Result<(), JenkinsError> {
            self.log("safeRestart".into());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_come_from_the_parameters_action() {
        let actions: Vec<serde_json::Value> = serde_json::from_str(
            r#"[{"_class":"hudson.model.CauseAction","causes":[]},
                {"_class":"hudson.model.ParametersAction","parameters":[
                  {"_class":"hudson.model.StringParameterValue","name":"TREE","value":"mainline"},
                  {"_class":"hudson.model.BooleanParameterValue","name":"PUBLISH","value":true}]},
                {}]"#,
        )
        .unwrap();
        let p = parameters_of(&actions);
        assert_eq!(p.get("TREE").map(String::as_str), Some("mainline"));
        assert_eq!(p.get("PUBLISH").map(String::as_str), Some("true"));
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn queue_item_numbers_come_from_the_location() {
        assert_eq!(
            queue_item_of("https://ci.example/jenkins/queue/item/4312/"),
            Some(4312)
        );
        assert_eq!(queue_item_of("http://x/queue/item/7"), Some(7));
        assert_eq!(queue_item_of("http://x/job/a/"), None);
    }

    #[test]
    fn credentials_in_the_url_are_refused_without_echoing_them() {
        let err = HttpJenkins::new(
            "https://kci:hunter2@ci.example/",
            "kci",
            Credential::ApiToken(Secret::new("tok")),
        )
        .unwrap_err();
        assert!(matches!(err, JenkinsError::BadUrl { .. }), "{err:?}");
        assert!(!format!("{err} {err:?}").contains("hunter2"), "{err:?}");
        assert_eq!(err.fault(), Fault::BadInput);
    }

    #[test]
    fn faults_follow_the_error_class() {
        let disabled = JenkinsError::JobDisabled {
            job: "j".into(),
            url: "u".into(),
        };
        assert_eq!(disabled.fault(), Fault::BadInput);
        let five = JenkinsError::Status {
            action: "a".into(),
            url: "u".into(),
            status: 502,
        };
        assert_eq!(five.fault(), Fault::Environment);
        let creds = JenkinsError::Credentials {
            url: "u".into(),
            who: String::new(),
            status: 401,
            hint: "",
        };
        assert_eq!(creds.fault(), Fault::Environment);
    }

    #[test]
    fn durations_and_sessions_read_well() {
        assert_eq!(human_duration(Duration::from_secs(600)), "10 min");
        assert_eq!(human_duration(Duration::from_secs(65)), "1m05s");
        assert_eq!(human_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(short("3f2a9c01"), "3f2a…");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let j = HttpJenkins::new(
            "http://127.0.0.1:9/",
            "kci",
            Credential::Password(Secret::new("pa55w0rd-xyz")),
        )
        .unwrap();
        let text = format!("{j:?}");
        assert!(!text.contains("pa55w0rd-xyz"), "{text}");
        assert!(text.contains("Password(***)"), "{text}");
    }
}
