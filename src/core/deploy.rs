//! The deploy step's pure core: point the `file_systems` entries of KernelCI's
//! `test-configs.yaml` (or the generated `rootfs-images.yaml`) at the version directories
//! recorded in the rootfs lockfile.
//!
//! The file is hand-written, full of comments, anchors and merge keys, so it is never
//! re-serialised: [`plan`] finds each path scalar's byte span in yaml-edit's lossless tree,
//! [`apply`] splices the new text into those spans only (keeping the quote style), and then
//! re-parses the result with serde_yaml_ng to check that exactly the intended values changed.
//! Whether the new files are served is asked through [`Probe`], so this module does no I/O.

use std::collections::BTreeSet;
use std::future::Future;
use std::ops::Range;
use std::str::FromStr as _;

use serde::Serialize;
use serde_yaml_ng::Value;
use yaml_edit::{YamlFile, YamlNode};

use super::rootfs_lock::{valid_config_name, RootfsLockfile};

/// Which of KernelCI's files is being edited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// `config/core/test-configs.yaml`: `file_system_types` give each type's URL.
    #[default]
    TestConfigs,
    /// The generated `config/core/rootfs-images.yaml` (`file_systems:` only, sorted keys,
    /// every field explicit); its base URL comes from `--storage-url`.
    RootfsImages,
}

/// The only `file_system_types` entry whose paths come from the rootfs lockfile (debos builds).
pub const DEBIAN_TYPE: &str = "debian";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeployError {
    #[error("not valid YAML: {0}")]
    Parse(String),
    #[error("{0}")]
    Shape(String),
    /// The edited text does not re-parse to the intended document: nothing is written.
    #[error("refusing to write: the edit would change more than the intended paths: {0}")]
    Verify(String),
}

/// One path field of an entry and the scalar that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldEdit {
    /// `ramdisk`, `nfs`, …
    pub field: String,
    pub old: String,
    pub new: String,
    /// The scalar's bytes in the original text, quotes included.
    span: Range<usize>,
    /// `'`, `"`, or none for a plain scalar.
    quote: Option<char>,
}

/// A `file_systems` entry whose config is in the lockfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryPlan {
    pub name: String,
    pub config: String,
    /// The version directory the entry points at now (distinct ones joined by `, `).
    pub old: String,
    /// The lockfile's version directory for the config.
    pub new: String,
    pub fields: Vec<FieldEdit>,
    /// Every URL the new paths give, for every arch of the config; empty when unchanged.
    pub urls: Vec<String>,
}

impl EntryPlan {
    pub fn changes(&self) -> bool {
        self.fields.iter().any(|f| f.old != f.new)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// In document order.
    pub entries: Vec<EntryPlan>,
}

impl Plan {
    /// Every URL to check before writing, each once.
    pub fn urls(&self) -> BTreeSet<String> {
        self.entries
            .iter()
            .flat_map(|e| e.urls.iter().cloned())
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Points at the lockfile's version now (with `--check`: would).
    Updated,
    /// Already did.
    Unchanged,
    /// A file of the new version is not served: the entry keeps its old version.
    Missing,
}

/// One line of the `--json` report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EntryReport {
    pub name: String,
    pub config: String,
    pub old: String,
    pub new: String,
    pub status: Status,
    pub missing_urls: Vec<String>,
}

/// The edited text and what happened to each entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deployed {
    pub text: String,
    pub entries: Vec<EntryReport>,
}

/// Asks whether a URL is served (HTTP HEAD 200).
pub trait Probe: Sync {
    fn exists(&self, url: &str) -> impl Future<Output = Result<bool, ProbeError>> + Send;
}

/// The storage could not be asked at all (not the same as a 404).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{url}: {message}")]
pub struct ProbeError {
    pub url: String,
    pub message: String,
}

/// The URLs among `urls` that are not served, asking at most `jobs` at once.
pub async fn missing_urls<P: Probe>(
    probe: &P,
    urls: &BTreeSet<String>,
    jobs: usize,
) -> Result<BTreeSet<String>, ProbeError> {
    use futures_util::stream::{self, StreamExt as _, TryStreamExt as _};
    let answers: Vec<(String, bool)> = stream::iter(urls.iter())
        .map(|url| async move { Ok::<_, ProbeError>((url.clone(), probe.exists(url).await?)) })
        .buffer_unordered(jobs.max(1))
        .try_collect()
        .await?;
    Ok(answers
        .into_iter()
        .filter(|(_, ok)| !ok)
        .map(|(u, _)| u)
        .collect())
}

