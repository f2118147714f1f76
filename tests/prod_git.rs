//! `prod::git`, the Monday update's git steps, against real repositories: bare repositories
//! stand in for GitHub and linux-stable, seeded through the `git` CLI; every test asserts on
//! the remotes' refs afterwards.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[path = "common/git.rs"]
mod gitcli;

use gitcli::git;
use kci_build::error::Fault;
use kci_build::prod::git::{
    self, CoreStep, GitError, Job, KernelStep, Outcome, TagFacts, TestDefinitionsStep,
};

const DAY: &str = "20240108";
const BOT: &str = "kernelci.org bot <bot@kernelci.org>";

/// A scratch directory of remotes, developers' checkouts and the steps' state.
struct Site {
    dir: tempfile::TempDir,
}

impl Site {
    fn new() -> Site {
        Site {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// An empty bare repository: a remote.
    fn bare(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        git(
            self.dir.path(),
            &["init", "-q", "--bare", "-b", "main", path.to_str().unwrap()],
        );
        path
    }

    /// A developer's checkout whose `origin` is `remote`, on branch `branch` (unborn).
    fn checkout(&self, name: &str, remote: &Path, branch: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::create_dir_all(&path).unwrap();
        git(&path, &["init", "-q", "-b", branch]);
        git(
            &path,
            &["remote", "add", "origin", remote.to_str().unwrap()],
        );
        path
    }

    fn job(&self, state: &str) -> Job {
        Job::new(self.path(state), DAY)
    }
}

/// Writes `file` in `dir` and commits everything with `message`.
fn commit(dir: &Path, file: &str, content: &str, message: &str) -> String {
    let path = dir.join(file);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, content).unwrap();
    git(dir, &["add", "-A"]);
    git(dir, &["commit", "-qm", message]);
    git(dir, &["rev-parse", "HEAD"])
}

/// Every ref of a bare repository: name → object (an annotated tag as its tag object).
fn refs(bare: &Path) -> BTreeMap<String, String> {
    git(bare, &["for-each-ref", "--format=%(refname) %(objectname)"])
        .lines()
        .map(|l| {
            let (name, oid) = l.split_once(' ').unwrap();
            (name.to_owned(), oid.to_owned())
        })
        .collect()
}

/// `rev` resolved in a bare repository.
fn rev(bare: &Path, rev: &str) -> String {
    git(bare, &["rev-parse", rev])
}

/// The tags of a bare repository.
fn tags(bare: &Path) -> Vec<String> {
    refs(bare)
        .keys()
        .filter_map(|r| r.strip_prefix("refs/tags/"))
        .map(str::to_owned)
        .collect()
}

/// Asserts `tag` is an annotated tag of `commit` in `bare`, made by the bot.
#[track_caller]
fn assert_annotated(bare: &Path, tag: &str, commit: &str) {
    assert_eq!(git(bare, &["cat-file", "-t", tag]), "tag", "{tag}");
    assert_eq!(rev(bare, &format!("{tag}^{{commit}}")), commit, "{tag}");
    let tagger = git(
        bare,
        &[
            "for-each-ref",
            "--format=%(taggername) %(taggeremail)",
            &format!("refs/tags/{tag}"),
        ],
    );
    assert_eq!(tagger, BOT);
}

/// The working copy of a step: nothing modified, nothing untracked, no operation under way.
#[track_caller]
fn assert_clean(workdir: &Path) {
    assert_eq!(git(workdir, &["status", "--porcelain", "--ignored"]), "");
    for dir in ["rebase-merge", "rebase-apply"] {
        assert!(
            !workdir.join(".git").join(dir).exists(),
            "{dir} left behind"
        );
    }
}

fn made(name: &str) -> Option<TagFacts> {
    Some(TagFacts {
        name: name.into(),
        made: true,
    })
}

fn found(name: &str) -> Option<TagFacts> {
    Some(TagFacts {
        name: name.into(),
        made: false,
    })
}

/// kernelci-core: `main` has moved past where `kernelci.org` (two commits of its own)
/// branched. Returns the remote and the developer's checkout (on `main`).
fn core_remote(site: &Site) -> (PathBuf, PathBuf) {
    let core = site.bare("kernelci-core.git");
    let dev = site.checkout("core-dev", &core, "main");
    commit(&dev, "README", "kernelci-core\n", "initial");
    git(&dev, &["checkout", "-qb", "kernelci.org"]);
    commit(&dev, "production.yaml", "a: 1\n", "production: a");
    commit(&dev, "production.yaml", "a: 1\nb: 2\n", "production: b");
    git(&dev, &["checkout", "-q", "main"]);
    commit(&dev, "main.py", "print(1)\n", "main moves on");
    git(&dev, &["push", "-q", "origin", "main", "kernelci.org"]);
    (core, dev)
}

#[test]
fn core_rebases_tags_force_pushes_then_has_no_changes() {
    let site = Site::new();
    let (core, _dev) = core_remote(&site);
    let main_before = rev(&core, "main");
    let step = CoreStep::new(site.job("state/core"), core.to_str().unwrap());

    let facts = git::update_core(&step).unwrap();
    assert_eq!(facts.outcome, Outcome::Pushed);
    assert!(facts.rebased);
    assert_eq!(facts.onto, "origin/main");
    assert_eq!(facts.onto_commit, main_before);
    assert_eq!(facts.tag, made("kernelci-20240108.0"));
    assert_eq!(
        facts.refspecs,
        [
            "+HEAD:refs/heads/kernelci.org",
            "refs/tags/kernelci-20240108.0:refs/tags/kernelci-20240108.0"
        ]
    );
    // The remote: kernelci.org is the two commits on top of main, committed by the bot,
    // authored by their author; main untouched; the annotated tag on the head.
    assert_eq!(rev(&core, "kernelci.org"), facts.head);
    assert_eq!(rev(&core, "kernelci.org~2"), main_before);
    assert_eq!(rev(&core, "main"), main_before);
    assert_eq!(
        git(
            &core,
            &["log", "--format=%s|%an|%cn <%ce>", "main..kernelci.org"]
        ),
        format!("production: b|Dev|{BOT}\nproduction: a|Dev|{BOT}")
    );
    assert_annotated(&core, "kernelci-20240108.0", &facts.head);
    assert_clean(&site.path("state/core"));
    let after_first = refs(&core);

    // Run again: nothing to rebase, nothing to push, the tag found.
    let again = git::update_core(&step).unwrap();
    assert_eq!(again.outcome, Outcome::NoChanges);
    assert_eq!(again.outcome.describe(), "No changes, not pushing");
    assert!(!again.rebased);
    assert_eq!(again.head, facts.head);
    assert_eq!(again.tag, found("kernelci-20240108.0"));
    assert!(again.refspecs.is_empty());
    assert_eq!(refs(&core), after_first);
}

#[test]
fn tags_count_within_one_day_and_a_dry_runs_tag_is_forgotten() {
    let site = Site::new();
    let (core, dev) = core_remote(&site);
    let step = CoreStep::new(site.job("state/core"), core.to_str().unwrap());
    assert_eq!(
        git::update_core(&step).unwrap().tag,
        made("kernelci-20240108.0")
    );

    commit(&dev, "main.py", "print(2)\n", "main moves again");
    git(&dev, &["push", "-q", "origin", "main"]);
    let second = git::update_core(&step).unwrap();
    assert_eq!(second.outcome, Outcome::Pushed);
    assert_eq!(second.tag, made("kernelci-20240108.1"));
    assert_eq!(tags(&core), ["kernelci-20240108.0", "kernelci-20240108.1"]);
    assert_annotated(&core, "kernelci-20240108.1", &second.head);
    assert_eq!(rev(&core, "kernelci.org~2"), rev(&core, "main"));

    // A dry run tags locally only; the next real run (as after a run killed before its
    // push) counts the remote's tags, not that one.
    commit(&dev, "main.py", "print(3)\n", "and again");
    git(&dev, &["push", "-q", "origin", "main"]);
    let before = refs(&core);
    let mut dry = step.clone();
    dry.job.dry_run = true;
    let facts = git::update_core(&dry).unwrap();
    assert_eq!(facts.outcome, Outcome::DryRun);
    assert_eq!(facts.tag, made("kernelci-20240108.2"));
    assert_eq!(
        facts.refspecs,
        [
            "+HEAD:refs/heads/kernelci.org",
            "refs/tags/kernelci-20240108.2:refs/tags/kernelci-20240108.2"
        ]
    );
    assert_eq!(refs(&core), before, "a dry run pushed");
    let real = git::update_core(&step).unwrap();
    assert_eq!(real.tag, made("kernelci-20240108.2"));
    assert_eq!(tags(&core).len(), 3);

    // A lost state directory changes nothing: a fresh clone finds the same tag.
    let fresh = CoreStep::new(site.job("state/core-fresh"), core.to_str().unwrap());
    let facts = git::update_core(&fresh).unwrap();
    assert_eq!(facts.outcome, Outcome::NoChanges);
    assert_eq!(facts.head, real.head);
    assert_eq!(facts.tag, found("kernelci-20240108.2"));

    // Another day starts at .0.
    dev_push_main(&dev, "print(4)\n");
    let mut tomorrow = step.clone();
    tomorrow.job.date = "20240109".into();
    assert_eq!(
        git::update_core(&tomorrow).unwrap().tag,
        made("kernelci-20240109.0")
    );
}

fn dev_push_main(dev: &Path, content: &str) {
    commit(dev, "main.py", content, "main moves");
    git(dev, &["push", "-q", "origin", "main"]);
}

#[test]
fn test_definitions_rebase_onto_an_upstream_that_moved() {
    let site = Site::new();
    let upstream = site.bare("test-definitions.git");
    let fork = site.bare("kernelci-test-definitions.git");
    let dev = site.checkout("td-dev", &upstream, "master");
    commit(&dev, "automated/run.sh", "echo 1\n", "upstream 1");
    git(&dev, &["push", "-q", "origin", "master"]);
    git(&dev, &["checkout", "-qb", "kernelci.org"]);
    commit(
        &dev,
        "automated/kernelci.sh",
        "echo kci\n",
        "kernelci: our test",
    );
    let fork_url = fork.to_str().unwrap();
    git(
        &dev,
        &["push", "-q", fork_url, "kernelci.org", "kernelci.org:main"],
    );
    git(&dev, &["checkout", "-q", "master"]);
    commit(&dev, "automated/run.sh", "echo 2\n", "upstream 2");
    git(&dev, &["tag", "-a", "2024.01", "-m", "upstream release"]);
    git(&dev, &["push", "-q", "origin", "master", "2024.01"]);
    let upstream_before = refs(&upstream);

    let step = TestDefinitionsStep::new(site.job("state/td"), fork_url, upstream.to_str().unwrap());
    let facts = git::update_test_definitions(&step).unwrap();
    assert_eq!(facts.outcome, Outcome::Pushed);
    assert_eq!(facts.onto, "upstream/master");
    assert_eq!(facts.tag, made("kernelci-20240108.0"));
    assert_eq!(
        facts.refspecs,
        [
            "+HEAD:refs/heads/kernelci.org",
            "+HEAD:refs/heads/main",
            "refs/tags/kernelci-20240108.0:refs/tags/kernelci-20240108.0"
        ]
    );
    assert_eq!(rev(&fork, "kernelci.org"), facts.head);
    assert_eq!(rev(&fork, "main"), facts.head);
    assert_eq!(rev(&fork, "kernelci.org~1"), rev(&upstream, "master"));
    assert_eq!(
        git(
            &fork,
            &["log", "-1", "--format=%s|%an|%cn <%ce>", "kernelci.org"]
        ),
        format!("kernelci: our test|Dev|{BOT}")
    );
    assert_annotated(&fork, "kernelci-20240108.0", &facts.head);
    assert_eq!(refs(&upstream), upstream_before, "upstream was written to");
    // Upstream's tags were neither fetched into the clone (where tags are counted) nor pushed.
    assert_eq!(tags(&fork), ["kernelci-20240108.0"]);
    assert_eq!(git(&site.path("state/td"), &["tag"]), "kernelci-20240108.0");

    let before = refs(&fork);
    let again = git::update_test_definitions(&step).unwrap();
    assert_eq!(again.outcome, Outcome::NoChanges);
    assert_eq!(again.head, facts.head);
    assert_eq!(refs(&fork), before);
}

/// linux-stable with `linux-5.15.y`, a directory of two patches made on it (and a README
/// that is no patch), and KernelCI's empty fork.
struct Kernel {
    site: Site,
    stable: PathBuf,
    fork: PathBuf,
    dev: PathBuf,
    patches: PathBuf,
}

impl Kernel {
    fn new() -> Kernel {
        let site = Site::new();
        let stable = site.bare("linux-stable.git");
        let fork = site.bare("kernelci-linux.git");
        let dev = site.checkout("linux-dev", &stable, "linux-5.15.y");
        commit(
            &dev,
            "Makefile",
            "VERSION = 5\nSUBLEVEL = 1\n",
            "Linux 5.15.1",
        );
        std::fs::write(dev.join("README"), "Linux kernel\n").unwrap();
        commit(
            &dev,
            "Makefile",
            "VERSION = 5\nSUBLEVEL = 2\n",
            "Linux 5.15.2",
        );
        git(&dev, &["push", "-q", "origin", "linux-5.15.y"]);
        git(&dev, &["checkout", "-qb", "patches"]);
        commit(
            &dev,
            "kernel.config",
            "CONFIG_KCI=y\n",
            "kernelci: add a config",
        );
        commit(
            &dev,
            "README",
            "Linux kernel, by KernelCI\n",
            "kernelci: say who",
        );
        let patches = site.path("patches/linux/kernelci.org");
        std::fs::create_dir_all(&patches).unwrap();
        git(
            &dev,
            &["format-patch", "-q", "-2", "-o", patches.to_str().unwrap()],
        );
        std::fs::write(patches.join("README"), "not a patch\n").unwrap();
        git(&dev, &["checkout", "-q", "linux-5.15.y"]);
        Kernel {
            site,
            stable,
            fork,
            dev,
            patches,
        }
    }

