//! What differs between two layers, file by file: the answer `kci-build check` gives when a
//! rebuild does not reproduce a locked digest, so nobody needs diffoscope to find out.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use sha2::{Digest as _, Sha256};

/// What matters about one entry of a layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFacts {
    pub kind: String,
    pub size: u64,
    pub mode: u32,
    pub owner: (u64, u64),
    pub mtime: u64,
    pub link: Option<String>,
    pub sha256: String,
}

/// Reads a gzip-compressed layer into path → facts.
pub fn read_layer(path: &Path) -> io::Result<BTreeMap<String, EntryFacts>> {
    let gz = flate2::read::MultiGzDecoder::new(BufReader::new(File::open(path)?));
    let mut ar = tar::Archive::new(gz);
    let mut out = BTreeMap::new();
    for e in ar.entries()? {
        let mut e = e?;
        let p = String::from_utf8_lossy(&e.path_bytes())
            .trim_end_matches('/')
            .to_owned();
        let h = e.header();
        let kind = format!("{:?}", h.entry_type());
        let (mode, uid, gid, mtime) = (h.mode()?, h.uid()?, h.gid()?, h.mtime()?);
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let mut hash = Sha256::new();
        let mut buf = [0u8; 64 * 1024];
        let mut size = 0u64;
        loop {
            let n = e.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            size += n as u64;
        }
        out.insert(
            p,
            EntryFacts {
                kind,
                size,
                mode,
                owner: (uid, gid),
                mtime,
                link,
                sha256: hex::encode(hash.finalize()),
            },
        );
    }
    Ok(out)
}

/// One human line per differing path (at most `limit`, then a count of the rest).
pub fn diff(
    old: &BTreeMap<String, EntryFacts>,
    new: &BTreeMap<String, EntryFacts>,
    limit: usize,
) -> Vec<String> {
    let mut lines = Vec::new();
    let mut extra = 0;
    let mut paths: Vec<&String> = old.keys().chain(new.keys()).collect();
    paths.sort();
    paths.dedup();
    for p in paths {
        let what = match (old.get(p), new.get(p)) {
            (Some(_), None) => "only in the locked layer".to_owned(),
            (None, Some(_)) => "only in the rebuilt layer".to_owned(),
            (Some(a), Some(b)) if a == b => continue,
            (Some(a), Some(b)) => {
                let mut parts = Vec::new();
                if a.kind != b.kind {
                    parts.push(format!("type {} -> {}", a.kind, b.kind));
                }
                if a.sha256 != b.sha256 {
                    parts.push(format!(
                        "content sha256 {} -> {}",
                        &a.sha256[..12],
                        &b.sha256[..12]
                    ));
                }
                if a.size != b.size {
                    parts.push(format!("size {} -> {}", a.size, b.size));
                }
                if a.mode != b.mode {
                    parts.push(format!("mode {:o} -> {:o}", a.mode, b.mode));
                }
                if a.owner != b.owner {
                    parts.push(format!(
                        "owner {}:{} -> {}:{}",
                        a.owner.0, a.owner.1, b.owner.0, b.owner.1
                    ));
                }
                if a.mtime != b.mtime {
                    parts.push(format!("mtime {} -> {}", a.mtime, b.mtime));
                }
                if a.link != b.link {
                    parts.push(format!(
                        "link target {} -> {}",
                        a.link.as_deref().unwrap_or("-"),
                        b.link.as_deref().unwrap_or("-")
                    ));
                }
                parts.join(", ")
            }
            (None, None) => unreachable!(),
        };
        if lines.len() < limit {
            lines.push(format!("/{p}: {what}"));
        } else {
            extra += 1;
        }
    }
    if extra > 0 {
        lines.push(format!("… and {extra} more paths"));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(sha: &str, mode: u32, mtime: u64) -> EntryFacts {
        EntryFacts {
            kind: "Regular".into(),
            size: 3,
            mode,
            owner: (0, 0),
            mtime,
            link: None,
            sha256: sha.repeat(64),
        }
    }

    #[test]
    fn names_each_differing_field() {
        let old = BTreeMap::from([
            ("etc/a".to_owned(), facts("a", 0o644, 1)),
            ("etc/same".to_owned(), facts("s", 0o644, 1)),
            ("etc/gone".to_owned(), facts("g", 0o644, 1)),
        ]);
        let new = BTreeMap::from([
            ("etc/a".to_owned(), facts("b", 0o755, 2)),
            ("etc/same".to_owned(), facts("s", 0o644, 1)),
            ("etc/new".to_owned(), facts("n", 0o644, 1)),
        ]);
        assert_eq!(
            diff(&old, &new, 10),
            [
                "/etc/a: content sha256 aaaaaaaaaaaa -> bbbbbbbbbbbb, mode 644 -> 755, mtime 1 -> 2",
                "/etc/gone: only in the locked layer",
                "/etc/new: only in the rebuilt layer",
            ]
        );
        assert_eq!(diff(&old, &new, 1).last().unwrap(), "… and 2 more paths");
    }
}
