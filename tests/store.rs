//! `kci-build store verify [--repair]` on a store made by real builds (FROM-scratch busybox
//! and a child, through the real Docker daemon): sound, then one layer blob flipped on disk:
//! found with the key record that needs it, left alone without `--repair`, evicted with it,
//! and the next build remakes the same bytes.

mod common;

use common::*;

/// The blob path of the last layer of `target`'s key record.
fn top_layer(ws: &Workspace, target: &str) -> std::path::PathBuf {
    for e in std::fs::read_dir(ws.store().join("keys")).unwrap() {
        let rec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(e.unwrap().path()).unwrap()).unwrap();
        if rec["target"] == target {
            let digest = rec["layers"].as_array().unwrap().last().unwrap()["digest"]
                .as_str()
                .unwrap()
                .to_owned();
            return ws
                .store()
                .join("blobs/sha256")
                .join(digest.strip_prefix("sha256:").unwrap());
        }
    }
    panic!("no key record for {target}");
}

#[test]
fn a_flipped_layer_is_found_evicted_by_repair_and_rebuilt_to_the_same_bytes() {
    let _g = daemon_lock();
    let ws = Workspace::new();
    ws.add_busybox();
    ws.add_child("child", "child:hello", "busybox", "hello");
    let first = ws.kci(&["build", "--json"]).ok().json();

    let sound = ws.kci(&["store", "verify", "--json"]).ok();
    let report = sound.json();
    assert_eq!(report["problems"], serde_json::json!([]), "{report}");
    assert_eq!(report["key_records"], 2);
    assert!(report["blobs"].as_u64().unwrap() >= 6, "{report}");
    assert!(report["bytes"].as_u64().unwrap() > 1_000_000, "{report}");
    assert!(sound.stderr.contains("Verified"), "{}", sound.stderr);

    // One bit of the child's top layer flips on disk.
    let layer = top_layer(&ws, "child:hello");
    let mut bytes = std::fs::read(&layer).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&layer, &bytes).unwrap();

    let found = ws.kci(&["store", "verify", "--json"]);
    assert_eq!(found.code, 1, "{}", found.stderr);
    let problems = found.json()["problems"].as_array().unwrap().clone();
    let kinds: Vec<&str> = problems
        .iter()
        .map(|p| p["entry"]["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["blob", "key-record"], "{problems:?}");
    assert!(found.stderr.contains("hash to"), "{}", found.stderr);
    assert!(found.stderr.contains("child:hello"), "{}", found.stderr);
    assert!(found.stderr.contains("--repair"), "{}", found.stderr);
    assert!(layer.exists(), "verify without --repair changes nothing");

    let repaired = ws.kci(&["store", "verify", "--repair", "--json"]).ok();
    assert_eq!(
        repaired.json()["evicted"].as_array().unwrap().len(),
        2,
        "{}",
        repaired.stdout
    );
    assert!(!layer.exists());

    // The parent is still whole and cached; the child is made again, to the same bytes.
    let again = ws.kci(&["build", "--json"]).ok().json();
    assert_eq!(
        actions(&again),
        actions(&first)
            .into_keys()
            .map(|t| {
                let a = if t == "busybox" { "cached" } else { "built" };
                (t, a.to_owned())
            })
            .collect()
    );
    assert_eq!(manifests(&again), manifests(&first));
    let after = ws.kci(&["store", "verify", "--json"]).ok().json();
    assert_eq!(after["problems"], serde_json::json!([]), "{after}");
}
