//! Build contexts: walk a target's directory once, fingerprint every file (sha256 in
//! parallel with rayon), and produce the normalised tar the daemon builds from.
//!
//! The fingerprint enters the cache key; the tar carries fixed owners, modes and mtimes, so
//! what Docker sees depends only on what is hashed.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use sha2::{Digest as _, Sha256};

use crate::core::names::Digest;
use crate::core::plan::ContextFingerprint;

/// Files in a context directory that are recipe, not context.
pub const RECIPE_FILE: &str = "image.toml";

#[derive(Debug, Clone)]
pub enum EntryKind {
    File { digest: Digest, executable: bool },
    Symlink(PathBuf),
    Dir,
}

#[derive(Debug, Clone)]
pub struct ContextEntry {
    /// Path relative to the context root, `/`-separated.
    pub rel: String,
    pub abs: PathBuf,
    pub kind: EntryKind,
}

#[derive(Debug, thiserror::Error)]
#[error("build context {}: {source}", path.display())]
pub struct ContextError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

fn ctx_err(path: &Path) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |source| ContextError {
        path: path.to_owned(),
        source,
    }
}

/// Walks `dir` (sorted by name) and hashes its files in parallel.
pub fn scan(dir: &Path) -> Result<Vec<ContextEntry>, ContextError> {
    let mut raw = Vec::new();
    for entry in walkdir::WalkDir::new(dir).min_depth(1).sort_by_file_name() {
        let entry = entry.map_err(|e| ContextError {
            path: dir.to_owned(),
            source: e.into(),
        })?;
        let rel = entry
            .path()
            .strip_prefix(dir)
            .expect("inside the walk root");
        let rel = rel.to_str().ok_or_else(|| ContextError {
            path: entry.path().to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidData, "file name is not UTF-8"),
        })?;
        if rel == RECIPE_FILE {
            continue;
        }
        raw.push((
            rel.replace('\\', "/"),
            entry.path().to_owned(),
            entry.file_type(),
        ));
    }
    raw.into_par_iter()
        .map(|(rel, abs, ft)| {
            let kind = if ft.is_symlink() {
                let target = std::fs::read_link(&abs).map_err(ctx_err(&abs))?;
                if escapes(&rel, &target) {
                    return Err(ContextError {
                        path: abs,
                        source: io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!(
                                "a symlink to {} points outside the build context: \
                                 copy the file into the context instead",
                                target.display()
                            ),
                        ),
                    });
                }
                EntryKind::Symlink(target)
            } else if ft.is_dir() {
                EntryKind::Dir
            } else {
                let meta = std::fs::metadata(&abs).map_err(ctx_err(&abs))?;
                EntryKind::File {
                    digest: hash_file(&abs).map_err(ctx_err(&abs))?,
                    executable: meta.permissions().mode() & 0o111 != 0,
                }
            };
            Ok(ContextEntry { rel, abs, kind })
        })
        .collect()
}

/// Whether a symlink at `rel` (relative to the context) with `target` leads out of the
/// context: an absolute target, or more `..` than the link is deep.
fn escapes(rel: &str, target: &Path) -> bool {
    use std::path::Component;
    let mut depth = rel.split('/').count() as i64 - 1;
    for c in target.components() {
        match c {
            Component::RootDir | Component::Prefix(_) => return true,
            Component::ParentDir => depth -= 1,
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
        }
        if depth < 0 {
            return true;
        }
    }
    false
}

/// sha256 of a file, streamed.
pub fn hash_file(path: &Path) -> io::Result<Digest> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(Digest::from_hash(&h.finalize()))
}

/// The key's view of a context.
pub fn fingerprint(entries: &[ContextEntry]) -> ContextFingerprint {
    entries
        .iter()
        .map(|e| {
            let fp = match &e.kind {
                EntryKind::File { digest, executable } => {
                    format!("{digest} {}", if *executable { "755" } else { "644" })
                }
                EntryKind::Symlink(t) => format!("symlink {}", t.display()),
                EntryKind::Dir => "dir".to_owned(),
            };
            (e.rel.clone(), fp)
        })
        .collect::<BTreeMap<_, _>>()
}

/// A tar of the context with root owners, fixed modes and `mtime` for every entry.
pub fn tar(entries: &[ContextEntry], mtime: u64) -> io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(mtime);
        match &e.kind {
            EntryKind::Dir => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, format!("{}/", e.rel), io::empty())?;
            }
            EntryKind::Symlink(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, &e.rel, target)?;
            }
            EntryKind::File { executable, .. } => {
                let f = File::open(&e.abs)?;
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(if *executable { 0o755 } else { 0o644 });
                h.set_size(f.metadata()?.len());
                b.append_data(&mut h, &e.rel, f)?;
            }
        }
    }
    b.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    #[test]
    fn a_symlink_out_of_the_context_is_refused_naming_it() {
        for (at, target) in [
            ("link", "/etc/shadow"),
            ("link", "../outside"),
            ("sub/link", "../../outside"),
            ("sub/link", "x/../../../outside"),
        ] {
            let d = tempfile::tempdir().unwrap();
            fs::create_dir(d.path().join("sub")).unwrap();
            std::os::unix::fs::symlink(target, d.path().join(at)).unwrap();
            let e = scan(d.path()).unwrap_err();
            assert_eq!(e.path, d.path().join(at));
            assert!(
                e.to_string().contains("points outside the build context"),
                "{at} -> {target}: {e}"
            );
        }
        assert!(!escapes("sub/link", Path::new("../Dockerfile")));
        assert!(!escapes("a/b/link", Path::new("../../c/./d")));
    }

    #[test]
    fn fingerprint_sees_content_mode_and_links_but_not_the_recipe() {
        let d = tempfile::tempdir().unwrap();
        fs::write(d.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        fs::write(d.path().join(RECIPE_FILE), "[[target]]\n").unwrap();
        fs::create_dir(d.path().join("sub")).unwrap();
        fs::write(d.path().join("sub/run.sh"), "#!/bin/sh\n").unwrap();
        std::os::unix::fs::symlink("run.sh", d.path().join("sub/link")).unwrap();
        let fp = fingerprint(&scan(d.path()).unwrap());
        assert_eq!(
            fp.keys().collect::<Vec<_>>(),
            ["Dockerfile", "sub", "sub/link", "sub/run.sh"]
        );
        assert_eq!(fp["sub/link"], "symlink run.sh");
        assert!(fp["sub/run.sh"].ends_with(" 644"));
        fs::set_permissions(
            d.path().join("sub/run.sh"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let fp2 = fingerprint(&scan(d.path()).unwrap());
        assert!(fp2["sub/run.sh"].ends_with(" 755"));
        fs::write(d.path().join(RECIPE_FILE), "changed").unwrap();
        assert_eq!(fingerprint(&scan(d.path()).unwrap()), fp2);
        // The tar is a pure function of the scan.
        let a = tar(&scan(d.path()).unwrap(), 5).unwrap();
        filetime_touch(&d.path().join("Dockerfile"));
        assert_eq!(tar(&scan(d.path()).unwrap(), 5).unwrap(), a);
    }

    fn filetime_touch(p: &Path) {
        let f = File::options().write(true).open(p).unwrap();
        f.set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(100))
            .unwrap();
    }
}
