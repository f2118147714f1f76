//! The plan: for each selected target, its key inputs, key and status, computed from the
//! recipes, the context fingerprints, the lockfile and what the store holds — no I/O.
//!
//! A parent's output digest enters the child's key. When the parent is in the store its
//! stored digest is used; when it is not, but the lockfile records the parent under the
//! same key, the locked digest is used (a reproducible rebuild gives those bytes again,
//! and `build` recomputes the child's key from the real digest anyway). Otherwise the
//! child's key is unknown until the parent is built.

use std::collections::BTreeMap;

use super::apt::SuiteId;
use super::key::{KeyInputs, ParentInput, RecipeInputs, KEY_FORMAT, OUTPUT_FORMAT};
use super::lockfile::{LockedTarget, Lockfile};
use super::names::{Digest, TargetName};
use super::recipe::{RecipeError, Settings, TargetKind, TargetRecipe};

/// Fingerprints of a target's build context: relative path → fingerprint.
pub type ContextFingerprint = BTreeMap<String, String>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Status {
    /// The key is in the local store: nothing to do.
    #[serde(rename = "cached")]
    Cached,
    /// The key is known and missing from the store.
    #[serde(rename = "build")]
    Build,
    /// The key depends on a parent that must be built first.
    #[serde(rename = "build (after parent)")]
    AfterParent,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Cached => "cached",
            Status::Build => "build",
            Status::AfterParent => "build (after parent)",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum LockState {
    /// The lockfile has this target under the same key.
    #[serde(rename = "locked")]
    Same,
    /// The lockfile has this target under another key.
    #[serde(rename = "changed")]
    Changed,
    /// The lockfile does not have it.
    #[serde(rename = "new")]
    New,
}

impl LockState {
    /// The word `plan` shows (and `--json` writes).
    pub fn as_str(self) -> &'static str {
        match self {
            LockState::Same => "locked",
            LockState::Changed => "changed",
            LockState::New => "new",
        }
    }
}

#[derive(Debug, Clone)]
pub struct PlannedTarget<'g> {
    pub recipe: &'g TargetRecipe,
    /// Inputs with the parent digest filled in when it is known.
    pub inputs: KeyInputs,
    pub key: Option<Digest>,
    pub status: Status,
    pub lock: LockState,
    /// Manifest digest in the store, for cached targets.
    pub stored: Option<Digest>,
}

/// Placeholder for a parent digest that is not known yet.
pub const UNKNOWN_PARENT: &str =
    "sha256:0000000000000000000000000000000000000000000000000000000000000000";

/// The key inputs of one target; `deps` holds the manifest digests of its dependencies
/// (parent or index members) that are known — a missing one enters as [`UNKNOWN_PARENT`].
/// What decides a key beyond the recipes: the mirror of `mirror = "auto"` and the apt index
/// pins of the lockfile.
#[derive(Debug, Clone, Copy)]
pub struct Sources<'a> {
    pub mirror: Option<&'a str>,
    pub apt_index: &'a BTreeMap<SuiteId, Digest>,
}

pub fn key_inputs(
    t: &TargetRecipe,
    settings: &Settings,
    context: &ContextFingerprint,
    sources: Sources<'_>,
    deps: &BTreeMap<TargetName, Digest>,
) -> Result<KeyInputs, RecipeError> {
    let unknown = || -> Digest { UNKNOWN_PARENT.parse().expect("valid digest") };
    let recipe = match &t.kind {
        TargetKind::Dockerfile {
            dockerfile, args, ..
        } => RecipeInputs::Dockerfile {
            dockerfile: dockerfile.clone(),
            args: args.clone(),
        },
        TargetKind::Bootstrap(b) => {
            let mirror = b.mirror_url(sources.mirror).ok_or_else(|| {
                RecipeError::new(
                    &t.recipe_file,
                    format!("target ({}).bootstrap.mirror", t.name),
                    "is `auto` but no Debian mirror was found: set KCI_DEBIAN_MIRROR or add one to /etc/apt/sources.list",
                )
            })?;
            RecipeInputs::Bootstrap {
                suite: b.suite.clone(),
                variant: b.variant.clone(),
                components: b.components.clone(),
                packages: b.packages.clone(),
                mirror_sha256: Digest::of(mirror.as_bytes()),
            }
        }
        TargetKind::Index { members } => RecipeInputs::Index {
            members: members.clone(),
        },
    };
    let parent = t.kind.parent().map(|p| ParentInput {
        name: p.clone(),
        manifest: deps.get(p).cloned().unwrap_or_else(unknown),
    });
    let members = match &t.kind {
        TargetKind::Index { members } => members
            .iter()
            .map(|m| (m.clone(), deps.get(m).cloned().unwrap_or_else(unknown)))
            .collect(),
        _ => BTreeMap::new(),
    };
    let apt_index = match &t.kind {
        TargetKind::Index { .. } => BTreeMap::new(),
        _ => sources
            .apt_index
            .iter()
            .map(|(s, d)| (s.to_string(), d.clone()))
            .collect(),
    };
    Ok(KeyInputs {
        key_format: KEY_FORMAT,
        output_format: OUTPUT_FORMAT.to_owned(),
        target: t.name.clone(),
        platform: t.platform.clone(),
        source_date_epoch: settings.source_date_epoch,
        recipe,
        context: context.clone(),
        parent,
        members,
        apt_index,
    })
}

