//! Each step of the procedure, mapped onto the services that do it. Every step is safe to
//! repeat: a rerun after a kill finds what the killed attempt did (tags, builds, a requested
//! restart) and does not do it twice.

use std::time::Duration;

use anyhow::Context as _;

use super::commands::{self, CommandLine};
use super::{git, pause, restart, trigger, Facts, Procedure};
use crate::backend::BackendApi;
use crate::core::procedure::{Event, Step};
use crate::jenkins::{Credential, HttpJenkins, JenkinsApi, Params};

/// Runs one step; its facts go to the journal.
pub async fn run(p: &mut Procedure<'_>, step: Step) -> anyhow::Result<Facts> {
    match step {
        Step::Pause => pause_step(p).await,
        Step::Restart => restart_step(p).await,
        Step::Core => core(p).await,
        Step::Dsl => dsl(p).await,
        Step::TestDefinitions => test_definitions(p).await,
        Step::Docker => docker(p).await,
        Step::Kernel => kernel(p).await,
        Step::Trigger => trigger_step(p).await,
        Step::Backend => deploy_app(p, Step::Backend).await,
        Step::Frontend => deploy_app(p, Step::Frontend).await,
        Step::Website => website(p).await,
        Step::Verify => verify_step(p).await,
    }
}

fn facts<const N: usize>(pairs: [(&str, String); N]) -> Facts {
    pairs
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
}

impl Procedure<'_> {
    /// The site's Jenkins, with its secret.
    fn jenkins(&self) -> anyhow::Result<HttpJenkins> {
        let j = &self.site.site.jenkins;
        let secret = self.site.jenkins_secret()?;
        let credential = match j.credential {
            crate::core::site::CredentialKind::ApiToken => Credential::ApiToken(secret),
            crate::core::site::CredentialKind::Password => Credential::Password(secret),
        };
        Ok(HttpJenkins::new(&j.url, &j.user, credential)?)
    }

    fn git_credentials(&self) -> anyhow::Result<Option<git::Credentials>> {
        Ok(self
            .site
            .git_credentials()?
            .map(|(username, password)| git::Credentials { username, password }))
    }

    /// A log file for a step's commands.
    fn log(&self, step: Step) -> std::path::PathBuf {
        self.work_dir(&format!("logs/{}-{step}.log", self.journal().id))
    }

    fn poll(&self) -> Duration {
        Duration::from_secs(self.site.site.jenkins.poll_seconds)
    }

    /// Milliseconds since the epoch when `step` was first started in this run: builds a
    /// killed attempt triggered started after it.
    fn first_start_ms(&self, step: Step) -> u64 {
        self.journal()
            .journal
            .entries
            .iter()
            .find(|e| e.step == step && e.event == Event::Start)
            .and_then(|e| crate::core::procedure::epoch_of(&e.at))
            .map_or(0, |s| s * 1000)
    }

    /// What every git step shares.
    fn git_job(&self, name: &str) -> anyhow::Result<git::Job> {
        let s = &self.site.site;
        let credentials = self.git_credentials()?;
        Ok(git::Job {
            workdir: self.work_dir(&format!("git/{name}")),
            identity: git::Identity {
                name: s.bot.name.clone(),
                email: s.bot.email.clone(),
            },
            tag_prefix: s.tag_prefix.clone(),
            date: self.date().to_owned(),
            dry_run: false,
            credentials,
        })
    }
}

/// Runs blocking git work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, git::GitError> + Send + 'static,
) -> anyhow::Result<T> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

