//! Property-based fuzzing of every parser kci-build runs on input it does not control.
//!
//! What is fuzzed, each with arbitrary strings or bytes and with mutations (bit flips,
//! byte overwrites, truncations, line deletions, duplications and swaps, insertions of
//! nasty tokens: `..`, `/etc/passwd`, NUL, very long strings, deep nesting, YAML anchors)
//! of the real files of this repository:
//!
//! - image recipes: `core::recipe::parse_image_file` (`images/*/image.toml`) and
//!   `core::recipe::Settings::parse` (`images/config.toml`);
//! - rootfs recipes: `core::rootfs_recipe::RootfsRecipe::parse` (`recipes/*.toml`);
//! - the lockfiles: `core::lockfile::Lockfile::parse` and
//!   `core::rootfs_lock::RootfsLockfile::parse` (`lockfiles/*.lock`), each also written back
//!   with `to_text` and read again;
//! - KernelCI's YAML: `core::deploy::plan`/`apply` (`test-configs.yaml`,
//!   `rootfs-images.yaml`) and `rootfs::import` (`rootfs-configs.yaml`), plus YAML alias
//!   bombs ("billion laughs") that must be refused quickly;
//! - registry answers through `publish::fetch` against an in-process HTTP double (OCI
//!   manifests, indexes, image configs, layer blobs and token answers), and
//!   `registry::auth::{parse_challenge, from_docker_config}`;
//! - apt: `core::apt::Release::parse`, `parse_packages`, `Request::parse`, and the names
//!   (`SuiteId`, `Digest`, `TargetName`, `Platform`) and `dpkg::installed`;
//! - Debian versions: `core::debversion::compare`;
//! - storage answers: `storage::Storage::fetch`/`size` against an HTTP double, the rootfs
//!   manifests fetched from it (`RootfsManifest` JSON), and the local backend's names.
//!
//! Every property: the parser does not panic (proptest turns a panic into a failing,
//! shrunk case), returns within 2 s, and an error that carries a file names it.
//!
//! Each property runs `KCI_FUZZ_CASES` cases (default 256; the alias-bomb property, whose
//! cases each count up to 250,000 YAML nodes, 1/32 of that). A longer run:
//!
//! ```text
//! KCI_FUZZ_CASES=100000 cargo test --release --test fuzz
//! ```
//!
//! A failing case is persisted by proptest in `tests/fuzz.proptest-regressions` (next to
//! this file) and replayed first by every later run; commit that file with the fix.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Debug;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, FileFailurePersistence, TestCaseError, TestRunner};

use kci_build::core::apt::{self, Release, Request, SuiteId};
use kci_build::core::debversion;
use kci_build::core::deploy::{self, Format};
use kci_build::core::lockfile::Lockfile;
use kci_build::core::names::{Digest, Platform, TargetName};
use kci_build::core::recipe::{self, Settings, TargetKind};
use kci_build::core::rootfs_lock::{RootfsLockfile, RootfsManifest};
use kci_build::core::rootfs_recipe::{valid_config_name, RootfsRecipe, DEBIAN_ARCHES};
use kci_build::rootfs::{self, ImportOptions};

// ---------------------------------------------------------------------------------------
// The harness: configuration, the time bound, inputs and mutations.
// ---------------------------------------------------------------------------------------

/// Every parser call must return within this.
const LIMIT: Duration = Duration::from_secs(2);

fn cases() -> u32 {
    std::env::var("KCI_FUZZ_CASES")
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(256)
}

fn config() -> Config {
    Config {
        cases: cases(),
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    }
}

/// Runs `test` on `strategy`'s values; a failure (or a panic) fails the test with the
/// shrunk input.
fn check<S>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Debug,
{
    let mut runner = TestRunner::new(config());
    if let Err(e) = runner.run(&strategy, test) {
        panic!("{name}: {e}");
    }
}

/// Calls `f`, failing if it takes `LIMIT` or more.
fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let out = f();
    let took = start.elapsed();
    assert!(took < LIMIT, "{what} took {took:?} (limit {LIMIT:?})");
    out
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// `(path relative to the repository, text)` of the files under `dir` that `pick` keeps.
fn files_under(dir: &str, pick: impl Fn(&Path) -> bool) -> Vec<(PathBuf, String)> {
    let mut out = Vec::new();
    for e in walkdir::WalkDir::new(root().join(dir)).sort_by_file_name() {
        let e = e.unwrap();
        let rel = e.path().strip_prefix(root()).unwrap().to_owned();
        if e.file_type().is_file() && pick(&rel) {
            let text = std::fs::read_to_string(e.path()).unwrap();
            out.push((rel, text));
        }
    }
    assert!(!out.is_empty(), "no sample under {dir}");
    out
}

/// Something inserted into an input. Kept symbolic so a failing case prints short.
#[derive(Debug, Clone)]
enum Token {
    Fixed(&'static str),
    /// `piece` repeated `n` times: very long strings, deep nesting.
    Repeat(&'static str, usize),
    Text(String),
    Bytes(Vec<u8>),
}

impl Token {
    fn bytes(&self) -> Vec<u8> {
        match self {
            Token::Fixed(s) => s.as_bytes().to_vec(),
            Token::Repeat(s, n) => s.repeat(*n).into_bytes(),
            Token::Text(s) => s.clone().into_bytes(),
            Token::Bytes(b) => b.clone(),
        }
    }
}

/// Pieces that nest when repeated, in TOML, YAML or JSON.
const NESTS: &[&str] = &[
    "[", "{", "{a=", "{a: ", "- ", "  ", "a.", "[[", "\"a\":[", "&a [",
];

const NASTY: &[&str] = &[
    "..",
    "../",
    "../../../../etc/passwd",
    "/etc/passwd",
    "\"../../etc/passwd\"",
    "'/etc/passwd'",
    "\0",
    "\"\0\"",
    "\\u0000",
    "\"\\u0000\"",
    "\u{feff}",
    "\u{202e}",
    "é",
    "💥",
    "\r",
    "\r\n",
    "\n\n",
    "\t",
    " ",
    "\"",
    "'",
    "\\",
    "\"\"\"",
    "#",
    "=",
    ":",
    ": ",
    "- ",
    ",",
    "[",
    "]",
    "{",
    "}",
    "[[",
    "]]",
    "[[target]]",
    "[target.\"x\"]",
    "[rootfs.\"..\"]",
    "[rootfs.\"x\".arch.\"amd64\"]",
    "[apt-index.\"debian/..\"]",
    "version = 2",
    "version = -1",
    "version = 18446744073709551616",
    "size = -1",
    "size = 18446744073709551616",
    "18446744073709551616",
    "-9223372036854775809",
    "1e999",
    "nan",
    "inf",
    "0x",
    "true",
    "null",
    "~",
    "&a",
    "*a",
    "&a [x, y]",
    "<<: *a",
    "<<: [*a, *a]",
    "!!binary AAAA",
    "!tag",
    "---",
    "...",
    "%YAML 1.2",
    "? ",
    "|",
    ">-",
    "sha256:",
    "sha256:0000000000000000000000000000000000000000000000000000000000000000",
    "sha256:ZZZZ",
    "\"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855\"",
    "{\"a\":",
    "\"mediaType\":",
    "%2e%2e",
    "%2F",
    "%",
    "%0",
    "%zz",
    "%00",
    "dists",
    "/dists/",
    "/pool/",
    "by-hash/SHA256/",
    "-----BEGIN PGP SIGNATURE-----",
    "-----BEGIN PGP SIGNED MESSAGE-----",
    "SHA256:",
    "Package: x",
    "Size: 99999999999999999999999",
    "type: debian",
    "file_systems:",
    "rootfs_configs:",
];

fn token() -> impl Strategy<Value = Token> {
    prop_oneof![
        6 => proptest::sample::select(NASTY).prop_map(Token::Fixed),
        1 => (1usize..200_000).prop_map(|n| Token::Repeat("A", n)),
        1 => (1usize..20_000).prop_map(|n| Token::Repeat("9", n)),
        2 => (
            proptest::sample::select(NESTS),
            1usize..5_000,
        )
            .prop_map(|(p, n)| Token::Repeat(p, n)),
        2 => any::<String>().prop_map(Token::Text),
        1 => proptest::collection::vec(any::<u8>(), 0..64).prop_map(Token::Bytes),
    ]
}

/// One edit of an input. Positions are `Index`es, taken modulo the input's current size.
#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(Index, u8),
    SetByte(Index, u8),
    Truncate(Index),
    DeleteLine(Index),
    DuplicateLine(Index),
    SwapLines(Index, Index),
    Insert(Index, Token),
    InsertLine(Index, Token),
    /// Replaces what follows the first `=` or `:` of a line: a nasty value in a valid key.
    ReplaceValue(Index, Token),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        3 => any::<Index>().prop_map(Mutation::DeleteLine),
        3 => any::<Index>().prop_map(Mutation::DuplicateLine),
        2 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::SwapLines(a, b)),
        3 => (any::<Index>(), token()).prop_map(|(i, t)| Mutation::Insert(i, t)),
        2 => (any::<Index>(), token()).prop_map(|(i, t)| Mutation::InsertLine(i, t)),
        4 => (any::<Index>(), token()).prop_map(|(i, t)| Mutation::ReplaceValue(i, t)),
    ]
}

