//! The bytes of KernelCI's rootfs files, from what the builder container leaves on disk.
//!
//! | output                | from                                   | function             |
//! |-----------------------|----------------------------------------|----------------------|
//! | `full.rootfs.tar.xz`  | canonical tar of the whole tree        | [`tar_xz`]           |
//! | `full.rootfs.cpio.gz` | canonical tar of the whole tree        | [`cpio_gz_from_tar`] |
//! | `rootfs.cpio.gz`      | canonical tar of the stripped tree     | [`cpio_gz_from_tar`] |
//! | `initrd.cpio.gz`      | `mkinitramfs` output                   | [`initrd`]           |
//! | `rootfs.ext4.xz`      | raw ext4 image                         | [`xz_file`]          |
//!
//! Every output is a function of the input bytes and `SOURCE_DATE_EPOCH` only: never of the
//! clock, the thread count, the machine or directory order. Everything streams (memory
//! grows with the number of entries, not with their size), is hashed while written, and
//! lands under its final name by a rename only once complete.
//!
//! ## Canonical cpio rules ("cpio=newc-rules-1" in [`ROOTFS_OUTPUT_FORMAT`])
//! - newc ("070701"), check field 0, uppercase hex, 4-byte padding, a `TRAILER!!!` entry,
//!   the whole archive padded with zeros to a multiple of 512 bytes.
//! - Entries sorted bytewise by path (a parent before its children); a repeated path keeps
//!   its last copy. The root comes first, named `.`; other names have no leading `./` or
//!   `/`. A missing root is written as a directory 0755 owned by 0:0.
//! - Inode numbers count from 1 in entry order. Hard-linked regular files are written the
//!   GNU cpio way: every member carries the group's inode number and `nlink` = the number
//!   of members, and only the last member (in entry order) carries the data; all members
//!   take the metadata of the first. Every other entry has `nlink` 1.
//! - mtime = min(mtime, `SOURCE_DATE_EPOCH`); numeric uid/gid as given; dev major/minor 0;
//!   rdev major/minor for character and block devices, else 0; symlinks store their target
//!   as data.
//! - Extended attributes cannot be carried by newc and are dropped (file capabilities set
//!   with `setcap` do not survive into a cpio rootfs; they do in `full.rootfs.tar.xz`).

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::Path;

use crate::core::names::Digest;
use crate::layer::{self, HashWriter};
use crate::rootfs::cpio;

/// xz preset (compression level) of the `.xz` outputs unless a recipe sets `xz-preset`:
/// KernelCI's `tar cJf` used xz's default, 6. The preset is a key fact of its own.
pub const XZ_PRESET: u32 = crate::core::rootfs_recipe::DEFAULT_XZ_PRESET;
/// Uncompressed size of each xz block: fixed, so the multi-threaded encoder's output does
/// not depend on the number of threads.
pub const XZ_BLOCK_SIZE: u64 = 24 << 20;
/// The format fingerprint that enters the cache key: the cpio rules version, the gzip
/// backend, version and level, and the xz library (the Rust binding, and liblzma-sys whose
/// version pins the bundled C liblzma, 5.8.4 for 0.4.9, built statically), preset, block
/// size and check. Change it whenever any of them changes the bytes; a unit test fails when
/// Cargo.lock's versions differ from the ones named here.
pub const ROOTFS_OUTPUT_FORMAT: &str = "kci-rootfs-v1 cpio=newc-rules-1 \
     gzip=zlib-rs-0.6.8 level=6 \
     xz=liblzma-0.4.9 liblzma-sys-0.4.9 block=24MiB check=crc64";

/// One output file: its name (the final path component), size and sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    pub name: String,
    pub size: u64,
    pub sha256: Digest,
}

/// `full.rootfs.tar.xz`: the canonical tar (already the bytes of the tree), xz-compressed.
pub fn tar_xz(canonical_tar: &Path, out: &Path, preset: u32, threads: u32) -> io::Result<Artifact> {
    xz_file(canonical_tar, out, preset, threads)
}

/// `rootfs.ext4.xz` (or any file): `input` xz-compressed with the multi-threaded encoder,
/// `preset` (0–9), blocks of [`XZ_BLOCK_SIZE`], CRC64, `threads` encoder threads (the
/// bytes are the same for any number; the memory is not, see [`xz_thread_memory`]).
pub fn xz_file(input: &Path, out: &Path, preset: u32, threads: u32) -> io::Result<Artifact> {
    let mut src = File::open(input)?;
    write_output(out, |w| xz_copy(&mut src, w, threads.max(1), preset))
}

