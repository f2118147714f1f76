//! kernelci-backend's read API, as the pipe-cleaner verdict needs it (PROCEDURE.md §3, §4):
//! the revisions of a job and branch, and for one revision (a `kernel`) its builds, test
//! groups, test cases and the count of its regressions — so [`revision`] and [`history`] can
//! fill the pure input model of `core::verdict` once, against the real backend
//! ([`HttpBackend`]) or an in-memory [`fake`].
//!
//! The API's rules this module follows, because breaking them gives wrong numbers silently:
//! totals come from `/count/<collection>` (never with a trailing slash, a 404), never from a
//! list answer's `count` (capped by `limit`); documents are read in pages of [`PAGE`] with
//! `skip`/`limit`, sorted by `_id` (so documents arriving meanwhile land after the pages
//! read), and projected with `field=`; only filter keys the backend knows are sent (it
//! silently ignores the others, and a typo would count every revision). The token goes raw in
//! `Authorization` and is a [`Secret`]: no error, `Debug` output or log line contains it.
//! Dropped connections and 5xx answers are retried a bounded number of times with backoff;
//! 4xx answers never are.

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{StatusCode, Url};
use serde::{Deserialize, Serialize};

use crate::core::verdict::{BuildKey, KeyResults, Revision, TestKey};
use crate::error::Fault;
use crate::settings::Secret;

/// Documents per page of a list request.
pub const PAGE: usize = 1000;

/// One revision of a job's branch, as the backend names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct KernelRef {
    pub job: String,
    pub git_branch: String,
    /// `git describe` of the revision (the tag, for a pipe cleaner).
    pub kernel: String,
}

impl KernelRef {
    pub fn new(job: &str, git_branch: &str, kernel: &str) -> KernelRef {
        KernelRef {
            job: job.into(),
            git_branch: git_branch.into(),
            kernel: kernel.into(),
        }
    }

    /// The equality filters every per-revision request carries (keys every collection and
    /// `/count` know).
    fn filters(&self) -> Vec<(&'static str, String)> {
        vec![
            ("job", self.job.clone()),
            ("git_branch", self.git_branch.clone()),
            ("kernel", self.kernel.clone()),
        ]
    }
}

/// A `/job` document: one per revision of a branch. Its `status` stays `BUILD` forever.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JobDoc {
    /// `_id`'s `$oid`.
    pub id: String,
    pub job: String,
    pub git_branch: String,
    pub kernel: String,
    pub git_commit: String,
    pub git_describe: String,
    /// `created_on`'s `$date`, ms since the epoch.
    pub created_ms: u64,
    pub status: String,
}

impl JobDoc {
    pub fn kernel_ref(&self) -> KernelRef {
        KernelRef::new(&self.job, &self.git_branch, &self.kernel)
    }
}

/// A `/build` document, projected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BuildDoc {
    pub arch: String,
    pub defconfig_full: String,
    pub build_environment: String,
    /// `PASS`, `FAIL`, `BUILD`, `UNKNOWN`.
    pub status: String,
    /// Filled in later by log parsing; 0 until then.
    pub warnings: u64,
}

impl BuildDoc {
    pub fn key(&self) -> BuildKey {
        BuildKey {
            arch: self.arch.clone(),
            defconfig_full: self.defconfig_full.clone(),
            build_environment: self.build_environment.clone(),
        }
    }
}

/// A top-level `/test/group` document (`parent_id` null): one test plan run on one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestGroupDoc {
    /// The plan.
    pub name: String,
    pub device_type: String,
    pub lab_name: String,
    pub arch: String,
    pub defconfig_full: String,
    pub build_environment: String,
}

/// A `/test/case` document, projected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TestCaseDoc {
    pub name: String,
    pub plan: String,
    /// `PASS`, `FAIL`, `SKIP`, `ERROR`, `UNKNOWN`.
    pub status: String,
    /// `$oid` of its regression, when it is one.
    pub regression_id: Option<String>,
    pub device_type: String,
    pub lab_name: String,
}

impl TestCaseDoc {
    pub fn key(&self) -> TestKey {
        TestKey {
            plan: self.plan.clone(),
            device_type: self.device_type.clone(),
            lab_name: self.lab_name.clone(),
        }
    }
}

/// `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    pub version: String,
    #[serde(default)]
    pub full_version: String,
}

/// What a `/count` request counts for one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Count {
    /// `/count/build`, with `status=` when given; `with_warnings` adds `gte=warnings,1`.
    Builds {
        status: Option<String>,
        with_warnings: bool,
    },
    /// `/count/test_case`, with `status=` when given.
    TestCases { status: Option<String> },
    /// `/count/test_regression`.
    Regressions,
}

impl Count {
    pub fn builds(status: Option<&str>) -> Count {
        Count::Builds {
            status: status.map(Into::into),
            with_warnings: false,
        }
    }

    pub fn test_cases(status: Option<&str>) -> Count {
        Count::TestCases {
            status: status.map(Into::into),
        }
    }

    /// The collection name and the filters beyond the revision's.
    fn query(&self) -> (&'static str, Vec<(&'static str, String)>) {
        match self {
            Count::Builds {
                status,
                with_warnings,
            } => {
                let mut q: Vec<(&'static str, String)> =
                    status.iter().map(|s| ("status", s.clone())).collect();
                if *with_warnings {
                    q.push(("gte", "warnings,1".into()));
                }
                ("build", q)
            }
            Count::TestCases { status } => (
                "test_case",
                status.iter().map(|s| ("status", s.clone())).collect(),
            ),
            Count::Regressions => ("test_regression", Vec::new()),
        }
    }
}