async fn pause_step(p: &mut Procedure<'_>) -> anyhow::Result<Facts> {
    let j = &p.site.site.jenkins;
    let opts = pause::PauseOptions {
        monitor_job: j.monitor_job.clone(),
        trigger_job: j.trigger_job.clone(),
        bisection_job: j.bisection_job.clone(),
        poll: p.poll(),
        deadline: Some(Duration::from_secs(j.drain_minutes * 60)),
    };
    let mut progress = pause::printer_progress(p.printer);
    let report = pause::pause(&p.jenkins()?, &opts, &mut progress).await?;
    let aborted: Vec<String> = report
        .aborted
        .iter()
        .map(|a| format!("{}#{}", a.job, a.number))
        .collect();
    Ok(facts([
        (
            "disabled",
            [report.disabled, report.already_disabled]
                .concat()
                .join(","),
        ),
        ("aborted", aborted.join(",")),
        (
            "waited-for",
            report
                .trigger_wait
                .waited_for
                .iter()
                .map(|n| format!("#{n}"))
                .collect::<Vec<_>>()
                .join(","),
        ),
        (
            "took",
            crate::jenkins::human_duration(Duration::from_millis(report.took_ms)),
        ),
    ]))
}

/// Records the session before anything restarts; asks for the restart once (a rerun after a
/// kill finds "restart-requested" and only waits); then waits for the new instance.
async fn restart_step(p: &mut Procedure<'_>) -> anyhow::Result<Facts> {
    let jenkins = p.jenkins()?;
    let url = p.site.site.jenkins.url.clone();
    let before = match p.fact(Step::Restart, "session-before") {
        Some(s) if p.fact(Step::Restart, "restart-requested").is_some() => s,
        _ => {
            let s = restart::record_session(&jenkins, &url).await?;
            p.progress(Step::Restart, facts([("session-before", s.clone())]))?;
            s
        }
    };
    if p.fact(Step::Restart, "restart-requested").is_none() {
        let command = &p.site.site.restart.command;
        let how = if command.is_empty() {
            jenkins.safe_restart().await?;
            "safeRestart".to_owned()
        } else {
            let cmd = super::commands::CommandLine {
                argv: command.clone(),
                cwd: p.site.dir.clone(),
            };
            p.printer.status("Restarting", format!("running {cmd}"));
            super::commands::run(&cmd, &p.work_dir("logs/restart.log"), p.printer, p.verbose)
                .await?;
            cmd.to_string()
        };
        p.progress(Step::Restart, facts([("restart-requested", how)]))?;
    }
    let j = &p.site.site.jenkins;
    let opts = restart::ReadinessOptions {
        poll: p.poll(),
        deadline: Duration::from_secs(j.restart_minutes * 60),
        expected_jobs: p.site.site.expected_jobs(),
        agents: if j.agents.is_empty() {
            restart::ExpectAgents::Ignore
        } else {
            restart::ExpectAgents::Named(j.agents.clone())
        },
    };
    let mut progress = restart::printer_progress(p.printer);
    let verdict = restart::wait_ready(&jenkins, &url, &before, &opts, &mut progress).await?;
    match &verdict {
        restart::Verdict::Back {
            version,
            session,
            jobs,
            agents_online,
            agents_total,
            waited_ms,
        } => {
            p.printer.status("Back", &verdict);
            Ok(facts([
                ("version", version.clone()),
                ("session", session.clone()),
                ("jobs", jobs.to_string()),
                ("agents", format!("{agents_online}/{agents_total}")),
                (
                    "waited",
                    crate::jenkins::human_duration(Duration::from_millis(*waited_ms)),
                ),
            ]))
        }
        _ => Err(anyhow::Error::new(crate::error::EnvironmentError {
            message: verdict.to_string(),
            hint: "check the Jenkins host; `kci-build prod restart` waits again without restarting twice".into(),
        })),
    }
}

