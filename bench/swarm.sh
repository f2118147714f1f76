#!/usr/bin/env bash
# Rootfs builds as Swarm jobs vs local containers (BENCHMARKS.md, issue 17), side by side:
#  1. wall time of one amd64 `tiny` rootfs (builder image cached, empty rootfs store, the
#     registry without the artifact): `kci-build rootfs --registry R` (a local container,
#     packed by kci-build) vs `kci-build rootfs --registry R --swarm` (a Swarm job that
#     builds, packs and pushes on its node; the coordinator pulls and checks) — the overhead
#     of a Swarm job;
#  2. the coordinator's CPU per rootfs under --swarm (user+sys of the kci-build process,
#     GNU time) against the build's CPU on its node (the task's own account, `kci-task-cpu:`
#     in the job's log) — goal ≤ 5 %.
# Usage: bench/swarm.sh   (needs: docker on a daemon that is in no swarm — the script makes
# a single-node one and leaves it —, docker-registry, mmdebstrap, hyperfine, GNU time, a
# Debian mirror in the apt sources or $KCI_DEBIAN_MIRROR, a release build)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
kci="$root/target/release/kci-build"
[ -x "$kci" ] || (cd "$root" && cargo build --release)
work=$(mktemp -d /var/tmp/kci-bench-swarm.XXXXXX)
export KCI_BUILD_STORE=${KCI_BENCH_STORE:-/var/tmp/kci-bench-swarm-store}
port=${KCI_BENCH_REGISTRY_PORT:-5123}
reg=127.0.0.1:$port
cleanup() {
  docker service ls -q --filter label=org.kernelci.kci-build.rootfs | xargs -r docker service rm >/dev/null
  docker swarm leave --force >/dev/null 2>&1 || true
  docker network rm docker_gwbridge >/dev/null 2>&1 || true
  [ -n "${regpid:-}" ] && kill "$regpid" 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
[ "$(docker info --format '{{.Swarm.LocalNodeState}}')" = inactive ] \
  || { echo "the daemon is in a swarm already; leave it first" >&2; exit 2; }
docker swarm init --advertise-addr 127.0.0.1 --listen-addr 127.0.0.1:2377 >/dev/null

cat > "$work/registry.yml" <<EOF
version: 0.1
log:
  level: error
storage:
  filesystem:
    rootdirectory: $work/registry
http:
  addr: $reg
EOF
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
regpid=$!
sleep 1

cd "$work"
mkdir -p recipes lockfiles
cp -r "$root/tests/data/rootfs-tiny/." recipes/
sed -i "s/^xz-preset = .*/xz-preset = ${XZ_PRESET:-1}/" recipes/tiny.toml
args=(--images "$root/images" --lockfile lockfiles/images.lock)
# A run starts with no rootfs in the store and none in the registry.
fresh="rm -rf $KCI_BUILD_STORE/rootfs $work/registry/docker/registry/v2/repositories/kernelci/rootfs-tiny"

echo "== warm-up: the builder image and the task image (not timed)"
"$kci" "${args[@]}" -q rootfs tiny --arch amd64 --registry "$reg" --swarm >/dev/null
eval "$fresh"

echo "== 1. one amd64 rootfs: local container vs Swarm job"
hyperfine --runs "${RUNS:-2}" --export-markdown "$work/one.md" --prepare "$fresh" \
  -n "kci-build rootfs tiny --arch amd64 --registry R (local container)" \
  "$kci ${args[*]} -q rootfs tiny --arch amd64 --registry $reg" \
  -n "kci-build rootfs tiny --arch amd64 --registry R --swarm (Swarm job)" \
  "$kci ${args[*]} -q rootfs tiny --arch amd64 --registry $reg --swarm"
cat "$work/one.md"

echo "== 2. the coordinator's CPU vs the build's"
for run in $(seq 1 "${RUNS:-2}"); do
  eval "$fresh"
  /usr/bin/time -f "%U %S %e" -o "$work/time" \
    "$kci" "${args[@]}" -q rootfs tiny --arch amd64 --registry "$reg" --swarm >/dev/null
  read -r user sys wall <"$work/time"
  log=$(ls -t "$KCI_BUILD_STORE"/logs/rootfs-tiny-amd64-*.log | head -1)
  task=$(sed -n 's/.*kci-task-cpu: //p' "$log" | tail -1)
  awk -v u="$user" -v s="$sys" -v w="$wall" -v t="$task" -v r="$run" 'BEGIN {
    printf "run %s: coordinator %.2f s CPU (user %.2f, sys %.2f) in %.1f s wall; build on the node %.1f s CPU; coordinator/build %.1f %%\n",
      r, u + s, u, s, w, t, 100 * (u + s) / t }'
done
