use super::*;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;
use std::process::{Command, Stdio};

use flate2::read::MultiGzDecoder;

const SDE: u64 = 1_000_000;

fn tool(name: &str) -> String {
    let ok = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "{name} is needed by this test: apt-get install -y {}",
        if name == "xz" { "xz-utils" } else { name }
    );
    name.to_owned()
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    MultiGzDecoder::new(File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn gzip_bytes(data: &[u8]) -> Vec<u8> {
    let mut gz = layer::gzip(Vec::new());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn run(cmd: &mut Command, stdin: &[u8]) -> Vec<u8> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn header(kind: tar::EntryType, mode: u32, mtime: u64) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_mtime(mtime);
    h.set_uid(0);
    h.set_gid(0);
    h.set_size(0);
    h
}

/// A small tree with every entry kind, in the given order; `late` is an mtime after SDE.
fn sample_tar(reverse: bool, late: u64) -> Vec<u8> {
    type Add = Box<dyn Fn(&mut tar::Builder<Vec<u8>>)>;
    let mut adds: Vec<Add> = vec![
        Box::new(|b| {
            b.append_data(
                &mut header(tar::EntryType::Directory, 0o755, 500),
                "etc/",
                io::empty(),
            )
            .unwrap()
        }),
        Box::new(|b| {
            let mut h = header(tar::EntryType::Regular, 0o640, 600);
            h.set_uid(1000);
            h.set_gid(42);
            h.set_size(4);
            b.append_data(&mut h, "etc/hostname", &b"kci\n"[..])
                .unwrap()
        }),
        Box::new(|b| {
            b.append_link(
                &mut header(tar::EntryType::Symlink, 0o777, 700),
                "etc/localtime",
                "/usr/share/zoneinfo/UTC",
            )
            .unwrap()
        }),
        Box::new(|b| {
            let mut h = header(tar::EntryType::Regular, 0o755, 800);
            h.set_size(5);
            b.append_data(&mut h, "bin/tool", &b"tool\n"[..]).unwrap()
        }),
        Box::new(|b| {
            b.append_link(
                &mut header(tar::EntryType::Link, 0o755, 800),
                "bin/alias",
                "bin/tool",
            )
            .unwrap()
        }),
        Box::new(|b| {
            b.append_data(
                &mut header(tar::EntryType::Directory, 0o755, 500),
                "bin/",
                io::empty(),
            )
            .unwrap()
        }),
        Box::new(|b| {
            let mut h = header(tar::EntryType::Char, 0o666, 900);
            h.set_device_major(1).unwrap();
            h.set_device_minor(3).unwrap();
            b.append_data(&mut h, "null", io::empty()).unwrap()
        }),
        Box::new(move |b| {
            let mut h = header(tar::EntryType::Regular, 0o644, late);
            h.set_size(3);
            b.append_data(&mut h, "etc/late", &b"new"[..]).unwrap()
        }),
    ];
    if reverse {
        // The hard link must still follow its target in a tar.
        adds.reverse();
        adds.swap(3, 4);
    }
    let mut b = tar::Builder::new(Vec::new());
    for add in &adds {
        add(&mut b);
    }
    b.into_inner().unwrap()
}

/// The tar as `layer::canonicalize` writes it.
fn canonical_tar(dir: &Path, raw: &[u8]) -> PathBuf {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(raw).unwrap();
    let p = dir.join(format!("canon-{}.tar", &Digest::of(raw).as_str()[7..19]));
    let out = File::create(&p).unwrap();
    layer::canonicalize(layer::Section::whole(f).unwrap(), SDE, BufWriter::new(out)).unwrap();
    p
}

#[test]
fn cpio_from_tar_extracts_with_gnu_cpio() {
    let cpio_bin = tool("cpio");
    let dir = tempfile::tempdir().unwrap();
    let tar = canonical_tar(dir.path(), &sample_tar(false, SDE + 12345));
    let out = dir.path().join("rootfs.cpio.gz");
    let art = cpio_gz_from_tar(&tar, &out, SDE).unwrap();
    assert_eq!(art.name, "rootfs.cpio.gz");
    assert_eq!(art.size, std::fs::metadata(&out).unwrap().len());
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(art.sha256, Digest::of(&bytes));
    let archive = gunzip(&out);
    assert_eq!(archive.len() % 512, 0);

    let listing = run(Command::new(&cpio_bin).args(["-t", "--quiet"]), &archive);
    assert_eq!(
        String::from_utf8(listing).unwrap(),
        ".\nbin\nbin/alias\nbin/tool\netc\netc/hostname\netc/late\netc/localtime\nnull\n"
    );

    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run(
        Command::new(&cpio_bin)
            .args(["-idm", "--no-absolute-filenames", "--quiet"])
            .current_dir(&x),
        &archive,
    );
    let meta = |p: &str| std::fs::symlink_metadata(x.join(p)).unwrap();
    assert_eq!(std::fs::read(x.join("etc/hostname")).unwrap(), b"kci\n");
    let m = meta("etc/hostname");
    assert_eq!(
        (m.mode() & 0o7777, m.uid(), m.gid(), m.mtime()),
        (0o640, 1000, 42, 600)
    );
    assert_eq!(meta("etc/late").mtime(), SDE as i64, "mtime clamped to SDE");
    assert_eq!(std::fs::read(x.join("etc/late")).unwrap(), b"new");
    assert_eq!(
        std::fs::read_link(x.join("etc/localtime")).unwrap(),
        Path::new("/usr/share/zoneinfo/UTC")
    );
    assert_eq!(meta("etc").mode() & 0o7777, 0o755);
    // (GNU cpio sets a directory's mtime before creating its contents, so the directory's
    // own mtime is checked on the header in `cpio_headers_follow_the_rules`.)
    let (a, t) = (meta("bin/alias"), meta("bin/tool"));
    assert_eq!(a.ino(), t.ino(), "hard link restored");
    assert_eq!(t.nlink(), 2);
    assert_eq!(std::fs::read(x.join("bin/alias")).unwrap(), b"tool\n");
    assert_eq!(t.mode() & 0o7777, 0o755);
    let n = meta("null");
    assert!(n.file_type().is_char_device());
    assert_eq!(n.rdev(), libc_makedev(1, 3));
}

fn libc_makedev(major: u64, minor: u64) -> u64 {
    // glibc's encoding of dev_t.
    ((major & 0xfffff000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffffff00) << 12)
        | (minor & 0xff)
}

/// The raw entries of an uncompressed newc archive.
fn entries(archive: &[u8]) -> Vec<(String, cpio::Header, Vec<u8>)> {
    let mut r = cpio::Reader::new(archive, "");
    let mut v = Vec::new();
    loop {
        let e = r.next_entry().unwrap();
        let mut data = Vec::new();
        r.read_data(&e, &mut data).unwrap();
        if e.name == cpio::TRAILER {
            assert_eq!(
                r.position() + r.into_inner().len() as u64,
                archive.len() as u64
            );
            return v;
        }
        v.push((String::from_utf8(e.name).unwrap(), e.header, data));
    }
}

#[test]
fn cpio_headers_follow_the_rules() {
    let dir = tempfile::tempdir().unwrap();
    let tar = canonical_tar(dir.path(), &sample_tar(false, SDE + 1));
    let out = dir.path().join("a.cpio.gz");
    cpio_gz_from_tar(&tar, &out, SDE).unwrap();
    let archive = gunzip(&out);
    let e = entries(&archive);
    let inos: Vec<(&str, u32, u32, u32)> = e
        .iter()
        .map(|(n, h, _)| (n.as_str(), h.ino, h.nlink, h.filesize))
        .collect();
    assert_eq!(
        inos,
        [
            (".", 1, 1, 0),
            ("bin", 2, 1, 0),
            ("bin/alias", 3, 2, 0),
            ("bin/tool", 3, 2, 5),
            ("etc", 4, 1, 0),
            ("etc/hostname", 5, 1, 4),
            ("etc/late", 6, 1, 3),
            ("etc/localtime", 7, 1, 23),
            ("null", 8, 1, 0),
        ]
    );
    assert_eq!(e[4].1.mtime, 500, "etc keeps its mtime");
    let root = &e[0].1;
    assert_eq!(
        (root.mode, root.uid, root.mtime),
        (cpio::S_IFDIR | 0o755, 0, SDE as u32)
    );
    let null = &e[8].1;
    assert_eq!(
        (null.mode, null.rdevmajor, null.rdevminor),
        (cpio::S_IFCHR | 0o666, 1, 3)
    );
    assert_eq!(e[7].2, b"/usr/share/zoneinfo/UTC");
    assert!(e.iter().all(|(_, h, _)| h.check == 0
        && h.devmajor == 0
        && h.devminor == 0
        && u64::from(h.mtime) <= SDE));
}

#[test]
fn same_input_same_bytes_and_the_clock_does_not_matter() {
    let dir = tempfile::tempdir().unwrap();
    let tar = canonical_tar(dir.path(), &sample_tar(false, SDE + 5));
    let a = cpio_gz_from_tar(&tar, &dir.path().join("a.cpio.gz"), SDE).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = cpio_gz_from_tar(&tar, &dir.path().join("b.cpio.gz"), SDE).unwrap();
    assert_eq!((a.sha256.clone(), a.size), (b.sha256, b.size));
    // Another input order and another late mtime: the canonical tar, and so the cpio, agree.
    let tar2 = canonical_tar(dir.path(), &sample_tar(true, SDE + 99_999));
    let c = cpio_gz_from_tar(&tar2, &dir.path().join("c.cpio.gz"), SDE).unwrap();
    assert_eq!(a.sha256, c.sha256);
    // The gzip header carries no clock and no name.
    let gz = std::fs::read(dir.path().join("a.cpio.gz")).unwrap();
    assert_eq!(&gz[..10], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 255]);
    // No temporary files left behind.
    let mut names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".gz") || n.ends_with(".tmp"))
        .collect();
    names.sort();
    assert_eq!(names, ["a.cpio.gz", "b.cpio.gz", "c.cpio.gz"]);
}

