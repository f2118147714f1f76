//! Pinned downloads, the model: what a rootfs recipe names (`[url-source.<name>]`: a URL a
//! script downloads with curl or wget, optionally with the sha256 it must have), what the
//! rootfs lockfile pins (sha256 and size of the bytes), and the key fact — pure, no network.
//!
//! A build never reaches the network: its proxy serves every pinned URL from the store (an
//! `https://` one through a TLS certificate of kci-build's own authority, which only the
//! script's tools trust, see `crate::mitm`) and refuses the rest, naming the URL. This is
//! Nix's fixed-output download: the URL is where the bytes came from, the sha256 is what
//! the build gets.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::names::Digest;

/// A download as a recipe names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlSourceSpec {
    /// The URL the script downloads, exactly as it writes it (`http://` or `https://`).
    pub url: String,
    /// The bytes it must be, when the recipe knows them (a release tarball's published
    /// checksum); without it, the first download is pinned and `lock --refresh` moves it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<Digest>,
}

/// A download as the rootfs lockfile pins it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedUrl {
    pub url: String,
    pub sha256: Digest,
    pub size: u64,
}

impl LockedUrl {
    /// The key fact of a download: what a build sees of it.
    pub fn fact(&self) -> String {
        format!("{} {}", self.url, self.sha256)
    }

    /// Whether this pin is of `spec` (same URL, and the sha256 it asks for, if any).
    pub fn pins(&self, spec: &UrlSourceSpec) -> bool {
        self.url == spec.url && spec.sha256.as_ref().is_none_or(|d| *d == self.sha256)
    }
}

impl super::rootfs_recipe::SourcePin<UrlSourceSpec> for LockedUrl {
    fn pins(&self, spec: &UrlSourceSpec) -> bool {
        LockedUrl::pins(self, spec)
    }
}

/// The pins of `specs` that `locked` holds for them (same URL, the asked sha256).
pub fn pins_for(
    specs: &BTreeMap<String, UrlSourceSpec>,
    locked: &BTreeMap<String, LockedUrl>,
) -> BTreeMap<String, LockedUrl> {
    super::rootfs_recipe::pins_for(specs, locked)
}

/// What the build's proxy serves: URL → sha256.
pub fn served(pins: &BTreeMap<String, LockedUrl>) -> BTreeMap<String, Digest> {
    pins.values()
        .map(|p| (normalized(&p.url), p.sha256.clone()))
        .collect()
}

/// Why a recipe's download is refused: `(field, message)`.
pub fn validate(name: &str, spec: &UrlSourceSpec) -> Result<(), (String, String)> {
    let field = |f: &str| format!("url-source.{name}{f}");
    super::rootfs_recipe::check_source_name("url-source", name)?;
    let url = spec.url.as_str();
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err((field(".url"), format!("`{url}` is not a URL")));
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if !matches!(scheme, "http" | "https")
        || authority.is_empty()
        || url.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err((
            field(".url"),
            format!("`{url}` is not a download kci-build can pin (http:// or https://, a host, no spaces)"),
        ));
    }
    if authority.contains('@') {
        return Err((
            field(".url"),
            "a URL with a user or password would write it into the lockfile and the build's log"
                .into(),
        ));
    }
    if url.contains('#') {
        return Err((
            field(".url"),
            "a URL's `#fragment` is never sent to a server: leave it out".into(),
        ));
    }
    Ok(())
}

/// The host (and port, when not the scheme's) of an `http(s)://` URL, lowercased: what a
/// proxy sees in a `CONNECT` or a `Host:`.
pub fn authority_of(url: &str) -> Option<(String, u16)> {
    let (scheme, rest) = url.split_once("://")?;
    let default = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return None,
    };
    let authority = rest.split(['/', '?', '#']).next()?.to_ascii_lowercase();
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (h, after) = v6.split_once(']')?;
            (format!("[{h}]"), after.strip_prefix(':'))
        }
        None => match authority.split_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.clone(), None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default,
    };
    (!host.is_empty()).then_some((host, port))
}

