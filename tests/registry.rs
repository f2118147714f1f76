//! Pushing to a real registry (Debian's docker-registry on a loopback port): what kci-build
//! pushes runs with the stock Docker client; re-pushes upload nothing; a target pushed from
//! one machine is fetched, not rebuilt, on another; Basic, config.json and token auth;
//! faults injected by a proxy do not stop a push or leave a wrong tag.

mod common;

use common::registry::{
    docker_config_with, Auth, Fault, FaultAction, FaultProxy, Registry, TokenServer,
};
use common::*;

fn docker(args: &[&str]) -> std::process::Output {
    std::process::Command::new("docker")
        .args(args)
        .output()
        .unwrap()
}

/// `docker pull` then `docker run` with the stock client; returns stdout.
fn pull_and_run(image: &str, cmd: &[&str]) -> String {
    let _ = docker(&["image", "rm", "-f", image]);
    let pull = docker(&["pull", image]);
    assert!(
        pull.status.success(),
        "{}",
        String::from_utf8_lossy(&pull.stderr)
    );
    let mut args = vec!["run", "--rm", "--network", "none", image];
    args.extend_from_slice(cmd);
    let run = docker(&args);
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let _ = docker(&["image", "rm", "-f", image]);
    String::from_utf8_lossy(&run.stdout).into_owned()
}

/// busybox + a child carrying `payload_mib` MiB of incompressible data.
fn workspace(payload_mib: usize) -> Workspace {
    let ws = Workspace::new();
    ws.add_busybox();
    ws.add_child("child", "child:hello", "busybox", "hello");
    if payload_mib > 0 {
        let mut data = vec![0u8; payload_mib << 20];
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for b in data.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        std::fs::write(ws.path().join("images/child/payload.bin"), data).unwrap();
        ws.write(
            "images/child/Dockerfile",
            "ARG PARENT\nFROM ${PARENT}\nARG GREETING\nCOPY data.txt /etc/kci/data.txt\nCOPY payload.bin /payload.bin\nRUN echo \"$GREETING\" > /etc/kci/greeting\n",
        );
    }
    ws
}

#[test]
fn pushed_images_pull_and_run_with_docker_and_repush_uploads_nothing() {
    let _g = daemon_lock();
    let reg = Registry::start(Auth::None);
    let ws = workspace(0);
    ws.kci(&["build"]).ok();
    let first = ws
        .kci(&["push", "--registry", &reg.addr(), "--json"])
        .ok()
        .json();
    assert!(first["blobs_uploaded"].as_u64().unwrap() >= 3, "{first}");
    assert!(
        first["blobs_mounted"].as_u64().unwrap() >= 2,
        "busybox's layers reach kernelci/child by mount: {first}"
    );
    let image = format!("{}/kernelci/child:hello", reg.addr());
    assert_eq!(
        pull_and_run(&image, &["cat", "/etc/kci/greeting"]),
        "hello\n"
    );
    // The immutable key tag points at the same manifest as the human tag.
    let key_ref = format!(
        "{}/kernelci/child:{}",
        reg.addr(),
        first["targets"][1]["tags"][0].as_str().unwrap()
    );
    assert_eq!(
        pull_and_run(&key_ref, &["cat", "/etc/kci/greeting"]),
        "hello\n"
    );

    let again = ws
        .kci(&["push", "--registry", &reg.addr(), "--json"])
        .ok()
        .json();
    assert_eq!(again["blobs_uploaded"], 0, "{again}");
    assert_eq!(again["bytes_uploaded"], 0);
    assert_eq!(again["images_present"], 2, "{again}");
}

#[test]
fn a_target_pushed_elsewhere_is_fetched_not_rebuilt() {
    let _g = daemon_lock();
    let reg = Registry::start(Auth::None);
    let ws = workspace(0);
    let built = ws
        .kci(&["build", "--push", "--registry", &reg.addr(), "--json"])
        .ok()
        .json();
    assert_eq!(built["push"]["targets"].as_array().unwrap().len(), 2);
    let lock = std::fs::read_to_string(ws.lockfile()).unwrap();

    let other = workspace(0); // another machine: empty store, same recipes
    let since = next_second();
    let fetched = other
        .kci(&["build", "--registry", &reg.addr(), "--json"])
        .ok()
        .json();
    assert_eq!(
        actions(&fetched).values().collect::<Vec<_>>(),
        ["pulled", "pulled"]
    );
    assert_eq!(manifests(&fetched), manifests(&built));
    assert_eq!(containers_created_since(since), 0, "nothing was built");
    assert_eq!(
        std::fs::read_to_string(other.lockfile()).unwrap(),
        lock,
        "the same lockfile, packages included"
    );
}

