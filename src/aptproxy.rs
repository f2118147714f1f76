//! The apt proxy of rootfs builds, as a process of its own.
//!
//! A rootfs builder container outlives the kci-build that started it (a kill, a lost ssh
//! session, Ctrl-C), and every package it installs comes through the apt cache's proxy
//! ([`crate::aptcache`]). A proxy inside kci-build would die with it, and every container
//! still downloading would fail: `--resume` would find nothing to resume. So `kci-build
//! rootfs` runs the proxy as `kci-build apt-proxy`, in its own process group, and *leases*
//! it: the proxy serves while a kci-build holding a lease is alive or a rootfs container of
//! its store is running, then exits. A rerun with the same pins leases the proxy still
//! running (the containers it attaches to name its port); otherwise it starts a new one,
//! on the same port when that is free.
//!
//! `<store>/rootfs-apt-proxy.json` says where the last one listens, its pid and pins.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use hyper::StatusCode;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncBufReadExt as _;

use crate::aptcache::{AptCache, Control, Listen, CONTROL_PREFIX};
use crate::core::apt::SuiteId;
use crate::core::names::Digest;
use crate::engine::{ContainerState, DockerEngine, Engine};
use crate::pinserve::Downloads;
use crate::printer::Printer;
use crate::rootfs::builder;
use crate::settings::Settings;
use crate::store::Store;

const STATE_FILE: &str = "rootfs-apt-proxy.json";
const LEASE_PATH: &str = "lease";
/// How often the proxy looks for its holders, and how many empty looks in a row end it.
const CHECK_EVERY: Duration = Duration::from_secs(2);
const IDLE_CHECKS: u32 = 3;

/// Where the store's detached proxy listens, who it is and what it serves.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct State {
    addr: SocketAddr,
    pid: u32,
    pins: Digest,
}

fn state_path(store: &Store) -> PathBuf {
    store.root().join(STATE_FILE)
}

fn read_state(store: &Store) -> Option<State> {
    let bytes = std::fs::read(state_path(store)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// What a proxy serves: the pinned apt indexes and the pinned downloads (URL → sha256).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProxyPins {
    pub apt: BTreeMap<SuiteId, Digest>,
    pub downloads: BTreeMap<String, Digest>,
}

impl ProxyPins {
    /// `kci-build apt-proxy`'s arguments for them.
    fn args(&self) -> Vec<String> {
        let mut out = Vec::new();
        for (suite, digest) in &self.apt {
            out.extend(["--pin".to_owned(), format!("{suite}={digest}")]);
        }
        for (url, digest) in &self.downloads {
            out.extend(["--download".to_owned(), format!("{digest}={url}")]);
        }
        out
    }
}

/// One digest for a set of pins: a proxy serves exactly the pins it was started with.
pub fn fingerprint(pins: &ProxyPins) -> Digest {
    let mut text: String = pins.apt.iter().map(|(s, d)| format!("{s} {d}\n")).collect();
    for (url, d) in &pins.downloads {
        text.push_str(&format!("download {d} {url}\n"));
    }
    Digest::of(text.as_bytes())
}

/// A leased proxy: what the builds' `http_proxy` is.
#[derive(Debug, Clone, Copy)]
pub struct Leased {
    pub addr: SocketAddr,
}

impl Leased {
    /// The `http_proxy` of one build: `client` (hex digits: the build's key) is where the
    /// proxy records the `.deb`s it serves that build (see [`Listen::clients`]).
    pub fn url_for(&self, client: &str) -> String {
        // A password too, though the proxy ignores it: wget sends its Proxy-Authorization
        // (on a CONNECT as well) only when the URL has both.
        format!("http://{client}:kci@{}", self.addr)
    }
}

/// Leases the store's proxy for `pins`, for as long as this process lives: the one still
/// running when it serves the same pins, else a new `kci-build apt-proxy`.
pub async fn lease(store: &Store, pins: &ProxyPins, printer: &Printer) -> anyhow::Result<Leased> {
    let fp = fingerprint(pins);
    let last = read_state(store);
    if let Some(s) = last.as_ref().filter(|s| s.pins == fp) {
        if ask_lease(s.addr, &fp).await {
            printer.status(
                "Leasing",
                format!("the apt proxy still serving on {} (pid {})", s.addr, s.pid),
            );
            return Ok(Leased { addr: s.addr });
        }
    }
    let addr = spawn(store, pins, last.map(|s| s.addr)).await?;
    Ok(Leased { addr })
}

/// Asks the proxy at `addr` for a lease for this process; false when nothing (or another
/// proxy) answers there.
async fn ask_lease(addr: SocketAddr, pins: &Digest) -> bool {
    let Ok(client) = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(5))
        .build()
    else {
        return false;
    };
    let url = format!(
        "http://{addr}{CONTROL_PREFIX}{LEASE_PATH}?pid={}&pins={}",
        std::process::id(),
        pins.hex()
    );
    matches!(client.get(url).send().await, Ok(r) if r.status() == reqwest::StatusCode::OK)
}

