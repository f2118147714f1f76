//! The git work of the Monday `update`: kernelci-core rebased on `main` and tagged, the
//! test-definitions fork rebased on upstream, the kernel "pipe cleaner" (linux-stable +
//! KernelCI's patches + a bot commit naming the tag), and `ls-remote` for the apps' `git_head`.
//! It exists so that the procedure's shell snippets become steps that are safe to repeat: the
//! driver may be killed anywhere, even between a push and its journal entry, so every step
//! starts again from what the remotes hold, reuses a tag already made for the same commit,
//! and pushes only what the remotes lack.
//!
//! git2 does the local work (rebase, commits, annotated tags, checkouts, reading refs). The
//! `git` CLI does two things libgit2 cannot here: `git am` (libgit2 has no mailbox
//! applier), with the bot's identity and the user's configuration shut out, and everything
//! that crosses the network (fetch, push, ls-remote, submodules: libgit2 is built without
//! ssh and https), with the operator's own git set-up — ssh keys, credential helpers — and a
//! token, when the site names one, handed over by an askpass helper, never on a command line.
//! Each step takes a plain struct (what the site configuration fills in) and returns
//! serialisable facts: commits, the tag made or found, the refspecs pushed (or, under
//! `dry_run`, the ones it would push).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use git2::{ErrorCode, Oid, RebaseOptions, Repository, ResetType, Signature};
use serde::Serialize;

use crate::core::procedure::next_tag;
use crate::error::Fault;
use crate::settings::Secret;

/// Who commits and tags: the procedure's bot unless the site says otherwise.
pub use crate::core::site::Identity;

/// A user name and a password or token for HTTPS remotes; the token never prints.
#[derive(Debug, Clone)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

/// What every step shares: where its clone lives, who commits, which day it is, whether to
/// push.
#[derive(Debug, Clone)]
pub struct Job {
    /// The step's own clone, kept under the driver's state directory: created when missing,
    /// fetched when present, reset to what the remotes hold on every run.
    pub workdir: PathBuf,
    pub identity: Identity,
    /// `kernelci-`: tags are `<prefix>YYYYMMDD.N`.
    pub tag_prefix: String,
    /// The day of the update, `YYYYMMDD` (given, never read from the clock).
    pub date: String,
    /// Do everything locally, push nothing, report the refspecs a real run would push.
    pub dry_run: bool,
    /// For HTTPS remotes that need them (pushes to GitHub).
    pub credentials: Option<Credentials>,
}

impl Job {
    /// A job with the bot identity, the `kernelci-` prefix, pushing for real.
    pub fn new(workdir: impl Into<PathBuf>, date: impl Into<String>) -> Job {
        Job {
            workdir: workdir.into(),
            identity: Identity::default(),
            tag_prefix: "kernelci-".into(),
            date: date.into(),
            dry_run: false,
            credentials: None,
        }
    }
}

/// kernelci-core: `kernelci.org` rebased on `main`, tagged and force-pushed when it changed.
#[derive(Debug, Clone)]
pub struct CoreStep {
    pub job: Job,
    /// kernelci-core (`origin`).
    pub url: String,
    /// `kernelci.org`: the branch rebased, then force-pushed.
    pub branch: String,
    /// `main`: what the branch is rebased on.
    pub base: String,
}

impl CoreStep {
    pub fn new(job: Job, url: impl Into<String>) -> CoreStep {
        CoreStep {
            job,
            url: url.into(),
            branch: "kernelci.org".into(),
            base: "main".into(),
        }
    }
}

/// KernelCI's fork of test-definitions: its branch rebased on `upstream/master`, tagged and
/// force-pushed to the fork's `kernelci.org` and `main` when something changed.
#[derive(Debug, Clone)]
pub struct TestDefinitionsStep {
    pub job: Job,
    /// KernelCI's fork (`origin`): fetched, tagged and pushed to.
    pub fork_url: String,
    /// Linaro's repository (`upstream`): only fetched.
    pub upstream_url: String,
    /// The fork's branch that carries KernelCI's commits (`kernelci.org`).
    pub branch: String,
    /// `master` of upstream.
    pub upstream_branch: String,
    /// The fork's branches that receive the result (`kernelci.org`, `main`).
    pub push_to: Vec<String>,
}

impl TestDefinitionsStep {
    pub fn new(
        job: Job,
        fork_url: impl Into<String>,
        upstream_url: impl Into<String>,
    ) -> TestDefinitionsStep {
        TestDefinitionsStep {
            job,
            fork_url: fork_url.into(),
            upstream_url: upstream_url.into(),
            branch: "kernelci.org".into(),
            upstream_branch: "master".into(),
            push_to: vec!["kernelci.org".into(), "main".into()],
        }
    }
}

/// The kernel pipe cleaner: a linux-stable branch, KernelCI's patches, a bot commit writing
/// the tag into a file named `kernelci.org`, tagged and force-pushed to KernelCI's fork.
#[derive(Debug, Clone)]
pub struct KernelStep {
    pub job: Job,
    /// linux-stable (`stable`): only fetched.
    pub stable_url: String,
    /// `linux-5.15.y`.
    pub stable_branch: String,
    /// KernelCI's linux fork (`fork`): tags fetched, the result pushed.
    pub fork_url: String,
    /// `kernelci.org`: the fork's branch that receives the pipe cleaner.
    pub fork_branch: String,
    /// `patches/linux/kernelci.org/`: every `*.patch` in it, applied in name order.
    pub patches: PathBuf,
    /// Make a new pipe cleaner even when the fork already has today's for the same inputs.
    pub force_new: bool,
}

