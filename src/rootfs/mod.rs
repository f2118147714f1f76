//! Rootfs recipes: KernelCI's `rootfs-configs.yaml` fields for Debian root file systems,
//! plus what reproducibility needs (`SOURCE_DATE_EPOCH`, the mirror setting), one TOML file
//! per config under `recipes/`. The converter from KernelCI's YAML is pure: it returns the
//! recipes and, for anything it cannot carry over, a message naming the config and field.
//!
//! `kci-build rootfs` builds them: [`plan`] (keys, pure), [`inputs`] (files sent to the
//! builder), [`builder`] (containers), [`binfmt`] (foreign arches), [`collect`] (the raw
//! files out of a container), [`pack`] (the five files, in bounded memory), and the
//! canonical files in `artifact`/`cpio`.

pub mod binfmt;
pub mod builder;
pub mod collect;
pub mod inputs;
pub mod oci;
pub mod pack;
pub mod plan;
pub mod recipes;
pub mod task;

pub mod artifact;
pub mod cpio;

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;

use crate::core::gitsource::GitSourceSpec;
use crate::core::rootfs_recipe::{binary_size, decimal_size, release_lacks_arch, KERNELCI_CORE};

/// The image target every rootfs is built in.
pub const BUILDER_TARGET: &str = "rootfs-builder";

pub use crate::core::rootfs_recipe::{RootfsRecipe, DEBIAN_ARCHES};

