//! Pinned downloads through the real binary, the real daemon, Debian's real curl and wget
//! inside the build, and a real HTTP server standing in for the download host. The script
//! fetches an `https://` tarball with curl and an `http://` file with wget, unmodified: the
//! first build pins both (fetched through `KCI_DOWNLOAD_FROM` from the stand-in), the build's
//! proxy serves them from the store (https through kci-build's own authority), and with the
//! stand-in gone the same key gives the same bytes. A changed upstream changes nothing until
//! `lock --refresh`, whose rebuild has the new bytes and whose diff names the sha256s; a
//! script fetching what no recipe pins fails naming each URL, though it exits 0; `--locked`
//! refuses a download the lockfile lacks.

mod common;
#[path = "common/http_files.rs"]
mod http_files;

use common::*;
use http_files::FileServer;

const IMAGES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/images");
const HOST: &str = "downloads.example.org";

/// A gzip'd tarball holding `etc/kci-download` = `text`.
fn tarball(text: &str) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("suite-main/etc")).unwrap();
    std::fs::write(dir.path().join("suite-main/etc/kci-download"), text).unwrap();
    let out = dir.path().join("t.tar.gz");
    sh(&format!(
        "tar --sort=name --mtime=@0 --owner=0 --group=0 -C {} -c suite-main | gzip -n > {}",
        dir.path().display(),
        out.display()
    ));
    std::fs::read(out).unwrap()
}

