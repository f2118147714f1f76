#!/bin/sh
set -e
echo "built for $(dpkg --print-architecture)" > /etc/kci-script-ran
