//! A faithful HTTP test double of Jenkins, speaking the protocol of PROCEDURE.md §1: the
//! root page with `X-Jenkins`/`X-Jenkins-Session`, jobs and builds (parameters in
//! `actions[].parameters`, artifacts archived while running), triggers answering 201 +
//! `Location: …/queue/item/<N>/` whose items wait, start a build and are forgotten (404) a
//! while after leaving the queue, enable/disable (a disabled job answers 409 to a trigger),
//! stop, whoAmI, the agents, Basic auth (401), CSRF crumbs tied to the `JSESSIONID.<node>`
//! cookie of the crumb request for password users (403 without), and restarts: the old
//! instance served for a while (quieting down), then the listener really closed (connections
//! refused, open ones dropped), then 503 on every page, then a new session.
//!
//! It runs on its own threads and runtimes, so `#[tokio::test]`s and tests running the real
//! binary against [`JenkinsDouble::url`] can both use it. Every request is recorded.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine as _;
use serde_json::{json, Value};

pub const VERSION: &str = "2.401.3";
pub const USER: &str = "kci";
pub const TOKEN: &str = "11a9f0c3e4b2d7a8c6e5f4b3a2918d7c";
pub const PASSWORD_USER: &str = "operator";
pub const PASSWORD: &str = "correct-horse-battery";

/// One request as the double saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// An `Authorization` header was sent (valid or not).
    pub auth: bool,
    pub status: u16,
}

/// What a restart does, phase by phase.
#[derive(Debug, Clone, Copy)]
pub struct RestartPlan {
    /// The old instance keeps answering (quieting down) this long.
    pub old_for: Duration,
    /// Then the port refuses connections this long.
    pub down_for: Duration,
    /// Then every page answers 503 this long.
    pub starting_for: Duration,
    pub then: Then,
}

/// How a restart ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Then {
    /// A new instance, with a new session.
    Back,
    /// The port keeps refusing connections.
    StaysDown,
    /// Every page keeps answering 503.
    StaysStarting,
}

impl Default for RestartPlan {
    fn default() -> Self {
        RestartPlan {
            old_for: Duration::from_millis(100),
            down_for: Duration::from_millis(100),
            starting_for: Duration::from_millis(100),
            then: Then::Back,
        }
    }
}

/// How a job's triggered builds behave.
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub run_for: Duration,
    pub result: String,
    /// When (after its start) a build archives its artifacts; `None`: never.
    pub artifacts_after: Option<Duration>,
}

impl Default for JobSpec {
    fn default() -> Self {
        JobSpec {
            run_for: Duration::from_millis(200),
            result: "SUCCESS".into(),
            artifacts_after: None,
        }
    }
}

/// A build a test adds directly.
#[derive(Debug, Clone)]
pub struct BuildSpec {
    pub run_for: Duration,
    pub result: String,
    pub artifacts_after: Option<Duration>,
    pub params: Vec<(String, String)>,
}

impl Default for BuildSpec {
    fn default() -> Self {
        BuildSpec {
            run_for: Duration::ZERO,
            result: "SUCCESS".into(),
            artifacts_after: None,
            params: Vec::new(),
        }
    }
}

/// A build, as tests read it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildView {
    pub number: u64,
    pub building: bool,
    pub result: Option<String>,
    pub stopped: bool,
    pub params: Vec<(String, String)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Token,
    Password,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Up,
    Starting,
}

struct Build {
    number: u64,
    started: Instant,
    timestamp_ms: u64,
    run_for: Duration,
    result: String,
    artifacts_after: Option<Duration>,
    params: Vec<(String, String)>,
    stopped_at: Option<Instant>,
    user: String,
}

impl Build {
    fn end(&self, abort_delay: Duration) -> Instant {
        let natural = self.started + self.run_for;
        match self.stopped_at {
            Some(at) => natural.min(at + abort_delay),
            None => natural,
        }
    }
    fn building(&self, now: Instant, abort_delay: Duration) -> bool {
        now < self.end(abort_delay)
    }
    fn result(&self, now: Instant, abort_delay: Duration) -> Option<String> {
        if self.building(now, abort_delay) {
            return None;
        }
        let aborted = self
            .stopped_at
            .is_some_and(|at| at + abort_delay < self.started + self.run_for);
        Some(if aborted {
            "ABORTED".into()
        } else {
            self.result.clone()
        })
    }
    fn has_artifacts(&self, now: Instant, abort_delay: Duration) -> bool {
        let end = self.end(abort_delay);
        self.artifacts_after
            .is_some_and(|a| self.started + a <= now.min(end))
    }
}

