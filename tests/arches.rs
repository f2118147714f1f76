//! Every Debian arch a rootfs recipe can name runs here: for each foreign one kci-build
//! registers (or finds) a binfmt_misc handler with the F flag, and a real Debian binary of
//! that arch — `busybox` of `busybox-static`, unpacked by mmdebstrap from the machine's
//! mirror — then runs on this amd64 machine through qemu-user-static.

use std::path::Path;
use std::process::Command;

use kci_build::core::rootfs_recipe::DEBIAN_ARCHES;
use kci_build::rootfs::binfmt;
use kci_build::settings::{Env, Settings};

/// What `uname -m` says under emulation (i386 runs natively on amd64: no emulation).
fn machine(arch: &str) -> Option<&'static str> {
    Some(match arch {
        "arm64" => "aarch64",
        "riscv64" => "riscv64",
        "ppc64el" => "ppc64le",
        "s390x" => "s390x",
        "mips64el" => "mips64",
        "mipsel" => "mips",
        "armel" | "armhf" => "armv7l",
        _ => return None,
    })
}

/// The suite with `arch` in it: riscv64 is a release arch from trixie on, mipsel and
/// mips64el were released for the last time with bookworm.
fn suite(arch: &str) -> &'static str {
    if arch == "riscv64" {
        "trixie"
    } else {
        "bookworm"
    }
}

/// Unpacks `busybox-static` of `arch` into `dir` with mmdebstrap's extract variant.
fn unpack_busybox(mirror: &str, arch: &str, dir: &Path) -> Result<(), String> {
    let out = Command::new("mmdebstrap")
        .args([
            "--quiet",
            "--variant=extract",
            "--include=busybox-static",
            &format!("--architectures={arch}"),
            suite(arch),
        ])
        .arg(dir)
        .arg(mirror)
        .output()
        .map_err(|e| format!("running mmdebstrap: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn a_binary_of_every_debian_arch_runs_here() {
    let settings = Settings::resolve(None, &Env::from_process()).unwrap();
    let mirror = settings
        .debian_mirror
        .expect("a Debian mirror (KCI_DEBIAN_MIRROR or the machine's apt sources)");
    let tmp = tempfile::tempdir().unwrap();
    let foreign: Vec<&str> = DEBIAN_ARCHES
        .iter()
        .copied()
        .filter(|a| *a != binfmt::native_arch())
        .collect();
    assert!(foreign.len() >= 9, "{foreign:?}");

    // The downloads are the slow part: all at once.
    let unpacked: Vec<(&str, Result<(), String>)> = std::thread::scope(|s| {
        let jobs: Vec<_> = foreign
            .iter()
            .map(|a| {
                let dir = tmp.path().join(a);
                let mirror = mirror.as_str();
                (*a, s.spawn(move || unpack_busybox(mirror, a, &dir)))
            })
            .collect();
        jobs.into_iter()
            .map(|(a, j)| (a, j.join().unwrap()))
            .collect()
    });

    let mut failed = Vec::new();
    for (arch, unpacked) in unpacked {
        if let Err(e) = unpacked {
            failed.push(format!("{arch}: mmdebstrap: {e}"));
            continue;
        }
        if let Err(e) = binfmt::ensure(arch) {
            failed.push(format!("{arch}: {}: {}", e.message, e.hint));
            continue;
        }
        // trixie ships it in /usr/bin (merged /usr; extract makes no /bin link).
        let root = tmp.path().join(arch);
        let busybox = ["bin/busybox", "usr/bin/busybox"]
            .iter()
            .map(|p| root.join(p))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{arch}: no busybox in {}", root.display()));
        let run = |args: &[&str]| {
            Command::new(&busybox)
                .args(args)
                .output()
                .map(|o| {
                    (
                        o.status.success(),
                        String::from_utf8_lossy(&o.stdout).trim().to_owned(),
                    )
                })
                .map_err(|e| e.to_string())
        };
        match run(&["echo", "kci", arch]) {
            Ok((true, out)) if out == format!("kci {arch}") => {}
            other => {
                failed.push(format!("{arch}: busybox echo: {other:?}"));
                continue;
            }
        }
        if let Some(m) = machine(arch) {
            match run(&["uname", "-m"]) {
                Ok((true, out)) if out == m => {}
                other => failed.push(format!("{arch}: uname -m: {other:?}, wanted {m}")),
            }
        }
    }
    assert!(failed.is_empty(), "{}", failed.join("\n"));
}
