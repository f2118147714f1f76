#!/usr/bin/env bash
# Context hashing throughput: `kci-build plan` over a large build context (sha256 of every
# file, in parallel) against coreutils `sha256sum` of the same files, page cache warm.
# Usage: bench/hash.sh [MiB per file=512] [files=4]
set -euo pipefail
MB=${1:-512}
FILES=${2:-4}
root=$(cd "$(dirname "$0")/.." && pwd)
kci="$root/target/release/kci-build"
[ -x "$kci" ] || (cd "$root" && cargo build --release)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export KCI_BUILD_STORE="$work/store"
cd "$work"
mkdir -p images/big
printf 'prefix = "kernelci/"\nsource-date-epoch = 1717200000\n' > images/config.toml
printf '[[target]]\nname = "big"\n' > images/big/image.toml
echo 'FROM scratch' > images/big/Dockerfile
for i in $(seq 1 "$FILES"); do head -c $((MB * 1024 * 1024)) /dev/urandom > images/big/blob$i; done
total=$((MB * FILES))
echo "bench: $FILES files x $MB MiB = $total MiB"
hyperfine --warmup 1 --runs 5 --export-markdown "$work/hash.md" \
  -n "kci-build plan (parallel sha256)" "$kci plan" \
  -n "sha256sum (one process)" "sha256sum images/big/blob*" \
  -n "sha256sum (xargs -P$(nproc))" "ls images/big/blob* | xargs -P$(nproc) -n1 sha256sum"
cat "$work/hash.md"
echo "MiB hashed per run: $total"