struct Job {
    spec: JobSpec,
    disabled: bool,
    /// Oldest first.
    builds: Vec<Build>,
}

impl Job {
    fn next_number(&self) -> u64 {
        self.builds.last().map_or(1, |b| b.number + 1)
    }
}

struct Item {
    job: String,
    params: Vec<(String, String)>,
    queued_at: Instant,
    in_queue_since_ms: u64,
    user: String,
    build: Option<u64>,
    left_at: Option<Instant>,
    cancelled: bool,
}

struct Agent {
    name: String,
    online: bool,
    online_at: Option<Instant>,
}

struct St {
    phase: Phase,
    session: String,
    node: String,
    quieting_down: bool,
    users: HashMap<String, (String, Kind)>,
    csrf: bool,
    /// Session cookie value → crumb.
    crumbs: HashMap<String, String>,
    /// The `crumbRequestField` the issuer names (`Jenkins-Crumb` unless a test breaks it).
    crumb_field: String,
    jobs: BTreeMap<String, Job>,
    items: BTreeMap<u64, Item>,
    next_item: u64,
    queue_delay: Duration,
    forget_after: Duration,
    abort_delay: Duration,
    agents: Vec<Agent>,
    agents_reconnect: Duration,
    requests: Vec<Request>,
    plan: RestartPlan,
    restart_pending: Option<RestartPlan>,
    restarts: usize,
}

struct Shared {
    st: Mutex<St>,
    base: String,
    commands: Mutex<mpsc::Sender<Cmd>>,
}

/// A running server instance: its own thread and runtime; dropping the runtime drops every
/// connection, as a dying process does.
struct Instance {
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

enum Cmd {
    Restart(RestartPlan),
    Shutdown,
}

pub struct JenkinsDouble {
    shared: Arc<Shared>,
    port: u16,
    commands: mpsc::Sender<Cmd>,
    control: Option<std::thread::JoinHandle<()>>,
}

/// 8 random hex digits.
fn hex8() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::SeqCst));
    format!("{:08x}", h.finish() as u32)
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

impl JenkinsDouble {
    /// Starts a Jenkins with the users [`USER`] (API token [`TOKEN`]) and [`PASSWORD_USER`]
    /// (password [`PASSWORD`]), CSRF protection on, no jobs.
    pub fn start() -> JenkinsDouble {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (commands, rx) = mpsc::channel();
        let mut users = HashMap::new();
        users.insert(USER.to_owned(), (TOKEN.to_owned(), Kind::Token));
        users.insert(
            PASSWORD_USER.to_owned(),
            (PASSWORD.to_owned(), Kind::Password),
        );
        let shared = Arc::new(Shared {
            st: Mutex::new(St {
                phase: Phase::Up,
                session: hex8(),
                node: hex8(),
                quieting_down: false,
                users,
                csrf: true,
                crumbs: HashMap::new(),
                crumb_field: "Jenkins-Crumb".into(),
                jobs: BTreeMap::new(),
                items: BTreeMap::new(),
                next_item: 100,
                queue_delay: Duration::from_millis(50),
                forget_after: Duration::from_secs(300),
                abort_delay: Duration::from_millis(20),
                agents: Vec::new(),
                agents_reconnect: Duration::ZERO,
                requests: Vec::new(),
                plan: RestartPlan::default(),
                restart_pending: None,
                restarts: 0,
            }),
            base: format!("http://127.0.0.1:{port}"),
            commands: Mutex::new(commands.clone()),
        });
        let first = serve(listener, shared.clone());
        let control = {
            let shared = shared.clone();
            std::thread::spawn(move || control(rx, shared, port, first))
        };
        JenkinsDouble {
            shared,
            port,
            commands,
            control: Some(control),
        }
    }

    /// `http://127.0.0.1:PORT`, the same across restarts.
    pub fn url(&self) -> String {
        self.shared.base.clone()
    }