/// The URLs a shell script downloads (with curl or wget on the same line, or an archive
/// file's URL not on a `git` line), each once, in order: what to pin as `[url-source]`s.
/// The others of [`super::gitsource::urls_in_script`] are clones or apt sources.
pub fn downloads_in_script(text: &str) -> Vec<String> {
    const ARCHIVES: &[&str] = &[".tar.gz", ".tar.xz", ".tar.bz2", ".tgz", ".zip", ".tar.zst"];
    let mut out: Vec<String> = Vec::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let fetcher = line.contains("curl") || line.contains("wget");
        let git = line.contains("git ");
        for url in super::gitsource::urls_in_script(line) {
            let archive = ARCHIVES.iter().any(|a| url.ends_with(a));
            let wanted = url.starts_with("http") && (fetcher || (archive && !git));
            if wanted && !out.contains(&url) {
                out.push(url);
            }
        }
    }
    out
}

/// `url` as a proxy compares it: scheme and host lowercased, the scheme's own port left out
/// (`HTTPS://GitHub.com:443/a` is `https://github.com/a`); not a URL, itself.
pub fn normalized(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let scheme = scheme.to_ascii_lowercase();
    let Some((host, port)) = authority_of(&format!("{scheme}://{rest}")) else {
        return url.to_owned();
    };
    let at = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let path = match &rest[at..] {
        "" => "/",
        p => p,
    };
    format!("{scheme}://{}{path}", authority(&scheme, &host, port))
}

/// `host` or `host:port`, as a URL of `scheme` writes it.
pub fn authority(scheme: &str, host: &str, port: u16) -> String {
    match (scheme, port) {
        ("http", 80) | ("https", 443) => host.to_owned(),
        _ => format!("{host}:{port}"),
    }
}

/// A name to suggest for pinning `url`: the repository of a GitHub/GitLab archive
/// (`…/<repo>/archive/…`), else the file name without its archive suffixes.
pub fn suggested_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    let base = match parts.iter().position(|p| *p == "archive" || *p == "-") {
        Some(i) if i > 0 => parts[i - 1],
        _ => parts.last().copied().unwrap_or("download"),
    };
    let mut name = base.to_owned();
    for suffix in [".xz", ".gz", ".bz2", ".zst", ".tar", ".tgz", ".zip"] {
        if let Some(s) = name.strip_suffix(suffix) {
            name = s.to_owned();
        }
    }
    let name: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    if name.is_empty() {
        "download".into()
    } else {
        name
    }
}

