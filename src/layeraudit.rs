//! The audit of a layer that came from elsewhere (a registry): before kci-build keeps it, a
//! layer must be something its own canonical writer could have made — paths inside the image,
//! hard links to members of the layer, no block devices and no character devices but the
//! few a Debian `/dev` holds — and its uncompressed bytes must hash to the `diff_id` its
//! config claims. A registry that serves a well-formed but hostile image (a `../` path, an
//! absolute path, `/dev/sda` or `/dev/mem` as a node) is refused here, before `load` hands
//! the image to Docker or a child build unpacks it as its parent.

use std::collections::BTreeSet;
use std::io::{self, Read};

use sha2::{Digest as _, Sha256};

use crate::core::names::Digest;

/// Character devices a Debian tree's `/dev` may hold (major, minor): null, zero, full,
/// random, urandom, tty, console, ptmx — what mmdebstrap makes.
const DEV_NODES: &[(&str, u32, u32)] = &[
    ("dev/null", 1, 3),
    ("dev/zero", 1, 5),
    ("dev/full", 1, 7),
    ("dev/random", 1, 8),
    ("dev/urandom", 1, 9),
    ("dev/tty", 5, 0),
    ("dev/console", 5, 1),
    ("dev/ptmx", 5, 2),
];

/// Why a layer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Hostile {
    #[error("entry `{0}` leads out of the image (`..`)")]
    DotDot(String),
    #[error("entry `{0}` has an absolute path")]
    Absolute(String),
    #[error(
        "hard link `{path}` points at `{target}`, which is not an earlier member of the layer"
    )]
    Link { path: String, target: String },
    #[error("entry `{path}` is a {kind} device node ({major}, {minor})")]
    Device {
        path: String,
        kind: &'static str,
        major: u32,
        minor: u32,
    },
    #[error("entry `{0}` is of a kind no image layer holds")]
    Kind(String),
    #[error("entry `{0}` has a path that is not UTF-8")]
    NotUtf8(String),
    #[error("its uncompressed bytes hash to {got}, not to the diff_id {want} the config names")]
    DiffId { want: Digest, got: Digest },
    #[error("it is not a gzip'd tar: {0}")]
    Unreadable(String),
}

/// Reads the gzip'd tar `layer` to its end: `Ok` with its entry count, or what is hostile.
pub fn audit(layer: impl Read, diff_id: &Digest) -> Result<usize, Hostile> {
    let unreadable = |e: io::Error| Hostile::Unreadable(e.to_string());
    let mut hashing = Hashing {
        inner: flate2::read::MultiGzDecoder::new(io::BufReader::new(layer)),
        hash: Sha256::new(),
    };
    let mut seen = BTreeSet::new();
    let mut count = 0;
    {
        let mut ar = tar::Archive::new(&mut hashing);
        for e in ar.entries().map_err(unreadable)? {
            let e = e.map_err(unreadable)?;
            let path = checked_path(&e.path_bytes())?;
            let h = e.header();
            match h.entry_type() {
                tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::Directory
                | tar::EntryType::Symlink
                | tar::EntryType::Fifo => {}
                tar::EntryType::Link => {
                    let target = e
                        .link_name_bytes()
                        .map(|t| checked_path(&t))
                        .transpose()?
                        .unwrap_or_default();
                    if !seen.contains(&target) {
                        return Err(Hostile::Link { path, target });
                    }
                }
                kind @ (tar::EntryType::Char | tar::EntryType::Block) => {
                    let major = h.device_major().ok().flatten().unwrap_or(0);
                    let minor = h.device_minor().ok().flatten().unwrap_or(0);
                    let allowed = kind == tar::EntryType::Char
                        && DEV_NODES.contains(&(path.as_str(), major, minor));
                    if !allowed {
                        return Err(Hostile::Device {
                            path,
                            kind: if kind == tar::EntryType::Char {
                                "character"
                            } else {
                                "block"
                            },
                            major,
                            minor,
                        });
                    }
                }
                // PAX and GNU long-name records are read by `tar` itself; anything else is
                // nothing a layer needs.
                tar::EntryType::XHeader | tar::EntryType::XGlobalHeader => {}
                _ => return Err(Hostile::Kind(path)),
            }
            seen.insert(path);
            count += 1;
        }
    }
    // The tar's end blocks may be followed by padding: hash to the end of the stream.
    io::copy(&mut hashing, &mut io::sink()).map_err(unreadable)?;
    let got = Digest::from_hash(hashing.hash.finalize().as_slice());
    if &got != diff_id {
        return Err(Hostile::DiffId {
            want: diff_id.clone(),
            got,
        });
    }
    Ok(count)
}

