#!/bin/sh
# bookworm-rt: build the kernel's timer selftests (tools/testing/selftests/timers: POSIX
# timers, nanosleep and timer latency, clock consistency — what RT testing exercises) from
# Debian's linux-source package, pinned by the lockfile like every package, install them in
# /opt/kselftest/timers, then remove what built them. KernelCI's bullseye-rt.sh cloned
# rt-tests from git; here rt-tests comes from Debian's binary package (extra-packages).
# Runs in the chroot (mmdebstrap customize hook), with the network.
set -eu
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8
build_deps="linux-source-6.1 gcc libc6-dev xz-utils"

apt-get update -q
apt-get install -y -q --no-install-recommends $build_deps
work=$(mktemp -d)
src=linux-source-6.1/tools/testing/selftests
tar -C "$work" -xJf /usr/src/linux-source-6.1.tar.xz "$src/timers" "$src/kselftest.h"
mkdir -p /opt/kselftest/timers
cd "$work/$src/timers"
for c in $(ls *.c | LC_ALL=C sort); do
    gcc -O2 -o "/opt/kselftest/timers/${c%.c}" "$c" -lrt -lpthread -lm
done
cd /
rm -rf "$work"
/opt/kselftest/timers/nanosleep > /dev/null 2>&1 || true

apt-get purge -y -q $build_deps
apt-get autoremove -y -q --purge