/// `<config>/<version>/{arch}/<file>` → its three parts.
pub fn split_path(path: &str) -> Option<(&str, &str, &str)> {
    let mut it = path.split('/');
    let (config, version, arch, file) = (it.next()?, it.next()?, it.next()?, it.next()?);
    (it.next().is_none()
        && arch == "{arch}"
        && valid_config_name(config)
        && valid_segment(version)
        && !file.is_empty()
        && !file.contains(['{', '}']))
    .then_some((config, version, file))
}

/// A version directory that is safe in a URL and as a plain YAML scalar.
fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'+'))
}

/// What deploying `lock` into `text` would change. `storage_url` replaces the types' URL.
pub fn plan(
    text: &str,
    format: Format,
    lock: &RootfsLockfile,
    storage_url: Option<&str>,
) -> Result<Plan, DeployError> {
    let shape = |m: String| DeployError::Shape(m);
    let doc = parse_merged(text)?;
    let file_systems = doc
        .get("file_systems")
        .and_then(Value::as_mapping)
        .ok_or_else(|| shape("no `file_systems:` mapping".into()))?;
    let base = match (storage_url, format) {
        (Some(url), _) => url.to_owned(),
        (None, Format::RootfsImages) => {
            return Err(shape(
                "rootfs-images.yaml does not say where files are served: pass --storage-url".into(),
            ))
        }
        (None, Format::TestConfigs) => doc
            .get("file_system_types")
            .and_then(|t| t.get(DEBIAN_TYPE))
            .and_then(|t| t.get("url"))
            .and_then(Value::as_str)
            .ok_or_else(|| {
                shape(format!(
                    "file_system_types.{DEBIAN_TYPE}.url: missing (or pass --storage-url)"
                ))
            })?
            .to_owned(),
    };
    let base = base.trim_end_matches('/');

    let mut cst: Option<yaml_edit::Mapping> = None;
    let mut entries = Vec::new();
    for (name, entry) in file_systems {
        let Some(name) = name.as_str() else { continue };
        if entry.get("type").and_then(Value::as_str) != Some(DEBIAN_TYPE) {
            continue;
        }
        let Some(fields) = entry.as_mapping() else {
            continue;
        };
        // Every string field shaped `<config>/<version>/{arch}/<file>`, in document order.
        let mut paths = Vec::new();
        for (k, v) in fields {
            if let (Some(k), Some(v)) = (k.as_str(), v.as_str()) {
                if let Some(parts) = split_path(v) {
                    paths.push((k, v, parts));
                }
            }
        }
        let configs: BTreeSet<&str> = paths.iter().map(|(_, _, (c, _, _))| *c).collect();
        let config = match configs.len() {
            0 => continue,
            1 => *configs.first().expect("one config"),
            _ => {
                return Err(shape(format!(
                    "file_systems.{name}: its paths name different configs ({}); fix them by hand",
                    configs.into_iter().collect::<Vec<_>>().join(", ")
                )))
            }
        };
        let Some(locked) = lock.configs.get(config).filter(|c| !c.arch.is_empty()) else {
            continue;
        };
        if !valid_segment(&locked.version) {
            return Err(shape(format!(
                "the lockfile's version of {config} ({:?}) is not a plain directory name",
                locked.version
            )));
        }
        if cst.is_none() {
            cst = Some(cst_file_systems(text)?);
        }
        let cst_entry = cst_entry(cst.as_ref().expect("parsed"), name)?;
        let mut edits = Vec::new();
        let mut old_versions: Vec<&str> = Vec::new();
        for (field, value, (_, version, file)) in paths {
            let (span, quote) = locate_scalar(text, &cst_entry, name, field, value)?;
            if !old_versions.contains(&version) {
                old_versions.push(version);
            }
            edits.push(FieldEdit {
                field: field.to_owned(),
                old: value.to_owned(),
                new: format!("{config}/{}/{{arch}}/{file}", locked.version),
                span,
                quote,
            });
        }
        let mut e = EntryPlan {
            name: name.to_owned(),
            config: config.to_owned(),
            old: old_versions.join(", "),
            new: locked.version.clone(),
            fields: edits,
            urls: Vec::new(),
        };
        if e.changes() {
            let urls: BTreeSet<String> = locked
                .arch
                .keys()
                .flat_map(|arch| {
                    e.fields
                        .iter()
                        .map(move |f| format!("{base}/{}", f.new.replace("{arch}", arch)))
                })
                .collect();
            e.urls = urls.into_iter().collect();
        }
        entries.push(e);
    }
    Ok(Plan { entries })
}