fn mutations() -> impl Strategy<Value = Vec<Mutation>> {
    proptest::collection::vec(mutation(), 1..6)
}

fn lines_of(b: &[u8]) -> Vec<Vec<u8>> {
    b.split_inclusive(|&c| c == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

impl Mutation {
    fn apply(&self, b: &mut Vec<u8>) {
        let pos = |i: &Index, len: usize| if len == 0 { 0 } else { i.index(len) };
        match self {
            Mutation::FlipBit(i, bit) if !b.is_empty() => {
                let p = pos(i, b.len());
                b[p] ^= 1 << bit;
            }
            Mutation::SetByte(i, v) if !b.is_empty() => {
                let p = pos(i, b.len());
                b[p] = *v;
            }
            Mutation::Truncate(i) => b.truncate(pos(i, b.len() + 1)),
            Mutation::Insert(i, t) => {
                let p = pos(i, b.len() + 1);
                b.splice(p..p, t.bytes());
            }
            Mutation::DeleteLine(_)
            | Mutation::DuplicateLine(_)
            | Mutation::SwapLines(..)
            | Mutation::InsertLine(..)
            | Mutation::ReplaceValue(..) => {
                let mut lines = lines_of(b);
                let n = lines.len();
                match self {
                    Mutation::DeleteLine(i) if n > 0 => {
                        lines.remove(pos(i, n));
                    }
                    Mutation::DuplicateLine(i) if n > 0 => {
                        let l = lines[pos(i, n)].clone();
                        lines.insert(pos(i, n), l);
                    }
                    Mutation::SwapLines(x, y) if n > 0 => lines.swap(pos(x, n), pos(y, n)),
                    Mutation::InsertLine(i, t) => {
                        let mut l = t.bytes();
                        l.push(b'\n');
                        lines.insert(pos(i, n + 1), l);
                    }
                    Mutation::ReplaceValue(i, t) if n > 0 => {
                        let l = &mut lines[pos(i, n)];
                        if let Some(at) = l.iter().position(|&c| c == b'=' || c == b':') {
                            let eol = l.ends_with(b"\n");
                            l.truncate(at + 1);
                            l.push(b' ');
                            l.extend(t.bytes());
                            if eol {
                                l.push(b'\n');
                            }
                        }
                    }
                    _ => {}
                }
                *b = lines.concat();
            }
            _ => {}
        }
    }
}

fn mutate(input: &str, muts: &[Mutation]) -> String {
    let mut b = input.as_bytes().to_vec();
    for m in muts {
        m.apply(&mut b);
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// Arbitrary text: any string, any bytes read as UTF-8 (lossily), or printable noise.
fn arbitrary_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        ".*",
        proptest::collection::vec(any::<u8>(), 0..4096)
            .prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        "[ -~\n]{0,512}",
    ]
}

/// A sample index and the edits made to it.
fn mutated_sample(n: usize) -> impl Strategy<Value = (usize, Vec<Mutation>)> {
    (0..n, mutations())
}

/// File paths errors must name: ordinary, with spaces and non-ASCII, relative, absolute.
fn error_path(base: &str) -> impl Strategy<Value = PathBuf> {
    let base = base.to_owned();
    proptest::sample::select(vec!["", "/tmp/a b/", "ünï/cödé/", "./x/../"])
        .prop_map(move |dir| PathBuf::from(format!("{dir}{base}")))
}

/// The error's Display starts with the file it is about.
fn names_file(shown: &str, file: &Path) -> Result<(), TestCaseError> {
    let want = format!("{}: ", file.display());
    prop_assert!(
        shown.starts_with(&want),
        "error does not name {}: {shown}",
        file.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// 1. Image recipes: image.toml and config.toml.
// ---------------------------------------------------------------------------------------

fn image_recipes() -> Vec<(PathBuf, String)> {
    files_under("images", |p| {
        p.file_name().is_some_and(|f| f == "image.toml")
    })
}

fn check_image_file(file: &Path, text: &str) -> Result<(), TestCaseError> {
    match timed("parse_image_file", || recipe::parse_image_file(file, text)) {
        Ok(targets) => {
            prop_assert!(!targets.is_empty());
            for t in &targets {
                prop_assert_eq!(&t.recipe_file, file);
                match &t.kind {
                    TargetKind::Dockerfile {
                        dockerfile, args, ..
                    } => {
                        prop_assert!(!dockerfile.starts_with('/'), "{dockerfile}");
                        prop_assert!(!dockerfile.split('/').any(|c| c == ".."), "{dockerfile}");
                        for k in recipe::RESERVED_ARGS {
                            prop_assert!(!args.contains_key(*k));
                        }
                    }
                    TargetKind::Bootstrap(b) => {
                        if let Some(k) = &b.keyring {
                            prop_assert!(!k.starts_with('/'), "{k}");
                            prop_assert!(!k.split('/').any(|c| c == ".." || c == "."), "{k}");
                        }
                    }
                    TargetKind::Index { members } => {
                        prop_assert!(!members.is_empty());
                        for m in members {
                            prop_assert_eq!(m.image(), t.name.image());
                        }
                    }
                }
            }
        }
        Err(e) => {
            prop_assert_eq!(&e.file, file);
            names_file(&e.to_string(), file)?;
        }
    }
    Ok(())
}

fn check_settings(file: &Path, text: &str) -> Result<(), TestCaseError> {
    if let Err(e) = timed("Settings::parse", || Settings::parse(file, text)) {
        prop_assert_eq!(&e.file, file);
        names_file(&e.to_string(), file)?;
    }
    Ok(())
}

#[test]
fn image_recipes_parse_as_they_are() {
    for (file, text) in image_recipes() {
        recipe::parse_image_file(&file, &text).unwrap();
    }
    Settings::parse(Path::new("images/config.toml"), &read("images/config.toml")).unwrap();
}

#[test]
fn fuzz_image_recipe_arbitrary() {
    check(
        "parse_image_file(arbitrary)",
        (arbitrary_text(), error_path("images/x/image.toml")),
        |(text, file)| {
            check_image_file(&file, &text)?;
            check_settings(&file, &text)
        },
    );
}

#[test]
fn fuzz_image_recipe_mutated() {
    let samples = image_recipes();
    check(
        "parse_image_file(mutated)",
        mutated_sample(samples.len()),
        |(i, muts)| {
            let (file, text) = &samples[i];
            check_image_file(file, &mutate(text, &muts))
        },
    );
}

#[test]
fn fuzz_image_settings_mutated() {
    let text = read("images/config.toml");
    check("Settings::parse(mutated)", mutations(), |muts| {
        check_settings(Path::new("images/config.toml"), &mutate(&text, &muts))
    });
}

// ---------------------------------------------------------------------------------------
// 2. Rootfs recipes.
// ---------------------------------------------------------------------------------------

fn rootfs_recipes() -> Vec<(PathBuf, String)> {
    files_under("recipes", |p| {
        p.parent() == Some(Path::new("recipes")) && p.extension().is_some_and(|e| e == "toml")
    })
}

fn check_rootfs_recipe(file: &Path, text: &str) -> Result<(), TestCaseError> {
    match timed("RootfsRecipe::parse", || RootfsRecipe::parse(file, text)) {
        Ok(r) => {
            prop_assert_eq!(
                Some(r.name.as_str()),
                file.file_stem().and_then(|s| s.to_str())
            );
            prop_assert!(valid_config_name(&r.name), "{}", r.name);
            prop_assert!(r.xz_preset() <= 9);
            for a in &r.arch_list {
                prop_assert!(DEBIAN_ARCHES.contains(&a.as_str()), "{a}");
            }
            let again = timed("RootfsRecipe::parse(to_toml)", || {
                RootfsRecipe::parse(file, &r.to_toml("# written back\n"))
            });
            prop_assert_eq!(again.map_err(|e| e.to_string()), Ok(r));
        }
        Err(e) => {
            prop_assert_eq!(&e.file, file);
            names_file(&e.to_string(), file)?;
        }
    }
    Ok(())
}

#[test]
fn rootfs_recipes_parse_as_they_are() {
    for (file, text) in rootfs_recipes() {
        RootfsRecipe::parse(&file, &text).unwrap();
    }
}

#[test]
fn fuzz_rootfs_recipe_arbitrary() {
    check(
        "RootfsRecipe::parse(arbitrary)",
        (arbitrary_text(), error_path("recipes/bookworm.toml")),
        |(text, file)| check_rootfs_recipe(&file, &text),
    );
}

#[test]
fn fuzz_rootfs_recipe_mutated() {
    let samples = rootfs_recipes();
    check(
        "RootfsRecipe::parse(mutated)",
        mutated_sample(samples.len()),
        |(i, muts)| {
            let (file, text) = &samples[i];
            check_rootfs_recipe(file, &mutate(text, &muts))
        },
    );
}

// ---------------------------------------------------------------------------------------
// 3. Lockfiles.
// ---------------------------------------------------------------------------------------

fn images_lockfiles() -> Vec<(PathBuf, String)> {
    vec![
        (
            "lockfiles/images.lock".into(),
            read("lockfiles/images.lock"),
        ),
        (
            "tests/golden/sample.lock".into(),
            read("tests/golden/sample.lock"),
        ),
    ]
}

fn check_lockfile(file: &Path, text: &str) -> Result<(), TestCaseError> {
    match timed("Lockfile::parse", || Lockfile::parse(file, text)) {
        Ok(lock) => {
            let text = timed("Lockfile::to_text", || lock.to_text());
            let again = timed("Lockfile::parse(to_text)", || Lockfile::parse(file, &text));
            prop_assert!(again.as_ref().ok() == Some(&lock), "{:?}", again.err());
        }
        Err(e) => {
            prop_assert_eq!(&e.file, file);
            names_file(&e.to_string(), file)?;
        }
    }
    Ok(())
}

fn check_rootfs_lockfile(file: &Path, text: &str) -> Result<(), TestCaseError> {
    match timed("RootfsLockfile::parse", || {
        RootfsLockfile::parse(file, text)
    }) {
        Ok(lock) => {
            for (name, c) in &lock.configs {
                prop_assert!(valid_config_name(name), "{name}");
                for arch in c.arch.keys() {
                    prop_assert!(DEBIAN_ARCHES.contains(&arch.as_str()), "{arch}");
                }
            }
            let text = timed("RootfsLockfile::to_text", || lock.to_text());
            let again = timed("RootfsLockfile::parse(to_text)", || {
                RootfsLockfile::parse(file, &text)
            });
            prop_assert!(again.as_ref().ok() == Some(&lock), "{:?}", again.err());
        }
        Err(e) => {
            prop_assert_eq!(&e.file, file);
            names_file(&e.to_string(), file)?;
        }
    }
    Ok(())
}

#[test]
fn lockfiles_parse_as_they_are() {
    for (file, text) in images_lockfiles() {
        let lock = Lockfile::parse(&file, &text).unwrap();
        assert_eq!(Lockfile::parse(&file, &lock.to_text()).unwrap(), lock);
    }
    let file = Path::new("lockfiles/rootfs.lock");
    let lock = RootfsLockfile::parse(file, &read("lockfiles/rootfs.lock")).unwrap();
    assert_eq!(RootfsLockfile::parse(file, &lock.to_text()).unwrap(), lock);
}

#[test]
fn fuzz_lockfile_arbitrary() {
    check(
        "Lockfile::parse(arbitrary)",
        (arbitrary_text(), error_path("lockfiles/images.lock")),
        |(text, file)| {
            check_lockfile(&file, &text)?;
            check_rootfs_lockfile(&file, &text)
        },
    );
}

#[test]
fn fuzz_lockfile_mutated() {
    let samples = images_lockfiles();
    check(
        "Lockfile::parse(mutated)",
        (
            mutated_sample(samples.len()),
            error_path("lockfiles/images.lock"),
        ),
        |((i, muts), file)| check_lockfile(&file, &mutate(&samples[i].1, &muts)),
    );
}

#[test]
fn fuzz_rootfs_lockfile_mutated() {
    let text = read("lockfiles/rootfs.lock");
    check(
        "RootfsLockfile::parse(mutated)",
        (mutations(), error_path("lockfiles/rootfs.lock")),
        |(muts, file)| check_rootfs_lockfile(&file, &mutate(&text, &muts)),
    );
}

/// `s` as a TOML basic string (usable as a key too), escaped as the TOML spec says.
fn toml_basic_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c < ' ' || c == '\u{7f}' => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A lockfile's strings hold any character; the canonical writer must quote them all.
#[test]
fn fuzz_lockfile_strings_round_trip() {
    let d = format!("\"sha256:{}\"", "a".repeat(64));
    check(
        "Lockfile strings",
        (any::<String>(), any::<String>(), any::<String>()),
        |(k, v, date)| {
            let q = |s: &str| toml_basic_string(s);
            let text = format!(
                "version = 1\n[apt-index.\"debian/bookworm\"]\ninrelease = {d}\ndate = {}\n\
                 [target.\"x\"]\nkey = {d}\noutput.manifest = {d}\ninput.{} = {}\npackage.{} = {}\n",
                q(&date),
                q(&k),
                q(&v),
                q(&v),
                q(&k)
            );
            let file = Path::new("lockfiles/images.lock");
            let lock =
                Lockfile::parse(file, &text).map_err(|e| TestCaseError::fail(e.to_string()))?;
            check_lockfile(file, &lock.to_text())?;
            let rtext = format!(
                "version = 1\n[rootfs.\"bookworm\"]\nversion = {}\n[rootfs.\"bookworm\".arch.\"amd64\"]\n\
                 key = {d}\ninput.{} = {}\nartifact.{}.sha256 = {d}\nartifact.{}.size = 1\nartifact.{}.url = {}\n",
                q(&v),
                q(&k),
                q(&v),
                q(&k),
                q(&k),
                q(&k),
                q(&date)
            );
            let file = Path::new("lockfiles/rootfs.lock");
            let lock = RootfsLockfile::parse(file, &rtext)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            check_rootfs_lockfile(file, &lock.to_text())
        },
    );
}

// ---------------------------------------------------------------------------------------
// 4. KernelCI's YAML: test-configs.yaml / rootfs-images.yaml (deploy), rootfs-configs.yaml
//    (import), alias bombs.
// ---------------------------------------------------------------------------------------

const STORAGE: &str = "http://storage.test/images/rootfs/debian";

/// A rootfs lockfile locking every config the file's `debian` entries name, on two arches.
fn lock_for(yaml: &str) -> RootfsLockfile {
    let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).unwrap();
    let mut configs = BTreeSet::new();
    for (_, entry) in doc["file_systems"].as_mapping().unwrap() {
        for (_, v) in entry.as_mapping().unwrap() {
            if let Some((config, _, _)) = v.as_str().and_then(deploy::split_path) {
                configs.insert(config.to_owned());
            }
        }
    }
    assert!(!configs.is_empty());
    let key = format!("\"sha256:{}\"", "a".repeat(64));
    let mut text = String::from("version = 1\n");
    for c in configs {
        text.push_str(&format!(
            "[rootfs.\"{c}\"]\nversion = \"20251201.0123456789ab\"\n"
        ));
        for arch in ["amd64", "arm64"] {
            text.push_str(&format!("[rootfs.\"{c}\".arch.\"{arch}\"]\nkey = {key}\n"));
        }
    }
    RootfsLockfile::parse(Path::new("rootfs.lock"), &text).unwrap()
}

struct DeploySample {
    format: Format,
    text: String,
    lock: RootfsLockfile,
}

fn deploy_samples() -> Vec<DeploySample> {
    [
        (Format::TestConfigs, "tests/data/test-configs.2021-12.yaml"),
        (
            Format::RootfsImages,
            "tests/data/rootfs-images.2022-12.yaml",
        ),
    ]
    .into_iter()
    .map(|(format, rel)| {
        let text = read(rel);
        DeploySample {
            format,
            lock: lock_for(&text),
            text,
        }
    })
    .collect()
}

/// Plans (with and without a storage URL), then applies with every file served and with
/// none: no panic, in time, and an applied text still parses.
fn check_deploy(text: &str, format: Format, lock: &RootfsLockfile) -> Result<(), TestCaseError> {
    for storage in [None, Some(STORAGE)] {
        let Ok(plan) = timed("deploy::plan", || deploy::plan(text, format, lock, storage)) else {
            continue;
        };
        let everything: BTreeSet<String> = plan.urls();
        for missing in [BTreeSet::new(), everything] {
            if let Ok(done) = timed("deploy::apply", || deploy::apply(text, &plan, &missing)) {
                prop_assert_eq!(done.entries.len(), plan.entries.len());
                let parsed = serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&done.text);
                prop_assert!(parsed.is_ok(), "{:?}", parsed.err());
            }
        }
    }
    Ok(())
}

#[test]
fn deploy_samples_plan_and_apply() {
    for s in deploy_samples() {
        let plan = deploy::plan(&s.text, s.format, &s.lock, Some(STORAGE)).unwrap();
        assert!(plan.entries.iter().any(|e| e.changes()));
        let done = deploy::apply(&s.text, &plan, &BTreeSet::new()).unwrap();
        assert_ne!(done.text, s.text);
    }
}

#[test]
fn fuzz_deploy_arbitrary() {
    let lock = &deploy_samples()[0].lock;
    check("deploy::plan(arbitrary)", arbitrary_text(), |text| {
        check_deploy(&text, Format::TestConfigs, lock)?;
        check_deploy(&text, Format::RootfsImages, lock)
    });
}

#[test]
fn fuzz_deploy_mutated() {
    let samples = deploy_samples();
    check(
        "deploy::plan(mutated)",
        mutated_sample(samples.len()),
        |(i, muts)| {
            let s = &samples[i];
            check_deploy(&mutate(&s.text, &muts), s.format, &s.lock)
        },
    );
}

fn import_options() -> [ImportOptions; 2] {
    [
        ImportOptions {
            release: None,
            source_date_epoch: 1,
            known_packages: None,
            kernelci_core: None,
        },
        ImportOptions {
            release: Some("bookworm".into()),
            source_date_epoch: 1_764_547_200,
            known_packages: Some(["bash", "isc-dhcp-client"].map(String::from).into()),
            kernelci_core: Some(kci_build::core::gitsource::GitSourceSpec {
                url: "https://github.com/kernelci/kernelci-core.git".into(),
                git_ref: "main".into(),
            }),
        },
    ]
}

/// Converts with and without `--release`: no panic, in time, and every recipe it returns
/// is one `recipes/<name>.toml` would load as it is.
fn check_import(yaml: &str) -> Result<(), TestCaseError> {
    for opts in import_options() {
        let Ok(got) = timed("rootfs::import", || rootfs::import(yaml, &opts)) else {
            continue;
        };
        for (from, r) in &got.recipes {
            let file = PathBuf::from(format!("recipes/{}.toml", r.name));
            let back = RootfsRecipe::parse(&file, &r.to_toml("# converted\n"));
            prop_assert!(
                back.as_ref().ok() == Some(r),
                "config {from:?} converts to a recipe that does not load: {:?}",
                back.err().map(|e| e.to_string())
            );
        }
    }
    Ok(())
}

#[test]
fn rootfs_configs_import_as_they_are() {
    let yaml = read("tests/data/rootfs-configs.2022-10.yaml");
    for opts in import_options() {
        assert!(!rootfs::import(&yaml, &opts).unwrap().recipes.is_empty());
    }
}

#[test]
fn fuzz_import_arbitrary() {
    check("rootfs::import(arbitrary)", arbitrary_text(), |text| {
        check_import(&text)
    });
}

#[test]
fn fuzz_import_mutated() {
    let yaml = read("tests/data/rootfs-configs.2022-10.yaml");
    check("rootfs::import(mutated)", mutations(), |muts| {
        check_import(&mutate(&yaml, &muts))
    });
}

/// Config names are file names and URL segments: whatever the YAML's keys, a recipe
/// never gets one that leaves `recipes/` or that the loader refuses.
#[test]
fn fuzz_import_config_names() {
    check(
        "rootfs::import(names)",
        prop_oneof![
            proptest::sample::select(NASTY).prop_map(str::to_owned),
            any::<String>(),
            "[a-z./-]{0,12}",
        ],
        |name| {
            let quoted = serde_json::to_string(&name).unwrap();
            let yaml = format!(
                "rootfs_configs:\n  {quoted}:\n    rootfs_type: debos\n    debian_release: bookworm\n    arch_list: [amd64]\n"
            );
            check_import(&yaml)
        },
    );
}

/// The classic: nine levels of nine aliases, 9^9 nodes once expanded.
fn billion_laughs() -> String {
    let mut s = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    let names = ["a", "b", "c", "d", "e", "f", "g", "h", "i"];
    for w in names.windows(2) {
        let refs = vec![format!("*{}", w[0]); 9].join(",");
        s.push_str(&format!("{}: &{} [{refs}]\n", w[1], w[1]));
    }
    s
}

/// Few levels, each a wide list: `width` scalars, then `levels` lists of `width` aliases
/// to the level below. serde_yaml_ng limits alias *jumps* to 100 per event, but each jump
/// here replays a whole list, so without a node budget this builds about
/// `100 × 3·width × width` values from a few kilobytes of text.
fn wide_bomb(width: usize, levels: usize) -> String {
    let mut s = format!("l0: &l0 [{}]\n", vec!["0"; width].join(","));
    for l in 1..=levels {
        let refs = vec![format!("*l{}", l - 1); width].join(",");
        s.push_str(&format!("l{l}: &l{l} [{refs}]\n"));
    }
    s
}

/// Aliases as the values of merge keys: `<<: [*m, *m, …]`, nested.
fn merge_bomb(width: usize, levels: usize) -> String {
    let mut s = format!(
        "m0: &m0 {{{}}}\n",
        (0..width)
            .map(|i| format!("k{i}: {i}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for l in 1..=levels {
        let refs = vec![format!("*m{}", l - 1); width].join(", ");
        s.push_str(&format!(
            "m{l}: &m{l} {{x{l}: [{refs}], <<: *m{}}}\n",
            l - 1
        ));
    }
    s
}

/// A bomb alone, and its last anchor used where deploy and import look: as the value of
/// `file_systems`, inside a config, and as a mapping key.
fn wrapped(body: &str) -> [String; 4] {
    let last = body.lines().last().unwrap().split(':').next().unwrap();
    [
        body.to_owned(),
        format!("{body}file_systems: {{x: *{last}}}\n"),
        format!("{body}rootfs_configs: {{x: {{arch_list: *{last}}}}}\n"),
        format!("{body}file_systems: {{? *{last} : 1}}\n"),
    ]
}

/// Peak resident memory of this process, in KiB (Linux).
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Regression: `wide_bomb(300, 3)` is 4,240 bytes; before `check_alias_expansion`,
/// `deploy::plan` and `rootfs::import` spent 27 s and 3 GB on it before serde_yaml_ng gave
/// up ("repetition limit exceeded"), and `wide_bomb(600, 3)` (8 KB) went past 8 GB. (The
/// sizes here stay survivable without the guard: they fail on the time bound instead.)
#[test]
fn yaml_alias_bombs_are_refused_quickly() {
    let lock = &deploy_samples()[0].lock;
    let bombs = [
        ("billion laughs", billion_laughs()),
        ("wide bomb", wide_bomb(300, 3)),
        ("merge bomb", merge_bomb(100, 3)),
    ];
    for (name, body) in bombs {
        for yaml in wrapped(&body) {
            let started = Instant::now();
            for format in [Format::TestConfigs, Format::RootfsImages] {
                let plan = timed(name, || deploy::plan(&yaml, format, lock, Some(STORAGE)));
                assert!(plan.is_err(), "{name}: deploy::plan accepted it");
            }
            for opts in import_options() {
                let got = timed(name, || rootfs::import(&yaml, &opts));
                assert!(got.is_err(), "{name}: rootfs::import accepted it");
            }
            eprintln!(
                "{name} ({} bytes): refused in {:?}, peak RSS {:?} KiB",
                yaml.len(),
                started.elapsed(),
                peak_rss_kib()
            );
        }
        let err = deploy::check_alias_expansion(&body).unwrap_err();
        assert!(
            err.contains("alias") || err.contains("repetition limit"),
            "{name}: {err}"
        );
    }
    // Whatever ran beside this test, nothing came near the gigabytes a bomb takes.
    if let Some(kib) = peak_rss_kib() {
        assert!(kib < 2 << 20, "peak RSS {kib} KiB");
    }
}

/// The budget is far above KernelCI's real files, and holds at its edge.
#[test]
fn yaml_node_budget_edge() {
    for rel in [
        "tests/data/test-configs.2021-12.yaml",
        "tests/data/rootfs-images.2022-12.yaml",
        "tests/data/rootfs-configs.2022-10.yaml",
    ] {
        deploy::check_alias_expansion(&read(rel)).unwrap();
    }
    // 491 + 1 + 490 × 491 = 241,082 nodes: accepted; 500 wide is 251,002: refused.
    let ok = timed("490 wide", || {
        deploy::check_alias_expansion(&wide_bomb(490, 1))
    });
    assert!(ok.is_ok(), "{ok:?}");
    let err = timed("500 wide", || {
        deploy::check_alias_expansion(&wide_bomb(500, 1))
    });
    assert!(err.unwrap_err().contains("250000 nodes"));
}

/// Bombs of random shapes inside otherwise valid files. Each case counts up to 250,000
/// nodes, so this property runs 1/32 of `KCI_FUZZ_CASES` (at least 4).
#[test]
fn fuzz_yaml_alias_bombs() {
    let lock = &deploy_samples()[0].lock;
    let opts = &import_options()[0];
    let mut runner = TestRunner::new(Config {
        cases: (cases() / 32).max(4),
        ..config()
    });
    let shapes = (1usize..=300, 1usize..=3, any::<bool>(), 0usize..4);
    let result = runner.run(&shapes, |(width, levels, merge, wrap)| {
        let body = if merge {
            merge_bomb(width.min(100), levels)
        } else {
            wide_bomb(width, levels)
        };
        let yaml = &wrapped(&body)[wrap];
        let _ = timed("deploy::plan(bomb)", || {
            deploy::plan(yaml, Format::TestConfigs, lock, Some(STORAGE))
        });
        let _ = timed("rootfs::import(bomb)", || rootfs::import(yaml, opts));
        Ok(())
    });
    if let Err(e) = result {
        panic!("YAML alias bombs: {e}");
    }
}

/// The guard refuses nothing serde_yaml_ng parses, but for its node budget.
#[test]
fn fuzz_alias_guard_is_not_stricter_than_the_parser() {
    let samples: Vec<String> = [
        "tests/data/test-configs.2021-12.yaml",
        "tests/data/rootfs-images.2022-12.yaml",
        "tests/data/rootfs-configs.2022-10.yaml",
    ]
    .map(read)
    .to_vec();
    let n = samples.len();
    let text = prop_oneof![
        arbitrary_text(),
        mutated_sample(n).prop_map(move |(i, m)| mutate(&samples[i], &m)),
    ];
    check("check_alias_expansion", text, |text| {
        let guard = timed("check_alias_expansion", || {
            deploy::check_alias_expansion(&text)
        });
        match guard {
            Err(e) if e.contains("nodes once its aliases are expanded") => {}
            Err(e) => {
                let parsed = timed("serde_yaml_ng::from_str", || {
                    serde_yaml_ng::from_str::<serde_yaml_ng::Value>(&text)
                });
                prop_assert!(parsed.is_err(), "the guard refused what parses: {e}");
            }
            Ok(()) => {}
        }
        Ok(())
    });
}

/// Regression: config names that are not file names (`""` gave `recipes/.toml`,
/// `../../x` a file outside `--out`) are skipped with a problem, not converted.
#[test]
fn import_skips_config_names_that_are_not_file_names() {
    for name in ["", "../../etc/passwd", "a/b", ".hidden", "x\ny", "x y"] {
        let yaml = format!(
            "rootfs_configs:\n  {}:\n    debian_release: bookworm\n    arch_list: [amd64]\n",
            serde_json::to_string(name).unwrap()
        );
        for opts in import_options() {
            let got = rootfs::import(&yaml, &opts).unwrap();
            assert!(got.recipes.is_empty(), "{name:?}: {:?}", got.recipes);
            assert!(
                got.problems
                    .iter()
                    .any(|p| p.contains("not a plain config name")),
                "{name:?}: {:?}",
                got.problems
            );
        }
    }
}

/// Regression: a `script` or `test_overlay` leading out of `recipes/` (`../x.sh`, found by
/// `fuzz_import_mutated`) was converted into a recipe the loader refuses; now the config
/// is skipped with a problem.
#[test]
fn import_skips_configs_whose_paths_lead_out() {
    for (field, path) in [
        ("script", "../scripts/x.sh"),
        ("script", "/etc/passwd"),
        ("test_overlay", "overlays/../../x"),
        ("test_overlay", "/"),
    ] {
        let yaml = format!(
            "rootfs_configs:\n  bookworm:\n    debian_release: bookworm\n    arch_list: [amd64]\n    {field}: {path:?}\n"
        );
        for opts in import_options() {
            let got = rootfs::import(&yaml, &opts).unwrap();
            assert!(got.recipes.is_empty(), "{field} {path}: {:?}", got.recipes);
            assert_eq!(
                got.problems,
                [format!(
                    "bookworm.{field}: a path out of the recipes directory; config skipped"
                )]
            );
        }
    }
    // What the loader accepts still converts.
    let yaml = "rootfs_configs:\n  bookworm:\n    debian_release: bookworm\n    arch_list: [amd64]\n    script: scripts/x.sh\n    test_overlay: overlays/igt\n";
    assert_eq!(
        rootfs::import(yaml, &import_options()[0])
            .unwrap()
            .recipes
            .len(),
        1
    );
}

// ---------------------------------------------------------------------------------------
// 5. Registry answers: manifests, indexes, configs, layers and tokens through
//    `publish::fetch` against an HTTP double; challenges and Docker's config.json.
// ---------------------------------------------------------------------------------------

mod double {
    //! A registry and a storage server in this process: whatever bytes the test sets are
    //! what they answer.

    use super::*;
    use axum::body::Body;
    use axum::extract::{Path as UrlPath, State};
    use axum::http::{header, HeaderMap, Method, StatusCode};
    use axum::response::Response;
    use axum::routing::any;

    #[derive(Default)]
    pub struct Answers {
        pub port: u16,
        /// The manifest (or index) every manifest request gets.
        pub manifest: Vec<u8>,
        /// Blobs by digest.
        pub blobs: HashMap<String, Vec<u8>>,
        /// When set, requests without a bearer token get a challenge, and the token
        /// service answers this.
        pub token: Option<Vec<u8>>,
        /// Storage: the status, `Content-Length` of a HEAD and body of a GET.
        pub status: u16,
        pub length: String,
        pub body: Vec<u8>,
    }

    pub type Shared = Arc<Mutex<Answers>>;

    fn answer(status: u16, headers: &[(&str, String)], body: Vec<u8>) -> Response {
        let mut r = Response::builder()
            .status(StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT));
        for (k, v) in headers {
            r = r.header(*k, v.as_str());
        }
        r.body(Body::from(body)).unwrap_or_else(|_| {
            Response::builder()
                .status(StatusCode::OK)
                .body(Body::empty())
                .unwrap()
        })
    }

    async fn v2(
        State(s): State<Shared>,
        method: Method,
        headers: HeaderMap,
        UrlPath(rest): UrlPath<String>,
    ) -> Response {
        let a = s.lock().unwrap();
        let bearer = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer "));
        if a.token.is_some() && !bearer {
            let challenge = format!(
                "Bearer realm=\"http://127.0.0.1:{}/token\",service=\"double\",scope=\"repository:x:pull\"",
                a.port
            );
            return answer(401, &[("WWW-Authenticate", challenge)], Vec::new());
        }
        if rest.contains("/manifests/") {
            let digest = Digest::of(&a.manifest).to_string();
            let body = if method == Method::HEAD {
                Vec::new()
            } else {
                a.manifest.clone()
            };
            return answer(200, &[("Docker-Content-Digest", digest)], body);
        }
        if let Some((_, d)) = rest.split_once("/blobs/") {
            if let Some(b) = a.blobs.get(d) {
                return answer(200, &[], b.clone());
            }
        }
        answer(404, &[], Vec::new())
    }

    async fn token(State(s): State<Shared>) -> Response {
        let body = s.lock().unwrap().token.clone().unwrap_or_default();
        answer(200, &[("Content-Type", "application/json".into())], body)
    }

    async fn public(State(s): State<Shared>, method: Method) -> Response {
        let a = s.lock().unwrap();
        if method == Method::HEAD {
            answer(
                a.status,
                &[("Content-Length", a.length.clone())],
                Vec::new(),
            )
        } else {
            answer(a.status, &[], a.body.clone())
        }
    }

    /// Starts a server on a loopback port; it lives as long as the runtime.
    pub fn start(rt: &tokio::runtime::Runtime) -> Shared {
        let shared: Shared = Arc::default();
        let app = axum::Router::new()
            .route("/v2/{*rest}", any(v2))
            .route("/token", any(token))
            .route("/pub/{*rest}", any(public))
            .with_state(shared.clone());
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        shared.lock().unwrap().port = listener.local_addr().unwrap().port();
        rt.spawn(async move { axum::serve(listener, app).await });
        shared
    }
}

fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    })
}

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// A one-layer image as a registry serves it: a gzip tar holding a dpkg status file, its
/// config, its manifest, and an index over the manifest.
struct Image {
    layer: Vec<u8>,
    config: Vec<u8>,
    manifest: Vec<u8>,
    index: Vec<u8>,
}