/// Plans `targets` (which must be in dependency order and closed over parents).
/// `stored` maps a key to the manifest digest the store holds for it.
pub fn plan<'g>(
    targets: &[&'g TargetRecipe],
    settings: &Settings,
    contexts: &BTreeMap<TargetName, ContextFingerprint>,
    sources: Sources<'_>,
    lock: &Lockfile,
    stored: impl Fn(&Digest) -> Option<Digest>,
) -> Result<Vec<PlannedTarget<'g>>, RecipeError> {
    let mut out: Vec<PlannedTarget<'g>> = Vec::with_capacity(targets.len());
    let empty = ContextFingerprint::new();
    for t in targets {
        let mut deps = BTreeMap::new();
        for d in t.kind.deps() {
            let planned = out
                .iter()
                .find(|x| &x.recipe.name == d)
                .expect("targets are closed over dependencies and ordered");
            let manifest = planned.stored.clone().or_else(|| {
                let locked: &LockedTarget = lock.targets.get(d)?;
                (Some(&locked.key) == planned.key.as_ref()).then(|| locked.output.manifest.clone())
            });
            if let Some(m) = manifest {
                deps.insert(d.clone(), m);
            }
        }
        let parent_known = deps.len() == t.kind.deps().len();
        let inputs = key_inputs(
            t,
            settings,
            contexts.get(&t.name).unwrap_or(&empty),
            sources,
            &deps,
        )?;
        let key = parent_known.then(|| inputs.key());
        let stored_manifest = key.as_ref().and_then(&stored);
        let status = match (&key, &stored_manifest) {
            (None, _) => Status::AfterParent,
            (Some(_), Some(_)) => Status::Cached,
            (Some(_), None) => Status::Build,
        };
        let lock_state = match lock.targets.get(&t.name) {
            None => LockState::New,
            Some(l) if Some(&l.key) == key.as_ref() => LockState::Same,
            Some(_) => LockState::Changed,
        };
        out.push(PlannedTarget {
            recipe: t,
            inputs,
            key,
            status,
            lock: lock_state,
            stored: stored_manifest,
        });
    }
    Ok(out)
}

/// How the lockfile differs from the recipes for one target: the one "what changed" of
/// `build --locked` and `lock --check` (`why` shows the same facts one by one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// A recipe's target the lockfile does not have.
    NotLocked(TargetName),
    /// Locked under another key; `facts` are the key facts that differ (empty: only the key,
    /// e.g. a new key format).
    InputsChanged {
        target: TargetName,
        facts: Vec<String>,
    },
    /// Locked, but no recipe declares it any more.
    NoRecipe(TargetName),
}

impl std::fmt::Display for Drift {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Drift::NotLocked(t) => write!(f, "{t}: not in the lockfile"),
            Drift::InputsChanged { target, facts } if facts.is_empty() => {
                write!(f, "{target}: inputs changed (its key)")
            }
            Drift::InputsChanged { target, facts } => {
                write!(f, "{target}: inputs changed ({})", facts.join(", "))
            }
            Drift::NoRecipe(t) => write!(f, "{t}: locked but no recipe declares it"),
        }
    }
}