/// Applies the entries whose URLs are all served; the others keep their old version.
/// The result is re-parsed and compared with the intended document before it is returned.
pub fn apply(text: &str, plan: &Plan, missing: &BTreeSet<String>) -> Result<Deployed, DeployError> {
    let mut edits: Vec<(&str, &FieldEdit)> = Vec::new();
    let mut entries = Vec::new();
    for e in &plan.entries {
        let missing_urls: Vec<String> = e
            .urls
            .iter()
            .filter(|u| missing.contains(*u))
            .cloned()
            .collect();
        let status = if !e.changes() {
            Status::Unchanged
        } else if !missing_urls.is_empty() {
            Status::Missing
        } else {
            edits.extend(
                e.fields
                    .iter()
                    .filter(|f| f.old != f.new)
                    .map(|f| (e.name.as_str(), f)),
            );
            Status::Updated
        };
        entries.push(EntryReport {
            name: e.name.clone(),
            config: e.config.clone(),
            old: e.old.clone(),
            new: e.new.clone(),
            status,
            missing_urls,
        });
    }
    let mut out = text.to_owned();
    let mut by_start: Vec<&(&str, &FieldEdit)> = edits.iter().collect();
    by_start.sort_by_key(|(_, f)| std::cmp::Reverse(f.span.start));
    for (_, f) in by_start {
        let q = f.quote.map(String::from).unwrap_or_default();
        out.replace_range(f.span.clone(), &format!("{q}{}{q}", f.new));
    }
    verify(text, &out, &edits)?;
    Ok(Deployed { text: out, entries })
}

/// The new text parses (merge keys applied) to the old document with exactly the intended
/// values substituted.
fn verify(old: &str, new: &str, edits: &[(&str, &FieldEdit)]) -> Result<(), DeployError> {
    let mut expected = parse_merged(old)?;
    for (name, f) in edits {
        let slot = expected
            .get_mut("file_systems")
            .and_then(|fs| fs.get_mut(*name))
            .and_then(|e| e.get_mut(f.field.as_str()))
            .ok_or_else(|| DeployError::Verify(format!("file_systems.{name}.{}", f.field)))?;
        *slot = Value::String(f.new.clone());
    }
    let actual = parse_merged(new).map_err(|e| DeployError::Verify(e.to_string()))?;
    match first_difference(&expected, &actual, String::new()) {
        None => Ok(()),
        Some(at) => Err(DeployError::Verify(format!("`{at}` differs"))),
    }
}

/// The path of the first place two documents differ.
fn first_difference(a: &Value, b: &Value, at: String) -> Option<String> {
    match (a, b) {
        (Value::Mapping(x), Value::Mapping(y)) => {
            if x.len() != y.len() || x.keys().zip(y.keys()).any(|(k, l)| k != l) {
                return Some(if at.is_empty() { "(root)".into() } else { at });
            }
            x.iter().zip(y.values()).find_map(|((k, v), w)| {
                let key = k
                    .as_str()
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("{k:?}"));
                let path = if at.is_empty() {
                    key
                } else {
                    format!("{at}.{key}")
                };
                first_difference(v, w, path)
            })
        }
        (Value::Sequence(x), Value::Sequence(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (v, w))| first_difference(v, w, format!("{at}[{i}]"))),
        _ if a == b => None,
        _ => Some(if at.is_empty() { "(root)".into() } else { at }),
    }
}

