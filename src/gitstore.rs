//! The store's copies of pinned git sources (`<store>/git/<sha256 of the URL>`, bare
//! repositories), and the served copy a build gets of one.
//!
//! What crosses the network goes through the `git` CLI (`ls-remote`, `fetch`), so https and
//! ssh work with the operator's own git set-up, as the procedure's git does; libgit2 here is
//! built without either transport. Everything else is libgit2: a pin is verified (the commit
//! exists and its root tree is the locked one) before it is used, and [`GitStore::serve`]
//! writes a shallow bare repository holding only the pinned commit and its tree, its branch
//! and `HEAD` on it — what the build's `git clone` of the pinned URL gets.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::core::gitsource::{LockedSource, ObjectId};
use crate::core::names::Digest;
use crate::error::Fault;

#[derive(Debug, thiserror::Error)]
pub enum GitSourceError {
    #[error("git source `{name}` ({url}): {reason}")]
    Unreachable {
        name: String,
        url: String,
        reason: String,
    },
    #[error("git source `{name}` ({url}): no branch or tag `{git_ref}`")]
    NoRef {
        name: String,
        url: String,
        git_ref: String,
    },
    #[error("git source `{name}` ({url}): commit {commit} is not in the store and {url} no longer serves it ({reason}); run `kci-build lock --refresh` to pin today's `{git_ref}`")]
    Gone {
        name: String,
        url: String,
        git_ref: String,
        commit: String,
        reason: String,
    },
    #[error("git source `{name}` ({url}): commit {commit} has tree {found}, but the lockfile pins tree {locked}")]
    TreeMismatch {
        name: String,
        url: String,
        commit: String,
        found: String,
        locked: String,
    },
    #[error("git source `{name}` ({url}): commit {commit} has no {path}{what}")]
    NoPath {
        name: String,
        url: String,
        commit: String,
        path: String,
        what: String,
    },
    #[error("git source `{name}`: {action} in {}: {source}", path.display())]
    Local {
        name: String,
        action: String,
        path: PathBuf,
        source: git2::Error,
    },
}

impl GitSourceError {
    pub fn fault(&self) -> Fault {
        match self {
            // The recipe names a ref that is not there, or the lockfile a tree that is not.
            GitSourceError::NoRef { .. }
            | GitSourceError::TreeMismatch { .. }
            | GitSourceError::NoPath { .. } => Fault::BadInput,
            _ => Fault::Environment,
        }
    }
}

/// The bare repositories under `<store>/git`.
pub struct GitStore {
    root: PathBuf,
}

impl GitStore {
    pub fn new(store_root: &Path) -> GitStore {
        GitStore {
            root: store_root.join("git"),
        }
    }

    /// The bare repository of `url`.
    pub fn repo_dir(&self, url: &str) -> PathBuf {
        self.root.join(Digest::of(url.as_bytes()).hex())
    }

    fn open(&self, name: &str, url: &str) -> Result<git2::Repository, GitSourceError> {
        let dir = self.repo_dir(url);
        let local = |action: &str, source| GitSourceError::Local {
            name: name.into(),
            action: action.into(),
            path: dir.clone(),
            source,
        };
        match git2::Repository::open_bare(&dir) {
            Ok(r) => Ok(r),
            Err(_) => {
                std::fs::create_dir_all(&self.root).map_err(|e| {
                    local(
                        "creating the directory",
                        git2::Error::from_str(&e.to_string()),
                    )
                })?;
                git2::Repository::init_bare(&dir)
                    .map_err(|e| local("creating a bare repository", e))
            }
        }
    }

