#!/bin/sh
# Test stand-in for kernelci-core's scripts/crush.sh (tests only): each argument names a
# step, none means all, as in KernelCI's; here the one step drops the fdisk tools.
set -e
filesystem() { rm -f usr/sbin/*fdisk; }
[ $# -gt 0 ] || set -- filesystem
for step in "$@"; do "$step"; done