    fn st(&self) -> std::sync::MutexGuard<'_, St> {
        self.shared.st.lock().unwrap()
    }

    pub fn add_job(&self, name: &str, spec: JobSpec) {
        self.st().jobs.insert(
            name.into(),
            Job {
                spec,
                disabled: false,
                builds: Vec::new(),
            },
        );
    }

    /// A build started now; returns its number.
    pub fn add_build(&self, job: &str, spec: BuildSpec) -> u64 {
        let mut st = self.st();
        let j = st.jobs.get_mut(job).expect("add_job first");
        let number = j.next_number();
        j.builds.push(Build {
            number,
            started: Instant::now(),
            timestamp_ms: now_ms(),
            run_for: spec.run_for,
            result: spec.result,
            artifacts_after: spec.artifacts_after,
            params: spec.params,
            stopped_at: None,
            user: USER.into(),
        });
        number
    }

    pub fn build(&self, job: &str, number: u64) -> Option<BuildView> {
        let st = self.st();
        let now = Instant::now();
        let b = st
            .jobs
            .get(job)?
            .builds
            .iter()
            .find(|b| b.number == number)?;
        Some(BuildView {
            number,
            building: b.building(now, st.abort_delay),
            result: b.result(now, st.abort_delay),
            stopped: b.stopped_at.is_some(),
            params: b.params.clone(),
        })
    }

    /// Build numbers of `job`, oldest first.
    pub fn builds(&self, job: &str) -> Vec<u64> {
        self.st().jobs[job]
            .builds
            .iter()
            .map(|b| b.number)
            .collect()
    }

    pub fn is_disabled(&self, job: &str) -> bool {
        self.st().jobs[job].disabled
    }

    pub fn set_disabled(&self, job: &str, disabled: bool) {
        self.st().jobs.get_mut(job).unwrap().disabled = disabled;
    }

    /// How long a queue item waits before its build starts, and how long after leaving the
    /// queue it is forgotten (Jenkins: 5 minutes).
    pub fn set_queue(&self, delay: Duration, forget_after: Duration) {
        let mut st = self.st();
        st.queue_delay = delay;
        st.forget_after = forget_after;
    }

    pub fn cancel_queue_item(&self, id: u64) {
        let mut st = self.st();
        if let Some(item) = st.items.get_mut(&id) {
            if item.build.is_none() {
                item.cancelled = true;
                item.left_at = Some(Instant::now());
            }
        }
    }

    pub fn add_agent(&self, name: &str, online: bool) {
        self.st().agents.push(Agent {
            name: name.into(),
            online,
            online_at: None,
        });
    }

    /// After a restart, agents come back online this long after the new instance is up.
    pub fn set_agents_reconnect(&self, after: Duration) {
        self.st().agents_reconnect = after;
    }

    pub fn set_csrf(&self, on: bool) {
        self.st().csrf = on;
    }

    /// The field name the crumb issuer answers (a broken issuer or proxy: not a header name).
    pub fn set_crumb_field(&self, field: &str) {
        self.st().crumb_field = field.into();
    }

    /// Forgets every HTTP session: their crumbs stop working.
    pub fn expire_sessions(&self) {
        self.st().crumbs.clear();
    }

    /// What `POST /safeRestart` does.
    pub fn set_restart_plan(&self, plan: RestartPlan) {
        self.st().plan = plan;
    }

    /// Restarts now (a test hook; `POST /safeRestart` does the same with its plan).
    pub fn restart(&self, plan: RestartPlan) {
        self.st().quieting_down = true;
        let _ = self.commands.send(Cmd::Restart(plan));
    }

    pub fn session(&self) -> String {
        self.st().session.clone()
    }

    /// Restarts completed (a new instance up).
    pub fn restarts(&self) -> usize {
        self.st().restarts
    }

    pub fn requests(&self) -> Vec<Request> {
        self.st().requests.clone()
    }

    /// Requests of `method` whose path starts with `prefix`.
    pub fn count(&self, method: &str, prefix: &str) -> usize {
        self.st()
            .requests
            .iter()
            .filter(|r| r.method == method && r.path.starts_with(prefix))
            .count()
    }
}

