//! A real, signed Debian apt repository on disk, for integration tests that must drive
//! `apt`/`gpgv` against something a real mirror would serve rather than a hand-written
//! imitation. It builds real `.deb` files with `dpkg-deb`, indexes them with
//! `apt-ftparchive` (suite `stable`, component `main`, `amd64` and `arm64`, with `by-hash`
//! copies), and signs `InRelease`/`Release.gpg` with a throw-away GnuPG key whose public
//! half is exported as a binary keyring. Serve `root` over HTTP (e.g. with `http_files`)
//! and point apt at `<url>/<archive> stable main`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest as _, Sha256};

/// Every `.deb` file and its control get this mtime, so their bytes are reproducible.
const EPOCH: &str = "1717200000";
const SUITE: &str = "stable";
const COMPONENT: &str = "main";
const ARCHES: [&str; 2] = ["amd64", "arm64"];
/// Like Debian's own archive: MD5Sum and SHA256 only, so apt fetches `by-hash/SHA256/…`.
const HASHES: [&str; 2] = [
    "-o=APT::FTPArchive::SHA1=false",
    "-o=APT::FTPArchive::SHA512=false",
];
/// The tools the fixture runs and the Debian package that provides each.
const TOOLS: [(&str, &str); 7] = [
    ("apt-ftparchive", "apt-utils"),
    ("gpg", "gnupg"),
    ("gpgconf", "gnupg"),
    ("gpgv", "gpgv"),
    ("dpkg-deb", "dpkg"),
    ("gzip", "gzip"),
    ("xz", "xz-utils"),
];

pub struct AptRepo {
    /// The directory to serve over HTTP; the archive lives at `root/<archive>`.
    pub root: PathBuf,
    /// The archive's directory name under `root`, e.g. `repo`.
    pub archive: String,
    /// The suite (and codename) published, `stable`.
    pub suite: String,
    /// A binary OpenPGP public keyring (`gpg --export` output) that verifies the archive.
    pub keyring: PathBuf,
    gnupghome: tempfile::TempDir,
}

impl AptRepo {
    /// An empty archive `dir/root/repo` with a fresh signing key whose GnuPG home lives
    /// under `dir`. Nothing is published until `publish`.
    pub fn new(dir: &Path) -> AptRepo {
        require_tools();
        let gnupghome = tempfile::Builder::new()
            .prefix("gnupg")
            .tempdir_in(dir)
            .unwrap();
        fs::set_permissions(gnupghome.path(), fs::Permissions::from_mode(0o700)).unwrap();
        let repo = AptRepo {
            root: dir.join("root"),
            archive: "repo".into(),
            suite: SUITE.into(),
            keyring: dir.join("keyring.gpg"),
            gnupghome,
        };
        fs::create_dir_all(repo.archive_dir().join("pool").join(COMPONENT)).unwrap();
        repo.generate_key();
        repo
    }

    /// `root/<archive>`: where `dists/` and `pool/` live.
    pub fn archive_dir(&self) -> PathBuf {
        self.root.join(&self.archive)
    }

    /// Where `add_package` puts `name`'s `version`, whether or not it is there.
    pub fn deb_path(&self, name: &str, version: &str) -> PathBuf {
        let first = &name[..1];
        self.archive_dir()
            .join(format!("pool/{COMPONENT}/{first}/{name}"))
            .join(format!("{name}_{version}_all.deb"))
    }

    /// `dists/<suite>` under the archive.
    pub fn dists(&self) -> PathBuf {
        self.archive_dir().join("dists").join(&self.suite)
    }

    /// The `Packages` index apt reads for `arch`.
    pub fn packages_path(&self, arch: &str) -> PathBuf {
        self.dists()
            .join(format!("{COMPONENT}/binary-{arch}/Packages"))
    }

    /// Builds an `Architecture: all` package holding `files` (absolute path, content) and
    /// puts it in the pool. Same arguments, same bytes.
    pub fn add_package(&self, name: &str, version: &str, files: &[(&str, &str)]) {
        let build = tempfile::tempdir().unwrap();
        let tree = build.path().join("tree");
        write_tree(&tree, name, version, files);
        let deb = self.deb_path(name, version);
        fs::create_dir_all(deb.parent().unwrap()).unwrap();
        run(Command::new("dpkg-deb")
            .env("SOURCE_DATE_EPOCH", EPOCH)
            .args(["--build", "--root-owner-group", "-Zxz"])
            .arg(&tree)
            .arg(&deb));
    }

    /// Deletes `name`'s `version` from the pool; `publish` drops it from the index.
    pub fn remove_package(&self, name: &str, version: &str) {
        fs::remove_file(self.deb_path(name, version)).unwrap();
    }

    /// Regenerates the indices, `Release` and its signatures from what is in the pool.
    pub fn publish(&self) {
        let index = run(self
            .ftparchive()
            .args(["packages", &format!("pool/{COMPONENT}")]));
        for arch in ARCHES {
            self.write_index(arch, &index);
        }
        self.write_release();
        self.sign();
    }

    /// `sha256:<hex>` of the current `InRelease`.
    pub fn inrelease_sha256(&self) -> String {
        sha256(&fs::read(self.dists().join("InRelease")).unwrap())
    }