impl KernelStep {
    pub fn new(
        job: Job,
        stable_url: impl Into<String>,
        stable_branch: impl Into<String>,
        fork_url: impl Into<String>,
        patches: impl Into<PathBuf>,
    ) -> KernelStep {
        KernelStep {
            job,
            stable_url: stable_url.into(),
            stable_branch: stable_branch.into(),
            fork_url: fork_url.into(),
            fork_branch: "kernelci.org".into(),
            patches: patches.into(),
            force_new: false,
        }
    }
}

/// What a step did about the remote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The refspecs were pushed.
    Pushed,
    /// `dry_run`: the refspecs are what a real run would push.
    DryRun,
    /// The remote already holds the result: "No changes, not pushing".
    NoChanges,
    /// The fork already holds today's pipe cleaner for the same inputs (a repeated run).
    AlreadyPushed,
}

impl Outcome {
    pub fn describe(self) -> &'static str {
        match self {
            Outcome::Pushed => "pushed",
            Outcome::DryRun => "dry run, not pushing",
            Outcome::NoChanges => "No changes, not pushing",
            Outcome::AlreadyPushed => "already pushed, not pushing",
        }
    }
}

/// A tag of the step's commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TagFacts {
    pub name: String,
    /// Made by this run (else found on the remote, pointing at the same commit).
    pub made: bool,
}

/// What the core and test-definitions steps did.
#[derive(Debug, Clone, Serialize)]
pub struct RebaseFacts {
    /// The remote pushed to (credentials in the URL are masked).
    pub repository: String,
    pub branch: String,
    /// `origin/main` or `upstream/master`, and the commit it was at.
    pub onto: String,
    pub onto_commit: String,
    /// The fork's branch before this run.
    pub previous: String,
    /// The result: the lead's `git_head`.
    pub head: String,
    /// Whether the branch had to be rebased (false: it was on top of `onto` already).
    pub rebased: bool,
    /// The tag of `head`: made, or found on the remote. `None` when nothing changed and
    /// `head` carries no tag of the prefix.
    pub tag: Option<TagFacts>,
    pub outcome: Outcome,
    /// What was pushed (or would be, under `dry_run`); empty when nothing changed.
    pub refspecs: Vec<String>,
}

/// What the kernel step did.
#[derive(Debug, Clone, Serialize)]
pub struct KernelFacts {
    pub repository: String,
    pub stable_branch: String,
    pub stable_commit: String,
    /// The patch files applied, in order (names only).
    pub patches: Vec<String>,
    /// The pipe cleaner: the bot's commit on top of stable + patches.
    pub commit: String,
    pub tag: TagFacts,
    pub outcome: Outcome,
    pub refspecs: Vec<String>,
}

/// Why a git step failed. URLs are masked: a token in a remote URL never appears.
#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("{what}: {reason}")]
    BadParameter { what: &'static str, reason: String },
    #[error("cannot reach {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: git2::Error,
    },
    #[error("{url} refused the credentials: {source}")]
    Refused {
        url: String,
        #[source]
        source: git2::Error,
    },
    #[error("{url} has no branch `{branch}`")]
    NoSuchBranch { url: String, branch: String },
    #[error("{url} shows no HEAD: an empty repository, or its HEAD names no branch")]
    NoHead { url: String },
    #[error("pushing to {url} failed ({refspecs}): {reason}")]
    PushFailed {
        url: String,
        refspecs: String,
        reason: String,
    },
    #[error(transparent)]
    Conflict(Box<RebaseConflict>),
    #[error(transparent)]
    PatchDoesNotApply(Box<PatchFailure>),
    #[error("{action} in {}: {source}", path.display())]
    Local {
        action: String,
        path: PathBuf,
        #[source]
        source: git2::Error,
    },
    #[error("{action} in {}: {source}", path.display())]
    Io {
        action: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Where a rebase stopped: the repository, the branch, the commit and the paths.
#[derive(Debug, thiserror::Error)]
#[error(
    "{url}: rebasing `{branch}` on `{onto}` ({onto_commit}) conflicts at commit {commit} \
     \"{summary}\" in {paths}; the rebase was abandoned, nothing was pushed"
)]
pub struct RebaseConflict {
    pub url: String,
    pub branch: String,
    pub onto: String,
    pub onto_commit: String,
    pub commit: String,
    pub summary: String,
    pub paths: String,
}

/// A patch `git am` could not apply, and what git said.
#[derive(Debug, thiserror::Error)]
#[error(
    "{url}: patch {patch} does not apply on `{branch}` ({commit}); `git am` was aborted, \
     nothing was pushed:\n{detail}"
)]
pub struct PatchFailure {
    pub url: String,
    pub branch: String,
    pub commit: String,
    pub patch: String,
    pub detail: String,
}

impl GitError {
    /// A remote out of reach, a failed push, a broken clone or a missing `git` are the
    /// environment's; a conflict, a patch that does not apply, a missing branch, refused
    /// credentials and bad parameters are the input's.
    pub fn fault(&self) -> Fault {
        match self {
            GitError::Unreachable { .. }
            | GitError::PushFailed { .. }
            | GitError::Local { .. }
            | GitError::Io { .. } => Fault::Environment,
            GitError::BadParameter { .. }
            | GitError::Refused { .. }
            | GitError::NoSuchBranch { .. }
            | GitError::NoHead { .. }
            | GitError::Conflict { .. }
            | GitError::PatchDoesNotApply { .. } => Fault::BadInput,
        }
    }
}

