//! Rootfs recipes, the model: one TOML file per config under `recipes/` (KernelCI's
//! `rootfs-configs.yaml` fields plus what reproducibility needs), and its validation — pure,
//! beside the image recipes. Reading the directory is the rootfs floor's job.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::gitsource::{self, GitSourceSpec};
use super::urlsource::{self, UrlSourceSpec};

/// xz level of the `.xz` files when a recipe does not say (KernelCI's `tar cJf`).
pub const DEFAULT_XZ_PRESET: u32 = 6;

/// Debian architectures KernelCI builds rootfs images for.
pub const DEBIAN_ARCHES: &[&str] = &[
    "amd64", "arm64", "armel", "armhf", "i386", "mips64el", "mipsel", "ppc64el", "riscv64", "s390x",
];

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RootfsRecipe {
    pub name: String,
    pub debian_release: String,
    pub arch_list: Vec<String>,
    #[serde(default)]
    pub extra_packages: Vec<String>,
    #[serde(default)]
    pub extra_packages_remove: Vec<String>,
    #[serde(default)]
    pub extra_files_remove: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub script: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_overlay: Option<String>,
    #[serde(default)]
    pub crush_image_options: Vec<String>,
    pub source_date_epoch: u64,
    /// `auto`: `$KCI_DEBIAN_MIRROR`, else the machine's apt sources.
    pub mirror: String,
    /// xz level of `full.rootfs.tar.xz` and `rootfs.ext4.xz` (default 6, as KernelCI's
    /// `tar cJf`); lower is much faster (BENCHMARKS.md) and a little larger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xz_preset: Option<u32>,
    /// Size of `rootfs.ext4` as KernelCI's `imagesize` says it (decimal units, `4GB` is
    /// 4,000,000,000 bytes, as debos reads it); default `1GB`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub imagesize: Option<String>,
    /// Memory limit of the build, as KernelCI's `debos_memory` says it (binary units, `8G`
    /// is 8 GiB, as debos reads it); default: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub debos_memory: Option<String>,
    /// Git repositories the script clones, by name: each URL is served to the build from
    /// the commit the rootfs lockfile pins, and no other URL can be cloned. The source named
    /// [`KERNELCI_CORE`] is not served: `script`, `test-overlay` and the steps every rootfs
    /// runs come from its `config/rootfs/debos/`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub git_source: BTreeMap<String, GitSourceSpec>,
    /// Files the script downloads (curl, wget), by name: each URL is served to the build
    /// from the bytes the rootfs lockfile pins, and no other URL can be downloaded.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub url_source: BTreeMap<String, UrlSourceSpec>,
}

/// A lockfile's pin of a source a recipe names (`[git-source]`, `[url-source]`).
pub trait SourcePin<Spec>: Clone {
    /// Whether this pin is of `spec` (a recipe that changed its source needs a new pin).
    fn pins(&self, spec: &Spec) -> bool;
}

/// The pins of `specs` that `locked` holds for them; a source without one is left out (it
/// is pinned before a build, or refused under `--locked`).
pub fn pins_for<S, P: SourcePin<S>>(
    specs: &BTreeMap<String, S>,
    locked: &BTreeMap<String, P>,
) -> BTreeMap<String, P> {
    specs
        .iter()
        .filter_map(|(name, spec)| {
            let pin = locked.get(name).filter(|p| p.pins(spec))?;
            Some((name.clone(), pin.clone()))
        })
        .collect()
}

/// A source's name (`[<kind>.<name>]`) is refused unless it is a config-like name.
pub fn check_source_name(kind: &str, name: &str) -> Result<(), (String, String)> {
    match valid_config_name(name) {
        true => Ok(()),
        false => Err((
            format!("{kind}.{name}"),
            "a source name is letters, digits, `-`, `_`, `.`".into(),
        )),
    }
}

