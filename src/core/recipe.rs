//! Recipes: what the user writes under `images/`.
//!
//! `images/config.toml` holds settings shared by every target (registry prefix,
//! `SOURCE_DATE_EPOCH`). Each `images/<dir>/image.toml` declares one or more targets built
//! from that directory: either a Dockerfile build on a parent *target* (never a moving tag),
//! or a Debian base bootstrapped by kci-build itself with mmdebstrap. Parsing is pure: the
//! caller reads the files, these functions turn text into validated values, and every
//! error names the file and the field.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::names::{Platform, TargetName};

/// A recipe that cannot be used, with the file and field to look at.
#[derive(Debug, thiserror::Error)]
#[error("{}: {field}: {message}", file.display())]
pub struct RecipeError {
    pub file: PathBuf,
    pub field: String,
    pub message: String,
}

impl RecipeError {
    pub fn new(file: &Path, field: impl Into<String>, message: impl Into<String>) -> Self {
        RecipeError {
            file: file.to_owned(),
            field: field.into(),
            message: message.into(),
        }
    }
}

/// `images/config.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct Settings {
    /// Registry prefix of the human tags, e.g. `kernelci/`.
    pub prefix: String,
    /// The only clock any build sees; every mtime and `created` field is clamped to it.
    pub source_date_epoch: u64,
}

impl Settings {
    pub fn parse(file: &Path, text: &str) -> Result<Settings, RecipeError> {
        toml::from_str(text).map_err(|e| toml_error(file, e))
    }
}

/// One target as written in an `image.toml`, after validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetRecipe {
    pub name: TargetName,
    /// The `image.toml` that declares it.
    pub recipe_file: PathBuf,
    /// Its build context directory (the `image.toml`'s directory).
    pub context_dir: PathBuf,
    pub platform: Platform,
    pub kind: TargetKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetKind {
    /// `docker build` of `dockerfile` in the context directory. `parent` is passed as the
    /// build argument `PARENT` in the form `sha256:<config digest>` (the image id).
    Dockerfile {
        dockerfile: String,
        parent: Option<TargetName>,
        args: BTreeMap<String, String>,
    },
    /// A Debian root file system made by mmdebstrap, imported as a one-layer image.
    Bootstrap(Bootstrap),
    /// A multi-platform image: an OCI index over single-platform targets of the same
    /// image (`busybox:amd64`, `busybox:arm64` → `busybox`), one manifest per platform.
    Index { members: Vec<TargetName> },
}

impl TargetKind {
    /// The image this one is built `FROM`.
    pub fn parent(&self) -> Option<&TargetName> {
        match self {
            TargetKind::Dockerfile { parent, .. } => parent.as_ref(),
            TargetKind::Bootstrap(_) | TargetKind::Index { .. } => None,
        }
    }

    /// Every target whose output this one needs: the parent, or an index's members.
    pub fn deps(&self) -> Vec<&TargetName> {
        match self {
            TargetKind::Index { members } => members.iter().collect(),
            other => other.parent().into_iter().collect(),
        }
    }
}

/// mmdebstrap parameters.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    pub suite: String,
    #[serde(default = "default_variant")]
    pub variant: String,
    #[serde(default = "default_components")]
    pub components: Vec<String>,
    #[serde(default)]
    pub packages: Vec<String>,
    /// `auto`: the mirror of the machine's apt sources, or `$KCI_DEBIAN_MIRROR`.
    /// Anything else is used as given.
    #[serde(default = "default_mirror")]
    pub mirror: String,
    /// An OpenPGP keyring file in the target's directory (so part of its key) that apt
    /// trusts instead of the host's Debian keyring: for an archive other than Debian's.
    #[serde(default)]
    pub keyring: Option<String>,
}

impl Bootstrap {
    /// The mirror URL to use: the recipe's, or for `auto` the machine's (if it has one).
    pub fn mirror_url<'a>(&'a self, machine: Option<&'a str>) -> Option<&'a str> {
        match self.mirror.as_str() {
            "auto" => machine,
            given => Some(given),
        }
    }
}

