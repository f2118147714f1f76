//! Stage "build" on a Docker Swarm (`rootfs --swarm`): every (config, arch) left to make
//! becomes a replicated job ([`crate::engine::swarm`]) whose task builds *and packs* on its
//! node (`kci-build rootfs-task` in the task image) and pushes the files to the registry
//! under a candidate tag. The coordinator only waits, reads the job's log, checks it as a
//! local build's (fetches no pin covers fail it), pulls the candidate — every blob and file
//! checked against its digest, as any pull — into the store, and removes the job. A job is
//! found again by its name after the coordinator died: a rerun attaches and waits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use super::classify::{Made, Todo};
use super::jobs::{self, fail, JobFailure};
use super::report::RootfsOutcome;
use crate::core::rootfs_lock::RootfsManifest;
use crate::engine::swarm::{self, JobSpec, JobState, Swarm};
use crate::printer::Printer;
use crate::registry::Registry;
use crate::rootfs::oci::{self, Pulled};
use crate::rootfs::plan::RootfsJob;
use crate::rootfs::{binfmt, builder};

/// How often the coordinator asks Swarm how a job is doing.
const POLL: Duration = Duration::from_secs(2);

/// What every job of one run on a swarm shares.
pub(super) struct SwarmCtx {
    pub swarm: Swarm,
    pub reg: Registry,
    /// `--registry` as given (the task reaches it the same way: host network).
    pub registry_arg: String,
    pub prefix: String,
    /// The task image, `host/repo@sha256:…`.
    pub image: String,
    /// The registry credentials as a Swarm secret, and for the daemon's pull.
    pub secret: Option<(String, String)>,
    pub auth: Option<bollard::auth::DockerCredentials>,
    /// The placement constraint of every job: the task image's platform (the builder image
    /// and this binary are the coordinator's), `node.platform.arch == x86_64`.
    pub constraint: String,
    pub xz_memory: u64,
    pub store_root: PathBuf,
    pub recipes: PathBuf,
    pub logs: PathBuf,
    pub apt_served: PathBuf,
    pub printer: Printer,
    pub store: crate::store::Store,
}

/// The repository of task images and inputs blobs.
pub(super) fn task_repo(prefix: &str) -> String {
    format!("{prefix}rootfs-task")
}

/// Where the task image runs: nodes of the coordinator's platform (the builder image and the
/// kci-build binary in it are built for it; a foreign arch is emulated there, as locally).
/// An error when no ready node has it.
pub(super) fn task_constraint(node_arches: &[String]) -> anyhow::Result<String> {
    let native = crate::rootfs::binfmt::native_arch();
    let Some(arch) = swarm::node_arch(native) else {
        anyhow::bail!("--swarm: no Swarm platform name for this machine's arch {native}");
    };
    if !node_arches.iter().any(|a| a == arch) {
        return Err(crate::error::EnvironmentError {
            message: format!(
                "--swarm: no ready node of the swarm is {arch} (nodes: {}), and the task \
                 image is built for {arch}",
                if node_arches.is_empty() {
                    "none".to_owned()
                } else {
                    node_arches.join(", ")
                }
            ),
            hint: "join a node of this platform (`docker swarm join`) or make one active \
                   (`docker node update --availability active`)"
                .into(),
        }
        .into());
    }
    Ok(format!("node.platform.arch == {arch}"))
}

/// The tag a task pushes its files under, before the coordinator has checked them.
fn candidate_tag(job: &RootfsJob) -> String {
    format!("{}-{}-swarm", job.arch, job.key.hex())
}

/// Runs every job of `todo` as a Swarm job at once (Swarm queues what its nodes cannot take
/// yet, by the CPU each reserves).
pub(super) async fn run_all(
    ctx: SwarmCtx,
    todo: Vec<Todo>,
    outcomes: &mut Vec<RootfsOutcome>,
    made: &mut BTreeMap<(String, String), Made>,
) -> anyhow::Result<()> {
    let ctx = Arc::new(ctx);
    let mut tasks = tokio::task::JoinSet::new();
    for Todo { job, env, tar } in todo {
        let ctx = ctx.clone();
        tasks.spawn(async move {
            let started = Instant::now();
            let r = run_job(&ctx, &job, env, &tar).await;
            (job, started.elapsed().as_secs_f64(), r)
        });
    }
    while let Some(joined) = tasks.join_next().await {
        let (job, secs, r) = joined.context("a swarm job's task panicked")?;
        jobs::record(&ctx.printer, job, secs, r, outcomes, made);
    }
    Ok(())
}