/// Starts `kci-build apt-proxy` detached from this process's group (a Ctrl-C in the
/// terminal is not its business) and waits for the address it listens on.
async fn spawn(
    store: &Store,
    pins: &ProxyPins,
    prefer: Option<SocketAddr>,
) -> anyhow::Result<SocketAddr> {
    let exe = std::env::current_exe().context("finding kci-build's own executable")?;
    let logs = store.logs_dir();
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let log_path = logs.join("rootfs-apt-proxy.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .with_context(|| format!("opening {}", log_path.display()))?;
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.arg("--store")
        .arg(store.root())
        .arg("--color=never")
        .arg("apt-proxy")
        .arg("--lease")
        .arg(std::process::id().to_string());
    cmd.args(pins.args());
    if let Some(a) = prefer {
        cmd.arg("--prefer").arg(a.to_string());
    }
    crate::settings::scrub_secrets(cmd.as_std_mut());
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("starting {} apt-proxy", exe.display()))?;
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let first = tokio::time::timeout(Duration::from_secs(60), lines.next_line()).await;
    match first {
        Ok(Ok(Some(line))) => line
            .trim()
            .parse()
            .with_context(|| format!("the apt proxy said `{line}`, not its address")),
        _ => {
            let _ = child.start_kill();
            anyhow::bail!(
                "the apt proxy did not start (its log: {})",
                log_path.display()
            )
        }
    }
}

/// A process that holds a lease: its pid and start time (a reused pid is not a holder).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    pid: u32,
    start: u64,
}

impl Holder {
    fn of(pid: u32) -> Option<Holder> {
        proc_start(pid).map(|start| Holder { pid, start })
    }

    fn alive(&self) -> bool {
        proc_start(self.pid) == Some(self.start)
    }
}

/// The start time of a live (not zombie) process, from `/proc/<pid>/stat`.
fn proc_start(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat)
}

/// Field 3 (state) and 22 (start time) of a `stat` line; `None` for a zombie or dead one.
fn parse_stat(stat: &str) -> Option<u64> {
    // The command name (field 2) may hold spaces and parentheses: fields resume after the
    // last `)`.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    if matches!(fields.first(), Some(&"Z") | Some(&"X") | None) {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// The leases of a serving proxy; once it decides to stop, it grants none.
#[derive(Default)]
struct Leases {
    holders: Vec<Holder>,
    closing: bool,
}

/// What `kci-build apt-proxy` is given.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub pins: ProxyPins,
    pub prefer: Option<SocketAddr>,
    pub lease: u32,
}

