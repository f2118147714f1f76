//! An in-memory [`Engine`] for unit tests.
//!
//! Images: a build adds one layer, the build context's tar, on top of its `FROM` (`scratch`,
//! or `$PARENT` from the build args, which must have been loaded or built); `save` writes
//! a real `docker save` archive (legacy layout) and `load` reads the archive kci-build
//! writes, so the store's canonicalisation runs as it does against Docker. Builds of the
//! image names in `fail` fail as a `RUN` step does; those in `unreachable` find the daemon
//! gone. Containers: one "runs" its [`Script`] the moment it starts — its log is the
//! script's lines, it exits with the script's code, and its `/out` holds the script's files.
//! Every call is recorded, for assertions.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::{Digest as _, Sha256};

use super::{
    ArchiveStream, BuildRequest, ContainerSpec, ContainerState, DaemonError, Engine, LogStream,
};
use crate::error::EnvironmentError;

/// What a started container does.
#[derive(Debug, Clone, Default)]
pub struct Script {
    pub log: Vec<String>,
    pub exit: i64,
    /// `/out/<name>` → bytes.
    pub out: BTreeMap<String, Vec<u8>>,
}

#[derive(Debug, Clone)]
pub struct Container {
    pub spec: Option<ContainerSpec>,
    pub state: ContainerState,
    pub uploaded: usize,
    pub script: Script,
}

/// An image the fake holds: its config's bytes and its layers, uncompressed.
#[derive(Debug, Clone)]
struct FakeImage {
    config: Vec<u8>,
    layers: Vec<Vec<u8>>,
}

#[derive(Clone, Default)]
pub struct FakeEngine {
    pub containers: Arc<Mutex<BTreeMap<String, Container>>>,
    /// What every container started from now on does.
    pub script: Arc<Mutex<Script>>,
    /// `build`, `create`, `start`, `remove`… with the image tag or container name, in order.
    pub calls: Arc<Mutex<Vec<String>>>,
    images: Arc<Mutex<BTreeMap<String, FakeImage>>>,
    /// `repo:tag` → image id.
    tags: Arc<Mutex<BTreeMap<String, String>>>,
    /// Image names (a build tag's repository) whose build fails as a failing `RUN` does.
    pub fail: Arc<Mutex<BTreeSet<String>>>,
    /// Image names whose build finds the daemon gone.
    pub unreachable: Arc<Mutex<BTreeSet<String>>>,
    /// How long every build takes (builds that overlap are counted in `peak`).
    pub build_time: Arc<Mutex<Duration>>,
    running: Arc<AtomicUsize>,
    /// The most builds that ran at once.
    pub peak: Arc<AtomicUsize>,
    /// Image names in the order their builds started.
    pub builds: Arc<Mutex<Vec<String>>>,
    /// The engine is gone: pings and every build from now on fail as a stopped daemon's do.
    pub down: Arc<std::sync::atomic::AtomicBool>,
    /// Its CPU (`amd64` when empty).
    pub arch: Arc<Mutex<String>>,
}

impl FakeEngine {
    /// A container an earlier run left, in `state`, whose log so far is `script.log`.
    pub fn leave(&self, name: &str, state: ContainerState, script: Script) {
        let c = Container {
            spec: None,
            state,
            uploaded: 1,
            script,
        };
        self.containers.lock().unwrap().insert(name.to_owned(), c);
    }

    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }

    fn call(&self, what: &str, name: &str) {
        self.calls.lock().unwrap().push(format!("{what} {name}"));
    }

    fn missing(name: &str) -> DaemonError {
        DaemonError::BuildFailed(format!("no container {name}"))
    }

    /// The image ids the engine holds.
    pub fn image_ids(&self) -> Vec<String> {
        self.images.lock().unwrap().keys().cloned().collect()
    }

    fn resolve(&self, reference: &str) -> Option<String> {
        if self.images.lock().unwrap().contains_key(reference) {
            return Some(reference.to_owned());
        }
        self.tags.lock().unwrap().get(reference).cloned()
    }

    fn image(&self, reference: &str) -> Option<FakeImage> {
        let id = self.resolve(reference)?;
        self.images.lock().unwrap().get(&id).cloned()
    }

    fn add_image(&self, img: FakeImage) -> String {
        let id = format!("sha256:{}", hex::encode(Sha256::digest(&img.config)));
        self.images.lock().unwrap().insert(id.clone(), img);
        id
    }

    /// The image a build's `FROM` names, with its layers; `None` for `scratch`.
    fn base(&self, from: &str, req: &BuildRequest) -> Result<Option<FakeImage>, DaemonError> {
        let reference = match from {
            "scratch" => return Ok(None),
            "$PARENT" | "${PARENT}" => req.build_args.get("PARENT").cloned().unwrap_or_default(),
            other => other.to_owned(),
        };
        self.image(&reference).map(Some).ok_or_else(|| {
            DaemonError::BuildFailed(format!(
                "pull access denied for {reference}, repository does not exist"
            ))
        })
    }
}

