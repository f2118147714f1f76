#!/bin/sh
# Test stand-in for kernelci-core's scripts/strip.sh (tests only): documentation and
# locales out of the small ramdisk.
set -e
rm -rf /var/log/* /usr/share/doc/* /usr/share/locale/* /usr/share/man /usr/share/info/*