/// The commit a remote branch points to (`git ls-remote URL refs/heads/BRANCH`).
pub fn ls_remote(
    url: &str,
    branch: &str,
    credentials: Option<&Credentials>,
) -> Result<String, GitError> {
    let heads = list_remote(url, credentials)?;
    heads
        .get(&format!("refs/heads/{branch}"))
        .map(|oid| oid.to_string())
        .ok_or_else(|| GitError::NoSuchBranch {
            url: mask(url),
            branch: branch.into(),
        })
}

/// A working copy of `url`'s `branch` in `dir` (cloned when missing, fetched and reset
/// hard when present; with `submodules`, every submodule updated recursively): for the
/// steps that only read a repository (the `-config` checkouts, kernelci-project). Returns
/// the commit checked out.
pub fn checkout(
    url: &str,
    branch: &str,
    dir: &Path,
    submodules: bool,
    credentials: Option<&Credentials>,
) -> Result<String, GitError> {
    check_branch(branch)?;
    let clone = Workdir::open(dir)?;
    let heads = clone.fetch("origin", url, &[branch], false, credentials)?;
    let oid = *heads.get(branch).ok_or_else(|| GitError::NoSuchBranch {
        url: mask(url),
        branch: branch.into(),
    })?;
    clone.reset_branch(branch, oid)?;
    if submodules {
        net_git(
            Some(dir),
            credentials,
            &["submodule", "update", "--init", "--recursive", "--force"],
        )
        .map_err(|e| e.into_error(url))?;
    }
    Ok(oid.to_string())
}

/// The core step: see [`CoreStep`].
pub fn update_core(step: &CoreStep) -> Result<RebaseFacts, GitError> {
    rebase_step(&RebasePlan {
        job: &step.job,
        fork_url: &step.url,
        upstream_url: None,
        branch: &step.branch,
        onto: &step.base,
        push_to: std::slice::from_ref(&step.branch),
    })
}

/// The test-definitions step: see [`TestDefinitionsStep`].
pub fn update_test_definitions(step: &TestDefinitionsStep) -> Result<RebaseFacts, GitError> {
    rebase_step(&RebasePlan {
        job: &step.job,
        fork_url: &step.fork_url,
        upstream_url: Some(&step.upstream_url),
        branch: &step.branch,
        onto: &step.upstream_branch,
        push_to: &step.push_to,
    })
}