#[test]
fn a_raw_tar_with_a_dangling_hard_link_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    b.append_link(&mut header(tar::EntryType::Link, 0o644, 1), "a", "missing")
        .unwrap();
    let tar = dir.path().join("t.tar");
    std::fs::write(&tar, b.into_inner().unwrap()).unwrap();
    let err = cpio_gz_from_tar(&tar, &dir.path().join("o.cpio.gz"), SDE).unwrap_err();
    assert!(err.to_string().contains("hard link a -> missing"), "{err}");
    assert!(!dir.path().join("o.cpio.gz").exists());
}

// ---------------------------------------------------------------------------------------
// initrd

/// Makes a small tree under `root`, creating entries in `order`, with a hard link.
fn make_tree(root: &Path, files: &[(&str, &str)], reverse: bool) {
    std::fs::create_dir_all(root.join("conf")).unwrap();
    std::fs::create_dir_all(root.join("scripts/init-top")).unwrap();
    let mut files: Vec<_> = files.to_vec();
    if reverse {
        files.reverse();
    }
    for (p, body) in &files {
        let path = root.join(p);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, body).unwrap();
    }
    if root.join("init").exists() {
        std::fs::hard_link(root.join("init"), root.join("scripts/init-top/init-link")).unwrap();
    }
    std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
}