/// Triggers `job` unless a killed attempt of `step` already did (a build with the same
/// parameters, started since the step first started), and follows it to its build number.
async fn trigger_once(
    p: &Procedure<'_>,
    step: Step,
    job: &str,
    params: &Params,
) -> anyhow::Result<Facts> {
    let jenkins = p.jenkins()?;
    // Parameters that name the pipe cleaner identify its build whenever it started; a job
    // without parameters is matched by builds started since the step first started.
    let since = if params.is_empty() {
        p.first_start_ms(step)
    } else {
        0
    };
    let (found, triggered) = match trigger::find_build(&jenkins, job, params, since).await? {
        Some(t) => (true, t),
        None => {
            let opts = trigger::TriggerOptions {
                poll: Duration::from_millis(500).min(p.poll()),
                deadline: Some(Duration::from_secs(3600)),
            };
            (false, trigger::trigger(&jenkins, job, params, &opts).await?)
        }
    };
    p.printer.status(
        if found { "Found" } else { "Triggered" },
        format!("{job} #{} {}", triggered.number, triggered.url),
    );
    Ok(facts([
        ("job", job.to_owned()),
        ("build", triggered.number.to_string()),
        ("url", triggered.url.clone()),
        (
            "queue-item",
            if found {
                String::new()
            } else {
                triggered.queue_item.to_string()
            },
        ),
        ("found", if found { "yes".into() } else { String::new() }),
    ]))
}

async fn dsl(p: &mut Procedure<'_>) -> anyhow::Result<Facts> {
    let job = p.site.site.jenkins.dsl_job.clone();
    trigger_once(p, Step::Dsl, &job, &Params::new()).await
}

/// The pipe cleaner's build: the kernel step's tag and commit of this run.
async fn trigger_step(p: &mut Procedure<'_>) -> anyhow::Result<Facts> {
    let (Some(tag), Some(commit)) = (p.fact(Step::Kernel, "tag"), p.fact(Step::Kernel, "commit"))
    else {
        anyhow::bail!(
            "no pipe cleaner in this run's journal: run `kci-build prod update kernel` first"
        );
    };
    let (job, params) = p.site.site.trigger_for(&tag, &commit);
    let mut f = trigger_once(p, Step::Trigger, &job, &params).await?;
    f.insert("tag".into(), tag);
    Ok(f)
}

async fn core(p: &mut Procedure<'_>) -> anyhow::Result<Facts> {
    let c = &p.site.site.core;
    let step = git::CoreStep {
        job: p.git_job("kernelci-core")?,
        url: c.url.clone(),
        branch: c.branch.clone(),
        base: c.base.clone(),
    };
    let f = blocking(move || git::update_core(&step)).await?;
    Ok(rebase_facts(p, f))
}

async fn test_definitions(p: &mut Procedure<'_>) -> anyhow::Result<Facts> {
    let t = &p.site.site.test_definitions;
    let step = git::TestDefinitionsStep {
        job: p.git_job("test-definitions")?,
        fork_url: t.url.clone(),
        upstream_url: t.upstream.clone(),
        branch: t.branch.clone(),
        upstream_branch: t.upstream_branch.clone(),
        push_to: t.push_to.clone(),
    };
    let f = blocking(move || git::update_test_definitions(&step)).await?;
    Ok(rebase_facts(p, f))
}

fn rebase_facts(p: &Procedure<'_>, f: git::RebaseFacts) -> Facts {
    p.printer.status(
        "Git",
        format!("{} {}: {}", f.repository, f.branch, f.outcome.describe()),
    );
    facts([
        ("head", f.head),
        ("tag", f.tag.map(|t| t.name).unwrap_or_default()),
        ("outcome", f.outcome.describe().to_owned()),
    ])
}

async fn kernel(p: &mut Procedure<'_>) -> anyhow::Result<Facts> {
    let l = &p.site.site.linux;
    let step = git::KernelStep {
        job: p.git_job("linux")?,
        stable_url: l.stable.clone(),
        stable_branch: l.stable_branch.clone(),
        fork_url: l.fork.clone(),
        fork_branch: l.branch.clone(),
        patches: p.site.resolve(&l.patches),
        force_new: false,
    };
    let f = blocking(move || git::update_kernel(&step)).await?;
    p.printer.status(
        "Kernel",
        format!("{} at {} ({})", f.tag.name, f.commit, f.outcome.describe()),
    );
    Ok(facts([
        ("tag", f.tag.name),
        ("commit", f.commit),
        ("stable", f.stable_commit),
        ("outcome", f.outcome.describe().to_owned()),
    ]))
}

