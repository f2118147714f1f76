//! One way to edit a lockfile, for every command that writes one: read it once (under the
//! caller's [`crate::fsutil::LockfileLock`]), write it only when its canonical text changes,
//! atomically, and under `--locked` refuse instead, naming what would change.

use std::path::{Path, PathBuf};

use anyhow::Context as _;

use crate::core::rootfs_lock::RootfsLockfile;
use crate::fsutil;

/// A lockfile as read, before this run's edit.
#[derive(Debug, Clone)]
pub struct LockfileEdit {
    path: PathBuf,
    /// None: the file does not exist yet.
    text: Option<String>,
}

/// `--locked` and the lockfile would change: bad input (the committed lockfile is stale).
#[derive(Debug, thiserror::Error)]
#[error("--locked: {} would change{why}:\n  {}", path.display(), lines.join("\n  "))]
pub struct LockedRefusal {
    pub path: PathBuf,
    /// Said after "would change", e.g. " (the build did not reproduce it)".
    pub why: &'static str,
    pub lines: Vec<String>,
}

/// What [`LockfileEdit::write`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    Unchanged,
    Written,
}

impl LockfileEdit {
    pub fn read(path: &Path) -> anyhow::Result<LockfileEdit> {
        let text =
            fsutil::read_optional(path).with_context(|| format!("reading {}", path.display()))?;
        Ok(LockfileEdit::from_text(path, text))
    }

    /// An edit of `path` whose text was read already.
    pub fn from_text(path: &Path, text: Option<String>) -> LockfileEdit {
        LockfileEdit {
            path: path.to_owned(),
            text,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn text(&self) -> Option<&str> {
        self.text.as_deref()
    }

    /// The rootfs lockfile model of the text read (empty when there was no file).
    pub fn rootfs(&self) -> anyhow::Result<RootfsLockfile> {
        Ok(match &self.text {
            Some(t) => RootfsLockfile::parse(&self.path, t)?,
            None => RootfsLockfile::default(),
        })
    }

    pub fn would_change(&self, new_text: &str) -> bool {
        self.text.as_deref() != Some(new_text)
    }

    /// Writes `new_text` when it differs from what was read; with `locked`, refuses with
    /// [`LockedRefusal`] listing `changes()` instead.
    pub fn write(
        &self,
        new_text: &str,
        locked: bool,
        why: &'static str,
        changes: impl FnOnce() -> Vec<String>,
    ) -> anyhow::Result<Written> {
        if !self.would_change(new_text) {
            return Ok(Written::Unchanged);
        }
        if locked {
            return Err(LockedRefusal {
                path: self.path.clone(),
                why,
                lines: changes(),
            }
            .into());
        }
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        fsutil::atomic_write(&self.path, new_text.as_bytes())
            .with_context(|| format!("writing {}", self.path.display()))?;
        Ok(Written::Written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_changes_and_refuses_them_when_locked() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("lockfiles/rootfs.lock");
        let edit = LockfileEdit::read(&path).unwrap();
        assert_eq!(edit.text(), None);
        let err = edit
            .write("a\n", true, "", || vec!["bookworm/amd64: added".into()])
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "--locked: {} would change:\n  bookworm/amd64: added",
                path.display()
            )
        );
        assert!(!path.exists(), "a refusal writes nothing");
        assert_eq!(
            edit.write("a\n", false, "", Vec::new).unwrap(),
            Written::Written
        );
        let edit = LockfileEdit::read(&path).unwrap();
        assert_eq!(edit.text(), Some("a\n"));
        let mtime = std::fs::metadata(&path).unwrap().modified().unwrap();
        assert_eq!(
            edit.write("a\n", true, "", || unreachable!()).unwrap(),
            Written::Unchanged
        );
        assert_eq!(std::fs::metadata(&path).unwrap().modified().unwrap(), mtime);
    }
}
