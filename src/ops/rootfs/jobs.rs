//! Stage "build": every (config, arch) left to make runs in its own detached builder
//! container, at most `--jobs` at a time — attach to or start it, follow it, collect and
//! pack its files, commit them to the store under the key. One job failing is reported and
//! the others go on.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use tokio::sync::Semaphore;

use super::classify::{Made, Todo};
use super::report::{RootfsAction, RootfsOutcome};
use crate::core::names::Digest;
use crate::engine::{ContainerState, Engine};
use crate::fsutil;
use crate::gitpins;
use crate::pinserve::Refused;
use crate::printer::Printer;
use crate::rootfs::pack::{self, Packing};
use crate::rootfs::plan::RootfsJob;
use crate::rootfs::{binfmt, builder};

/// What every job of one run shares.
pub(super) struct JobCtx<E> {
    pub engine: E,
    pub image_id: String,
    pub store_root: PathBuf,
    /// The recipes directory, for errors that say what to change.
    pub recipes: PathBuf,
    pub logs: PathBuf,
    /// Where the apt proxy lists the `.deb`s it served each build (by key).
    pub apt_served: PathBuf,
    pub printer: Printer,
    pub packing: Arc<Packing>,
    /// The store, where a finished build records how long it took (`plan --engines`).
    pub store: crate::store::Store,
}

/// A job that did not make its files: why, and the end of its build log.
pub(super) struct JobFailure {
    pub error: String,
    pub log_tail: Vec<String>,
    /// The store's file system filled up: the machine's fault, and a rerun after space is
    /// freed collects the finished container again.
    pub disk_full: bool,
}

pub(super) fn fail(error: String) -> JobFailure {
    JobFailure {
        error,
        log_tail: Vec::new(),
        disk_full: false,
    }
}

/// A failure of the store's file system: said so, naming the store, when it is full.
fn fail_store(what: String, e: &anyhow::Error, store_root: &Path) -> JobFailure {
    let disk_full = e.chain().any(crate::error::is_disk_full);
    let mut error = format!("{what}: {e:#}");
    if disk_full {
        error.push_str(&format!(
            "; the file system holding {} is full (nothing half-written was kept; the built \
             container is kept for the rerun)",
            store_root.display()
        ));
    }
    JobFailure {
        error,
        log_tail: Vec::new(),
        disk_full,
    }
}