fn default_variant() -> String {
    "minbase".into()
}
fn default_components() -> Vec<String> {
    vec!["main".into()]
}
fn default_mirror() -> String {
    "auto".into()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageFile {
    target: Vec<RawTarget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTarget {
    name: TargetName,
    #[serde(default)]
    parent: Option<TargetName>,
    #[serde(default)]
    dockerfile: Option<String>,
    #[serde(default)]
    args: BTreeMap<String, String>,
    #[serde(default)]
    platform: Option<Platform>,
    #[serde(default)]
    bootstrap: Option<Bootstrap>,
    #[serde(default)]
    index: Option<Vec<TargetName>>,
}

/// Build arguments kci-build sets itself; a recipe may not override them.
pub const RESERVED_ARGS: &[&str] = &["PARENT", "SOURCE_DATE_EPOCH"];

fn toml_error(file: &Path, e: toml::de::Error) -> RecipeError {
    let field = match e.span() {
        Some(span) => format!("at bytes {}..{}", span.start, span.end),
        None => "(document)".to_owned(),
    };
    RecipeError::new(file, field, e.to_string().trim_end().to_owned())
}

/// Parses one `image.toml`. `file` is used in errors and to locate the context directory.
pub fn parse_image_file(file: &Path, text: &str) -> Result<Vec<TargetRecipe>, RecipeError> {
    let raw: ImageFile = toml::from_str(text).map_err(|e| toml_error(file, e))?;
    let context_dir = file.parent().unwrap_or(Path::new(".")).to_owned();
    if raw.target.is_empty() {
        return Err(RecipeError::new(file, "target", "declares no [[target]]"));
    }
    let mut out = Vec::with_capacity(raw.target.len());
    for (i, t) in raw.target.into_iter().enumerate() {
        let field = format!("target[{i}] ({})", t.name);
        let name = t.name.clone();
        let platform = t.platform.clone().unwrap_or_else(Platform::linux_amd64);
        out.push(TargetRecipe {
            name,
            recipe_file: file.to_owned(),
            context_dir: context_dir.clone(),
            platform,
            kind: kind_of(&Field { file, at: &field }, t)?,
        });
    }
    Ok(out)
}

/// Where in the recipe file an error is: the file and `target[i] (name)`.
struct Field<'a> {
    file: &'a Path,
    at: &'a str,
}

impl Field<'_> {
    fn error(&self, field: &str, message: impl Into<String>) -> RecipeError {
        RecipeError::new(self.file, format!("{}.{field}", self.at), message)
    }

    /// Fails on the first of `fields` that is set, with `message`.
    fn refuse(&self, fields: &[(&str, bool)], message: &str) -> Result<(), RecipeError> {
        match fields.iter().find(|(_, set)| *set) {
            Some((f, _)) => Err(self.error(f, message)),
            None => Ok(()),
        }
    }
}

/// An index, a bootstrap or a Dockerfile target, validated.
fn kind_of(at: &Field<'_>, t: RawTarget) -> Result<TargetKind, RecipeError> {
    if let Some(members) = &t.index {
        return index_kind(at, &t, members.clone());
    }
    match t.bootstrap {
        Some(b) => {
            let others = [
                ("parent", t.parent.is_some()),
                ("dockerfile", t.dockerfile.is_some()),
                ("args", !t.args.is_empty()),
            ];
            at.refuse(
                &others,
                "a bootstrap target takes no parent, dockerfile or args",
            )?;
            bootstrap_kind(at, b)
        }
        None => dockerfile_kind(at, t.dockerfile, t.parent, t.args),
    }
}

fn index_kind(
    at: &Field<'_>,
    t: &RawTarget,
    members: Vec<TargetName>,
) -> Result<TargetKind, RecipeError> {
    let others = [
        ("parent", t.parent.is_some()),
        ("dockerfile", t.dockerfile.is_some()),
        ("args", !t.args.is_empty()),
        ("platform", t.platform.is_some()),
        ("bootstrap", t.bootstrap.is_some()),
    ];
    at.refuse(
        &others,
        "an index target takes only `index` (its members carry the platforms)",
    )?;
    if members.is_empty() {
        return Err(at.error("index", "lists no member"));
    }
    if let Some(m) = members.iter().find(|m| m.image() != t.name.image()) {
        return Err(at.error(
            "index",
            format!("member `{m}` is not a tag of image `{}`", t.name.image()),
        ));
    }
    Ok(TargetKind::Index { members })
}

/// mmdebstrap's variants.
const VARIANTS: &[&str] = &[
    "extract",
    "custom",
    "essential",
    "apt",
    "required",
    "minbase",
    "buildd",
    "important",
    "debootstrap",
    "standard",
];