/// What the verdict asks of kernelci-backend (PROCEDURE.md §3).
pub trait BackendApi: Clone + Send + Sync + 'static {
    /// `GET /version` (no token needed).
    fn version(&self) -> impl Future<Output = Result<Version, BackendError>> + Send;
    /// The newest `limit` revisions of a job's branch, newest first
    /// (`/job?job=…&git_branch=…&sort=created_on&sort_order=-1&limit=N`).
    fn revisions(
        &self,
        job: &str,
        git_branch: &str,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<JobDoc>, BackendError>> + Send;
    /// The `/job` document of one revision; `None` when the backend does not know it.
    fn job(
        &self,
        kernel: &KernelRef,
    ) -> impl Future<Output = Result<Option<JobDoc>, BackendError>> + Send;
    /// Every build of a revision.
    fn builds(
        &self,
        kernel: &KernelRef,
    ) -> impl Future<Output = Result<Vec<BuildDoc>, BackendError>> + Send;
    /// Every top-level test group of a revision (`parent_id=null`).
    fn test_groups(
        &self,
        kernel: &KernelRef,
    ) -> impl Future<Output = Result<Vec<TestGroupDoc>, BackendError>> + Send;
    /// Every test case of a revision.
    fn test_cases(
        &self,
        kernel: &KernelRef,
    ) -> impl Future<Output = Result<Vec<TestCaseDoc>, BackendError>> + Send;
    /// A total, from `/count/<collection>`.
    fn count(
        &self,
        kernel: &KernelRef,
        what: &Count,
    ) -> impl Future<Output = Result<u64, BackendError>> + Send;
}

/// Why a backend call failed. No variant ever carries the token; requests are named by
/// their path and query, which never hold it.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("kernelci-backend URL `{url}`: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("kernelci-backend needs a token: set {var}")]
    MissingToken { var: String },
    #[error("the token in {var} is not usable as an HTTP header value (it must be visible ASCII)")]
    BadToken { var: String },
    #[error(
        "kernelci-backend at {base} is unreachable (GET {request}, {attempts} attempts): {reason}"
    )]
    Unreachable {
        base: String,
        request: String,
        attempts: u32,
        reason: String,
    },
    #[error("kernelci-backend failed: GET {request} answered HTTP {status} ({attempts} attempts)")]
    Server {
        request: String,
        status: u16,
        attempts: u32,
    },
    #[error("the backend refused the token: check {var} (GET {request} answered HTTP 403)")]
    Refused { request: String, var: String },
    #[error("GET {request} answered HTTP {status}: {reason}")]
    Status {
        request: String,
        status: u16,
        reason: String,
    },
    #[error("GET {request}: unexpected answer: {reason}")]
    Malformed { request: String, reason: String },
    #[error("kernelci-backend knows no revision `{kernel}` of job `{job}`, branch `{git_branch}`")]
    UnknownKernel {
        job: String,
        git_branch: String,
        kernel: String,
    },
}

impl BackendError {
    /// A backend that cannot be reached, keeps failing, refuses the token or answers
    /// nonsense is the environment's; a revision it does not know, a bad URL and other 4xx
    /// answers are the input's.
    pub fn fault(&self) -> Fault {
        match self {
            BackendError::BadUrl { .. }
            | BackendError::Status { .. }
            | BackendError::UnknownKernel { .. } => Fault::BadInput,
            BackendError::MissingToken { .. }
            | BackendError::BadToken { .. }
            | BackendError::Unreachable { .. }
            | BackendError::Server { .. }
            | BackendError::Refused { .. }
            | BackendError::Malformed { .. } => Fault::Environment,
        }
    }
}

/// How often, and how patiently, a request is retried on 5xx and dropped connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all (at least 1).
    pub attempts: u32,
    /// The wait after the first failure; doubled after each further one.
    pub first_delay: Duration,
    /// The time one request may take.
    pub timeout: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            attempts: 4,
            first_delay: Duration::from_millis(500),
            timeout: Duration::from_secs(60),
        }
    }
}

/// The real kernelci-backend, over HTTP.
#[derive(Clone)]
pub struct HttpBackend {
    inner: Arc<Inner>,
}

struct Inner {
    /// The base URL with a trailing slash, no credentials.
    base: Url,
    /// `Authorization: <token>`, marked sensitive.
    auth: HeaderValue,
    /// The variable the token came from, to name in a refusal.
    token_var: String,
    client: reqwest::Client,
    retry: Retry,
}

impl fmt::Debug for HttpBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpBackend")
            .field("url", &self.inner.base.as_str())
            .field("token", &format_args!("{} (***)", self.inner.token_var))
            .field("retry", &self.inner.retry)
            .finish_non_exhaustive()
    }
}

impl HttpBackend {
    /// A client for the backend at `url` with the token read from the variable `token_var`
    /// (named, never shown, when the backend refuses it).
    pub fn new(url: &str, token: Secret, token_var: &str) -> Result<HttpBackend, BackendError> {
        HttpBackend::with_retry(url, token, token_var, Retry::default())
    }

    /// As [`HttpBackend::new`], with its own retry policy and timeout.
    pub fn with_retry(
        url: &str,
        token: Secret,
        token_var: &str,
        retry: Retry,
    ) -> Result<HttpBackend, BackendError> {
        let bad = |reason: String| BackendError::BadUrl {
            url: crate::weburl::redact(url),
            reason,
        };
        let base = crate::weburl::base(url, "kernelci-backend").map_err(bad)?;
        if token.expose().is_empty() {
            return Err(BackendError::MissingToken {
                var: token_var.into(),
            });
        }
        let mut auth =
            HeaderValue::from_str(token.expose()).map_err(|_| BackendError::BadToken {
                var: token_var.into(),
            })?;
        auth.set_sensitive(true);
        let client = reqwest::Client::builder()
            .connect_timeout(retry.timeout.min(Duration::from_secs(10)))
            .timeout(retry.timeout)
            .build()
            .map_err(|e| BackendError::Unreachable {
                base: base.to_string(),
                request: String::new(),
                attempts: 0,
                reason: root_cause(&e),
            })?;
        Ok(HttpBackend {
            inner: Arc::new(Inner {
                base,
                auth,
                token_var: token_var.into(),
                client,
                retry: Retry {
                    attempts: retry.attempts.max(1),
                    ..retry
                },
            }),
        })
    }

    /// The base URL, with a trailing slash.
    pub fn url(&self) -> &str {
        self.inner.base.as_str()
    }

