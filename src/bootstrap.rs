//! Debian bases made by kci-build itself with mmdebstrap: nothing is pulled, and the base is
//! a function of suite, variant, packages, mirror and `SOURCE_DATE_EPOCH`.
//!
//! The mirror is never written into the repository: `mirror = "auto"` takes the one
//! [`crate::settings`] resolved (`$KCI_DEBIAN_MIRROR` or the machine's apt sources).

use std::path::Path;
use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, BufReader};

use crate::core::names::Platform;
use crate::core::recipe::Bootstrap;
use crate::error::EnvironmentError;

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

/// One mmdebstrap run: the mirror written into the image's sources, the apt cache's proxy
/// every download goes through (`http_proxy`, so it is not written anywhere), the clock and
/// the tarball to write.
pub struct Run<'a> {
    pub mirror: &'a str,
    pub proxy: &'a str,
    pub sde: u64,
    pub out: &'a Path,
    /// The recipe's keyring, resolved in its directory.
    pub keyring: Option<&'a Path>,
}

/// Runs mmdebstrap into `run.out` (a tarball), streaming its output lines to `log`.
pub async fn mmdebstrap(
    b: &Bootstrap,
    platform: &Platform,
    run: &Run<'_>,
    mut log: impl FnMut(&str),
) -> Result<(), BootstrapError> {
    let Run {
        mirror,
        proxy,
        sde,
        out,
        ..
    } = *run;
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
    if let Some(k) = run.keyring {
        cmd.arg(format!("--keyring={}", k.display()));
    }
    cmd.arg(&b.suite).arg(out).arg(mirror);
    cmd.env("SOURCE_DATE_EPOCH", sde.to_string())
        .env("LC_ALL", "C.UTF-8")
        .env("http_proxy", proxy)
        .env_remove("no_proxy")
        .env_remove("NO_PROXY")
        .env_remove("TMPDIR");
    crate::settings::scrub_secrets(cmd.as_std_mut());
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
    fn debian_arches() {
        let p = |s: &str| s.parse::<Platform>().unwrap();
        assert_eq!(debian_arch(&p("linux/arm/v7")), Some("armhf"));
        assert_eq!(debian_arch(&p("linux/arm/v5")), Some("armel"));
        assert_eq!(debian_arch(&p("linux/arm64/v8")), Some("arm64"));
    }
}
