//! Debian bases made by kci-build itself with mmdebstrap: nothing is pulled, and the base is
//! a function of suite, variant, packages, mirror and `SOURCE_DATE_EPOCH`.
//!
//! The mirror is never written into the repository: `mirror = "auto"` resolves it from
//! `$KCI_DEBIAN_MIRROR` or the machine's apt sources.

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::core::names::Platform;
use crate::core::recipe::Bootstrap;
use crate::error::EnvironmentError;

/// The Debian mirror to use for `mirror = "auto"`.
pub fn resolve_mirror() -> Option<String> {
    if let Ok(m) = std::env::var("KCI_DEBIAN_MIRROR") {
        if !m.trim().is_empty() {
            return Some(m.trim().trim_end_matches('/').to_owned());
        }
    }
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

/// Debian's architecture name for an OCI platform.
pub fn debian_arch(p: &Platform) -> Option<&'static str> {
    Some(match (p.architecture.as_str(), p.variant.as_deref()) {
        ("amd64", _) => "amd64",
        ("arm64", _) => "arm64",
        ("arm", Some("v5")) => "armel",
        ("arm", _) => "armhf",
        ("386", _) => "i386",
        ("riscv64", _) => "riscv64",
        ("ppc64le", _) => "ppc64el",
        ("s390x", _) => "s390x",
        ("mips64le", _) => "mips64el",
        _ => return None,
    })
}

#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error(transparent)]
    Environment(#[from] EnvironmentError),
    #[error("mmdebstrap failed ({status}); last lines:\n{tail}")]
    Failed { status: String, tail: String },
}

impl BootstrapError {
    /// mmdebstrap missing is the machine's; mmdebstrap failing is the recipe's build step.
    pub fn fault(&self) -> crate::error::Fault {
        match self {
            BootstrapError::Environment(_) => crate::error::Fault::Environment,
            BootstrapError::Failed { .. } => crate::error::Fault::BadInput,
        }
    }
}

/// Runs mmdebstrap into `out` (a tarball), streaming its output lines to `log`.
pub async fn mmdebstrap(
    b: &Bootstrap,
    platform: &Platform,
    mirror: &str,
    sde: u64,
    out: &Path,
    mut log: impl FnMut(&str),
) -> Result<(), BootstrapError> {
    let arch = debian_arch(platform).ok_or_else(|| EnvironmentError {
        message: format!("no Debian architecture for platform {platform}"),
        hint: "use a platform Debian supports".into(),
    })?;
    let mut cmd = tokio::process::Command::new("mmdebstrap");
    cmd.arg(format!("--variant={}", b.variant))
        .arg(format!("--architectures={arch}"))
        .arg(format!("--components={}", b.components.join(",")))
        .arg("--format=tar")
        .arg("--aptopt=Acquire::Retries \"3\"");
    if !b.packages.is_empty() {
        cmd.arg(format!("--include={}", b.packages.join(",")));
    }
    cmd.arg(&b.suite).arg(out).arg(mirror);
    cmd.env("SOURCE_DATE_EPOCH", sde.to_string())
        .env("LC_ALL", "C.UTF-8")
        .env_remove("TMPDIR");
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    tracing::info!(?cmd, "running mmdebstrap");
    let mut child = cmd.spawn().map_err(|e| EnvironmentError {
        message: format!("cannot run mmdebstrap: {e}"),
        hint:
            "install it (`apt-get install mmdebstrap`); kci-build bootstraps Debian bases with it"
                .into(),
    })?;
    let stderr = child.stderr.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = BufReader::new(stderr).lines();
    let mut out_lines = BufReader::new(stdout).lines();
    let mut tail: std::collections::VecDeque<String> = std::collections::VecDeque::new();
    let mut push = |l: String, log: &mut dyn FnMut(&str)| {
        log(&l);
        if tail.len() == 20 {
            tail.pop_front();
        }
        tail.push_back(l);
    };
    let (mut err_done, mut out_done) = (false, false);
    while !(err_done && out_done) {
        tokio::select! {
            l = lines.next_line(), if !err_done => match l { Ok(Some(l)) => push(l, &mut log), _ => err_done = true },
            l = out_lines.next_line(), if !out_done => match l { Ok(Some(l)) => push(l, &mut log), _ => out_done = true },
        }
    }
    let status = child.wait().await.map_err(|e| EnvironmentError {
        message: format!("waiting for mmdebstrap: {e}"),
        hint: String::new(),
    })?;
    if !status.success() {
        return Err(BootstrapError::Failed {
            status: status.to_string(),
            tail: tail.into_iter().collect::<Vec<_>>().join("\n"),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn debian_arches() {
        let p = |s: &str| s.parse::<Platform>().unwrap();
        assert_eq!(debian_arch(&p("linux/arm/v7")), Some("armhf"));
        assert_eq!(debian_arch(&p("linux/arm/v5")), Some("armel"));
        assert_eq!(debian_arch(&p("linux/arm64/v8")), Some("arm64"));
    }
}
