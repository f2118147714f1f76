//! Validated names: digests, target names, platforms.
//!
//! Every identifier that crosses a file boundary (recipe, lockfile, store, daemon) is parsed
//! into one of these types once, so the rest of the code never re-checks a string.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a name or digest was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} `{value}` is invalid: {reason}")]
pub struct NameError {
    pub what: &'static str,
    pub value: String,
    pub reason: String,
}

fn name_error(what: &'static str, value: &str, reason: impl Into<String>) -> NameError {
    NameError {
        what,
        value: value.to_owned(),
        reason: reason.into(),
    }
}

/// A `sha256:<64 lowercase hex>` content digest.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Digest(String);

impl Digest {
    /// Digest of a byte string.
    pub fn of(bytes: &[u8]) -> Digest {
        use sha2::Digest as _;
        Digest::from_hash(sha2::Sha256::digest(bytes).as_slice())
    }

    /// Wraps a finished 32-byte sha256 hash.
    pub fn from_hash(hash: &[u8]) -> Digest {
        assert_eq!(hash.len(), 32, "sha256 hashes are 32 bytes");
        Digest(format!("sha256:{}", hex::encode(hash)))
    }

    /// The 64 hex characters, without the algorithm.
    pub fn hex(&self) -> &str {
        &self.0["sha256:".len()..]
    }

    /// The first 12 hex characters, for human output and tags.
    pub fn short(&self) -> &str {
        &self.hex()[..12]
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for Digest {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| name_error("digest", s, "must start with `sha256:`"))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(name_error(
                "digest",
                s,
                "expected 64 lowercase hex digits after `sha256:`",
            ));
        }
        Ok(Digest(s.to_owned()))
    }
}

/// A build target, named the way KernelCI names its images without the registry prefix:
/// `{image}[:{tag}]`, e.g. `gcc-12:arm64-kselftest` or `qemu` (tag `latest` when pushed).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TargetName(String);

impl TargetName {
    /// The repository part, e.g. `gcc-12`.
    pub fn image(&self) -> &str {
        self.0.split(':').next().unwrap_or(&self.0)
    }

    /// The tag part; `latest` when the name has none.
    pub fn tag(&self) -> &str {
        self.0.split_once(':').map(|(_, t)| t).unwrap_or("latest")
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A file-name-safe form (`gcc-12_arm64`), for logs.
    pub fn file_stem(&self) -> String {
        self.0.replace(':', "_")
    }
}

impl FromStr for TargetName {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let what = "target name";
        let (image, tag) = match s.split_once(':') {
            Some((i, t)) => (i, Some(t)),
            None => (s, None),
        };
        // Docker repository component: lowercase alphanumerics separated by `.`, `_`, `-`.
        let image_ok = !image.is_empty()
            && image.len() <= 128
            && image
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            && image.as_bytes()[0].is_ascii_alphanumeric()
            && image.as_bytes()[image.len() - 1].is_ascii_alphanumeric();
        if !image_ok {
            return Err(name_error(
                what,
                s,
                "the image part must be lowercase letters, digits, `.`, `_` or `-`, starting and ending with a letter or digit",
            ));
        }
        if let Some(tag) = tag {
            let tag_ok = !tag.is_empty()
                && tag.len() <= 128
                && tag
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
                && (tag.as_bytes()[0].is_ascii_alphanumeric() || tag.as_bytes()[0] == b'_');
            if !tag_ok {
                return Err(name_error(
                    what,
                    s,
                    "the tag must follow `{arch}-{fragment}-…`: letters, digits, `.`, `_`, `-`, at most 128",
                ));
            }
        }
        Ok(TargetName(s.to_owned()))
    }
}

/// An OCI platform: `os/architecture[/variant]`, e.g. `linux/arm/v7`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn linux_amd64() -> Platform {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

const OCI_ARCHES: &[&str] = &[
    "amd64", "arm64", "arm", "386", "riscv64", "ppc64le", "s390x", "mips64le",
];

impl FromStr for Platform {
    type Err = NameError;
    fn from_str(s: &str) -> Result<Self, NameError> {
        let parts: Vec<&str> = s.split('/').collect();
        let (os, arch, variant) = match parts.as_slice() {
            [os, arch] => (*os, *arch, None),
            [os, arch, variant] => (*os, *arch, Some(*variant)),
            _ => {
                return Err(name_error(
                    "platform",
                    s,
                    "expected `os/arch` or `os/arch/variant`",
                ))
            }
        };
        if os != "linux" {
            return Err(name_error("platform", s, "only `linux` images are built"));
        }
        if !OCI_ARCHES.contains(&arch) {
            return Err(name_error(
                "platform",
                s,
                format!("unknown architecture; known: {}", OCI_ARCHES.join(", ")),
            ));
        }
        if let Some(v) = variant {
            let ok = matches!((arch, v), ("arm", "v5" | "v6" | "v7") | ("arm64", "v8"));
            if !ok {
                return Err(name_error(
                    "platform",
                    s,
                    "variant must be v5/v6/v7 for arm or v8 for arm64",
                ));
            }
        }
        Ok(Platform {
            os: os.into(),
            architecture: arch.into(),
            variant: variant.map(Into::into),
        })
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

macro_rules! string_newtype_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl fmt::Debug for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", self.0)
            }
        }
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}
string_newtype_impls!(Digest);
string_newtype_impls!(TargetName);

impl fmt::Debug for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.to_string())
    }
}
impl Serialize for Platform {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}
impl<'de> Deserialize<'de> for Platform {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_roundtrip_and_rejects() {
        let d = Digest::of(b"");
        assert_eq!(
            d.as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(d.as_str().parse::<Digest>().unwrap(), d);
        assert!("sha256:E3B0".parse::<Digest>().is_err());
        assert!("md5:00".parse::<Digest>().is_err());
        assert_eq!(d.short(), "e3b0c44298fc");
    }

    #[test]
    fn target_names_follow_kernelci_rule() {
        let t: TargetName = "gcc-12:arm64-kselftest".parse().unwrap();
        assert_eq!((t.image(), t.tag()), ("gcc-12", "arm64-kselftest"));
        let q: TargetName = "qemu".parse().unwrap();
        assert_eq!(q.tag(), "latest");
        for bad in ["", "GCC", "gcc:", "gcc:-x", "-gcc", "gcc/12:x86", "a:b:c"] {
            assert!(
                bad.parse::<TargetName>().is_err(),
                "{bad} should be refused"
            );
        }
    }

    #[test]
    fn platforms() {
        let p: Platform = "linux/arm/v7".parse().unwrap();
        assert_eq!(p.to_string(), "linux/arm/v7");
        assert!("linux/arm/v8".parse::<Platform>().is_err());
        assert!("windows/amd64".parse::<Platform>().is_err());
        assert!("linux/sparc".parse::<Platform>().is_err());
    }
}
