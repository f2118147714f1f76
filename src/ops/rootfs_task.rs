//! `kci-build rootfs-task` (hidden): what a Swarm task of `rootfs --swarm` runs on its node,
//! inside the task image ([`crate::rootfs::task`]). It fetches its inputs from the registry
//! by digest, runs the builder's script as a local build does, packs `/out` into the five
//! canonical files and the manifest right there (the coordinator does no compression), and
//! pushes them as the rootfs artifact under the candidate tag the coordinator named. The
//! registry credentials come from the Swarm secret file, never from the environment.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context as _};

use crate::core::names::Digest;
use crate::engine::swarm::SECRET_FILE;
use crate::registry::Registry;
use crate::rootfs::pack::{self, PackSettings};
use crate::rootfs::plan::RootfsJob;
use crate::settings::{RegistrySettings, Secret};

#[derive(Debug, Clone)]
pub struct TaskOptions {
    pub registry: String,
    /// The rootfs artifact's repository and the candidate tag to push it under.
    pub repo: String,
    pub tag: String,
    /// The inputs tar (`/kci/…`): a blob of `inputs_repo`.
    pub inputs_repo: String,
    pub inputs: Digest,
    pub config: String,
    pub arch: String,
    pub key: Digest,
    pub source_date_epoch: u64,
    pub xz_preset: u32,
    pub xz_memory: u64,
}

/// The variable the coordinator puts the build's proxy in: the task gives it to the build
/// script as `http_proxy`; the task's own requests (the registry) go direct.
pub const BUILD_PROXY_VAR: &str = "KCI_BUILD_PROXY";

/// Where the raw files are, and the packed ones go (the job's volume, not the tmpfs).
const OUT: &str = "/out";

pub async fn run(opts: &TaskOptions) -> anyhow::Result<()> {
    let reg = Registry::new(&opts.registry, &registry_settings()?)?;
    phase("inputs");
    let tar = fetch_inputs(&reg, opts).await?;
    tar::Archive::new(&tar[..])
        .unpack("/")
        .context("unpacking the inputs into /kci")?;
    build()?;
    phase("packing");
    let job = RootfsJob {
        config: opts.config.clone(),
        arch: opts.arch.clone(),
        key: opts.key.clone(),
        facts: Default::default(),
        source_date_epoch: opts.source_date_epoch,
        xz_preset: opts.xz_preset,
        memory: None,
    };
    let debs = served_debs(&job).await?;
    let out = Path::new(OUT).join("kci-packed");
    if out.exists() {
        std::fs::remove_dir_all(&out)?;
    }
    std::fs::create_dir(&out).with_context(|| format!("creating {}", out.display()))?;
    let packing = Arc::new(
        PackSettings {
            xz_memory: opts.xz_memory,
            ..PackSettings::default()
        }
        .resolve(),
    );
    let manifest = pack::pack_dir(&job, Path::new(OUT), &out, &packing, debs).await?;
    phase("pushing");
    crate::rootfs::oci::push_to(&reg, &opts.repo, &opts.tag, &job, &out)
        .await
        .with_context(|| format!("pushing to {}/{}:{}", reg.host(), opts.repo, opts.tag))?;
    for (name, a) in &manifest.artifacts {
        println!("kci-file: {name} {} {}", a.sha256, a.size);
    }
    if let Some(secs) = cpu_seconds() {
        // The build's CPU on its node, script and packing (bench/swarm.sh reads it).
        println!("kci-task-cpu: {secs:.1}");
    }
    phase("done");
    Ok(())
}

/// CPU seconds of this process and the children it waited for (the build script and what
/// it ran), from `/proc/self/stat` (clock ticks of 1/100 s, Linux's `USER_HZ`).
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let fields: Vec<&str> = stat.rsplit_once(") ")?.1.split_whitespace().collect();
    // utime, stime, cutime, cstime: fields 14–17 of proc(5), 12–15 after the name.
    let ticks: u64 = fields
        .get(11..15)?
        .iter()
        .map(|f| f.parse::<u64>().ok())
        .sum::<Option<u64>>()?;
    Some(ticks as f64 / 100.0)
}

