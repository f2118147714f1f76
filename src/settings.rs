//! Settings: every knob kci-build takes from its environment, resolved once at start, beside
//! the command line clap already resolved — so no module below `main` reads the process
//! environment, a bad value is reported before any work starts (naming the variable), and a
//! test or the `prod` driver builds a [`Settings`] value instead of setting variables.
//!
//! Secrets (registry credentials, the storage API token) are settings too, held as
//! [`Secret`]s: they print as `***` and are never serialised.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Every environment variable kci-build reads itself (clap reads the `KCI_BUILD_*` and
/// `KCI_REGISTRY`/`KCI_STORAGE*` flags' fallbacks), with what it is for.
pub const VARIABLES: &[(&str, &str)] = &[
    (
        "DOCKER_HOST",
        "the Docker daemon (default: the local socket)",
    ),
    (
        "KCI_BUILD_DOCKER_TIMEOUT",
        "seconds a Docker API request may wait for an answer",
    ),
    (
        "KCI_DEBIAN_MIRROR",
        "the Debian mirror for `mirror = \"auto\"` (default: the machine's apt sources)",
    ),
    (
        "KCI_APT_UPSTREAM",
        "where kci-build's apt cache fetches what it lacks: `URL` for every archive, or `ORIGIN=URL` per archive host, several separated by spaces (default: the URL apt asked for; a closed port makes builds offline)",
    ),
    (
        "KCI_DOWNLOAD_FROM",
        "where kci-build fetches a download it pins (`[url-source]`): `PREFIX=URL` rules, several separated by spaces, the longest matching prefix replaced (default: the URL itself); the pin keeps the recipe's URL",
    ),
    (
        "KCI_REGISTRY_USER",
        "registry user name (with the password)",
    ),
    ("KCI_REGISTRY_PASSWORD", "registry password (a secret)"),
    (
        "DOCKER_CONFIG",
        "Docker's config directory, for registry credentials (default: ~/.docker)",
    ),
    (
        "KCI_REGISTRY_CHUNK_SIZE",
        "bytes per chunk of a blob upload (default: 32 MiB)",
    ),
    ("KCI_STORAGE_TOKEN", "the storage API token (a secret)"),
    ("KCI_BUILD_STORE", "the store directory"),
    ("NO_COLOR", "no colours on a terminal"),
];

/// Whether an environment variable holds a secret: kci-build's own (the registry password,
/// the storage token) and, by name, any `*_TOKEN`, `*_PASSWORD`, `*_PASSWD` or `*_SECRET` (the
/// variables a `prod` site file names for its tokens are such).
pub fn is_secret_var(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    matches!(
        upper.as_str(),
        "KCI_REGISTRY_PASSWORD" | "KCI_STORAGE_TOKEN"
    ) || ["_TOKEN", "_PASSWORD", "_PASSWD", "_SECRET"]
        .iter()
        .any(|end| upper.ends_with(end))
}

/// Removes every secret variable ([`is_secret_var`]) from what `cmd` inherits: the programs
/// kci-build runs for itself (mmdebstrap, its apt proxy, git for the bot's commits) need none,
/// and a child's environment is readable in `/proc` by anyone who can read its owner's. (It
/// reads the process environment's names only, never values: the one exception to "nothing
/// below `main` reads the environment".) The operator's own commands of `prod` and Docker's
/// credential helpers keep theirs: they may need them.
pub fn scrub_secrets(cmd: &mut std::process::Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_none_or(is_secret_var) {
            cmd.env_remove(name);
        }
    }
}

/// A value that must not reach logs, reports, journals or images.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// A variable set to something kci-build cannot use.
#[derive(Debug, thiserror::Error)]
#[error("environment variable {var}={value:?}: {reason}")]
pub struct SettingError {
    pub var: &'static str,
    pub value: String,
    pub reason: &'static str,
}

/// The environment as kci-build sees it, read once: the variables of [`VARIABLES`] and every
/// `KCI_*` variable (the site file of `prod` names its secrets' variables), when set and not
/// empty. Its `Debug` shows names only.
#[derive(Clone, Default)]
pub struct Env(BTreeMap<String, String>);

impl fmt::Debug for Env {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl Env {
    pub fn from_process() -> Env {
        Env::from_pairs(std::env::vars_os().filter_map(|(k, v)| {
            let k = k.into_string().ok()?;
            let known = VARIABLES.iter().any(|(var, _)| *var == k) || k.starts_with("KCI_");
            known.then(|| (k, v.to_string_lossy().into_owned()))
        }))
    }

    pub fn from_pairs<K: Into<String>>(pairs: impl IntoIterator<Item = (K, String)>) -> Env {
        Env(pairs
            .into_iter()
            .map(|(k, v)| (k.into(), v))
            .filter(|(_, v)| !v.trim().is_empty())
            .collect())
    }