/// Runs `todo`, `jobs` at a time; each job's outcome is pushed to `outcomes`, and the
/// manifest of each one that made its files goes into `made` under its (config, arch).
pub(super) async fn run_all<E: Engine>(
    ctx: JobCtx<E>,
    todo: Vec<Todo>,
    jobs: usize,
    outcomes: &mut Vec<RootfsOutcome>,
    made: &mut BTreeMap<(String, String), Made>,
) -> anyhow::Result<()> {
    let ctx = Arc::new(ctx);
    let sem = Arc::new(Semaphore::new(jobs.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for Todo { job, env, tar } in todo {
        let (ctx, sem) = (ctx.clone(), sem.clone());
        tasks.spawn(async move {
            let _permit = sem.acquire_owned().await.expect("semaphore open");
            let started = Instant::now();
            let r = run_job(&ctx, &job, env, &tar).await;
            (job, started.elapsed().as_secs_f64(), r)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (job, secs, r) = joined.context("a rootfs task panicked")?;
        record(&ctx.printer, job, secs, r, outcomes, made);
    }
    Ok(())
}

/// What one job's end means for the report and for what the run made.
pub(super) fn record(
    printer: &Printer,
    job: RootfsJob,
    secs: f64,
    r: Result<(crate::core::rootfs_lock::RootfsManifest, bool), JobFailure>,
    outcomes: &mut Vec<RootfsOutcome>,
    made: &mut BTreeMap<(String, String), Made>,
) {
    let label = job.label();
    match r {
        Ok((manifest, resumed)) => {
            let action = if resumed {
                RootfsAction::Resumed
            } else {
                RootfsAction::Built
            };
            printer.status(
                if resumed { "Resumed" } else { "Built" },
                format!("{label} ({}) in {secs:.1}s", job.key.short()),
            );
            outcomes.push(RootfsOutcome::made(&job, action, secs, &manifest));
            made.insert(
                (job.config, job.arch),
                Made {
                    manifest,
                    on_storage: false,
                },
            );
        }
        Err(failure) => {
            printer.error(format!("{label}: {}", failure.error));
            let mut outcome = RootfsOutcome::failed(&job, secs, failure.error, failure.log_tail);
            outcome.disk_full = failure.disk_full;
            outcomes.push(outcome);
        }
    }
}

/// Why a build failed: its exit code (or, for 0, that it fetched what no pin covers) and each
/// unpinned fetch, with how to pin a clone.
pub(super) fn failure_message(
    code: i64,
    log: &Path,
    unpinned: Vec<Unpinned>,
    recipes: &Path,
    config: &str,
) -> String {
    let mut error = match code {
        0 => format!(
            "the build finished, but its script fetched what no pin covers (log: {})",
            log.display()
        ),
        _ => format!("the builder exited with {code} (log: {})", log.display()),
    };
    for u in unpinned {
        let what = match u {
            Unpinned::Clone(url) => gitpins::unpinned_hint(recipes, config, &url),
            Unpinned::Url(url) => crate::urlpins::unpinned_hint(recipes, config, &url),
            Unpinned::Host(origin) => crate::urlpins::unpinned_host_hint(recipes, config, &origin),
            Unpinned::Download(line) => format!(
                "the script downloaded from the network, which a build cannot (only the \
                 pinned Debian archive, pinned downloads and the copies of pinned git sources \
                 reach it); the log says: {line}"
            ),
        };
        error = format!("{error}\n  {what}");
    }
    error
}

/// Every fetch of a finished build that no pin of its recipe covers: what its log shows, and
/// what the proxy refused it or served it from another recipe's pins.
pub(super) fn unpinned_of(apt_served: &Path, job: &RootfsJob, log_path: &Path) -> Vec<Unpinned> {
    let mut unpinned = unpinned_fetches(log_path);
    let mut refused = crate::pinserve::read_unpinned(apt_served, job.key.hex());
    refused.extend(served_unpinned(apt_served, job));
    if !refused.is_empty() {
        // The proxy's record names each URL; the tools' words for the same refusals go.
        unpinned.retain(|u| !matches!(u, Unpinned::Download(_)));
        unpinned.extend(refused.into_iter().map(|r| match r {
            Refused::Url(url) => Unpinned::Url(url),
            Refused::Host(origin) => Unpinned::Host(origin),
        }));
    }
    unpinned
}

/// The downloads the proxy served this build that its own recipe does not pin: the proxy
/// serves every pin of the run, but only the recipe's own are in the build's key.
fn served_unpinned(apt_served: &Path, job: &RootfsJob) -> Vec<Refused> {
    use crate::core::urlsource::normalized;
    let own: std::collections::BTreeSet<String> = job
        .facts
        .iter()
        .filter(|(k, _)| k.starts_with("url-source."))
        .filter_map(|(_, fact)| fact.rsplit_once(' ').map(|(url, _)| normalized(url)))
        .collect();
    crate::pinserve::read_served(apt_served, job.key.hex())
        .into_iter()
        .filter(|url| !own.contains(&normalized(url)))
        .map(Refused::Url)
        .collect()
}

/// What a build's log shows it fetched without a pin.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Unpinned {
    /// A git URL no source pins (git's message names the path the URL was sent to).
    Clone(String),
    /// A download through the build's proxy, which serves the pinned archive only (curl's
    /// and wget's words for a refused tunnel), as the log line says it.
    Download(String),
    /// A URL the proxy refused, as it recorded it.
    Url(String),
    /// A tunnel to a host with no pinned download (`https://host`).
    Host(String),
}

/// Each unpinned fetch of a build's log, once, in log order.
fn unpinned_fetches(log: &Path) -> Vec<Unpinned> {
    let text = String::from_utf8_lossy(&std::fs::read(log).unwrap_or_default()).into_owned();
    let mut found = Vec::new();
    for l in text.lines() {
        let u = if let Some(url) = crate::core::gitsource::unpinned_url_in(l) {
            Unpinned::Clone(url)
        } else if ["CONNECT tunnel failed", "Proxy tunneling failed"]
            .iter()
            .any(|w| l.contains(w))
        {
            Unpinned::Download(l.trim().chars().take(300).collect())
        } else {
            continue;
        };
        if !found.contains(&u) {
            found.push(u);
        }
    }
    found
}

pub(super) fn tail(path: &Path, n: usize) -> Vec<String> {
    let text = std::fs::read(path).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// One (config, arch): attach to or start its container, wait, collect, make the files,
/// commit them to the store. Returns the manifest and whether an earlier run's container
/// was picked up.
async fn run_job<E: Engine>(
    ctx: &JobCtx<E>,
    job: &RootfsJob,
    env: Vec<String>,
    tar: &[u8],
) -> Result<(crate::core::rootfs_lock::RootfsManifest, bool), JobFailure> {
    let JobCtx {
        engine,
        store_root,
        logs,
        printer,
        packing,
        ..
    } = ctx;
    let name = builder::container_name(job, &builder::store_tag(store_root));
    std::fs::create_dir_all(logs).map_err(|e| fail(format!("creating {}: {e}", logs.display())))?;
    let log_path = logs.join(format!(
        "rootfs-{}-{}-{}.log",
        job.config,
        job.arch,
        job.key.short()
    ));
    let resumed = attach_or_start(ctx, job, &name, env, tar).await?;
    let started = Instant::now();
    let bar = printer.spinner(&job.label());
    let label = job.label();
    let code = builder::follow(engine, &name, &log_path, |phase| {
        let msg = format!("{phase} [{}s]", started.elapsed().as_secs());
        match &bar {
            Some(b) => b.set_message(phase.to_owned()),
            None => tracing::info!("{label}: {msg}"),
        }
        if bar.is_none() {
            printer.status("Running", format!("{label}: {phase}"));
        }
    })
    .await
    .map_err(|e| fail(e.to_string()))?;
    // A script that fetched what no pin covers failed that fetch: the build fails too, even
    // when the script went on (KernelCI's scripts do not all `set -e`).
    let unpinned = unpinned_of(&ctx.apt_served, job, &log_path);
    if code != 0 || !unpinned.is_empty() {
        if let Some(b) = &bar {
            b.finish_and_clear();
        }
        let _ = engine.remove_container(&name).await;
        return Err(JobFailure {
            error: failure_message(code, &log_path, unpinned, &ctx.recipes, &job.config),
            log_tail: tail(&log_path, 20),
            disk_full: false,
        });
    }
    remove_stale_temp_dirs(store_root, &job.key);
    let tmp = tempfile::Builder::new()
        .prefix(&crate::store::Store::rootfs_temp_prefix(&job.key))
        .tempdir_in(store_root)
        .map_err(|e| {
            fail_store(
                format!("creating a temp dir in {}", store_root.display()),
                &e.into(),
                store_root,
            )
        })?;
    let raw = tmp.path().join("raw");
    let out = tmp.path().join("out");
    for d in [&raw, &out] {
        std::fs::create_dir(d)
            .map_err(|e| fail_store(d.display().to_string(), &e.into(), store_root))?;
    }
    match &bar {
        Some(b) => b.set_message("packing: canonical cpio, tar and ext4, gzip and xz"),
        None => printer.status(
            "Packing",
            format!("{label}: the five files and the manifest"),
        ),
    }
    let debs = crate::aptcache::read_served(&ctx.apt_served, job.key.hex());
    let made = pack::pack(engine, &name, job, &raw, &out, packing, debs).await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let manifest = made.map_err(|e| fail_store("making the files".into(), &e, store_root))?;
    let final_dir = store_root.join(job.key.hex());
    pack::commit_key_dir(&out, &final_dir).map_err(|e| {
        fail_store(
            format!("storing {}", final_dir.display()),
            &e.into(),
            store_root,
        )
    })?;
    fsutil::sync_dir(store_root).map_err(|e| fail(e.to_string()))?;
    drop(tmp);
    // The list is in the stored manifest now.
    let _ = std::fs::remove_file(ctx.apt_served.join(format!("{}.debs", job.key.hex())));
    engine
        .remove_container(&name)
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !resumed {
        // A resumed build's time is a part of it: not a duration to plan with.
        ctx.store.record_duration(
            &format!("rootfs:{}/{}", job.config, job.arch),
            started.elapsed().as_secs_f64(),
        );
    }
    Ok((manifest, resumed))
}

/// Picks up the job's container where an earlier run left it (running: attach; exited 0:
/// collect) or starts it afresh. Returns whether an earlier run's container was picked up.
async fn attach_or_start<E: Engine>(
    ctx: &JobCtx<E>,
    job: &RootfsJob,
    name: &str,
    env: Vec<String>,
    tar: &[u8],
) -> Result<bool, JobFailure> {
    let JobCtx {
        engine,
        image_id,
        printer,
        ..
    } = ctx;
    let state = engine.state(name).await.map_err(|e| fail(e.to_string()))?;
    let resumed = matches!(state, ContainerState::Running | ContainerState::Exited(0));
    match state {
        ContainerState::Running => {
            printer.status(
                "Attaching",
                format!("{} (container {name} is still running)", job.label()),
            );
        }
        ContainerState::Exited(0) => {
            printer.status(
                "Collecting",
                format!("{} (container {name} finished)", job.label()),
            );
        }
        other => {
            if let ContainerState::Exited(code) = other {
                printer.warn(format!(
                    "{}: an earlier build exited with {code}; starting it again",
                    job.label()
                ));
            }
            engine
                .remove_container(name)
                .await
                .map_err(|e| fail(e.to_string()))?;
            forget_served(&ctx.apt_served, job)?;
            binfmt::ensure(&job.arch).map_err(|e| fail(format!("{}: {}", e.message, e.hint)))?;
            builder::start(engine, name, job, image_id, env, tar.to_vec())
                .await
                .map_err(|e| fail(e.to_string()))?;
            printer.status(
                "Building",
                format!("{} ({}) in {name}", job.label(), job.key.short()),
            );
        }
    }
    Ok(resumed)
}

/// Before a fresh build: what the proxy served (or refused) an earlier one of the key is
/// not its.
pub(super) fn forget_served(apt_served: &Path, job: &RootfsJob) -> Result<(), JobFailure> {
    let served = apt_served.join(format!("{}.debs", job.key.hex()));
    if let Err(e) = std::fs::remove_file(&served) {
        if e.kind() != std::io::ErrorKind::NotFound {
            return Err(fail(format!("removing {}: {e}", served.display())));
        }
    }
    crate::pinserve::clear_unpinned(apt_served, job.key.hex());
    Ok(())
}

/// Removes what a killed run left while packing `key` (its temp dir under the store): this
/// run is about to pack the same key, and runs on one lockfile do not overlap.
pub(super) fn remove_stale_temp_dirs(store_root: &Path, key: &Digest) {
    let prefix = crate::store::Store::rootfs_temp_prefix(key);
    let Ok(entries) = std::fs::read_dir(store_root) else {
        return;
    };
    for e in entries.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            tracing::debug!("removing {} left by an interrupted run", e.path().display());
            if let Err(err) = std::fs::remove_dir_all(e.path()) {
                tracing::warn!("cannot remove {}: {err}", e.path().display());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_names_what_was_fetched_without_a_pin() {
        let d = tempfile::tempdir().unwrap();
        let log = d.path().join("log");
        let cases = [
            ("Reading package lists...\nDone\n", None),
            (
                "Cloning into 'bootrr'...\nfatal: '/kci-git/unpinned/https/github.com/kernelci/bootrr.git' does not appear to be a git repository\n",
                Some(Unpinned::Clone("https://github.com/kernelci/bootrr.git".into())),
            ),
            (
                "  % Total\ncurl: (56) CONNECT tunnel failed, response 405\n",
                Some(Unpinned::Download("curl: (56) CONNECT tunnel failed, response 405".into())),
            ),
            (
                "Proxy tunneling failed: Method Not AllowedUnable to establish SSL connection.\n",
                Some(Unpinned::Download(
                    "Proxy tunneling failed: Method Not AllowedUnable to establish SSL connection.".into(),
                )),
            ),
        ];
        let mut all = String::new();
        for (text, want) in cases {
            std::fs::write(&log, text).unwrap();
            assert_eq!(unpinned_fetches(&log), Vec::from_iter(want), "{text}");
            all.push_str(text);
            all.push_str(text);
        }
        std::fs::write(&log, all).unwrap();
        assert_eq!(unpinned_fetches(&log).len(), 3, "each once, in order");
    }
    use crate::engine::fake::{FakeEngine, Script};
    use crate::printer::ColorChoice;

    /// A job of the native arch (no emulation to register) and its context on `engine`.
    fn job_on(engine: &FakeEngine, dir: &Path) -> (JobCtx<FakeEngine>, RootfsJob) {
        let ctx = JobCtx {
            engine: engine.clone(),
            image_id: "sha256:builder".into(),
            store_root: dir.join("rootfs"),
            recipes: dir.join("recipes"),
            logs: dir.join("logs"),
            apt_served: dir.join("apt-served"),
            printer: Printer::new(ColorChoice::Never, true),
            packing: Arc::new(pack::PackSettings::default().resolve()),
            store: crate::store::Store::at(dir),
        };
        std::fs::create_dir_all(&ctx.store_root).unwrap();
        let job = RootfsJob {
            config: "tiny".into(),
            arch: crate::rootfs::binfmt::native_arch().into(),
            key: Digest::of(b"tiny inputs"),
            facts: Default::default(),
            source_date_epoch: 1,
            xz_preset: 1,
            memory: None,
        };
        (ctx, job)
    }

    fn name_of(ctx: &JobCtx<FakeEngine>, job: &RootfsJob) -> String {
        builder::container_name(job, &builder::store_tag(&ctx.store_root))
    }

    fn run(ctx: &JobCtx<FakeEngine>, job: &RootfsJob) -> Result<bool, JobFailure> {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(run_job(ctx, job, vec!["A=1".into()], b"tar"))
            .map(|(_, resumed)| resumed)
    }

    #[test]
    fn a_failed_build_reports_its_exit_and_log_tail_and_removes_its_container() {
        let dir = tempfile::tempdir().unwrap();
        let engine = FakeEngine::default();
        *engine.script.lock().unwrap() = Script {
            log: vec![
                "kci-phase: bootstrap".into(),
                "E: Unable to locate package kci-nonexistent".into(),
            ],
            exit: 3,
            ..Script::default()
        };
        let (ctx, job) = job_on(&engine, dir.path());
        let name = name_of(&ctx, &job);
        let failure = run(&ctx, &job).expect_err("the build fails");
        assert!(
            failure
                .error
                .starts_with("the builder exited with 3 (log: "),
            "{}",
            failure.error
        );
        assert_eq!(
            failure.log_tail.last().map(String::as_str),
            Some("E: Unable to locate package kci-nonexistent")
        );
        assert_eq!(
            engine.calls(),
            [
                format!("remove {name}"),
                format!("create {name}"),
                format!("start {name}"),
                format!("remove {name}")
            ]
        );
        assert!(engine.containers.lock().unwrap().is_empty());
    }

    #[test]
    fn an_earlier_runs_container_is_attached_to_or_collected_never_restarted() {
        for state in [ContainerState::Running, ContainerState::Exited(0)] {
            let dir = tempfile::tempdir().unwrap();
            let engine = FakeEngine::default();
            let (ctx, job) = job_on(&engine, dir.path());
            let name = name_of(&ctx, &job);
            // Its /out lacks the raw files: collecting fails, naming the first one.
            let script = Script {
                log: vec!["kci-phase: ext4".into()],
                exit: 0,
                ..Script::default()
            };
            engine.leave(&name, state.clone(), script);
            let failure = run(&ctx, &job).expect_err("nothing to collect");
            assert!(
                failure.error.contains("/out/full.tar"),
                "{state:?}: {}",
                failure.error
            );
            assert!(
                !engine
                    .calls()
                    .iter()
                    .any(|c| c.starts_with("start ") || c.starts_with("create ")),
                "{state:?}: {:?}",
                engine.calls()
            );
            let log = std::fs::read_to_string(ctx.logs.join(format!(
                "rootfs-tiny-{}-{}.log",
                job.arch,
                job.key.short()
            )))
            .unwrap();
            assert_eq!(log, "kci-phase: ext4\n", "{state:?}");
        }
    }

    #[test]
    fn stale_temp_dirs_of_the_key_go_and_others_stay() {
        let store = tempfile::tempdir().unwrap();
        let key = Digest::of(b"a");
        let other = Digest::of(b"b");
        let stale = store.path().join(format!(
            "{}x1",
            crate::store::Store::rootfs_temp_prefix(&key)
        ));
        std::fs::create_dir_all(stale.join("raw")).unwrap();
        std::fs::write(stale.join("raw/full.tar"), b"half").unwrap();
        let kept = [
            store.path().join(format!(
                "{}x2",
                crate::store::Store::rootfs_temp_prefix(&other)
            )),
            store.path().join(key.hex()),
        ];
        for k in &kept {
            std::fs::create_dir_all(k).unwrap();
        }
        remove_stale_temp_dirs(store.path(), &key);
        assert!(!stale.exists());
        for k in &kept {
            assert!(k.is_dir(), "{}", k.display());
        }
    }
}
