#!/usr/bin/env bash
# First push and no-op re-push of a toolchain image (gcc-12:x86 with its parents) to a
# local docker-registry: `kci-build push` beside `docker push` of the same image.
# Usage: bench/push.sh [TARGET=gcc-12:x86]   (run from the repository root; builds the
# target into the store first if needed; needs docker-registry)
set -euo pipefail
T=${1:-gcc-12:x86}
root=$(cd "$(dirname "$0")/.." && pwd)
kci="$root/target/release/kci-build"
[ -x "$kci" ] || (cd "$root" && cargo build --release)
cd "$root"
"$kci" -q build "$T"
work=$(mktemp -d)
regs=()
cleanup() { for p in "${regs[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
start_registry() { # $1 = name; sets $port (no subshell, so cleanup sees the pid)
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  printf 'version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\nhttp:\n  addr: 127.0.0.1:%s\n' "$work/$1" "$port" > "$work/$1.yml"
  docker-registry serve "$work/$1.yml" >/dev/null 2>&1 & regs+=($!)
  for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
}
now() { date +%s.%N; }
blob_mb() { du -sb "$work/$1/docker/registry/v2/blobs" | awk '{printf "%.1f", $1/1e6}'; }

image=${T%%:*}; tag=${T#*:}
"$kci" -q load "$T"
start_registry kci; kp=$port
start_registry docker; dp=$port
docker tag "kernelci/$image:$tag" "127.0.0.1:$dp/kernelci/$image:$tag"

t0=$(now); "$kci" -q push "$T" --registry "127.0.0.1:$kp" --json > "$work/push1.json"; t1=$(now)
kci_first=$(echo "$t1 - $t0" | bc)
t0=$(now); docker push -q "127.0.0.1:$dp/kernelci/$image:$tag" >/dev/null; t1=$(now)
docker_first=$(echo "$t1 - $t0" | bc)
echo "first push:  kci-build ${kci_first}s ($(blob_mb kci) MB stored)   docker push ${docker_first}s ($(blob_mb docker) MB stored)   ratio $(echo "scale=1; $docker_first / $kci_first" | bc)x"
python3 -c "import json; r=json.load(open('$work/push1.json')); print('  kci-build uploaded', r['blobs_uploaded'], 'blobs,', round(r['bytes_uploaded']/1e6,1), 'MB')"
hyperfine --warmup 1 --runs 5 --export-markdown "$work/noop.md" \
  -n "kci-build push (no-op)" "$kci -q push $T --registry 127.0.0.1:$kp" \
  -n "docker push (no-op)" "docker push -q 127.0.0.1:$dp/kernelci/$image:$tag"
cat "$work/noop.md"
"$kci" -q push "$T" --registry "127.0.0.1:$kp" --json | python3 -c "import json,sys; r=json.load(sys.stdin); print('no-op re-push uploaded', r['blobs_uploaded'], 'blobs')"
docker image rm "127.0.0.1:$dp/kernelci/$image:$tag" >/dev/null