impl Drop for JenkinsDouble {
    fn drop(&mut self) {
        let _ = self.commands.send(Cmd::Shutdown);
        if let Some(t) = self.control.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: std::net::TcpListener, shared: Arc<Shared>) -> Instance {
    listener.set_nonblocking(true).unwrap();
    let app = Router::new().fallback(handle).with_state(shared);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tokio::select! {
                r = axum::serve(listener, app) => r.unwrap(),
                _ = stopped => {}
            }
        });
        // Dropping the runtime drops the listener and every open connection.
        drop(rt);
    });
    Instance { stop, thread }
}

fn rebind(port: u16) -> std::net::TcpListener {
    for _ in 0..200 {
        if let Ok(l) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return l;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("cannot bind 127.0.0.1:{port} again");
}

fn halt(instance: &mut Option<Instance>) {
    if let Some(i) = instance.take() {
        let _ = i.stop.send(());
        let _ = i.thread.join();
    }
}

/// Sleeps `d` unless told to shut down (then false); restarts asked meanwhile are ignored.
fn nap(rx: &mpsc::Receiver<Cmd>, d: Duration) -> bool {
    let until = Instant::now() + d;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return true;
        }
        match rx.recv_timeout(left) {
            Err(mpsc::RecvTimeoutError::Timeout) => return true,
            Ok(Cmd::Restart(_)) => {}
            Ok(Cmd::Shutdown) | Err(mpsc::RecvTimeoutError::Disconnected) => return false,
        }
    }
}

/// Runs restarts one at a time until shut down.
fn control(rx: mpsc::Receiver<Cmd>, shared: Arc<Shared>, port: u16, first: Instance) {
    let mut instance = Some(first);
    'commands: while let Ok(Cmd::Restart(plan)) = rx.recv() {
        shared.st.lock().unwrap().quieting_down = true;
        if !nap(&rx, plan.old_for) {
            break;
        }
        halt(&mut instance);
        if plan.then == Then::StaysDown {
            // Wait for the shutdown; never come back.
            while let Ok(Cmd::Restart(_)) = rx.recv() {}
            break 'commands;
        }
        if !nap(&rx, plan.down_for) {
            break;
        }
        shared.st.lock().unwrap().phase = Phase::Starting;
        instance = Some(serve(rebind(port), shared.clone()));
        if plan.then == Then::StaysStarting {
            while let Ok(Cmd::Restart(_)) = rx.recv() {}
            break 'commands;
        }
        if !nap(&rx, plan.starting_for) {
            break;
        }
        let mut st = shared.st.lock().unwrap();
        st.phase = Phase::Up;
        st.session = hex8();
        st.quieting_down = false;
        st.crumbs.clear();
        st.restarts += 1;
        let back = Instant::now() + st.agents_reconnect;
        for a in &mut st.agents {
            if a.online {
                a.online_at = Some(back);
            }
        }
    }
    halt(&mut instance);
}

fn html(status: StatusCode, text: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html;charset=utf-8")],
        format!("<html><body>{text}</body></html>"),
    )
        .into_response()
}

/// Starts the builds of queue items whose wait is over; forgets items left long ago.
fn advance(st: &mut St, now: Instant) {
    let delay = st.queue_delay;
    let forget = st.forget_after;
    let ids: Vec<u64> = st.items.keys().copied().collect();
    for id in ids {
        let item = &st.items[&id];
        if item.build.is_none() && !item.cancelled && now >= item.queued_at + delay {
            let start = item.queued_at + delay;
            let (job, params, user) = (item.job.clone(), item.params.clone(), item.user.clone());
            let j = st.jobs.get_mut(&job).unwrap();
            let number = j.next_number();
            let lag = now.saturating_duration_since(start).as_millis() as u64;
            j.builds.push(Build {
                number,
                started: start,
                timestamp_ms: now_ms() - lag,
                run_for: j.spec.run_for,
                result: j.spec.result.clone(),
                artifacts_after: j.spec.artifacts_after,
                params,
                stopped_at: None,
                user,
            });
            let item = st.items.get_mut(&id).unwrap();
            item.build = Some(number);
            item.left_at = Some(start);
        }
        if st.items[&id].left_at.is_some_and(|at| now >= at + forget) {
            st.items.remove(&id);
        }
    }
}

enum Who {
    Anonymous,
    User(String, Kind),
}