    /// Today's commit of `git_ref` at `url`, fetched into the store; with its tree: the pin.
    pub fn resolve(
        &self,
        name: &str,
        url: &str,
        git_ref: &str,
    ) -> Result<LockedSource, GitSourceError> {
        let repo = self.open(name, url)?;
        let unreachable = |reason: String| GitSourceError::Unreachable {
            name: name.into(),
            url: url.into(),
            reason,
        };
        if let Some(commit) = crate::core::gitsource::commit_id(git_ref) {
            // A commit as the ref: fetched by id, pinned as it is, never moved.
            if self.tree_of(&repo, name, &commit)?.is_none() {
                net_git(&repo, &["fetch", "--no-tags", "--", url, commit.as_str()])
                    .map_err(unreachable)?;
            }
            let tree = self
                .tree_of(&repo, name, &commit)?
                .ok_or_else(|| unreachable(format!("{url} did not send commit {commit}")))?;
            return Ok(LockedSource {
                url: url.into(),
                git_ref: git_ref.into(),
                commit,
                tree,
            });
        }
        let heads = net_git(&repo, &["ls-remote", "--", url]).map_err(unreachable)?;
        let wanted = [
            format!("refs/heads/{git_ref}"),
            format!("refs/tags/{git_ref}^{{}}"),
            format!("refs/tags/{git_ref}"),
        ];
        let found = wanted.iter().find_map(|w| {
            heads.lines().find_map(|l| {
                let (oid, r) = l.split_once('\t')?;
                (r == w).then(|| (oid.to_owned(), w.trim_end_matches("^{}").to_owned()))
            })
        });
        let Some((commit, full_ref)) = found else {
            return Err(GitSourceError::NoRef {
                name: name.into(),
                url: url.into(),
                git_ref: git_ref.into(),
            });
        };
        let local_ref = format!("refs/kci/{full_ref}");
        net_git(
            &repo,
            &[
                "fetch",
                "--no-tags",
                "--",
                url,
                &format!("+{full_ref}:{local_ref}"),
            ],
        )
        .map_err(unreachable)?;
        let commit: ObjectId = commit.parse().map_err(unreachable)?;
        let tree = self.tree_of(&repo, name, &commit)?.ok_or_else(|| {
            unreachable(format!(
                "{full_ref} was fetched without its commit {commit}"
            ))
        })?;
        Ok(LockedSource {
            url: url.into(),
            git_ref: git_ref.into(),
            commit,
            tree,
        })
    }

    /// Makes sure the store holds `pin`'s commit (fetching its ref, then the commit itself,
    /// when it does not) and that the commit's tree is the pinned one.
    pub fn ensure(&self, name: &str, pin: &LockedSource) -> Result<(), GitSourceError> {
        let repo = self.open(name, &pin.url)?;
        if self.tree_of(&repo, name, &pin.commit)?.is_none() {
            let url = pin.url.as_str();
            let mut reasons = Vec::new();
            for spec in [
                format!("+refs/heads/{0}:refs/kci/refs/heads/{0}", pin.git_ref),
                format!("+refs/tags/{0}:refs/kci/refs/tags/{0}", pin.git_ref),
                pin.commit.to_string(),
            ] {
                match net_git(&repo, &["fetch", "--no-tags", "--", url, &spec]) {
                    Ok(_) if self.tree_of(&repo, name, &pin.commit)?.is_some() => break,
                    Ok(_) => {}
                    Err(e) => reasons.push(e),
                }
            }
            if self.tree_of(&repo, name, &pin.commit)?.is_none() {
                return Err(GitSourceError::Gone {
                    name: name.into(),
                    url: url.into(),
                    git_ref: pin.git_ref.clone(),
                    commit: pin.commit.to_string(),
                    reason: reasons
                        .pop()
                        .unwrap_or_else(|| "not reachable from its ref".into()),
                });
            }
        }
        let tree = self
            .tree_of(&repo, name, &pin.commit)?
            .expect("checked above");
        if tree != pin.tree {
            return Err(GitSourceError::TreeMismatch {
                name: name.into(),
                url: pin.url.clone(),
                commit: pin.commit.to_string(),
                found: tree.to_string(),
                locked: pin.tree.to_string(),
            });
        }
        Ok(())
    }

    /// The root tree of `commit`, when the repository has the commit.
    fn tree_of(
        &self,
        repo: &git2::Repository,
        name: &str,
        commit: &ObjectId,
    ) -> Result<Option<ObjectId>, GitSourceError> {
        let oid = git2::Oid::from_str(commit.as_str()).expect("an ObjectId is an oid");
        match repo.find_commit(oid) {
            Ok(c) => Ok(Some(
                c.tree_id()
                    .to_string()
                    .parse()
                    .expect("libgit2 oids are hex"),
            )),
            Err(e) if e.code() == git2::ErrorCode::NotFound => Ok(None),
            Err(e) => Err(GitSourceError::Local {
                name: name.into(),
                action: format!("reading commit {commit}"),
                path: repo.path().to_owned(),
                source: e,
            }),
        }
    }