#[test]
fn pinned_downloads_are_served_from_the_store_and_move_only_on_refresh() {
    let _g = daemon_lock();
    let files = tempfile::tempdir().unwrap();
    let server = FileServer::serve(files.path());
    server.put("suite/archive/main.tar.gz", &tarball("one\n"));
    server.put("plain.txt", b"plain one\n");
    let from = format!(
        "https://{HOST}/={url}/ http://{HOST}/={url}/",
        url = server.url
    );
    let env = [("KCI_DOWNLOAD_FROM", from.as_str())];
    let tar_url = format!("https://{HOST}/suite/archive/main.tar.gz");
    let plain_url = format!("http://{HOST}/plain.txt");
    // KernelCI's way: install the fetchers, fetch, unpack, purge the fetchers again.
    let script = format!(
        "#!/bin/sh\nset -e\napt-get install -y --no-install-recommends curl wget\n\
         curl -fsSL -o /tmp/suite.tar.gz {tar_url}\n\
         tar -xzf /tmp/suite.tar.gz -C / --strip-components=1\n\
         wget -nv -O /etc/kci-plain {plain_url}\nrm /tmp/suite.tar.gz\n\
         apt-get purge -y --auto-remove curl wget\n"
    );
    // Fetches another recipe's pin and what no recipe pins, on a pinned host and on another,
    // and exits 0 anyway.
    let loose = format!(
        "#!/bin/sh\napt-get install -y --no-install-recommends curl\n\
         curl -fsS -o /tmp/a {tar_url}\n\
         curl -fsS -o /tmp/b https://{HOST}/other.tar.gz\n\
         curl -fsS -o /tmp/c https://elsewhere.example.net/c.tar.gz\nexit 0\n"
    );
    let ws = Workspace::new();
    ws.add_tiny_rootfs();
    ws.write("recipes/scripts/dl.sh", &script);
    ws.write("recipes/scripts/loose.sh", &loose);
    let tiny = std::fs::read_to_string(ws.path().join("recipes/tiny.toml")).unwrap();
    let tiny = tiny.replace(
        "arch-list = [\"amd64\", \"arm64\"]",
        "arch-list = [\"amd64\"]",
    );
    let sources = format!(
        "\n[url-source.suite]\nurl = \"{tar_url}\"\n\n[url-source.plain]\nurl = \"{plain_url}\"\n"
    );
    ws.write(
        "recipes/tiny.toml",
        &format!(
            "{}{sources}",
            tiny.replace("scripts/tiny.sh", "scripts/dl.sh")
        ),
    );
    let rootfs = |config: &str| {
        ws.kci_env(
            &[
                "--images", IMAGES, "rootfs", config, "--arch", "amd64", "--json",
            ],
            &env,
        )
    };

    // `--locked` refuses a download the lockfile does not pin, before building anything.
    let locked = ws.kci_env(&["--images", IMAGES, "rootfs", "tiny", "--locked"], &env);
    assert_eq!(locked.code, 1, "{}", locked.stderr);
    assert!(
        locked.stderr.contains("no pin for download `plain`") && locked.stderr.contains(&plain_url),
        "{}",
        locked.stderr
    );

    // 1. The first build pins both files and the script gets them, unmodified.
    let first = rootfs("tiny").ok();
    assert!(
        first.stderr.contains("Pinned") && first.stderr.contains("download suite"),
        "{}",
        first.stderr
    );
    let first = first.json();
    assert_eq!(ramdisk_file(&ws, &first, "etc/kci-download"), "one");
    assert_eq!(ramdisk_file(&ws, &first, "etc/kci-plain"), "plain one");
    assert_eq!(
        ramdisk_file(&ws, &first, "kci-git/ca.pem"),
        "",
        "the authority's certificate left with the script"
    );
    let lock_path = ws.path().join("lockfiles/rootfs.lock");
    let lock1 = std::fs::read_to_string(&lock_path).unwrap();
    let sum_one = sh(&format!(
        "sha256sum {}/suite/archive/main.tar.gz | cut -d' ' -f1",
        files.path().display()
    ));
    assert!(
        lock1.contains(&format!(
            "[url-source.\"suite\"]\nurl = \"{tar_url}\"\nsha256 = \"sha256:{}\"\n",
            sum_one.trim()
        )) && lock1.contains("input.\"url-source.plain\""),
        "{lock1}"
    );
    assert!(
        !lock1.contains(&server.url),
        "where the bytes were fetched from is not a pin:\n{lock1}"
    );
    assert_eq!(
        server.requests().len(),
        2,
        "each file fetched once, when pinned; the build got them from the store: {:?}",
        server.requests()
    );

    // 2. The download host is gone: the same key, built again, gives the same bytes.
    drop(server);
    let key = first["builds"][0]["key"].as_str().unwrap().to_owned();
    std::fs::remove_dir_all(
        ws.store()
            .join("rootfs")
            .join(key.strip_prefix("sha256:").unwrap()),
    )
    .unwrap();
    let again = rootfs("tiny").ok().json();
    assert_eq!(again["builds"][0]["action"], "built", "{again}");
    assert_eq!(again["builds"][0]["key"], first["builds"][0]["key"]);
    assert_eq!(rootfs_sums(&again), rootfs_sums(&first));

    // 3. The upstream serves other bytes: nothing changes until a refresh.
    let server = FileServer::serve(files.path());
    let from = format!(
        "https://{HOST}/={url}/ http://{HOST}/={url}/",
        url = server.url
    );
    let env = [("KCI_DOWNLOAD_FROM", from.as_str())];
    server.put("suite/archive/main.tar.gz", &tarball("two\n"));
    let same = ws
        .kci_env(
            &[
                "--images", IMAGES, "rootfs", "tiny", "--arch", "amd64", "--json",
            ],
            &env,
        )
        .ok()
        .json();
    assert_eq!(same["builds"][0]["key"], first["builds"][0]["key"]);
    assert_eq!(std::fs::read_to_string(&lock_path).unwrap(), lock1);

    // 4. `lock --refresh` pins today's bytes; the rebuild has them; the diff names both.
    let refreshed = ws
        .kci_env(&["--images", IMAGES, "lock", "--refresh", "--json"], &env)
        .ok()
        .json();
    let moved: Vec<(&str, bool)> = refreshed["downloads"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["name"].as_str().unwrap(), d["old"] != d["new"]))
        .collect();
    assert_eq!(moved, [("plain", false), ("suite", true)], "{refreshed}");
    let rebuilt = ws
        .kci_env(
            &[
                "--images", IMAGES, "rootfs", "tiny", "--arch", "amd64", "--json",
            ],
            &env,
        )
        .ok()
        .json();
    assert_ne!(rebuilt["builds"][0]["key"], first["builds"][0]["key"]);
    assert_eq!(ramdisk_file(&ws, &rebuilt, "etc/kci-download"), "two");
    let old_lock = ws.path().join("rootfs.lock.old");
    std::fs::write(&old_lock, &lock1).unwrap();
    let diff = ws.kci(&[
        "diff",
        old_lock.to_str().unwrap(),
        lock_path.to_str().unwrap(),
    ]);
    let sum_two = sh(&format!(
        "sha256sum {}/suite/archive/main.tar.gz | cut -d' ' -f1",
        files.path().display()
    ));
    assert!(
        diff.stdout.contains(&format!(
            "source suite: sha256:{} -> sha256:{}",
            sum_one.trim(),
            sum_two.trim()
        )),
        "{}\n{}",
        diff.stdout,
        diff.stderr
    );

    // 5. A script fetching what no recipe pins fails, naming each URL and how to pin it.
    //    Its recipe pins nothing: the URL `tiny` pins, which the run's proxy serves, is named
    //    too (this build's key does not cover it).
    ws.write(
        "recipes/loose.toml",
        &std::fs::read_to_string(ws.path().join("recipes/tiny.toml"))
            .unwrap()
            .replace("name = \"tiny\"", "name = \"loose\"")
            .replace("scripts/dl.sh", "scripts/loose.sh")
            .replace(&sources, ""),
    );
    let r = ws.kci_env(
        &[
            "--images", IMAGES, "rootfs", "loose", "--arch", "amd64", "--json",
        ],
        &env,
    );
    assert_eq!(r.code, 1, "{}", r.stderr);
    for want in [
        "the build finished, but its script fetched what no pin covers",
        &format!("the script downloaded {tar_url}, which no download of the recipe pins"),
        &format!("the script downloaded https://{HOST}/other.tar.gz"),
        "the script downloaded from https://elsewhere.example.net, where no download",
        "[url-source.other]",
        "recipes/loose.toml",
    ] {
        assert!(
            r.stderr.contains(want),
            "missing `{want}` in:\n{}",
            r.stderr
        );
    }
}
