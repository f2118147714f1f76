#!/usr/bin/env bash
# Rootfs benchmarks, side by side (BENCHMARKS.md):
#  1. one amd64 config built by `kci-build rootfs` (builder image cached, empty rootfs store)
#     vs bare `mmdebstrap` of the same package set into a tarball on the host — the tool an
#     operator would otherwise run. Goal: kci-build ≤ 1.5× (it also makes the ext4 image,
#     the initrd, the stripped ramdisk and the five compressed files), and vs the same five
#     files made with stock tools (bench/rootfs-stock.sh: mmdebstrap, tar, mke2fs, cpio,
#     gzip, xz), which is what kci-build's own work costs on top.
#  2. a fully cached rerun of the whole matrix (every config × arch of the recipes dir, all
#     stored): goal under one second.
# Usage: bench/rootfs.sh   (needs: docker, mmdebstrap, qemu-user-static, hyperfine, a
# Debian mirror in the apt sources or $KCI_DEBIAN_MIRROR, a release build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kci="$root/target/release/kci-build"
[ -x "$kci" ] || (cd "$root" && cargo build --release)
work=$(mktemp -d /var/tmp/kci-bench-rootfs.XXXXXX)
trap 'rm -rf "$work"' EXIT
export KCI_BUILD_STORE=${KCI_BENCH_STORE:-/var/tmp/kci-bench-rootfs-store}
cd "$work"
mkdir -p recipes lockfiles
# The `tiny` config of the test suite, at the benchmark's xz level.
cp -r "$root/tests/data/rootfs-tiny/." recipes/
sed -i "s/^xz-preset = .*/xz-preset = ${XZ_PRESET:-6}/" recipes/tiny.toml
args=(--images "$root/images" --lockfile lockfiles/images.lock)

# The mirror kci-build uses: $KCI_DEBIAN_MIRROR, else the first Debian URI of the apt sources.
mirror=${KCI_DEBIAN_MIRROR:-$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs: *\([^ ]*debian\)\/*$/\1/p' | head -1)}
[ -n "$mirror" ] || mirror=$(sed -n 's/^deb \(\[[^]]*\] \)\?\([^ ]*\) .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -1)
[ -n "$mirror" ] || { echo "set KCI_DEBIAN_MIRROR" >&2; exit 2; }
pkgs=udev,kmod,dbus,systemd-sysv,diffutils,usbutils,initramfs-tools,patch,systemd-timesyncd,netbase

echo "== warm-up: the builder image (not timed)"
"$kci" "${args[@]}" -q rootfs tiny --arch amd64 >/dev/null

echo "== 1. one amd64 rootfs: kci-build rootfs (empty rootfs store) vs bare mmdebstrap"
hyperfine --runs "${RUNS:-2}" --export-markdown "$work/one.md" \
  --prepare "rm -rf $KCI_BUILD_STORE/rootfs" \
  -n "kci-build rootfs tiny --arch amd64" "$kci ${args[*]} -q rootfs tiny --arch amd64" \
  -n "mmdebstrap (same packages, tarball)" "SOURCE_DATE_EPOCH=1764547200 mmdebstrap --quiet --mode=root --variant=minbase --arch=amd64 --include=$pkgs bookworm $work/bare.tar $mirror" \
  -n "mmdebstrap + stock tools (the same five files)" "$root/bench/rootfs-stock.sh $mirror $pkgs ${XZ_PRESET:-6}"
cat "$work/one.md"

echo "== 2. fully cached rerun of the matrix (tiny × amd64, arm64)"
"$kci" "${args[@]}" -q rootfs >/dev/null
hyperfine --warmup 1 --runs 10 --export-markdown "$work/cached.md" \
  -n "kci-build rootfs (all cached)" "$kci ${args[*]} -q rootfs"
cat "$work/cached.md"
