//! Canonical layers: rewrite a tar produced by Docker (or mmdebstrap) so that the same file
//! tree always gives the same bytes.
//!
//! Rules (see REPRODUCIBILITY.md): entries sorted bytewise by path (a directory before its
//! contents), mtimes clamped to `SOURCE_DATE_EPOCH`, numeric owners with empty names, no
//! atime/ctime, xattrs kept in sorted PAX records, hard links pointing at the first member
//! of their group in sorted order, and clock- or machine-stamped files scrubbed.
//!
//! Two passes over a seekable source keep memory proportional to the number of entries,
//! not to the layer size: pass one reads headers, pass two copies data in sorted order.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};

use sha2::{Digest as _, Sha256};

use crate::core::names::Digest;

/// A byte range of a file, readable and seekable as if it were a file of its own (a layer
/// inside a `docker save` archive, for instance).
pub struct Section {
    file: File,
    start: u64,
    len: u64,
    pos: u64,
}

impl Section {
    pub fn new(file: File, start: u64, len: u64) -> Section {
        Section {
            file,
            start,
            len,
            pos: 0,
        }
    }
    pub fn whole(file: File) -> io::Result<Section> {
        let len = file.metadata()?.len();
        Ok(Section::new(file, 0, len))
    }
    fn try_clone(&self) -> io::Result<Section> {
        Ok(Section {
            file: self.file.try_clone()?,
            start: self.start,
            len: self.len,
            pos: 0,
        })
    }
}

impl Read for Section {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len.saturating_sub(self.pos);
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(left as usize);
        self.file.seek(SeekFrom::Start(self.start + self.pos))?;
        let n = self.file.read(&mut buf[..want])?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for Section {
    fn seek(&mut self, to: SeekFrom) -> io::Result<u64> {
        let new = match to {
            SeekFrom::Start(n) => n as i128,
            SeekFrom::Current(d) => self.pos as i128 + d as i128,
            SeekFrom::End(d) => self.len as i128 + d as i128,
        };
        if new < 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek before start",
            ));
        }
        self.pos = new as u64;
        Ok(self.pos)
    }
}

/// What happens to a path during the rewrite.
#[derive(Debug, PartialEq, Eq)]
enum Scrub {
    Keep,
    Drop,
    /// Keep the file, with empty content (`/etc/machine-id`: "uninitialised").
    Empty,
    /// Rewrite the "last change" field of a shadow file.
    Shadow,
}

fn scrub(path: &str) -> Scrub {
    const DROP_EXACT: &[&str] = &[
        "var/log/dpkg.log",
        "var/log/alternatives.log",
        "var/log/bootstrap.log",
        "var/log/apt/history.log",
        "var/log/apt/term.log",
        "var/log/apt/eipp.log.xz",
        "var/cache/ldconfig/aux-cache",
        "var/lib/dbus/machine-id",
        "var/cache/debconf/config.dat-old",
        "var/cache/debconf/templates.dat-old",
    ];
    if DROP_EXACT.contains(&path) {
        return Scrub::Drop;
    }
    if path == "etc/machine-id" {
        return Scrub::Empty;
    }
    if path == "etc/shadow" || path == "etc/shadow-" {
        return Scrub::Shadow;
    }
    let under = |dir: &str| {
        path.strip_prefix(dir)
            .and_then(|r| r.strip_prefix('/'))
            .filter(|r| !r.is_empty())
    };
    if let Some(rest) = under("var/cache/apt") {
        if rest.ends_with(".bin") || (rest.starts_with("archives/") && rest.ends_with(".deb")) {
            return Scrub::Drop;
        }
    }
    if let Some(rest) = under("var/lib/apt/lists") {
        if rest != "partial" && rest != "lock" && !rest.starts_with("partial/") {
            return Scrub::Drop;
        }
    }
    // Runtime directories: the container runtime provides /dev, /proc, /sys; /run and the
    // temp directories hold nothing an image should ship.
    if ["dev", "proc", "sys", "run", "tmp", "var/tmp"]
        .iter()
        .any(|d| under(d).is_some())
    {
        return Scrub::Drop;
    }
    Scrub::Keep
}