/// One (config, arch) on the swarm: attach to or create its job, wait for it, check and
/// pull what it pushed, remove it.
async fn run_job(
    ctx: &SwarmCtx,
    job: &RootfsJob,
    env: Vec<String>,
    tar: &[u8],
) -> Result<(RootfsManifest, bool), JobFailure> {
    let name = builder::container_name(job, &builder::store_tag(&ctx.store_root));
    let err = |e: &dyn std::fmt::Display| fail(e.to_string());
    std::fs::create_dir_all(&ctx.logs).map_err(|e| err(&e))?;
    let log_path = ctx.logs.join(format!(
        "rootfs-{}-{}-{}.log",
        job.config,
        job.arch,
        job.key.short()
    ));
    let resumed = attach_or_create(ctx, job, &name, env, tar).await?;
    let started = Instant::now();
    let end = wait(ctx, job, &name).await?;
    let log = ctx.swarm.log(&name).await.map_err(|e| err(&e))?;
    std::fs::write(&log_path, &log).map_err(|e| err(&e))?;
    let result = match end {
        JobState::Complete => collect(ctx, job, &log_path).await,
        JobState::Failed { attempts, error } => Err(JobFailure {
            error: format!(
                "the swarm job {name} failed {attempts} time(s), the last: {error} (log: {})",
                log_path.display()
            ),
            log_tail: jobs::tail(&log_path, 20),
            disk_full: false,
        }),
        other => Err(fail(format!("the swarm job {name} ended as {other:?}"))),
    };
    ctx.swarm.remove(&name).await.map_err(|e| err(&e))?;
    let manifest = result?;
    if !resumed {
        ctx.store.record_duration(
            &format!("rootfs:{}/{}", job.config, job.arch),
            started.elapsed().as_secs_f64(),
        );
    }
    Ok((manifest, resumed))
}

/// Picks up the job an earlier run left (running or finished) or creates it afresh (an
/// earlier one that failed is removed first). Returns whether an earlier run's was picked up.
async fn attach_or_create(
    ctx: &SwarmCtx,
    job: &RootfsJob,
    name: &str,
    env: Vec<String>,
    tar: &[u8],
) -> Result<bool, JobFailure> {
    let err = |e: &dyn std::fmt::Display| fail(e.to_string());
    match ctx.swarm.state(name).await.map_err(|e| err(&e))? {
        JobState::Running { .. } | JobState::Complete => {
            ctx.printer.status(
                "Attaching",
                format!("{} (swarm job {name} of an earlier run)", job.label()),
            );
            return Ok(true);
        }
        JobState::Failed { .. } => {
            ctx.printer.warn(format!(
                "{}: an earlier run's swarm job failed; starting it again",
                job.label()
            ));
            ctx.swarm.remove(name).await.map_err(|e| err(&e))?;
        }
        JobState::Missing => {}
    }
    jobs::forget_served(&ctx.apt_served, job)?;
    let spec = job_spec(ctx, job, name, env, tar)
        .await
        .map_err(|e| fail(format!("{e:#}")))?;
    // A foreign arch runs emulated on the node: here, it needs the handler registered (a
    // remote node needs its own).
    binfmt::ensure(&job.arch).map_err(|e| fail(format!("{}: {}", e.message, e.hint)))?;
    ctx.swarm
        .create(&spec, ctx.auth.clone())
        .await
        .map_err(|e| err(&e))?;
    ctx.printer.status(
        "Submitted",
        format!("{} ({}) as swarm job {name}", job.label(), job.key.short()),
    );
    Ok(false)
}

/// The job: its inputs pushed as a blob, its arguments, environment, labels, placement.
async fn job_spec(
    ctx: &SwarmCtx,
    job: &RootfsJob,
    name: &str,
    env: Vec<String>,
    tar: &[u8],
) -> anyhow::Result<JobSpec> {
    let repo = task_repo(&ctx.prefix);
    let inputs = crate::core::names::Digest::of(tar);
    let tmp = tempfile::NamedTempFile::new_in(&ctx.store_root)?;
    std::fs::write(tmp.path(), tar)?;
    ctx.reg
        .push_blob(&repo, &inputs, tmp.path())
        .await
        .with_context(|| {
            format!(
                "pushing the inputs of {} to {}",
                job.label(),
                ctx.reg.host()
            )
        })?;
    let (artifact_repo, _) = oci::reference(&ctx.prefix, job);
    let args = [
        ("--registry", ctx.registry_arg.clone()),
        ("--repo", artifact_repo),
        ("--tag", candidate_tag(job)),
        ("--inputs-repo", repo),
        ("--inputs", inputs.as_str().to_owned()),
        ("--config", job.config.clone()),
        ("--arch", job.arch.clone()),
        ("--key", job.key.as_str().to_owned()),
        ("--source-date-epoch", job.source_date_epoch.to_string()),
        ("--xz-preset", job.xz_preset.to_string()),
        ("--xz-memory", (ctx.xz_memory >> 20).to_string()),
    ];
    let mut argv = vec![
        format!("/{}", crate::rootfs::task::BINARY),
        "rootfs-task".to_owned(),
    ];
    for (k, v) in args {
        argv.push(format!("{k}={v}"));
    }
    Ok(JobSpec {
        name: name.to_owned(),
        image: ctx.image.clone(),
        command: argv,
        env,
        labels: std::collections::HashMap::from([
            (builder::LABEL.to_owned(), job.label()),
            (builder::LABEL_KEY.to_owned(), job.key.as_str().to_owned()),
        ]),
        constraint: Some(ctx.constraint.clone()),
        memory: job.memory,
        secret: ctx.secret.clone(),
    })
}