/// `kci-build apt-proxy`: serves the apt cache for `pins`, prints the address on stdout,
/// and returns once no holder is alive and no rootfs container of the store runs.
pub async fn serve(
    store: &Store,
    settings: &Settings,
    opts: &ServeOptions,
    printer: &Printer,
) -> anyhow::Result<()> {
    let fp = fingerprint(&opts.pins);
    let leases = Arc::new(Mutex::new(Leases::default()));
    if let Some(h) = Holder::of(opts.lease) {
        leases.lock().unwrap().holders.push(h);
    }
    let control: Control = {
        let (leases, fp) = (leases.clone(), fp.clone());
        let served = store.apt_served_dir();
        Arc::new(move |path: &str, query: &str| {
            match path.strip_prefix(&format!("{CONTROL_PREFIX}{SERVED_PATH}")) {
                Some(client) => served_list(&served, client),
                None => grant(&leases, &fp, path, query),
            }
        })
    };
    let authority = match opts
        .pins
        .downloads
        .keys()
        .any(|u| u.starts_with("https://"))
    {
        true => Some(Arc::new(
            crate::mitm::Authority::of_store(store.root())
                .context("loading the store's download authority")?,
        )),
        false => None,
    };
    let cache = AptCache::new(
        store.clone(),
        settings.apt_upstream.clone(),
        opts.pins.apt.clone(),
    )
    .with_downloads(Downloads::new(&opts.pins.downloads, authority));
    let proxy = cache
        .serve_with(Listen {
            preferred: opts.prefer,
            control: Some(control),
            clients: Some(store.apt_served_dir()),
        })
        .await
        .context("starting the apt cache's proxy")?;
    let state = State {
        addr: proxy.addr(),
        pid: std::process::id(),
        pins: fp,
    };
    let path = state_path(store);
    crate::fsutil::atomic_write(&path, &serde_json::to_vec(&state)?)
        .with_context(|| format!("writing {}", path.display()))?;
    printer.status(
        "Serving",
        format!(
            "apt for rootfs builds on {} (pid {})",
            state.addr, state.pid
        ),
    );
    {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", state.addr)?;
        out.flush()?;
    }
    let engine = DockerEngine::connect(&settings.engine).await.ok();
    let tag = builder::store_tag(&store.rootfs_dir());
    let mut idle = 0;
    while idle < IDLE_CHECKS {
        tokio::time::sleep(CHECK_EVERY).await;
        let holders = {
            let mut l = leases.lock().unwrap();
            l.holders.retain(Holder::alive);
            l.holders.len()
        };
        let busy = holders > 0 || containers_running(engine.as_ref(), &tag).await;
        idle = if busy { 0 } else { idle + 1 };
        if idle == IDLE_CHECKS {
            // Decide under the lock: a lease granted from now on would be a lie.
            let mut l = leases.lock().unwrap();
            if l.holders.iter().any(Holder::alive) {
                idle = 0;
            } else {
                l.closing = true;
            }
        }
    }
    drop(proxy);
    if read_state(store).as_ref() == Some(&state) {
        let _ = std::fs::remove_file(&path);
    }
    printer.status(
        "Stopped",
        format!("the apt proxy on {}: nothing holds it", state.addr),
    );
    Ok(())
}

/// Answers a control request: a lease for `pid=N` when `pins=` names this proxy's pins.
/// Where a build asks for the list of `.deb`s it was served (`…/served/<client>`): a Swarm
/// task packs on its node and writes that list into its manifest.
pub const SERVED_PATH: &str = "served/";

