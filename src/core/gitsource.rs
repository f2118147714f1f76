//! Pinned git sources, the model: what a rootfs recipe names (`[git-source.<name>]`: a URL
//! and the branch or tag it follows), what the rootfs lockfile pins (the commit and its tree),
//! and how a build reaches them without the network — pure, no git here.
//!
//! A build's `git` sees a configuration ([`build_gitconfig`]) whose `url.<…>.insteadOf`
//! rules send every pinned URL to the pinned copy kci-build put into the build, and every
//! other URL of a network scheme to a path that does not exist under [`UNPINNED_DIR`], so a
//! clone that is not pinned fails at once instead of reaching the network; the message git
//! prints names that path, and [`unpinned_url_in`] turns it back into the URL for the error.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Where the pinned copies are inside the rootfs while the config's script runs (removed
/// after it).
pub const SERVED_DIR: &str = "/kci-git";
/// What an unpinned URL is rewritten to: `<UNPINNED_DIR>/<scheme>/<rest>`.
pub const UNPINNED_DIR: &str = "/kci-git/unpinned";
/// URL schemes git can reach a network with; all are rewritten.
const NETWORK_SCHEMES: &[&str] = &["https://", "http://", "git://", "ssh://", "git+ssh://"];

/// A git object id: 40 lowercase hex digits (SHA-1 repositories, which every git host serves).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ObjectId(String);

impl ObjectId {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 digits, for messages.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl TryFrom<String> for ObjectId {
    type Error = String;

    fn try_from(s: String) -> Result<ObjectId, String> {
        if s.len() == 40
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(ObjectId(s))
        } else {
            Err(format!(
                "`{s}` is not a git object id (40 lowercase hex digits)"
            ))
        }
    }
}

impl std::str::FromStr for ObjectId {
    type Err = String;

    fn from_str(s: &str) -> Result<ObjectId, String> {
        ObjectId::try_from(s.to_owned())
    }
}

impl From<ObjectId> for String {
    fn from(o: ObjectId) -> String {
        o.0
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A git source as a recipe names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSourceSpec {
    /// The URL the build's scripts clone, exactly as they write it.
    pub url: String,
    /// The branch or tag that `lock --refresh` follows (`main`, `v1.2`), or a full commit
    /// id, which never moves (for a script that checks out a fixed commit).
    #[serde(rename = "ref")]
    pub git_ref: String,
}

impl GitSourceSpec {
    /// The ref is a full commit id (40 hex digits): pinned as it is.
    pub fn commit_ref(&self) -> Option<ObjectId> {
        commit_id(&self.git_ref)
    }
}

/// `text` as a commit id, when it is 40 lowercase hex digits.
pub fn commit_id(text: &str) -> Option<ObjectId> {
    text.parse().ok()
}

/// A git source as the rootfs lockfile pins it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LockedSource {
    pub url: String,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub commit: ObjectId,
    /// The commit's root tree: what the build gets, whatever the commit's metadata.
    pub tree: ObjectId,
}

impl LockedSource {
    /// The key fact of a source: what a build sees of it.
    pub fn fact(&self) -> String {
        format!("{} {} {}", self.url, self.commit, self.tree)
    }

    /// Whether this pin is of `spec` (same URL and ref).
    pub fn pins(&self, spec: &GitSourceSpec) -> bool {
        self.url == spec.url && self.git_ref == spec.git_ref
    }
}

impl super::rootfs_recipe::SourcePin<GitSourceSpec> for LockedSource {
    fn pins(&self, spec: &GitSourceSpec) -> bool {
        LockedSource::pins(self, spec)
    }
}

/// The pins of `specs` that `locked` holds for them (same URL and ref).
pub fn pins_for(
    specs: &BTreeMap<String, GitSourceSpec>,
    locked: &BTreeMap<String, LockedSource>,
) -> BTreeMap<String, LockedSource> {
    super::rootfs_recipe::pins_for(specs, locked)
}

/// Why a recipe's git source is refused: `(field, message)`.
pub fn validate(name: &str, spec: &GitSourceSpec) -> Result<(), (String, String)> {
    let field = |f: &str| format!("git-source.{name}{f}");
    super::rootfs_recipe::check_source_name("git-source", name)?;
    let url = spec.url.as_str();
    let scheme_ok =
        NETWORK_SCHEMES.iter().any(|s| url.starts_with(s)) || url.starts_with("file:///");
    if !scheme_ok || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err((
            field(".url"),
            format!("`{url}` is not a git URL kci-build can pin (https://, http://, git://, ssh:// or file:///, no spaces)"),
        ));
    }
    if url_has_credentials(url) {
        return Err((
            field(".url"),
            "a URL with a user or password would write it into the lockfile: give the credentials to git instead".into(),
        ));
    }
    let r = spec.git_ref.as_str();
    if r.is_empty()
        || r.starts_with('-')
        || r.contains("..")
        || r.chars()
            .any(|c| c.is_whitespace() || c.is_control() || "~^:?*[\\".contains(c))
    {
        return Err((field(".ref"), format!("`{r}` is not a branch or tag name")));
    }
    Ok(())
}