/// The git source whose `config/rootfs/debos/` holds a recipe's `script`, `test-overlay` and
/// the steps every rootfs runs (`scripts/strip.sh`, `scripts/crush.sh`, …), as in KernelCI.
pub const KERNELCI_CORE: &str = "kernelci-core";

/// Where in kernelci-core the debos recipe's files are.
pub const KERNELCI_CORE_DEBOS_DIR: &str = "config/rootfs/debos";

/// debos' default `imagesize`.
pub const DEFAULT_IMAGESIZE: &str = "1GB";

/// Parses a size the way debos' `imagesize` is read (docker/go-units `FromHumanSize`:
/// decimal, an optional `k`/`m`/`g`/`t` with an optional `b`, case-insensitive).
pub fn decimal_size(text: &str) -> Option<u64> {
    human_size(text, 1000)
}

/// Parses a size the way debos' `--memory` is read (go-units `RAMInBytes`: binary).
pub fn binary_size(text: &str) -> Option<u64> {
    human_size(text, 1024)
}

fn human_size(text: &str, unit: u64) -> Option<u64> {
    let t = text.trim().to_ascii_lowercase();
    let digits = t.bytes().take_while(u8::is_ascii_digit).count();
    let (n, suffix) = t.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let suffix = suffix.trim_start();
    let suffix = suffix
        .strip_suffix("ib")
        .or_else(|| suffix.strip_suffix('b'))
        .unwrap_or(suffix);
    let power = match suffix {
        "" => 0,
        "k" => 1,
        "m" => 2,
        "g" => 3,
        "t" => 4,
        _ => return None,
    };
    n.checked_mul(unit.checked_pow(power)?)
}

impl RootfsRecipe {
    pub fn xz_preset(&self) -> u32 {
        self.xz_preset.unwrap_or(DEFAULT_XZ_PRESET)
    }

    /// Bytes of `rootfs.ext4` (validated at parse).
    pub fn ext4_bytes(&self) -> u64 {
        decimal_size(self.imagesize.as_deref().unwrap_or(DEFAULT_IMAGESIZE))
            .expect("validated when parsed")
    }

    /// The build's memory limit in bytes, if the recipe sets one (validated at parse).
    pub fn memory_bytes(&self) -> Option<u64> {
        self.debos_memory
            .as_deref()
            .map(|m| binary_size(m).expect("validated when parsed"))
    }

    /// Whether `script`, `test-overlay` and the common steps come from a pinned kernelci-core.
    pub fn uses_kernelci_core(&self) -> bool {
        self.git_source.contains_key(KERNELCI_CORE)
    }
}

impl RootfsRecipe {
    /// The canonical file text: a header naming where it came from, then the fields.
    pub fn to_toml(&self, header: &str) -> String {
        let body = toml::to_string(self).expect("recipes serialise");
        format!("{header}{body}")
    }
}

/// Config names become URL path segments and YAML keys: keep them plain.
pub fn valid_config_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A recipe file that does not parse or does not hold: names the file and the field.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", file.display())]
pub struct RootfsRecipeError {
    pub file: std::path::PathBuf,
    pub message: String,
}