    fn write_index(&self, arch: &str, index: &[u8]) {
        let packages = self.packages_path(arch);
        let dir = packages.parent().unwrap();
        fs::create_dir_all(dir.join("by-hash/SHA256")).unwrap();
        fs::write(&packages, index).unwrap();
        compress(&packages, "gz", Command::new("gzip").arg("-9nc"));
        compress(&packages, "xz", Command::new("xz").arg("-c"));
        for file in ["Packages", "Packages.gz", "Packages.xz"] {
            let bytes = fs::read(dir.join(file)).unwrap();
            let hex = hex::encode(Sha256::digest(&bytes));
            fs::write(dir.join("by-hash/SHA256").join(hex), bytes).unwrap();
        }
    }

    fn write_release(&self) {
        let dists = self.dists();
        for old in ["Release", "InRelease", "Release.gpg"] {
            let _ = fs::remove_file(dists.join(old));
        }
        let o = |key: &str, value: &str| format!("-o=APT::FTPArchive::Release::{key}={value}");
        let release = run(self
            .ftparchive()
            .args([
                o("Origin", "kci-build test"),
                o("Label", "kci-build test"),
                o("Suite", &self.suite),
                o("Codename", &self.suite),
                o("Architectures", &ARCHES.join(" ")),
                o("Components", COMPONENT),
                o("Acquire-By-Hash", "yes"),
            ])
            .arg("release")
            .arg(format!("dists/{}", self.suite)));
        fs::write(dists.join("Release"), release).unwrap();
    }

    fn sign(&self) {
        let dists = self.dists();
        let release = dists.join("Release");
        run(self
            .gpg()
            .arg("--clearsign")
            .arg("--output")
            .arg(dists.join("InRelease"))
            .arg(&release));
        run(self
            .gpg()
            .arg("--detach-sign")
            .arg("--armor")
            .arg("--output")
            .arg(dists.join("Release.gpg"))
            .arg(&release));
    }

    fn generate_key(&self) {
        run(self.gpg().args([
            "--quick-gen-key",
            "kci-build test repo <test@kci.invalid>",
            "ed25519",
            "sign",
            "never",
        ]));
        let key = run(self.gpg().arg("--export"));
        assert!(!key.is_empty(), "gpg --export wrote no key");
        fs::write(&self.keyring, key).unwrap();
    }

    /// `apt-ftparchive` in the archive directory, with Debian's choice of checksums.
    fn ftparchive(&self) -> Command {
        let mut ftparchive = Command::new("apt-ftparchive");
        ftparchive.current_dir(self.archive_dir()).args(HASHES);
        ftparchive
    }

    /// `gpg` on the throw-away home, never prompting.
    fn gpg(&self) -> Command {
        let mut gpg = Command::new("gpg");
        gpg.arg("--homedir")
            .arg(self.gnupghome.path())
            .args(["--batch", "--yes", "--no-tty", "--quiet"])
            .args(["--pinentry-mode", "loopback", "--passphrase", ""]);
        gpg
    }
}

impl Drop for AptRepo {
    /// Stops the `gpg-agent` that signing started, so no process outlives the test.
    fn drop(&mut self) {
        let _ = Command::new("gpgconf")
            .arg("--homedir")
            .arg(self.gnupghome.path())
            .args(["--kill", "gpg-agent"])
            .output();
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The package tree under `tree`: `DEBIAN/control` and `files`, all with mtime `EPOCH`.
fn write_tree(tree: &Path, name: &str, version: &str, files: &[(&str, &str)]) {
    let control = format!(
        "Package: {name}\nVersion: {version}\nArchitecture: all\n\
         Maintainer: kci-build tests <test@kci.invalid>\n\
         Description: kci-build test package {name}\n"
    );
    write_file(tree, "DEBIAN/control", &control);
    for (path, content) in files {
        write_file(tree, path.trim_start_matches('/'), content);
    }
    fix_modes(tree);
    run(Command::new("find").arg(tree).args([
        "-exec",
        "touch",
        "-h",
        "-d",
        &format!("@{EPOCH}"),
        "{}",
        "+",
    ]));
}

fn write_file(tree: &Path, rel: &str, content: &str) {
    let path = tree.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, content).unwrap();
}

/// 0755 for directories and 0644 for files whatever the umask, as `dpkg-deb` and
/// reproducibility want.
fn fix_modes(path: &Path) {
    let dir = path.is_dir();
    let mode = if dir { 0o755 } else { 0o644 };
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    if dir {
        for entry in fs::read_dir(path).unwrap() {
            fix_modes(&entry.unwrap().path());
        }
    }
}

/// Writes `<file>.<ext>` from `compressor`'s stdout with `file` as its argument.
fn compress(file: &Path, ext: &str, compressor: &mut Command) {
    let out = run(compressor.arg(file));
    fs::write(file.with_extension(ext), out).unwrap();
}

/// Runs `cmd`; panics with its stderr unless it succeeds; returns its stdout.
fn run(cmd: &mut Command) -> Vec<u8> {
    let out = cmd
        .env("LC_ALL", "C")
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Panics naming the Debian package to install when a tool the fixture runs is missing.
fn require_tools() {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for (tool, package) in TOOLS {
        let found = std::env::split_paths(&path).any(|dir| dir.join(tool).is_file());
        assert!(
            found,
            "the apt repository fixture needs `{tool}`: apt-get install {package}"
        );
    }
}