    /// `<base><path>?<query>`; `path` has no leading and no trailing slash.
    fn url_of(&self, path: &str, query: &[(&str, String)]) -> Url {
        let mut url = self.inner.base.clone();
        url.set_path(&format!("{}{path}", self.inner.base.path()));
        if !query.is_empty() {
            url.query_pairs_mut()
                .extend_pairs(query.iter().map(|(k, v)| (*k, v.as_str())));
        }
        url
    }

    /// A GET's envelope (`code` 200 checked), retried on dropped connections and 5xx.
    async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
        with_token: bool,
    ) -> Result<serde_json::Value, BackendError> {
        let url = self.url_of(path, query);
        let request = match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_owned(),
        };
        let retry = self.inner.retry;
        let mut delay = retry.first_delay;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let failure = match self.once(&url, with_token).await {
                Ok(Answer::Body(bytes)) => return envelope(&request, &bytes),
                Ok(Answer::Status(status, body)) => {
                    if status == StatusCode::FORBIDDEN {
                        return Err(BackendError::Refused {
                            request,
                            var: self.inner.token_var.clone(),
                        });
                    }
                    if !status.is_server_error() {
                        return Err(BackendError::Status {
                            request,
                            status: status.as_u16(),
                            reason: reason_of(&body),
                        });
                    }
                    BackendError::Server {
                        request: request.clone(),
                        status: status.as_u16(),
                        attempts: attempt,
                    }
                }
                Err(e) => BackendError::Unreachable {
                    base: self.inner.base.to_string(),
                    request: request.clone(),
                    attempts: attempt,
                    reason: root_cause(&e),
                },
            };
            if attempt >= retry.attempts {
                return Err(failure);
            }
            tracing::debug!(%failure, "retrying in {delay:?}");
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(30));
        }
    }

    /// One request: its body when 2xx, else its status and body; transport errors (a
    /// dropped connection, even mid-answer) as they are.
    async fn once(&self, url: &Url, with_token: bool) -> Result<Answer, reqwest::Error> {
        let mut req = self.inner.client.get(url.clone());
        if with_token {
            req = req.header(AUTHORIZATION, self.inner.auth.clone());
        }
        let resp = req.send().await.map_err(|e| e.without_url())?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| e.without_url())?;
        Ok(if status.is_success() {
            Answer::Body(body.to_vec())
        } else {
            Answer::Status(status, body.to_vec())
        })
    }

    /// Every document of `collection` matching `filters`, page by page.
    async fn list<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        filters: Vec<(&'static str, String)>,
        fields: &[&'static str],
    ) -> Result<Vec<T>, BackendError> {
        let mut out = Vec::new();
        // The previous full page: a server ignoring `skip` would serve it forever.
        let mut last_page: Option<Vec<serde_json::Value>> = None;
        loop {
            let mut q = filters.clone();
            q.extend(fields.iter().map(|f| ("field", (*f).to_owned())));
            q.push(("sort", "_id".into()));
            q.push(("sort_order", "1".into()));
            q.push(("skip", out.len().to_string()));
            q.push(("limit", PAGE.to_string()));
            let env = self.get(path, &q, true).await?;
            let skip = out.len();
            let request = || format!("/{path} (skip {skip})");
            let page = result_array(&env).ok_or_else(|| BackendError::Malformed {
                request: request(),
                reason: "no `result` list".into(),
            })?;
            let n = page.len();
            if n > PAGE {
                return Err(BackendError::Malformed {
                    request: request(),
                    reason: format!("{n} documents in a page of {PAGE}"),
                });
            }
            if repeats(last_page.as_deref(), page) {
                return Err(BackendError::Malformed {
                    request: request(),
                    reason: "the same page twice: `skip` is ignored".into(),
                });
            }
            if n == PAGE {
                last_page = Some(page.clone());
            }
            for doc in page {
                let doc = T::deserialize(doc).map_err(|e| BackendError::Malformed {
                    request: request(),
                    reason: format!("a document is not what was expected: {e}"),
                })?;
                out.push(doc);
            }
            if n < PAGE {
                return Ok(out);
            }
        }
    }
}

enum Answer {
    Body(Vec<u8>),
    Status(StatusCode, Vec<u8>),
}

/// The `result` of an answer, checked to be an envelope of `code` 200.
fn envelope(request: &str, bytes: &[u8]) -> Result<serde_json::Value, BackendError> {
    let malformed = |reason: String| BackendError::Malformed {
        request: request.to_owned(),
        reason,
    };
    let v: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| malformed(format!("not JSON: {e}")))?;
    match v.get("code").and_then(|c| c.as_u64()) {
        Some(200) => Ok(v),
        Some(code) => Err(malformed(format!(
            "`code` {code} in a 200 answer: {}",
            reason_of(bytes)
        ))),
        None => Err(malformed("no `code`: not a kernelci-backend answer".into())),
    }
}

/// Whether `page` is the previous full page again (by its first `_id` or, without ids, by
/// its content): the server ignores `skip`, and paging on would never end.
fn repeats(prev: Option<&[serde_json::Value]>, page: &[serde_json::Value]) -> bool {
    let Some(prev) = prev else { return false };
    match (page.first(), prev.first()) {
        (None, _) => false,
        (Some(a), Some(b)) if a.get("_id").is_some() => a.get("_id") == b.get("_id"),
        _ => prev == page,
    }
}

fn result_array(env: &serde_json::Value) -> Option<&Vec<serde_json::Value>> {
    env.get("result").and_then(|r| r.as_array())
}

/// The `reason` of an error envelope, or the start of the body.
fn reason_of(body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) {
        if let Some(r) = v.get("reason").and_then(|r| r.as_str()) {
            return r.to_owned();
        }
    }
    let text = String::from_utf8_lossy(body);
    let text: String = text.trim().chars().take(200).collect();
    if text.is_empty() {
        "(empty answer)".into()
    } else {
        text
    }
}

/// The innermost cause of an error, which is where reqwest says what really happened.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// The documents as they travel: `$oid`, `$date`, fields that may be missing or null.
mod wire {
    use serde::{Deserialize, Deserializer};

