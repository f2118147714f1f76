//! Docker contexts: the ecosystem's names for engines (`docker context create NAME --docker
//! host=…`), so `build --engines default,arm-box` names engines as the docker CLI does.
//!
//! A context lives in Docker's config directory as
//! `contexts/meta/<sha256 of its name>/meta.json`, whose `Endpoints.docker.Host` is the
//! engine's address; `default` is the engine `DOCKER_HOST` names (the local socket without
//! it). An address (`unix://…`, `tcp://…`) is taken as it is. Read here without the docker
//! CLI; contexts that carry TLS material are refused with a clear error (kci-build connects
//! over plain sockets; reach a remote engine through an SSH tunnel of its socket).

use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::settings::EngineSettings;

/// One engine of a pool: the name the operator gave and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedEngine {
    pub name: String,
    pub settings: EngineSettings,
}

/// A context that cannot be used: the operator's input.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("no Docker context `{name}` in {dir}{}", known_list(known))]
    Unknown {
        name: String,
        dir: PathBuf,
        known: Vec<String>,
    },
    #[error("{file}: {why}")]
    Unreadable { file: PathBuf, why: String },
    #[error(
        "Docker context `{name}` uses TLS ({dir}); kci-build connects over plain sockets: \
         forward the engine's socket (`ssh -L /tmp/NAME.sock:/var/run/docker.sock HOST`) and \
         name that socket instead"
    )]
    Tls { name: String, dir: PathBuf },
    #[error("engine `{0}` is named twice in --engines")]
    Duplicate(String),
}

fn known_list(known: &[String]) -> String {
    match known.is_empty() {
        true => {
            " (there are none: `docker context create NAME --docker host=unix:///PATH` makes one)"
                .into()
        }
        false => format!(" (known: default, {})", known.join(", ")),
    }
}

#[derive(Deserialize)]
struct Meta {
    #[serde(rename = "Name")]
    name: String,
    #[serde(rename = "Endpoints", default)]
    endpoints: Endpoints,
}

#[derive(Deserialize, Default)]
struct Endpoints {
    docker: Option<DockerEndpoint>,
}

#[derive(Deserialize)]
struct DockerEndpoint {
    #[serde(rename = "Host")]
    host: Option<String>,
}

/// The directory Docker keeps context `name`'s metadata in (and, under `tls/`, its keys).
fn context_dir(config: &Path, kind: &str, name: &str) -> PathBuf {
    let hash = hex::encode(Sha256::digest(name.as_bytes()));
    config.join("contexts").join(kind).join(hash)
}

/// Resolves each of `names` — `default`, an address, or a context of Docker's config
/// directory `config` — to how kci-build reaches that engine. `default` is `default_engine`.
pub fn resolve(
    names: &[String],
    config: Option<&Path>,
    default_engine: &EngineSettings,
) -> Result<Vec<NamedEngine>, ContextError> {
    let mut out: Vec<NamedEngine> = Vec::new();
    for name in names {
        if out.iter().any(|e| &e.name == name) {
            return Err(ContextError::Duplicate(name.clone()));
        }
        let settings = if name == "default" {
            default_engine.clone()
        } else if name.contains("://") {
            EngineSettings {
                host: Some(name.clone()),
                ..default_engine.clone()
            }
        } else {
            let config = config.unwrap_or(Path::new("~/.docker"));
            EngineSettings {
                host: Some(context_host(config, name)?),
                ..default_engine.clone()
            }
        };
        out.push(NamedEngine {
            name: name.clone(),
            settings,
        });
    }
    Ok(out)
}