fn rewrite_shadow(content: &[u8], sde: u64) -> Vec<u8> {
    let days = (sde / 86400).to_string();
    let text = String::from_utf8_lossy(content);
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let (body, nl) = line
            .strip_suffix('\n')
            .map(|b| (b, "\n"))
            .unwrap_or((line, ""));
        let mut fields: Vec<&str> = body.split(':').collect();
        if fields.len() > 2 && !fields[2].is_empty() {
            fields[2] = &days;
        }
        out.push_str(&fields.join(":"));
        out.push_str(nl);
    }
    out.into_bytes()
}

#[derive(Debug, Clone)]
struct Meta {
    path: String,
    kind: tar::EntryType,
    mode: u32,
    uid: u64,
    gid: u64,
    mtime: u64,
    size: u64,
    data_pos: u64,
    link: Option<String>,
    dev: (u32, u32),
    xattrs: Vec<(String, Vec<u8>)>,
    /// Replacement content (scrubbed files).
    content: Option<Vec<u8>>,
}

fn normalise(p: &[u8]) -> io::Result<String> {
    let s = std::str::from_utf8(p).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("non-UTF-8 path in layer: {:?}", String::from_utf8_lossy(p)),
        )
    })?;
    let s = s
        .trim_start_matches("./")
        .trim_start_matches('/')
        .trim_end_matches('/');
    Ok(if s == "." {
        String::new()
    } else {
        s.to_owned()
    })
}

/// The result of a rewrite.
#[derive(Debug, Clone)]
pub struct Canonical {
    /// sha256 of the canonical, uncompressed tar.
    pub diff_id: Digest,
    /// `var/lib/dpkg/status` if this layer carries it.
    pub dpkg_status: Option<Vec<u8>>,
    pub entries: usize,
}

/// Rewrites the tar in `src` canonically into `out` (uncompressed).
pub fn canonicalize(src: Section, sde: u64, out: impl Write) -> io::Result<Canonical> {
    let mut data = src.try_clone()?;
    let mut metas = read_headers(src, sde, &mut data)?;
    metas.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
    // A tar may repeat a path and the last copy wins on extraction; the sort is stable, so
    // keep the last of each run.
    metas.dedup_by(|later, kept| {
        let same = later.path == kept.path;
        if same {
            std::mem::swap(later, kept);
        }
        same
    });
    let leaders = hardlink_leaders(&metas);
    let by_path: BTreeMap<&str, usize> = metas
        .iter()
        .enumerate()
        .map(|(i, m)| (m.path.as_str(), i))
        .collect();

    let mut hashing = HashWriter {
        inner: out,
        hash: Sha256::new(),
        size: 0,
    };
    let mut dpkg_status = None;
    {
        let mut b = tar::Builder::new(&mut hashing);
        for m in &metas {
            // Hard links: the group's first member (in sorted order) carries the data.
            match leaders.get(m.path.as_str()) {
                Some(leader) if leader == &m.path => {
                    let root = m
                        .link
                        .as_deref()
                        .filter(|_| m.kind == tar::EntryType::Link)
                        .unwrap_or(&m.path);
                    let src = by_path.get(root).map(|&i| &metas[i]).unwrap_or(m);
                    write_entry(&mut b, src, &m.path, None, sde, &mut data, &mut dpkg_status)?;
                }
                Some(leader) => write_entry(
                    &mut b,
                    m,
                    &m.path,
                    Some(leader),
                    sde,
                    &mut data,
                    &mut dpkg_status,
                )?,
                None => write_entry(&mut b, m, &m.path, None, sde, &mut data, &mut dpkg_status)?,
            }
        }
        b.finish()?;
    }
    let entries = metas.len();
    Ok(Canonical {
        diff_id: hashing.digest().0,
        dpkg_status,
        entries,
    })
}