/// `kci-build.local/gcc:build-1a2b` → `gcc`.
fn image_name(tag: &str) -> String {
    let repo = tag.rsplit_once(':').map(|(r, _)| r).unwrap_or(tag);
    repo.rsplit('/').next().unwrap_or(repo).to_owned()
}

fn sha256_id(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// The contents of the regular file `wanted` in an uncompressed tar.
fn file_in_tar(tar_bytes: &[u8], wanted: &str) -> Option<Vec<u8>> {
    let mut ar = tar::Archive::new(tar_bytes);
    for e in ar.entries().ok()? {
        let mut e = e.ok()?;
        let path = e
            .path()
            .ok()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_owned();
        if path == wanted {
            let mut data = Vec::new();
            e.read_to_end(&mut data).ok()?;
            return Some(data);
        }
    }
    None
}

/// Every regular file of a tar, by path.
fn files_of_tar(bytes: &[u8]) -> std::io::Result<BTreeMap<String, Vec<u8>>> {
    let mut files = BTreeMap::new();
    let mut ar = tar::Archive::new(bytes);
    for e in ar.entries()? {
        let mut e = e?;
        if e.header().entry_type().is_file() {
            let path = e
                .path()?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_owned();
            let mut data = Vec::new();
            e.read_to_end(&mut data)?;
            files.insert(path, data);
        }
    }
    Ok(files)
}

fn gunzip(bytes: &[u8]) -> std::io::Result<Vec<u8>> {
    if !bytes.starts_with(&[0x1f, 0x8b]) {
        return Ok(bytes.to_vec());
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

fn invalid(what: impl Into<String>) -> DaemonError {
    DaemonError::Io {
        context: "loading an image".into(),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, what.into()),
    }
}

impl Engine for FakeEngine {
    async fn arch(&self) -> Result<String, DaemonError> {
        let arch = self.arch.lock().unwrap().clone();
        Ok(if arch.is_empty() {
            "amd64".into()
        } else {
            arch
        })
    }

    async fn ping(&self) -> Result<(), DaemonError> {
        match self.down.load(Ordering::SeqCst) {
            true => Err(DaemonError::Unreachable(EnvironmentError {
                message: "cannot reach the Docker daemon: connection refused".into(),
                hint: "start it".into(),
            })),
            false => Ok(()),
        }
    }

    async fn has_image(&self, id: &str) -> Result<bool, DaemonError> {
        Ok(self.resolve(id).is_some())
    }

    async fn load(&self, archive: &Path) -> Result<(), DaemonError> {
        self.call("load", &archive.display().to_string());
        let bytes = std::fs::read(archive).map_err(|source| DaemonError::Io {
            context: format!("reading {}", archive.display()),
            source,
        })?;
        let files = files_of_tar(&bytes).map_err(|e| invalid(e.to_string()))?;
        let manifest: serde_json::Value = serde_json::from_slice(
            files
                .get("manifest.json")
                .ok_or_else(|| invalid("no manifest.json"))?,
        )
        .map_err(|e| invalid(format!("manifest.json: {e}")))?;
        let entry = &manifest[0];
        let get = |p: &serde_json::Value| -> Result<Vec<u8>, DaemonError> {
            let p = p.as_str().unwrap_or_default();
            files
                .get(p)
                .cloned()
                .ok_or_else(|| invalid(format!("the archive lacks {p}")))
        };
        let config = get(&entry["Config"])?;
        let layers = entry["Layers"]
            .as_array()
            .ok_or_else(|| invalid("manifest.json has no Layers"))?
            .iter()
            .map(|l| get(l).and_then(|b| gunzip(&b).map_err(|e| invalid(e.to_string()))))
            .collect::<Result<Vec<_>, _>>()?;
        let config_json: serde_json::Value =
            serde_json::from_slice(&config).map_err(|e| invalid(format!("config: {e}")))?;
        let diff_ids: Vec<String> = layers.iter().map(|l| sha256_id(l)).collect();
        if config_json["rootfs"]["diff_ids"] != serde_json::json!(diff_ids) {
            return Err(invalid("the layers do not match the config's diff_ids"));
        }
        let id = self.add_image(FakeImage { config, layers });
        for t in entry["RepoTags"].as_array().into_iter().flatten() {
            if let Some(t) = t.as_str() {
                self.tags.lock().unwrap().insert(t.to_owned(), id.clone());
            }
        }
        Ok(())
    }

    async fn build(
        &self,
        req: BuildRequest,
        mut log: impl FnMut(&str) + Send,
    ) -> Result<String, DaemonError> {
        let name = image_name(&req.tag);
        self.call("build", &req.tag);
        self.builds.lock().unwrap().push(name.clone());
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let time = *self.build_time.lock().unwrap();
        tokio::time::sleep(time).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        if self.unreachable.lock().unwrap().contains(&name) || self.down.load(Ordering::SeqCst) {
            return Err(DaemonError::Unreachable(EnvironmentError {
                message: "cannot reach the Docker daemon: connection refused".into(),
                hint: "start it".into(),
            }));
        }
        let dockerfile = file_in_tar(&req.context_tar, &req.dockerfile).ok_or_else(|| {
            DaemonError::BuildFailed(format!(
                "Cannot locate specified Dockerfile: {}",
                req.dockerfile
            ))
        })?;
        let text = String::from_utf8_lossy(&dockerfile).into_owned();
        let steps: Vec<&str> = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .collect();
        let mut from = "scratch";
        for (i, step) in steps.iter().enumerate() {
            log(&format!("Step {}/{} : {step}", i + 1, steps.len()));
            if let Some(f) = step.strip_prefix("FROM ") {
                from = f.trim();
            }
        }
        if self.fail.lock().unwrap().contains(&name) {
            return Err(DaemonError::BuildFailed(
                "The command '/bin/sh -c false' returned a non-zero code: 1".into(),
            ));
        }
        let base = self.base(from, &req)?;
        let (mut layers, mut history, runtime) = match &base {
            Some(b) => {
                let cfg: serde_json::Value = serde_json::from_slice(&b.config).expect("json");
                let history = cfg["history"].as_array().cloned().unwrap_or_default();
                (b.layers.clone(), history, cfg["config"].clone())
            }
            None => (
                Vec::new(),
                Vec::new(),
                serde_json::json!({"Env": ["PATH=/usr/bin:/bin"]}),
            ),
        };
        layers.push(req.context_tar.clone());
        history
            .push(serde_json::json!({ "created_by": format!("fake build: {}", steps.join("; ")) }));
        let config = serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "os": "linux",
            "config": runtime,
            "rootfs": {
                "type": "layers",
                "diff_ids": layers.iter().map(|l| sha256_id(l)).collect::<Vec<_>>(),
            },
            "history": history,
        }))
        .expect("json");
        let id = self.add_image(FakeImage { config, layers });
        self.tags
            .lock()
            .unwrap()
            .insert(req.tag.clone(), id.clone());
        Ok(id)
    }

    async fn save(&self, id: &str, dest: &Path) -> Result<(), DaemonError> {
        let img = self
            .image(id)
            .ok_or_else(|| DaemonError::BuildFailed(format!("No such image: {id}")))?;
        let hex = id.trim_start_matches("sha256:").to_owned();
        let mut b = tar::Builder::new(Vec::new());
        let mut add = |path: String, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, path, data).expect("in memory");
        };
        add(format!("{hex}.json"), &img.config);
        let mut paths = Vec::new();
        for (i, layer) in img.layers.iter().enumerate() {
            let p = format!("{i:04}/layer.tar");
            add(p.clone(), layer);
            paths.push(p);
        }
        let manifest = serde_json::json!([{
            "Config": format!("{hex}.json"),
            "RepoTags": [],
            "Layers": paths,
        }]);
        add(
            "manifest.json".into(),
            &serde_json::to_vec(&manifest).expect("json"),
        );
        let bytes = b.into_inner().expect("in memory");
        std::fs::write(dest, bytes).map_err(|source| DaemonError::Io {
            context: format!("writing {}", dest.display()),
            source,
        })
    }

    async fn remove_image(&self, id: &str) -> Result<(), DaemonError> {
        if self.tags.lock().unwrap().remove(id).is_none() {
            self.images.lock().unwrap().remove(id);
        }
        Ok(())
    }

    async fn tag(&self, id: &str, repo: &str, tag: &str) -> Result<(), DaemonError> {
        let id = self
            .resolve(id)
            .ok_or_else(|| DaemonError::BuildFailed(format!("No such image: {id}")))?;
        self.tags
            .lock()
            .unwrap()
            .insert(format!("{repo}:{tag}"), id);
        Ok(())
    }

    async fn state(&self, name: &str) -> Result<ContainerState, DaemonError> {
        Ok(self
            .containers
            .lock()
            .unwrap()
            .get(name)
            .map(|c| c.state.clone())
            .unwrap_or(ContainerState::Missing))
    }

    async fn create(&self, name: &str, spec: &ContainerSpec) -> Result<(), DaemonError> {
        self.call("create", name);
        let c = Container {
            spec: Some(spec.clone()),
            state: ContainerState::Created,
            uploaded: 0,
            script: Script::default(),
        };
        self.containers.lock().unwrap().insert(name.to_owned(), c);
        Ok(())
    }

    async fn upload(&self, name: &str, _tar: Vec<u8>) -> Result<(), DaemonError> {
        let mut all = self.containers.lock().unwrap();
        let c = all.get_mut(name).ok_or_else(|| Self::missing(name))?;
        c.uploaded += 1;
        Ok(())
    }

    async fn start(&self, name: &str) -> Result<(), DaemonError> {
        self.call("start", name);
        let script = self.script.lock().unwrap().clone();
        let mut all = self.containers.lock().unwrap();
        let c = all.get_mut(name).ok_or_else(|| Self::missing(name))?;
        c.state = ContainerState::Exited(script.exit);
        c.script = script;
        Ok(())
    }

    fn logs(&self, name: &str) -> LogStream {
        let mut all = self.containers.lock().unwrap();
        let lines = match all.get_mut(name) {
            Some(c) => {
                // A container left running finishes as its log ends.
                if c.state == ContainerState::Running {
                    c.state = ContainerState::Exited(c.script.exit);
                }
                c.script.log.clone()
            }
            None => Vec::new(),
        };
        futures_util::stream::iter(lines.into_iter().map(|l| Ok(Bytes::from(format!("{l}\n")))))
            .boxed()
    }

    async fn wait(&self, _name: &str) -> Result<(), DaemonError> {
        Ok(())
    }

    fn archive(&self, name: &str, path: &str) -> ArchiveStream {
        let file = path.trim_start_matches("/out/").to_owned();
        let bytes = self
            .containers
            .lock()
            .unwrap()
            .get(name)
            .and_then(|c| c.script.out.get(&file).cloned());
        let item = match bytes {
            Some(data) => {
                let mut b = tar::Builder::new(Vec::new());
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, &file, data.as_slice())
                    .expect("in memory");
                Ok(Bytes::from(b.into_inner().expect("in memory")))
            }
            None => Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404,
                message: format!("Could not find the file {path} in container {name}"),
            }),
        };
        futures_util::stream::iter([item]).boxed()
    }

    async fn remove_container(&self, name: &str) -> Result<(), DaemonError> {
        self.call("remove", name);
        self.containers.lock().unwrap().remove(name);
        Ok(())
    }

    async fn list(&self, label: &str) -> Result<Vec<(String, String)>, DaemonError> {
        let all = self.containers.lock().unwrap();
        Ok(all
            .iter()
            .filter_map(|(n, c)| {
                let v = c.spec.as_ref()?.labels.get(label)?.clone();
                Some((n.clone(), v))
            })
            .collect())
    }
}
