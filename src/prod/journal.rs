//! Journals on disk: one file per procedure run, `<state>/journal/<YYYYMMDD>.<N>.jsonl`,
//! rewritten atomically with every line added (a kill leaves the file as it was before
//! or after a line, never half a line). The run's date is in the name, so a run resumed on
//! the next day still names its tags after the day it started. A lock beside the journals
//! keeps two `prod` processes from driving production at once.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;

use crate::core::procedure::{Entry, Event, Journal, Step};
use crate::fsutil;

/// A run's journal file.
#[derive(Debug)]
pub struct JournalFile {
    path: PathBuf,
    /// `YYYYMMDD.N`.
    pub id: String,
    /// `YYYYMMDD`: the run's date.
    pub date: String,
    pub journal: Journal,
}

/// Which run a command works in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// `prod run`: the newest run unless it finished, else a new one.
    Resume,
    /// A step command (`pause`, `update kernel`…): the newest run when it is unfinished or
    /// of the same date (a finished Monday gets its steps appended), else a new one.
    Today,
    /// `prod run --new`: a new run.
    New,
}

/// Held while a `prod` command drives production.
#[derive(Debug)]
pub struct ProdLock {
    _file: File,
}

/// Now, as the journal writes it.
pub fn now() -> String {
    crate::image::rfc3339(epoch_secs())
}

pub fn epoch_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Today as `YYYYMMDD` (UTC).
pub fn today() -> String {
    now()[..10].replace('-', "")
}

fn journal_dir(state: &Path) -> PathBuf {
    state.join("journal")
}

/// Takes the lock of the state directory, failing at once (not waiting) when another
/// `prod` holds it.
pub fn lock(state: &Path) -> anyhow::Result<ProdLock> {
    std::fs::create_dir_all(state).with_context(|| format!("creating {}", state.display()))?;
    let path = state.join("prod.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(ProdLock { _file: file }),
        Err(std::fs::TryLockError::WouldBlock) => Err(anyhow::anyhow!(
            "another `kci-build prod` is running on {} (it holds {})",
            state.display(),
            path.display()
        )),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}

impl JournalFile {
    /// Every run's journal id, oldest first.
    pub fn ids(state: &Path) -> anyhow::Result<Vec<String>> {
        let dir = journal_dir(state);
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(e).with_context(|| format!("listing {}", dir.display())),
        };
        let mut ids: Vec<(String, u32, String)> = Vec::new();
        for e in rd {
            let name = e?.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".jsonl") else {
                continue;
            };
            if let Some((date, n)) = id.split_once('.') {
                if let Ok(n) = n.parse::<u32>() {
                    ids.push((date.to_owned(), n, id.to_owned()));
                }
            }
        }
        ids.sort();
        Ok(ids.into_iter().map(|(_, _, id)| id).collect())
    }

    pub fn open(state: &Path, id: &str) -> anyhow::Result<JournalFile> {
        let path = journal_dir(state).join(format!("{id}.jsonl"));
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let journal =
            Journal::parse(&path.display().to_string(), &text).map_err(anyhow::Error::msg)?;
        Ok(JournalFile {
            date: id.split('.').next().unwrap_or(id).to_owned(),
            id: id.to_owned(),
            path,
            journal,
        })
    }

    /// The newest run's journal, if any.
    pub fn latest(state: &Path) -> anyhow::Result<Option<JournalFile>> {
        match JournalFile::ids(state)?.last() {
            Some(id) => Ok(Some(JournalFile::open(state, id)?)),
            None => Ok(None),
        }
    }

    /// The run a command works in (see [`Which`]); a new one is dated `date`.
    pub fn current(state: &Path, date: &str, which: Which) -> anyhow::Result<JournalFile> {
        if let Some(j) = JournalFile::latest(state)? {
            let take = match which {
                Which::Resume => !j.journal.finished(),
                Which::Today => !j.journal.finished() || j.date == date,
                Which::New => false,
            };
            if take {
                return Ok(j);
            }
        }
        let n = JournalFile::ids(state)?
            .iter()
            .filter(|id| id.split('.').next() == Some(date))
            .count();
        let id = format!("{date}.{n}");
        Ok(JournalFile {
            path: journal_dir(state).join(format!("{id}.jsonl")),
            id,
            date: date.to_owned(),
            journal: Journal::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Adds a line and writes the file (atomically).
    pub fn record(
        &mut self,
        step: Step,
        event: Event,
        facts: BTreeMap<String, String>,
        error: Option<String>,
    ) -> anyhow::Result<()> {
        self.journal.entries.push(Entry {
            at: now(),
            step,
            event,
            facts,
            error,
        });
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        fsutil::atomic_write(&self.path, self.journal.to_text().as_bytes())
            .with_context(|| format!("writing {}", self.path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_continue_until_finished_then_a_new_one_starts() {
        let d = tempfile::tempdir().unwrap();
        let mut j = JournalFile::current(d.path(), "20261207", Which::Resume).unwrap();
        assert_eq!(j.id, "20261207.0");
        j.record(Step::Pause, Event::Start, BTreeMap::new(), None)
            .unwrap();
        // Resumed the next day: the same run, still dated the 7th.
        let again = JournalFile::current(d.path(), "20261208", Which::Resume).unwrap();
        assert_eq!(again.id, "20261207.0");
        assert_eq!(again.journal.entries.len(), 1);
        for step in Step::ALL {
            j.record(step, Event::Done, BTreeMap::new(), None).unwrap();
        }
        let next = JournalFile::current(d.path(), "20261207", Which::Resume).unwrap();
        assert_eq!(next.id, "20261207.1", "a finished run is not continued");
        let same_day = JournalFile::current(d.path(), "20261207", Which::Today).unwrap();
        assert_eq!(
            same_day.id, "20261207.0",
            "a step command on the same day joins its run"
        );
        let next_week = JournalFile::current(d.path(), "20261214", Which::Today).unwrap();
        assert_eq!(next_week.id, "20261214.0");
        let forced = JournalFile::current(d.path(), "20261208", Which::New).unwrap();
        assert_eq!(forced.id, "20261208.0");
        assert!(today().len() == 8 && today().starts_with("20"));
    }

    #[test]
    fn one_prod_at_a_time() {
        let d = tempfile::tempdir().unwrap();
        let held = lock(d.path()).unwrap();
        let e = lock(d.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains("another `kci-build prod` is running"),
            "{e}"
        );
        drop(held);
        lock(d.path()).unwrap();
    }
}
