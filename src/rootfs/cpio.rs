//! The newc cpio format ("070701", and "070702" on input), as written by GNU `cpio -H newc`
//! and read by the Linux initramfs unpacker.
//!
//! An entry is a 110-byte ASCII header (the magic, then 13 fields of 8 hex digits), the
//! NUL-terminated name (`namesize` counts the NUL), zero padding to a multiple of 4 bytes
//! from the start of the stream, the data, and zero padding to a multiple of 4 again. An
//! archive ends with an entry named `TRAILER!!!`. The writer pads the whole archive with
//! zeros to a multiple of 512 bytes, as GNU cpio does.
//!
//! Only the framing lives here; which entries to write, in which order and with which
//! metadata is decided by [`crate::rootfs::artifact`].

use std::io::{self, BufRead, Read, Write};

/// Magic of a newc archive without checksums.
pub const MAGIC_NEWC: &[u8; 6] = b"070701";
/// Magic of a newc archive whose `check` field is the byte sum of the data.
pub const MAGIC_CRC: &[u8; 6] = b"070702";
/// Name of the entry that ends an archive.
pub const TRAILER: &[u8] = b"TRAILER!!!";
/// Size of the fixed part of a header.
pub const HEADER_LEN: usize = 110;

/// File type bits of `mode`.
pub const S_IFMT: u32 = 0o170000;
pub const S_IFSOCK: u32 = 0o140000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFIFO: u32 = 0o010000;

/// The numeric fields of a newc header (all 32-bit, written as 8 hex digits).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    pub ino: u32,
    /// File type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub filesize: u32,
    pub devmajor: u32,
    pub devminor: u32,
    pub rdevmajor: u32,
    pub rdevminor: u32,
    /// Byte sum of the data for "070702"; 0 for "070701".
    pub check: u32,
}

fn pad4(pos: u64) -> usize {
    ((4 - (pos % 4)) % 4) as usize
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// Writes a newc ("070701") archive. Positions (for padding) count from the first byte
/// written through this writer.
pub struct Writer<W> {
    inner: W,
    pos: u64,
}

impl<W: Write> Writer<W> {
    pub fn new(inner: W) -> Self {
        Writer { inner, pos: 0 }
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.inner.write_all(bytes)?;
        self.pos += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = pad4(self.pos);
        self.put(&[0u8; 3][..n])
    }

    /// Appends one entry: `data` must yield exactly `h.filesize` bytes (more is ignored,
    /// fewer is an error). `name` must not contain NUL.
    pub fn append(&mut self, h: &Header, name: &[u8], data: &mut dyn Read) -> io::Result<()> {
        if name.is_empty() || name.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("cpio: bad entry name {:?}", String::from_utf8_lossy(name)),
            ));
        }
        let namesize = u32::try_from(name.len() + 1)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "cpio: name too long"))?;
        let mut head = Vec::with_capacity(HEADER_LEN + name.len() + 4);
        head.extend_from_slice(MAGIC_NEWC);
        for v in [
            h.ino,
            h.mode,
            h.uid,
            h.gid,
            h.nlink,
            h.mtime,
            h.filesize,
            h.devmajor,
            h.devminor,
            h.rdevmajor,
            h.rdevminor,
            namesize,
            h.check,
        ] {
            head.extend_from_slice(format!("{v:08X}").as_bytes());
        }
        head.extend_from_slice(name);
        head.push(0);
        self.put(&head)?;
        self.pad()?;
        let want = u64::from(h.filesize);
        let copied = io::copy(&mut data.take(want), &mut self.inner)?;
        self.pos += copied;
        if copied != want {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "cpio: {}: {copied} bytes of data, header says {want}",
                    String::from_utf8_lossy(name)
                ),
            ));
        }
        self.pad()
    }

    /// Writes the `TRAILER!!!` entry, pads the archive to a multiple of 512 bytes and
    /// returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        let h = Header {
            nlink: 1,
            ..Header::default()
        };
        self.append(&h, TRAILER, &mut io::empty())?;
        let rem = (self.pos % 512) as usize;
        if rem != 0 {
            self.put(&vec![0u8; 512 - rem])?;
        }
        self.inner.flush()?;
        Ok(self.inner)
    }

    /// Bytes written so far.
    pub fn position(&self) -> u64 {
        self.pos
    }
}

/// Reads newc archives ("070701" and "070702") from a buffered stream, counting the
/// offset of every byte so that errors can say where the input is broken.
pub struct Reader<R> {
    inner: R,
    pos: u64,
    /// Prefix for error messages ("gzip member at byte 1024: ").
    context: String,
}

/// What [`Reader::next_entry`] found.
#[derive(Debug)]
pub struct EntryHead {
    pub header: Header,
    pub name: Vec<u8>,
    /// Offset of the entry's magic in the stream.
    pub offset: u64,
    /// Whether the archive uses data checksums ("070702").
    pub crc: bool,
}