fn read_headers(src: Section, sde: u64, data: &mut Section) -> io::Result<Vec<Meta>> {
    let mut ar = tar::Archive::new(src);
    let mut metas = Vec::new();
    for e in ar.entries_with_seek()? {
        let mut e = e?;
        let h = e.header();
        let kind = h.entry_type();
        if !matches!(
            kind,
            tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::Directory
                | tar::EntryType::Symlink
                | tar::EntryType::Link
                | tar::EntryType::Char
                | tar::EntryType::Block
                | tar::EntryType::Fifo
        ) {
            continue;
        }
        let path = normalise(&e.path_bytes())?;
        if path.is_empty() {
            continue; // the root directory itself
        }
        let action = scrub(&path);
        if action == Scrub::Drop {
            continue;
        }
        let link = match kind {
            tar::EntryType::Symlink => e
                .link_name_bytes()
                .map(|l| String::from_utf8_lossy(&l).into_owned()),
            tar::EntryType::Link => e.link_name_bytes().map(|l| normalise(&l)).transpose()?,
            _ => None,
        };
        let mut xattrs: Vec<(String, Vec<u8>)> = Vec::new();
        if let Some(exts) = e.pax_extensions()? {
            for ext in exts {
                let ext = ext?;
                if let Ok(k) = ext.key() {
                    if k.starts_with("SCHILY.xattr.") {
                        xattrs.push((k.to_owned(), ext.value_bytes().to_vec()));
                    }
                }
            }
        }
        xattrs.sort();
        let h = e.header();
        let size = e.size();
        let data_pos = e.raw_file_position();
        let content = match action {
            Scrub::Empty if kind == tar::EntryType::Regular => Some(Vec::new()),
            Scrub::Shadow if kind == tar::EntryType::Regular => {
                let mut buf = Vec::with_capacity(size as usize);
                data.seek(SeekFrom::Start(data_pos))?;
                data.by_ref().take(size).read_to_end(&mut buf)?;
                Some(rewrite_shadow(&buf, sde))
            }
            _ => None,
        };
        let meta = Meta {
            path,
            kind: if kind == tar::EntryType::Continuous {
                tar::EntryType::Regular
            } else {
                kind
            },
            mode: h.mode()? & 0o7777,
            uid: h.uid()?,
            gid: h.gid()?,
            mtime: h.mtime()?,
            size,
            data_pos,
            link,
            dev: if matches!(kind, tar::EntryType::Char | tar::EntryType::Block) {
                (
                    h.device_major()?.unwrap_or(0),
                    h.device_minor()?.unwrap_or(0),
                )
            } else {
                (0, 0)
            },
            xattrs,
            content,
        };
        metas.push(meta);
    }
    Ok(metas)
}

/// For every member of a hard-link group, the group's first path in sorted order.
fn hardlink_leaders(metas: &[Meta]) -> BTreeMap<String, String> {
    let mut groups: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for m in metas.iter().filter(|m| m.kind == tar::EntryType::Link) {
        let root = m.link.as_deref().unwrap_or_default();
        groups.entry(root).or_default().push(&m.path);
    }
    let present: std::collections::BTreeSet<&str> = metas.iter().map(|m| m.path.as_str()).collect();
    let mut leaders = BTreeMap::new();
    for (root, mut members) in groups {
        if present.contains(root) {
            members.push(root);
        }
        members.sort();
        let leader = members[0].to_owned();
        for m in members {
            leaders.insert(m.to_owned(), leader.clone());
        }
    }
    leaders
}