/// `kci-build build --push` of the image set: what exists (in the store or the registry)
/// is reused, so a repeat builds and pushes nothing new.
async fn docker(p: &mut Procedure<'_>) -> anyhow::Result<Facts> {
    let d = &p.site.site.docker;
    let registry = d
        .registry
        .clone()
        .or_else(|| p.settings.env.get("KCI_REGISTRY").map(str::to_owned))
        .ok_or_else(|| {
            anyhow::anyhow!("the docker step needs a registry: set docker.registry in the site file or KCI_REGISTRY")
        })?;
    let paths = crate::workspace::Paths {
        images: p.site.resolve(&d.images),
        lockfile: p.site.resolve(&d.lockfile),
        store: p.settings.store.clone(),
    };
    let lock = crate::workspace::lock_lockfile(&paths.store, &paths.lockfile, p.printer)?;
    let mut ws = crate::workspace::Workspace::load(&paths, p.settings)
        .with_context(|| format!("the images of {}", paths.images.display()))?;
    let opts = crate::imagebuild::BuildOptions {
        targets: Vec::new(),
        jobs: d.jobs.max(1),
        lock: crate::imagebuild::LockMode::Update,
        verbose: p.verbose,
        registry: Some(registry.clone()),
        push: true,
        engines: vec!["default".into()],
    };
    let report = crate::imagebuild::build(&mut ws, &opts, p.printer).await?;
    drop(lock);
    report.into_result()?;
    let built = report
        .targets
        .iter()
        .filter(|o| o.action == crate::imagebuild::TargetAction::Built)
        .count();
    let pushed = report
        .push
        .as_ref()
        .map(|push| {
            format!(
                "{} blobs uploaded, {} already there",
                push.blobs_uploaded, push.blobs_present
            )
        })
        .unwrap_or_default();
    Ok(facts([
        ("registry", registry),
        ("images", report.total.to_string()),
        ("built", built.to_string()),
        ("pushed", pushed),
    ]))
}

/// The backend or the frontend: the `-config` checkout fast-forwarded, the app's production
/// head looked up, `ansible-playbook … -t app --skip-tags=secrets -e git_head=<rev>` run.
/// Ansible makes a repeat a no-op where nothing changed.
async fn deploy_app(p: &mut Procedure<'_>, step: Step) -> anyhow::Result<Facts> {
    let app = match step {
        Step::Backend => p.site.site.backend.clone(),
        _ => p.site.site.frontend.clone(),
    };
    let dir = p.work_dir(&format!("git/{step}-config"));
    let creds = p.git_credentials()?;
    let config = {
        let (url, branch, dir, creds) = (
            app.config_repo.clone(),
            app.config_branch.clone(),
            dir.clone(),
            creds.clone(),
        );
        blocking(move || git::checkout(&url, &branch, &dir, false, creds.as_ref())).await?
    };
    let git_head = {
        let (url, branch) = (app.app_repo.clone(), app.app_branch.clone());
        blocking(move || git::ls_remote(&url, &branch, creds.as_ref())).await?
    };
    let a = &p.site.site.ansible;
    let mut argv = vec![
        a.command.clone(),
        a.playbook.clone(),
        "-i".into(),
        a.inventory.clone(),
        "-l".into(),
        app.host.clone(),
        "-D".into(),
        "-b".into(),
        "--skip-tags=secrets".into(),
        "-t".into(),
        "app".into(),
    ];
    if let Some(key) = &a.private_key {
        argv.push("--private-key".into());
        argv.push(p.site.resolve(key).display().to_string());
    }
    argv.push("-e".into());
    argv.push(format!("git_head={git_head}"));
    let cmd = CommandLine { argv, cwd: dir };
    p.printer
        .status("Deploying", format!("{step} at {git_head}"));
    let ran = commands::run(&cmd, &p.log(step), p.printer, p.verbose).await?;
    Ok(facts([
        ("config", config),
        ("git-head", git_head),
        ("recap", commands::ansible_recap(&ran.lines)),
    ]))
}