/// The drift of the planned targets against `lock`, in plan order; with `complete` (the
/// plan covers every recipe), also the locked targets no recipe declares.
pub fn drift(lock: &Lockfile, planned: &[PlannedTarget<'_>], complete: bool) -> Vec<Drift> {
    let mut out: Vec<Drift> = planned
        .iter()
        .filter_map(|p| {
            let target = p.recipe.name.clone();
            match (p.lock, lock.targets.get(&target)) {
                (LockState::Same, _) => None,
                (_, None) => Some(Drift::NotLocked(target)),
                (_, Some(locked)) => Some(Drift::InputsChanged {
                    facts: super::key::diff_facts(&locked.input, &p.inputs.facts())
                        .into_iter()
                        .map(|c| c.path)
                        .collect(),
                    target,
                }),
            }
        })
        .collect();
    if complete {
        let planned: std::collections::BTreeSet<&TargetName> =
            planned.iter().map(|p| &p.recipe.name).collect();
        out.extend(
            lock.targets
                .keys()
                .filter(|n| !planned.contains(n))
                .map(|n| Drift::NoRecipe(n.clone())),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::graph::tests::graph;
    use crate::core::lockfile::LockedOutput;

    const G: &str = r#"
[[target]]
name = "debian"
bootstrap = { suite = "bookworm" }
[[target]]
name = "build-base"
parent = "debian"
[[target]]
name = "gcc:x86"
parent = "build-base"
args = { V = "12" }
"#;

    static NO_PINS: BTreeMap<SuiteId, Digest> = BTreeMap::new();

    fn src(mirror: Option<&'static str>) -> Sources<'static> {
        Sources {
            mirror,
            apt_index: &NO_PINS,
        }
    }

    #[test]
    fn a_new_apt_index_pin_changes_every_key_but_an_index() {
        let g = graph(G).unwrap();
        let sel = g.closure(&[]).unwrap();
        let ctx = BTreeMap::new();
        let lock = Lockfile::default();
        let keyed = |pins: &BTreeMap<SuiteId, Digest>| {
            let sources = Sources {
                mirror: Some("http://m/debian"),
                apt_index: pins,
            };
            plan(&sel, &settings(), &ctx, sources, &lock, |_| None).unwrap()[0]
                .inputs
                .clone()
        };
        let suite: SuiteId = "debian/bookworm".parse().unwrap();
        let a = keyed(&BTreeMap::from([(suite.clone(), Digest::of(b"a"))]));
        let b = keyed(&BTreeMap::from([(suite, Digest::of(b"b"))]));
        assert_ne!(a.key(), b.key());
        assert_eq!(
            a.facts()["apt-index.debian/bookworm"],
            Digest::of(b"a").to_string()
        );
        assert_eq!(keyed(&NO_PINS).key(), {
            let mut none = a.clone();
            none.apt_index.clear();
            none.key()
        });
    }

    fn settings() -> Settings {
        Settings {
            prefix: "kernelci/".into(),
            source_date_epoch: 1,
        }
    }

    #[test]
    fn statuses_follow_the_store_and_parents() {
        let g = graph(G).unwrap();
        let sel = g.closure(&[]).unwrap();
        let ctx = BTreeMap::new();
        let lock = Lockfile::default();
        // Nothing stored: the root can be keyed, children wait for it.
        let p = plan(
            &sel,
            &settings(),
            &ctx,
            src(Some("http://mirror/debian")),
            &lock,
            |_| None,
        )
        .unwrap();
        let st: Vec<Status> = p.iter().map(|x| x.status).collect();
        assert_eq!(
            st,
            [Status::Build, Status::AfterParent, Status::AfterParent]
        );
        // Root stored: its child gets a key.
        let root_key = p[0].key.clone().unwrap();
        let m = Digest::of(b"m");
        let p = plan(
            &sel,
            &settings(),
            &ctx,
            src(Some("http://mirror/debian")),
            &lock,
            |k| (k == &root_key).then(|| m.clone()),
        )
        .unwrap();
        assert_eq!(p[0].status, Status::Cached);
        assert_eq!(p[1].status, Status::Build);
        assert_eq!(p[1].inputs.parent.as_ref().unwrap().manifest, m);
        assert_eq!(p[2].status, Status::AfterParent);
    }

    #[test]
    fn a_locked_parent_digest_keys_children_and_parent_changes_propagate() {
        let g = graph(G).unwrap();
        let sel = g.closure(&[]).unwrap();
        let ctx = BTreeMap::new();
        let p = plan(
            &sel,
            &settings(),
            &ctx,
            src(Some("http://m")),
            &Lockfile::default(),
            |_| None,
        )
        .unwrap();
        let mut lock = Lockfile::default();
        lock.targets.insert(
            "debian".parse().unwrap(),
            LockedTarget {
                key: p[0].key.clone().unwrap(),
                input: p[0].inputs.facts(),
                output: LockedOutput {
                    manifest: Digest::of(b"base"),
                    config: Some(Digest::of(b"c")),
                    layers: vec![],
                    members: vec![],
                },
                package: BTreeMap::new(),
                deb: BTreeMap::new(),
            },
        );
        let p1 = plan(
            &sel,
            &settings(),
            &ctx,
            src(Some("http://m")),
            &lock,
            |_| None,
        )
        .unwrap();
        assert_eq!(p1[0].lock, LockState::Same);
        assert_eq!(
            p1[1].status,
            Status::Build,
            "child keyed from the locked parent digest"
        );
        // Another mirror: the root's key changes, so the lock no longer vouches for its digest.
        let p2 = plan(
            &sel,
            &settings(),
            &ctx,
            src(Some("http://other")),
            &lock,
            |_| None,
        )
        .unwrap();
        assert_eq!(p2[0].lock, LockState::Changed);
        assert_eq!(p2[1].status, Status::AfterParent);
    }

    #[test]
    fn auto_mirror_without_a_mirror_names_the_field() {
        let g = graph(G).unwrap();
        let sel = g.closure(&[]).unwrap();
        let e = plan(
            &sel,
            &settings(),
            &BTreeMap::new(),
            src(None),
            &Lockfile::default(),
            |_| None,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("target (debian).bootstrap.mirror"), "{e}");
    }
}