#[test]
fn htpasswd_auth_from_env_or_docker_config_and_secrets_stay_secret() {
    let _g = daemon_lock();
    let password = "Sup3r-s3cret-pw";
    let reg = Registry::start(Auth::Htpasswd {
        user: "kci".into(),
        password: password.into(),
    });
    let ws = workspace(0);
    ws.kci(&["build"]).ok();

    let denied = ws.kci_env(
        &["push", "--registry", &reg.addr()],
        &[("DOCKER_CONFIG", "/nonexistent")],
    );
    assert_ne!(denied.code, 0);
    assert!(
        denied.stderr.contains("requires credentials"),
        "{}",
        denied.stderr
    );

    let ok = ws
        .kci_env(
            &["-vv", "push", "--registry", &reg.addr(), "--json"],
            &[
                ("KCI_REGISTRY_USER", "kci"),
                ("KCI_REGISTRY_PASSWORD", password),
                ("DOCKER_CONFIG", "/nonexistent"),
            ],
        )
        .ok();
    assert!(ok.json()["blobs_uploaded"].as_u64().unwrap() >= 4);
    for text in [
        &ok.stdout,
        &ok.stderr,
        &std::fs::read_to_string(ws.lockfile()).unwrap(),
    ] {
        assert!(!text.contains(password), "the password leaked:\n{text}");
    }

    let (_cfg, cfg_dir) = docker_config_with(&reg.addr(), "kci", password);
    let via_config = ws
        .kci_env(
            &["push", "--registry", &reg.addr(), "--json"],
            &[("DOCKER_CONFIG", cfg_dir.to_str().unwrap())],
        )
        .ok()
        .json();
    assert_eq!(via_config["blobs_uploaded"], 0, "already there");

    // A credential helper, as `docker login` with a credsStore/credHelpers leaves it.
    let helper_dir = tempfile::tempdir().unwrap();
    let marker = helper_dir.path().join("asked");
    let script = helper_dir.path().join("docker-credential-kcitest");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread host\necho \"$host\" > {}\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"kci\",\"Secret\":\"{password}\"}}' \"$host\"\n",
            marker.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    std::fs::write(
        helper_dir.path().join("config.json"),
        format!(r#"{{"credHelpers":{{"{}":"kcitest"}}}}"#, reg.addr()),
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        helper_dir.path().display(),
        std::env::var("PATH").unwrap()
    );
    ws.kci_env(
        &["push", "--registry", &reg.addr()],
        &[
            ("DOCKER_CONFIG", helper_dir.path().to_str().unwrap()),
            ("PATH", &path),
        ],
    )
    .ok();
    assert_eq!(
        std::fs::read_to_string(&marker).unwrap().trim(),
        reg.addr(),
        "the helper was asked for this registry"
    );
    let wrong = ws.kci_env(
        &["push", "--registry", &reg.addr()],
        &[
            ("KCI_REGISTRY_USER", "kci"),
            ("KCI_REGISTRY_PASSWORD", "wrong"),
        ],
    );
    assert_ne!(wrong.code, 0);
    assert!(wrong.stderr.contains("401"), "{}", wrong.stderr);
    assert!(!wrong.stderr.contains("wrong"), "{}", wrong.stderr);
}

#[test]
fn bearer_token_auth_with_repository_scopes() {
    let _g = daemon_lock();
    let tokens = TokenServer::start("kci", "tok-pass");
    let reg = Registry::start(Auth::Token {
        realm: tokens.realm.clone(),
        service: tokens.service.clone(),
        issuer: tokens.issuer.clone(),
        cert_pem: tokens.cert_pem.clone(),
    });
    let ws = workspace(0);
    ws.kci(&["build"]).ok();
    let r = ws.kci_env(
        &["push", "--registry", &reg.addr(), "--json"],
        &[
            ("KCI_REGISTRY_USER", "kci"),
            ("KCI_REGISTRY_PASSWORD", "tok-pass"),
        ],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, reg.log());
    assert!(r.json()["blobs_uploaded"].as_u64().unwrap() >= 4);
    let scopes = tokens.scopes.lock().unwrap().clone();
    assert!(
        scopes.contains(&"repository:kernelci/busybox:pull,push".to_owned()),
        "{scopes:?}"
    );
    assert!(
        scopes.contains(&"repository:kernelci/child:pull,push".to_owned()),
        "{scopes:?}"
    );
    let no_creds = ws.kci_env(
        &["push", "--registry", &reg.addr()],
        &[("DOCKER_CONFIG", "/nonexistent")],
    );
    assert_ne!(no_creds.code, 0);
    assert!(
        no_creds.stderr.contains("requires credentials"),
        "{}",
        no_creds.stderr
    );
}

#[test]
fn injected_faults_do_not_stop_a_push_or_leave_a_wrong_tag() {
    let _g = daemon_lock();
    let reg = Registry::start(Auth::None);
    let proxy = FaultProxy::start(
        reg.port,
        vec![
            Fault {
                method: "HEAD",
                path_part: "/blobs/",
                nth: 1,
                action: FaultAction::Status(429, Some(1)),
            },
            Fault {
                method: "POST",
                path_part: "/blobs/uploads/",
                nth: 2,
                action: FaultAction::Status(500, None),
            },
            // A chunk the registry never sees: the session survives and the upload resumes.
            Fault {
                method: "PATCH",
                path_part: "/blobs/uploads/",
                nth: 2,
                action: FaultAction::Status(503, None),
            },
            // A chunk cut off mid-body.
            Fault {
                method: "PATCH",
                path_part: "/blobs/uploads/",
                nth: 4,
                action: FaultAction::ResetAfter(300_000),
            },
            Fault {
                method: "PUT",
                path_part: "/manifests/",
                nth: 1,
                action: FaultAction::Status(502, None),
            },
            Fault {
                method: "PUT",
                path_part: "/manifests/hello",
                nth: 1,
                action: FaultAction::ResetAfter(10),
            },
        ],
    );
    let ws = workspace(6);
    ws.kci(&["build"]).ok();
    let r = ws.kci_env(
        &[
            "-v",
            "push",
            "--registry",
            &proxy.addr(),
            "--jobs",
            "1",
            "--json",
        ],
        &[("KCI_REGISTRY_CHUNK_SIZE", "1048576")],
    );
    assert_eq!(r.code, 0, "{}\n{}", r.stderr, reg.log());
    let report = r.json();
    let fired = proxy.fired.lock().unwrap().clone();
    assert_eq!(fired.len(), 6, "every fault fired: {fired:?}");
    assert!(report["retries"].as_u64().unwrap() >= 3, "{report}");
    assert!(
        report["resumed_uploads"].as_u64().unwrap() >= 1,
        "the 503'd chunk resumed at the registry's offset: {report}"
    );

    // Straight from the registry: both tags name the manifest kci-build stored.
    let lock = std::fs::read_to_string(ws.lockfile()).unwrap();
    let manifest = lock
        .split("[target.\"child:hello\"]")
        .nth(1)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("output.manifest = \""))
        .unwrap()
        .trim_end_matches('"')
        .to_owned();
    for tag in [
        "hello".to_owned(),
        report["targets"][1]["tags"][0].as_str().unwrap().to_owned(),
    ] {
        let out = std::process::Command::new("curl")
            .args([
                "-sfI",
                "-H",
                "Accept: application/vnd.oci.image.manifest.v1+json",
                &format!("http://{}/v2/kernelci/child/manifests/{tag}", reg.addr()),
            ])
            .output()
            .unwrap();
        let head = String::from_utf8_lossy(&out.stdout).to_ascii_lowercase();
        assert!(
            head.contains(&format!("docker-content-digest: {manifest}")),
            "tag {tag}:\n{head}"
        );
    }
    let image = format!("{}/kernelci/child:hello", reg.addr());
    let size = pull_and_run(&image, &["sh", "-c", "wc -c < /payload.bin"]);
    assert_eq!(size.trim(), (6 << 20).to_string());
}