    pub fn get(&self, var: &str) -> Option<&str> {
        self.0.get(var).map(|v| v.trim())
    }

    /// A secret by its variable's name (the site file names it).
    pub fn secret(&self, var: &str) -> Option<Secret> {
        self.get(var).map(Secret::new)
    }

    fn number(&self, var: &'static str, min: u64) -> Result<Option<u64>, SettingError> {
        let Some(v) = self.get(var) else {
            return Ok(None);
        };
        match v.parse::<u64>() {
            Ok(n) if n >= min => Ok(Some(n)),
            _ => Err(SettingError {
                var,
                value: v.to_owned(),
                reason: if min > 1 {
                    "not a whole number of at least 1 MiB"
                } else {
                    "not a positive whole number"
                },
            }),
        }
    }
}

/// Where the container engine is and how long a request may wait.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineSettings {
    /// `DOCKER_HOST`: `unix://…`, `tcp://…` or `http://…`; `None`: the local socket.
    pub host: Option<String>,
    pub request_timeout: Option<Duration>,
}

/// How kci-build talks to OCI registries.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// From `KCI_REGISTRY_USER`/`KCI_REGISTRY_PASSWORD`; they win over Docker's config.
    pub credentials: Option<(String, Secret)>,
    /// Docker's config directory (its `config.json` has `auths` and credential helpers).
    pub docker_config: Option<PathBuf>,
    pub chunk_size: u64,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings {
            credentials: None,
            docker_config: None,
            chunk_size: 32 << 20,
        }
    }
}

/// Where the apt cache fetches what it lacks, by the origin (`scheme://host[:port]`) apt
/// asked for. Only the origin is replaced: the archive path and the file stay the same.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AptUpstream {
    /// `ORIGIN=URL` entries.
    pub by_origin: BTreeMap<String, String>,
    /// A bare `URL`: every other origin.
    pub every: Option<String>,
}

impl AptUpstream {
    pub fn parse(text: &str) -> Result<AptUpstream, SettingError> {
        let mut out = AptUpstream::default();
        let is_url = |u: &str| u.starts_with("http://") || u.starts_with("https://");
        for entry in text.split([' ', ',', '\n']).filter(|e| !e.is_empty()) {
            let bad = || SettingError {
                var: "KCI_APT_UPSTREAM",
                value: entry.to_owned(),
                reason: "`URL` or `ORIGIN=URL` entries (http:// or https://), separated by spaces",
            };
            match entry.split_once('=') {
                Some((origin, url)) if is_url(origin) && is_url(url) => {
                    out.by_origin.insert(
                        origin.trim_end_matches('/').to_owned(),
                        url.trim_end_matches('/').to_owned(),
                    );
                }
                None if is_url(entry) => out.every = Some(entry.trim_end_matches('/').to_owned()),
                _ => return Err(bad()),
            }
        }
        Ok(out)
    }

    /// The URL to fetch for `origin` + `path` (`path` starts with `/`).
    pub fn url(&self, origin: &str, path: &str) -> String {
        let base = self
            .by_origin
            .get(origin.trim_end_matches('/'))
            .or(self.every.as_ref())
            .map(String::as_str)
            .unwrap_or(origin);
        format!("{}{path}", base.trim_end_matches('/'))
    }
}

/// Everything kci-build takes from its environment.
#[derive(Debug, Clone, Default)]
pub struct Settings {
    /// `--store`, else `$KCI_BUILD_STORE`, else `<user cache dir>/kci-build/store`.
    pub store: PathBuf,
    pub engine: EngineSettings,
    /// The mirror for `mirror = "auto"`: `$KCI_DEBIAN_MIRROR`, else the first Debian archive
    /// of the machine's apt sources; `None` when there is neither.
    pub debian_mirror: Option<String>,
    /// `$KCI_APT_UPSTREAM`: where the apt cache fetches from.
    pub apt_upstream: AptUpstream,
    /// `$KCI_DOWNLOAD_FROM`: `(prefix, replacement)` rules for fetching pinned downloads.
    pub download_from: Vec<(String, String)>,
    pub registry: RegistrySettings,
    pub storage_token: Option<Secret>,
    /// `NO_COLOR` is set.
    pub no_color: bool,
    /// The environment as read, for secrets a site file names.
    pub env: Env,
}