    /// A string that may be missing or null.
    fn text<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        Ok(Option::<String>::deserialize(d)?.unwrap_or_default())
    }

    /// `{"$oid": "<hex>"}` (a plain string is accepted too); null or missing is `None`.
    fn oid<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Oid {
            Wrapped {
                #[serde(rename = "$oid")]
                oid: String,
            },
            Plain(String),
        }
        Ok(Option::<Oid>::deserialize(d)?.map(|o| match o {
            Oid::Wrapped { oid } | Oid::Plain(oid) => oid,
        }))
    }

    /// `{"$date": <ms>}` or `{"$date": {"$numberLong": "<ms>"}}`; null or missing is 0.
    fn date<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Ms {
            Number(f64),
            Long {
                #[serde(rename = "$numberLong")]
                long: String,
            },
        }
        #[derive(Deserialize)]
        struct Date {
            #[serde(rename = "$date")]
            date: Ms,
        }
        match Option::<Date>::deserialize(d)? {
            None => Ok(0),
            Some(Date {
                date: Ms::Number(n),
            }) if n >= 0.0 => Ok(n as u64),
            Some(Date {
                date: Ms::Number(_),
            }) => Err(serde::de::Error::custom("a date before 1970")),
            Some(Date {
                date: Ms::Long { long },
            }) => long
                .parse()
                .map_err(|_| serde::de::Error::custom("`$numberLong` is not a number")),
        }
    }

    /// A count that may be missing or null (0).
    fn number<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.unwrap_or(0))
    }

    #[derive(Deserialize)]
    pub struct Job {
        #[serde(rename = "_id", default, deserialize_with = "oid")]
        pub id: Option<String>,
        #[serde(default, deserialize_with = "text")]
        pub job: String,
        #[serde(default, deserialize_with = "text")]
        pub git_branch: String,
        #[serde(default, deserialize_with = "text")]
        pub kernel: String,
        #[serde(default, deserialize_with = "text")]
        pub git_commit: String,
        #[serde(default, deserialize_with = "text")]
        pub git_describe: String,
        #[serde(default, deserialize_with = "date")]
        pub created_on: u64,
        #[serde(default, deserialize_with = "text")]
        pub status: String,
    }

    #[derive(Deserialize)]
    pub struct Build {
        #[serde(default, deserialize_with = "text")]
        pub arch: String,
        #[serde(default, deserialize_with = "text")]
        pub defconfig_full: String,
        #[serde(default, deserialize_with = "text")]
        pub build_environment: String,
        #[serde(default, deserialize_with = "text")]
        pub status: String,
        #[serde(default, deserialize_with = "number")]
        pub warnings: u64,
    }

    #[derive(Deserialize)]
    pub struct TestGroup {
        #[serde(default, deserialize_with = "text")]
        pub name: String,
        #[serde(default, deserialize_with = "text")]
        pub device_type: String,
        #[serde(default, deserialize_with = "text")]
        pub lab_name: String,
        #[serde(default, deserialize_with = "text")]
        pub arch: String,
        #[serde(default, deserialize_with = "text")]
        pub defconfig_full: String,
        #[serde(default, deserialize_with = "text")]
        pub build_environment: String,
    }

    #[derive(Deserialize)]
    pub struct TestCase {
        #[serde(default, deserialize_with = "text")]
        pub name: String,
        #[serde(default, deserialize_with = "text")]
        pub plan: String,
        #[serde(default, deserialize_with = "text")]
        pub status: String,
        #[serde(default, deserialize_with = "oid")]
        pub regression_id: Option<String>,
        #[serde(default, deserialize_with = "text")]
        pub device_type: String,
        #[serde(default, deserialize_with = "text")]
        pub lab_name: String,
    }
}

impl From<wire::Job> for JobDoc {
    fn from(j: wire::Job) -> JobDoc {
        JobDoc {
            id: j.id.unwrap_or_default(),
            job: j.job,
            git_branch: j.git_branch,
            kernel: j.kernel,
            git_commit: j.git_commit,
            git_describe: j.git_describe,
            created_ms: j.created_on,
            status: j.status,
        }
    }
}

const JOB_FIELDS: &[&str] = &[
    "job",
    "git_branch",
    "kernel",
    "git_commit",
    "git_describe",
    "created_on",
    "status",
];

impl BackendApi for HttpBackend {
    async fn version(&self) -> Result<Version, BackendError> {
        let env = self.get("version", &[], false).await?;
        let first = result_array(&env).and_then(|r| r.first()).cloned();
        first
            .and_then(|v| Version::deserialize(v).ok())
            .ok_or_else(|| BackendError::Malformed {
                request: "/version".into(),
                reason: "no `result[0].version`".into(),
            })
    }

    async fn revisions(
        &self,
        job: &str,
        git_branch: &str,
        limit: usize,
    ) -> Result<Vec<JobDoc>, BackendError> {
        if limit == 0 {
            // `limit=0` would mean "all of them".
            return Ok(Vec::new());
        }
        let mut q: Vec<(&str, String)> =
            vec![("job", job.into()), ("git_branch", git_branch.into())];
        q.extend(JOB_FIELDS.iter().map(|f| ("field", (*f).to_owned())));
        q.push(("sort", "created_on".into()));
        q.push(("sort_order", "-1".into()));
        q.push(("limit", limit.to_string()));
        let env = self.get("job", &q, true).await?;
        let docs = result_array(&env).ok_or_else(|| BackendError::Malformed {
            request: "/job".into(),
            reason: "no `result` list".into(),
        })?;
        let mut out = Vec::with_capacity(docs.len());
        for d in docs.iter().take(limit) {
            let j = wire::Job::deserialize(d).map_err(|e| BackendError::Malformed {
                request: "/job".into(),
                reason: format!("a document is not what was expected: {e}"),
            })?;
            out.push(JobDoc::from(j));
        }
        Ok(out)
    }