/// kernelci-project at its production branch (submodules too), built with hugo, and the
/// web root's contents replaced by `public/`.
async fn website(p: &mut Procedure<'_>) -> anyhow::Result<Facts> {
    let w = p.site.site.website.clone();
    let dir = p.work_dir("git/website");
    let creds = p.git_credentials()?;
    let commit = {
        let dir = dir.clone();
        blocking(move || git::checkout(&w.repo, &w.branch, &dir, true, creds.as_ref())).await?
    };
    let w = &p.site.site.website;
    let public = dir.join("public");
    // hugo adds to public/; last run's files must not survive into this one.
    if public.exists() {
        std::fs::remove_dir_all(&public)
            .with_context(|| format!("removing {}", public.display()))?;
    }
    let cmd = CommandLine {
        argv: w.hugo.clone(),
        cwd: dir.clone(),
    };
    commands::run(&cmd, &p.log(Step::Website), p.printer, p.verbose).await?;
    let root = p.site.resolve(&w.web_root);
    let files = replace_contents(&public, &root)?;
    p.printer.status(
        "Published",
        format!("{files} files into {}", root.display()),
    );
    Ok(facts([
        ("commit", commit),
        ("files", files.to_string()),
        ("web-root", root.display().to_string()),
    ]))
}

/// Makes `dest`'s contents those of `src` (files, directories, symlinks): everything is
/// copied into a staging directory beside `dest` first, then the old entries are removed
/// and the staged ones renamed in, so a failure while copying leaves `dest` as it was.
/// Returns the number of files.
fn replace_contents(src: &std::path::Path, dest: &std::path::Path) -> anyhow::Result<usize> {
    let ctx = |what: &str, p: &std::path::Path| format!("{what} {}", p.display());
    std::fs::create_dir_all(dest).with_context(|| ctx("creating", dest))?;
    let staging = dest.join(".kci-build-staging");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).with_context(|| ctx("removing", &staging))?;
    }
    let mut files = 0;
    for e in walkdir::WalkDir::new(src).min_depth(1).sort_by_file_name() {
        let e = e.with_context(|| ctx("reading", src))?;
        let to = staging.join(e.path().strip_prefix(src).expect("under src"));
        let t = e.file_type();
        if t.is_dir() {
            std::fs::create_dir_all(&to).with_context(|| ctx("creating", &to))?;
        } else if t.is_symlink() {
            let target = std::fs::read_link(e.path()).with_context(|| ctx("reading", e.path()))?;
            std::os::unix::fs::symlink(target, &to).with_context(|| ctx("creating", &to))?;
        } else {
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).with_context(|| ctx("creating", parent))?;
            }
            std::fs::copy(e.path(), &to).with_context(|| ctx("copying to", &to))?;
            files += 1;
        }
    }
    for e in std::fs::read_dir(dest).with_context(|| ctx("listing", dest))? {
        let path = e?.path();
        if path == staging {
            continue;
        }
        if path.is_dir() && !path.is_symlink() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        }
        .with_context(|| ctx("removing", &path))?;
    }
    if staging.exists() {
        for e in std::fs::read_dir(&staging).with_context(|| ctx("listing", &staging))? {
            let from = e?.path();
            let to = dest.join(from.file_name().expect("a name"));
            std::fs::rename(&from, &to).with_context(|| ctx("moving into place", &to))?;
        }
        std::fs::remove_dir(&staging).with_context(|| ctx("removing", &staging))?;
    }
    Ok(files)
}