impl RootfsRecipe {
    /// Parses `recipes/<name>.toml`: the file stem must be the recipe's name, the name a
    /// plain config name, the xz preset a level, every arch a Debian architecture.
    pub fn parse(file: &Path, text: &str) -> Result<RootfsRecipe, RootfsRecipeError> {
        let err = |message: String| RootfsRecipeError {
            file: file.to_owned(),
            message,
        };
        let r: RootfsRecipe =
            toml::from_str(text).map_err(|e| err(e.to_string().trim_end().to_owned()))?;
        let stem = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default();
        if r.name != stem {
            return Err(err(format!(
                "name: `{}` must match the file name `{stem}`",
                r.name
            )));
        }
        if r.xz_preset() > 9 {
            return Err(err(format!(
                "xz-preset: {} is not an xz level (0–9)",
                r.xz_preset()
            )));
        }
        if !valid_config_name(&r.name) {
            return Err(err(format!(
                "name: `{}` is not a plain config name",
                r.name
            )));
        }
        for (field, value) in [("script", &r.script), ("test-overlay", &r.test_overlay)] {
            if let Some(v) = value {
                if !is_relative_inside(v) {
                    return Err(err(format!(
                        "{field}: `{v}` must be a relative path inside the recipes directory \
                         (no leading `/`, no `..`)"
                    )));
                }
            }
        }
        if let Some(a) = r
            .arch_list
            .iter()
            .find(|a| !DEBIAN_ARCHES.contains(&a.as_str()))
        {
            return Err(err(format!(
                "arch-list: `{a}` is not a Debian architecture"
            )));
        }
        if let Some((a, why)) = r
            .arch_list
            .iter()
            .find_map(|a| release_lacks_arch(&r.debian_release, a).map(|why| (a, why)))
        {
            return Err(err(format!(
                "arch-list: `{a}` is not in Debian {}: {why}",
                r.debian_release
            )));
        }
        match r.imagesize.as_deref().map(decimal_size) {
            Some(None) => {
                return Err(err(format!(
                    "imagesize: `{}` is not a size (like `1GB` or `4GB`)",
                    r.imagesize.as_deref().unwrap_or_default()
                )))
            }
            Some(Some(n)) if !(1 << 20..=1 << 40).contains(&n) => {
                return Err(err(format!(
                    "imagesize: `{}` must be between 1 MiB and 1 TiB",
                    r.imagesize.as_deref().unwrap_or_default()
                )))
            }
            _ => {}
        }
        match r.debos_memory.as_deref().map(binary_size) {
            Some(None) => {
                return Err(err(format!(
                    "debos-memory: `{}` is not a size (like `4G` or `8G`)",
                    r.debos_memory.as_deref().unwrap_or_default()
                )))
            }
            Some(Some(n)) if n < 256 << 20 => {
                return Err(err(format!(
                    "debos-memory: `{}` is less than the 256 MiB a build needs",
                    r.debos_memory.as_deref().unwrap_or_default()
                )))
            }
            _ => {}
        }
        for (name, spec) in &r.git_source {
            gitsource::validate(name, spec).map_err(|(field, m)| err(format!("{field}: {m}")))?;
        }
        for (name, spec) in &r.url_source {
            urlsource::validate(name, spec).map_err(|(field, m)| err(format!("{field}: {m}")))?;
        }
        Ok(r)
    }
}

/// Why Debian's `release` has no `arch` in its main archive, for the releases whose arch
/// lists are known to differ (riscv64 came with trixie; mipsel and mips64el left after
/// bookworm); `None` when it has it or the release is not one of those (sid, a code name to
/// come).
pub fn release_lacks_arch(release: &str, arch: &str) -> Option<&'static str> {
    match (release, arch) {
        ("buster" | "bullseye" | "bookworm", "riscv64") => {
            Some("Debian released riscv64 first with trixie (use trixie or sid)")
        }
        ("trixie" | "forky", "mipsel" | "mips64el") => {
            Some("Debian released mipsel and mips64el last with bookworm")
        }
        _ => None,
    }
}