#[test]
fn multi_platform_index_pushes_and_pulls_per_platform() {
    let _g = daemon_lock();
    let reg = Registry::start(Auth::None);
    let ws = Workspace::new();
    std::fs::create_dir_all(ws.path().join("images/multi-amd64")).unwrap();
    std::fs::copy("/bin/busybox", ws.path().join("images/multi-amd64/busybox")).unwrap();
    ws.write("images/multi-amd64/Dockerfile", "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nCMD [\"/bin/sh\"]\n");
    ws.write(
        "images/multi-amd64/image.toml",
        "[[target]]\nname = \"multi:amd64\"\nplatform = \"linux/amd64\"\n",
    );
    // No arm64 binaries here: the arm64 member carries data only, so nothing pretends to run.
    ws.write(
        "images/multi-arm64/Dockerfile",
        "FROM scratch\nCOPY arch.txt /arch.txt\n",
    );
    ws.write("images/multi-arm64/arch.txt", "arm64\n");
    ws.write(
        "images/multi-arm64/image.toml",
        "[[target]]\nname = \"multi:arm64\"\nplatform = \"linux/arm64/v8\"\n",
    );
    ws.write(
        "images/multi/image.toml",
        "[[target]]\nname = \"multi\"\nindex = [\"multi:arm64\", \"multi:amd64\"]\n",
    );

    let built = ws
        .kci(&["build", "--push", "--registry", &reg.addr(), "--json"])
        .ok()
        .json();
    assert_eq!(
        actions(&built).into_iter().collect::<Vec<_>>(),
        [
            ("multi".into(), "built".into()),
            ("multi:amd64".into(), "built".into()),
            ("multi:arm64".into(), "built".into())
        ]
    );
    let again = ws.kci(&["build", "--json"]).ok().json();
    assert!(actions(&again).values().all(|a| a == "cached"), "{again}");
    let lock = std::fs::read_to_string(ws.lockfile()).unwrap();
    let entry = lock
        .split("[target.\"multi\"]")
        .nth(1)
        .unwrap()
        .split("\n[")
        .next()
        .unwrap();
    assert!(
        entry.contains("output.members = [") && !entry.contains("output.config"),
        "{entry}"
    );
    let m = manifests(&built);
    assert!(
        entry.contains(&m["multi:amd64"]) && entry.contains(&m["multi:arm64"]),
        "{entry}"
    );

    // The index in the registry: one manifest per platform, arm64 with variant v8.
    let out = std::process::Command::new("curl")
        .args([
            "-sf",
            "-H",
            "Accept: application/vnd.oci.image.index.v1+json",
            &format!("http://{}/v2/kernelci/multi/manifests/latest", reg.addr()),
        ])
        .output()
        .unwrap();
    let index: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    let platforms: Vec<(String, String, Option<String>)> = index["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["digest"].as_str().unwrap().to_owned(),
                d["platform"]["architecture"].as_str().unwrap().to_owned(),
                d["platform"]["variant"].as_str().map(str::to_owned),
            )
        })
        .collect();
    assert_eq!(
        platforms,
        [
            (m["multi:amd64"].clone(), "amd64".into(), None),
            (m["multi:arm64"].clone(), "arm64".into(), Some("v8".into()))
        ]
    );

    // The stock client picks the host's platform from the index and runs it.
    let image = format!("{}/kernelci/multi:latest", reg.addr());
    assert_eq!(
        pull_and_run(&image, &["echo", "amd64 member"]),
        "amd64 member\n"
    );
    // And the arm64 member on request.
    let pull = docker(&["pull", "--platform", "linux/arm64", &image]);
    assert!(
        pull.status.success(),
        "{}",
        String::from_utf8_lossy(&pull.stderr)
    );
    let inspect = docker(&[
        "image",
        "inspect",
        "-f",
        "{{.Architecture}}/{{.Variant}}",
        &image,
    ]);
    assert_eq!(String::from_utf8_lossy(&inspect.stdout).trim(), "arm64/v8");
    let _ = docker(&["image", "rm", "-f", &image]);
}

#[test]
fn check_on_a_clean_machine_fetches_locked_layers_from_the_registry() {
    let _g = daemon_lock();
    let reg = Registry::start(Auth::None);
    let ws = Workspace::new();
    ws.add_busybox();
    ws.write(
        "images/stamp/Dockerfile",
        "ARG PARENT\nFROM ${PARENT}\nRUN mkdir -p /etc && date +%s%N > /etc/stamp\n",
    );
    ws.write(
        "images/stamp/image.toml",
        "[[target]]\nname = \"stamp\"\nparent = \"busybox\"\n",
    );
    ws.kci(&["build", "--push", "--registry", &reg.addr()]).ok();
    // A clean machine: the lockfile and recipes, no store.
    std::fs::remove_dir_all(ws.store()).unwrap();
    let r = ws.kci(&["check", "stamp", "--registry", &reg.addr()]);
    assert_eq!(r.code, 1, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("busybox: reproduced"), "{}", r.stdout);
    assert!(
        r.stdout.contains("/etc/stamp: content sha256 "),
        "the locked layer was fetched and compared:\n{}",
        r.stdout
    );
}