impl Settings {
    /// Resolves the settings from the command line's `--store` and the environment; the
    /// machine's apt sources are read only when `KCI_DEBIAN_MIRROR` is not set.
    pub fn resolve(store: Option<PathBuf>, env: &Env) -> Result<Settings, SettingError> {
        let store = store
            .or_else(|| env.get("KCI_BUILD_STORE").map(PathBuf::from))
            .unwrap_or_else(|| {
                dirs::cache_dir()
                    .unwrap_or_else(std::env::temp_dir)
                    .join("kci-build")
                    .join("store")
            });
        let debian_mirror = match env.get("KCI_DEBIAN_MIRROR") {
            Some(m) => Some(m.trim_end_matches('/').to_owned()),
            None => machine_mirror(),
        };
        let credentials = match (
            env.get("KCI_REGISTRY_USER"),
            env.get("KCI_REGISTRY_PASSWORD"),
        ) {
            (Some(u), Some(p)) => Some((u.to_owned(), Secret::new(p))),
            _ => None,
        };
        let chunk_size = env.number("KCI_REGISTRY_CHUNK_SIZE", 1 << 20)?;
        Ok(Settings {
            store,
            engine: EngineSettings {
                host: env.get("DOCKER_HOST").map(str::to_owned),
                request_timeout: env
                    .number("KCI_BUILD_DOCKER_TIMEOUT", 1)?
                    .map(Duration::from_secs),
            },
            debian_mirror,
            apt_upstream: AptUpstream::parse(env.get("KCI_APT_UPSTREAM").unwrap_or(""))?,
            download_from: download_rules(env.get("KCI_DOWNLOAD_FROM").unwrap_or(""))?,
            registry: RegistrySettings {
                credentials,
                docker_config: env
                    .get("DOCKER_CONFIG")
                    .map(PathBuf::from)
                    .or_else(|| dirs::home_dir().map(|h| h.join(".docker"))),
                chunk_size: chunk_size.unwrap_or(32 << 20),
            },
            storage_token: env.get("KCI_STORAGE_TOKEN").map(Secret::new),
            no_color: env.get("NO_COLOR").is_some(),
            env: env.clone(),
        })
    }
}

/// `PREFIX=URL PREFIX=URL …`: where pinned downloads are fetched from.
fn download_rules(text: &str) -> Result<Vec<(String, String)>, SettingError> {
    text.split_whitespace()
        .map(|rule| match rule.split_once('=') {
            Some((from, to))
                if ["http://", "https://"].iter().any(|s| from.starts_with(s))
                    && ["http://", "https://", "file:///"]
                        .iter()
                        .any(|s| to.starts_with(s)) =>
            {
                Ok((from.to_owned(), to.to_owned()))
            }
            _ => Err(SettingError {
                var: "KCI_DOWNLOAD_FROM",
                value: rule.to_owned(),
                reason:
                    "each rule is PREFIX=URL, both http(s):// (the replacement may be file:///)",
            }),
        })
        .collect()
}

/// The first Debian archive of the machine's apt sources (`/etc/apt/sources.list` and
/// `sources.list.d/*.list|*.sources`, in name order).
fn machine_mirror() -> Option<String> {
    let mut texts = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<_> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "list" || x == "sources"))
            .collect();
        paths.sort();
        texts.extend(paths.iter().filter_map(|p| std::fs::read_to_string(p).ok()));
    }
    mirror_from_sources(&texts)
}