    async fn job(&self, kernel: &KernelRef) -> Result<Option<JobDoc>, BackendError> {
        let mut q = kernel.filters();
        q.extend(JOB_FIELDS.iter().map(|f| ("field", (*f).to_owned())));
        q.push(("sort", "created_on".into()));
        q.push(("sort_order", "-1".into()));
        q.push(("limit", "1".into()));
        let env = self.get("job", &q, true).await?;
        let first = result_array(&env).and_then(|r| r.first());
        let Some(d) = first else {
            return Ok(None);
        };
        let j = wire::Job::deserialize(d).map_err(|e| BackendError::Malformed {
            request: "/job".into(),
            reason: format!("a document is not what was expected: {e}"),
        })?;
        // A backend ignoring a filter would answer another revision.
        if j.kernel != kernel.kernel || j.job != kernel.job || j.git_branch != kernel.git_branch {
            return Err(BackendError::Malformed {
                request: "/job".into(),
                reason: format!(
                    "asked for `{}` and answered `{}` of {}/{}",
                    kernel.kernel, j.kernel, j.job, j.git_branch
                ),
            });
        }
        Ok(Some(j.into()))
    }

    async fn builds(&self, kernel: &KernelRef) -> Result<Vec<BuildDoc>, BackendError> {
        let docs: Vec<wire::Build> = self
            .list(
                "build",
                kernel.filters(),
                &[
                    "arch",
                    "defconfig_full",
                    "build_environment",
                    "status",
                    "warnings",
                ],
            )
            .await?;
        Ok(docs
            .into_iter()
            .map(|b| BuildDoc {
                arch: b.arch,
                defconfig_full: b.defconfig_full,
                build_environment: b.build_environment,
                status: b.status,
                warnings: b.warnings,
            })
            .collect())
    }

    async fn test_groups(&self, kernel: &KernelRef) -> Result<Vec<TestGroupDoc>, BackendError> {
        let mut filters = kernel.filters();
        filters.push(("parent_id", "null".into()));
        let docs: Vec<wire::TestGroup> = self
            .list(
                "test/group",
                filters,
                &[
                    "name",
                    "device_type",
                    "lab_name",
                    "arch",
                    "defconfig_full",
                    "build_environment",
                ],
            )
            .await?;
        Ok(docs
            .into_iter()
            .map(|g| TestGroupDoc {
                name: g.name,
                device_type: g.device_type,
                lab_name: g.lab_name,
                arch: g.arch,
                defconfig_full: g.defconfig_full,
                build_environment: g.build_environment,
            })
            .collect())
    }

    async fn test_cases(&self, kernel: &KernelRef) -> Result<Vec<TestCaseDoc>, BackendError> {
        let docs: Vec<wire::TestCase> = self
            .list(
                "test/case",
                kernel.filters(),
                &[
                    "name",
                    "plan",
                    "status",
                    "regression_id",
                    "device_type",
                    "lab_name",
                ],
            )
            .await?;
        Ok(docs
            .into_iter()
            .map(|c| TestCaseDoc {
                name: c.name,
                plan: c.plan,
                status: c.status,
                regression_id: c.regression_id,
                device_type: c.device_type,
                lab_name: c.lab_name,
            })
            .collect())
    }

    async fn count(&self, kernel: &KernelRef, what: &Count) -> Result<u64, BackendError> {
        let (collection, extra) = what.query();
        let mut q = kernel.filters();
        q.extend(extra);
        // No trailing slash: `/count/build/` is a 404.
        let path = format!("count/{collection}");
        let env = self.get(&path, &q, true).await?;
        let entry = result_array(&env)
            .and_then(|r| r.first())
            .and_then(|e| e.get("count"))
            .and_then(|c| c.as_u64());
        entry.ok_or_else(|| BackendError::Malformed {
            request: format!("/{path}"),
            reason: "no `result[0].count`".into(),
        })
    }
}

/// The verdict's view of one revision of `job`'s `git_branch`, read from the backend; a
/// revision it does not know is [`BackendError::UnknownKernel`].
pub async fn revision<A: BackendApi>(
    api: &A,
    job: &str,
    git_branch: &str,
    kernel: &str,
) -> Result<Revision, BackendError> {
    let k = KernelRef::new(job, git_branch, kernel);
    let doc = api
        .job(&k)
        .await?
        .ok_or_else(|| BackendError::UnknownKernel {
            job: job.into(),
            git_branch: git_branch.into(),
            kernel: kernel.into(),
        })?;
    fill(api, &doc).await
}

/// The newest `n + 1` revisions of `job`'s `git_branch` (the newest and the `n` it is
/// compared with), newest first.
pub async fn history<A: BackendApi>(
    api: &A,
    job: &str,
    git_branch: &str,
    n: usize,
) -> Result<Vec<Revision>, BackendError> {
    let mut docs = api.revisions(job, git_branch, n + 1).await?;
    // Newest first, whatever order the answer came in.
    docs.sort_by_key(|d| std::cmp::Reverse(d.created_ms));
    let mut out = Vec::with_capacity(docs.len());
    for doc in &docs {
        out.push(fill(api, doc).await?);
    }
    Ok(out)
}