    fn step(&self, state: &str) -> KernelStep {
        KernelStep::new(
            self.site.job(state),
            self.stable.to_str().unwrap(),
            "linux-5.15.y",
            self.fork.to_str().unwrap(),
            &self.patches,
        )
    }

    /// A new stable release.
    fn stable_moves(&self, sublevel: u32) {
        commit(
            &self.dev,
            "Makefile",
            &format!("VERSION = 5\nSUBLEVEL = {sublevel}\n"),
            &format!("Linux 5.15.{sublevel}"),
        );
        git(&self.dev, &["push", "-q", "origin", "linux-5.15.y"]);
    }

    /// Asserts the fork's `kernelci.org` is the pipe cleaner `commit` tagged `tag`: stable's
    /// head, the two patches (committed by the bot), the bot's commit writing the tag.
    #[track_caller]
    fn assert_pipe_cleaner(&self, commit: &str, tag: &str) {
        let fork = &self.fork;
        assert_eq!(rev(fork, "kernelci.org"), commit);
        assert_eq!(
            git(fork, &["show", "kernelci.org:kernelci.org"]),
            tag,
            "the kernelci.org file"
        );
        assert_eq!(
            git(
                fork,
                &[
                    "log",
                    "-3",
                    "--format=%s|%an <%ae>|%cn <%ce>",
                    "kernelci.org"
                ]
            ),
            format!(
                "kernelci.org: {tag}|{BOT}|{BOT}\n\
                 kernelci: say who|Dev <dev@example.org>|{BOT}\n\
                 kernelci: add a config|Dev <dev@example.org>|{BOT}"
            )
        );
        assert_eq!(
            rev(fork, "kernelci.org~3"),
            rev(&self.stable, "linux-5.15.y")
        );
        assert_annotated(fork, tag, commit);
    }
}

#[test]
fn kernel_pipe_cleaner_is_made_once_a_day_per_stable_head() {
    let k = Kernel::new();
    let step = k.step("state/linux");
    let first = git::update_kernel(&step).unwrap();
    assert_eq!(first.outcome, Outcome::Pushed);
    assert_eq!(first.tag, made("kernelci-20240108.0").unwrap());
    assert_eq!(first.stable_commit, rev(&k.stable, "linux-5.15.y"));
    assert_eq!(first.patches.len(), 2, "{:?}", first.patches);
    assert!(first.patches[0].starts_with("0001-"), "{:?}", first.patches);
    assert_eq!(
        first.refspecs,
        [
            "+HEAD:refs/heads/kernelci.org",
            "refs/tags/kernelci-20240108.0:refs/tags/kernelci-20240108.0"
        ]
    );
    k.assert_pipe_cleaner(&first.commit, "kernelci-20240108.0");
    assert_clean(&k.site.path("state/linux"));
    let pushed = refs(&k.fork);

    // The same day, same stable head, same patches: the fork's pipe cleaner is returned,
    // nothing is pushed, from the same clone or from a fresh one.
    for state in ["state/linux", "state/linux-fresh"] {
        let again = git::update_kernel(&k.step(state)).unwrap();
        assert_eq!(again.outcome, Outcome::AlreadyPushed, "{state}");
        assert_eq!(again.commit, first.commit, "{state}");
        assert_eq!(again.tag, found("kernelci-20240108.0").unwrap(), "{state}");
        assert!(again.refspecs.is_empty());
        assert_eq!(refs(&k.fork), pushed, "{state}");
    }

    // A new stable release makes a new one, numbered .1.
    k.stable_moves(3);
    let newer = git::update_kernel(&step).unwrap();
    assert_eq!(newer.outcome, Outcome::Pushed);
    assert_eq!(newer.tag, made("kernelci-20240108.1").unwrap());
    assert_ne!(newer.commit, first.commit);
    k.assert_pipe_cleaner(&newer.commit, "kernelci-20240108.1");
    assert_eq!(
        tags(&k.fork),
        ["kernelci-20240108.0", "kernelci-20240108.1"]
    );

    // `force_new` makes one even when nothing changed.
    let mut forced = k.step("state/linux");
    forced.force_new = true;
    let third = git::update_kernel(&forced).unwrap();
    assert_eq!(third.tag, made("kernelci-20240108.2").unwrap());
    k.assert_pipe_cleaner(&third.commit, "kernelci-20240108.2");

    // A new patch in the directory is a change too.
    git(&k.dev, &["checkout", "-q", "-B", "patches", "linux-5.15.y"]);
    commit(
        &k.dev,
        "kernel.config",
        "CONFIG_KCI=y\n",
        "kernelci: add a config",
    );
    commit(
        &k.dev,
        "README",
        "Linux kernel, by KernelCI\n",
        "kernelci: say who",
    );
    commit(&k.dev, "extra.txt", "more\n", "kernelci: one more");
    for f in std::fs::read_dir(&k.patches).unwrap() {
        std::fs::remove_file(f.unwrap().path()).unwrap();
    }
    git(
        &k.dev,
        &[
            "format-patch",
            "-q",
            "-3",
            "-o",
            k.patches.to_str().unwrap(),
        ],
    );
    let fourth = git::update_kernel(&step).unwrap();
    assert_eq!(fourth.outcome, Outcome::Pushed);
    assert_eq!(fourth.patches.len(), 3);
    assert_eq!(fourth.tag, made("kernelci-20240108.3").unwrap());
    assert_eq!(git(&k.fork, &["show", "kernelci.org:extra.txt"]), "more");
}

#[test]
fn kernel_dry_run_pushes_nothing() {
    let k = Kernel::new();
    let mut step = k.step("state/linux");
    step.job.dry_run = true;
    let facts = git::update_kernel(&step).unwrap();
    assert_eq!(facts.outcome, Outcome::DryRun);
    assert_eq!(facts.tag, made("kernelci-20240108.0").unwrap());
    assert_eq!(
        facts.refspecs,
        [
            "+HEAD:refs/heads/kernelci.org",
            "refs/tags/kernelci-20240108.0:refs/tags/kernelci-20240108.0"
        ]
    );
    assert!(refs(&k.fork).is_empty(), "{:?}", refs(&k.fork));
    // The real run after it makes the same tag name (the dry run's local tag is forgotten).
    step.job.dry_run = false;
    let real = git::update_kernel(&step).unwrap();
    assert_eq!(real.tag, made("kernelci-20240108.0").unwrap());
    k.assert_pipe_cleaner(&real.commit, "kernelci-20240108.0");
}

#[test]
fn a_patch_that_does_not_apply_is_bad_input_and_leaves_the_clone_clean() {
    let k = Kernel::new();
    // A patch made against a README stable never had.
    git(&k.dev, &["checkout", "-qb", "elsewhere"]);
    commit(&k.dev, "README", "Some other kernel\n", "other base");
    commit(
        &k.dev,
        "README",
        "Some other kernel, patched\n",
        "kernelci: break",
    );
    let out = git(&k.dev, &["format-patch", "-1", "--stdout"]);
    std::fs::write(k.patches.join("0003-kernelci-break.patch"), out + "\n").unwrap();

    let step = k.step("state/linux");
    let err = git::update_kernel(&step).unwrap_err();
    assert!(matches!(err, GitError::PatchDoesNotApply { .. }), "{err:?}");
    assert_eq!(err.fault(), Fault::BadInput);
    let text = err.to_string();
    for needle in [
        "0003-kernelci-break.patch",
        "linux-5.15.y",
        "linux-stable.git",
    ] {
        assert!(text.contains(needle), "{needle} not in: {text}");
    }
    let workdir = k.site.path("state/linux");
    assert_clean(&workdir);
    assert_eq!(
        git(&workdir, &["rev-parse", "HEAD"]),
        rev(&k.stable, "linux-5.15.y")
    );
    assert!(refs(&k.fork).is_empty(), "{:?}", refs(&k.fork));

    // With the patch gone, the same clone makes the pipe cleaner.
    std::fs::remove_file(k.patches.join("0003-kernelci-break.patch")).unwrap();
    let facts = git::update_kernel(&step).unwrap();
    k.assert_pipe_cleaner(&facts.commit, "kernelci-20240108.0");
}

#[test]
fn a_conflicting_rebase_is_bad_input_and_leaves_the_clone_clean() {
    let site = Site::new();
    let core = site.bare("kernelci-core.git");
    let dev = site.checkout("core-dev", &core, "main");
    commit(&dev, "README", "kernelci-core\n", "initial");
    git(&dev, &["checkout", "-qb", "kernelci.org"]);
    let ours = commit(
        &dev,
        "README",
        "kernelci-core, production\n",
        "production readme",
    );
    git(&dev, &["checkout", "-q", "main"]);
    commit(&dev, "README", "kernelci-core, main\n", "main readme");
    git(&dev, &["push", "-q", "origin", "main", "kernelci.org"]);
    let before = refs(&core);

    let step = CoreStep::new(site.job("state/core"), core.to_str().unwrap());
    let err = git::update_core(&step).unwrap_err();
    assert!(matches!(err, GitError::Conflict { .. }), "{err:?}");
    assert_eq!(err.fault(), Fault::BadInput);
    let text = err.to_string();
    for needle in [
        "kernelci-core.git",
        "`kernelci.org`",
        "`origin/main`",
        &ours[..12],
        "production readme",
        "README",
    ] {
        assert!(text.contains(needle), "{needle} not in: {text}");
    }
    assert_eq!(refs(&core), before);
    let workdir = site.path("state/core");
    assert_clean(&workdir);
    assert_eq!(git(&workdir, &["rev-parse", "HEAD"]), ours);
}

#[test]
fn core_dry_run_pushes_nothing() {
    let site = Site::new();
    let (core, _dev) = core_remote(&site);
    let before = refs(&core);
    let mut step = CoreStep::new(site.job("state/core"), core.to_str().unwrap());
    step.job.dry_run = true;
    let facts = git::update_core(&step).unwrap();
    assert_eq!(facts.outcome, Outcome::DryRun);
    assert_eq!(facts.refspecs.len(), 2);
    assert_eq!(refs(&core), before);
    // The clone holds what would have been pushed.
    let workdir = site.path("state/core");
    assert_eq!(git(&workdir, &["rev-parse", "HEAD"]), facts.head);
    assert_eq!(git(&workdir, &["rev-parse", "HEAD~2"]), rev(&core, "main"));
}

#[test]
fn ls_remote_and_unreachable_remotes() {
    let site = Site::new();
    let (core, dev) = core_remote(&site);
    let url = core.to_str().unwrap();
    assert_eq!(
        git::ls_remote(url, "main", None).unwrap(),
        rev(&core, "main")
    );
    assert_eq!(
        git::ls_remote(url, "kernelci.org", None).unwrap(),
        rev(&core, "kernelci.org")
    );
    let err = git::ls_remote(url, "staging", None).unwrap_err();
    assert!(matches!(err, GitError::NoSuchBranch { .. }), "{err:?}");
    assert_eq!(err.fault(), Fault::BadInput);

    let nowhere = site.path("nowhere.git");
    let err = git::ls_remote(nowhere.to_str().unwrap(), "main", None).unwrap_err();
    assert_eq!(err.fault(), Fault::Environment, "{err:?}");
    let step = CoreStep::new(site.job("state/core"), nowhere.to_str().unwrap());
    let err = git::update_core(&step).unwrap_err();
    assert!(matches!(err, GitError::Unreachable { .. }), "{err:?}");
    assert_eq!(err.fault(), Fault::Environment);
    assert!(err.to_string().contains("nowhere.git"), "{err}");

    // An empty remote has nothing to list.
    let empty = site.bare("empty.git");
    let err = git::ls_remote(empty.to_str().unwrap(), "main", None).unwrap_err();
    assert!(matches!(err, GitError::NoHead { .. }), "{err:?}");
    assert_eq!(err.fault(), Fault::BadInput);

    // A branch the remote lacks is the input's fault, also when an earlier run fetched it.
    let mut step = CoreStep::new(site.job("state/core2"), url);
    step.base = "staging".into();
    let err = git::update_core(&step).unwrap_err();
    assert!(matches!(err, GitError::NoSuchBranch { .. }), "{err:?}");
    assert_eq!(err.fault(), Fault::BadInput);
    git(&dev, &["push", "-q", "origin", "main:staging"]);
    assert_eq!(git::update_core(&step).unwrap().outcome, Outcome::Pushed);
    git(&core, &["branch", "-q", "-D", "staging"]);
    let err = git::update_core(&step).unwrap_err();
    assert!(err.to_string().contains("no branch `staging`"), "{err}");
}