fn image() -> Image {
    let status =
        b"Package: bc\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.07.1-3+b1\n\n";
    let mut tar = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(status.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    tar.append_data(&mut h, "var/lib/dpkg/status", &status[..])
        .unwrap();
    let tar = tar.into_inner().unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut gz, &tar).unwrap();
    let layer = gz.finish().unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/usr/bin"]},
        "rootfs": {"type": "layers", "diff_ids": [Digest::of(&tar).to_string()]},
        "history": [{"created_by": "fuzz"}],
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": Digest::of(&config).to_string(),
            "size": config.len(),
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": Digest::of(&layer).to_string(),
            "size": layer.len(),
        }],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": kci_build::registry::INDEX_MEDIA_TYPE,
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": Digest::of(&manifest).to_string(),
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
        }],
    }))
    .unwrap();
    Image {
        layer,
        config,
        manifest,
        index,
    }
}

/// What the registry double answers in one case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Manifest,
    Index,
    Config,
    Layer,
    Token,
}

/// Sets the double to serve `img` with `part` replaced by `bytes`, then fetches the target
/// into a fresh store: no panic, in time.
fn fetch_with(
    shared: &double::Shared,
    img: &Image,
    part: Part,
    bytes: Vec<u8>,
) -> anyhow::Result<Option<kci_build::store::StoredImage>> {
    let dir = tempfile::tempdir().unwrap();
    let store = kci_build::store::Store::open(dir.path()).unwrap();
    let (config, layer) = match part {
        Part::Config => (bytes.clone(), img.layer.clone()),
        Part::Layer => (img.config.clone(), bytes.clone()),
        _ => (img.config.clone(), img.layer.clone()),
    };
    let manifest = match part {
        Part::Manifest | Part::Index => bytes.clone(),
        Part::Config | Part::Layer => {
            let mut m: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
            m["config"]["digest"] = Digest::of(&config).to_string().into();
            m["config"]["size"] = config.len().into();
            m["layers"][0]["digest"] = Digest::of(&layer).to_string().into();
            m["layers"][0]["size"] = layer.len().into();
            serde_json::to_vec(&m).unwrap()
        }
        Part::Token => img.manifest.clone(),
    };
    if part == Part::Index {
        // An index's members must be in the store already (they are targets of their own).
        store.put_bytes(&img.manifest).unwrap();
    }
    {
        let mut a = shared.lock().unwrap();
        a.manifest = manifest;
        a.blobs = [config, layer]
            .into_iter()
            .map(|b| (Digest::of(&b).to_string(), b))
            .collect();
        a.token = (part == Part::Token).then_some(bytes);
    }
    let port = shared.lock().unwrap().port;
    let reg = kci_build::registry::Registry::new(
        &format!("127.0.0.1:{port}"),
        &kci_build::settings::RegistrySettings::default(),
    )
    .unwrap();
    let target: TargetName = "busybox:amd64".parse().unwrap();
    let key = Digest::of(b"key");
    timed("publish::fetch", || {
        runtime().block_on(kci_build::publish::fetch(
            &reg, &store, "fuzz/", &target, &key,
        ))
    })
}