fn phase(p: &str) {
    println!("kci-phase: {p}");
    let _ = std::io::stdout().flush();
}

/// `user:password` from the Swarm secret, when the job has one.
fn registry_settings() -> anyhow::Result<RegistrySettings> {
    let credentials = match std::fs::read_to_string(SECRET_FILE) {
        Ok(text) => {
            let (user, password) = text
                .trim_end_matches('\n')
                .split_once(':')
                .with_context(|| format!("{SECRET_FILE} is not `user:password`"))?;
            Some((user.to_owned(), Secret::new(password)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {SECRET_FILE}")),
    };
    Ok(RegistrySettings {
        credentials,
        ..RegistrySettings::default()
    })
}

async fn fetch_inputs(reg: &Registry, opts: &TaskOptions) -> anyhow::Result<Vec<u8>> {
    let mut w = crate::layer::HashWriter::new(Vec::new());
    reg.get_blob(&opts.inputs_repo, &opts.inputs, &mut w)
        .await
        .with_context(|| format!("fetching the inputs {}", opts.inputs))?;
    let (got, _) = w.digest();
    if got != opts.inputs {
        bail!("the inputs {} came as {got}", opts.inputs);
    }
    Ok(w.inner)
}

/// Runs `/kci/build.sh` as the local builder container does; its output is the task's log.
/// `/work` is a tmpfs as there, mounted here with exec, dev and suid (the chroot runs from
/// it; a Swarm tmpfs mount is noexec).
fn build() -> anyhow::Result<()> {
    std::fs::create_dir_all("/work")?;
    let mounted = std::process::Command::new("mount")
        .args([
            "-t",
            "tmpfs",
            "-o",
            "rw,exec,dev,suid,mode=0755",
            "kci-work",
            "/work",
        ])
        .status()
        .context("running mount")?;
    if !mounted.success() {
        bail!("cannot mount a tmpfs on /work (the task needs CAP_SYS_ADMIN)");
    }
    let mut sh = std::process::Command::new("sh");
    sh.arg("/kci/build.sh");
    if let Ok(proxy) = std::env::var(BUILD_PROXY_VAR) {
        sh.env("http_proxy", proxy).env_remove(BUILD_PROXY_VAR);
    }
    let status = sh.status().context("running /kci/build.sh")?;
    if !status.success() {
        bail!(
            "the builder exited with {}",
            status.code().map_or("a signal".into(), |c| c.to_string())
        );
    }
    Ok(())
}

/// The `.deb`s the run's proxy served this build (the build names itself by its key as the
/// proxy user, so `http_proxy` says where to ask).
async fn served_debs(job: &RootfsJob) -> anyhow::Result<BTreeMap<String, Digest>> {
    let Ok(proxy) = std::env::var(BUILD_PROXY_VAR) else {
        return Ok(BTreeMap::new());
    };
    let url = reqwest::Url::parse(&proxy).context(BUILD_PROXY_VAR)?;
    let addr = format!(
        "{}:{}",
        url.host_str().unwrap_or("127.0.0.1"),
        url.port().unwrap_or(80)
    );
    let list = format!(
        "http://{addr}{}{}{}",
        crate::aptcache::CONTROL_PREFIX,
        crate::aptproxy::SERVED_PATH,
        job.key.hex()
    );
    let resp = reqwest::Client::builder()
        .no_proxy()
        .build()?
        .get(&list)
        .send()
        .await
        .with_context(|| format!("asking the apt proxy at {addr} what it served"))?;
    if !resp.status().is_success() {
        bail!("the apt proxy at {addr} answered {}", resp.status());
    }
    Ok(crate::aptcache::parse_served(&resp.text().await?))
}
