#!/usr/bin/env bash
# KernelCI's own tool side by side with kci-build (BENCHMARKS.md, "Rootfs vs debos"): one
# config built by kernelci-core's debos recipe (config/rootfs/debos/rootfs.yaml, Debian's
# `debos`, --disable-fakemachine on the host) and by `kci-build rootfs` at its default
# settings (xz 6, --xz-memory 192), each from scratch (kci-build's builder image cached).
# Prints wall time, CPU time and peak RSS of each (/usr/bin/time; debos' CPU includes its
# debootstrap and chroot work, kci-build's is its own process — the builder container's is
# the daemon's, reported from the container's cgroup), then the five files' sizes.
#
# The config is `trixie` of the recipes directory without its script (every trixie config's
# script fetches from GitHub or elsewhere at build time, which this machine cannot reach):
# the debos base, isc-dhcp-client, the baseline overlay, KernelCI's strip/crush/initrd steps.
#
# Usage: KCI_CORE=../kernelci-core bench/rootfs-debos.sh
#   (a kernelci-core checkout, at the commit lockfiles/rootfs.lock pins; needs debos
#   installed with --no-install-recommends: its recommended systemd-resolved replaces
#   /etc/resolv.conf with a stub that nothing serves on a machine without systemd, and DNS
#   stops working; also
#   parted, mmdebstrap, docker, a release build; runs as root; ~10 min on 2 cores)
# debos needs: parted, a /dev/disk directory, a running udev (its image-partition step runs
# `udevadm trigger --settle` and waits forever without one: `/lib/systemd/systemd-udevd
# --daemon` on a machine without systemd), the artifact sub-directory made beforehand;
# its "Create manifest file" action hard-codes fakemachine's /scratch/root, so it and the
# build_info.json copy after it are left out (they make no rootfs file).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
core=${KCI_CORE:?set KCI_CORE to a kernelci-core checkout}
kci="$root/target/release/kci-build"
[ -x "$kci" ] || (cd "$root" && cargo build --release)
work=$(mktemp -d /var/tmp/kci-bench-debos.XXXXXX)
trap 'rm -rf "$work"' EXIT

# The mirror both use: $KCI_DEBIAN_MIRROR, else the first Debian URI of the apt sources.
mirror=${KCI_DEBIAN_MIRROR:-$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's/^URIs: *\([^ ]*debian\)\/*$/\1/p' | head -1)}
[ -n "$mirror" ] || mirror=$(sed -n 's/^deb \(\[[^]]*\] \)\?\([^ ]*\) .*/\2/p' /etc/apt/sources.list 2>/dev/null | head -1)
[ -n "$mirror" ] || { echo "set KCI_DEBIAN_MIRROR" >&2; exit 2; }

# The config, from the committed recipe: one TOML array per debos variable.
recipe="$root/recipes/trixie.toml"
list() { sed -n "s/^$1 = \[\(.*\)\]$/\1/p" "$recipe" | tr -d '",'; }
overlay=$(sed -n 's/^test-overlay = "\(.*\)"$/\1/p' "$recipe")

echo "== debos: kernelci-core's rootfs.yaml (trixie, amd64, no script)"
cp -r "$core/config/rootfs/debos" "$work/debos"
python3 - "$work/debos/rootfs.yaml" <<'EOF'
import re, sys
p = sys.argv[1]
s = open(p).read()
# Drop the manifest action and the build_info.json copy that follows it.
s = re.sub(r"  - action: run\n    description: Create manifest file\n(    .*\n)+", "", s, count=1)
s = re.sub(r"  - action: run\n    chroot: false\n    command: mkdir -p \$\{ARTIFACTDIR\}.*build_info.json.*\n", "", s, count=1)
open(p, "w").write(s)
EOF
! grep -q "create_manifest\|build_info" "$work/debos/rootfs.yaml" || { echo "the manifest action is still there" >&2; exit 2; }
mkdir -p /dev/disk "$work/debos-out/trixie/amd64"
(cd "$work/debos" && /usr/bin/time -f 'debos: wall %e s, CPU %U+%S s, peak RSS %M KiB' \
  debos --disable-fakemachine --artifactdir "$work/debos-out" \
  -t architecture:amd64 -t suite:trixie -t basename:trixie/amd64 \
  -t debian_mirror:"$mirror" \
  -t extra_packages:"$(list extra-packages)" \
  -t extra_packages_remove:"$(list extra-packages-remove)" \
  -t extra_files_remove:"$(list extra-files-remove)" \
  -t test_overlay:"$overlay" \
  rootfs.yaml > "$work/debos.log" 2>&1) 2>&1 | tail -1 || { tail -30 "$work/debos.log"; exit 1; }
tail -1 "$work/debos.log"

echo "== kci-build rootfs (the same config, an empty rootfs store)"
mkdir -p "$work/kci/recipes" "$work/kci/lockfiles"
sed -e 's/^name = "trixie"/name = "trixie-base"/' -e '/^script = /d' \
  -e 's/^arch-list = .*/arch-list = ["amd64"]/' "$recipe" > "$work/kci/recipes/trixie-base.toml"
store=${KCI_BUILD_STORE:-/var/tmp/kci-bench-debos-store}
rm -rf "$store/rootfs"
(cd "$work/kci" && KCI_BUILD_STORE=$store /usr/bin/time -f 'kci-build: wall %e s, CPU %U+%S s, peak RSS %M KiB' \
  "$kci" --images "$root/images" --lockfile "$root/lockfiles/images.lock" -q \
  rootfs trixie-base --kernelci-core "$core" --json > "$work/kci.json") 2>&1 | tail -1

echo "== sizes (bytes): file, debos, kci-build"
for f in rootfs.cpio.gz full.rootfs.tar.xz full.rootfs.cpio.gz initrd.cpio.gz rootfs.ext4.xz; do
  d=$(stat -c %s "$work/debos-out/trixie/amd64/$f" 2>/dev/null || echo -)
  k=$(python3 -c "import json,sys; r=json.load(open('$work/kci.json')); print(r['builds'][0]['artifacts']['$f']['size'])" 2>/dev/null || echo -)
  echo "$f $d $k"
done
