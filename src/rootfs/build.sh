#!/bin/sh
# kci-build's rootfs recipe, run inside the rootfs-builder container (as root, privileged).
# It follows KernelCI's debos recipe (DOMAIN.md §2) with mmdebstrap. Its text is part of
# every rootfs cache key: any change here rebuilds every rootfs.
#
# Inputs: the environment set by src/rootfs/run.rs (KCI_*, SOURCE_DATE_EPOCH) and /kci/
#   (script, overlays/<name>/…). Outputs in /out: full.tar (whole tree), small.tar (the
#   stripped ramdisk tree), initrd.img (mkinitramfs), rootfs.ext4. Lines starting with
#   "kci-phase: " tell kci-build which step runs.
set -eu
export LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive TZ=UTC

phase() { echo "kci-phase: $1"; }

# Deterministic clean-up of clock- and machine-stamped files (REPRODUCIBILITY.md).
scrub() {
    r=$1
    rm -f "$r"/var/log/dpkg.log "$r"/var/log/alternatives.log "$r"/var/log/bootstrap.log \
        "$r"/var/cache/ldconfig/aux-cache "$r"/var/lib/dbus/machine-id \
        "$r"/var/cache/debconf/*-old "$r"/var/lib/dpkg/*-old "$r"/etc/*-
    rm -rf "$r"/var/log/apt/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb \
        "$r"/var/log/journal/* "$r"/tmp/* "$r"/var/tmp/* "$r"/run/* "$r"/var/lib/systemd/random-seed
    [ ! -d "$r"/var/lib/apt/lists ] ||
        find "$r"/var/lib/apt/lists -mindepth 1 -maxdepth 1 ! -name partial -exec rm -rf {} +
    [ ! -e "$r"/etc/machine-id ] || printf 'uninitialized\n' > "$r"/etc/machine-id
    # shadow's field 3 is the day of the last password change: the recipe's day, not today.
    day=$((SOURCE_DATE_EPOCH / 86400))
    [ ! -f "$r"/etc/shadow ] || sed -i -E "s/^([^:]*:[^:]*:)[0-9]*:/\1$day:/" "$r"/etc/shadow
}

if [ "${1:-}" = customize ]; then
    # mmdebstrap --customize-hook: $2 is the new root, /proc /sys /dev are mounted in it.
    root=$2
    if [ -n "${KCI_SCRIPT:-}" ]; then
        phase script
        cp /kci/script "$root/kci-script"
        chmod 0755 "$root/kci-script"
        if [ -n "${KCI_GIT:-}" ]; then
            # Pinned git sources: their URLs reach the copies in /kci-git, any other URL
            # fails (kci-build names it); the copies leave with the script.
            cp -r /kci/git "$root/kci-git"
            chroot "$root" env GIT_CONFIG_GLOBAL=/kci-git/gitconfig GIT_CONFIG_NOSYSTEM=1 /kci-script
            rm -rf "$root/kci-git"
        else
            chroot "$root" /kci-script
        fi
        rm -f "$root/kci-script"
    fi
    phase configure
    echo "debian-$KCI_SUITE-$KCI_ARCH" > "$root/etc/hostname"
    chroot "$root" passwd -d root
    for o in auto-login prompt networkd minimal nosuspend ${KCI_OVERLAY:+test}; do
        [ ! -d "/kci/overlays/$o" ] || cp -rT --no-preserve=ownership "/kci/overlays/$o" "$root"
    done
    chroot "$root" systemctl enable systemd-networkd
    chroot "$root" chsh -s /bin/sh
    rm -f "$root/usr/lib/tmpfiles.d/dbus.conf"
    ln -sf /usr/bin/systemd "$root/init"
    phase initrd
    # A kernel-independent initramfs that mounts an NFS root (create_initrd_ramdisk.sh).
    mkdir -p "$root/usr/lib/modules/0.0.0-kci" "$root/etc/initramfs-tools/conf.d"
    printf 'BOOT=nfs\nCOMPRESS=gzip\nMODULES=list\n' > "$root/etc/initramfs-tools/conf.d/kci-build"
    # mkinitramfs checks the kernel config for the compressor: say gzip is there.
    printf 'CONFIG_RD_GZIP=y\n' > "$root/boot/config-0.0.0-kci"
    chroot "$root" mkinitramfs -o /kci-initrd.img 0.0.0-kci
    mv "$root/kci-initrd.img" /out/initrd.img
    rm -rf "$root/usr/lib/modules/0.0.0-kci" "$root/etc/initramfs-tools/conf.d/kci-build" \
        "$root/boot/config-0.0.0-kci"
    # The retries below are for this build's downloads, not the image's apt.
    rm -f "$root/etc/apt/apt.conf.d/99mmdebstrap"
    exit 0
fi

mkdir -p /out /work/root
root=/work/root
# mmdebstrap reads the host's qemu-<arch> binfmt_misc entry to see that it has the F flag
# (so no qemu binary is needed in the chroot); containers do not see binfmt_misc unless
# it is mounted here.
if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
fi
phase bootstrap
# apt reaches the archive through kci-build's apt cache ($http_proxy on the host's loopback);
# it waits out a gap of up to a minute, so a kci-build killed and resumed (`rootfs --resume`
# serves the same port again) does not fail the build.
# shellcheck disable=SC2086
mmdebstrap --mode=root --variant=minbase --arch="$KCI_ARCH" --components=main \
    --aptopt='Acquire::Retries "30"' --aptopt='Acquire::Retries::Delay::Maximum "2"' \
    --include="udev,kmod,dbus,systemd-sysv,diffutils,usbutils,initramfs-tools,patch,systemd-timesyncd${KCI_EXTRA_PACKAGES:+,$KCI_EXTRA_PACKAGES}" \
    --customize-hook='sh /kci/build.sh customize "$1"' \
    "$KCI_SUITE" "$root" "$KCI_MIRROR"
scrub "$root"

phase full
tar --sort=name --numeric-owner --xattrs --xattrs-include='*' --format=pax \
    --pax-option=delete=atime,delete=ctime --mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime \
    -C "$root" -cf /out/full.tar .

phase ext4
# mke2fs -d from a tree extracted from the sorted tar into a fresh tmpfs, so that inode
# order depends on the tar only; then every inode's atime/ctime/crtime set to
# SOURCE_DATE_EPOCH with debugfs (mke2fs copies ctime from the source files).
mkdir -p /work/ext4
mount -t tmpfs -o mode=0755 tmpfs /work/ext4
tar --numeric-owner --xattrs --xattrs-include='*' -C /work/ext4 -xpf /out/full.tar
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mke2fs -q -F -t ext4 -L rootfs \
    -U "$KCI_FS_UUID" -E "hash_seed=$KCI_FS_UUID,root_owner=0:0" \
    -d /work/ext4 /out/rootfs.ext4 "$KCI_EXT4_SIZE"
(
    cd /work/ext4
    find . | LC_ALL=C sort | while IFS= read -r p; do
        case $p in *'"'*) echo "kci-build: cannot fix times of a path with a quote: $p" >&2; exit 1 ;; esac
        p=${p#.}
        [ -n "$p" ] || p=/
        for f in atime ctime crtime; do echo "sif \"$p\" $f @$SOURCE_DATE_EPOCH"; done
        for f in atime_extra ctime_extra crtime_extra mtime_extra; do echo "sif \"$p\" $f 0"; done
    done
    echo "sif / mtime @$SOURCE_DATE_EPOCH"
    for f in atime ctime crtime mtime; do echo "sif /lost+found $f @$SOURCE_DATE_EPOCH"; done
) > /work/debugfs.cmds
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH debugfs -w -f /work/debugfs.cmds /out/rootfs.ext4 > /dev/null
E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH e2fsck -fn /out/rootfs.ext4 > /dev/null
umount /work/ext4

phase ramdisk
# The small ramdisk: docs and locales stripped (strip.sh), extra packages purged,
# "crushed", extra files deleted.
rm -rf "$root"/usr/share/doc/* "$root"/usr/share/man/* "$root"/usr/share/info/* \
    "$root"/usr/share/locale/* "$root"/usr/share/lintian "$root"/usr/share/linda
if [ -n "${KCI_REMOVE_PACKAGES:-}" ]; then
    # shellcheck disable=SC2086
    chroot "$root" dpkg --purge --force-remove-essential --force-depends $KCI_REMOVE_PACKAGES
fi
rm -rf "$root"/var/lib/apt/lists "$root"/var/cache/apt "$root"/var/cache/debconf/*.dat-old
if [ -n "${KCI_FILES_REMOVE:-}" ]; then
    set -f
    for exp in $KCI_FILES_REMOVE; do
        find "$root" -depth -name "$exp" -exec rm -rf {} +
    done
    set +f
fi
scrub "$root"
tar --sort=name --numeric-owner --xattrs --xattrs-include='*' --format=pax \
    --pax-option=delete=atime,delete=ctime --mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime \
    -C "$root" -cf /out/small.tar .
phase done