/// The kernel step: see [`KernelStep`]. A repeat on the same day finds the pipe cleaner the
/// fork already has (its tip a bot commit naming a today's tag of the fork, on top of the
/// same stable head and the same patched tree) and returns it without pushing.
pub fn update_kernel(step: &KernelStep) -> Result<KernelFacts, GitError> {
    let job = &step.job;
    check_job(job)?;
    check_branch(&step.stable_branch)?;
    check_branch(&step.fork_branch)?;
    let patches = patch_files(&step.patches)?;
    let clone = Workdir::open(&job.workdir)?;
    let creds = job.credentials.as_ref();

    let stable = clone.fetch(
        "stable",
        &step.stable_url,
        &[&step.stable_branch],
        false,
        creds,
    )?;
    let stable_oid = *stable
        .get(&step.stable_branch)
        .ok_or_else(|| GitError::NoSuchBranch {
            url: mask(&step.stable_url),
            branch: step.stable_branch.clone(),
        })?;
    let fork = clone.fetch("fork", &step.fork_url, &[&step.fork_branch], true, creds)?;
    let fork_tip = fork.get(&step.fork_branch).copied();

    clone.reset_detached(stable_oid)?;
    for patch in &patches {
        if let Err(detail) = clone.git_am(&job.identity, patch) {
            let _ = clone.git_am_abort(&job.identity);
            clone.reset_detached(stable_oid)?;
            return Err(GitError::PatchDoesNotApply(Box::new(PatchFailure {
                url: mask(&step.stable_url),
                branch: step.stable_branch.clone(),
                commit: short(stable_oid),
                patch: patch.display().to_string(),
                detail,
            })));
        }
    }
    // `git am` moved HEAD behind libgit2's back: look again.
    let clone = Workdir::open(&job.workdir)?;
    let patched = clone.head()?;
    let patch_names = patches
        .iter()
        .map(|p| {
            p.file_name()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let facts = |commit: Oid, tag: TagFacts, outcome, refspecs| KernelFacts {
        repository: mask(&step.fork_url),
        stable_branch: step.stable_branch.clone(),
        stable_commit: stable_oid.to_string(),
        patches: patch_names,
        commit: commit.to_string(),
        tag,
        outcome,
        refspecs,
    };

    if !step.force_new {
        if let Some((tip, tag)) = fork_tip
            .map(|tip| clone.pipe_cleaner_of(tip, stable_oid, patched, job))
            .transpose()?
            .flatten()
        {
            clone.reset_detached(tip)?;
            tracing::info!(tag, commit = %tip, "the fork already has today's pipe cleaner");
            let tag = TagFacts {
                name: tag,
                made: false,
            };
            return Ok(facts(tip, tag, Outcome::AlreadyPushed, vec![]));
        }
    }

    let tag = next_tag(
        &job.tag_prefix,
        &job.date,
        clone.tag_names()?.iter().map(String::as_str),
    );
    let commit = clone.commit_tag_file(patched, &tag, &job.identity)?;
    clone.reset_detached(commit)?;
    clone.annotated_tag(&tag, commit, &job.identity)?;
    let refspecs = vec![
        format!("+HEAD:refs/heads/{}", step.fork_branch),
        format!("refs/tags/{tag}:refs/tags/{tag}"),
    ];
    let outcome = clone.push_or_not("fork", &step.fork_url, &refspecs, job)?;
    let tag = TagFacts {
        name: tag,
        made: true,
    };
    Ok(facts(commit, tag, outcome, refspecs))
}

/// The core and test-definitions steps, one shape: rebase `branch` of the fork on `onto`
/// (of the fork itself, or of `upstream`), tag and force-push to `push_to` when any of them
/// lacks the result.
struct RebasePlan<'a> {
    job: &'a Job,
    fork_url: &'a str,
    upstream_url: Option<&'a str>,
    branch: &'a str,
    onto: &'a str,
    push_to: &'a [String],
}

fn rebase_step(plan: &RebasePlan) -> Result<RebaseFacts, GitError> {
    let job = plan.job;
    check_job(job)?;
    for b in [plan.branch, plan.onto]
        .into_iter()
        .chain(plan.push_to.iter().map(String::as_str))
    {
        check_branch(b)?;
    }
    let clone = Workdir::open(&job.workdir)?;
    let creds = job.credentials.as_ref();

    let mut wanted: Vec<&str> = vec![plan.branch];
    if plan.upstream_url.is_none() {
        wanted.push(plan.onto);
    }
    wanted.extend(plan.push_to.iter().map(String::as_str));
    wanted.sort_unstable();
    wanted.dedup();
    let fork = clone.fetch("origin", plan.fork_url, &wanted, true, creds)?;
    let (onto_remote, onto_heads, onto_url) = match plan.upstream_url {
        Some(url) => (
            "upstream",
            clone.fetch("upstream", url, &[plan.onto], false, creds)?,
            url,
        ),
        None => ("origin", fork.clone(), plan.fork_url),
    };
    let head_of = |heads: &BTreeMap<String, Oid>, url: &str, branch: &str| {
        heads
            .get(branch)
            .copied()
            .ok_or_else(|| GitError::NoSuchBranch {
                url: mask(url),
                branch: branch.into(),
            })
    };
    let previous = head_of(&fork, plan.fork_url, plan.branch)?;
    let onto = head_of(&onto_heads, onto_url, plan.onto)?;

    clone.reset_branch(plan.branch, previous)?;
    let (head, rebased) = clone.rebase(previous, onto, &job.identity, || RebaseNames {
        url: mask(plan.fork_url),
        branch: plan.branch.into(),
        onto: format!("{onto_remote}/{}", plan.onto),
    })?;
    if rebased {
        clone.reset_branch(plan.branch, head)?;
    }

    let stale: Vec<&String> = plan
        .push_to
        .iter()
        .filter(|b| fork.get(b.as_str()) != Some(&head))
        .collect();
    let mut facts = RebaseFacts {
        repository: mask(plan.fork_url),
        branch: plan.branch.into(),
        onto: format!("{onto_remote}/{}", plan.onto),
        onto_commit: onto.to_string(),
        previous: previous.to_string(),
        head: head.to_string(),
        rebased,
        tag: None,
        outcome: Outcome::NoChanges,
        refspecs: vec![],
    };
    if stale.is_empty() {
        facts.tag = clone
            .tags_at(&job.tag_prefix, head)?
            .pop()
            .map(|name| TagFacts { name, made: false });
        tracing::info!(repository = %facts.repository, "No changes, not pushing");
        return Ok(facts);
    }

    let today = format!("{}{}", job.tag_prefix, job.date);
    let found = clone
        .tags_at(&job.tag_prefix, head)?
        .into_iter()
        .rfind(|t| t.starts_with(&today));
    let tag = match found {
        Some(name) => TagFacts { name, made: false },
        None => {
            let name = next_tag(
                &job.tag_prefix,
                &job.date,
                clone.tag_names()?.iter().map(String::as_str),
            );
            clone.annotated_tag(&name, head, &job.identity)?;
            TagFacts { name, made: true }
        }
    };
    facts.refspecs = stale
        .iter()
        .map(|b| format!("+HEAD:refs/heads/{b}"))
        .collect();
    if tag.made {
        facts
            .refspecs
            .push(format!("refs/tags/{0}:refs/tags/{0}", tag.name));
    }
    facts.outcome = clone.push_or_not("origin", plan.fork_url, &facts.refspecs, job)?;
    facts.tag = Some(tag);
    Ok(facts)
}

/// What a conflict names.
struct RebaseNames {
    url: String,
    branch: String,
    onto: String,
}

/// A step's clone, and the operations the steps make of it.
struct Workdir {
    repo: Repository,
    dir: PathBuf,
}

impl Workdir {
    /// Opens the clone, or makes an empty one; anything a killed run left (a `git am` or a
    /// rebase under way) is cleared.
    fn open(dir: &Path) -> Result<Workdir, GitError> {
        // A clone a killed run left half made cannot be opened: it is only a cache of the
        // remotes, so it is made again.
        let reopened = match dir.join(".git").exists() {
            true => match Repository::open(dir) {
                Ok(repo) => Some(repo),
                Err(e) => {
                    tracing::warn!("{}: {e}; cloning afresh", dir.display());
                    std::fs::remove_dir_all(dir).map_err(|source| GitError::Io {
                        action: "removing a broken clone".into(),
                        path: dir.to_owned(),
                        source,
                    })?;
                    None
                }
            },
            false => None,
        };
        let repo = if let Some(repo) = reopened {
            repo
        } else {
            std::fs::create_dir_all(dir).map_err(|source| GitError::Io {
                action: "creating the clone's directory".into(),
                path: dir.to_owned(),
                source,
            })?;
            Repository::init(dir).map_err(local("creating the clone", dir))?
        };
        if repo.state() != git2::RepositoryState::Clean {
            repo.cleanup_state()
                .map_err(local("clearing an unfinished operation", dir))?;
        }
        Ok(Workdir {
            repo,
            dir: dir.to_owned(),
        })
    }

    fn local<T>(&self, action: &str, r: Result<T, git2::Error>) -> Result<T, GitError> {
        r.map_err(local(action, &self.dir))
    }

    fn head(&self) -> Result<Oid, GitError> {
        let head = self.repo.head().and_then(|h| h.peel_to_commit());
        Ok(self.local("reading HEAD", head)?.id())
    }

    /// Fetches `branches` of `url` into `refs/remotes/<name>/`, and with `tags` every tag,
    /// pruning what the remote no longer has: a branch it lacks loses its remote-tracking
    /// ref, a local tag it lacks (a tag of a run killed before its push, or of a dry run) is
    /// forgotten, so tag numbers count what the remote holds. Returns the branches the remote
    /// has, with their commits.
    fn fetch(
        &self,
        name: &str,
        url: &str,
        branches: &[&str],
        tags: bool,
        creds: Option<&Credentials>,
    ) -> Result<BTreeMap<String, Oid>, GitError> {
        let set_url = match self.repo.find_remote(name) {
            Ok(r) if r.url() == Some(url) => Ok(()),
            Ok(_) => self.repo.remote_set_url(name, url),
            Err(_) => self.repo.remote(name, url).map(drop),
        };
        self.local(&format!("setting remote `{name}`"), set_url)?;
        // `git fetch` refuses a branch the remote lacks: ask first (cheap), fetch only what
        // is there, and forget the tracking refs of what is gone.
        let advertised = match list_remote(url, creds) {
            Ok(refs) => refs,
            Err(GitError::NoHead { .. }) => BTreeMap::new(),
            Err(e) => return Err(e),
        };
        let mut refspecs = Vec::new();
        for b in branches {
            let tracking = format!("refs/remotes/{name}/{b}");
            if advertised.contains_key(&format!("refs/heads/{b}")) {
                refspecs.push(format!("+refs/heads/{b}:{tracking}"));
            } else if let Ok(mut r) = self.repo.find_reference(&tracking) {
                self.local("forgetting a branch the remote lost", r.delete())?;
            }
        }
        if tags {
            refspecs.push("+refs/tags/*:refs/tags/*".into());
        }
        if !refspecs.is_empty() {
            let mut args = vec!["fetch", "--quiet", "--prune", "--no-tags", name];
            args.extend(refspecs.iter().map(String::as_str));
            net_git(Some(&self.dir), creds, &args).map_err(|e| e.into_error(url))?;
        }
        Ok(branches
            .iter()
            .filter_map(|b| {
                let oid = self
                    .repo
                    .refname_to_id(&format!("refs/remotes/{name}/{b}"))
                    .ok()?;
                Some(((*b).to_owned(), oid))
            })
            .collect())
    }

    /// Points `refs/heads/<branch>` at `oid`, checks it out, and makes the working tree and
    /// the index match it (untracked files removed).
    fn reset_branch(&self, branch: &str, oid: Oid) -> Result<(), GitError> {
        let refname = format!("refs/heads/{branch}");
        let set = self
            .repo
            .reference(&refname, oid, true, "kci-build: reset")
            .and_then(|_| self.repo.set_head(&refname));
        self.local("checking out a branch", set)?;
        self.hard_reset(oid)
    }

    /// Detaches HEAD at `oid`, working tree and index matching it.
    fn reset_detached(&self, oid: Oid) -> Result<(), GitError> {
        let set = self.repo.set_head_detached(oid);
        self.local("detaching HEAD", set)?;
        self.hard_reset(oid)
    }

    fn hard_reset(&self, oid: Oid) -> Result<(), GitError> {
        let reset = self.repo.find_object(oid, None).and_then(|obj| {
            let mut co = git2::build::CheckoutBuilder::new();
            co.force().remove_untracked(true);
            self.repo.reset(&obj, ResetType::Hard, Some(&mut co))
        });
        self.local("resetting the working tree", reset)
    }

    /// Rebases `branch` on `onto` in memory, the bot committing; returns the result and
    /// whether anything was rebased. A branch already on top of `onto` is left as it is, so
    /// an unchanged repository gives the same commit every run. A conflict abandons the
    /// rebase (nothing was written) and names the commit.
    fn rebase(
        &self,
        branch: Oid,
        onto: Oid,
        identity: &Identity,
        names: impl Fn() -> RebaseNames,
    ) -> Result<(Oid, bool), GitError> {
        let on_top = branch == onto
            || self.local(
                "comparing commits",
                self.repo.graph_descendant_of(branch, onto),
            )?;
        if on_top {
            return Ok((branch, false));
        }
        let sig = self.local("signing", Signature::now(&identity.name, &identity.email))?;
        let from = self.local("rebasing", self.repo.find_annotated_commit(branch))?;
        let upstream = self.local("rebasing", self.repo.find_annotated_commit(onto))?;
        let mut opts = RebaseOptions::new();
        opts.inmemory(true);
        let mut rebase = self.local(
            "starting a rebase",
            self.repo
                .rebase(Some(&from), Some(&upstream), None, Some(&mut opts)),
        )?;
        let mut last = onto;
        while let Some(op) = rebase.next() {
            let op = match op {
                Ok(op) => op,
                Err(e) => {
                    let _ = rebase.abort();
                    return Err(local("rebasing", &self.dir)(e));
                }
            };
            let commit = op.id();
            let conflicts = rebase
                .inmemory_index()
                .and_then(|index| conflict_paths(&index));
            let conflicts = match conflicts {
                Ok(c) => c,
                Err(e) => {
                    let _ = rebase.abort();
                    return Err(local("rebasing", &self.dir)(e));
                }
            };
            if !conflicts.is_empty() {
                let _ = rebase.abort();
                let names = names();
                let summary = self
                    .repo
                    .find_commit(commit)
                    .ok()
                    .and_then(|c| c.summary().map(str::to_owned))
                    .unwrap_or_default();
                return Err(GitError::Conflict(Box::new(RebaseConflict {
                    url: names.url,
                    branch: names.branch,
                    onto: names.onto,
                    onto_commit: short(onto),
                    commit: short(commit),
                    summary,
                    paths: conflicts.join(", "),
                })));
            }
            match rebase.commit(None, &sig, None) {
                Ok(oid) => last = oid,
                // Already in `onto`: the commit is dropped, as `git rebase` does.
                Err(e) if e.code() == ErrorCode::Applied => {}
                Err(e) => {
                    let _ = rebase.abort();
                    return Err(local("committing a rebased commit", &self.dir)(e));
                }
            }
        }
        let finished = rebase.finish(Some(&sig));
        self.local("finishing the rebase", finished)?;
        Ok((last, true))
    }

    /// Every local tag name.
    fn tag_names(&self) -> Result<Vec<String>, GitError> {
        let names = self.local("listing tags", self.repo.tag_names(None))?;
        Ok(names.iter().flatten().map(str::to_owned).collect())
    }

    /// The tags of `prefix` that point (peeled) at `commit`, oldest first.
    fn tags_at(&self, prefix: &str, commit: Oid) -> Result<Vec<String>, GitError> {
        let mut found: Vec<String> = self
            .tag_names()?
            .into_iter()
            .filter(|t| t.starts_with(prefix))
            .filter(|t| self.tag_target(t) == Some(commit))
            .collect();
        found.sort_by_key(|t| tag_order(prefix, t));
        Ok(found)
    }

    /// The commit `refs/tags/<name>` points at, when there is one.
    fn tag_target(&self, name: &str) -> Option<Oid> {
        let r = self
            .repo
            .find_reference(&format!("refs/tags/{name}"))
            .ok()?;
        r.peel_to_commit().ok().map(|c| c.id())
    }

    /// An annotated tag `name` of `commit`, its message the name, by the bot.
    fn annotated_tag(&self, name: &str, commit: Oid, identity: &Identity) -> Result<(), GitError> {
        let made = Signature::now(&identity.name, &identity.email).and_then(|sig| {
            let obj = self.repo.find_object(commit, None)?;
            self.repo.tag(name, &obj, &sig, name, false)
        });
        self.local(&format!("tagging {name}"), made).map(drop)
    }

    /// The bot's commit on top of `parent` writing the file `kernelci.org` holding `tag`.
    fn commit_tag_file(
        &self,
        parent: Oid,
        tag: &str,
        identity: &Identity,
    ) -> Result<Oid, GitError> {
        let made = (|| {
            let sig = Signature::now(&identity.name, &identity.email)?;
            let parent = self.repo.find_commit(parent)?;
            let blob = self.repo.blob(format!("{tag}\n").as_bytes())?;
            let mut tb = self.repo.treebuilder(Some(&parent.tree()?))?;
            tb.insert(TAG_FILE, blob, 0o100644)?;
            let tree = self.repo.find_tree(tb.write()?)?;
            let message = format!("{TAG_FILE}: {tag}\n");
            self.repo
                .commit(None, &sig, &sig, &message, &tree, &[&parent])
        })();
        self.local("committing the kernelci.org file", made)
    }

    /// The fork's `tip` as today's pipe cleaner for these inputs, with its tag: a commit
    /// by the bot with one parent, that parent descending from `stable` with the tree of
    /// `patched` (stable + patches), its `kernelci.org` file naming a `<prefix><date>.N` tag
    /// the fork has on `tip`.
    fn pipe_cleaner_of(
        &self,
        tip: Oid,
        stable: Oid,
        patched: Oid,
        job: &Job,
    ) -> Result<Option<(Oid, String)>, GitError> {
        let Ok(commit) = self.repo.find_commit(tip) else {
            return Ok(None);
        };
        let by_bot = |s: Signature| {
            s.name() == Some(&job.identity.name) && s.email() == Some(&job.identity.email)
        };
        if !by_bot(commit.author()) || !by_bot(commit.committer()) || commit.parent_count() != 1 {
            return Ok(None);
        }
        let parent = self.local("reading a commit", commit.parent(0))?;
        let patched = self.local("reading a commit", self.repo.find_commit(patched))?;
        if parent.tree_id() != patched.tree_id() {
            return Ok(None);
        }
        let descends = parent.id() == stable
            || self.local(
                "comparing commits",
                self.repo.graph_descendant_of(parent.id(), stable),
            )?;
        if !descends {
            return Ok(None);
        }
        let tree = self.local("reading a tree", commit.tree())?;
        let Some(entry) = tree.get_name(TAG_FILE) else {
            return Ok(None);
        };
        let Ok(blob) = self.repo.find_blob(entry.id()) else {
            return Ok(None);
        };
        let tag = String::from_utf8_lossy(blob.content()).trim().to_owned();
        let today = format!("{}{}.", job.tag_prefix, job.date);
        if !tag.starts_with(&today) || self.tag_target(&tag) != Some(tip) {
            return Ok(None);
        }
        Ok(Some((tip, tag)))
    }

    /// Pushes `refspecs` to the remote `name` unless the job is a dry run.
    fn push_or_not(
        &self,
        name: &str,
        url: &str,
        refspecs: &[String],
        job: &Job,
    ) -> Result<Outcome, GitError> {
        if job.dry_run {
            tracing::info!(url = %mask(url), ?refspecs, "dry run: not pushing");
            return Ok(Outcome::DryRun);
        }
        let mut args = vec!["push", "--porcelain", name];
        args.extend(refspecs.iter().map(String::as_str));
        match net_git(Some(&self.dir), job.credentials.as_ref(), &args) {
            Ok(_) => {
                tracing::info!(url = %mask(url), ?refspecs, "pushed");
                Ok(Outcome::Pushed)
            }
            Err(e @ NetError::Refused(_)) => Err(e.into_error(url)),
            Err(NetError::Failed(reason)) => Err(GitError::PushFailed {
                url: mask(url),
                refspecs: refspecs.join(" "),
                reason,
            }),
        }
    }

    /// `git am` of one patch, the bot committing; the error is what git said.
    fn git_am(&self, identity: &Identity, patch: &Path) -> Result<(), String> {
        let out = self
            .git_cli(identity)
            .args(["am", "--quiet"])
            .arg(patch)
            .output()
            .map_err(|e| format!("running git: {e}"))?;
        if out.status.success() {
            return Ok(());
        }
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = said
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("hint:"))
            .collect();
        Err(lines[lines.len().saturating_sub(8)..].join("\n"))
    }

    fn git_am_abort(&self, identity: &Identity) -> std::io::Result<()> {
        self.git_cli(identity)
            .args(["am", "--abort"])
            .output()
            .map(drop)
    }

    /// The `git` CLI in the clone: the bot's identity, no system or user configuration, no
    /// hooks, messages in English.
    fn git_cli(&self, identity: &Identity) -> Command {
        let mut cmd = Command::new("git");
        cmd.current_dir(&self.dir)
            .args(["-c", "core.hooksPath=/dev/null", "-c", "am.threeWay=false"])
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .env("GIT_CONFIG_GLOBAL", "/dev/null")
            .env("GIT_COMMITTER_NAME", &identity.name)
            .env("GIT_COMMITTER_EMAIL", &identity.email)
            .env("GIT_AUTHOR_NAME", &identity.name)
            .env("GIT_AUTHOR_EMAIL", &identity.email)
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("LC_ALL", "C")
            .env_remove("GIT_DIR")
            .env_remove("GIT_WORK_TREE")
            .env_remove("GIT_INDEX_FILE")
            .env_remove("GIT_COMMITTER_DATE")
            .env_remove("GIT_AUTHOR_DATE");
        crate::settings::scrub_secrets(&mut cmd);
        cmd
    }
}