impl<R: BufRead> Reader<R> {
    pub fn new(inner: R, context: impl Into<String>) -> Self {
        Reader {
            inner,
            pos: 0,
            context: context.into(),
        }
    }

    /// A reader whose first byte is at offset `start` of its stream (padding is counted
    /// from the start of the stream).
    pub fn with_offset(inner: R, start: u64, context: impl Into<String>) -> Self {
        Reader {
            inner,
            pos: start,
            context: context.into(),
        }
    }

    /// The prefix of this reader's error messages.
    pub fn context(&self) -> &str {
        &self.context
    }

    /// The stream offset of the next byte.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// The underlying reader.
    pub fn into_inner(self) -> R {
        self.inner
    }

    fn err(&self, at: u64, msg: impl std::fmt::Display) -> io::Error {
        invalid(format!("{}offset {at}: {msg}", self.context))
    }

    /// Skips zero bytes (padding between concatenated archives). Returns the next byte
    /// without consuming it, or `None` at the end of the stream.
    pub fn skip_zeros(&mut self) -> io::Result<Option<u8>> {
        loop {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return Ok(None);
            }
            let zeros = buf.iter().take_while(|&&b| b == 0).count();
            if zeros < buf.len() {
                let next = buf[zeros];
                self.inner.consume(zeros);
                self.pos += zeros as u64;
                return Ok(Some(next));
            }
            let n = buf.len();
            self.inner.consume(n);
            self.pos += n as u64;
        }
    }

    fn read_exact_at(&mut self, buf: &mut [u8], what: &str) -> io::Result<()> {
        let at = self.pos;
        let mut done = 0;
        while done < buf.len() {
            match self.inner.read(&mut buf[done..]) {
                Ok(0) => {
                    return Err(self.err(
                        at,
                        format!("truncated {what}: {done} of {} bytes", buf.len()),
                    ))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn skip_pad(&mut self, what: &str) -> io::Result<()> {
        let n = pad4(self.pos);
        let mut pad = [0u8; 3];
        self.read_exact_at(&mut pad[..n], what)
    }

    /// Reads the next entry's header and name (and the padding after it). The caller then
    /// reads the data with [`Reader::read_data`]. The trailer is returned like any entry.
    pub fn next_entry(&mut self) -> io::Result<EntryHead> {
        let offset = self.pos;
        if !offset.is_multiple_of(4) {
            return Err(self.err(offset, "cpio header not aligned to 4 bytes"));
        }
        let mut raw = [0u8; HEADER_LEN];
        self.read_exact_at(&mut raw, "cpio header")?;
        let crc = match &raw[..6] {
            m if m == MAGIC_NEWC => false,
            m if m == MAGIC_CRC => true,
            m => {
                return Err(self.err(
                    offset,
                    format!(
                        "not a newc cpio header (magic {:?}; only 070701 and 070702 are read)",
                        String::from_utf8_lossy(m)
                    ),
                ))
            }
        };
        let mut f = [0u32; 13];
        for (i, v) in f.iter_mut().enumerate() {
            let field = &raw[6 + 8 * i..14 + 8 * i];
            *v = std::str::from_utf8(field)
                .ok()
                .filter(|s| s.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|s| u32::from_str_radix(s, 16).ok())
                .ok_or_else(|| {
                    self.err(
                        offset + 6 + 8 * i as u64,
                        format!(
                            "bad hex field {:?} in cpio header",
                            String::from_utf8_lossy(field)
                        ),
                    )
                })?;
        }
        let header = Header {
            ino: f[0],
            mode: f[1],
            uid: f[2],
            gid: f[3],
            nlink: f[4],
            mtime: f[5],
            filesize: f[6],
            devmajor: f[7],
            devminor: f[8],
            rdevmajor: f[9],
            rdevminor: f[10],
            check: f[12],
        };
        let namesize = f[11] as usize;
        if namesize == 0 || namesize > 64 * 1024 {
            return Err(self.err(offset, format!("bad cpio namesize {namesize}")));
        }
        let name_at = self.pos;
        let mut name = vec![0u8; namesize];
        self.read_exact_at(&mut name, "cpio name")?;
        if name.pop() != Some(0) || name.contains(&0) {
            return Err(self.err(
                name_at,
                "cpio name is not NUL-terminated (or holds a NUL) within namesize",
            ));
        }
        self.skip_pad("padding after cpio name")?;
        if !crc && header.check != 0 {
            return Err(self.err(offset, "070701 header with a non-zero check field"));
        }
        Ok(EntryHead {
            header,
            name,
            offset,
            crc,
        })
    }

    /// Copies the data of the entry `head` (just read by [`Reader::next_entry`]) into
    /// `out`, verifies the checksum of a "070702" regular file, and skips the padding after
    /// it.
    pub fn read_data(&mut self, head: &EntryHead, out: &mut dyn Write) -> io::Result<()> {
        let at = self.pos;
        let mut left = u64::from(head.header.filesize);
        let mut sum: u32 = 0;
        // GNU cpio sums the data of regular files only (a symlink's check field is 0).
        let checked = head.crc && head.header.mode & S_IFMT == S_IFREG;
        while left > 0 {
            let buf = self.inner.fill_buf()?;
            if buf.is_empty() {
                return Err(self.err(
                    at,
                    format!(
                        "truncated data of {:?}: {} of {} bytes",
                        String::from_utf8_lossy(&head.name),
                        u64::from(head.header.filesize) - left,
                        head.header.filesize
                    ),
                ));
            }
            let n = buf.len().min(left as usize);
            let chunk = &buf[..n];
            if checked {
                sum = chunk.iter().fold(sum, |s, &b| s.wrapping_add(u32::from(b)));
            }
            out.write_all(chunk)?;
            self.inner.consume(n);
            self.pos += n as u64;
            left -= n as u64;
        }
        if checked && sum != head.header.check {
            return Err(self.err(
                head.offset,
                format!(
                    "checksum mismatch for {:?}: header {:08X}, data {sum:08X}",
                    String::from_utf8_lossy(&head.name),
                    head.header.check
                ),
            ));
        }
        self.skip_pad("padding after cpio data")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_frames_entries_and_pads_to_512() {
        let mut w = Writer::new(Vec::new());
        let h = Header {
            ino: 1,
            mode: S_IFREG | 0o644,
            nlink: 1,
            filesize: 3,
            mtime: 0x10,
            ..Header::default()
        };
        w.append(&h, b"a", &mut &b"xyz"[..]).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len() % 512, 0);
        // header 110 + "a\0" = 112 (aligned), data 3 + 1 pad.
        assert_eq!(
            &out[..110],
            concat!(
                "070701", "00000001", "000081A4", "00000000", "00000000", "00000001", "00000010",
                "00000003", "00000000", "00000000", "00000000", "00000000", "00000002", "00000000"
            )
            .as_bytes()
        );
        assert_eq!(&out[110..112], b"a\0");
        assert_eq!(&out[112..116], b"xyz\0");
        assert_eq!(&out[116..122], b"070701");
        assert_eq!(&out[116 + 110..116 + 121], b"TRAILER!!!\0");

        let mut r = Reader::new(out.as_slice(), "");
        let e = r.next_entry().unwrap();
        assert_eq!((e.header, e.name.as_slice()), (h, &b"a"[..]));
        let mut data = Vec::new();
        r.read_data(&e, &mut data).unwrap();
        assert_eq!(data, b"xyz");
        let t = r.next_entry().unwrap();
        assert_eq!(t.name, TRAILER);
    }

    #[test]
    fn short_data_is_an_error() {
        let mut w = Writer::new(Vec::new());
        let h = Header {
            mode: S_IFREG,
            filesize: 5,
            ..Header::default()
        };
        assert!(w.append(&h, b"a", &mut &b"xy"[..]).is_err());
    }

    #[test]
    fn reader_names_the_offset_of_a_bad_header() {
        let mut w = Writer::new(Vec::new());
        w.append(
            &Header {
                mode: S_IFDIR | 0o755,
                ..Header::default()
            },
            b".",
            &mut io::empty(),
        )
        .unwrap();
        let mut bytes = w.finish().unwrap();
        bytes[112 + 20] = b'g'; // inside the trailer's header
        let mut r = Reader::new(bytes.as_slice(), "test: ");
        let e = r.next_entry().unwrap();
        r.read_data(&e, &mut io::sink()).unwrap();
        let err = r.next_entry().unwrap_err().to_string();
        assert!(err.starts_with("test: offset 126: bad hex field"), "{err}");

        let mut r = Reader::new(&b"070701000"[..], "");
        let err = r.next_entry().unwrap_err().to_string();
        assert!(err.contains("offset 0: truncated cpio header"), "{err}");
    }

    #[test]
    fn crc_archives_are_checked() {
        let mut raw = Vec::new();
        let fields = [
            1u32,
            S_IFREG | 0o644,
            0,
            0,
            1,
            0,
            2,
            0,
            0,
            0,
            0,
            2,
            0x41 + 0x42,
        ];
        raw.extend_from_slice(MAGIC_CRC);
        for f in fields {
            raw.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        raw.extend_from_slice(b"a\0AB\0\0");
        let mut r = Reader::new(raw.as_slice(), "");
        let e = r.next_entry().unwrap();
        assert!(e.crc);
        r.read_data(&e, &mut io::sink()).unwrap();

        let last = raw.len() - 3;
        raw[last] = b'C';
        let mut r = Reader::new(raw.as_slice(), "");
        let e = r.next_entry().unwrap();
        let err = r.read_data(&e, &mut io::sink()).unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
    }
}