/// `cd root && find . | cpio -o -H newc` (find's order, not sorted).
fn gnu_cpio_archive(root: &Path) -> Vec<u8> {
    gnu_cpio_archive_as(root, "newc")
}

/// The same with another cpio format ("crc" writes 070702 with data checksums).
fn gnu_cpio_archive_as(root: &Path, format: &str) -> Vec<u8> {
    let list = run(Command::new("find").arg(".").current_dir(root), b"");
    run(
        Command::new(tool("cpio"))
            .args(["-o", "-H", format, "--quiet"])
            .current_dir(root),
        &list,
    )
}

const TREE: &[(&str, &str)] = &[
    ("init", "#!/bin/sh\necho init\n"),
    ("conf/initramfs.conf", "MODULES=most\n"),
    ("scripts/functions", "log() { :; }\n"),
    ("usr/bin/busybox", "ELF busybox"),
];

#[test]
fn initrd_is_canonical_whatever_the_times_inodes_and_order() {
    let dir = tempfile::tempdir().unwrap();
    let (t1, t2) = (dir.path().join("t1"), dir.path().join("t2"));
    make_tree(&t1, TREE, false);
    let a1 = gnu_cpio_archive(&t1);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    make_tree(&t2, TREE, true);
    // Different mtimes on purpose (both after SDE).
    run(
        Command::new("touch")
            .args(["-h", "-d", "@2000000000", "init", "conf", "bin"])
            .current_dir(&t2),
        b"",
    );
    let a2 = gnu_cpio_archive_as(&t2, "crc");
    assert_eq!(&a2[..6], cpio::MAGIC_CRC);
    assert_ne!(a1, a2, "the inputs differ");

    let (in1, in2) = (dir.path().join("in1.img"), dir.path().join("in2.img"));
    std::fs::write(&in1, gzip_bytes(&a1)).unwrap();
    std::fs::write(&in2, a2.clone()).unwrap(); // raw cpio is accepted too
    let o1 = initrd(&in1, &dir.path().join("o1.cpio.gz"), SDE).unwrap();
    let o2 = initrd(&in2, &dir.path().join("o2.cpio.gz"), SDE).unwrap();
    assert_eq!(o1.sha256, o2.sha256);
    assert_eq!(o1.name, "o1.cpio.gz");

    let archive = gunzip(&dir.path().join("o1.cpio.gz"));
    assert_eq!(archive.len() % 512, 0);
    let e = entries(&archive);
    let names: Vec<&str> = e.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            ".",
            "bin",
            "conf",
            "conf/initramfs.conf",
            "init",
            "scripts",
            "scripts/functions",
            "scripts/init-top",
            "scripts/init-top/init-link",
            "usr",
            "usr/bin",
            "usr/bin/busybox",
        ]
    );
    // The hard link pair: same inode, data on the last member.
    let (init, link) = (&e[4], &e[8]);
    assert_eq!((init.1.ino, init.1.nlink, init.1.filesize), (5, 2, 0));
    assert_eq!(
        (link.1.ino, link.1.nlink, link.2.as_slice()),
        (5, 2, TREE[0].1.as_bytes())
    );
    assert!(e.iter().all(|(_, h, _)| u64::from(h.mtime) == SDE));

    // The kernel-style reader and GNU cpio agree on the content.
    let x = dir.path().join("x");
    std::fs::create_dir(&x).unwrap();
    run(
        Command::new(tool("cpio"))
            .args(["-idm", "--no-absolute-filenames", "--quiet"])
            .current_dir(&x),
        &archive,
    );
    assert_eq!(
        std::fs::read_to_string(x.join("scripts/init-top/init-link")).unwrap(),
        TREE[0].1
    );
    assert_eq!(
        std::fs::metadata(x.join("init")).unwrap().ino(),
        std::fs::metadata(x.join("scripts/init-top/init-link"))
            .unwrap()
            .ino()
    );
    assert_eq!(
        std::fs::read_link(x.join("bin")).unwrap(),
        Path::new("usr/bin")
    );
}