fn part_sample(img: &Image, part: Part) -> Vec<u8> {
    match part {
        Part::Manifest => img.manifest.clone(),
        Part::Index => img.index.clone(),
        Part::Config => img.config.clone(),
        Part::Layer => img.layer.clone(),
        Part::Token => br#"{"token":"abc","access_token":"abc","expires_in":300}"#.to_vec(),
    }
}

const PARTS: [Part; 5] = [
    Part::Manifest,
    Part::Index,
    Part::Config,
    Part::Layer,
    Part::Token,
];

#[test]
fn registry_double_serves_a_fetchable_image() {
    let shared = double::start(runtime());
    let img = image();
    for part in PARTS {
        let got = fetch_with(&shared, &img, part, part_sample(&img, part))
            .unwrap_or_else(|e| panic!("{part:?}: {e:#}"))
            .unwrap();
        if part != Part::Index {
            assert_eq!(got.layers.len(), 1, "{part:?}");
            assert_eq!(got.packages["bc:amd64"], "1.07.1-3+b1", "{part:?}");
        }
    }
}

#[test]
fn fuzz_registry_answers_arbitrary() {
    let shared = double::start(runtime());
    let img = image();
    check(
        "registry answers (arbitrary)",
        (
            proptest::sample::select(PARTS.to_vec()),
            prop_oneof![
                proptest::collection::vec(any::<u8>(), 0..4096),
                any::<String>().prop_map(String::into_bytes),
            ],
        ),
        |(part, bytes)| {
            let _ = fetch_with(&shared, &img, part, bytes);
            Ok(())
        },
    );
}