/// One config from `rootfs-configs.yaml`, as KernelCI writes it.
#[derive(Debug, Deserialize)]
struct KciConfig {
    rootfs_type: Option<String>,
    debian_release: Option<String>,
    #[serde(default)]
    arch_list: Vec<String>,
    #[serde(default)]
    extra_packages: Vec<String>,
    #[serde(default)]
    extra_packages_remove: Vec<String>,
    #[serde(default)]
    extra_files_remove: Vec<String>,
    script: Option<String>,
    test_overlay: Option<String>,
    #[serde(default)]
    crush_image_options: Vec<String>,
    imagesize: Option<String>,
    debos_memory: Option<String>,
    #[serde(flatten)]
    rest: BTreeMap<String, serde_yaml_ng::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImportOptions {
    /// Port every config to this Debian release (renaming `bullseye-ltp` → `bookworm-ltp`).
    pub release: Option<String>,
    pub source_date_epoch: u64,
    /// Packages that exist in the target release, when known; others are reported.
    pub known_packages: Option<BTreeSet<String>>,
    /// The kernelci-core whose `config/rootfs/debos/` the configs' `script` and
    /// `test_overlay` name: every recipe gets it as `[git-source.kernelci-core]`.
    pub kernelci_core: Option<GitSourceSpec>,
}

#[derive(Debug, Default)]
pub struct Imported {
    /// `(name in the YAML, recipe)`.
    pub recipes: Vec<(String, RootfsRecipe)>,
    /// `config.field: what happened`, one per thing not carried over as it was.
    pub problems: Vec<String>,
}

/// Why a config cannot become a recipe the loader accepts: a name that is not a plain file
/// name (`recipes/<name>.toml` must never be a path out of it), a script or overlay path out
/// of `recipes/`. `(field, message)` each; empty when it can.
fn refusals(
    name: &str,
    script: Option<&str>,
    test_overlay: Option<&str>,
) -> Vec<(&'static str, String)> {
    if !crate::core::rootfs_recipe::valid_config_name(name) {
        return vec![(
            "name",
            format!("{name:?} is not a plain config name (letters, digits, `-`, `_`, `.`); config skipped"),
        )];
    }
    [("script", script), ("test_overlay", test_overlay)]
        .into_iter()
        .filter(|(_, v)| {
            v.is_some_and(|v| !v.is_empty() && !crate::core::rootfs_recipe::is_relative_inside(v))
        })
        .map(|(f, _)| {
            (
                f,
                "a path out of the recipes directory; config skipped".to_owned(),
            )
        })
        .collect()
}

/// The arches of `list` a recipe of `release` can build, and a message for each dropped one
/// (not a Debian arch, or not in that release).
fn arches_of(release: &str, list: Vec<String>) -> (Vec<String>, Vec<String>) {
    let mut kept = Vec::new();
    let mut dropped = Vec::new();
    for a in list {
        if !DEBIAN_ARCHES.contains(&a.as_str()) {
            dropped.push(format!("`{a}` is not a Debian architecture; dropped"));
        } else if let Some(why) = release_lacks_arch(release, &a) {
            dropped.push(format!("`{a}` is not in Debian {release} ({why}); dropped"));
        } else {
            kept.push(a);
        }
    }
    (kept, dropped)
}

/// Converts KernelCI's `rootfs-configs.yaml` (anchors, aliases and merge keys included).
pub fn import(yaml: &str, opts: &ImportOptions) -> Result<Imported, String> {
    crate::core::deploy::check_alias_expansion(yaml)?;
    let mut doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
    doc.apply_merge().map_err(|e| e.to_string())?;
    let configs = doc
        .get("rootfs_configs")
        .ok_or("no top-level `rootfs_configs:` mapping")?
        .clone();
    let configs: BTreeMap<String, KciConfig> =
        serde_yaml_ng::from_value(configs).map_err(|e| format!("rootfs_configs: {e}"))?;
    let mut out = Imported::default();
    for (name, c) in configs {
        let problem = |field: &str, msg: String| format!("{name}.{field}: {msg}");
        match c.rootfs_type.as_deref() {
            Some("debos") | None => {}
            Some(other) => {
                out.problems.push(problem("rootfs_type", format!("`{other}` configs are not converted (kci-build builds Debian root file systems); config skipped")));
                continue;
            }
        }
        // Fields that change where packages come from cannot be honoured here.
        let blocking: Vec<&str> = ["debian_mirror", "keyring_package", "keyring_file"]
            .into_iter()
            .filter(|f| c.rest.contains_key(*f))
            .collect();
        if !blocking.is_empty() {
            for f in &blocking {
                out.problems.push(problem(f, "another archive (e.g. debian-ports) cannot be pinned or reached from the build machines; config skipped".into()));
            }
            continue;
        }
        for field in c.rest.keys() {
            let msg = match field.as_str() {
                "extra_firmware" | "linux_fw_version" => "firmware from linux-firmware.git is not supported yet; dropped (the rootfs has no extra firmware)",
                "debos_scratchsize" => "debos' scratch disk: kci-build builds in the container's tmpfs, bounded by debos_memory; dropped",
                "cross_compile" => "building the script's test suite outside the chroot is not supported (the script runs in the chroot, under qemu for a foreign arch); dropped",
                _ => "unknown field; dropped",
            };
            out.problems.push(problem(field, msg.into()));
        }
        let Some(mut release) = c.debian_release.clone() else {
            out.problems
                .push(problem("debian_release", "missing; config skipped".into()));
            continue;
        };
        let mut new_name = name.clone();
        if let Some(r) = &opts.release {
            if let Some(rest) = name.strip_prefix(release.as_str()) {
                new_name = format!("{r}{rest}");
            }
            release = r.clone();
        }
        let refused = refusals(&new_name, c.script.as_deref(), c.test_overlay.as_deref());
        if !refused.is_empty() {
            out.problems
                .extend(refused.into_iter().map(|(f, msg)| problem(f, msg)));
            continue;
        }
        let (arches, dropped) = arches_of(&release, c.arch_list);
        out.problems
            .extend(dropped.into_iter().map(|m| problem("arch_list", m)));
        let mut size = |field: &str, value: Option<String>, parse: fn(&str) -> Option<u64>| {
            let v = value?;
            if parse(&v).is_some() {
                return Some(v);
            }
            out.problems
                .push(problem(field, format!("`{v}` is not a size; dropped")));
            None
        };
        let imagesize = size("imagesize", c.imagesize, decimal_size);
        let debos_memory = size("debos_memory", c.debos_memory, binary_size);
        let mut keep = |field: &str, list: Vec<String>| -> Vec<String> {
            let Some(known) = &opts.known_packages else {
                return list;
            };
            list.into_iter()
                .filter(|p| {
                    let ok = known.contains(p);
                    if !ok {
                        out.problems.push(problem(
                            field,
                            format!(
                                "`{p}` is not a package of {release}; dropped (find its new name)"
                            ),
                        ));
                    }
                    ok
                })
                .collect()
        };
        let extra_packages = keep("extra_packages", c.extra_packages);
        let extra_packages_remove = keep("extra_packages_remove", c.extra_packages_remove);
        out.recipes.push((
            name.clone(),
            RootfsRecipe {
                name: new_name,
                debian_release: release,
                arch_list: arches,
                extra_packages,
                extra_packages_remove,
                extra_files_remove: c.extra_files_remove,
                script: c.script.filter(|s| !s.is_empty()),
                test_overlay: c.test_overlay.filter(|s| !s.is_empty()),
                crush_image_options: c.crush_image_options,
                source_date_epoch: opts.source_date_epoch,
                mirror: "auto".into(),
                xz_preset: None,
                imagesize,
                debos_memory,
                git_source: opts
                    .kernelci_core
                    .iter()
                    .map(|s| (KERNELCI_CORE.to_owned(), s.clone()))
                    .collect(),
                url_source: Default::default(),
            },
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
rootfs_configs:
  buildroot-baseline:
    rootfs_type: buildroot
    arch_list: [arc]
  bullseye:
    rootfs_type: debos
    debian_release: bullseye
    arch_list: [amd64, arm64, vax]
    extra_packages: [isc-dhcp-client, libperl5.32]
    extra_packages_remove: &remove
      - bash
    extra_files_remove: ['*networkd*']
    script: "scripts/install-bootrr.sh"
    test_overlay: ""
  bullseye-igt:
    <<: &common
      rootfs_type: debos
      debian_release: bullseye
      arch_list: [amd64]
    extra_packages_remove: *remove
    extra_firmware: [i915/kbl_dmc_ver1_04.bin]
  sid:
    rootfs_type: debos
    debian_release: sid
    debian_mirror: http://example.invalid/debian-ports
    arch_list: [riscv64]
"#;

    #[test]
    fn converts_anchors_and_merge_keys_and_names_what_it_cannot_carry() {
        let known: BTreeSet<String> = ["isc-dhcp-client", "bash"].map(String::from).into();
        let got = import(
            YAML,
            &ImportOptions {
                release: Some("bookworm".into()),
                source_date_epoch: 7,
                known_packages: Some(known),
                kernelci_core: None,
            },
        )
        .unwrap();
        let names: Vec<(&str, &str)> = got
            .recipes
            .iter()
            .map(|(from, r)| (from.as_str(), r.name.as_str()))
            .collect();
        assert_eq!(
            names,
            [("bullseye", "bookworm"), ("bullseye-igt", "bookworm-igt")]
        );
        let base = &got.recipes[0].1;
        assert_eq!(base.arch_list, ["amd64", "arm64"]);
        assert_eq!(base.extra_packages, ["isc-dhcp-client"]);
        assert_eq!(base.test_overlay, None);
        assert_eq!(
            got.recipes[1].1.extra_packages_remove,
            ["bash"],
            "alias resolved"
        );
        assert_eq!(got.recipes[1].1.arch_list, ["amd64"], "merge key resolved");
        assert_eq!(
            got.problems,
            [
                "buildroot-baseline.rootfs_type: `buildroot` configs are not converted (kci-build builds Debian root file systems); config skipped",
                "bullseye.arch_list: `vax` is not a Debian architecture; dropped",
                "bullseye.extra_packages: `libperl5.32` is not a package of bookworm; dropped (find its new name)",
                "bullseye-igt.extra_firmware: firmware from linux-firmware.git is not supported yet; dropped (the rootfs has no extra firmware)",
                "sid.debian_mirror: another archive (e.g. debian-ports) cannot be pinned or reached from the build machines; config skipped",
            ]
        );
        let text = base.to_toml("# header\n");
        let back: RootfsRecipe = toml::from_str(&text).unwrap();
        assert_eq!(&back, base);
        assert!(
            text.starts_with("# header\nname = \"bookworm\"\ndebian-release = \"bookworm\"\n"),
            "{text}"
        );
    }
}