/// What one more encoder thread of [`xz_file`] costs in memory, by liblzma's own account:
/// its match finder and dictionary, its block's input buffer and its output buffer.
pub fn xz_thread_memory(preset: u32) -> u64 {
    let usage = |threads| {
        liblzma::stream::MtStreamBuilder::new()
            .threads(threads)
            .block_size(XZ_BLOCK_SIZE)
            .preset(preset)
            .memusage()
    };
    usage(2).saturating_sub(usage(1))
}

/// Compresses everything `src` yields into `w` with `threads` encoder threads.
fn xz_copy(src: &mut dyn Read, w: &mut dyn Write, threads: u32, preset: u32) -> io::Result<()> {
    let stream = liblzma::stream::MtStreamBuilder::new()
        .threads(threads)
        .block_size(XZ_BLOCK_SIZE)
        .preset(preset)
        .check(liblzma::stream::Check::Crc64)
        .timeout_ms(0)
        .encoder()
        .map_err(io::Error::other)?;
    let mut enc = liblzma::write::XzEncoder::new_stream(w, stream);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        enc.write_all(&buf[..n])?;
    }
    enc.finish()?;
    Ok(())
}

/// `full.rootfs.cpio.gz` and `rootfs.cpio.gz`: the entries of a tar (normally one written
/// by [`layer::canonicalize`]) as a canonical newc archive (see the module rules),
/// gzip-compressed with [`layer::gzip`]. Xattrs (PAX records) are dropped; entry types
/// other than file, directory, symlink, hard link, device and FIFO are skipped.
pub fn cpio_gz_from_tar(canonical_tar: &Path, out: &Path, sde: u64) -> io::Result<Artifact> {
    let nodes = nodes_from_tar(File::open(canonical_tar)?)?;
    let mut src = Source::new(File::open(canonical_tar)?)?;
    write_output(out, |w| write_cpio_gz(nodes, &mut src, sde, w))
}

/// `initrd.cpio.gz`: the `mkinitramfs` output re-canonicalised. The input is read the way
/// the kernel reads an initramfs: a sequence of newc archives ("070701" or "070702"), each
/// either uncompressed or inside gzip (consecutive gzip members form one stream), with
/// zero padding between them. All archives are merged (a later entry replaces an earlier
/// one of the same path; hard links are grouped per archive, as the kernel does), and
/// written as one canonical archive (module rules), gzip-compressed with [`layer::gzip`].
/// File data is spooled to an unnamed temporary file beside `out`. Malformed input is an
/// `InvalidData` error naming what is wrong and at which offset.
pub fn initrd(mkinitramfs_output: &Path, out: &Path, sde: u64) -> io::Result<Artifact> {
    let spool = tempfile::tempfile_in(out_dir(out))?;
    let nodes = {
        let mut w = BufWriter::with_capacity(1 << 20, &spool);
        let nodes = nodes_from_initramfs(File::open(mkinitramfs_output)?, &mut w)?;
        w.flush()?;
        nodes
    };
    let mut src = Source::new(spool)?;
    write_output(out, |w| write_cpio_gz(nodes, &mut src, sde, w))
}

// ---------------------------------------------------------------------------------------
// Output files

fn out_dir(out: &Path) -> &Path {
    match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Runs `fill` on a hashing writer into a temporary file beside `out`, then syncs the file,
/// makes it 0644 (minus the umask) and renames it to `out`, the directory synced too. On
/// error the temporary file is removed.
fn write_output(
    out: &Path,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> io::Result<Artifact> {
    let name = out
        .file_name()
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("output path {} has no file name", out.display()),
            )
        })?
        .to_string_lossy()
        .into_owned();
    let tmp = crate::fsutil::temp_for(out_dir(out), out)?;
    let mut hw = HashWriter::new(BufWriter::with_capacity(1 << 20, tmp.as_file()));
    fill(&mut hw)?;
    hw.flush()?;
    let (sha256, size) = hw.digest();
    drop(hw);
    crate::fsutil::persist(tmp, out)?;
    Ok(Artifact { name, size, sha256 })
}

