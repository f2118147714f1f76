#!/bin/sh
# Test stand-in for kernelci-core's scripts/create_initrd_ramdisk.sh (tests only): a
# kernel-independent initramfs in /boot/initrd.img-min, with no modules to keep it small.
set -e
mkdir -p /etc/initramfs-tools/conf.d
printf 'MODULES=list\nCOMPRESS=gzip\n' > /etc/initramfs-tools/conf.d/kci-test
# update-initramfs reads the kernel config to pick the compressor.
echo "CONFIG_RD_GZIP=y" > /boot/config-min
update-initramfs -c -k min
rm -f /etc/initramfs-tools/conf.d/kci-test /boot/config-min
