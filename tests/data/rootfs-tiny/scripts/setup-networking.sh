#!/bin/sh
# Test stand-in for kernelci-core's scripts/setup-networking.sh (tests only): the real
# one comes from the pinned kernelci-core. Enables networkd as KernelCI's does.
set -e
systemctl enable systemd-networkd