fn url_has_credentials(url: &str) -> bool {
    let Some((scheme, rest)) = url.split_once("://") else {
        return false;
    };
    let authority = rest.split('/').next().unwrap_or("");
    match authority.rsplit_once('@') {
        // `ssh://git@host/…` names a user, not a secret; a password follows a `:`.
        Some((userinfo, _)) if scheme.ends_with("ssh") => userinfo.contains(':'),
        Some(_) => true,
        None => false,
    }
}

/// The git configuration a build's script runs with: pinned URLs to their copies under
/// [`SERVED_DIR`], every other network URL to a path under [`UNPINNED_DIR`] that does not
/// exist. Git applies the longest matching `insteadOf`, so a pinned URL wins over its scheme.
pub fn build_gitconfig(sources: &BTreeMap<String, LockedSource>) -> String {
    let mut out =
        String::from("# Written by kci-build: git sources are pinned, nothing else is fetched.\n");
    for (name, s) in sources {
        out.push_str(&format!(
            "[url \"file://{SERVED_DIR}/{name}.git\"]\n\tinsteadOf = {}\n",
            s.url
        ));
    }
    for scheme in NETWORK_SCHEMES {
        let tag = scheme.trim_end_matches("://");
        out.push_str(&format!(
            "[url \"file://{UNPINNED_DIR}/{tag}/\"]\n\tinsteadOf = {scheme}\n"
        ));
    }
    // file:// URLs of the host are not in the rootfs either: the same rule.
    out.push_str(&format!(
        "[url \"file://{UNPINNED_DIR}/file/\"]\n\tinsteadOf = file:///\n"
    ));
    // Served copies are pinned and shallow: never a warning about it, nothing to update.
    out.push_str("[advice]\n\tdetachedHead = false\n");
    out
}

/// The URL a build tried to clone without a pin, from a line of its log (git's message
/// names the rewritten path).
pub fn unpinned_url_in(line: &str) -> Option<String> {
    let at = line.find(&format!("{UNPINNED_DIR}/"))?;
    let rest = &line[at + UNPINNED_DIR.len() + 1..];
    let (scheme, path) = rest.split_once('/')?;
    let path: String = path
        .chars()
        .take_while(|c| !c.is_whitespace() && *c != '\'' && *c != '"')
        .collect();
    let path = path.trim_end_matches(['.', ',', ':']);
    if path.is_empty() {
        return None;
    }
    Some(match scheme {
        "file" => format!("file:///{path}"),
        s => format!("{s}://{path}"),
    })
}

/// The network URLs a shell script names (`http`, `https`, `git`), each once, in order:
/// what a build of it would fetch, besides the Debian archive.
pub fn urls_in_script(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
        let mut rest = line;
        while let Some(at) = ["https://", "http://", "git://"]
            .iter()
            .filter_map(|s| rest.find(s))
            .min()
        {
            let url: String = rest[at..]
                .chars()
                .take_while(|c| !c.is_whitespace() && !"\"'`;|)<>{}".contains(*c))
                .collect();
            rest = &rest[at + url.len().max(1)..];
            if !url.contains("${") && !url.contains('$') && !out.contains(&url) {
                out.push(url);
            }
        }
    }
    out
}