    /// Writes into `dest` (a new directory) a shallow bare repository holding only `pin`'s
    /// commit and its tree, with `refs/heads/<ref>` and `HEAD` on it (`ensure` first).
    pub fn serve(&self, name: &str, pin: &LockedSource, dest: &Path) -> Result<(), GitSourceError> {
        let local = |action: &str, path: &Path, source| GitSourceError::Local {
            name: name.into(),
            action: action.into(),
            path: path.to_owned(),
            source,
        };
        let repo = self.open(name, &pin.url)?;
        let oid = git2::Oid::from_str(pin.commit.as_str()).expect("an ObjectId is an oid");
        let mut buf = git2::Buf::new();
        {
            let mut pb = repo
                .packbuilder()
                .map_err(|e| local("packing", repo.path(), e))?;
            pb.set_threads(1);
            pb.insert_commit(oid)
                .map_err(|e| local("packing the pinned commit", repo.path(), e))?;
            pb.write_buf(&mut buf)
                .map_err(|e| local("packing the pinned commit", repo.path(), e))?;
        }
        let served = git2::Repository::init_bare(dest)
            .map_err(|e| local("creating the served repository", dest, e))?;
        {
            use std::io::Write as _;
            let odb = served
                .odb()
                .map_err(|e| local("opening objects", dest, e))?;
            let mut w = odb
                .packwriter()
                .map_err(|e| local("writing the pack", dest, e))?;
            w.write_all(&buf).map_err(|e| {
                local(
                    "writing the pack",
                    dest,
                    git2::Error::from_str(&e.to_string()),
                )
            })?;
            w.commit()
                .map_err(|e| local("indexing the pack", dest, e))?;
        }
        // A commit pinned by id is served on a branch `kci-pinned`; `git checkout <id>` after
        // the clone finds the commit.
        let branch = match crate::core::gitsource::commit_id(&pin.git_ref) {
            Some(_) => "refs/heads/kci-pinned".to_owned(),
            None => format!("refs/heads/{}", pin.git_ref),
        };
        served
            .reference(&branch, oid, true, "kci-build: the pinned commit")
            .map_err(|e| local("writing the branch", dest, e))?;
        served
            .set_head(&branch)
            .map_err(|e| local("writing HEAD", dest, e))?;
        let parents = repo
            .find_commit(oid)
            .map(|c| c.parent_count())
            .map_err(|e| local("reading the pinned commit", repo.path(), e))?;
        if parents > 0 {
            // Its parents are not there: say so, as a shallow clone does.
            std::fs::write(dest.join("shallow"), format!("{}\n", pin.commit)).map_err(|e| {
                local(
                    "writing shallow",
                    dest,
                    git2::Error::from_str(&e.to_string()),
                )
            })?;
        }
        Ok(())
    }
}

impl GitStore {
    /// Writes the directory `subdir` of `pin`'s commit into `dest` (a new directory): files
    /// with their executable bit, nothing else (`ensure` first). A symlink or submodule in it
    /// is refused: it would name something outside the pinned tree.
    pub fn export(
        &self,
        name: &str,
        pin: &LockedSource,
        subdir: &str,
        dest: &Path,
    ) -> Result<(), GitSourceError> {
        let local = |action: String, path: &Path, source| GitSourceError::Local {
            name: name.into(),
            action,
            path: path.to_owned(),
            source,
        };
        let io = |e: std::io::Error| git2::Error::from_str(&e.to_string());
        let no_path = |path: &str, what: &str| GitSourceError::NoPath {
            name: name.into(),
            url: pin.url.clone(),
            commit: pin.commit.to_string(),
            path: path.into(),
            what: what.into(),
        };
        let repo = self.open(name, &pin.url)?;
        let oid = git2::Oid::from_str(pin.commit.as_str()).expect("an ObjectId is an oid");
        let root = repo
            .find_commit(oid)
            .and_then(|c| c.tree())
            .map_err(|e| local(format!("reading commit {}", pin.commit), repo.path(), e))?;
        let entry = root
            .get_path(Path::new(subdir))
            .map_err(|_| no_path(subdir, ""))?;
        let tree = entry
            .to_object(&repo)
            .ok()
            .and_then(|o| o.into_tree().ok())
            .ok_or_else(|| no_path(subdir, " directory"))?;
        let mut failed = None;
        std::fs::create_dir_all(dest).map_err(|e| local("creating".into(), dest, io(e)))?;
        let walked = tree.walk(git2::TreeWalkMode::PreOrder, |dir, e| {
            let rel = format!("{dir}{}", e.name().unwrap_or("\u{fffd}"));
            let path = dest.join(&rel);
            let written = match (e.kind(), e.filemode()) {
                (Some(git2::ObjectType::Tree), _) => std::fs::create_dir_all(&path).map_err(io),
                (Some(git2::ObjectType::Blob), mode @ (0o100644 | 0o100755)) => repo
                    .find_blob(e.id())
                    .and_then(|b| std::fs::write(&path, b.content()).map_err(io))
                    .and_then(|()| {
                        use std::os::unix::fs::PermissionsExt as _;
                        let perm = if mode == 0o100755 { 0o755 } else { 0o644 };
                        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(perm))
                            .map_err(io)
                    }),
                _ => {
                    failed = Some(no_path(
                        &format!("{subdir}/{rel}"),
                        " as a plain file or directory (a symlink or submodule is not taken)",
                    ));
                    return git2::TreeWalkResult::Abort;
                }
            };
            match written {
                Ok(()) => git2::TreeWalkResult::Ok,
                Err(err) => {
                    failed = Some(local(format!("writing {rel}"), dest, err));
                    git2::TreeWalkResult::Abort
                }
            }
        });
        match (failed, walked) {
            (Some(refused), _) => Err(refused),
            (None, Err(e)) => Err(local("reading the tree".into(), repo.path(), e)),
            (None, Ok(())) => Ok(()),
        }
    }
}