fn parse_merged(text: &str) -> Result<Value, DeployError> {
    check_alias_expansion(text).map_err(DeployError::Parse)?;
    let mut v: Value =
        serde_yaml_ng::from_str(text).map_err(|e| DeployError::Parse(e.to_string()))?;
    v.apply_merge()
        .map_err(|e| DeployError::Parse(e.to_string()))?;
    Ok(v)
}

/// The most nodes a YAML document may have once its aliases are expanded: KernelCI's files
/// have a few thousand. More is an alias bomb ("billion laughs"), which serde_yaml_ng's own
/// limit does not stop: it bounds alias jumps, not the nodes each jump replays.
pub const MAX_YAML_NODES: usize = 250_000;

/// Refuses YAML whose aliases expand past [`MAX_YAML_NODES`] nodes, counting them without
/// building any, before it is parsed into a value.
pub fn check_alias_expansion(text: &str) -> Result<(), String> {
    use serde::de::{self, DeserializeSeed, IgnoredAny, VariantAccess as _, Visitor};
    use std::cell::Cell;

    /// Counts each node it visits (a replayed alias visits its anchor's nodes again).
    #[derive(Clone, Copy)]
    struct Nodes<'c>(&'c Cell<usize>);

    impl Nodes<'_> {
        fn count<E: de::Error>(self) -> Result<(), E> {
            self.0.set(self.0.get() + 1);
            if self.0.get() > MAX_YAML_NODES {
                return Err(E::custom(format!(
                    "more than {MAX_YAML_NODES} nodes once its aliases are expanded (an alias bomb?)"
                )));
            }
            Ok(())
        }
    }

    impl<'de> DeserializeSeed<'de> for Nodes<'_> {
        type Value = ();
        fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Nodes<'_> {
        type Value = ();
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a YAML node")
        }
        fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
            self.count()
        }
        fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
            self.count()
        }
        fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
            self.count()
        }
        fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
            self.count()
        }
        fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
            self.count()
        }
        fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
            self.count()
        }
        fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
            self.count()
        }
        fn visit_bytes<E: de::Error>(self, _: &[u8]) -> Result<(), E> {
            self.count()
        }
        fn visit_unit<E: de::Error>(self) -> Result<(), E> {
            self.count()
        }
        fn visit_none<E: de::Error>(self) -> Result<(), E> {
            self.count()
        }
        fn visit_some<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            self.count()?;
            self.deserialize(d)
        }
        fn visit_newtype_struct<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
            self.count()?;
            self.deserialize(d)
        }
        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
            self.count()?;
            while seq.next_element_seed(self)?.is_some() {}
            Ok(())
        }
        fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
            self.count()?;
            while map.next_key_seed(self)?.is_some() {
                map.next_value_seed(self)?;
            }
            Ok(())
        }
        fn visit_enum<A: de::EnumAccess<'de>>(self, data: A) -> Result<(), A::Error> {
            // A tagged node (`!tag value`).
            self.count()?;
            let (IgnoredAny, value) = data.variant()?;
            value.newtype_variant_seed(self)
        }
    }

    let nodes = Cell::new(0);
    Nodes(&nodes)
        .deserialize(serde_yaml_ng::Deserializer::from_str(text))
        .map_err(|e| e.to_string())
}

/// The lossless tree's `file_systems` mapping.
fn cst_file_systems(text: &str) -> Result<yaml_edit::Mapping, DeployError> {
    let file = YamlFile::from_str(text).map_err(|e| DeployError::Parse(e.to_string()))?;
    if file.to_string() != text {
        return Err(DeployError::Shape(
            "the YAML editor does not reproduce this file byte for byte; refusing to edit it"
                .into(),
        ));
    }
    let root = file
        .document()
        .and_then(|d| d.as_mapping())
        .ok_or_else(|| DeployError::Shape("the document is not a mapping".into()))?;
    match root.get("file_systems") {
        Some(YamlNode::Mapping(m)) => Ok(m),
        Some(YamlNode::Alias(_)) => Err(DeployError::Shape(
            "file_systems: is an alias; cannot write through it".into(),
        )),
        _ => Err(DeployError::Shape(
            "file_systems: not a block or flow mapping in the file".into(),
        )),
    }
}