#[test]
fn fuzz_registry_answers_mutated() {
    let shared = double::start(runtime());
    let img = image();
    check(
        "registry answers (mutated)",
        (proptest::sample::select(PARTS.to_vec()), mutations()),
        |(part, muts)| {
            let sample = part_sample(&img, part);
            let bytes = if part == Part::Layer {
                let mut b = sample;
                for m in &muts {
                    m.apply(&mut b);
                }
                b
            } else {
                mutate(&String::from_utf8(sample).unwrap(), &muts).into_bytes()
            };
            let _ = fetch_with(&shared, &img, part, bytes);
            Ok(())
        },
    );
}

/// JSON that is valid but shaped wrong: values of every type where the manifest has one.
#[test]
fn fuzz_registry_manifest_values() {
    let shared = double::start(runtime());
    let img = image();
    let manifest: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
    let index: serde_json::Value = serde_json::from_slice(&img.index).unwrap();
    let pointers = [
        "/schemaVersion",
        "/mediaType",
        "/config",
        "/config/digest",
        "/config/size",
        "/layers",
        "/layers/0",
        "/layers/0/digest",
        "/layers/0/size",
        "/manifests",
        "/manifests/0/digest",
        "/manifests/0/platform",
    ];
    let value = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::json!(f)),
        ".*".prop_map(serde_json::Value::from),
        proptest::sample::select(NASTY).prop_map(serde_json::Value::from),
        Just(serde_json::json!([])),
        Just(serde_json::json!({})),
        Just(serde_json::json!([{"digest": "sha256:..", "size": -1}])),
        Just(serde_json::json!("sha256:../../etc/passwd")),
        Just(serde_json::json!(format!("sha512:{}", "0".repeat(128)))),
    ];
    check(
        "registry manifest values",
        (
            any::<bool>(),
            proptest::sample::select(pointers.to_vec()),
            value,
        ),
        |(is_index, at, v)| {
            let mut doc = if is_index {
                index.clone()
            } else {
                manifest.clone()
            };
            if let Some(slot) = doc.pointer_mut(at) {
                *slot = v;
            }
            let part = if is_index {
                Part::Index
            } else {
                Part::Manifest
            };
            let _ = fetch_with(&shared, &img, part, serde_json::to_vec(&doc).unwrap());
            Ok(())
        },
    );
}