/// One revision's counts, keys and labs. Results keep arriving for hours, so this is a
/// snapshot: the status counts are read before the totals (a total is never below the sum of
/// its parts), and the keys come from the documents read after them.
async fn fill<A: BackendApi>(api: &A, doc: &JobDoc) -> Result<Revision, BackendError> {
    let k = doc.kernel_ref();
    let mut rev = Revision {
        kernel: doc.kernel.clone(),
        git_commit: doc.git_commit.clone(),
        created_ms: doc.created_ms,
        ..Revision::default()
    };

    let passed = api.count(&k, &Count::builds(Some("PASS"))).await?;
    let warned = api
        .count(
            &k,
            &Count::Builds {
                status: Some("PASS".into()),
                with_warnings: true,
            },
        )
        .await?;
    let failed = api.count(&k, &Count::builds(Some("FAIL"))).await?;
    let total = api.count(&k, &Count::builds(None)).await?;
    rev.builds.pass = passed.saturating_sub(warned);
    rev.builds.pass_warnings = warned.min(passed);
    rev.builds.fail = failed;
    // Saturating: a server's counts are not trusted to be sane.
    rev.builds.total = total.max(passed.saturating_add(failed));
    rev.builds.other = rev
        .builds
        .total
        .saturating_sub(passed)
        .saturating_sub(failed);

    let mut by_status = [0u64; 3];
    for (i, status) in ["PASS", "FAIL", "SKIP"].into_iter().enumerate() {
        by_status[i] = api.count(&k, &Count::test_cases(Some(status))).await?;
    }
    let [pass, fail, skip] = by_status;
    let total = api.count(&k, &Count::test_cases(None)).await?;
    rev.tests.pass = pass;
    rev.tests.fail = fail;
    rev.tests.skip = skip;
    rev.tests.total = total.max(pass.saturating_add(fail).saturating_add(skip));
    rev.tests.other = rev
        .tests
        .total
        .saturating_sub(pass)
        .saturating_sub(fail)
        .saturating_sub(skip);

    rev.regressions = api.count(&k, &Count::Regressions).await?;

    for b in api.builds(&k).await? {
        // Read in `_id` order: a key built twice keeps its latest build's status.
        rev.build_keys.insert(b.key(), b.status);
    }
    let mut keys: BTreeMap<TestKey, KeyResults> = BTreeMap::new();
    for c in api.test_cases(&k).await? {
        let r = keys.entry(c.key()).or_default();
        match c.status.as_str() {
            "PASS" => r.pass += 1,
            "FAIL" => r.fail += 1,
            _ => r.other += 1,
        }
    }
    rev.test_keys = keys;
    rev.labs = api
        .test_groups(&k)
        .await?
        .into_iter()
        .map(|g| g.lab_name)
        .filter(|l| !l.is_empty())
        .collect();
    Ok(rev)
}