fn write_entry<W: Write>(
    b: &mut tar::Builder<W>,
    m: &Meta,
    path: &str,
    link_to: Option<&str>,
    sde: u64,
    data: &mut Section,
    dpkg_status: &mut Option<Vec<u8>>,
) -> io::Result<()> {
    if !m.xattrs.is_empty() && link_to.is_none() {
        let mut records = Vec::new();
        for (k, v) in &m.xattrs {
            records.extend(pax_record(k, v));
        }
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::XHeader);
        h.set_path("PaxHeader")?;
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(records.len() as u64);
        h.set_cksum();
        b.append(&h, records.as_slice())?;
    }
    let mut h = tar::Header::new_gnu();
    h.set_uid(m.uid);
    h.set_gid(m.gid);
    h.set_mtime(m.mtime.min(sde));
    h.set_mode(m.mode);
    if let Some(leader) = link_to {
        h.set_entry_type(tar::EntryType::Link);
        h.set_size(0);
        return b.append_link(&mut h, path, leader);
    }
    let kind = if m.kind == tar::EntryType::Link {
        tar::EntryType::Regular
    } else {
        m.kind
    };
    h.set_entry_type(kind);
    match kind {
        tar::EntryType::Directory => {
            h.set_size(0);
            b.append_data(&mut h, format!("{path}/"), io::empty())
        }
        tar::EntryType::Symlink => {
            h.set_size(0);
            b.append_link(&mut h, path, m.link.as_deref().unwrap_or_default())
        }
        tar::EntryType::Char | tar::EntryType::Block => {
            h.set_size(0);
            h.set_device_major(m.dev.0)?;
            h.set_device_minor(m.dev.1)?;
            b.append_data(&mut h, path, io::empty())
        }
        tar::EntryType::Fifo => {
            h.set_size(0);
            b.append_data(&mut h, path, io::empty())
        }
        _ => {
            if let Some(c) = &m.content {
                h.set_size(c.len() as u64);
                return b.append_data(&mut h, path, c.as_slice());
            }
            h.set_size(m.size);
            data.seek(SeekFrom::Start(m.data_pos))?;
            if path == "var/lib/dpkg/status" {
                let mut buf = Vec::with_capacity(m.size as usize);
                data.by_ref().take(m.size).read_to_end(&mut buf)?;
                b.append_data(&mut h, path, buf.as_slice())?;
                *dpkg_status = Some(buf);
                Ok(())
            } else {
                b.append_data(&mut h, path, data.by_ref().take(m.size))
            }
        }
    }
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    // "<len> <key>=<value>\n", where <len> counts the whole record including itself.
    let rest = 1 + key.len() + 1 + value.len() + 1;
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// Counts and hashes what passes through.
pub struct HashWriter<W> {
    pub inner: W,
    pub hash: Sha256,
    pub size: u64,
}

impl<W: Write> HashWriter<W> {
    /// The digest and size of everything written.
    pub fn digest(&self) -> (Digest, u64) {
        (Digest::from_hash(&self.hash.clone().finalize()), self.size)
    }