/// A member path as the canonical writer stores it (`./` and `/` prefixes are how tars
/// spell the root): refused when absolute in any other way or when it climbs with `..`.
fn checked_path(raw: &[u8]) -> Result<String, Hostile> {
    let s = std::str::from_utf8(raw)
        .map_err(|_| Hostile::NotUtf8(String::from_utf8_lossy(raw).into_owned()))?;
    if s.split('/').any(|c| c == "..") {
        return Err(Hostile::DotDot(s.to_owned()));
    }
    if s.starts_with('/') && s != "/" {
        return Err(Hostile::Absolute(s.to_owned()));
    }
    Ok(s.trim_start_matches("./").trim_end_matches('/').to_owned())
}

/// A reader that hashes what passes through it.
struct Hashing<R> {
    inner: R,
    hash: Sha256,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A gzip'd tar of `entries` (built raw, so hostile names are kept as given) and its
    /// diff_id.
    /// Path, kind, link target, (major, minor).
    type Spec<'a> = (&'a str, tar::EntryType, &'a str, (u32, u32));

    fn layer(entries: &[Spec]) -> (Vec<u8>, Digest) {
        let mut b = tar::Builder::new(Vec::new());
        for (path, kind, link, (major, minor)) in entries {
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_entry_type(*kind);
            h.set_mode(0o644);
            h.set_size(0);
            if !link.is_empty() {
                h.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
                let mut u = tar::Header::new_ustar();
                u.as_ustar_mut().unwrap().name[..path.len()].copy_from_slice(path.as_bytes());
                u.set_entry_type(*kind);
                u.set_mode(0o644);
                u.set_size(0);
                u.set_device_major(*major).unwrap();
                u.set_device_minor(*minor).unwrap();
                h = u;
            }
            h.set_cksum();
            b.append(&h, io::empty()).unwrap();
        }
        let tar = b.into_inner().unwrap();
        let diff_id = Digest::of(&tar);
        let mut gz = crate::layer::gzip(Vec::new());
        io::Write::write_all(&mut gz, &tar).unwrap();
        (gz.finish().unwrap(), diff_id)
    }

    use tar::EntryType::{Block, Char, Directory, Link, Regular, Symlink};

    #[test]
    fn a_debian_like_layer_passes() {
        let (gz, id) = layer(&[
            ("./", Directory, "", (0, 0)),
            ("./bin", Symlink, "usr/bin", (0, 0)),
            ("dev/", Directory, "", (0, 0)),
            ("dev/null", Char, "", (1, 3)),
            ("etc/passwd", Regular, "", (0, 0)),
            ("etc/passwd-", Link, "etc/passwd", (0, 0)),
            ("usr/lib/x", Symlink, "/etc/../etc/passwd", (0, 0)),
        ]);
        assert_eq!(audit(&gz[..], &id), Ok(7));
    }

    #[test]
    fn hostile_entries_are_named() {
        let cases: Vec<(Vec<Spec>, Hostile)> = vec![
            (
                vec![("../etc/cron.d/x", Regular, "", (0, 0))],
                Hostile::DotDot("../etc/cron.d/x".into()),
            ),
            (
                vec![("usr/../../x", Regular, "", (0, 0))],
                Hostile::DotDot("usr/../../x".into()),
            ),
            (
                vec![("/etc/shadow", Regular, "", (0, 0))],
                Hostile::Absolute("/etc/shadow".into()),
            ),
            (
                vec![("etc/x", Link, "/etc/shadow", (0, 0))],
                Hostile::Absolute("/etc/shadow".into()),
            ),
            (
                vec![("etc/x", Link, "etc/later", (0, 0))],
                Hostile::Link {
                    path: "etc/x".into(),
                    target: "etc/later".into(),
                },
            ),
            (
                vec![("dev/sda", Block, "", (8, 0))],
                Hostile::Device {
                    path: "dev/sda".into(),
                    kind: "block",
                    major: 8,
                    minor: 0,
                },
            ),
            (
                vec![("dev/null", Char, "", (1, 1))],
                Hostile::Device {
                    path: "dev/null".into(),
                    kind: "character",
                    major: 1,
                    minor: 1,
                },
            ),
        ];
        for (entries, want) in cases {
            let (gz, id) = layer(&entries);
            assert_eq!(audit(&gz[..], &id), Err(want));
        }
    }

    #[test]
    fn a_wrong_diff_id_or_no_gzip_is_refused() {
        let (gz, id) = layer(&[("etc/x", Regular, "", (0, 0))]);
        let other = Digest::of(b"other");
        assert_eq!(
            audit(&gz[..], &other),
            Err(Hostile::DiffId {
                want: other.clone(),
                got: id
            })
        );
        assert!(matches!(
            audit(&b"not gzip"[..], &other),
            Err(Hostile::Unreadable(_))
        ));
    }
}
