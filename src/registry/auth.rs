//! Registry credentials and the two auth schemes registries use.
//!
//! Credentials come from `$KCI_REGISTRY_USER`/`$KCI_REGISTRY_PASSWORD`, else from Docker's
//! `config.json` (`auths`, `credHelpers`, `credsStore`, as `docker login` leaves them).
//! A challenge (`WWW-Authenticate`) picks Basic or the Bearer-token flow Docker Hub uses.
//! Secrets live in [`Secret`], whose `Debug` never shows them.

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};

use base64::Engine as _;

use crate::settings::RegistrySettings;
pub use crate::settings::Secret;

#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl Credentials {
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password.expose());
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Where credentials for `host` come from, in order: `KCI_REGISTRY_USER`/`_PASSWORD`,
/// Docker's config file (both resolved by [`crate::settings`]).
pub fn credentials_for(host: &str, settings: &RegistrySettings) -> Option<Credentials> {
    if let Some((username, password)) = &settings.credentials {
        return Some(Credentials {
            username: username.clone(),
            password: password.clone(),
        });
    }
    let dir = settings.docker_config.as_ref()?;
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    from_docker_config(&text, host, &run_helper)
}

#[derive(serde::Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default)]
    creds_store: Option<String>,
}

#[derive(serde::Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
}

/// Parses Docker's `config.json`; `helper(name, host)` runs `docker-credential-<name> get`.
pub fn from_docker_config(
    text: &str,
    host: &str,
    helper: &dyn Fn(&str, &str) -> Option<Credentials>,
) -> Option<Credentials> {
    let cfg: DockerConfig = serde_json::from_str(text).ok()?;
    if let Some(h) = cfg.cred_helpers.get(host) {
        return helper(h, host);
    }
    let entry = cfg.auths.iter().find(|(k, _)| {
        let k = k
            .trim_start_matches("https://")
            .trim_start_matches("http://");
        k == host || k.split('/').next() == Some(host)
    });
    if let Some(auth) = entry.and_then(|(_, e)| e.auth.as_deref()) {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .ok()?;
        let raw = String::from_utf8(raw).ok()?;
        let (u, p) = raw.split_once(':')?;
        return Some(Credentials {
            username: u.to_owned(),
            password: Secret::new(p),
        });
    }
    cfg.creds_store.as_deref().and_then(|s| helper(s, host))
}

fn run_helper(name: &str, host: &str) -> Option<Credentials> {
    let mut child = Command::new(format!("docker-credential-{name}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    child.stdin.take()?.write_all(host.as_bytes()).ok()?;
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        return None;
    }
    #[derive(serde::Deserialize)]
    struct HelperAnswer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let a: HelperAnswer = serde_json::from_slice(&out.stdout).ok()?;
    Some(Credentials {
        username: a.username,
        password: Secret::new(a.secret),
    })
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

pub fn parse_challenge(header: &str) -> Option<Challenge> {
    let (scheme, rest) = header.trim().split_once(' ').unwrap_or((header.trim(), ""));
    let mut params = BTreeMap::new();
    // key="value" pairs; values may contain commas inside quotes (scopes do).
    let mut rest = rest.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let after = after.trim_start();
        let (value, tail) = if let Some(q) = after.strip_prefix('"') {
            let end = q.find('"')?;
            (&q[..end], &q[end + 1..])
        } else {
            let end = after.find(',').unwrap_or(after.len());
            (&after[..end], &after[end..])
        };
        params.insert(key.trim().to_ascii_lowercase(), value.to_owned());
        rest = tail.trim_start_matches([',', ' ']);
    }
    match scheme.to_ascii_lowercase().as_str() {
        "basic" => Some(Challenge::Basic),
        "bearer" => Some(Challenge::Bearer {
            realm: params.remove("realm")?,
            service: params.remove("service"),
            scope: params.remove("scope"),
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_hub_style_challenges() {
        let c = parse_challenge(r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:kernelci/gcc-12:pull,push""#).unwrap();
        assert_eq!(
            c,
            Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:kernelci/gcc-12:pull,push".into())
            }
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn reads_docker_config_auths_and_helpers() {
        let enc = base64::engine::general_purpose::STANDARD.encode("kci:s3cret");
        let text = format!(
            r#"{{"auths":{{"https://reg.example:5000":{{"auth":"{enc}"}}}},"credHelpers":{{"helped.example":"pass"}}}}"#
        );
        let none = |_: &str, _: &str| None;
        let c = from_docker_config(&text, "reg.example:5000", &none).unwrap();
        assert_eq!(
            (c.username.as_str(), c.password.expose()),
            ("kci", "s3cret")
        );
        assert!(
            !format!("{c:?}").contains("s3cret"),
            "Debug must hide the secret"
        );
        let helper = |name: &str, host: &str| {
            Some(Credentials {
                username: format!("{name}@{host}"),
                password: Secret::new("x"),
            })
        };
        assert_eq!(
            from_docker_config(&text, "helped.example", &helper)
                .unwrap()
                .username,
            "pass@helped.example"
        );
        assert!(from_docker_config(&text, "other.example", &none).is_none());
    }
}
