//! Cache keys: one struct holding everything that decides a target's output.
//!
//! # Canonical encoding
//! The key of a target is `sha256(canonical_json(KeyInputs))`, where `canonical_json` is the
//! OLPC canonical form (keys sorted bytewise, no insignificant whitespace, integers only):
//!
//! ```text
//! { "context":      { "<path>": "<file fingerprint>", … },   // every file of the build context
//!   "key-format":   1,                                        // bump when this layout changes
//!   "output-format":"<OUTPUT_FORMAT>",                        // how kci-build writes bytes
//!   "parent":       { "name": "<target>", "manifest": "sha256:…" } | null,
//!   "members":      { "<target>": "sha256:…", … },             // indexes only
//!   "platform":     "linux/amd64",
//!   "recipe":       { "dockerfile": { "dockerfile": "…", "args": {…} } }
//!                 | { "bootstrap":  { "suite": …, "variant": …, "components": […],
//!                                     "packages": […], "mirror-sha256": "sha256:…" } }
//!                 | { "index": { "members": ["<target>", …] } },
//!   "apt-index":    { "debian/bookworm": "sha256:…", … },      // pinned InRelease per suite
//!   "source-date-epoch": 1717200000,
//!   "target":       "gcc-12:arm64" }
//! ```
//! A file fingerprint is `sha256:<hex> <mode>` for regular files (mode `644` or `755`),
//! `symlink <target>` for links and `dir` for directories. Because the parent enters as
//! its *output* digest, a change anywhere up the chain changes every descendant's key.
//! The Debian mirror enters as the sha256 of its URL: it decides bytes (apt's sources
//! list), but its host name must not be written into a committed lockfile; check it with
//! `printf %s "$URL" | sha256sum`.
//!
//! [`KeyInputs::facts`] flattens the same struct into `path = value` lines; the lockfile
//! stores them and `kci-build why` diffs them, so what is hashed and what is explained can
//! never drift apart.

use std::collections::BTreeMap;

use serde::Serialize;

use super::names::{Digest, Platform, TargetName};

/// Version of the encoding above.
pub const KEY_FORMAT: u32 = 1;

/// Everything about how kci-build turns a daemon's build result into bytes: the version
/// of the layer rewrite rules in `layer.rs` (order, clamping, owners, the scrub list — bump
/// it with any change there), the gzip library with its exact version, and the level.
pub const OUTPUT_FORMAT: &str = "oci-image-v1 layer-rules=1 gzip=zlib-rs-0.6.8 level=6";

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub struct KeyInputs {
    pub key_format: u32,
    pub output_format: String,
    pub target: TargetName,
    pub platform: Platform,
    pub source_date_epoch: u64,
    pub recipe: RecipeInputs,
    pub context: BTreeMap<String, String>,
    pub parent: Option<ParentInput>,
    /// An index's members and their manifest digests (absent from the encoding when empty,
    /// so single-platform keys are unchanged by the field's existence).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub members: BTreeMap<TargetName, Digest>,
    /// The pinned `InRelease` of every suite of the lockfile (`core::apt`), for every target
    /// that may install packages (absent when nothing is pinned, and for indexes).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub apt_index: BTreeMap<String, Digest>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RecipeInputs {
    Dockerfile {
        dockerfile: String,
        args: BTreeMap<String, String>,
    },
    Bootstrap {
        suite: String,
        variant: String,
        components: Vec<String>,
        packages: Vec<String>,
        #[serde(rename = "mirror-sha256")]
        mirror_sha256: Digest,
    },
    /// A multi-platform index over these member targets.
    Index { members: Vec<TargetName> },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentInput {
    pub name: TargetName,
    /// The parent's manifest digest in the store.
    pub manifest: Digest,
}

impl KeyInputs {
    /// The canonical bytes that are hashed.
    pub fn canonical_json(&self) -> Vec<u8> {
        canonical_json(self)
    }

    pub fn key(&self) -> Digest {
        Digest::of(&self.canonical_json())
    }

    /// One `dotted.path → value` fact per leaf, sorted. Secrets never enter a key, so
    /// these can be written to the lockfile as they are.
    pub fn facts(&self) -> BTreeMap<String, String> {
        let value = serde_json::to_value(self).expect("key inputs serialise");
        let mut out = BTreeMap::new();
        flatten("", &value, &mut out);
        out
    }
}

/// OLPC canonical JSON of any serialisable value.
pub fn canonical_json<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut ser =
        serde_json::Serializer::with_formatter(&mut buf, olpc_cjson::CanonicalFormatter::new());
    value
        .serialize(&mut ser)
        .expect("canonical JSON serialisation cannot fail for plain data");
    buf
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
    use serde_json::Value;
    let join = |k: &str| {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}.{k}")
        }
    };
    match v {
        Value::Object(m) => {
            for (k, v) in m {
                flatten(&join(k), v, out);
            }
        }
        Value::Array(a) => {
            let items: Vec<String> = a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(str::to_owned)
                        .unwrap_or_else(|| x.to_string())
                })
                .collect();
            out.insert(prefix.to_owned(), items.join(" "));
        }
        Value::String(s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        Value::Null => {
            out.insert(prefix.to_owned(), "none".to_owned());
        }
        other => {
            out.insert(prefix.to_owned(), other.to_string());
        }
    }
}

