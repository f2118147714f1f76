//! A lockfile's history in git: its text in the working tree, at HEAD and at the last N
//! commits that changed it. `gc` keeps what any of them references, so `git checkout` of a
//! recent lockfile finds its images still in the store.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

/// One version of a lockfile, and where it comes from (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// `working tree`, or a short commit id.
    pub origin: String,
    pub text: String,
}

/// The working tree's text of `path` (when it exists) and its text at each of the last `keep`
/// commits that changed it, newest first (HEAD's version is the first of those, or the same
/// as the working tree's). Outside a git repository: the working tree's only, and a note.
pub fn versions(path: &Path, keep: usize) -> anyhow::Result<(Vec<Version>, Option<String>)> {
    let mut out = Vec::new();
    if let Ok(text) = std::fs::read_to_string(path) {
        out.push(Version {
            origin: "working tree".into(),
            text,
        });
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let repo = match git2::Repository::discover(dir) {
        Ok(r) => r,
        Err(_) => {
            let note = format!(
                "{} is not in a git repository: only its working-tree version is a root",
                path.display()
            );
            return Ok((out, Some(note)));
        }
    };
    let rel = repo_relative(&repo, path)?;
    let mut walk = repo.revwalk()?;
    if walk.push_head().is_err() {
        return Ok((out, None)); // no commit yet
    }
    walk.set_sorting(git2::Sort::TOPOLOGICAL | git2::Sort::TIME)?;
    let mut found = 0;
    for oid in walk {
        if found >= keep {
            break;
        }
        let commit = repo.find_commit(oid?)?;
        let Some(blob) = blob_at(&commit, &rel) else {
            continue;
        };
        let parent_blob = commit.parent(0).ok().and_then(|p| blob_at(&p, &rel));
        if parent_blob == Some(blob) {
            continue;
        }
        found += 1;
        let text = repo.find_blob(blob)?.content().to_vec();
        let text = String::from_utf8(text)
            .with_context(|| format!("{}:{} is not UTF-8", oid_short(&commit), rel.display()))?;
        if !out.iter().any(|v| v.text == text) {
            out.push(Version {
                origin: oid_short(&commit),
                text,
            });
        }
    }
    Ok((out, None))
}

fn oid_short(c: &git2::Commit<'_>) -> String {
    c.id().to_string()[..12].to_owned()
}

fn blob_at(commit: &git2::Commit<'_>, rel: &Path) -> Option<git2::Oid> {
    let entry = commit.tree().ok()?.get_path(rel).ok()?;
    (entry.kind() == Some(git2::ObjectType::Blob)).then(|| entry.id())
}

/// `path` (relative to the current directory, or absolute) relative to the repository's
/// work tree.
pub fn repo_relative(repo: &git2::Repository, path: &Path) -> anyhow::Result<PathBuf> {
    let workdir = repo
        .workdir()
        .context("a bare repository has no lockfile path")?;
    let abs = std::env::current_dir()?.join(path);
    let abs_canon = abs
        .parent()
        .and_then(|p| p.canonicalize().ok())
        .and_then(|p| abs.file_name().map(|n| p.join(n)))
        .unwrap_or_else(|| abs.clone());
    let work_canon = workdir.canonicalize()?;
    Ok(abs_canon
        .strip_prefix(&work_canon)
        .or_else(|_| abs.strip_prefix(workdir))
        .unwrap_or(path)
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commit(repo: &git2::Repository, file: &str, text: &str, msg: &str) {
        let root = repo.workdir().unwrap();
        std::fs::create_dir_all(root.join(file).parent().unwrap()).unwrap();
        std::fs::write(root.join(file), text).unwrap();
        let mut index = repo.index().unwrap();
        index.add_path(Path::new(file)).unwrap();
        index.write().unwrap();
        let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
        let sig = git2::Signature::now("t", "t@example.org").unwrap();
        let parents: Vec<git2::Commit> = repo
            .head()
            .ok()
            .and_then(|h| h.peel_to_commit().ok())
            .into_iter()
            .collect();
        let parents: Vec<&git2::Commit> = parents.iter().collect();
        repo.commit(Some("HEAD"), &sig, &sig, msg, &tree, &parents)
            .unwrap();
    }

    #[test]
    fn the_working_tree_and_the_last_n_commits_that_changed_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let repo = git2::Repository::init(dir.path()).unwrap();
        commit(&repo, "lockfiles/images.lock", "v1", "one");
        commit(&repo, "README", "other", "not the lockfile");
        commit(&repo, "lockfiles/images.lock", "v2", "two");
        commit(&repo, "lockfiles/images.lock", "v3", "three");
        std::fs::write(dir.path().join("lockfiles/images.lock"), "v4").unwrap();
        let path = dir.path().join("lockfiles/images.lock");
        let texts = |keep| -> Vec<String> {
            versions(&path, keep)
                .unwrap()
                .0
                .into_iter()
                .map(|v| v.text)
                .collect()
        };
        assert_eq!(texts(0), ["v4"]);
        assert_eq!(texts(1), ["v4", "v3"]);
        assert_eq!(texts(3), ["v4", "v3", "v2", "v1"]);
        assert_eq!(texts(10), ["v4", "v3", "v2", "v1"]);
        std::fs::write(&path, "v3").unwrap();
        assert_eq!(texts(1), ["v3"], "the same text once");
    }

    #[test]
    fn outside_git_only_the_working_tree_with_a_note() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("images.lock");
        std::fs::write(&path, "v").unwrap();
        let (v, note) = versions(&path, 3).unwrap();
        assert_eq!(v.len(), 1);
        assert!(note.unwrap().contains("not in a git repository"));
    }
}