fn bootstrap_kind(at: &Field<'_>, mut b: Bootstrap) -> Result<TargetKind, RecipeError> {
    let suite_ok = !b.suite.is_empty()
        && b.suite
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-');
    if !suite_ok {
        return Err(at.error(
            "bootstrap.suite",
            format!("`{}` is not a Debian suite name", b.suite),
        ));
    }
    if !VARIANTS.contains(&b.variant.as_str()) {
        return Err(at.error(
            "bootstrap.variant",
            format!("`{}` is not an mmdebstrap variant", b.variant),
        ));
    }
    if let Some(p) = b.packages.iter().find(|p| !is_debian_package_name(p)) {
        return Err(at.error(
            "bootstrap.packages",
            format!("`{p}` is not a Debian package name"),
        ));
    }
    if let Some(k) = &b.keyring {
        let plain = !k.is_empty()
            && !k.starts_with('/')
            && k.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
        if !plain {
            return Err(at.error(
                "bootstrap.keyring",
                format!("`{k}` is not a file in the target's directory"),
            ));
        }
    }
    b.packages.sort();
    b.packages.dedup();
    Ok(TargetKind::Bootstrap(b))
}

fn dockerfile_kind(
    at: &Field<'_>,
    dockerfile: Option<String>,
    parent: Option<TargetName>,
    args: BTreeMap<String, String>,
) -> Result<TargetKind, RecipeError> {
    if let Some(k) = args.keys().find(|k| RESERVED_ARGS.contains(&k.as_str())) {
        return Err(at.error(&format!("args.{k}"), "is set by kci-build itself"));
    }
    let dockerfile = dockerfile.unwrap_or_else(|| "Dockerfile".to_owned());
    if dockerfile.starts_with('/') || dockerfile.split('/').any(|c| c == "..") {
        return Err(at.error("dockerfile", "must be a path inside the target's directory"));
    }
    Ok(TargetKind::Dockerfile {
        dockerfile,
        parent,
        args,
    })
}

fn is_debian_package_name(p: &str) -> bool {
    p.len() >= 2
        && p.as_bytes()[0].is_ascii_alphanumeric()
        && p.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"+-.".contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Vec<TargetRecipe>, RecipeError> {
        parse_image_file(Path::new("images/gcc-12/image.toml"), text)
    }

    #[test]
    fn parses_dockerfile_and_bootstrap_targets() {
        let t = parse(
            r#"
[[target]]
name = "gcc-12:arm64"
parent = "build-base"
args = { TRIPLE = "aarch64-linux-gnu" }

[[target]]
name = "debian:bookworm"
platform = "linux/amd64"
bootstrap = { suite = "bookworm", packages = ["zlib1g", "ca-certificates", "zlib1g"] }
"#,
        )
        .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(t[0].kind.parent().unwrap().as_str(), "build-base");
        assert_eq!(t[0].context_dir, Path::new("images/gcc-12"));
        match &t[1].kind {
            TargetKind::Bootstrap(b) => {
                assert_eq!(b.packages, ["ca-certificates", "zlib1g"]);
                assert_eq!(b.variant, "minbase");
                assert_eq!(b.mirror, "auto");
            }
            other => panic!("expected bootstrap, got {other:?}"),
        }
    }

    #[test]
    fn errors_name_file_and_field() {
        let cases = [
            ("[[target]]\nname = \"gcc-12:arm64\"\nparnet = \"x\"\n", "parnet"),
            ("[[target]]\nname = \"GCC\"\n", "target name `GCC` is invalid"),
            ("[[target]]\nname = \"a\"\nargs = { PARENT = \"x\" }\n", "target[0] (a).args.PARENT"),
            ("[[target]]\nname = \"a\"\nplatform = \"linux/vax\"\n", "unknown architecture"),
            ("[[target]]\nname = \"a\"\nbootstrap = { suite = \"bookworm\", variant = \"huge\" }\n", "target[0] (a).bootstrap.variant"),
            ("[[target]]\nname = \"a\"\nparent = \"b\"\nbootstrap = { suite = \"bookworm\" }\n", "target[0] (a).parent"),
            ("[[target]]\nname = \"a\"\nbootstrap = { suite = \"bookworm\", keyring = \"../k.gpg\" }\n", "target[0] (a).bootstrap.keyring"),
            ("[[target]]\nname = \"a\"\ndockerfile = \"../x\"\n", "target[0] (a).dockerfile"),
            ("target = []\n", "declares no [[target]]"),
        ];
        for (text, needle) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.starts_with("images/gcc-12/image.toml: "), "{err}");
            assert!(err.contains(needle), "`{err}` should contain `{needle}`");
        }
    }
}
