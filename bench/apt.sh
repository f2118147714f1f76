#!/usr/bin/env bash
# The pinned apt index (BENCHMARKS.md): a from-scratch rebuild of the real base → build-base →
# gcc-12:x86 chain (`kci-build check gcc-12:x86`: every target rebuilt in a scratch store)
# with the apt cache warm and the upstream mirror closed, against the same rebuild with an
# empty cache, where apt fetches everything from the mirror as a plain build would; then
# the cache's serving throughput against reading the same .debs from disk
# (`cargo bench --bench aptcache`).
# Usage: bench/apt.sh [runs=2]   (needs the real images lockfile, the mirror and Docker)
set -euo pipefail
RUNS=${1:-2}
root=$(cd "$(dirname "$0")/.." && pwd)
kci=${KCI:-$root/target/release/kci-build}
[ -x "$kci" ] || (cd "$root" && cargo build --release)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$root"
run() { # label, store, extra env…
  local label=$1 store=$2; shift 2
  local t0 t1
  t0=$(date +%s.%N)
  env KCI_BUILD_STORE="$store" "$@" "$kci" check gcc-12:x86 2>"$work/err" >/dev/null \
    || { tail -20 "$work/err"; exit 1; }
  t1=$(date +%s.%N)
  printf '%-28s %7.1f s   %s\n' "$label" "$(echo "$t1 - $t0" | bc)" \
    "$(grep -o 'Apt .*' "$work/err" | sed 's/^Apt *//')"
}
# Warm the cache once (and prove the lockfile's pins are fetchable).
"$kci" --store "$work/warm" fetch gcc-12:x86 >/dev/null
for i in $(seq 1 "$RUNS"); do
  run "warm cache, mirror closed" "$work/warm" KCI_APT_UPSTREAM=http://127.0.0.1:1
  rm -rf "$work/cold"
  run "empty cache, from mirror" "$work/cold"
done
cargo bench --quiet --bench aptcache -- "$work/warm" lockfiles/images.lock 2>/dev/null
