//! The site file on disk: found (`--site FILE`, else `./production.toml`), parsed and
//! validated by [`crate::core::site`], its relative paths taken from the file's directory,
//! and its secrets read — only when a step needs them, from the variable or file the site
//! names, as [`Secret`]s.

use std::path::{Path, PathBuf};

use crate::core::site::{SecretRef, Site, SiteError};
use crate::error::Fault;
use crate::settings::{Env, Secret};

/// The file `prod` reads when none is given.
pub const DEFAULT_FILE: &str = "production.toml";

#[derive(Debug, thiserror::Error)]
pub enum SiteLoadError {
    #[error("no site file: {path} does not exist")]
    Missing { path: PathBuf },
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] SiteError),
    /// A secret the site names is not there (the message names where it was looked for).
    #[error("{what}: {where_}")]
    Secret { what: String, where_: String },
}

impl SiteLoadError {
    pub fn fault(&self) -> Fault {
        match self {
            SiteLoadError::Io { .. } => Fault::Environment,
            _ => Fault::BadInput,
        }
    }

    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SiteLoadError::Missing { .. } => Some(
                "copy production.example.toml to production.toml and adjust it, or pass --site FILE",
            ),
            _ => None,
        }
    }
}

/// A site file, loaded.
#[derive(Debug, Clone)]
pub struct LoadedSite {
    pub site: Site,
    pub path: PathBuf,
    /// The directory relative paths of the file start from.
    pub dir: PathBuf,
    env: Env,
}

impl LoadedSite {
    pub fn load(path: Option<&Path>, env: &Env) -> Result<LoadedSite, SiteLoadError> {
        let path = path
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_FILE));
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SiteLoadError::Missing { path })
            }
            Err(source) => return Err(SiteLoadError::Io { path, source }),
        };
        let site = Site::parse(&path.display().to_string(), &text)?;
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map(Path::to_owned)
            .unwrap_or_else(|| PathBuf::from("."));
        let dir = std::path::absolute(&dir).unwrap_or(dir);
        Ok(LoadedSite {
            site,
            path,
            dir,
            env: env.clone(),
        })
    }

    /// A path of the site file, made absolute (`~/` is the home directory).
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if let Ok(rest) = p.strip_prefix("~") {
            if let Some(home) = dirs::home_dir() {
                return home.join(rest);
            }
        }
        self.dir.join(p)
    }

    /// Journals and working clones.
    pub fn state_dir(&self) -> PathBuf {
        self.resolve(&self.site.state)
    }

    pub fn jenkins_secret(&self) -> Result<Secret, SiteLoadError> {
        self.secret("the Jenkins token", &self.site.jenkins.secret)
    }

    pub fn backend_secret(&self) -> Result<Secret, SiteLoadError> {
        self.secret("the backend API token", &self.site.backend_api.secret)
    }

    /// Credentials for HTTPS pushes, when the site names a git user.
    pub fn git_credentials(&self) -> Result<Option<(String, Secret)>, SiteLoadError> {
        match &self.site.git {
            Some(g) => Ok(Some((
                g.user.clone(),
                self.secret("the git token", &g.secret)?,
            ))),
            None => Ok(None),
        }
    }

    fn secret(&self, what: &str, at: &SecretRef) -> Result<Secret, SiteLoadError> {
        let missing = |where_: String| SiteLoadError::Secret {
            what: what.to_owned(),
            where_,
        };
        if let Some(var) = &at.env {
            return self
                .env
                .secret(var)
                .ok_or_else(|| missing(format!("set the environment variable {var}")));
        }
        let file = at.file.as_deref().expect("validated: env or file");
        let file = self.resolve(file);
        let text = std::fs::read_to_string(&file)
            .map_err(|e| missing(format!("cannot read {}: {e}", file.display())))?;
        text.lines()
            .next()
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(Secret::new)
            .ok_or_else(|| missing(format!("{} is empty", file.display())))
    }
}