#[test]
fn concatenated_archives_are_merged_later_wins() {
    let dir = tempfile::tempdir().unwrap();
    let (early, main, merged) = (
        dir.path().join("early"),
        dir.path().join("main"),
        dir.path().join("merged"),
    );
    // An early (microcode-style) archive, then the main one replacing one file.
    make_tree(
        &early,
        &[
            ("kernel/x86/microcode/GenuineIntel.bin", "ucode"),
            ("init", "old"),
        ],
        false,
    );
    make_tree(&main, TREE, false);
    let mut all: Vec<(&str, &str)> = TREE.to_vec();
    all.push(("kernel/x86/microcode/GenuineIntel.bin", "ucode"));
    make_tree(&merged, &all, false);
    let (e, m, want) = (
        gnu_cpio_archive(&early),
        gnu_cpio_archive(&main),
        gnu_cpio_archive(&merged),
    );
    let want = {
        let p = dir.path().join("want.img");
        std::fs::write(&p, &want).unwrap();
        initrd(&p, &dir.path().join("want.cpio.gz"), SDE).unwrap()
    };
    // Three layouts the kernel accepts: two gzip members, raw + gzip, raw + raw, with zero
    // padding between archives.
    let layouts: Vec<Vec<u8>> = vec![
        [gzip_bytes(&e), gzip_bytes(&m)].concat(),
        [e.clone(), vec![0; 512], gzip_bytes(&m), vec![0; 4]].concat(),
        [e.clone(), m.clone()].concat(),
        gzip_bytes(&[e.clone(), m.clone()].concat()),
    ];
    for (i, bytes) in layouts.iter().enumerate() {
        let p = dir.path().join(format!("in{i}.img"));
        std::fs::write(&p, bytes).unwrap();
        let got = initrd(&p, &dir.path().join(format!("o{i}.cpio.gz")), SDE).unwrap();
        assert_eq!(got.sha256, want.sha256, "layout {i}");
    }
    let archive = gunzip(&dir.path().join("o0.cpio.gz"));
    let init = entries(&archive)
        .into_iter()
        .find(|(n, _, d)| n == "scripts/init-top/init-link" && !d.is_empty())
        .unwrap();
    assert_eq!(init.2, TREE[0].1.as_bytes(), "the later archive wins");
}