fn write_cpio_gz(
    nodes: Vec<Node>,
    src: &mut Source,
    sde: u64,
    w: &mut dyn Write,
) -> io::Result<()> {
    let gz = BufWriter::with_capacity(256 << 10, layer::gzip(w));
    let gz = write_cpio(nodes, src, sde, gz)?
        .into_inner()
        .map_err(|e| e.into_error())?;
    gz.finish()?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The canonical archive

/// Where an entry's data is.
#[derive(Debug, Clone)]
enum Data {
    Empty,
    Inline(Vec<u8>),
    /// A byte range of the [`Source`].
    At {
        offset: u64,
        len: u64,
    },
}

impl Data {
    fn len(&self) -> u64 {
        match self {
            Data::Empty => 0,
            Data::Inline(v) => v.len() as u64,
            Data::At { len, .. } => *len,
        }
    }
}

/// One entry of the archive to write.
#[derive(Debug, Clone)]
struct Node {
    /// Normalised path: no leading `./` or `/`, no trailing `/`; empty for the root.
    path: Vec<u8>,
    /// File type and permission bits.
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: u64,
    rdev: (u32, u32),
    data: Data,
    /// Hard-link group of a regular file.
    group: Option<u64>,
}

/// A seekable file read mostly sequentially: seeks within the buffer are free.
struct Source {
    r: BufReader<File>,
    pos: u64,
}

impl Source {
    fn new(mut f: File) -> io::Result<Source> {
        f.rewind()?;
        Ok(Source {
            r: BufReader::with_capacity(1 << 20, f),
            pos: 0,
        })
    }

    fn goto(&mut self, offset: u64) -> io::Result<()> {
        if offset != self.pos {
            let delta = offset as i128 - self.pos as i128;
            match i64::try_from(delta) {
                Ok(d) => self.r.seek_relative(d)?,
                Err(_) => {
                    self.r.seek(SeekFrom::Start(offset))?;
                }
            }
            self.pos = offset;
        }
        Ok(())
    }
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

fn normalise(p: &[u8]) -> Vec<u8> {
    let mut s = p;
    loop {
        if let Some(r) = s.strip_prefix(b"./") {
            s = r;
        } else if let Some(r) = s.strip_prefix(b"/") {
            s = r;
        } else {
            break;
        }
    }
    while let Some(r) = s.strip_suffix(b"/") {
        s = r;
    }
    if s == b"." {
        s = b"";
    }
    s.to_vec()
}

fn too_big(what: &str, path: &[u8], v: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{}: {what} {v} does not fit newc's 32-bit field",
            String::from_utf8_lossy(path)
        ),
    )
}

fn u32_field(what: &str, path: &[u8], v: u64) -> io::Result<u32> {
    u32::try_from(v).map_err(|_| too_big(what, path, v))
}

/// Writes `nodes` as a canonical newc archive (module rules) into `w`, reading data from
/// `src`, and returns `w`.
fn write_cpio<W: Write>(mut nodes: Vec<Node>, src: &mut Source, sde: u64, w: W) -> io::Result<W> {
    nodes.sort_by(|a, b| a.path.cmp(&b.path));
    // The sort is stable: of each run of equal paths keep the last.
    nodes.dedup_by(|later, kept| {
        let same = later.path == kept.path;
        if same {
            std::mem::swap(later, kept);
        }
        same
    });
    if nodes.first().is_none_or(|n| !n.path.is_empty()) {
        nodes.insert(
            0,
            Node {
                path: Vec::new(),
                mode: cpio::S_IFDIR | 0o755,
                uid: 0,
                gid: 0,
                mtime: sde,
                rdev: (0, 0),
                data: Data::Empty,
                group: None,
            },
        );
    }
    let mut members: HashMap<u64, u32> = HashMap::new();
    for g in nodes.iter().filter_map(|n| n.group) {
        *members.entry(g).or_default() += 1;
    }
    // Group -> (inode, members still to write, index of the first member).
    let mut open: HashMap<u64, (u32, u32, usize)> = HashMap::new();
    let mut next_ino: u32 = 0;
    let mut out = cpio::Writer::new(w);
    for i in 0..nodes.len() {
        let n = &nodes[i];
        let group = n.group.filter(|g| members[g] > 1);
        let (ino, nlink, meta, carries_data) = match group {
            Some(g) => {
                let count = members[&g];
                let entry = open.entry(g).or_insert_with(|| {
                    next_ino += 1;
                    (next_ino, count, i)
                });
                entry.1 -= 1;
                (entry.0, count, &nodes[entry.2], entry.1 == 0)
            }
            None => {
                next_ino += 1;
                (next_ino, 1, n, true)
            }
        };
        let name: &[u8] = if n.path.is_empty() { b"." } else { &n.path };
        let filesize = if carries_data { n.data.len() } else { 0 };
        let h = cpio::Header {
            ino,
            mode: meta.mode,
            uid: meta.uid,
            gid: meta.gid,
            nlink,
            mtime: u32_field("mtime", name, meta.mtime.min(sde))?,
            filesize: u32_field("size", name, filesize)?,
            devmajor: 0,
            devminor: 0,
            rdevmajor: meta.rdev.0,
            rdevminor: meta.rdev.1,
            check: 0,
        };
        match (&n.data, carries_data) {
            (Data::Inline(v), true) => out.append(&h, name, &mut v.as_slice())?,
            (Data::At { offset, .. }, true) => {
                src.goto(*offset)?;
                out.append(&h, name, src)?
            }
            _ => out.append(&h, name, &mut io::empty())?,
        }
    }
    out.finish()
}

