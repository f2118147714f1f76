//! The Debian archive as kci-build pins it: what apt asks for, the signed index that
//! vouches for every file (`InRelease`), and the `Packages` index that vouches for every
//! `.deb`. Pure parsing and classification; `crate::aptcache` does the I/O.
//!
//! A suite is pinned by the sha256 of its `InRelease` (the *index snapshot*). From that one
//! digest every other byte apt may fetch is checked: index files by the `SHA256:` list of
//! the `InRelease`, `.deb`s by the `SHA256:` field of their stanza in a listed `Packages`.
//! A suite is named host-free, `<archive path>/<suite>` (`debian/bookworm`), so a pin
//! does not depend on which mirror served it and no host name enters a lockfile.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::names::Digest;

/// `<archive path>/<suite>`: `debian/bookworm`, `debian-security/bookworm-security`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SuiteId {
    archive: String,
    suite: String,
}

impl SuiteId {
    pub fn new(archive: &str, suite: &str) -> Result<SuiteId, String> {
        let archive = archive.trim_matches('/');
        let ok_part = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.+~".contains(&b))
        };
        if !archive.split('/').all(ok_part) || !ok_part(suite) {
            return Err(format!(
                "`{archive}/{suite}` is not an archive path and a suite (like `debian/bookworm`)"
            ));
        }
        Ok(SuiteId {
            archive: archive.to_owned(),
            suite: suite.to_owned(),
        })
    }

    /// The suite of a mirror URL: `http://host/debian/` + `bookworm` → `debian/bookworm`.
    pub fn of_mirror(mirror: &str, suite: &str) -> Result<SuiteId, String> {
        let rest = mirror
            .split_once("://")
            .map(|(_, r)| r)
            .ok_or_else(|| format!("mirror `{mirror}` is not an http(s) URL"))?;
        let path = rest.split_once('/').map(|(_, p)| p).unwrap_or("");
        SuiteId::new(path, suite)
    }

    pub fn archive(&self) -> &str {
        &self.archive
    }

    pub fn suite(&self) -> &str {
        &self.suite
    }

    /// The `InRelease` path below the archive's host.
    pub fn inrelease_path(&self) -> String {
        format!("/{}/dists/{}/InRelease", self.archive, self.suite)
    }
}

impl fmt::Display for SuiteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.archive, self.suite)
    }
}

impl FromStr for SuiteId {
    type Err = String;
    fn from_str(s: &str) -> Result<SuiteId, String> {
        let (archive, suite) = s
            .rsplit_once('/')
            .ok_or_else(|| format!("`{s}` is not `<archive>/<suite>` (like `debian/bookworm`)"))?;
        SuiteId::new(archive, suite)
    }
}

impl TryFrom<String> for SuiteId {
    type Error = String;
    fn try_from(s: String) -> Result<SuiteId, String> {
        s.parse()
    }
}

impl From<SuiteId> for String {
    fn from(s: SuiteId) -> String {
        s.to_string()
    }
}

/// A suite and where it is served from: the origin (`scheme://host[:port]`) of the mirror
/// URL a recipe names. The origin is never written to a lockfile; the upstream setting may
/// replace it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SuiteSource {
    pub id: SuiteId,
    pub origin: String,
}

impl SuiteSource {
    pub fn of_mirror(mirror: &str, suite: &str) -> Result<SuiteSource, String> {
        let id = SuiteId::of_mirror(mirror, suite)?;
        let (scheme, rest) = mirror.split_once("://").expect("checked by of_mirror");
        let host = rest.split('/').next().unwrap_or(rest);
        Ok(SuiteSource {
            id,
            origin: format!("{scheme}://{host}"),
        })
    }
}

/// What one apt request is, by its URL path (the host does not matter).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `<archive>/dists/<suite>/InRelease`.
    InRelease(SuiteId),
    /// `Release`/`Release.gpg`: apt only falls back to them when `InRelease` fails; kci-build
    /// pins `InRelease` alone.
    DetachedRelease(SuiteId),
    /// A file listed in the suite's `InRelease`: `<archive>/dists/<suite>/<path>`.
    Index { suite: SuiteId, path: String },
    /// `<archive>/dists/<suite>/…/by-hash/SHA256/<hex>`.
    ByHash { suite: SuiteId, sha256: Digest },
    /// `<archive>/pool/…`: a package, vouched for by a `Packages` index of the archive.
    Pool { archive: String, path: String },
}