/// A path that names something below the directory it is joined to: relative, with no
/// `..` and no empty component.
pub fn is_relative_inside(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .enumerate()
            .all(|(i, c)| c != ".." && (!c.is_empty() || i > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_file_and_the_field() {
        let ok = "name = \"bookworm\"\ndebian-release = \"bookworm\"\narch-list = [\"amd64\"]\nsource-date-epoch = 1\nmirror = \"auto\"\n";
        let f = Path::new("recipes/bookworm.toml");
        assert_eq!(RootfsRecipe::parse(f, ok).unwrap().xz_preset(), 6);
        let e = |text: &str, file: &str| {
            RootfsRecipe::parse(Path::new(file), text)
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            e(ok, "recipes/other.toml"),
            "recipes/other.toml: name: `bookworm` must match the file name `other`"
        );
        assert_eq!(
            e(&ok.replace("amd64", "x86_64"), "recipes/bookworm.toml"),
            "recipes/bookworm.toml: arch-list: `x86_64` is not a Debian architecture"
        );
        assert_eq!(
            e(
                &ok.replace("\"amd64\"", "\"amd64\", \"riscv64\""),
                "recipes/bookworm.toml"
            ),
            "recipes/bookworm.toml: arch-list: `riscv64` is not in Debian bookworm: \
             Debian released riscv64 first with trixie (use trixie or sid)"
        );
        let trixie = ok.replace("release = \"bookworm\"", "release = \"trixie\"");
        assert!(RootfsRecipe::parse(f, &trixie.replace("\"amd64\"", "\"riscv64\"")).is_ok());
        assert!(e(
            &trixie.replace("\"amd64\"", "\"mipsel\""),
            "recipes/bookworm.toml"
        )
        .contains("`mipsel` is not in Debian trixie"));
        assert_eq!(
            e(&format!("{ok}xz-preset = 12\n"), "recipes/bookworm.toml"),
            "recipes/bookworm.toml: xz-preset: 12 is not an xz level (0–9)"
        );
        assert!(e("name = 1", "recipes/x.toml").starts_with("recipes/x.toml: "));
        for (field, hostile) in [
            ("script", "/etc/passwd"),
            ("script", "../../etc/passwd"),
            ("test-overlay", "overlays/../../../root"),
            ("test-overlay", ""),
        ] {
            let text = format!("{ok}{field} = \"{hostile}\"\n");
            let msg = e(&text, "recipes/bookworm.toml");
            assert!(
                msg.starts_with(&format!(
                    "recipes/bookworm.toml: {field}: `{hostile}` must be"
                )),
                "{msg}"
            );
        }
        let fine =
            format!("{ok}script = \"scripts/bookworm.sh\"\ntest-overlay = \"overlays/x/\"\n");
        assert!(RootfsRecipe::parse(f, &fine).is_ok());
        let sized = RootfsRecipe::parse(
            f,
            &format!("{ok}imagesize = \"4GB\"\ndebos-memory = \"8G\"\n"),
        )
        .unwrap();
        assert_eq!(sized.ext4_bytes(), 4_000_000_000);
        assert_eq!(sized.memory_bytes(), Some(8 << 30));
        let plain = RootfsRecipe::parse(f, ok).unwrap();
        assert_eq!(
            (plain.ext4_bytes(), plain.memory_bytes()),
            (1_000_000_000, None)
        );
        assert_eq!(
            e(
                &format!("{ok}imagesize = \"4 parsecs\"\n"),
                "recipes/bookworm.toml"
            ),
            "recipes/bookworm.toml: imagesize: `4 parsecs` is not a size (like `1GB` or `4GB`)"
        );
        assert!(e(
            &format!("{ok}imagesize = \"10\"\n"),
            "recipes/bookworm.toml"
        )
        .contains("imagesize: `10` must be between 1 MiB and 1 TiB"));
        assert!(e(
            &format!("{ok}debos-memory = \"64M\"\n"),
            "recipes/bookworm.toml"
        )
        .contains("debos-memory: `64M` is less than"));
    }

    #[test]
    fn sizes_read_as_debos_reads_them() {
        assert_eq!(decimal_size("1GB"), Some(1_000_000_000));
        assert_eq!(decimal_size("512mb"), Some(512_000_000));
        assert_eq!(decimal_size("2G"), Some(2_000_000_000));
        assert_eq!(binary_size("8G"), Some(8 << 30));
        assert_eq!(binary_size("512MiB"), Some(512 << 20));
        assert_eq!(decimal_size("1000"), Some(1000));
        for bad in ["", "GB", "1.5GB", "-1G", "1PB", "99999999999999999999"] {
            assert_eq!(decimal_size(bad), None, "{bad}");
        }
        assert_eq!(binary_size("99999999999T"), None);
    }
}