fn cst_entry(
    file_systems: &yaml_edit::Mapping,
    name: &str,
) -> Result<yaml_edit::Mapping, DeployError> {
    if file_systems.find_all_entries_by_key(name).count() > 1 {
        return Err(DeployError::Shape(format!(
            "file_systems.{name}: the key appears more than once"
        )));
    }
    match file_systems.get(name) {
        Some(YamlNode::Mapping(m)) => Ok(m),
        Some(YamlNode::Alias(_)) => Err(DeployError::Shape(format!(
            "file_systems.{name}: is an alias; cannot write through it (edit the anchor's entry)"
        ))),
        _ => Err(DeployError::Shape(format!(
            "file_systems.{name}: not a mapping in the file"
        ))),
    }
}

/// The byte span and quote style of `entry.field`, which must be a one-line scalar whose
/// text (inside its quotes) is exactly `value`, written in the entry itself.
fn locate_scalar(
    text: &str,
    entry: &yaml_edit::Mapping,
    name: &str,
    field: &str,
    value: &str,
) -> Result<(Range<usize>, Option<char>), DeployError> {
    let at = format!("file_systems.{name}.{field}");
    let mut found = entry.find_all_entries_by_key(field);
    let (Some(e), None) = (found.next(), found.next()) else {
        return Err(DeployError::Shape(format!(
            "{at}: not written once in the entry itself (a merge key brings it?); edit it by hand"
        )));
    };
    let scalar = match e.value_node() {
        Some(YamlNode::Scalar(s)) => s,
        Some(YamlNode::Alias(_)) => {
            return Err(DeployError::Shape(format!(
                "{at}: is an alias; cannot write through it (edit the anchor)"
            )))
        }
        _ => {
            return Err(DeployError::Shape(format!(
                "{at}: not a plain or quoted scalar (tagged?)"
            )))
        }
    };
    let r = YamlNode::Scalar(scalar.clone()).byte_range();
    let span = r.start as usize..r.end as usize;
    let raw = text
        .get(span.clone())
        .ok_or_else(|| DeployError::Shape(format!("{at}: byte range outside the file")))?;
    let (quote, inner) = match raw.chars().next() {
        Some(q @ ('\'' | '"')) if raw.len() >= 2 && raw.ends_with(q) => {
            (Some(q), &raw[1..raw.len() - 1])
        }
        _ => (None, raw),
    };
    if raw != scalar.value() || inner != value || raw.contains(['\n', '\r', '#']) {
        return Err(DeployError::Shape(format!(
            "{at}: written with escapes, an anchor or over several lines ({raw:?}); edit it by hand"
        )));
    }
    Ok((span, quote))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rootfs_lock::{LockedConfig, LockedRootfs};

    const TEXT: &str = "\
# comment
file_system_types:
  debian: &debian
    url: 'http://storage.test/rootfs/debian'
  other:
    url: http://elsewhere.test

file_systems:

  debian_bullseye_nfs:   # the NFS one
    type: debian
    ramdisk: 'bullseye/20211224.1/{arch}/initrd.cpio.gz'
    nfs: \"bullseye/20211224.1/{arch}/full.rootfs.tar.xz\"
    root_type: nfs

  debian_bullseye-igt_ramdisk: &igt
    type: debian
    ramdisk: bullseye-igt/20211224.0/{arch}/rootfs.cpio.gz

  other_bullseye_ramdisk:
    type: other
    ramdisk: 'bullseye/20211224.1/{arch}/rootfs.cpio.gz'

  debian_buster_ramdisk:
    type: debian
    ramdisk: 'buster/20211224.1/{arch}/rootfs.cpio.gz'
";

    fn lock(configs: &[(&str, &str, &[&str])]) -> RootfsLockfile {
        let key = format!("sha256:{}", "a".repeat(64)).parse().unwrap();
        RootfsLockfile {
            apt_index: Default::default(),
            git_source: Default::default(),
            url_source: Default::default(),
            configs: configs
                .iter()
                .map(|(c, v, arches)| {
                    let arch = arches
                        .iter()
                        .map(|a| {
                            (
                                a.to_string(),
                                LockedRootfs {
                                    key: Clone::clone(&key),
                                    input: Default::default(),
                                    package: Default::default(),
                                    artifact: Default::default(),
                                    deb: Default::default(),
                                },
                            )
                        })
                        .collect();
                    (
                        c.to_string(),
                        LockedConfig {
                            version: v.to_string(),
                            arch,
                        },
                    )
                })
                .collect(),
        }
    }

    fn sample_lock() -> RootfsLockfile {
        lock(&[
            ("bullseye", "20251201.0123456789ab", &["amd64", "arm64"]),
            ("bullseye-igt", "20251201.ba9876543210", &["amd64"]),
        ])
    }

    #[test]
    fn paths_are_recognised_by_shape() {
        assert_eq!(
            split_path("bullseye/20211224.1/{arch}/initrd.cpio.gz"),
            Some(("bullseye", "20211224.1", "initrd.cpio.gz"))
        );
        assert_eq!(split_path("qemu-{arch}/cip-{arch}.tar.gz"), None);
        assert_eq!(split_path("a/b/amd64/rootfs.cpio.gz"), None);
        assert_eq!(split_path("a/b/{arch}/c/d"), None);
        assert_eq!(split_path("a/../{arch}/x"), None);
    }

    #[test]
    fn plan_touches_debian_entries_of_locked_configs_only() {
        let p = plan(TEXT, Format::TestConfigs, &sample_lock(), None).unwrap();
        let names: Vec<_> = p.entries.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            ["debian_bullseye_nfs", "debian_bullseye-igt_ramdisk"]
        );
        let nfs = &p.entries[0];
        assert_eq!(
            (nfs.old.as_str(), nfs.new.as_str()),
            ("20211224.1", "20251201.0123456789ab")
        );
        assert_eq!(
            nfs.urls,
            [
                "http://storage.test/rootfs/debian/bullseye/20251201.0123456789ab/amd64/full.rootfs.tar.xz",
                "http://storage.test/rootfs/debian/bullseye/20251201.0123456789ab/amd64/initrd.cpio.gz",
                "http://storage.test/rootfs/debian/bullseye/20251201.0123456789ab/arm64/full.rootfs.tar.xz",
                "http://storage.test/rootfs/debian/bullseye/20251201.0123456789ab/arm64/initrd.cpio.gz",
            ]
        );
        let p = plan(
            TEXT,
            Format::TestConfigs,
            &sample_lock(),
            Some("http://127.0.0.1:9/x/"),
        )
        .unwrap();
        assert!(p
            .urls()
            .iter()
            .all(|u| u.starts_with("http://127.0.0.1:9/x/bull")));
        assert!(matches!(
            plan(TEXT, Format::RootfsImages, &sample_lock(), None),
            Err(DeployError::Shape(m)) if m.contains("--storage-url")
        ));
    }

    #[test]
    fn apply_splices_only_the_paths_and_keeps_quotes() {
        let p = plan(TEXT, Format::TestConfigs, &sample_lock(), None).unwrap();
        let d = apply(TEXT, &p, &BTreeSet::new()).unwrap();
        let expected = TEXT
            .replace(
                "'bullseye/20211224.1/{arch}/initrd.cpio.gz'",
                "'bullseye/20251201.0123456789ab/{arch}/initrd.cpio.gz'",
            )
            .replace(
                "\"bullseye/20211224.1/{arch}/full.rootfs.tar.xz\"",
                "\"bullseye/20251201.0123456789ab/{arch}/full.rootfs.tar.xz\"",
            )
            .replace(
                "bullseye-igt/20211224.0/",
                "bullseye-igt/20251201.ba9876543210/",
            );
        assert_eq!(d.text, expected);
        assert!(d.entries.iter().all(|e| e.status == Status::Updated));
        // A second run changes nothing.
        let p2 = plan(&d.text, Format::TestConfigs, &sample_lock(), None).unwrap();
        assert!(p2.entries.iter().all(|e| !e.changes() && e.urls.is_empty()));
        let d2 = apply(&d.text, &p2, &BTreeSet::new()).unwrap();
        assert_eq!(d2.text, d.text);
        assert!(d2.entries.iter().all(|e| e.status == Status::Unchanged));
    }

    #[test]
    fn an_entry_with_a_missing_file_keeps_its_version() {
        let p = plan(TEXT, Format::TestConfigs, &sample_lock(), None).unwrap();
        let gone =
            "http://storage.test/rootfs/debian/bullseye/20251201.0123456789ab/arm64/initrd.cpio.gz";
        let d = apply(TEXT, &p, &BTreeSet::from([gone.to_owned()])).unwrap();
        assert!(d
            .text
            .contains("'bullseye/20211224.1/{arch}/initrd.cpio.gz'"));
        assert!(d.text.contains("bullseye-igt/20251201.ba9876543210/"));
        assert_eq!(d.entries[0].status, Status::Missing);
        assert_eq!(d.entries[0].missing_urls, [gone]);
        assert_eq!(d.entries[1].status, Status::Updated);
    }

    #[test]
    fn a_path_written_through_an_alias_or_merge_is_refused() {
        let text = "\
file_systems:
  base: &p 'bullseye/1/{arch}/rootfs.cpio.gz'
  debian_bullseye_ramdisk:
    type: debian
    ramdisk: *p
";
        let e = plan(text, Format::TestConfigs, &sample_lock(), Some("http://s")).unwrap_err();
        assert!(e.to_string().contains("ramdisk: is an alias"), "{e}");
        let text = "\
file_systems:
  debian_bullseye_nfs: &nfs
    type: debian
    ramdisk: 'bullseye/1/{arch}/initrd.cpio.gz'
  debian_bullseye_copy:
    <<: *nfs
";
        let e = plan(text, Format::TestConfigs, &sample_lock(), Some("http://s")).unwrap_err();
        assert!(
            e.to_string().contains("debian_bullseye_copy.ramdisk"),
            "{e}"
        );
    }

    #[test]
    fn an_anchored_scalar_shared_elsewhere_fails_verification() {
        // The path scalar carries an anchor used outside file_systems: splicing it would
        // change the other place too, and the re-parse check must catch that.
        let text = "\
file_systems:
  debian_bullseye_ramdisk:
    type: debian
    ramdisk: 'bullseye/1/{arch}/rootfs.cpio.gz'
elsewhere:
  same: 'bullseye/1/{arch}/rootfs.cpio.gz'
";
        let p = plan(text, Format::TestConfigs, &sample_lock(), Some("http://s")).unwrap();
        let mut bad = p.clone();
        // Point the edit at the wrong scalar (as a buggy locator would).
        let other = text.rfind('\'').unwrap();
        let start = text[..other].rfind('\'').unwrap();
        bad.entries[0].fields[0].span = start..other + 1;
        let e = apply(text, &bad, &BTreeSet::new()).unwrap_err();
        assert!(matches!(e, DeployError::Verify(_)), "{e}");
        assert!(apply(text, &p, &BTreeSet::new()).is_ok());

        // A real anchor on the path, aliased elsewhere: refused one way or the other.
        let text = "\
file_systems:
  debian_bullseye_ramdisk:
    type: debian
    ramdisk: &r 'bullseye/1/{arch}/rootfs.cpio.gz'
elsewhere: *r
";
        let refused = plan(text, Format::TestConfigs, &sample_lock(), Some("http://s"))
            .and_then(|p| apply(text, &p, &BTreeSet::new()));
        assert!(refused.is_err(), "{refused:?}");
    }

    struct Fake(BTreeSet<&'static str>);
    impl Probe for Fake {
        async fn exists(&self, url: &str) -> Result<bool, ProbeError> {
            if url.contains("unreachable") {
                return Err(ProbeError {
                    url: url.into(),
                    message: "connection refused".into(),
                });
            }
            Ok(self.0.contains(url))
        }
    }

    #[tokio::test]
    async fn missing_urls_asks_every_url() {
        let urls: BTreeSet<String> = ["http://s/a", "http://s/b", "http://s/c"]
            .map(String::from)
            .into();
        let m = missing_urls(&Fake(BTreeSet::from(["http://s/b"])), &urls, 2)
            .await
            .unwrap();
        assert_eq!(
            m,
            BTreeSet::from(["http://s/a".into(), "http://s/c".into()])
        );
        let urls = BTreeSet::from(["http://unreachable/x".to_owned()]);
        assert!(missing_urls(&Fake(BTreeSet::new()), &urls, 2)
            .await
            .is_err());
    }
}