/// The file of the pipe cleaner's bot commit.
const TAG_FILE: &str = "kernelci.org";

/// What `url` advertises: ref name → commit (tags as their tag objects); a remote without
/// any ref is [`GitError::NoHead`].
fn list_remote(url: &str, creds: Option<&Credentials>) -> Result<BTreeMap<String, Oid>, GitError> {
    let out = net_git(None, creds, &["ls-remote", url]).map_err(|e| e.into_error(url))?;
    let heads: BTreeMap<String, Oid> = out
        .lines()
        .filter_map(|l| {
            let (oid, name) = l.split_once('\t')?;
            Some((name.to_owned(), Oid::from_str(oid).ok()?))
        })
        .collect();
    if heads.is_empty() {
        return Err(GitError::NoHead { url: mask(url) });
    }
    Ok(heads)
}

/// Why a network `git` failed: the remote refused the credentials, or anything else (what
/// git said).
#[derive(Debug)]
enum NetError {
    Refused(String),
    Failed(String),
}

impl NetError {
    fn into_error(self, url: &str) -> GitError {
        match self {
            NetError::Refused(m) => GitError::Refused {
                url: mask(url),
                source: git2::Error::from_str(&m),
            },
            NetError::Failed(m) => GitError::Unreachable {
                url: mask(url),
                source: git2::Error::from_str(&m),
            },
        }
    }
}