/// The docker endpoint of context `name` in `config`.
fn context_host(config: &Path, name: &str) -> Result<String, ContextError> {
    let dir = context_dir(config, "meta", name);
    let file = dir.join("meta.json");
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ContextError::Unknown {
                name: name.into(),
                dir: config.join("contexts/meta"),
                known: known(config),
            })
        }
        Err(e) => {
            return Err(ContextError::Unreadable {
                file,
                why: e.to_string(),
            })
        }
    };
    let meta: Meta = serde_json::from_str(&text).map_err(|e| ContextError::Unreadable {
        file: file.clone(),
        why: e.to_string(),
    })?;
    let tls = context_dir(config, "tls", name).join("docker");
    if tls.exists() {
        return Err(ContextError::Tls {
            name: meta.name,
            dir: tls,
        });
    }
    meta.endpoints
        .docker
        .and_then(|d| d.host)
        .filter(|h| !h.is_empty())
        .ok_or_else(|| ContextError::Unreadable {
            file,
            why: "field Endpoints.docker.Host: missing (a context without a docker endpoint)"
                .into(),
        })
}

/// The names of the contexts in `config`, sorted.
fn known(config: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(config.join("contexts/meta"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_to_string(e.path().join("meta.json")).ok())
        .filter_map(|t| serde_json::from_str::<Meta>(&t).ok())
        .map(|m| m.name)
        .collect();
    names.sort();
    names
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes a context as `docker context create NAME --docker host=HOST` does.
    fn write_context(config: &Path, name: &str, host: &str) {
        let dir = context_dir(config, "meta", name);
        std::fs::create_dir_all(&dir).unwrap();
        let meta = serde_json::json!({
            "Name": name,
            "Metadata": {},
            "Endpoints": {"docker": {"Host": host, "SkipTLSVerify": false}}
        });
        std::fs::write(dir.join("meta.json"), meta.to_string()).unwrap();
    }

    fn local() -> EngineSettings {
        EngineSettings {
            host: Some("unix:///run/local.sock".into()),
            request_timeout: None,
        }
    }

    #[test]
    fn default_addresses_and_contexts() {
        let dir = tempfile::tempdir().unwrap();
        write_context(dir.path(), "arm-box", "unix:///tmp/arm.sock");
        let names: Vec<String> = ["default", "arm-box", "tcp://10.0.0.2:2375"]
            .map(String::from)
            .into();
        let got = resolve(&names, Some(dir.path()), &local()).unwrap();
        let hosts: Vec<_> = got
            .iter()
            .map(|e| e.settings.host.clone().unwrap())
            .collect();
        assert_eq!(
            hosts,
            [
                "unix:///run/local.sock",
                "unix:///tmp/arm.sock",
                "tcp://10.0.0.2:2375"
            ]
        );
        assert_eq!(got[1].name, "arm-box");
    }

    #[test]
    fn the_hash_is_dockers() {
        // `docker context create` stores "default"-like names under sha256(name): the
        // digest of "arm-box" as sha256sum prints it.
        let dir = context_dir(Path::new("/c"), "meta", "arm-box");
        assert_eq!(
            dir.file_name().unwrap().to_str().unwrap(),
            hex::encode(Sha256::digest(b"arm-box"))
        );
        assert!(dir.starts_with("/c/contexts/meta"));
    }

    #[test]
    fn unknown_tls_and_duplicates_are_named() {
        let dir = tempfile::tempdir().unwrap();
        write_context(dir.path(), "b", "unix:///b.sock");
        write_context(dir.path(), "a", "unix:///a.sock");
        let err = resolve(&["nope".into()], Some(dir.path()), &local()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("no Docker context `nope`") && text.contains("known: default, a, b"),
            "{text}"
        );

        std::fs::create_dir_all(context_dir(dir.path(), "tls", "a").join("docker")).unwrap();
        let err = resolve(&["a".into()], Some(dir.path()), &local()).unwrap_err();
        assert!(matches!(err, ContextError::Tls { .. }), "{err}");

        let err = resolve(&["b".into(), "b".into()], Some(dir.path()), &local()).unwrap_err();
        assert!(err.to_string().contains("named twice"), "{err}");

        let bad = context_dir(dir.path(), "meta", "broken");
        std::fs::create_dir_all(&bad).unwrap();
        std::fs::write(bad.join("meta.json"), r#"{"Name":"broken","Endpoints":{}}"#).unwrap();
        let err = resolve(&["broken".into()], Some(dir.path()), &local()).unwrap_err();
        assert!(err.to_string().contains("Endpoints.docker.Host"), "{err}");
    }
}