/// Judges the pipe cleaner (this run's, unless another revision is named) once its results
/// have settled; with `--on-fail disable-monitor`, a difference disables the monitor job.
async fn verify_step(p: &mut Procedure<'_>) -> anyhow::Result<Facts> {
    let site = &p.site.site;
    let token = p.site.backend_secret()?;
    let var = site
        .backend_api
        .secret
        .env
        .clone()
        .unwrap_or_else(|| "the backend token file".into());
    let backend = crate::backend::HttpBackend::new(&site.backend_api.url, token, &var)?;
    let opts = p.verify.clone();
    let kernel = match opts
        .revision
        .clone()
        .or_else(|| p.fact(Step::Kernel, "tag"))
    {
        Some(k) => k,
        None => {
            let newest = backend
                .revisions(&site.verify.job, &site.verify.branch, 1)
                .await?;
            newest.first().map(|d| d.kernel.clone()).ok_or_else(|| {
                anyhow::anyhow!(
                    "kernelci-backend has no revision of {} {}",
                    site.verify.job,
                    site.verify.branch
                )
            })?
        }
    };
    // The trigger build of this run's pipe cleaner, when this is it.
    let jenkins = p.jenkins().ok();
    let build = match (p.fact(Step::Kernel, "tag"), p.fact(Step::Trigger, "build")) {
        (Some(tag), Some(n)) if tag == kernel => n.parse::<u64>().ok(),
        _ => None,
    };
    let trigger_job = p
        .fact(Step::Trigger, "job")
        .unwrap_or_else(|| site.jenkins.trigger_job.clone());
    let trigger = match (&jenkins, build) {
        (Some(j), Some(n)) => Some((j, trigger_job.as_str(), n)),
        _ => None,
    };
    let judge = super::verify::Judge {
        state: p.site.state_dir(),
        backend,
        site: &site.verify,
        poll: p.poll(),
        printer: p.printer,
    };
    let previous = opts.previous.unwrap_or(site.verify.previous).max(1);
    let (new, before) = judge.judge(&kernel, previous, opts.wait, trigger).await?;
    let chart = opts
        .chart
        .clone()
        .unwrap_or_else(|| super::verify::default_chart(&p.site.state_dir(), &kernel));
    let comparison = super::verify::conclude(&new, &before, &site.verify.thresholds, &chart)?;
    let similar = comparison.similar();
    let mut monitor_disabled = false;
    if !similar && opts.on_fail == Some(super::verify::OnFail::DisableMonitor) {
        let j = p.jenkins()?;
        j.disable(&site.jenkins.monitor_job).await?;
        monitor_disabled = true;
        p.progress(
            Step::Verify,
            facts([("monitor-disabled", site.jenkins.monitor_job.clone())]),
        )?;
        p.printer.warn(format!(
            "disabled {}: no new revision is built until it is enabled again",
            site.jenkins.monitor_job
        ));
    }
    p.printer.status("Chart", chart.display());
    let f = facts([
        ("kernel", kernel.clone()),
        (
            "verdict",
            if similar {
                "similar".into()
            } else {
                "different".into()
            },
        ),
        ("reasons", comparison.reasons.len().to_string()),
        ("baseline", comparison.baseline.join(",")),
        ("chart", chart.display().to_string()),
    ]);
    p.verified = Some(super::verify::Verified {
        comparison,
        chart,
        monitor_disabled,
    });
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_web_root_gets_exactly_the_new_site() {
        let d = tempfile::tempdir().unwrap();
        let (src, dest) = (d.path().join("public"), d.path().join("www"));
        std::fs::create_dir_all(src.join("css")).unwrap();
        std::fs::write(src.join("index.html"), "new").unwrap();
        std::fs::write(src.join("css/site.css"), "body{}").unwrap();
        std::fs::create_dir_all(dest.join("old")).unwrap();
        std::fs::write(dest.join("index.html"), "old").unwrap();
        std::fs::write(dest.join("old/page.html"), "old").unwrap();
        assert_eq!(replace_contents(&src, &dest).unwrap(), 2);
        assert_eq!(
            std::fs::read_to_string(dest.join("index.html")).unwrap(),
            "new"
        );
        assert!(dest.join("css/site.css").exists());
        assert!(!dest.join("old").exists());
        assert!(!dest.join(".kci-build-staging").exists());
        // Again, with nothing changed: the same contents.
        assert_eq!(replace_contents(&src, &dest).unwrap(), 2);
        let names: Vec<_> = std::fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");
    }
}