#[test]
fn malformed_initramfs_is_rejected_with_an_offset() {
    let dir = tempfile::tempdir().unwrap();
    let t = dir.path().join("t");
    make_tree(&t, TREE, false);
    let a = gnu_cpio_archive(&t);
    let gz = gzip_bytes(&a);
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            b"\x28\xb5\x2f\xfd....".to_vec(),
            "offset 0: byte 0x28 (zstd?)",
        ),
        (a[..a.len() / 2].to_vec(), "truncated"),
        ([&a[..], b"junk"].concat(), "starts neither"),
        (gz[..gz.len() - 20].to_vec(), "gzip stream at byte 0"),
        (
            {
                let mut b = a.clone();
                b[0..6].copy_from_slice(b"070707");
                b
            },
            "offset 0: not a newc cpio header",
        ),
    ];
    for (i, (bytes, want)) in cases.iter().enumerate() {
        let p = dir.path().join(format!("bad{i}.img"));
        std::fs::write(&p, bytes).unwrap();
        let err = initrd(&p, &dir.path().join("o.cpio.gz"), SDE).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "case {i}: {err}");
        assert!(err.to_string().contains(want), "case {i}: {err}");
        assert!(!dir.path().join("o.cpio.gz").exists());
    }
}

// ---------------------------------------------------------------------------------------
// xz

/// ~`len` bytes that compress, but not trivially (a few MB/s for xz -6).
fn xz_input(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9e3779b97f4a7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let chunks: Vec<Vec<u8>> = (0..64)
        .map(|_| (0..4096).map(|_| (next() % 40) as u8 + b'0').collect())
        .collect();
    let mut out = Vec::with_capacity(len + 4096);
    while out.len() < len {
        let r = next();
        let c = &chunks[(r % 64) as usize];
        let start = ((r >> 8) % 2048) as usize;
        out.extend_from_slice(&c[start..]);
        out.extend_from_slice(&r.to_le_bytes());
    }
    out.truncate(len);
    out
}

