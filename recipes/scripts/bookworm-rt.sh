#!/bin/sh
# bookworm-rt: build rt-tests (cyclictest, pi_stress, …) in the rootfs and remove the tools
# that built it. KernelCI's bullseye-rt.sh cloned rt-tests from git; here the source is
# Debian's rt-tests source package at a pinned version, fetched from the rootfs's own
# mirror (apt verifies it against the signed Release file), so the build is reproducible.
# Runs in the chroot (mmdebstrap customize hook), with the network.
set -eu
RT_TESTS_VERSION=2.4-1
export DEBIAN_FRONTEND=noninteractive LC_ALL=C.UTF-8

. /etc/os-release
mirror=$(sed -n 's/^deb \([^ ]*\) .*/\1/p' /etc/apt/sources.list | head -n 1)
echo "deb-src $mirror $VERSION_CODENAME main" > /etc/apt/sources.list.d/kci-rt-src.list
apt-get update -q
build_deps="build-essential dpkg-dev libnuma-dev"
apt-get install -y -q --no-install-recommends $build_deps

work=$(mktemp -d)
cd "$work"
apt-get source -q --download-only "rt-tests=$RT_TESTS_VERSION"
dpkg-source -x "rt-tests_$RT_TESTS_VERSION.dsc" src
make -C src -j"$(nproc)" prefix=/usr/local
make -C src prefix=/usr/local install
cd /
rm -rf "$work"
/usr/local/bin/cyclictest --help > /dev/null 2>&1 || [ $? -eq 1 ]

apt-get purge -y -q $build_deps
apt-get autoremove -y -q --purge
rm -f /etc/apt/sources.list.d/kci-rt-src.list
apt-get update -q
