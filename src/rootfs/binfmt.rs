//! Foreign-arch rootfs builds run their maintainer scripts through qemu-user-static, which
//! the kernel starts via binfmt_misc. Inside a container only handlers registered with the
//! `F` (fix binary) flag work: the kernel opens the interpreter at registration time, so it
//! need not exist in the container or the chroot. kci-build checks for one and registers
//! its own when it is missing, or says why it cannot.

use std::path::Path;

use crate::error::EnvironmentError;

const BINFMT: &str = "/proc/sys/fs/binfmt_misc";

/// QEMU's name for a Debian arch, with the ELF magic and mask binfmt_misc matches on.
struct Handler {
    qemu: &'static str,
    magic: &'static str,
    mask: &'static str,
}

fn handler(debian_arch: &str) -> Option<Handler> {
    // From Debian's qemu-user-static (/usr/share/binfmts/qemu-*).
    let h = |qemu, magic, mask| Some(Handler { qemu, magic, mask });
    match debian_arch {
        "arm64" => h(
            "aarch64",
            r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00",
            r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
        ),
        "armel" | "armhf" => h(
            "arm",
            r"\x7f\x45\x4c\x46\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00",
            r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
        ),
        "riscv64" => h(
            "riscv64",
            r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xf3\x00",
            r"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
        ),
        "i386" => h(
            "i386",
            r"\x7f\x45\x4c\x46\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x03\x00",
            r"\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
        ),
        "ppc64el" => h(
            "ppc64le",
            r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x15\x00",
            r"\xff\xff\xff\xff\xff\xff\xff\xfc\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\x00",
        ),
        "s390x" => h(
            "s390x",
            r"\x7f\x45\x4c\x46\x02\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x16",
            r"\xff\xff\xff\xff\xff\xff\xff\xfc\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
        ),
        "mips64el" => h(
            "mips64el",
            r"\x7f\x45\x4c\x46\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x08\x00",
            r"\xff\xff\xff\xff\xff\xff\xff\x00\xfe\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
        ),
        // Debian's mipsel is o32: the last byte tells it from n32 (EF_MIPS_ABI2 clear).
        "mipsel" => h(
            "mipsel",
            r"\x7f\x45\x4c\x46\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x08\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
            r"\xff\xff\xff\xff\xff\xff\xff\x00\xfe\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x20",
        ),
        _ => None,
    }
}

/// The arch the host runs natively (no emulation needed).
pub fn native_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// Whether an enabled binfmt entry for `qemu` has the F flag.
pub fn entry_has_fix_binary(text: &str) -> bool {
    let enabled = text.lines().next() == Some("enabled");
    let flags = text
        .lines()
        .find_map(|l| l.strip_prefix("flags: "))
        .unwrap_or("");
    enabled && flags.contains('F')
}

/// Makes sure binaries of `arch` can run in containers; registers `qemu-<name>` (flags
/// `F`, the name mmdebstrap looks for) when no handler exists, and says what to do when
/// one exists without the F flag.
pub fn ensure(arch: &str) -> Result<(), EnvironmentError> {
    if arch == native_arch() || (native_arch() == "amd64" && arch == "i386") {
        return Ok(());
    }
    let Some(h) = handler(arch) else {
        return Err(EnvironmentError {
            message: format!("kci-build does not know how to emulate {arch}"),
            hint: "build this arch on a native machine".into(),
        });
    };
    let root = Path::new(BINFMT);
    if !root.join("status").exists() {
        return Err(EnvironmentError {
            message: format!("binfmt_misc is not mounted at {BINFMT}: {arch} binaries cannot run here"),
            hint: "as root: `mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc` and install qemu-user-static".into(),
        });
    }
    let name = format!("qemu-{}", h.qemu);
    if let Ok(text) = std::fs::read_to_string(root.join(&name)) {
        if entry_has_fix_binary(&text) {
            return Ok(());
        }
        return Err(EnvironmentError {
            message: format!("the binfmt_misc handler {name} is disabled or lacks the F flag, so {arch} binaries cannot run in containers"),
            hint: format!("as root: `echo -1 > {BINFMT}/{name}` and rerun (kci-build then registers it with F), or install Debian's qemu-user-static, which registers it with F"),
        });
    }
    let interpreter = format!("/usr/bin/qemu-{}-static", h.qemu);
    if !Path::new(&interpreter).exists() {
        return Err(EnvironmentError {
            message: format!("no binfmt_misc handler with the F flag runs {arch} binaries, and {interpreter} is missing"),
            hint: "install qemu-user-static (it registers the handlers), e.g. `apt-get install qemu-user-static`".into(),
        });
    }
    let line = format!(":{name}:M::{}:{}:{interpreter}:F", h.magic, h.mask);
    std::fs::write(root.join("register"), line).map_err(|e| EnvironmentError {
        message: format!("cannot register a binfmt_misc handler for {arch}: {e}"),
        hint: "run once as root, or register qemu-user-static's handlers with the F flag (`update-binfmts --enable`)".into(),
    })?;
    tracing::info!(
        arch,
        "registered the binfmt_misc handler qemu-{} with the F flag",
        h.qemu
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_fix_binary_flag() {
        let debian =
            "enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\nflags: PF\noffset 0\n";
        assert!(entry_has_fix_binary(debian));
        assert!(!entry_has_fix_binary(&debian.replace("PF", "P")));
        assert!(!entry_has_fix_binary(
            &debian.replace("enabled", "disabled")
        ));
    }

    #[test]
    fn knows_every_debian_arch_a_recipe_can_name() {
        for a in crate::core::rootfs_recipe::DEBIAN_ARCHES {
            assert!(*a == native_arch() || handler(a).is_some(), "{a}");
        }
        assert_eq!(native_arch(), "amd64");
        assert!(ensure("amd64").is_ok());
        assert!(handler("alpha").is_none());
    }

    /// The table is Debian's: where qemu-user-static is installed, each handler's magic and
    /// mask are those of its `/usr/share/binfmts/qemu-<name>` (so an update of the package
    /// that changes one is noticed here).
    #[test]
    fn the_table_matches_debians_qemu_user_static() {
        let dir = Path::new("/usr/share/binfmts");
        if !dir.join("qemu-aarch64").exists() {
            eprintln!("qemu-user-static is not installed; nothing to compare");
            return;
        }
        // Debian registers no handler for what the host runs natively (i386 on amd64).
        let foreign = crate::core::rootfs_recipe::DEBIAN_ARCHES
            .iter()
            .filter(|a| **a != native_arch() && !(native_arch() == "amd64" && **a == "i386"));
        for a in foreign {
            let h = handler(a).unwrap();
            let text = std::fs::read_to_string(dir.join(format!("qemu-{}", h.qemu))).unwrap();
            let field = |k: &str| {
                text.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(str::trim)
                    .unwrap_or_default()
                    .to_owned()
            };
            assert_eq!(field("magic "), h.magic, "{a}: magic");
            assert_eq!(field("mask "), h.mask, "{a}: mask");
        }
    }
}