// ---------------------------------------------------------------------------------------
// Reading a tar

fn nodes_from_tar(file: File) -> io::Result<Vec<Node>> {
    use tar::EntryType as T;
    let mut ar = tar::Archive::new(file);
    let mut nodes: Vec<Node> = Vec::new();
    // Latest node index of each path, for hard links.
    let mut by_path: HashMap<Vec<u8>, usize> = HashMap::new();
    let mut groups: u64 = 0;
    for e in ar.entries_with_seek()? {
        let e = e?;
        let h = e.header();
        let kind = h.entry_type();
        let path = normalise(&e.path_bytes());
        let type_bits = match kind {
            T::Regular | T::Continuous => cpio::S_IFREG,
            T::Directory => cpio::S_IFDIR,
            T::Symlink => cpio::S_IFLNK,
            T::Char => cpio::S_IFCHR,
            T::Block => cpio::S_IFBLK,
            T::Fifo => cpio::S_IFIFO,
            T::Link => {
                let target = normalise(&e.link_name_bytes().unwrap_or_default());
                let Some(&t) = by_path.get(&target) else {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!(
                            "hard link {} -> {}: target not earlier in the tar",
                            String::from_utf8_lossy(&path),
                            String::from_utf8_lossy(&target)
                        ),
                    ));
                };
                let mut node = nodes[t].clone();
                if node.mode & cpio::S_IFMT == cpio::S_IFREG {
                    let g = *nodes[t].group.get_or_insert_with(|| {
                        groups += 1;
                        groups
                    });
                    node.group = Some(g);
                }
                node.path = path.clone();
                by_path.insert(path, nodes.len());
                nodes.push(node);
                continue;
            }
            _ => continue,
        };
        let data = match kind {
            T::Regular | T::Continuous => Data::At {
                offset: e.raw_file_position(),
                len: e.size(),
            },
            T::Symlink => Data::Inline(e.link_name_bytes().unwrap_or_default().into_owned()),
            _ => Data::Empty,
        };
        let rdev = if matches!(kind, T::Char | T::Block) {
            (
                h.device_major()?.unwrap_or(0),
                h.device_minor()?.unwrap_or(0),
            )
        } else {
            (0, 0)
        };
        let node = Node {
            mode: type_bits | (h.mode()? & 0o7777),
            uid: u32_field("uid", &path, h.uid()?)?,
            gid: u32_field("gid", &path, h.gid()?)?,
            mtime: h.mtime()?,
            rdev,
            data,
            group: None,
            path: path.clone(),
        };
        by_path.insert(path, nodes.len());
        nodes.push(node);
    }
    Ok(nodes)
}

// ---------------------------------------------------------------------------------------
// Reading an initramfs

/// A `BufRead` that counts the bytes consumed.
struct Counting<R> {
    inner: R,
    pos: u64,
}

impl<R: BufRead> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl<R: BufRead> BufRead for Counting<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }
    fn consume(&mut self, n: usize) {
        self.inner.consume(n);
        self.pos += n as u64;
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];

/// Consecutive gzip members decoded as one stream; stops (without consuming) at the first
/// byte that does not start another member.
struct GzRun<'a, R: BufRead> {
    dec: Option<flate2::bufread::GzDecoder<&'a mut Counting<R>>>,
    start: u64,
}

impl<R: BufRead> Read for GzRun<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let Some(dec) = self.dec.as_mut() else {
                return Ok(0);
            };
            let n = dec.read(buf).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("gzip stream at byte {}: {e}", self.start),
                )
            })?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            let raw = self.dec.take().expect("decoder").into_inner();
            let next = raw.fill_buf()?;
            if next.first() == Some(&GZIP_MAGIC[0])
                && next.get(1).is_none_or(|&b| b == GZIP_MAGIC[1])
            {
                self.dec = Some(flate2::bufread::GzDecoder::new(raw));
            }
        }
    }
}