impl Request {
    /// Classifies a URL path (percent-encoded, as apt sends `+` and `~`); `None` for
    /// anything apt has no business asking kci-build.
    pub fn parse(path: &str) -> Option<Request> {
        let path = path.split(['?', '#']).next().unwrap_or("");
        let path = percent_decode(path)?;
        let path = path.trim_start_matches('/');
        if path
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return None;
        }
        if let Some((archive, rest)) = split_at_component(path, "dists") {
            let (suite, file) = rest.split_once('/')?;
            let suite = SuiteId::new(archive, suite).ok()?;
            return Some(match file {
                "InRelease" => Request::InRelease(suite),
                "Release" | "Release.gpg" => Request::DetachedRelease(suite),
                _ => match file.rsplit_once("by-hash/SHA256/") {
                    Some((_, hex)) => Request::ByHash {
                        suite,
                        sha256: format!("sha256:{hex}").parse().ok()?,
                    },
                    None => Request::Index {
                        suite,
                        path: file.to_owned(),
                    },
                },
            });
        }
        let (archive, rest) = split_at_component(path, "pool")?;
        Some(Request::Pool {
            archive: archive.to_owned(),
            path: format!("pool/{rest}"),
        })
    }
}

/// Decodes `%XX` escapes; `None` for a malformed escape or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            // Two hex digits, nothing else: `from_str_radix` alone would take a sign (`%+1`).
            let hex = b.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Splits `a/b/<name>/rest` into (`a/b`, `rest`) at the first component `name`.
fn split_at_component<'p>(path: &'p str, name: &str) -> Option<(&'p str, &'p str)> {
    let marker = format!("/{name}/");
    let i = path.find(&marker)?;
    Some((&path[..i], &path[i + marker.len()..]))
}

/// A file an index lists: its digest and size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    pub sha256: Digest,
    pub size: u64,
}

/// The signed part of an `InRelease` that kci-build uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Release {
    /// `Date:`, shown to reviewers next to a pin.
    pub date: Option<String>,
    /// Every file of the `SHA256:` list, by path below `dists/<suite>/`.
    pub files: BTreeMap<String, Listed>,
}

impl Release {
    /// Parses the signed text of an `InRelease` (the clearsigned body; the signature itself
    /// is apt's to check, with the keyring it trusts).
    pub fn parse(text: &str) -> Result<Release, String> {
        let body = signed_body(text)?;
        let mut release = Release::default();
        let mut in_sha256 = false;
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix(' ') {
                if in_sha256 {
                    let (path, listed) = parse_listed(rest)?;
                    release.files.insert(path, listed);
                }
                continue;
            }
            in_sha256 = false;
            match line.split_once(':') {
                Some(("SHA256", _)) => in_sha256 = true,
                Some(("Date", v)) => release.date = Some(v.trim().to_owned()),
                _ => {}
            }
        }
        if release.files.is_empty() {
            return Err("it lists no SHA256 sums".into());
        }
        Ok(release)
    }

    /// The listed file with this digest, if any (by-hash requests).
    pub fn by_hash(&self, sha256: &Digest) -> Option<(&str, &Listed)> {
        self.files
            .iter()
            .find(|(_, l)| l.sha256 == *sha256)
            .map(|(p, l)| (p.as_str(), l))
    }

    /// The compressed `Packages` indexes for `arch`, one per component (xz preferred).
    pub fn packages_indexes(&self, arch: &str) -> Vec<(&str, &Listed)> {
        let pick = |ext: &str| -> Vec<(&str, &Listed)> {
            let suffix = format!("/binary-{arch}/Packages.{ext}");
            self.files
                .iter()
                .filter(|(p, _)| p.ends_with(&suffix))
                .map(|(p, l)| (p.as_str(), l))
                .collect()
        };
        let xz = pick("xz");
        if xz.is_empty() {
            pick("gz")
        } else {
            xz
        }
    }

    /// The files apt may fetch to install packages of `arch`: every compressed variant of
    /// the `Packages` and English `Translation` indexes (what `fetch` caches for offline use).
    pub fn index_files_for(&self, arch: &str) -> Vec<(&str, &Listed)> {
        let packages = format!("/binary-{arch}/Packages.");
        self.files
            .iter()
            .filter(|(p, _)| {
                let compressed = [".xz", ".gz", ".bz2"].iter().any(|e| p.ends_with(e));
                compressed && (p.contains(&packages) || p.contains("/i18n/Translation-en."))
            })
            .map(|(p, l)| (p.as_str(), l))
            .collect()
    }
}