/// The `git` CLI for what crosses the network (fetch, push, ls-remote, submodules), so
/// that ssh and https remotes work with the operator's own git set-up (ssh keys and agent,
/// credential helpers, `insteadOf`); libgit2 here is built without either transport. Never
/// prompts. With `creds`, git asks a helper script for them, which reads the secret from
/// its environment: it is in no command line. Returns stdout.
fn net_git(
    dir: Option<&Path>,
    creds: Option<&Credentials>,
    args: &[&str],
) -> Result<String, NetError> {
    let mut cmd = Command::new("git");
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    cmd.args(["-c", "core.hooksPath=/dev/null"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE")
        .env_remove("GIT_INDEX_FILE");
    let askpass = match creds {
        Some(c) => {
            let script = tempfile::Builder::new()
                .prefix("kci-askpass-")
                .tempfile()
                .map_err(|e| NetError::Failed(format!("creating the askpass helper: {e}")))?;
            std::fs::write(
                script.path(),
                "#!/bin/sh\ncase \"$1\" in\n  Username*) printf '%s\\n' \"$KCI_GIT_USERNAME\" ;;\n  *) printf '%s\\n' \"$KCI_GIT_PASSWORD\" ;;\nesac\n",
            )
            .and_then(|()| {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(script.path(), std::fs::Permissions::from_mode(0o700))
            })
            .map_err(|e| NetError::Failed(format!("writing the askpass helper: {e}")))?;
            cmd.env("GIT_ASKPASS", script.path())
                .env("KCI_GIT_USERNAME", &c.username)
                .env("KCI_GIT_PASSWORD", c.password.expose());
            Some(script.into_temp_path())
        }
        None => None,
    };
    let out = cmd
        .output()
        .map_err(|e| NetError::Failed(format!("running git: {e}")))?;
    drop(askpass);
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    let said = said.trim();
    let refused = [
        "Authentication failed",
        "Permission denied",
        "could not read Username",
        "403",
    ]
    .iter()
    .any(|m| said.contains(m));
    // `push --porcelain` puts the per-ref verdicts on stdout.
    let rejected: Vec<&str> = std::str::from_utf8(&out.stdout)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with('!'))
        .collect();
    let mut msg = said.lines().last().unwrap_or("git failed").to_owned();
    if !rejected.is_empty() {
        msg = format!("rejected: {}", rejected.join("; "));
    }
    Err(if refused {
        NetError::Refused(msg)
    } else {
        NetError::Failed(msg)
    })
}

fn local<'a>(action: &'a str, path: &'a Path) -> impl FnOnce(git2::Error) -> GitError + 'a {
    move |source| GitError::Local {
        action: action.into(),
        path: path.to_owned(),
        source,
    }
}

/// The paths of the index's conflicts.
fn conflict_paths(index: &git2::Index) -> Result<Vec<String>, git2::Error> {
    if !index.has_conflicts() {
        return Ok(vec![]);
    }
    let mut paths = vec![];
    for c in index.conflicts()? {
        let c = c?;
        if let Some(e) = c.our.or(c.their).or(c.ancestor) {
            paths.push(String::from_utf8_lossy(&e.path).into_owned());
        }
    }
    paths.sort();
    paths.dedup();
    Ok(paths)
}

/// Every `*.patch` file of `dir`, in name order.
fn patch_files(dir: &Path) -> Result<Vec<PathBuf>, GitError> {
    let entries = std::fs::read_dir(dir).map_err(|source| GitError::Io {
        action: "reading the patch directory".into(),
        path: dir.to_owned(),
        source,
    })?;
    let mut patches = vec![];
    for entry in entries {
        let path = entry
            .map_err(|source| GitError::Io {
                action: "reading the patch directory".into(),
                path: dir.to_owned(),
                source,
            })?
            .path();
        if path.is_file() && path.extension().is_some_and(|e| e == "patch") {
            patches.push(path);
        }
    }
    patches.sort();
    Ok(patches)
}

fn check_job(job: &Job) -> Result<(), GitError> {
    if job.date.len() != 8 || !job.date.bytes().all(|b| b.is_ascii_digit()) {
        return Err(GitError::BadParameter {
            what: "the date",
            reason: format!("`{}` is not YYYYMMDD", job.date),
        });
    }
    let sample = format!("refs/tags/{}{}.0", job.tag_prefix, job.date);
    if !git2::Reference::is_valid_name(&sample) {
        return Err(GitError::BadParameter {
            what: "the tag prefix",
            reason: format!("`{sample}` is not a valid tag"),
        });
    }
    if job.identity.name.trim().is_empty() || !job.identity.email.contains('@') {
        return Err(GitError::BadParameter {
            what: "the bot identity",
            reason: format!("{:?} <{}>", job.identity.name, job.identity.email),
        });
    }
    Ok(())
}

fn check_branch(branch: &str) -> Result<(), GitError> {
    if git2::Reference::is_valid_name(&format!("refs/heads/{branch}")) {
        Ok(())
    } else {
        Err(GitError::BadParameter {
            what: "a branch name",
            reason: format!("`{branch}` is not a valid branch"),
        })
    }
}

/// `<prefix>YYYYMMDD.N` sorts by day then N (`.10` after `.9`); other names by text.
fn tag_order(prefix: &str, tag: &str) -> (String, u64, String) {
    let rest = tag.strip_prefix(prefix).unwrap_or(tag);
    match rest.split_once('.') {
        Some((day, n)) if n.bytes().all(|b| b.is_ascii_digit()) && !n.is_empty() => {
            (day.to_owned(), n.parse().unwrap_or(u64::MAX), String::new())
        }
        _ => (rest.to_owned(), 0, tag.to_owned()),
    }
}

fn short(oid: Oid) -> String {
    oid.to_string()[..12].to_owned()
}

/// `url` with any user information masked: `https://***@github.com/…`.
pub fn mask(url: &str) -> String {
    if let Some((scheme, rest)) = url.split_once("://") {
        let authority_end = rest.find('/').unwrap_or(rest.len());
        if let Some(at) = rest[..authority_end].rfind('@') {
            return format!("{scheme}://***@{}", &rest[at + 1..]);
        }
    }
    url.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_sort_by_day_then_number() {
        let mut tags = vec![
            "kernelci-20240101.10",
            "kernelci-20240101.9",
            "kernelci-20231231.3",
        ];
        tags.sort_by_key(|t| tag_order("kernelci-", t));
        assert_eq!(
            tags,
            [
                "kernelci-20231231.3",
                "kernelci-20240101.9",
                "kernelci-20240101.10"
            ]
        );
    }

    #[test]
    fn urls_never_show_credentials() {
        assert_eq!(
            mask("https://bot:ghp_secret@github.com/kernelci/linux.git"),
            "https://***@github.com/kernelci/linux.git"
        );
        assert_eq!(mask("/srv/git/linux.git"), "/srv/git/linux.git");
        assert_eq!(mask("https://github.com/a@b/c"), "https://github.com/a@b/c");
    }

    #[test]
    fn bad_dates_prefixes_and_branches_are_bad_input() {
        let mut job = Job::new("/nonexistent", "2024-01-01");
        let err = check_job(&job).unwrap_err();
        assert_eq!(err.fault(), Fault::BadInput);
        assert!(err.to_string().contains("YYYYMMDD"), "{err}");
        job.date = "20240101".into();
        check_job(&job).unwrap();
        job.tag_prefix = "kernel ci..".into();
        assert_eq!(check_job(&job).unwrap_err().fault(), Fault::BadInput);
        assert!(check_branch("linux-5.15.y").is_ok());
        assert!(check_branch("bad..branch").is_err());
    }
}