    pub fn new(inner: W) -> Self {
        HashWriter {
            inner,
            hash: Sha256::new(),
            size: 0,
        }
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// The gzip settings that are part of `OUTPUT_FORMAT`: zlib-rs, level 6, header with
/// mtime 0, no name, OS byte 255.
pub fn gzip<W: Write>(w: W) -> flate2::write::GzEncoder<W> {
    flate2::GzBuilder::new()
        .operating_system(255)
        .mtime(0)
        .write(w, flate2::Compression::new(6))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(kind: tar::EntryType, mode: u32, mtime: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_mtime(mtime);
        h.set_uid(1000);
        h.set_gid(1000);
        h.set_username("builder").unwrap();
        h.set_size(0);
        h
    }

    /// The same tree in a different order, with other mtimes after the epoch and other
    /// user names, must give the same canonical bytes.
    fn layer(order: &[&str], late_mtime: u64) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for name in order {
            match *name {
                "etc/" => b
                    .append_data(
                        &mut header(tar::EntryType::Directory, 0o755, late_mtime),
                        "etc/",
                        io::empty(),
                    )
                    .unwrap(),
                "etc/hostname" => {
                    let mut h = header(tar::EntryType::Regular, 0o644, 50);
                    h.set_size(3);
                    b.append_data(&mut h, "./etc/hostname", &b"kci"[..])
                        .unwrap()
                }
                "etc/link" => b
                    .append_link(
                        &mut header(tar::EntryType::Link, 0o644, 50),
                        "etc/link",
                        "etc/hostname",
                    )
                    .unwrap(),
                "var/log/dpkg.log" => {
                    let mut h = header(tar::EntryType::Regular, 0o644, late_mtime);
                    h.set_size(4);
                    b.append_data(&mut h, "var/log/dpkg.log", &b"noise"[..4])
                        .unwrap()
                }
                "etc/shadow" => {
                    let body = format!("root:*:{}:0:99999:7:::\n", late_mtime / 86400);
                    let mut h = header(tar::EntryType::Regular, 0o640, late_mtime);
                    h.set_size(body.len() as u64);
                    b.append_data(&mut h, "etc/shadow", body.as_bytes())
                        .unwrap()
                }
                _ => unreachable!(),
            }
        }
        b.into_inner().unwrap()
    }

    fn canon(bytes: &[u8]) -> (Vec<u8>, Canonical) {
        let mut f = tempfile::tempfile().unwrap();
        f.write_all(bytes).unwrap();
        let mut out = Vec::new();
        let c = canonicalize(Section::whole(f).unwrap(), 100, &mut out).unwrap();
        (out, c)
    }

    #[test]
    fn order_times_names_and_noise_do_not_change_the_bytes() {
        let (a, ca) = canon(&layer(
            &[
                "etc/",
                "etc/hostname",
                "etc/link",
                "etc/shadow",
                "var/log/dpkg.log",
            ],
            10_000_000,
        ));
        let (b, cb) = canon(&layer(
            &[
                "var/log/dpkg.log",
                "etc/shadow",
                "etc/hostname",
                "etc/link",
                "etc/",
            ],
            20_000_000,
        ));
        assert_eq!(a, b);
        assert_eq!(ca.diff_id, cb.diff_id);
        assert_eq!(ca.diff_id, Digest::from_hash(&Sha256::digest(&a)));
        let mut ar = tar::Archive::new(a.as_slice());
        let got: Vec<(String, u64, u64, String)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let mut body = String::new();
                e.read_to_string(&mut body).unwrap();
                let h = e.header();
                (
                    e.path().unwrap().display().to_string(),
                    h.mtime().unwrap(),
                    h.uid().unwrap(),
                    body,
                )
            })
            .collect();
        assert_eq!(
            got,
            [
                ("etc/".to_owned(), 100, 1000, String::new()),
                ("etc/hostname".into(), 50, 1000, "kci".into()),
                ("etc/link".into(), 50, 1000, String::new()),
                (
                    "etc/shadow".into(),
                    100,
                    1000,
                    "root:*:0:0:99999:7:::\n".into()
                ),
            ]
        );
    }

    #[test]
    fn a_hard_link_sorting_before_its_target_carries_the_data() {
        let mut b = tar::Builder::new(Vec::new());
        let mut h = header(tar::EntryType::Regular, 0o755, 1);
        h.set_size(2);
        b.append_data(&mut h, "usr/bin/zz", &b"hi"[..]).unwrap();
        b.append_link(
            &mut header(tar::EntryType::Link, 0o755, 1),
            "usr/bin/aa",
            "usr/bin/zz",
        )
        .unwrap();
        let (out, _) = canon(&b.into_inner().unwrap());
        let mut ar = tar::Archive::new(out.as_slice());
        let e: Vec<(String, tar::EntryType, Option<String>)> = ar
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (
                    e.path().unwrap().display().to_string(),
                    e.header().entry_type(),
                    e.link_name().unwrap().map(|l| l.display().to_string()),
                )
            })
            .collect();
        assert_eq!(
            e,
            [
                ("usr/bin/aa".into(), tar::EntryType::Regular, None),
                (
                    "usr/bin/zz".into(),
                    tar::EntryType::Link,
                    Some("usr/bin/aa".into())
                )
            ]
        );
    }

    #[test]
    fn a_repeated_path_keeps_its_last_copy() {
        let mut b = tar::Builder::new(Vec::new());
        for body in [&b"old"[..], &b"new"[..]] {
            let mut h = header(tar::EntryType::Regular, 0o644, 1);
            h.set_size(3);
            b.append_data(&mut h, "etc/motd", body).unwrap();
        }
        let (out, c) = canon(&b.into_inner().unwrap());
        assert_eq!(c.entries, 1);
        let mut ar = tar::Archive::new(out.as_slice());
        let mut e = ar.entries().unwrap().next().unwrap().unwrap();
        let mut body = String::new();
        e.read_to_string(&mut body).unwrap();
        assert_eq!(body, "new");
    }

    #[test]
    fn pax_record_length_counts_itself() {
        let r = pax_record("SCHILY.xattr.security.capability", b"\x01\x02");
        let text = String::from_utf8_lossy(&r);
        let len: usize = text.split(' ').next().unwrap().parse().unwrap();
        assert_eq!(len, r.len());
        assert_eq!(pax_record("k", b"v"), b"6 k=v\n");
    }
}
