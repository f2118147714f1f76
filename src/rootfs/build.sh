#!/bin/sh
# kci-build's rootfs recipe, run inside the rootfs-builder container (as root, privileged).
# It follows KernelCI's debos recipe (kernelci-core's config/rootfs/debos/rootfs.yaml,
# DOMAIN.md §2) step by step with mmdebstrap, running kernelci-core's own scripts and
# overlays. Its text is part of every rootfs cache key: any change here rebuilds every rootfs.
#
# Inputs: the environment set by src/rootfs/plan.rs (KCI_*, SOURCE_DATE_EPOCH) and /kci/
#   (script: the config's script; scripts/: the steps every rootfs runs; overlays/<name>/;
#   git/: the served copies of pinned git sources). Outputs in /out: full.tar (whole tree),
#   small.tar (the stripped ramdisk tree), initrd.img, rootfs.ext4. Lines starting with
#   "kci-phase: " tell kci-build which step runs.
set -eu
export LC_ALL=C.UTF-8 DEBIAN_FRONTEND=noninteractive TZ=UTC

phase() { echo "kci-phase: $1"; }

# debos' `overlay` action: the directory's tree copied over the root, where it exists.
overlay() {
    [ ! -d "/kci/overlays/$1" ] || cp -rT --no-preserve=ownership "/kci/overlays/$1" "$root"
}

# debos' `run` action with `chroot: true` and `script:`: the script run inside the root
# with its arguments (its #! line picks the shell), from /, with $step_env added.
step_env=
step() {
    s=$1
    shift
    cp "/kci/$s" "$root/kci-step"
    chmod 0755 "$root/kci-step"
    # shellcheck disable=SC2086
    chroot "$root" env $step_env /kci-step "$@"
    rm -f "$root/kci-step"
}

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
    # Everything the debos recipe does before its full archive, in its order.
    root=$2
    if [ -n "${KCI_SCRIPT:-}" ]; then
        phase script
        # Nothing reaches the build that is not pinned. Git: pinned sources' URLs reach
        # their copies in /kci-git, any other URL fails (kci-build names it); the copies
        # leave with the script. Everything else goes through kci-build's proxy, which
        # serves the pinned archive and the pinned downloads (https ones with a certificate
        # of kci-build's own authority, which only these tools trust, for this step only)
        # and refuses the rest (kci-build names each URL).
        cp -r /kci/git "$root/kci-git"
        step_env="GIT_CONFIG_GLOBAL=/kci-git/gitconfig GIT_CONFIG_NOSYSTEM=1 \
            https_proxy=${http_proxy:-} HTTPS_PROXY=${http_proxy:-} HTTP_PROXY=${http_proxy:-} \
            ftp_proxy=${http_proxy:-} no_proxy= NO_PROXY= \
            SSL_CERT_FILE=/kci-git/ca.pem CURL_CA_BUNDLE=/kci-git/ca.pem \
            REQUESTS_CA_BUNDLE=/kci-git/ca.pem WGETRC=/kci-git/wgetrc"
        step script
        step_env=
        rm -rf "$root/kci-git"
    fi
    if [ -n "${KCI_EXTRA_PACKAGES:-}" ]; then
        # After the script, as debos does: what a script installs and purges for its own
        # build is back if the config lists it.
        phase packages
        # shellcheck disable=SC2086
        chroot "$root" apt-get -y install --no-install-recommends $KCI_EXTRA_PACKAGES
    fi
    phase configure
    echo "debian-$KCI_SUITE-$KCI_ARCH" > "$root/etc/hostname"
    chroot "$root" passwd root -d
    overlay auto-login
    overlay prompt
    overlay networkd
    step scripts/setup-networking.sh
    chroot "$root" chsh -s /bin/sh
    overlay minimal
    overlay nosuspend
    [ -z "${KCI_OVERLAY:-}" ] || overlay test
    rm -f "$root/usr/lib/tmpfiles.d/dbus.conf"
    ln -sf /usr/lib/systemd/systemd "$root/init"
    chroot "$root" apt-get clean
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
mmdebstrap --mode=root --variant=minbase --arch="$KCI_ARCH" --components=main \
    --aptopt='Acquire::Retries "30"' --aptopt='Acquire::Retries::Delay::Maximum "2"' \
    --include="udev,kmod,dbus,systemd-sysv,diffutils,usbutils,initramfs-tools,patch,systemd-timesyncd" \
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
rm -rf /work/ext4

# What the debos recipe does after its full archive and image, on the same tree: the
# initrd, then the small ramdisk. The chroot gets /proc, /sys and /dev again, and apt its
# lists back (through kci-build's cache, from the pinned index) for the initrd script.
mount -t proc proc "$root/proc"
mount -t sysfs sysfs "$root/sys"
mount --bind /dev "$root/dev"
trap 'umount "$root/dev" "$root/sys" "$root/proc" 2>/dev/null || true' EXIT
phase initrd
overlay nfs-initramfs
chroot "$root" apt-get -o Acquire::Retries=30 update
step scripts/create_initrd_ramdisk.sh
mv "$root/boot/initrd.img-min" /out/initrd.img

phase ramdisk
step scripts/strip.sh
if [ -n "${KCI_REMOVE_PACKAGES:-}" ]; then
    # shellcheck disable=SC2086
    chroot "$root" dpkg --purge --force-remove-essential --force-depends $KCI_REMOVE_PACKAGES
fi
# shellcheck disable=SC2086
step scripts/crush.sh ${KCI_CRUSH_OPTIONS:-}
umount "$root/dev" "$root/sys" "$root/proc"
trap - EXIT
if [ -n "${KCI_FILES_REMOVE:-}" ]; then
    set -f
    for exp in $KCI_FILES_REMOVE; do
        find "$root" -depth -name "$exp" -exec rm -rf {} +
    done
    set +f
fi
rm -rf "$root"/var/lib/apt/lists "$root"/var/cache/apt "$root"/var/cache/debconf/*.dat-old
scrub "$root"
tar --sort=name --numeric-owner --xattrs --xattrs-include='*' --format=pax \
    --pax-option=delete=atime,delete=ctime --mtime="@$SOURCE_DATE_EPOCH" --clamp-mtime \
    -C "$root" -cf /out/small.tar .
phase done