/// A name to suggest for pinning `url`: its last path component without `.git`.
pub fn suggested_name(url: &str) -> String {
    let last = url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("source");
    let name: String = last
        .trim_end_matches(".git")
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
        "source".into()
    } else {
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scripts_urls_are_found_once_each_and_comments_skipped() {
        let script = "#!/bin/sh\n# see https://kernelci.org/docs\nSITE=https://github.com/kernelci/bootrr.git\n\
                      git clone $SITE\ncurl -L -o /tmp/a.tgz https://github.com/o/a/archive/main.tar.gz\n\
                      wget \"http://h.example/x\";git clone git://h.example/y.git\n\
                      git clone https://github.com/kernelci/bootrr.git\nX=${BASE}/z\n\
                      R=${REPO:-https://h.example/r.git}\n";
        assert_eq!(
            urls_in_script(script),
            [
                "https://github.com/kernelci/bootrr.git",
                "https://github.com/o/a/archive/main.tar.gz",
                "http://h.example/x",
                "git://h.example/y.git",
                "https://h.example/r.git",
            ]
        );
    }

    fn spec(url: &str, r: &str) -> GitSourceSpec {
        GitSourceSpec {
            url: url.into(),
            git_ref: r.into(),
        }
    }

    fn oid(c: char) -> ObjectId {
        c.to_string().repeat(40).parse().unwrap()
    }

    #[test]
    fn object_ids_are_40_lowercase_hex_digits() {
        assert!("a".repeat(40).parse::<ObjectId>().is_ok());
        assert!("A".repeat(40).parse::<ObjectId>().is_err());
        assert!("a".repeat(39).parse::<ObjectId>().is_err());
        assert!("g".repeat(40).parse::<ObjectId>().is_err());
    }

    #[test]
    fn sources_are_validated_naming_the_field() {
        assert!(validate(
            "bootrr",
            &spec("https://github.com/kernelci/bootrr.git", "main")
        )
        .is_ok());
        assert!(validate("x", &spec("file:///srv/git/x.git", "v1.0")).is_ok());
        for (name, s, field) in [
            ("../x", spec("https://h/x", "main"), "git-source.../x"),
            ("x", spec("/srv/git/x", "main"), "git-source.x.url"),
            ("x", spec("https://h/x y", "main"), "git-source.x.url"),
            (
                "x",
                spec("https://bot:hunter2@h/x", "main"),
                "git-source.x.url",
            ),
            ("x", spec("https://h/x", ""), "git-source.x.ref"),
            ("x", spec("https://h/x", "-b"), "git-source.x.ref"),
            ("x", spec("https://h/x", "a..b"), "git-source.x.ref"),
            ("x", spec("https://h/x", "a b"), "git-source.x.ref"),
        ] {
            let (f, msg) = validate(name, &s).unwrap_err();
            assert_eq!(f, field, "{s:?}: {msg}");
            assert!(!msg.contains("hunter2"), "{msg}");
        }
    }

    #[test]
    fn the_build_config_sends_pinned_urls_to_their_copies_and_the_rest_nowhere() {
        let sources = BTreeMap::from([(
            "bootrr".to_owned(),
            LockedSource {
                url: "https://github.com/kernelci/bootrr.git".into(),
                git_ref: "main".into(),
                commit: oid('a'),
                tree: oid('b'),
            },
        )]);
        let c = build_gitconfig(&sources);
        assert!(c.contains(
            "[url \"file:///kci-git/bootrr.git\"]\n\tinsteadOf = https://github.com/kernelci/bootrr.git\n"
        ));
        for scheme in ["https://", "http://", "git://", "ssh://", "file:///"] {
            assert!(
                c.contains(&format!("insteadOf = {scheme}\n")),
                "{scheme}: {c}"
            );
        }
    }

    #[test]
    fn an_unpinned_clone_is_named_from_git_s_message() {
        let line = "fatal: '/kci-git/unpinned/https/github.com/x/y.git' does not appear to be a git repository";
        assert_eq!(unpinned_url_in(line).unwrap(), "https://github.com/x/y.git");
        let line = "fatal: repository '/kci-git/unpinned/file/srv/git/y.git' does not exist";
        assert_eq!(unpinned_url_in(line).unwrap(), "file:///srv/git/y.git");
        assert_eq!(unpinned_url_in("Cloning into 'y'..."), None);
        assert_eq!(suggested_name("https://github.com/x/y.git"), "y");
        assert_eq!(suggested_name("https://h/a b/"), "a-b");
    }
}