#[cfg(test)]
pub mod fake {
    //! An in-memory kernelci-backend for the verdict's unit tests: revisions and their
    //! documents added directly, counts computed as the real `/count` does, and a log of
    //! every call.

    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Debug, Default)]
    struct State {
        /// In the order added.
        jobs: Vec<JobDoc>,
        builds: Vec<(KernelRef, BuildDoc)>,
        groups: Vec<(KernelRef, TestGroupDoc)>,
        cases: Vec<(KernelRef, TestCaseDoc)>,
        regressions: Vec<KernelRef>,
        calls: Vec<String>,
        /// Every `/count` answers this instead, when set (a server's absurd totals).
        counts: Option<u64>,
    }

    #[derive(Debug, Clone, Default)]
    pub struct FakeBackend {
        state: Arc<Mutex<State>>,
    }

    impl FakeBackend {
        pub fn new() -> FakeBackend {
            FakeBackend::default()
        }

        /// A revision of `job`'s `git_branch`; returns its reference.
        pub fn add_revision(
            &self,
            job: &str,
            git_branch: &str,
            kernel: &str,
            commit: &str,
            created_ms: u64,
        ) -> KernelRef {
            let mut s = self.state.lock().unwrap();
            let id = format!("{:024x}", s.jobs.len() + 1);
            s.jobs.push(JobDoc {
                id,
                job: job.into(),
                git_branch: git_branch.into(),
                kernel: kernel.into(),
                git_commit: commit.into(),
                git_describe: kernel.into(),
                created_ms,
                status: "BUILD".into(),
            });
            KernelRef::new(job, git_branch, kernel)
        }

        /// Every later `/count` answers `n`, whatever it counts.
        pub fn answer_counts(&self, n: u64) {
            self.state.lock().unwrap().counts = Some(n);
        }

        pub fn add_build(&self, k: &KernelRef, key: &BuildKey, status: &str, warnings: u64) {
            self.state.lock().unwrap().builds.push((
                k.clone(),
                BuildDoc {
                    arch: key.arch.clone(),
                    defconfig_full: key.defconfig_full.clone(),
                    build_environment: key.build_environment.clone(),
                    status: status.into(),
                    warnings,
                },
            ));
        }

        /// A test case (and its test group, once per key); `regression` adds a tracked
        /// regression.
        pub fn add_case(
            &self,
            k: &KernelRef,
            key: &TestKey,
            name: &str,
            status: &str,
            regression: bool,
        ) {
            let mut s = self.state.lock().unwrap();
            let group = TestGroupDoc {
                name: key.plan.clone(),
                device_type: key.device_type.clone(),
                lab_name: key.lab_name.clone(),
                arch: String::new(),
                defconfig_full: String::new(),
                build_environment: String::new(),
            };
            if !s.groups.iter().any(|(gk, g)| gk == k && *g == group) {
                s.groups.push((k.clone(), group));
            }
            let regression_id = regression.then(|| format!("{:024x}", s.regressions.len() + 1));
            if regression {
                s.regressions.push(k.clone());
            }
            s.cases.push((
                k.clone(),
                TestCaseDoc {
                    name: name.into(),
                    plan: key.plan.clone(),
                    status: status.into(),
                    regression_id,
                    device_type: key.device_type.clone(),
                    lab_name: key.lab_name.clone(),
                },
            ));
        }

        pub fn calls(&self) -> Vec<String> {
            self.state.lock().unwrap().calls.clone()
        }

        fn log(&self, call: String) {
            self.state.lock().unwrap().calls.push(call);
        }
    }

    impl BackendApi for FakeBackend {
        async fn version(&self) -> Result<Version, BackendError> {
            self.log("version".into());
            Ok(Version {
                version: "2021.11.1".into(),
                full_version: "2021.11.1".into(),
            })
        }

        async fn revisions(
            &self,
            job: &str,
            git_branch: &str,
            limit: usize,
        ) -> Result<Vec<JobDoc>, BackendError> {
            self.log(format!("revisions {job} {git_branch} {limit}"));
            let s = self.state.lock().unwrap();
            let mut docs: Vec<JobDoc> = s
                .jobs
                .iter()
                .filter(|j| j.job == job && j.git_branch == git_branch)
                .cloned()
                .collect();
            docs.sort_by_key(|d| std::cmp::Reverse(d.created_ms));
            docs.truncate(limit);
            Ok(docs)
        }

        async fn job(&self, k: &KernelRef) -> Result<Option<JobDoc>, BackendError> {
            self.log(format!("job {}", k.kernel));
            let s = self.state.lock().unwrap();
            Ok(s.jobs.iter().find(|j| j.kernel_ref() == *k).cloned())
        }

        async fn builds(&self, k: &KernelRef) -> Result<Vec<BuildDoc>, BackendError> {
            self.log(format!("builds {}", k.kernel));
            let s = self.state.lock().unwrap();
            Ok(s.builds
                .iter()
                .filter(|(bk, _)| bk == k)
                .map(|(_, b)| b.clone())
                .collect())
        }

        async fn test_groups(&self, k: &KernelRef) -> Result<Vec<TestGroupDoc>, BackendError> {
            self.log(format!("test_groups {}", k.kernel));
            let s = self.state.lock().unwrap();
            Ok(s.groups
                .iter()
                .filter(|(gk, _)| gk == k)
                .map(|(_, g)| g.clone())
                .collect())
        }

        async fn test_cases(&self, k: &KernelRef) -> Result<Vec<TestCaseDoc>, BackendError> {
            self.log(format!("test_cases {}", k.kernel));
            let s = self.state.lock().unwrap();
            Ok(s.cases
                .iter()
                .filter(|(ck, _)| ck == k)
                .map(|(_, c)| c.clone())
                .collect())
        }

        async fn count(&self, k: &KernelRef, what: &Count) -> Result<u64, BackendError> {
            self.log(format!("count {} {what:?}", k.kernel));
            let s = self.state.lock().unwrap();
            if let Some(n) = s.counts {
                return Ok(n);
            }
            let n = match what {
                Count::Builds {
                    status,
                    with_warnings,
                } => s
                    .builds
                    .iter()
                    .filter(|(bk, b)| {
                        bk == k
                            && status.as_ref().is_none_or(|st| *st == b.status)
                            && (!with_warnings || b.warnings >= 1)
                    })
                    .count(),
                Count::TestCases { status } => s
                    .cases
                    .iter()
                    .filter(|(ck, c)| ck == k && status.as_ref().is_none_or(|st| *st == c.status))
                    .count(),
                Count::Regressions => s.regressions.iter().filter(|rk| *rk == k).count(),
            };
            Ok(n as u64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::FakeBackend;
    use super::*;

    fn block_on<F: Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    fn bkey(arch: &str, defconfig: &str) -> BuildKey {
        BuildKey {
            arch: arch.into(),
            defconfig_full: defconfig.into(),
            build_environment: "gcc-10".into(),
        }
    }

    fn tkey(plan: &str, device: &str, lab: &str) -> TestKey {
        TestKey {
            plan: plan.into(),
            device_type: device.into(),
            lab_name: lab.into(),
        }
    }

    #[test]
    fn absurd_counts_saturate_instead_of_overflowing() {
        let api = FakeBackend::new();
        api.add_revision("kernelci", "kernelci.org", "v1", "abc", 5);
        api.answer_counts(u64::MAX);
        let rev = block_on(revision(&api, "kernelci", "kernelci.org", "v1")).unwrap();
        assert_eq!(rev.builds.total, u64::MAX);
        assert_eq!(rev.tests.total, u64::MAX);
        assert_eq!((rev.builds.other, rev.tests.other), (0, 0));
    }

    #[test]
    fn a_page_served_again_is_seen_with_or_without_ids() {
        use serde_json::json;
        let ided = vec![
            json!({"_id": {"$oid": "1"}, "a": 1}),
            json!({"_id": {"$oid": "2"}}),
        ];
        let next = vec![json!({"_id": {"$oid": "3"}, "a": 1})];
        let bare = vec![json!({"a": 1}), json!({"a": 2})];
        assert!(repeats(Some(&ided), &ided));
        assert!(!repeats(Some(&ided), &next));
        assert!(
            repeats(Some(&bare), &bare),
            "id-less pages repeated must end the paging"
        );
        assert!(!repeats(Some(&bare), &[json!({"a": 3})]));
        assert!(!repeats(None, &bare));
        assert!(!repeats(Some(&bare), &[]));
    }

    #[test]
    fn a_revision_is_counted_and_keyed() {
        let api = FakeBackend::new();
        let k = api.add_revision("kernelci", "kernelci.org", "kernelci-20211122.0", "abc", 5);
        api.add_build(&k, &bkey("arm64", "defconfig"), "PASS", 0);
        api.add_build(&k, &bkey("x86_64", "x86_64_defconfig"), "PASS", 3);
        api.add_build(&k, &bkey("arm", "multi_v7_defconfig"), "FAIL", 0);
        api.add_build(&k, &bkey("riscv", "defconfig"), "BUILD", 0);
        let qemu = tkey("baseline", "qemu_x86_64", "lab-collabora");
        let rpi = tkey("baseline", "bcm2711-rpi-4-b", "lab-broonie");
        api.add_case(&k, &qemu, "login", "PASS", false);
        api.add_case(&k, &qemu, "dmesg.crit", "FAIL", true);
        api.add_case(&k, &rpi, "login", "SKIP", false);
        api.add_case(&k, &rpi, "dmesg.emerg", "ERROR", false);
        // Another branch with the same kernel must not be counted.
        let other = api.add_revision("kernelci", "main", "kernelci-20211122.0", "abc", 6);
        api.add_build(&other, &bkey("arm64", "defconfig"), "FAIL", 0);

        let rev = block_on(revision(
            &api,
            "kernelci",
            "kernelci.org",
            "kernelci-20211122.0",
        ))
        .unwrap();
        assert_eq!(rev.git_commit, "abc");
        assert_eq!(rev.created_ms, 5);
        assert_eq!(
            (
                rev.builds.total,
                rev.builds.pass,
                rev.builds.pass_warnings,
                rev.builds.fail,
                rev.builds.other
            ),
            (4, 1, 1, 1, 1)
        );
        assert_eq!(
            (
                rev.tests.total,
                rev.tests.pass,
                rev.tests.fail,
                rev.tests.skip,
                rev.tests.other
            ),
            (4, 1, 1, 1, 1)
        );
        assert_eq!(rev.regressions, 1);
        assert_eq!(rev.build_keys[&bkey("arm", "multi_v7_defconfig")], "FAIL");
        assert_eq!(rev.build_keys.len(), 4);
        assert_eq!(
            rev.test_keys[&qemu],
            KeyResults {
                pass: 1,
                fail: 1,
                other: 0
            }
        );
        assert_eq!(
            rev.test_keys[&rpi],
            KeyResults {
                pass: 0,
                fail: 0,
                other: 2
            }
        );
        assert_eq!(
            rev.labs.iter().map(String::as_str).collect::<Vec<_>>(),
            ["lab-broonie", "lab-collabora"]
        );
    }

    #[test]
    fn history_is_newest_first_and_an_unknown_kernel_is_bad_input() {
        let api = FakeBackend::new();
        api.add_revision("kernelci", "kernelci.org", "k1", "c1", 100);
        api.add_revision("kernelci", "kernelci.org", "k3", "c3", 300);
        api.add_revision("kernelci", "kernelci.org", "k2", "c2", 200);
        let revs = block_on(history(&api, "kernelci", "kernelci.org", 1)).unwrap();
        let kernels: Vec<_> = revs.iter().map(|r| r.kernel.as_str()).collect();
        assert_eq!(kernels, ["k3", "k2"]);

        let err = block_on(revision(&api, "kernelci", "kernelci.org", "k9")).unwrap_err();
        assert!(matches!(err, BackendError::UnknownKernel { .. }), "{err:?}");
        assert_eq!(err.fault(), Fault::BadInput);
        assert!(err.to_string().contains("`k9`"), "{err}");
    }

    #[test]
    fn faults_follow_the_error_class() {
        let refused = BackendError::Refused {
            request: "/build".into(),
            var: "KCI_BACKEND_TOKEN".into(),
        };
        assert_eq!(refused.fault(), Fault::Environment);
        assert!(refused
            .to_string()
            .contains("the backend refused the token: check KCI_BACKEND_TOKEN"));
        let server = BackendError::Server {
            request: "/build".into(),
            status: 502,
            attempts: 4,
        };
        assert_eq!(server.fault(), Fault::Environment);
        let malformed = BackendError::Malformed {
            request: "/build".into(),
            reason: "x".into(),
        };
        assert_eq!(malformed.fault(), Fault::Environment);
        let status = BackendError::Status {
            request: "/count/x".into(),
            status: 404,
            reason: "Resource not found".into(),
        };
        assert_eq!(status.fault(), Fault::BadInput);
    }

    #[test]
    fn the_token_never_shows() {
        let b = HttpBackend::new(
            "https://api.kernelci.org",
            Secret::new("s3cr3t-t0k3n"),
            "KCI_BACKEND_TOKEN",
        )
        .unwrap();
        let text = format!("{b:?}");
        assert!(!text.contains("s3cr3t-t0k3n"), "{text}");
        assert!(text.contains("KCI_BACKEND_TOKEN"), "{text}");
        assert_eq!(b.url(), "https://api.kernelci.org/");

        let err = HttpBackend::new(
            "https://me:s3cr3t@api.kernelci.org/",
            Secret::new("t"),
            "KCI_BACKEND_TOKEN",
        )
        .unwrap_err();
        assert!(!format!("{err} {err:?}").contains("s3cr3t"), "{err:?}");
        assert_eq!(err.fault(), Fault::BadInput);

        let err = HttpBackend::new("https://api.kernelci.org/", Secret::new(""), "KCI_TOKEN")
            .unwrap_err();
        assert!(err.to_string().contains("set KCI_TOKEN"), "{err}");
    }

    #[test]
    fn count_urls_have_no_trailing_slash() {
        let b = HttpBackend::new(
            "https://example.org/api",
            Secret::new("t"),
            "KCI_BACKEND_TOKEN",
        )
        .unwrap();
        let url = b.url_of("count/build", &[("kernel", "v5.16-rc1".into())]);
        assert_eq!(
            url.as_str(),
            "https://example.org/api/count/build?kernel=v5.16-rc1"
        );
    }

    #[test]
    fn documents_decode_oids_and_dates() {
        let j: wire::Job = serde_json::from_str(
            r#"{"_id":{"$oid":"619b2e0c7b2f4c2b8a1d0e3f"},"job":"kernelci","kernel":"k",
                "git_branch":"kernelci.org","git_commit":"abc","created_on":{"$date":1637560332000},
                "status":"BUILD"}"#,
        )
        .unwrap();
        let j = JobDoc::from(j);
        assert_eq!(j.id, "619b2e0c7b2f4c2b8a1d0e3f");
        assert_eq!(j.created_ms, 1637560332000);
        let j: wire::Job =
            serde_json::from_str(r#"{"created_on":{"$date":{"$numberLong":"42"}}}"#).unwrap();
        assert_eq!(j.created_on, 42);
        let c: wire::TestCase =
            serde_json::from_str(r#"{"name":"login","regression_id":null,"status":"PASS"}"#)
                .unwrap();
        assert_eq!(c.regression_id, None);
        let c: wire::TestCase = serde_json::from_str(r#"{"regression_id":{"$oid":"61"}}"#).unwrap();
        assert_eq!(c.regression_id.as_deref(), Some("61"));
        let b: wire::Build =
            serde_json::from_str(r#"{"arch":"arm","warnings":null,"status":"PASS"}"#).unwrap();
        assert_eq!(b.warnings, 0);
    }

    #[test]
    fn an_envelope_needs_code_200() {
        assert!(envelope("/x", br#"{"code":200,"result":[]}"#).is_ok());
        let err = envelope("/x", br#"{"result":[]}"#).unwrap_err();
        assert!(matches!(err, BackendError::Malformed { .. }), "{err:?}");
        let err = envelope("/x", b"<html>").unwrap_err();
        assert_eq!(err.fault(), Fault::Environment);
    }
}
