//! The rootfs lockfile after a run, as a pure function of the old lockfile and what the run
//! knows: which configs exist, each selected config's version directory, and per arch its key,
//! its facts and — when it was built, found in the store or on the storage — its manifest and
//! the URLs its files are served at.
//!
//! Rules: configs without a recipe go; an arch not made this run keeps its old entry only
//! while its key is unchanged; a URL recorded earlier stays for the same bytes; a config none
//! of whose arches is recorded is dropped (no version that no file exists for).

use std::collections::BTreeMap;

use super::names::Digest;
use super::rootfs_lock::{
    LockedArtifact, LockedConfig, LockedRootfs, RootfsLockfile, RootfsManifest,
};

/// One config of this run.
#[derive(Debug, Clone)]
pub struct ConfigRun<'a> {
    pub name: &'a str,
    /// The version directory every arch of the config shares.
    pub version: &'a str,
    /// Every arch of the recipe, made this run or not.
    pub arches: Vec<ArchRun<'a>>,
}

/// One (config, arch) of this run.
#[derive(Debug, Clone)]
pub struct ArchRun<'a> {
    pub arch: &'a str,
    pub key: &'a Digest,
    pub facts: &'a BTreeMap<String, String>,
    /// Its files, when this run has them (built, stored or on the storage).
    pub made: Option<&'a RootfsManifest>,
    /// File name → the URL it was uploaded to or found at this run.
    pub urls: BTreeMap<String, String>,
}

/// The new lockfile: `old` with every config of `runs` merged in and configs not in `known`
/// removed.
pub fn merge(old: &RootfsLockfile, known: &[&str], runs: &[ConfigRun<'_>]) -> RootfsLockfile {
    let mut new = old.clone();
    new.configs.retain(|name, _| known.contains(&name.as_str()));
    for run in runs {
        let old_config = old.configs.get(run.name);
        let entry = new
            .configs
            .entry(run.name.to_owned())
            .or_insert_with(|| LockedConfig {
                version: run.version.to_owned(),
                arch: BTreeMap::new(),
            });
        entry.version = run.version.to_owned();
        entry
            .arch
            .retain(|a, _| run.arches.iter().any(|r| r.arch == a));
        for arch in &run.arches {
            let Some(m) = arch.made else {
                if entry
                    .arch
                    .get(arch.arch)
                    .is_some_and(|l| &l.key != arch.key)
                {
                    entry.arch.remove(arch.arch);
                }
                continue;
            };
            let old_arch = old_config.and_then(|c| c.arch.get(arch.arch));
            entry
                .arch
                .insert(arch.arch.to_owned(), locked(arch, m, old_arch));
        }
        if entry.arch.is_empty() {
            new.configs.remove(run.name);
        }
    }
    new
}

fn locked(arch: &ArchRun<'_>, m: &RootfsManifest, old: Option<&LockedRootfs>) -> LockedRootfs {
    let artifact = m
        .artifacts
        .iter()
        .map(|(name, a)| {
            let url = arch.urls.get(name).cloned().or_else(|| {
                old.and_then(|o| o.artifact.get(name))
                    .filter(|o| o.sha256 == a.sha256)
                    .and_then(|o| o.url.clone())
            });
            let locked = LockedArtifact {
                sha256: a.sha256.clone(),
                size: a.size,
                url,
            };
            (name.clone(), locked)
        })
        .collect();
    LockedRootfs {
        key: arch.key.clone(),
        input: arch.facts.clone(),
        package: m.packages.clone(),
        artifact,
        deb: m.debs.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::rootfs_lock::ArtifactInfo;

    fn manifest(key: &Digest, byte: u8) -> RootfsManifest {
        RootfsManifest {
            config: "bookworm".into(),
            arch: "amd64".into(),
            key: key.clone(),
            source_date_epoch: 1,
            packages: BTreeMap::from([("libc6:amd64".into(), "2.36-9".into())]),
            artifacts: BTreeMap::from([(
                "rootfs.cpio.gz".into(),
                ArtifactInfo {
                    sha256: Digest::of(&[byte]),
                    size: 1,
                    url: None,
                },
            )]),
            debs: BTreeMap::new(),
        }
    }

    fn arch<'a>(
        arch: &'a str,
        key: &'a Digest,
        facts: &'a BTreeMap<String, String>,
        made: Option<&'a RootfsManifest>,
    ) -> ArchRun<'a> {
        ArchRun {
            arch,
            key,
            facts,
            made,
            urls: BTreeMap::new(),
        }
    }

    #[test]
    fn merges_made_arches_keeps_urls_for_the_same_bytes_and_drops_stale_entries() {
        let facts = BTreeMap::from([("debian.release".into(), "bookworm".into())]);
        let (k1, k2) = (Digest::of(b"1"), Digest::of(b"2"));
        let m1 = manifest(&k1, 1);
        // Run 1: amd64 built and uploaded.
        let mut amd64 = arch("amd64", &k1, &facts, Some(&m1));
        amd64.urls.insert(
            "rootfs.cpio.gz".into(),
            "http://f/bookworm/v1/amd64/rootfs.cpio.gz".into(),
        );
        let run1 = [ConfigRun {
            name: "bookworm",
            version: "v1",
            arches: vec![amd64, arch("arm64", &k2, &facts, None)],
        }];
        let one = merge(&RootfsLockfile::default(), &["bookworm"], &run1);
        let locked = &one.configs["bookworm"];
        assert_eq!(locked.version, "v1");
        assert_eq!(locked.arch.keys().collect::<Vec<_>>(), ["amd64"]);
        assert_eq!(locked.arch["amd64"].package["libc6:amd64"], "2.36-9");

        // Run 2, no storage: same bytes keep their URL; a new version is recorded.
        let run2 = [ConfigRun {
            name: "bookworm",
            version: "v2",
            arches: vec![arch("amd64", &k1, &facts, Some(&m1))],
        }];
        let two = merge(&one, &["bookworm"], &run2);
        let a = &two.configs["bookworm"].arch["amd64"].artifact["rootfs.cpio.gz"];
        assert_eq!(
            a.url.as_deref(),
            Some("http://f/bookworm/v1/amd64/rootfs.cpio.gz")
        );
        assert_eq!(two.configs["bookworm"].version, "v2");

        // Other bytes: the old URL is not carried over.
        let m1b = manifest(&k1, 9);
        let run3 = [ConfigRun {
            name: "bookworm",
            version: "v2",
            arches: vec![arch("amd64", &k1, &facts, Some(&m1b))],
        }];
        let three = merge(&one, &["bookworm"], &run3);
        assert_eq!(
            three.configs["bookworm"].arch["amd64"].artifact["rootfs.cpio.gz"].url,
            None
        );

        // Not made this run: kept while its key matches, dropped when it moved; a config
        // left with no arch goes, and so does a config without a recipe.
        let same = [ConfigRun {
            name: "bookworm",
            version: "v1",
            arches: vec![arch("amd64", &k1, &facts, None)],
        }];
        assert_eq!(merge(&one, &["bookworm"], &same), one);
        let moved = [ConfigRun {
            name: "bookworm",
            version: "v3",
            arches: vec![arch("amd64", &k2, &facts, None)],
        }];
        assert!(merge(&one, &["bookworm"], &moved).configs.is_empty());
        assert!(merge(&one, &["bookworm-rt"], &[]).configs.is_empty());
    }
}