/// The client's `.deb` list, as the proxy recorded it (`<name> <sha256>` lines).
fn served_list(dir: &std::path::Path, client: &str) -> (StatusCode, String) {
    let valid = (1..=64).contains(&client.len())
        && client
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if !valid {
        return (StatusCode::BAD_REQUEST, "not a client name".into());
    }
    match std::fs::read_to_string(dir.join(format!("{client}.debs"))) {
        Ok(text) => (StatusCode::OK, text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (StatusCode::OK, String::new()),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn grant(leases: &Mutex<Leases>, fp: &Digest, path: &str, query: &str) -> (StatusCode, String) {
    if path != format!("{CONTROL_PREFIX}{LEASE_PATH}") {
        return (StatusCode::NOT_FOUND, format!("no {path} here"));
    }
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
    };
    if param("pins") != Some(fp.hex()) {
        return (StatusCode::CONFLICT, "this proxy serves other pins".into());
    }
    let Some(holder) = param("pid")
        .and_then(|p| p.parse().ok())
        .and_then(Holder::of)
    else {
        return (StatusCode::BAD_REQUEST, "no live pid".into());
    };
    let mut l = leases.lock().unwrap();
    if l.closing {
        return (StatusCode::SERVICE_UNAVAILABLE, "stopping".into());
    }
    if !l.holders.contains(&holder) {
        l.holders.push(holder);
    }
    (
        StatusCode::OK,
        format!("leased to {}", param("pid").unwrap_or("")),
    )
}

/// Whether a rootfs builder container of this store runs. An engine that cannot be asked
/// counts as running ones: stopping under a build is the failure this module prevents.
async fn containers_running(engine: Option<&DockerEngine>, tag: &str) -> bool {
    let Some(engine) = engine else {
        return true;
    };
    let Ok(all) = engine.list(builder::LABEL).await else {
        return true;
    };
    for (name, _) in all {
        // A Swarm task's container is `<job>.<slot>.<task id>`.
        let job = name.split('.').next().unwrap_or(&name);
        if !job.ends_with(&format!("-{tag}")) {
            continue;
        }
        if matches!(
            engine.state(&name).await,
            Ok(ContainerState::Running) | Err(_)
        ) {
            return true;
        }
    }
    false
}

/// The pins of `--pin SUITE=DIGEST` and `--download DIGEST=URL` arguments.
pub fn parse_pins(apt: &[String], downloads: &[String]) -> Result<ProxyPins, String> {
    let apt = apt
        .iter()
        .map(|a| {
            let (s, d) = a
                .split_once('=')
                .ok_or_else(|| format!("`{a}` is not SUITE=DIGEST"))?;
            Ok((s.parse()?, d.parse().map_err(|e| format!("{e}"))?))
        })
        .collect::<Result<_, String>>()?;
    let downloads = downloads
        .iter()
        .map(|a| {
            let (d, url) = a
                .split_once('=')
                .ok_or_else(|| format!("`{a}` is not DIGEST=URL"))?;
            Ok((url.to_owned(), d.parse().map_err(|e| format!("{e}"))?))
        })
        .collect::<Result<_, String>>()?;
    Ok(ProxyPins { apt, downloads })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_lines_give_start_times_and_zombies_none() {
        let line =
            "42 (kci (build)) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 1000 10";
        assert_eq!(parse_stat(line), Some(98765));
        let zombie = "42 (kci-build) Z 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 98765 0 0";
        assert_eq!(parse_stat(zombie), None);
        assert_eq!(parse_stat("garbage"), None);
        assert!(Holder::of(std::process::id()).unwrap().alive());
    }

    #[test]
    fn a_lease_needs_the_same_pins_and_a_live_pid_and_none_is_granted_when_closing() {
        let leases = Mutex::new(Leases::default());
        let fp = Digest::of(b"pins");
        let path = format!("{CONTROL_PREFIX}{LEASE_PATH}");
        let me = std::process::id();
        let ok = format!("pid={me}&pins={}", fp.hex());
        assert_eq!(grant(&leases, &fp, &path, &ok).0, StatusCode::OK);
        assert_eq!(grant(&leases, &fp, &path, &ok).0, StatusCode::OK);
        assert_eq!(leases.lock().unwrap().holders.len(), 1, "one holder once");
        let other = format!("pid={me}&pins={}", Digest::of(b"other").hex());
        assert_eq!(grant(&leases, &fp, &path, &other).0, StatusCode::CONFLICT);
        let dead = format!("pid=4294967&pins={}", fp.hex());
        assert_eq!(grant(&leases, &fp, &path, &dead).0, StatusCode::BAD_REQUEST);
        assert_eq!(
            grant(&leases, &fp, "/-/kci-build/other", &ok).0,
            StatusCode::NOT_FOUND
        );
        leases.lock().unwrap().closing = true;
        assert_eq!(
            grant(&leases, &fp, &path, &ok).0,
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    #[test]
    fn pins_round_trip_through_arguments() {
        let pins = ProxyPins {
            apt: BTreeMap::from([(
                "debian/bookworm".parse::<SuiteId>().unwrap(),
                Digest::of(b"inrelease"),
            )]),
            downloads: BTreeMap::from([(
                "https://h/a.tar.gz?x=1&y=2".to_owned(),
                Digest::of(b"tarball"),
            )]),
        };
        let args = pins.args();
        let of = |flag: &str| -> Vec<String> {
            args.chunks(2)
                .filter(|c| c[0] == flag)
                .map(|c| c[1].clone())
                .collect()
        };
        assert_eq!(parse_pins(&of("--pin"), &of("--download")).unwrap(), pins);
        assert!(parse_pins(&["debian/bookworm".into()], &[]).is_err());
        assert!(parse_pins(&[], &["https://h/a".into()]).is_err());
        let mut moved = pins.clone();
        moved
            .downloads
            .insert("https://h/b".into(), Digest::of(b"b"));
        assert_ne!(
            fingerprint(&pins),
            fingerprint(&moved),
            "downloads are pins too"
        );
    }
}
