//! Atomic file writes: temp file in the same directory, fsync, rename, fsync the directory.
//! A crash leaves either the old file or the new one, never half of one.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// A temp file in `dir` that will replace `target`: it gets the mode `target` has now, or
/// a plain file's `0644` (minus the umask) when it does not exist yet. tempfile's own
/// default, `0600`, would make a replaced `test-configs.yaml` unreadable to others and a
/// storage directory unservable by a web server.
pub fn temp_for(dir: &Path, target: &Path) -> io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::PermissionsExt;
    let existing = fs::metadata(target)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777);
    // The open mode goes through the umask, right for a new file; an existing file's mode
    // is then set as it was (fchmod is not masked).
    let tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .permissions(fs::Permissions::from_mode(0o644))
        .tempfile_in(dir)?;
    if let Some(mode) = existing {
        tmp.as_file()
            .set_permissions(fs::Permissions::from_mode(mode))?;
    }
    Ok(tmp)
}

/// Writes `bytes` to `path` atomically.
pub fn atomic_write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fs::create_dir_all(dir)?;
    let mut tmp = temp_for(dir, path)?;
    tmp.write_all(bytes)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(dir)
}

/// Moves a finished temp file into place and makes the rename durable.
pub fn persist(tmp: tempfile::NamedTempFile, path: &Path) -> io::Result<()> {
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Reads a file if it exists.
pub fn read_optional(path: &Path) -> io::Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// An exclusive advisory lock (`flock`) that a command holds while it reads, changes and
/// writes a lockfile, so two runs on one checkout cannot both read the old text and the
/// last writer drop the other's entries. It lives in `locks_dir` (the store), named by a
/// hash of the lockfile's absolute path, so nothing appears beside the lockfile. Released
/// when dropped, or by the kernel when the process dies.
#[derive(Debug)]
pub struct LockfileLock {
    _file: File,
}

impl LockfileLock {
    /// Takes the lock on `lockfile`; when another process holds it, calls `on_wait` once
    /// and waits.
    pub fn acquire(
        locks_dir: &Path,
        lockfile: &Path,
        on_wait: impl FnOnce(),
    ) -> io::Result<LockfileLock> {
        use sha2::Digest as _;
        // The same file reached through a symlink or `..` must get the same lock.
        let abs = match (lockfile.parent(), lockfile.file_name()) {
            (Some(dir), Some(name)) => match fs::canonicalize(if dir.as_os_str().is_empty() {
                Path::new(".")
            } else {
                dir
            }) {
                Ok(dir) => dir.join(name),
                Err(_) => std::path::absolute(lockfile)?,
            },
            _ => std::path::absolute(lockfile)?,
        };
        let name = hex::encode(&sha2::Sha256::digest(abs.as_os_str().as_encoded_bytes())[..12]);
        fs::create_dir_all(locks_dir)?;
        let path = locks_dir.join(format!("{name}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                on_wait();
                file.lock()?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(e),
        }
        Ok(LockfileLock { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/x.lock");
        atomic_write(&p, b"one").unwrap();
        atomic_write(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["x.lock"]);
    }

    #[test]
    fn atomic_write_makes_readable_files_and_keeps_an_existing_mode() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let umask = {
            let probe = dir.path().join("probe");
            fs::write(&probe, b"").unwrap();
            !mode(&probe) & 0o666
        };
        let new = dir.path().join("new.yaml");
        atomic_write(&new, b"a").unwrap();
        assert_eq!(mode(&new), 0o644 & !umask);
        let kept = dir.path().join("kept.yaml");
        fs::write(&kept, b"a").unwrap();
        // Group-writable: a mode the umask would have cut.
        fs::set_permissions(&kept, fs::Permissions::from_mode(0o664)).unwrap();
        atomic_write(&kept, b"b").unwrap();
        assert_eq!(mode(&kept), 0o664);
        assert_eq!(fs::read(&kept).unwrap(), b"b");
    }

    #[test]
    fn a_second_lockfile_lock_waits_until_the_first_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let locks = dir.path().join("locks");
        let lockfile = dir.path().join("lockfiles/rootfs.lock");
        let first = LockfileLock::acquire(&locks, &lockfile, || panic!("free")).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let (locks2, lockfile2) = (locks.clone(), lockfile.clone());
        let waiter = std::thread::spawn(move || {
            let waited = std::cell::Cell::new(false);
            let l = LockfileLock::acquire(&locks2, &lockfile2, || waited.set(true)).unwrap();
            tx.send(waited.get()).unwrap();
            drop(l);
        });
        // Held: the second one is still waiting.
        assert!(rx
            .recv_timeout(std::time::Duration::from_millis(300))
            .is_err());
        drop(first);
        assert!(rx.recv_timeout(std::time::Duration::from_secs(10)).unwrap());
        waiter.join().unwrap();
        // Another lockfile has its own lock.
        let _a = LockfileLock::acquire(&locks, &lockfile, || panic!("free")).unwrap();
        LockfileLock::acquire(&locks, &dir.path().join("images.lock"), || panic!("free")).unwrap();
    }
}
