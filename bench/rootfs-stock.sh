#!/usr/bin/env bash
# The five rootfs outputs made with stock tools, for bench/rootfs.sh's side by side: what
# an operator (or debos + KernelCI's scripts) would run instead of kci-build. Same package
# set and xz level as the `tiny` recipe; no canonicalisation, no reproducibility, the
# compressors run concurrently like kci-build's do.
# Usage: bench/rootfs-stock.sh MIRROR PACKAGES XZ_LEVEL
set -euo pipefail
mirror=$1 pkgs=$2 level=$3
d=$(mktemp -d /var/tmp/kci-stock.XXXXXX)
trap 'umount "$d/ext4" 2>/dev/null || true; rm -rf "$d"' EXIT
export SOURCE_DATE_EPOCH=1764547200
mmdebstrap --quiet --mode=root --variant=minbase --arch=amd64 --include="$pkgs" \
  --customize-hook='chroot "$1" sh -c "mkdir -p /usr/lib/modules/0.0.0 && printf \"CONFIG_RD_GZIP=y\n\" > /boot/config-0.0.0 && mkinitramfs -o /initrd.img 0.0.0"' \
  --customize-hook='mv "$1/initrd.img" '"$d"'/initrd.img' \
  bookworm "$d/root" "$mirror"
tar -C "$d/root" --numeric-owner -cf "$d/full.tar" .
mke2fs -q -F -t ext4 -d "$d/root" "$d/rootfs.ext4" 1G
gzip -c "$d/initrd.img" > "$d/initrd.cpio.gz"
# The two xz files in the background; the full cpio, then the stripped ramdisk's.
xz -T0 "-$level" -c "$d/full.tar" > "$d/full.rootfs.tar.xz" &
xz -T0 "-$level" -c "$d/rootfs.ext4" > "$d/rootfs.ext4.xz" &
(cd "$d/root" && find . | cpio -o -H newc --quiet | gzip -6 > "$d/full.rootfs.cpio.gz")
rm -rf "$d"/root/usr/share/doc/* "$d"/root/usr/share/man/* "$d"/root/usr/share/locale/*
chroot "$d/root" dpkg --purge --force-remove-essential --force-depends usbutils >/dev/null
(cd "$d/root" && find . | cpio -o -H newc --quiet | gzip -6 > "$d/rootfs.cpio.gz")
wait