/// `url` fetched from where the operator's rewrite rules send it (`prefix=replacement`,
/// longest prefix first): a local mirror of the download hosts. The pin keeps `url`.
pub fn rewritten(url: &str, rules: &[(String, String)]) -> String {
    rules
        .iter()
        .filter(|(from, _)| url.starts_with(from.as_str()))
        .max_by_key(|(from, _)| from.len())
        .map(|(from, to)| format!("{to}{}", &url[from.len()..]))
        .unwrap_or_else(|| url.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(url: &str) -> UrlSourceSpec {
        UrlSourceSpec {
            url: url.into(),
            sha256: None,
        }
    }

    #[test]
    fn only_http_and_https_downloads_without_credentials_are_pinned() {
        assert!(validate("a", &spec("https://github.com/x/y/archive/main.tar.gz")).is_ok());
        assert!(validate("a", &spec("http://127.0.0.1:8080/f.tar.xz?x=1")).is_ok());
        for bad in [
            "ftp://host/f",
            "https://",
            "https://user:pw@host/f",
            "https://host/a b",
            "https://host/f#x",
            "file:///etc/passwd",
        ] {
            let (field, _) = validate("a", &spec(bad)).unwrap_err();
            assert_eq!(field, "url-source.a.url", "{bad}");
        }
        assert_eq!(
            validate("a b", &spec("https://h/f")).unwrap_err().0,
            "url-source.a b"
        );
    }

    #[test]
    fn authorities_are_what_a_proxy_sees() {
        assert_eq!(
            authority_of("https://GitHub.com/a/b"),
            Some(("github.com".into(), 443))
        );
        assert_eq!(
            authority_of("http://127.0.0.1:8080/f"),
            Some(("127.0.0.1".into(), 8080))
        );
        assert_eq!(authority_of("http://h"), Some(("h".into(), 80)));
        assert_eq!(authority_of("ftp://h/f"), None);
    }

    #[test]
    fn urls_are_compared_as_a_proxy_sees_them() {
        assert_eq!(
            normalized("HTTPS://GitHub.com:443/a/B"),
            "https://github.com/a/B"
        );
        assert_eq!(normalized("http://h:8080"), "http://h:8080/");
        assert_eq!(normalized("http://h:80/x?y=1"), "http://h/x?y=1");
        assert_eq!(authority("https", "h", 8443), "h:8443");
    }

    #[test]
    fn a_pin_follows_the_url_and_the_asked_sha256() {
        let d = Digest::of(b"x");
        let pin = LockedUrl {
            url: "https://h/f".into(),
            sha256: d.clone(),
            size: 1,
        };
        assert!(pin.pins(&spec("https://h/f")));
        assert!(!pin.pins(&spec("https://h/g")));
        let mut asked = spec("https://h/f");
        asked.sha256 = Some(Digest::of(b"y"));
        assert!(!pin.pins(&asked), "the recipe asks for other bytes");
        asked.sha256 = Some(d.clone());
        assert!(pin.pins(&asked));
        assert_eq!(pin.fact(), format!("https://h/f {d}"));
        let specs = BTreeMap::from([("a".to_owned(), spec("https://h/f"))]);
        let locked = BTreeMap::from([
            ("a".to_owned(), pin.clone()),
            ("gone".to_owned(), pin.clone()),
        ]);
        assert_eq!(pins_for(&specs, &locked).len(), 1);
        assert_eq!(served(&pins_for(&specs, &locked))["https://h/f"], d);
    }

    #[test]
    fn downloads_are_curl_and_wget_urls_and_archives_not_clones() {
        let script = "\
curl -L -o /tmp/a.tar.gz https://github.com/a/a/archive/refs/heads/master.tar.gz
wget -q http://h/b.bin
git clone https://github.com/k/bootrr.git
git clone https://h/x/archive.tar.gz
URL=https://h/c-1.0.tar.xz
# curl https://h/commented
curl https://github.com/a/a/archive/refs/heads/master.tar.gz
";
        assert_eq!(
            downloads_in_script(script),
            [
                "https://github.com/a/a/archive/refs/heads/master.tar.gz",
                "http://h/b.bin",
                "https://h/c-1.0.tar.xz",
            ]
        );
    }

    #[test]
    fn names_and_rewrites() {
        assert_eq!(
            suggested_name(
                "https://github.com/alsa-project/alsa-ucm-conf/archive/refs/heads/master.tar.gz"
            ),
            "alsa-ucm-conf"
        );
        assert_eq!(
            suggested_name("https://cdn.kernel.org/pub/linux/kernel/v6.x/linux-6.12.tar.xz"),
            "linux-6.12"
        );
        let rules = vec![
            ("https://github.com/".to_owned(), "http://m/gh/".to_owned()),
            (
                "https://github.com/kernelci/".to_owned(),
                "http://m/kci/".to_owned(),
            ),
        ];
        assert_eq!(
            rewritten("https://github.com/kernelci/x.tar.gz", &rules),
            "http://m/kci/x.tar.gz"
        );
        assert_eq!(
            rewritten("https://github.com/a/x", &rules),
            "http://m/gh/a/x"
        );
        assert_eq!(
            rewritten("https://gitlab.com/a", &rules),
            "https://gitlab.com/a"
        );
    }
}