fn authenticate(st: &St, headers: &HeaderMap) -> Result<Who, ()> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(Who::Anonymous);
    };
    let text = value.to_str().map_err(|_| ())?;
    let encoded = text.strip_prefix("Basic ").ok_or(())?;
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .map_err(|_| ())?;
    let decoded = String::from_utf8(decoded).map_err(|_| ())?;
    let (user, secret) = decoded.split_once(':').ok_or(())?;
    match st.users.get(user) {
        Some((s, kind)) if s == secret => Ok(Who::User(user.into(), *kind)),
        _ => Err(()),
    }
}

/// The crumb check of a password user's POST: the crumb must be the one issued to the
/// session named by the request's `JSESSIONID.<node>` cookie.
fn crumb_ok(st: &St, headers: &HeaderMap) -> bool {
    let Some(crumb) = headers.get("jenkins-crumb").and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let name = format!("JSESSIONID.{}", st.node);
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .any(|(k, sid)| k == name && st.crumbs.get(sid).is_some_and(|c| c == crumb))
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let mut st = shared.st.lock().unwrap();
    let mut resp = respond(&mut st, &shared.base, &method, &uri, &headers);
    if st.phase == Phase::Up {
        let h = resp.headers_mut();
        h.insert("x-jenkins", VERSION.parse().unwrap());
        h.insert("x-jenkins-session", st.session.parse().unwrap());
    }
    st.requests.push(Request {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().map(str::to_owned),
        auth: headers.contains_key(header::AUTHORIZATION),
        status: resp.status().as_u16(),
    });
    if let Some(plan) = st.restart_pending.take() {
        let _ = shared.commands.lock().unwrap().send(Cmd::Restart(plan));
    }
    resp
}

fn json_resp(v: Value) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json;charset=utf-8")],
        v.to_string(),
    )
        .into_response()
}

fn redirect(status: StatusCode, to: String) -> Response {
    (status, [(header::LOCATION, to)]).into_response()
}

fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    let Some(q) = uri.query() else {
        return Vec::new();
    };
    q.split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz");
                match u8::from_str_radix(hex, 16) {
                    Ok(v) => {
                        out.push(v);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn decode_path(s: &str) -> String {
    decode(&s.replace('+', "%2B"))
}

fn color(job: &Job, now: Instant, abort_delay: Duration) -> String {
    if job.disabled {
        return "disabled".into();
    }
    let last_done = job
        .builds
        .iter()
        .rev()
        .find_map(|b| b.result(now, abort_delay));
    let base = match last_done.as_deref() {
        None => "notbuilt",
        Some("SUCCESS") => "blue",
        Some("UNSTABLE") => "yellow",
        Some("ABORTED") => "aborted",
        Some(_) => "red",
    };
    if job.builds.iter().any(|b| b.building(now, abort_delay)) {
        format!("{base}_anime")
    } else {
        base.into()
    }
}

fn respond(st: &mut St, base: &str, method: &Method, uri: &Uri, headers: &HeaderMap) -> Response {
    if st.phase == Phase::Starting {
        return html(
            StatusCode::SERVICE_UNAVAILABLE,
            "Please wait while Jenkins is getting ready to work...",
        );
    }
    let now = Instant::now();
    advance(st, now);
    let segs: Vec<String> = uri
        .path()
        .split('/')
        .filter(|s| !s.is_empty())
        .map(decode_path)
        .collect();
    let segs: Vec<&str> = segs.iter().map(String::as_str).collect();
    let who = match authenticate(st, headers) {
        Ok(w) => w,
        Err(()) => return html(StatusCode::UNAUTHORIZED, "Invalid password/token for user"),
    };
    let (user, kind) = match who {
        Who::User(u, k) => (u, k),
        Who::Anonymous => {
            if segs == ["whoAmI", "api", "json"] {
                return json_resp(json!({
                    "_class": "hudson.security.WhoAmI",
                    "anonymous": true, "authenticated": true,
                    "authorities": ["anonymous"], "name": "anonymous"
                }));
            }
            return html(StatusCode::UNAUTHORIZED, "Authentication required");
        }
    };
    if *method == Method::POST && kind == Kind::Password && st.csrf && !crumb_ok(st, headers) {
        return html(
            StatusCode::FORBIDDEN,
            "HTTP ERROR 403 No valid crumb was included in the request",
        );
    }
    let abort_delay = st.abort_delay;
    let get = *method == Method::GET;
    let post = *method == Method::POST;
    match segs.as_slice() {
        ["api", "json"] if get => json_resp(json!({
            "_class": "hudson.model.Hudson",
            "mode": "NORMAL",
            "quietingDown": st.quieting_down,
            "jobs": st.jobs.iter().map(|(name, j)| json!({
                "_class": "hudson.model.FreeStyleProject",
                "name": name, "color": color(j, now, abort_delay)
            })).collect::<Vec<_>>(),
        })),
        ["crumbIssuer", "api", "json"] if get => {
            if !st.csrf {
                return html(StatusCode::NOT_FOUND, "Not Found");
            }
            let sid = format!("node0{}{}", hex8(), hex8());
            let crumb = format!("{}{}{}{}", hex8(), hex8(), hex8(), hex8());
            st.crumbs.insert(sid.clone(), crumb.clone());
            let mut r = json_resp(json!({
                "_class": "hudson.security.csrf.DefaultCrumbIssuer",
                "crumb": crumb, "crumbRequestField": st.crumb_field
            }));
            r.headers_mut().insert(
                header::SET_COOKIE,
                format!("JSESSIONID.{}={sid}; Path=/; HttpOnly", st.node)
                    .parse()
                    .unwrap(),
            );
            r
        }
        ["whoAmI", "api", "json"] if get => json_resp(json!({
            "_class": "hudson.security.WhoAmI",
            "anonymous": false, "authenticated": true,
            "authorities": ["authenticated"], "name": user
        })),
        ["computer", "api", "json"] if get => {
            let mut list = vec![json!({
                "_class": "hudson.model.Hudson$MasterComputer",
                "displayName": "Built-In Node", "offline": false, "temporarilyOffline": false
            })];
            for a in &st.agents {
                let online = a.online && a.online_at.is_none_or(|at| now >= at);
                list.push(json!({
                    "_class": "hudson.slaves.SlaveComputer",
                    "displayName": a.name, "offline": !online, "temporarilyOffline": false
                }));
            }
            json_resp(json!({"_class": "hudson.model.ComputerSet", "computer": list}))
        }
        ["queue", "item", n, "api", "json"] if get => {
            let Some(item) = n.parse::<u64>().ok().and_then(|n| st.items.get(&n)) else {
                return html(StatusCode::NOT_FOUND, "Not Found");
            };
            let task = json!({
                "_class": "hudson.model.FreeStyleProject",
                "name": item.job, "url": format!("{base}/job/{}/", item.job)
            });
            if item.left_at.is_none() {
                let left = (item.queued_at + st.queue_delay).saturating_duration_since(now);
                json_resp(json!({
                    "_class": "hudson.model.Queue$WaitingItem", "id": n.parse::<u64>().unwrap(),
                    "blocked": false, "buildable": false, "stuck": false,
                    "inQueueSince": item.in_queue_since_ms,
                    "why": format!("In the quiet period. Expires in {} ms", left.as_millis()),
                    "task": task,
                }))
            } else {
                let executable = item.build.map(|b| {
                    json!({
                        "_class": "hudson.model.FreeStyleBuild",
                        "number": b, "url": format!("{base}/job/{}/{b}/", item.job)
                    })
                });
                json_resp(json!({
                    "_class": "hudson.model.Queue$LeftItem", "id": n.parse::<u64>().unwrap(),
                    "blocked": false, "buildable": false, "stuck": false,
                    "inQueueSince": item.in_queue_since_ms,
                    "why": Value::Null, "task": task,
                    "cancelled": item.cancelled, "executable": executable,
                }))
            }
        }
        ["safeRestart"] if post => {
            let plan = st.plan;
            st.quieting_down = true;
            // The control thread is told once this answer is built; it waits `old_for`.
            st.restart_pending = Some(plan);
            redirect(StatusCode::FOUND, format!("{base}/"))
        }
        ["quietDown"] if post => {
            st.quieting_down = true;
            redirect(StatusCode::FOUND, format!("{base}/"))
        }
        ["cancelQuietDown"] if post => {
            st.quieting_down = false;
            redirect(StatusCode::FOUND, format!("{base}/"))
        }
        ["job", name, rest @ ..] => {
            let name = name.to_string();
            let Some(job) = st.jobs.get(&name) else {
                return html(StatusCode::NOT_FOUND, "Not Found");
            };
            let job_url = format!("{base}/job/{name}/");
            match rest {
                ["api", "json"] if get => json_resp(json!({
                    "_class": "hudson.model.FreeStyleProject",
                    "name": name, "url": job_url,
                    "buildable": !job.disabled,
                    "color": color(job, now, abort_delay),
                    "nextBuildNumber": job.next_number(),
                    "builds": job.builds.iter().rev().map(|b| json!({
                        "_class": "hudson.model.FreeStyleBuild",
                        "number": b.number, "url": format!("{job_url}{}/", b.number)
                    })).collect::<Vec<_>>(),
                })),
                ["enable"] | ["disable"] if post => {
                    let disabled = rest == ["disable"];
                    st.jobs.get_mut(&name).unwrap().disabled = disabled;
                    redirect(StatusCode::FOUND, job_url)
                }
                ["build"] | ["buildWithParameters"] if post => {
                    if job.disabled {
                        return html(StatusCode::CONFLICT, &format!("{name} is disabled"));
                    }
                    let params = query_pairs(uri);
                    // Jenkins merges a trigger into an identical item still waiting.
                    let same = st
                        .items
                        .iter()
                        .find(|(_, i)| i.job == name && i.left_at.is_none() && i.params == params);
                    let id = match same {
                        Some((id, _)) => *id,
                        None => {
                            let id = st.next_item;
                            st.next_item += 1;
                            st.items.insert(
                                id,
                                Item {
                                    job: name.clone(),
                                    params,
                                    queued_at: now,
                                    in_queue_since_ms: now_ms(),
                                    user,
                                    build: None,
                                    left_at: None,
                                    cancelled: false,
                                },
                            );
                            id
                        }
                    };
                    redirect(StatusCode::CREATED, format!("{base}/queue/item/{id}/"))
                }
                [n, tail @ ..] => {
                    let Some(b) = n
                        .parse::<u64>()
                        .ok()
                        .and_then(|n| job.builds.iter().find(|b| b.number == n))
                    else {
                        return html(StatusCode::NOT_FOUND, "Not Found");
                    };
                    let number = b.number;
                    match tail {
                        ["api", "json"] if get => {
                            let building = b.building(now, abort_delay);
                            let artifacts: Vec<Value> = if b.has_artifacts(now, abort_delay) {
                                vec![json!({
                                    "displayPath": "build.json",
                                    "fileName": "build.json",
                                    "relativePath": "artifacts/build.json"
                                })]
                            } else {
                                Vec::new()
                            };
                            let params: Vec<Value> = b
                                .params
                                .iter()
                                .map(|(k, v)| {
                                    json!({
                                        "_class": "hudson.model.StringParameterValue",
                                        "name": k, "value": v
                                    })
                                })
                                .collect();
                            let mut actions = vec![json!({
                                "_class": "hudson.model.CauseAction",
                                "causes": [{"_class": "hudson.model.Cause$UserIdCause", "userId": b.user}]
                            })];
                            if !params.is_empty() {
                                actions.insert(
                                    0,
                                    json!({
                                        "_class": "hudson.model.ParametersAction",
                                        "parameters": params
                                    }),
                                );
                            }
                            actions.push(json!({}));
                            json_resp(json!({
                                "_class": "hudson.model.FreeStyleBuild",
                                "number": number,
                                "url": format!("{job_url}{number}/"),
                                "building": building,
                                "result": b.result(now, abort_delay),
                                "timestamp": b.timestamp_ms,
                                "duration": if building { 0 } else { b.run_for.as_millis() as u64 },
                                "artifacts": artifacts,
                                "actions": actions,
                            }))
                        }
                        ["stop"] if post => {
                            let building = b.building(now, abort_delay);
                            let j = st.jobs.get_mut(&name).unwrap();
                            let b = j.builds.iter_mut().find(|b| b.number == number).unwrap();
                            if building && b.stopped_at.is_none() {
                                b.stopped_at = Some(now);
                            }
                            redirect(StatusCode::FOUND, format!("{job_url}{number}/"))
                        }
                        _ => html(StatusCode::NOT_FOUND, "Not Found"),
                    }
                }
                _ => html(StatusCode::NOT_FOUND, "Not Found"),
            }
        }
        _ => html(StatusCode::NOT_FOUND, "Not Found"),
    }
}
