//! What the store must keep: the garbage collector's roots, read off lockfiles. Pure: the
//! store and git are the caller's ([`crate::gc`]); this only says which keys, rootfs keys and
//! blobs a set of lockfiles names.

use std::collections::BTreeSet;

use super::lockfile::Lockfile;
use super::names::Digest;
use super::rootfs_lock::RootfsLockfile;

/// Everything some lockfiles reference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Roots {
    /// Image cache keys (their key records, and through them their images).
    pub image_keys: BTreeSet<Digest>,
    /// Rootfs keys (their directories).
    pub rootfs_keys: BTreeSet<Digest>,
    /// Pinned `InRelease` files (and through them the indexes they list).
    pub pins: BTreeSet<Digest>,
    /// Blobs named directly: image outputs and the `.deb`s builds installed.
    pub blobs: BTreeSet<Digest>,
}

impl Roots {
    pub fn add_images(&mut self, lock: &Lockfile) {
        self.pins
            .extend(lock.apt_index.values().map(|i| i.inrelease.clone()));
        for t in lock.targets.values() {
            self.image_keys.insert(t.key.clone());
            let o = &t.output;
            self.blobs.insert(o.manifest.clone());
            self.blobs.extend(o.config.iter().cloned());
            self.blobs.extend(o.layers.iter().cloned());
            self.blobs.extend(o.members.iter().cloned());
            self.blobs.extend(t.deb.values().cloned());
        }
    }

    pub fn add_rootfs(&mut self, lock: &RootfsLockfile) {
        self.pins
            .extend(lock.apt_index.values().map(|i| i.inrelease.clone()));
        // Pinned downloads: a rebuild needs their bytes, and the URL may serve others now.
        self.blobs
            .extend(lock.url_source.values().map(|u| u.sha256.clone()));
        for config in lock.configs.values() {
            for r in config.arch.values() {
                self.rootfs_keys.insert(r.key.clone());
                self.blobs.extend(r.deb.values().cloned());
            }
        }
    }

    /// Whether a log file of the store (`<name>-<key short>.log`) belongs to a rooted key.
    pub fn keeps_log(&self, name: &str) -> bool {
        let Some(stem) = name.strip_suffix(".log") else {
            return false;
        };
        let Some((_, short)) = stem.rsplit_once('-') else {
            return false;
        };
        self.image_keys
            .iter()
            .chain(&self.rootfs_keys)
            .any(|k| k.short() == short)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const IMAGES: &str = r#"version = 1

[apt-index."debian/bookworm"]
inrelease = "sha256:1111111111111111111111111111111111111111111111111111111111111111"

[target."base"]
key = "sha256:2222222222222222222222222222222222222222222222222222222222222222"
output.manifest = "sha256:3333333333333333333333333333333333333333333333333333333333333333"
output.config = "sha256:4444444444444444444444444444444444444444444444444444444444444444"
output.layers = ["sha256:5555555555555555555555555555555555555555555555555555555555555555"]
deb."debian/pool/main/b/bash/bash_5.2_amd64.deb" = "sha256:6666666666666666666666666666666666666666666666666666666666666666"
"#;

    const ROOTFS: &str = r#"version = 1

[rootfs."bookworm"]
version = "20251201.0123456789ab"

[rootfs."bookworm".arch."amd64"]
key = "sha256:7777777777777777777777777777777777777777777777777777777777777777"
deb."debian/pool/main/z/zlib/zlib1g_1.2_amd64.deb" = "sha256:8888888888888888888888888888888888888888888888888888888888888888"
"#;

    fn d(c: char) -> Digest {
        format!("sha256:{}", c.to_string().repeat(64))
            .parse()
            .unwrap()
    }

    #[test]
    fn both_lockfiles_name_their_keys_outputs_debs_and_pins() {
        let mut r = Roots::default();
        r.add_images(&Lockfile::parse(Path::new("images.lock"), IMAGES).unwrap());
        r.add_rootfs(&RootfsLockfile::parse(Path::new("rootfs.lock"), ROOTFS).unwrap());
        assert_eq!(r.image_keys, BTreeSet::from([d('2')]));
        assert_eq!(r.rootfs_keys, BTreeSet::from([d('7')]));
        assert_eq!(r.pins, BTreeSet::from([d('1')]));
        assert_eq!(
            r.blobs,
            BTreeSet::from([d('3'), d('4'), d('5'), d('6'), d('8')])
        );
        assert!(r.keeps_log("base-222222222222.log"));
        assert!(r.keeps_log("rootfs-bookworm-amd64-777777777777.log"));
        assert!(!r.keeps_log("base-999999999999.log"));
        assert!(!r.keeps_log("rootfs-apt-proxy.log"));
    }
}