#[test]
fn xz_output_does_not_depend_on_the_thread_count() {
    let data = xz_input(60 << 20);
    let enc = |threads| {
        let mut out = Vec::new();
        xz_copy(&mut data.as_slice(), &mut out, threads, XZ_PRESET).unwrap();
        out
    };
    let one = enc(1);
    let two = enc(2);
    assert!(one == two, "1 and 2 threads gave different xz bytes");
    assert!(one.len() < data.len() / 2);

    // xz(1) checks and decompresses it, and sees three 24 MiB blocks with CRC64.
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.xz");
    std::fs::write(&p, &one).unwrap();
    let xz = tool("xz");
    run(Command::new(&xz).arg("-t").arg(&p), b"");
    let back = run(Command::new(&xz).arg("-dc").arg(&p), b"");
    assert!(back == data, "xz -dc round trip");
    let list = String::from_utf8(run(
        Command::new(&xz).args(["--robot", "--list"]).arg(&p),
        b"",
    ))
    .unwrap();
    let file_line = list.lines().find(|l| l.starts_with("file\t")).unwrap();
    let fields: Vec<&str> = file_line.split('\t').collect();
    assert_eq!(fields[2], "3", "blocks: {list}");
    assert_eq!(fields[6], "CRC64", "check: {list}");
}

#[test]
fn xz_file_round_trips_through_xz() {
    let xz = tool("xz");
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("rootfs.ext4");
    // Mostly zeros, like an ext4 image, with some data in it.
    {
        let mut f = File::create(&input).unwrap();
        f.write_all(&vec![0u8; 3 << 20]).unwrap();
        f.write_all(&xz_input(1 << 20)).unwrap();
        f.write_all(&vec![0u8; 5 << 20]).unwrap();
    }
    let out = dir.path().join("rootfs.ext4.xz");
    let art = xz_file(&input, &out, XZ_PRESET, 1).unwrap();
    assert_eq!(art.name, "rootfs.ext4.xz");
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(
        (art.size, art.sha256.clone()),
        (bytes.len() as u64, Digest::of(&bytes))
    );
    run(Command::new(&xz).arg("-t").arg(&out), b"");
    let back = run(Command::new(&xz).arg("-dc").arg(&out), b"");
    assert!(back == std::fs::read(&input).unwrap());
    let again = tar_xz(&input, &dir.path().join("again.xz"), XZ_PRESET, 2).unwrap();
    assert_eq!(again.sha256, art.sha256);
}

#[test]
fn an_xz_thread_costs_its_encoder_and_two_blocks_of_buffers() {
    // liblzma's account of one more thread at preset 6: ~94 MiB of match finder and
    // dictionary, the 24 MiB input block and its worst-case output buffer.
    let mib = xz_thread_memory(XZ_PRESET) >> 20;
    assert!((130..200).contains(&mib), "{mib} MiB");
    assert!(xz_thread_memory(1) < xz_thread_memory(XZ_PRESET));
}

#[test]
fn output_format_names_the_locked_compressor_versions() {
    let lock = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
    let version = |name: &str| {
        lock.split("[[package]]")
            .find(|p| p.contains(&format!("name = \"{name}\"\n")))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
            .map(|v| v.trim_end_matches('"').to_owned())
            .unwrap_or_else(|| panic!("{name} in Cargo.lock"))
    };
    for (name, key) in [
        ("zlib-rs", "gzip="),
        ("liblzma", "xz="),
        ("liblzma-sys", ""),
    ] {
        let v = version(name);
        let want = format!("{key}{name}-{v} ");
        assert!(
            ROOTFS_OUTPUT_FORMAT.contains(&want),
            "update ROOTFS_OUTPUT_FORMAT to {name} {v} (it should contain {want:?})"
        );
    }
    assert!(ROOTFS_OUTPUT_FORMAT.contains(&format!("block={}MiB ", XZ_BLOCK_SIZE >> 20)));
    assert!(
        !ROOTFS_OUTPUT_FORMAT.contains("  "),
        "{ROOTFS_OUTPUT_FORMAT}"
    );
}