/// The first Debian archive URL (not the security archive) in one-line or deb822 sources.
pub fn mirror_from_sources(texts: &[String]) -> Option<String> {
    let is_archive = |u: &str| {
        (u.starts_with("http://") || u.starts_with("https://"))
            && u.trim_end_matches('/').ends_with("/debian")
    };
    for text in texts {
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("deb ") {
                let url = rest.split_whitespace().find(|w| !w.starts_with('['));
                if let Some(u) = url.filter(|u| is_archive(u)) {
                    return Some(u.trim_end_matches('/').to_owned());
                }
            }
            if let Some(rest) = line.strip_prefix("URIs:") {
                if let Some(u) = rest.split_whitespace().find(|u| is_archive(u)) {
                    return Some(u.trim_end_matches('/').to_owned());
                }
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    #[test]
    fn secret_variables_by_name() {
        use super::is_secret_var;
        for secret in [
            "KCI_REGISTRY_PASSWORD",
            "KCI_STORAGE_TOKEN",
            "KCI_JENKINS_TOKEN",
            "kci_backend_token",
            "GITHUB_TOKEN",
            "SMTP_PASSWD",
            "CI_SECRET",
        ] {
            assert!(is_secret_var(secret), "{secret}");
        }
        for plain in [
            "PATH",
            "KCI_REGISTRY_USER",
            "KCI_APT_UPSTREAM",
            "TOKENIZER",
            "ANSIBLE_VAULT_PASSWORD_FILE",
            "http_proxy",
        ] {
            assert!(!is_secret_var(plain), "{plain}");
        }
    }

    #[test]
    fn apt_upstream_replaces_the_origin_only() {
        let none = AptUpstream::parse("").unwrap();
        assert_eq!(
            none.url("http://deb.example", "/debian/dists/x/InRelease"),
            "http://deb.example/debian/dists/x/InRelease"
        );
        let u = AptUpstream::parse("http://a.example=http://127.0.0.1:8080/ http://127.0.0.1:1")
            .unwrap();
        assert_eq!(
            u.url("http://a.example", "/repo/pool/x.deb"),
            "http://127.0.0.1:8080/repo/pool/x.deb"
        );
        assert_eq!(u.url("http://b.example", "/d"), "http://127.0.0.1:1/d");
        let e = AptUpstream::parse("ftp://x").unwrap_err().to_string();
        assert!(
            e.contains("KCI_APT_UPSTREAM") && e.contains("ftp://x"),
            "{e}"
        );
    }

    use super::*;

    fn env(pairs: &[(&'static str, &str)]) -> Env {
        Env::from_pairs(pairs.iter().map(|(k, v)| (*k, v.to_string())))
    }

    #[test]
    fn variables_resolve_and_secrets_do_not_print() {
        let s = Settings::resolve(
            Some("/s".into()),
            &env(&[
                ("KCI_BUILD_STORE", "/ignored"),
                ("KCI_DEBIAN_MIRROR", "http://mirror.invalid/debian/"),
                ("KCI_BUILD_DOCKER_TIMEOUT", "30"),
                ("KCI_REGISTRY_USER", "bot"),
                ("KCI_REGISTRY_PASSWORD", "hunter2"),
                ("KCI_REGISTRY_CHUNK_SIZE", "2097152"),
                ("KCI_STORAGE_TOKEN", "tok-123"),
                ("NO_COLOR", "1"),
            ]),
        )
        .unwrap();
        assert_eq!(s.store, PathBuf::from("/s"), "--store wins");
        assert_eq!(
            s.debian_mirror.as_deref(),
            Some("http://mirror.invalid/debian")
        );
        assert_eq!(s.engine.request_timeout, Some(Duration::from_secs(30)));
        assert_eq!(s.registry.chunk_size, 2 << 20);
        assert!(s.no_color);
        let shown = format!("{s:?}");
        assert!(shown.contains("bot"), "{shown}");
        for secret in ["hunter2", "tok-123"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        let env_store = Settings::resolve(None, &env(&[("KCI_BUILD_STORE", "/e")])).unwrap();
        assert_eq!(env_store.store, PathBuf::from("/e"));
    }

    #[test]
    fn a_bad_value_names_its_variable() {
        for (var, value) in [
            ("KCI_BUILD_DOCKER_TIMEOUT", "soon"),
            ("KCI_BUILD_DOCKER_TIMEOUT", "0"),
            ("KCI_REGISTRY_CHUNK_SIZE", "4096"),
            ("KCI_DOWNLOAD_FROM", "https://github.com/"),
            ("KCI_DOWNLOAD_FROM", "github.com=http://m/"),
        ] {
            let e = Settings::resolve(None, &env(&[(var, value)])).unwrap_err();
            let msg = e.to_string();
            assert!(msg.contains(var) && msg.contains(value), "{msg}");
        }
    }

    #[test]
    fn download_rules_are_prefix_replacement_pairs() {
        let s = Settings::resolve(
            None,
            &env(&[(
                "KCI_DOWNLOAD_FROM",
                "https://github.com/=http://127.0.0.1:8/gh/  http://h/=file:///srv/h/",
            )]),
        )
        .unwrap();
        assert_eq!(
            s.download_from,
            [
                (
                    "https://github.com/".to_owned(),
                    "http://127.0.0.1:8/gh/".to_owned()
                ),
                ("http://h/".to_owned(), "file:///srv/h/".to_owned()),
            ]
        );
    }

    #[test]
    fn empty_variables_count_as_unset() {
        let s = Settings::resolve(
            None,
            &env(&[
                ("KCI_STORAGE_TOKEN", "  "),
                ("KCI_BUILD_DOCKER_TIMEOUT", ""),
            ]),
        )
        .unwrap();
        assert!(s.storage_token.is_none());
        assert!(s.engine.request_timeout.is_none());
    }

    #[test]
    fn finds_the_archive_in_deb822_and_one_line_sources() {
        let deb822 = "Types: deb\n# comment\nURIs: http://mirror.example/debian\nSuites: bookworm\n\nTypes: deb\nURIs: http://mirror.example/debian-security\n".to_owned();
        assert_eq!(
            mirror_from_sources(&[deb822]).as_deref(),
            Some("http://mirror.example/debian")
        );
        let one = "deb http://mirror.example/debian-security bookworm-security main\ndeb [arch=amd64] https://m.example/debian/ bookworm main\n".to_owned();
        assert_eq!(
            mirror_from_sources(&[one]).as_deref(),
            Some("https://m.example/debian")
        );
        assert_eq!(
            mirror_from_sources(&["deb http://x/ubuntu jammy main".to_owned()]),
            None
        );
    }
}