fn signed_body(text: &str) -> Result<&str, String> {
    const BEGIN: &str = "-----BEGIN PGP SIGNED MESSAGE-----";
    const SIG: &str = "-----BEGIN PGP SIGNATURE-----";
    let rest = text
        .strip_prefix(BEGIN)
        .ok_or("it is not a clearsigned message (no `BEGIN PGP SIGNED MESSAGE`)")?;
    let (_, body) = rest
        .split_once("\n\n")
        .ok_or("its armor headers do not end")?;
    let (body, _) = body.split_once(SIG).ok_or("it has no signature block")?;
    Ok(body)
}

fn parse_listed(line: &str) -> Result<(String, Listed), String> {
    let mut it = line.split_whitespace();
    let (Some(hex), Some(size), Some(path), None) = (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(format!("bad SHA256 line `{line}`"));
    };
    let sha256 = format!("sha256:{hex}")
        .parse()
        .map_err(|e| format!("bad SHA256 line `{line}`: {e}"))?;
    let size = size
        .parse()
        .map_err(|_| format!("bad size in SHA256 line `{line}`"))?;
    Ok((path.to_owned(), Listed { sha256, size }))
}

/// One stanza of a `Packages` index, as far as kci-build needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deb {
    pub package: String,
    pub version: String,
    pub arch: String,
    /// Below the archive root: `pool/main/b/bash/bash_5.2.15-2+b13_amd64.deb`.
    pub filename: String,
    pub listed: Listed,
}

/// Parses a (decompressed) `Packages` index; stanzas without a filename or a sha256 are
/// skipped (they cannot be fetched by path anyway).
pub fn parse_packages(text: &str) -> Result<Vec<Deb>, String> {
    let mut out = Vec::new();
    for (n, stanza) in text.split("\n\n").enumerate() {
        let mut fields: BTreeMap<&str, &str> = BTreeMap::new();
        for line in stanza.lines() {
            if line.starts_with([' ', '\t']) {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k, v.trim());
            }
        }
        let get = |k: &str| fields.get(k).copied();
        let (Some(package), Some(version), Some(arch), Some(filename), Some(sha), Some(size)) = (
            get("Package"),
            get("Version"),
            get("Architecture"),
            get("Filename"),
            get("SHA256"),
            get("Size"),
        ) else {
            continue;
        };
        let bad = |what: &str| format!("stanza {} ({package}): bad {what}", n + 1);
        out.push(Deb {
            package: package.to_owned(),
            version: version.to_owned(),
            arch: arch.to_owned(),
            filename: filename.to_owned(),
            listed: Listed {
                sha256: format!("sha256:{sha}").parse().map_err(|_| bad("SHA256"))?,
                size: size.parse().map_err(|_| bad("Size"))?,
            },
        });
    }
    Ok(out)
}