/// The `git` CLI for what crosses the network: no prompts, no hooks, English messages,
/// kci-build's secrets scrubbed from its environment; run in `repo`. Returns stdout, or the
/// last line git wrote on stderr.
fn net_git(repo: &git2::Repository, args: &[&str]) -> Result<String, String> {
    let mut cmd = Command::new("git");
    cmd.arg("--git-dir")
        .arg(repo.path())
        .args(["-c", "core.hooksPath=/dev/null"])
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .env("LC_ALL", "C")
        .env_remove("GIT_DIR")
        .env_remove("GIT_WORK_TREE");
    crate::settings::scrub_secrets(&mut cmd);
    let out = cmd.output().map_err(|e| format!("running git: {e}"))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let said = String::from_utf8_lossy(&out.stderr);
    Err(said
        .trim()
        .lines()
        .last()
        .unwrap_or("git failed")
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .current_dir(dir)
            .args([
                "-c",
                "user.name=t",
                "-c",
                "user.email=t@t",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A real upstream with two commits on main: a pin by commit id stays on the first, is
    /// served so that a clone can check it out, and its directories export as files.
    #[test]
    fn a_commit_ref_is_pinned_as_it_is_served_and_exported() {
        let up = tempfile::tempdir().unwrap();
        let work = up.path();
        git(work, &["init", "-q", "-b", "main"]);
        std::fs::create_dir_all(work.join("config/rootfs/debos/scripts")).unwrap();
        std::fs::write(work.join("config/rootfs/debos/scripts/a.sh"), "echo one\n").unwrap();
        git(work, &["add", "-A"]);
        git(work, &["commit", "-q", "-m", "one"]);
        let first = git(work, &["rev-parse", "HEAD"]);
        std::fs::write(work.join("config/rootfs/debos/scripts/a.sh"), "echo two\n").unwrap();
        git(work, &["commit", "-q", "-am", "two"]);
        let url = format!("file://{}", work.display());

        let store_root = tempfile::tempdir().unwrap();
        let store = GitStore::new(store_root.path());
        let pin = store.resolve("suite", &url, &first).unwrap();
        assert_eq!(pin.commit.as_str(), first);
        assert_eq!(pin.git_ref, first);
        store.ensure("suite", &pin).unwrap();
        let head = store.resolve("suite", &url, "main").unwrap();
        assert_ne!(
            head.commit, pin.commit,
            "main moved on; the commit pin did not"
        );

        let served = tempfile::tempdir().unwrap();
        store
            .serve("suite", &pin, &served.path().join("suite.git"))
            .unwrap();
        let clones = tempfile::tempdir().unwrap();
        let served_url = format!("file://{}/suite.git", served.path().display());
        git(clones.path(), &["clone", "-q", &served_url, "c"]);
        let c = clones.path().join("c");
        git(&c, &["checkout", "-q", "-f", &first]);
        assert_eq!(
            std::fs::read_to_string(c.join("config/rootfs/debos/scripts/a.sh")).unwrap(),
            "echo one\n"
        );

        let out = tempfile::tempdir().unwrap();
        store
            .export(
                "suite",
                &pin,
                "config/rootfs/debos",
                &out.path().join("debos"),
            )
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(out.path().join("debos/scripts/a.sh")).unwrap(),
            "echo one\n"
        );
        let e = store
            .export("suite", &pin, "config/nothing", &out.path().join("x"))
            .unwrap_err();
        assert!(matches!(e, GitSourceError::NoPath { .. }), "{e}");
        assert_eq!(e.fault(), Fault::BadInput);
        assert!(e.to_string().contains("has no config/nothing"), "{e}");

        // A symlink in the exported directory is refused, not skipped.
        std::os::unix::fs::symlink("/etc/shadow", work.join("config/rootfs/debos/shadow")).unwrap();
        git(work, &["add", "-A"]);
        git(work, &["commit", "-q", "-m", "link"]);
        let linked = store.resolve("suite", &url, "main").unwrap();
        let e = store
            .export(
                "suite",
                &linked,
                "config/rootfs/debos",
                &out.path().join("y"),
            )
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("config/rootfs/debos/shadow as a plain file or directory"),
            "{e}"
        );
    }
}