/// Reads every archive of an initramfs; data goes to `spool`, nodes point into it.
fn nodes_from_initramfs(file: File, spool: &mut dyn Write) -> io::Result<Vec<Node>> {
    let mut base = Counting {
        inner: BufReader::with_capacity(1 << 20, file),
        pos: 0,
    };
    let mut st = InitramfsState {
        nodes: Vec::new(),
        spooled: 0,
        archive: 0,
        groups: HashMap::new(),
        group_data: HashMap::new(),
    };
    loop {
        let at = base.pos;
        let next = cpio::Reader::with_offset(&mut base, at, "").skip_zeros()?;
        let at = base.pos;
        match next {
            None => break,
            Some(b) if b == GZIP_MAGIC[0] => {
                let run = GzRun {
                    dec: Some(flate2::bufread::GzDecoder::new(&mut base)),
                    start: at,
                };
                let mut r = cpio::Reader::new(
                    BufReader::with_capacity(256 << 10, run),
                    format!("gzip stream at byte {at}: decompressed "),
                );
                while r.skip_zeros()?.is_some() {
                    st.read_archive(&mut r, spool)?;
                }
            }
            Some(b'0') => {
                let mut r = cpio::Reader::with_offset(&mut base, at, "");
                st.read_archive(&mut r, spool)?;
            }
            Some(b) => {
                let what = match b {
                    0x28 => " (zstd?)",
                    0xfd => " (xz?)",
                    0x5d => " (lzma?)",
                    0x42 => " (bzip2?)",
                    0x02 | 0x04 => " (lz4?)",
                    0x89 => " (lzo?)",
                    _ => "",
                };
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "offset {at}: byte 0x{b:02x}{what} starts neither a newc cpio archive \
                         nor a gzip stream (only gzip or uncompressed initramfs is supported)"
                    ),
                ));
            }
        }
    }
    let InitramfsState {
        mut nodes,
        group_data,
        ..
    } = st;
    for n in &mut nodes {
        if let Some(g) = n.group {
            n.data = group_data.get(&g).cloned().unwrap_or(Data::Empty);
        }
    }
    Ok(nodes)
}

struct InitramfsState {
    nodes: Vec<Node>,
    spooled: u64,
    archive: u64,
    /// (archive, ino, dev major, dev minor, mode) -> group of hard-linked files.
    groups: HashMap<(u64, u32, u32, u32, u32), u64>,
    /// The data of each group: the last member that had any.
    group_data: HashMap<u64, Data>,
}

impl InitramfsState {
    /// Reads one archive, up to and including its trailer.
    fn read_archive<R: BufRead>(
        &mut self,
        r: &mut cpio::Reader<R>,
        spool: &mut dyn Write,
    ) -> io::Result<()> {
        self.archive += 1;
        loop {
            let e = r.next_entry()?;
            if e.name == cpio::TRAILER {
                r.read_data(&e, &mut io::sink())?;
                return Ok(());
            }
            let h = e.header;
            let offset = self.spooled;
            let len = u64::from(h.filesize);
            let kind = h.mode & cpio::S_IFMT;
            let bad = |msg: &str| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{}offset {}: {:?}: {msg}",
                        r.context(),
                        e.offset,
                        String::from_utf8_lossy(&e.name)
                    ),
                )
            };
            match kind {
                cpio::S_IFREG | cpio::S_IFLNK => {}
                cpio::S_IFDIR | cpio::S_IFCHR | cpio::S_IFBLK | cpio::S_IFIFO | cpio::S_IFSOCK => {
                    if len != 0 {
                        return Err(bad("non-regular entry with data"));
                    }
                }
                _ => return Err(bad(&format!("unknown file type in mode {:o}", h.mode))),
            }
            r.read_data(&e, spool)?;
            self.spooled += len;
            let data = if len == 0 {
                Data::Empty
            } else {
                Data::At { offset, len }
            };
            let group = if kind == cpio::S_IFREG && h.nlink >= 2 {
                let key = (self.archive, h.ino, h.devmajor, h.devminor, h.mode);
                let next = self.groups.len() as u64 + 1;
                let g = *self.groups.entry(key).or_insert(next);
                if len > 0 {
                    self.group_data.insert(g, data.clone());
                }
                Some(g)
            } else {
                None
            };
            let path = normalise(&e.name);
            let rdev = if matches!(kind, cpio::S_IFCHR | cpio::S_IFBLK) {
                (h.rdevmajor, h.rdevminor)
            } else {
                (0, 0)
            };
            self.nodes.push(Node {
                path,
                mode: h.mode & (cpio::S_IFMT | 0o7777),
                uid: h.uid,
                gid: h.gid,
                mtime: u64::from(h.mtime),
                rdev,
                data,
                group,
            });
        }
    }
}

#[cfg(test)]
mod tests;