/// `name`, version (without epoch) and arch of a pool file name (`name_version_arch.deb`).
pub fn deb_file_parts(path: &str) -> Option<(&str, &str, &str)> {
    let file = path.rsplit('/').next()?.strip_suffix(".deb")?;
    let mut it = file.split('_');
    let (Some(name), Some(version), Some(arch), None) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return None;
    };
    Some((name, version, arch))
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "0000000000000000000000000000000000000000000000000000000000000001";

    fn inrelease() -> String {
        format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\nOrigin: Debian\nDate: Sat, 08 Nov 2025 09:00:00 UTC\nMD5Sum:\n 0123 10 main/binary-amd64/Packages.xz\nSHA256:\n {HEX} 10 main/binary-amd64/Packages.xz\n {HEX} 99 main/binary-amd64/Packages\n {HEX} 20 main/binary-amd64/Packages.gz\n {HEX} 30 main/i18n/Translation-en.bz2\n {HEX} 40 main/binary-arm64/Packages.xz\n-----BEGIN PGP SIGNATURE-----\n\nxyz\n-----END PGP SIGNATURE-----\n"
        )
    }

    #[test]
    fn release_lists_sha256_files_only_from_the_signed_body() {
        let r = Release::parse(&inrelease()).unwrap();
        assert_eq!(r.date.as_deref(), Some("Sat, 08 Nov 2025 09:00:00 UTC"));
        assert_eq!(r.files.len(), 5);
        assert_eq!(r.files["main/binary-amd64/Packages.gz"].size, 20);
        assert_eq!(
            r.packages_indexes("amd64")
                .iter()
                .map(|(p, _)| *p)
                .collect::<Vec<_>>(),
            ["main/binary-amd64/Packages.xz"]
        );
        let files: Vec<_> = r.index_files_for("amd64").iter().map(|(p, _)| *p).collect();
        assert_eq!(
            files,
            [
                "main/binary-amd64/Packages.gz",
                "main/binary-amd64/Packages.xz",
                "main/i18n/Translation-en.bz2"
            ]
        );
        assert!(Release::parse("Origin: Debian\n")
            .unwrap_err()
            .contains("clearsigned"));
        let unsigned = inrelease().replace("-----BEGIN PGP SIGNATURE-----", "");
        assert!(Release::parse(&unsigned).unwrap_err().contains("signature"));
    }

    #[test]
    fn requests_are_classified_by_path_whatever_the_host() {
        let s = |a, b| SuiteId::new(a, b).unwrap();
        assert_eq!(
            Request::parse("/debian/dists/bookworm/InRelease"),
            Some(Request::InRelease(s("debian", "bookworm")))
        );
        assert_eq!(
            Request::parse("/debian-security/dists/bookworm-security/Release.gpg"),
            Some(Request::DetachedRelease(s(
                "debian-security",
                "bookworm-security"
            )))
        );
        assert_eq!(
            Request::parse("/debian/dists/bookworm/main/binary-amd64/Packages.xz"),
            Some(Request::Index {
                suite: s("debian", "bookworm"),
                path: "main/binary-amd64/Packages.xz".into()
            })
        );
        assert_eq!(
            Request::parse(&format!(
                "/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/{HEX}"
            )),
            Some(Request::ByHash {
                suite: s("debian", "bookworm"),
                sha256: format!("sha256:{HEX}").parse().unwrap()
            })
        );
        assert_eq!(
            Request::parse("/a/b/pool/main/b/bash/bash_5.2_amd64.deb"),
            Some(Request::Pool {
                archive: "a/b".into(),
                path: "pool/main/b/bash/bash_5.2_amd64.deb".into()
            })
        );
        assert_eq!(
            Request::parse("/debian/pool/main/l/libc/libc-bin_2.36-9%2bdeb12u14%7e1_amd64.deb"),
            Some(Request::Pool {
                archive: "debian".into(),
                path: "pool/main/l/libc/libc-bin_2.36-9+deb12u14~1_amd64.deb".into()
            })
        );
        assert_eq!(Request::parse("/debian/pool/%2e%2e/x.deb"), None);
        assert_eq!(Request::parse("/debian/pool/x%2.deb"), None);
        // A sign is not a hex digit (found by tests/fuzz.rs).
        assert_eq!(Request::parse("/debian/pool/x%+1.deb"), None);
        assert_eq!(Request::parse("/debian/pool/x%-1.deb"), None);
        assert_eq!(Request::parse("/debian/dists/../../etc/passwd"), None);
        assert_eq!(Request::parse("/index.html"), None);
        assert_eq!(
            Request::parse("/debian/dists/bookworm/by-hash/SHA256/zz"),
            None
        );
    }

    #[test]
    fn suite_ids_are_host_free_and_validated() {
        assert_eq!(
            SuiteId::of_mirror("http://mirror.invalid/debian/", "bookworm")
                .unwrap()
                .to_string(),
            "debian/bookworm"
        );
        assert_eq!(
            "a/b/stable".parse::<SuiteId>().unwrap(),
            SuiteId::new("a/b", "stable").unwrap()
        );
        assert!("bookworm".parse::<SuiteId>().is_err());
        assert!(SuiteId::new("debian", "..").is_err());
        assert!(SuiteId::new("de bian", "x").is_err());
        assert!(SuiteId::of_mirror("mirror/debian", "x").is_err());
        let src = SuiteSource::of_mirror("http://127.0.0.1:8080/a/debian", "stable").unwrap();
        assert_eq!(src.origin, "http://127.0.0.1:8080");
        assert_eq!(src.id.to_string(), "a/debian/stable");
    }

    #[test]
    fn packages_stanzas_give_filename_and_digest() {
        let text = format!(
            "Package: bash\nVersion: 5.2.15-2+b13\nArchitecture: amd64\nDescription: x\n more\nFilename: pool/main/b/bash/bash_5.2.15-2+b13_amd64.deb\nSize: 1000\nSHA256: {HEX}\n\nPackage: nofile\nVersion: 1\nArchitecture: all\n"
        );
        let debs = parse_packages(&text).unwrap();
        assert_eq!(debs.len(), 1);
        assert_eq!(debs[0].listed.size, 1000);
        assert_eq!(debs[0].arch, "amd64");
        let bad = text.replace("Size: 1000", "Size: many");
        assert!(parse_packages(&bad).unwrap_err().contains("bad Size"));
        assert_eq!(
            deb_file_parts(&debs[0].filename),
            Some(("bash", "5.2.15-2+b13", "amd64"))
        );
        assert_eq!(deb_file_parts("pool/x.tar"), None);
    }
}