#[test]
fn fuzz_registry_challenge() {
    use kci_build::registry::auth::{parse_challenge, Challenge};
    let sample = "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\",scope=\"repository:kernelci/gcc-12:pull,push\"";
    check(
        "parse_challenge",
        prop_oneof![
            arbitrary_text(),
            mutations().prop_map(move |m| mutate(sample, &m))
        ],
        |header| {
            if let Some(Challenge::Bearer { realm, .. }) =
                timed("parse_challenge", || parse_challenge(&header))
            {
                prop_assert!(header.contains(&realm));
            }
            Ok(())
        },
    );
}

#[test]
fn fuzz_docker_config() {
    use kci_build::registry::auth::from_docker_config;
    let sample = r#"{
  "auths": {
    "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
    "registry.test:5000": {"auth": "YWxpY2U6c2VjcmV0OndpdGg6Y29sb25z"}
  },
  "credHelpers": {"helper.test": "pass"},
  "credsStore": "desktop"
}"#;
    check(
        "from_docker_config",
        (
            prop_oneof![
                arbitrary_text(),
                mutations().prop_map(move |m| mutate(sample, &m))
            ],
            proptest::sample::select(vec![
                "index.docker.io",
                "registry.test:5000",
                "helper.test",
                "elsewhere.test",
                "",
            ]),
        ),
        |(text, host)| {
            // The helper is never run: it answers nothing.
            timed("from_docker_config", || {
                from_docker_config(&text, host, &|_, _| None)
            });
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------
// 6. apt: InRelease, Packages, request paths, suite names; dpkg's status file.
// ---------------------------------------------------------------------------------------

const HEX_A: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
const HEX_B: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn inrelease() -> String {
    format!(
        "-----BEGIN PGP SIGNED MESSAGE-----
Hash: SHA512

Origin: Debian
Label: Debian
Suite: stable
Codename: bookworm
Date: Sat, 08 Nov 2025 09:00:00 UTC
Architectures: all amd64 arm64
Components: main contrib
MD5Sum:
 0123456789abcdef0123456789abcdef 1234 main/binary-amd64/Packages.xz
SHA256:
 {HEX_A} 8786852 main/binary-amd64/Packages.xz
 {HEX_B} 9953402 main/binary-amd64/Packages.gz
 {HEX_A} 8700000 main/binary-arm64/Packages.xz
 {HEX_B} 3212 main/i18n/Translation-en.bz2
 {HEX_A} 0 main/binary-amd64/by-hash/SHA256/{HEX_A}
-----BEGIN PGP SIGNATURE-----

iQIzBAEBCgAdFiEEAAAAAAAAAAAAAAAAAAAAAAAAAAAFAmkOAAAACgkQAAAAAAAAAAA=
=abcd
-----END PGP SIGNATURE-----
"
    )
}

fn packages() -> String {
    format!(
        "Package: bash
Version: 5.2.15-2+b7
Installed-Size: 7164
Maintainer: Matthias Klose <doko@debian.org>
Architecture: amd64
Pre-Depends: libc6 (>= 2.36), libtinfo6 (>= 6)
Description: GNU Bourne Again SHell
 Bash is an sh-compatible command language interpreter.
 .
 It also incorporates useful features.
Filename: pool/main/b/bash/bash_5.2.15-2+b7_amd64.deb
Size: 1499652
SHA256: {HEX_A}

Package: bc
Version: 1.07.1-3+b1
Architecture: amd64
Filename: pool/main/b/bc/bc_1.07.1-3+b1_amd64.deb
Size: 109144
SHA256: {HEX_B}

Package: no-sha
Version: 1
Architecture: all
Filename: pool/main/n/no-sha/no-sha_1_all.deb
Size: 1
"
    )
}

fn check_release(text: &str) -> Result<(), TestCaseError> {
    if let Ok(r) = timed("Release::parse", || Release::parse(text)) {
        prop_assert!(!r.files.is_empty());
        for arch in ["amd64", "arm64", ""] {
            let _ = r.packages_indexes(arch);
            let _ = r.index_files_for(arch);
        }
        for l in r.files.values() {
            let _ = r.by_hash(&l.sha256);
        }
    }
    Ok(())
}

fn check_packages(text: &str) -> Result<(), TestCaseError> {
    if let Ok(debs) = timed("parse_packages", || apt::parse_packages(text)) {
        for d in debs {
            let _ = apt::deb_file_parts(&d.filename);
        }
    }
    Ok(())
}

/// A request apt may make is classified without `..`, `.` or empty components anywhere.
fn check_request(path: &str) -> Result<(), TestCaseError> {
    let plain = |s: &str| !s.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    let suite_ok = |s: &SuiteId| plain(s.archive()) && plain(s.suite()) && !s.suite().contains('/');
    match timed("Request::parse", || Request::parse(path)) {
        None => {}
        Some(Request::InRelease(s)) | Some(Request::DetachedRelease(s)) => {
            prop_assert!(suite_ok(&s), "{path:?} → {s}");
            prop_assert!(plain(s.inrelease_path().trim_start_matches('/')));
        }
        Some(Request::Index { suite, path: p }) => {
            prop_assert!(suite_ok(&suite), "{path:?} → {suite}");
            prop_assert!(plain(&p), "{path:?} → {p:?}");
        }
        Some(Request::ByHash { suite, .. }) => prop_assert!(suite_ok(&suite), "{path:?}"),
        Some(Request::Pool { archive, path: p }) => {
            prop_assert!(
                plain(&archive) || archive.is_empty(),
                "{path:?} → {archive:?}"
            );
            prop_assert!(plain(&p), "{path:?} → {p:?}");
        }
    }
    Ok(())
}

const REQUESTS: &[&str] = &[
    "/debian/dists/bookworm/InRelease",
    "/debian-security/dists/bookworm-security/Release.gpg",
    "/debian/dists/bookworm/main/binary-amd64/Packages.xz",
    "/debian/dists/bookworm/main/binary-amd64/by-hash/SHA256/0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "/debian/pool/main/b/bash/bash_5.2.15-2%2bb7_amd64.deb?x=1#y",
    "/debian/pool/main/g/gcc-12/cpp-12_12.2.0-14%7edeb12u1_amd64.deb",
];

#[test]
fn apt_samples_parse() {
    assert_eq!(Release::parse(&inrelease()).unwrap().files.len(), 5);
    assert_eq!(apt::parse_packages(&packages()).unwrap().len(), 2);
    for r in REQUESTS {
        assert!(Request::parse(r).is_some(), "{r}");
    }
}

#[test]
fn fuzz_apt_release() {
    let sample = inrelease();
    check(
        "Release::parse",
        prop_oneof![
            arbitrary_text(),
            arbitrary_text().prop_map(|t| format!("-----BEGIN PGP SIGNED MESSAGE-----\n\n{t}")),
            mutations().prop_map(move |m| mutate(&sample, &m)),
        ],
        |text| check_release(&text),
    );
}

#[test]
fn fuzz_apt_packages() {
    let sample = packages();
    check(
        "parse_packages",
        prop_oneof![
            arbitrary_text(),
            mutations().prop_map(move |m| mutate(&sample, &m))
        ],
        |text| check_packages(&text),
    );
}

#[test]
fn fuzz_apt_requests() {
    check(
        "Request::parse",
        prop_oneof![
            arbitrary_text(),
            "(/|[a-z]{1,3}|\\.{1,3}|%[0-9a-fA-F+-]{0,2}|dists|pool|by-hash|SHA256|InRelease){0,12}",
            (proptest::sample::select(REQUESTS), mutations()).prop_map(|(r, m)| mutate(r, &m)),
        ],
        |path| check_request(&path),
    );
}

#[test]
fn fuzz_names() {
    check(
        "names",
        prop_oneof![
            arbitrary_text(),
            "[a-z0-9:/._~+-]{0,20}",
            "sha256:[0-9a-fA-F]{60,68}",
            proptest::sample::select(NASTY).prop_map(str::to_owned),
        ],
        |s| {
            timed("names", || {
                if let Ok(d) = s.parse::<Digest>() {
                    assert_eq!(d.as_str(), s);
                    assert_eq!(d.hex().len(), 64);
                    let _ = d.short();
                }
                if let Ok(t) = s.parse::<TargetName>() {
                    assert_eq!(t.as_str(), s);
                    let _ = (t.image(), t.tag(), t.file_stem());
                }
                if let Ok(p) = s.parse::<Platform>() {
                    assert_eq!(p.to_string().parse::<Platform>().unwrap(), p);
                }
                if let Ok(id) = s.parse::<SuiteId>() {
                    assert_eq!(id.to_string().parse::<SuiteId>().unwrap(), id);
                }
                let _ = SuiteId::of_mirror(&s, "bookworm");
                let _ = apt::SuiteSource::of_mirror(&s, &s);
            });
            Ok(())
        },
    );
}

#[test]
fn fuzz_dpkg_status() {
    let sample = "Package: bc\nStatus: install ok installed\nArchitecture: amd64\nVersion: 1.07.1-3+b1\nDescription: x\n more\n\nPackage: gone\nStatus: deinstall ok config-files\nArchitecture: amd64\nVersion: 1\n";
    check(
        "dpkg::installed",
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..4096),
            mutations().prop_map(move |m| {
                let mut b = sample.as_bytes().to_vec();
                for x in &m {
                    x.apply(&mut b);
                }
                b
            }),
        ],
        |bytes| {
            timed("dpkg::installed", || kci_build::dpkg::installed(&bytes));
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------
// 7. Debian versions.
// ---------------------------------------------------------------------------------------

fn version() -> impl Strategy<Value = String> {
    prop_oneof![
        "([0-9]{1,3}:)?[0-9][0-9a-z.+~]{0,10}(-[0-9a-z.+~]{1,8})?",
        "[0-9a-z.:+~-]{0,16}",
        "[0-9]{20,45}(:[0-9]{20,45})?",
        any::<String>(),
    ]
}

#[test]
fn fuzz_debversion() {
    use std::cmp::Ordering;
    check(
        "debversion::compare",
        proptest::collection::vec(version(), 1..12),
        |mut vs| {
            timed("debversion::compare", || {
                for a in &vs {
                    assert_eq!(debversion::compare(a, a), Ordering::Equal, "{a:?}");
                    for b in &vs {
                        let ab = debversion::compare(a, b);
                        assert_eq!(ab, debversion::compare(b, a).reverse(), "{a:?} {b:?}");
                        for c in &vs {
                            if ab != Ordering::Greater
                                && debversion::compare(b, c) != Ordering::Greater
                            {
                                assert_ne!(
                                    debversion::compare(a, c),
                                    Ordering::Greater,
                                    "not transitive: {a:?} {b:?} {c:?}"
                                );
                            }
                        }
                    }
                }
                // Digit runs compare by value at any length: one more digit is more.
                for a in &vs {
                    let digits: String = a.chars().filter(char::is_ascii_digit).collect();
                    let n = digits.trim_start_matches('0');
                    if !n.is_empty() {
                        let (m, more) = (format!("1.{n}"), format!("1.{n}0"));
                        assert_eq!(debversion::compare(&m, &more), Ordering::Less, "{m} {more}");
                        let (e, more) = (format!("{n}:1"), format!("{n}0:0"));
                        assert_eq!(debversion::compare(&e, &more), Ordering::Less, "{e} {more}");
                    }
                }
                // A total order: sorting never panics, and the result is sorted.
                vs.sort_by(|a, b| debversion::compare(a, b));
                for w in vs.windows(2) {
                    assert_ne!(debversion::compare(&w[0], &w[1]), Ordering::Greater);
                }
            });
            Ok(())
        },
    );
}

// ---------------------------------------------------------------------------------------
// 8. Storage answers: HEAD sizes, fetched manifests, names.
// ---------------------------------------------------------------------------------------

fn rootfs_manifest() -> Vec<u8> {
    let d = |b: &[u8]| Digest::of(b);
    let m = RootfsManifest {
        config: "bookworm".into(),
        arch: "amd64".into(),
        key: d(b"key"),
        source_date_epoch: 1_764_547_200,
        packages: BTreeMap::from([("bash:amd64".into(), "5.2.15-2+b7".into())]),
        artifacts: ["rootfs.cpio.gz", "rootfs.ext4.xz"]
            .into_iter()
            .map(|f| {
                (
                    f.to_owned(),
                    kci_build::core::rootfs_lock::ArtifactInfo {
                        sha256: d(f.as_bytes()),
                        size: 7,
                        url: Some(format!("{STORAGE}/bookworm/v/amd64/{f}")),
                    },
                )
            })
            .collect(),
        debs: BTreeMap::from([("debian/pool/main/b/bash/bash.deb".into(), d(b"deb"))]),
    };
    serde_json::to_vec_pretty(&m).unwrap()
}

#[test]
fn storage_double_serves_a_manifest() {
    let shared = double::start(runtime());
    let port = shared.lock().unwrap().port;
    let storage = kci_build::storage::Storage::open_with_token(
        &format!("http://127.0.0.1:{port}/api"),
        Some(&format!("http://127.0.0.1:{port}/pub")),
        None,
        Some("token".into()),
    )
    .unwrap();
    {
        let mut a = shared.lock().unwrap();
        a.status = 200;
        a.length = "7".into();
        a.body = rootfs_manifest();
    }
    let rt = runtime();
    let bytes = rt
        .block_on(storage.fetch("bookworm/v", "amd64/manifest.json"))
        .unwrap()
        .unwrap();
    serde_json::from_slice::<RootfsManifest>(&bytes).unwrap();
    let size = rt.block_on(storage.size("bookworm/v", "amd64/rootfs.cpio.gz"));
    assert_eq!(size.unwrap(), Some(7));
}

#[test]
fn fuzz_storage_answers() {
    let shared = double::start(runtime());
    let port = shared.lock().unwrap().port;
    let storage = kci_build::storage::Storage::open_with_token(
        &format!("http://127.0.0.1:{port}/api"),
        Some(&format!("http://127.0.0.1:{port}/pub")),
        None,
        Some("token".into()),
    )
    .unwrap();
    let sample = String::from_utf8(rootfs_manifest()).unwrap();
    // 5xx answers are retried with a 1 s backoff: they are the retry loop's, not a parser's.
    let status = prop_oneof![
        4 => Just(200u16),
        1 => proptest::sample::select(vec![100u16, 204, 206, 301, 304, 400, 401, 403, 404, 410, 418, 499]),
    ];
    let length = prop_oneof![
        "[0-9]{0,25}",
        Just("-1".to_owned()),
        Just("7".to_owned()),
        Just(" 7 ".to_owned()),
        Just("18446744073709551616".to_owned()),
        "[ -~]{0,20}",
    ];
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..4096),
        mutations().prop_map(move |m| mutate(&sample, &m).into_bytes()),
    ];
    check(
        "storage answers",
        (status, length, body),
        |(status, length, body)| {
            {
                let mut a = shared.lock().unwrap();
                a.status = status;
                a.length = length;
                a.body = body;
            }
            let rt = runtime();
            if let Ok(Some(bytes)) = timed("Storage::fetch", || {
                rt.block_on(storage.fetch("bookworm/v", "amd64/manifest.json"))
            }) {
                timed("RootfsManifest from JSON", || {
                    serde_json::from_slice::<RootfsManifest>(&bytes).ok()
                });
            }
            let _ = timed("Storage::size", || {
                rt.block_on(storage.size("bookworm/v", "amd64/rootfs.cpio.gz"))
            });
            Ok(())
        },
    );
}

#[test]
fn fuzz_rootfs_manifest_json() {
    let sample = String::from_utf8(rootfs_manifest()).unwrap();
    check(
        "RootfsManifest JSON",
        prop_oneof![
            arbitrary_text(),
            mutations().prop_map(move |m| mutate(&sample, &m))
        ],
        |text| {
            timed("RootfsManifest from JSON", || {
                serde_json::from_str::<RootfsManifest>(&text).ok()
            });
            Ok(())
        },
    );
}

/// Names a storage answer is looked up by never leave the storage root.
#[test]
fn fuzz_storage_names() {
    let dir = tempfile::tempdir().unwrap();
    let storage = kci_build::storage::Storage::open_with_token(
        dir.path().to_str().unwrap(),
        None,
        None,
        None,
    )
    .unwrap();
    let name = prop_oneof![
        arbitrary_text(),
        "(/|\\.{1,3}|[a-z]{1,3}|~|\\+){0,8}",
        proptest::sample::select(NASTY).prop_map(str::to_owned),
    ];
    check("storage names", (name.clone(), name), |(d, n)| {
        let rt = runtime();
        let fetched = timed("Storage::fetch", || rt.block_on(storage.fetch(&d, &n)));
        let sized = timed("Storage::size", || rt.block_on(storage.size(&d, &n)));
        let below = |s: &str| {
            !s.trim_matches('/').is_empty()
                && s.trim_matches('/')
                    .split('/')
                    .all(|c| !c.is_empty() && !c.starts_with('.'))
        };
        if fetched.is_ok() || sized.is_ok() {
            prop_assert!(below(&d) && below(&n) && !n.starts_with('/'), "{d:?} {n:?}");
        }
        Ok(())
    });
}

// ---------------------------------------------------------------------------------------
// The Monday procedure's files: the journal (`prod/<date>.jsonl`) and the site file
// (`production.toml`).
// ---------------------------------------------------------------------------------------

use kci_build::core::procedure::{Entry, Event, Journal, Step};
use kci_build::core::site::Site;

fn check_journal(text: &str) -> Result<(), TestCaseError> {
    if let Err(e) = timed("Journal::parse", || {
        Journal::parse("prod/2026-12-07.jsonl", text)
    }) {
        prop_assert!(
            e.starts_with("prod/2026-12-07.jsonl, line "),
            "error does not name the journal and line: {e}"
        );
    }
    Ok(())
}

#[test]
fn fuzz_journal_arbitrary() {
    check("Journal::parse(arbitrary)", arbitrary_text(), |text| {
        check_journal(&text)
    });
}

/// Any strings in facts and errors (newlines, NUL, escapes, quotes) survive a write and a
/// read, one entry per line: a resumed run reads what the killed one wrote.
#[test]
fn fuzz_journal_strings_round_trip() {
    let entry = (
        0..Step::ALL.len(),
        proptest::sample::select(vec![
            Event::Start,
            Event::Progress,
            Event::Done,
            Event::Failed,
        ]),
        proptest::collection::btree_map(any::<String>(), any::<String>(), 0..4),
        proptest::option::of(any::<String>()),
    );
    check(
        "Journal round trip",
        proptest::collection::vec(entry, 0..6),
        |entries| {
            let journal = Journal {
                entries: entries
                    .into_iter()
                    .map(|(step, event, facts, error)| Entry {
                        at: "2026-12-07T08:00:00Z".into(),
                        step: Step::ALL[step],
                        event,
                        facts,
                        error,
                    })
                    .collect(),
            };
            let text = journal.to_text();
            prop_assert_eq!(text.lines().count(), journal.entries.len());
            let back = Journal::parse("journal", &text).map_err(TestCaseError::fail)?;
            prop_assert_eq!(back, journal);
            Ok(())
        },
    );
}

fn check_site(text: &str) -> Result<(), TestCaseError> {
    if let Err(e) = timed("Site::parse", || Site::parse("production.toml", text)) {
        let shown = e.to_string();
        prop_assert!(shown.starts_with("production.toml: "), "{shown}");
        prop_assert!(!shown.contains("hunter2"), "a secret in an error: {shown}");
    }
    Ok(())
}

#[test]
fn fuzz_site_arbitrary() {
    check("Site::parse(arbitrary)", arbitrary_text(), |text| {
        check_site(&text)
    });
}

#[test]
fn fuzz_site_mutated() {
    let sample = read("production.example.toml").replace("://", "://bot:hunter2@");
    check("Site::parse(mutated)", mutations(), |muts| {
        check_site(&mutate(&sample, &muts))
    });
}