/// A changed, added or removed fact between two sets of key inputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactChange {
    pub path: String,
    pub old: Option<String>,
    pub new: Option<String>,
}

/// The facts that differ, sorted by path.
pub fn diff_facts(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<FactChange> {
    let mut paths: Vec<&String> = old.keys().chain(new.keys()).collect();
    paths.sort();
    paths.dedup();
    paths
        .into_iter()
        .filter(|p| old.get(*p) != new.get(*p))
        .map(|p| FactChange {
            path: p.clone(),
            old: old.get(p).cloned(),
            new: new.get(p).cloned(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn inputs(
        args: BTreeMap<String, String>,
        context: BTreeMap<String, String>,
        parent: Option<u8>,
        sde: u64,
        platform: bool,
    ) -> KeyInputs {
        KeyInputs {
            key_format: KEY_FORMAT,
            output_format: OUTPUT_FORMAT.into(),
            target: "gcc-12:x86".parse().unwrap(),
            platform: if platform {
                Platform::linux_amd64()
            } else {
                "linux/arm64".parse().unwrap()
            },
            source_date_epoch: sde,
            recipe: RecipeInputs::Dockerfile {
                dockerfile: "Dockerfile".into(),
                args,
            },
            context,
            parent: parent.map(|p| ParentInput {
                name: "build-base".parse().unwrap(),
                manifest: Digest::of(&[p]),
            }),
            members: BTreeMap::new(),
            apt_index: BTreeMap::new(),
        }
    }

    fn small_map() -> impl Strategy<Value = BTreeMap<String, String>> {
        prop::collection::btree_map("[ab]{1,2}", "[xy]{0,2}", 0..3)
    }

    proptest! {
        /// Two key-input values share a key exactly when they are equal: every field counts,
        /// and no two different inputs collide in the encoding (e.g. `a=b` vs `ab=`).
        #[test]
        fn key_changes_iff_an_input_changes(
            a1 in small_map(), c1 in small_map(), p1 in prop::option::of(0u8..2), s1 in 0u64..2, f1 in any::<bool>(),
            a2 in small_map(), c2 in small_map(), p2 in prop::option::of(0u8..2), s2 in 0u64..2, f2 in any::<bool>(),
        ) {
            let x = inputs(a1, c1, p1, s1, f1);
            let y = inputs(a2, c2, p2, s2, f2);
            prop_assert_eq!(x == y, x.key() == y.key());
        }
    }

    #[test]
    fn canonical_encoding_is_stable() {
        let k = inputs(
            BTreeMap::from([("B".into(), "2".into()), ("A".into(), "1".into())]),
            BTreeMap::from([("Dockerfile".into(), "sha256:00 644".into())]),
            Some(1),
            7,
            true,
        );
        let text = String::from_utf8(k.canonical_json()).unwrap();
        assert_eq!(
            text,
            format!(
                r#"{{"context":{{"Dockerfile":"sha256:00 644"}},"key-format":1,"output-format":"{OUTPUT_FORMAT}","parent":{{"manifest":"{}","name":"build-base"}},"platform":"linux/amd64","recipe":{{"dockerfile":{{"args":{{"A":"1","B":"2"}},"dockerfile":"Dockerfile"}}}},"source-date-epoch":7,"target":"gcc-12:x86"}}"#,
                Digest::of(&[1])
            )
        );
        let facts = k.facts();
        assert_eq!(facts["recipe.dockerfile.args.A"], "1");
        assert_eq!(facts["parent.name"], "build-base");
        let mut other = k.clone();
        other
            .context
            .insert("Dockerfile".into(), "sha256:01 644".into());
        let d = diff_facts(&k.facts(), &other.facts());
        assert_eq!(
            d,
            [FactChange {
                path: "context.Dockerfile".into(),
                old: Some("sha256:00 644".into()),
                new: Some("sha256:01 644".into())
            }]
        );
    }

    /// The gzip backend is part of OUTPUT_FORMAT; a Cargo.lock bump must update it.
    #[test]
    fn output_format_names_the_locked_zlib_rs_version() {
        let lock =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.lock")).unwrap();
        let version = lock
            .split("[[package]]")
            .find(|p| p.contains("name = \"zlib-rs\""))
            .and_then(|p| p.lines().find_map(|l| l.strip_prefix("version = \"")))
            .map(|v| v.trim_end_matches('"'))
            .expect("zlib-rs in Cargo.lock");
        assert!(
            OUTPUT_FORMAT.contains(&format!("gzip=zlib-rs-{version} ")),
            "update OUTPUT_FORMAT to zlib-rs {version}"
        );
    }
}