/// Waits until the job completes or every attempt failed, saying when Swarm tries again and
/// which phase the build is in (the last `kci-phase:` line of its log's tail).
async fn wait(ctx: &SwarmCtx, job: &RootfsJob, name: &str) -> Result<JobState, JobFailure> {
    let bar = ctx.printer.spinner(&job.label());
    let mut attempt_seen = 1;
    let mut phase_seen = String::new();
    let end = loop {
        let state = ctx
            .swarm
            .state(name)
            .await
            .map_err(|e| fail(e.to_string()))?;
        match state {
            JobState::Running { attempt, .. } => {
                if attempt > attempt_seen {
                    attempt_seen = attempt;
                    ctx.printer.warn(format!(
                        "{}: the swarm job's task failed; Swarm starts attempt {attempt} of {}",
                        job.label(),
                        swarm::MAX_ATTEMPTS
                    ));
                }
                let tail = ctx.swarm.log_tail(name, "40").await.unwrap_or_default();
                if let Some(phase) = last_phase(&tail).filter(|p| *p != phase_seen) {
                    match &bar {
                        Some(b) => b.set_message(format!("{phase} (swarm, attempt {attempt})")),
                        None => ctx
                            .printer
                            .status("Running", format!("{}: {phase}", job.label())),
                    }
                    phase_seen = phase;
                }
            }
            JobState::Missing => {
                break Err(fail(format!(
                    "the swarm job {name} was removed while it ran"
                )))
            }
            done => break Ok(done),
        }
        tokio::time::sleep(POLL).await;
    };
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    end
}

/// The phase the last `kci-phase:` line of `log` names.
fn last_phase(log: &[u8]) -> Option<String> {
    String::from_utf8_lossy(log)
        .lines()
        .rev()
        .find_map(|l| l.trim_end().strip_prefix("kci-phase: ").map(str::to_owned))
}

/// A completed job: its log checked for fetches no pin covers, then its candidate pulled
/// into the store (every file checked).
async fn collect(
    ctx: &SwarmCtx,
    job: &RootfsJob,
    log_path: &Path,
) -> Result<RootfsManifest, JobFailure> {
    let unpinned = jobs::unpinned_of(&ctx.apt_served, job, log_path);
    if !unpinned.is_empty() {
        return Err(JobFailure {
            error: jobs::failure_message(0, log_path, unpinned, &ctx.recipes, &job.config),
            log_tail: jobs::tail(log_path, 20),
            disk_full: false,
        });
    }
    let (repo, _) = oci::reference(&ctx.prefix, job);
    jobs::remove_stale_temp_dirs(&ctx.store_root, &job.key);
    let pulled = oci::pull_from(&ctx.reg, &repo, &candidate_tag(job), job, &ctx.store_root)
        .await
        .map_err(|e| fail(format!("pulling what the swarm job pushed: {e:#}")))?;
    // The list is in the stored manifest now.
    let _ = std::fs::remove_file(ctx.apt_served.join(format!("{}.debs", job.key.hex())));
    match pulled {
        Pulled::Stored(m) => Ok(m),
        Pulled::Missing => Err(fail(format!(
            "the swarm job completed but {}/{repo}:{} is missing",
            ctx.reg.host(),
            candidate_tag(job)
        ))),
        Pulled::Bad(why) => Err(fail(format!(
            "what the swarm job pushed is not what the key makes: {why}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_phase_is_the_last_one_the_log_names() {
        let log = b"kci-phase: bootstrap\nI: downloading\nkci-phase: script\nhello\n";
        assert_eq!(last_phase(log).as_deref(), Some("script"));
        assert_eq!(last_phase(b"no phase yet\n"), None);
    }

    #[test]
    fn jobs_run_on_nodes_of_the_task_images_platform() {
        let here = crate::engine::swarm::node_arch(crate::rootfs::binfmt::native_arch())
            .unwrap()
            .to_owned();
        assert_eq!(
            task_constraint(&["riscv64".into(), here.clone()]).unwrap(),
            format!("node.platform.arch == {here}")
        );
        let e = task_constraint(&["riscv64".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("riscv64"), "{e:#}");
        assert!(task_constraint(&[]).is_err());
    }
}
