#!/usr/bin/env bash
# The real Friday job, config by config, at KernelCI's settings (BENCHMARKS.md, "Rootfs,
# real configs"): for each (config, arch), `kci-build rootfs CONFIG --arch ARCH -v` from an
# empty rootfs store (the builder image cached), with `--locked` when lockfiles/rootfs.lock
# already has the pair (then it must reproduce the committed files bit for bit), without it
# otherwise (then the lockfile gains the pair: review and commit it). Prints one Markdown
# row per build: outcome, wall time, CPU time, peak RSS of kci-build, and the peak RSS of
# the packing step alone (from `-v`). Logs land in $KCI_BENCH_LOGS.
#
# Usage: bench/rootfs-real.sh [CONFIG…]         (default: every recipes/*.toml)
#        ARCHES="amd64 arm64" bench/rootfs-real.sh bookworm-kselftest
# Runs in the repository (it reads recipes/ and updates lockfiles/rootfs.lock). Needs a
# release build, docker, mmdebstrap, qemu-user-static for arm64; ~6 min per amd64 config on
# 2 cores, several times that for arm64 under emulation.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
kci="$root/target/release/kci-build"
[ -x "$kci" ] || cargo build --release
logs=${KCI_BENCH_LOGS:-/var/tmp/kci-bench-rootfs-real}
mkdir -p "$logs"
store=${KCI_BUILD_STORE:-${XDG_CACHE_HOME:-$HOME/.cache}/kci-build/store}
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=($(ls recipes/*.toml | xargs -n1 basename | sed 's/\.toml$//'))

echo "| config/arch | outcome | wall | CPU (user+sys) | peak RSS | packing peak RSS |"
echo "|---|---|---|---|---|---|"
for config in "${configs[@]}"; do
  for arch in ${ARCHES:-amd64 arm64}; do
    grep -q "^arch-list = .*\"$arch\"" "recipes/$config.toml" || continue
    locked=()
    grep -q "^\[rootfs.\"$config\".arch.\"$arch\"\]" lockfiles/rootfs.lock && locked=(--locked)
    # An empty rootfs store for this pair: its key's directory goes.
    key=$("$kci" why "$config/$arch" 2>/dev/null | sed -n "s/^[^ ]*: key sha256:\([0-9a-f]*\)$/\1/p" | head -1 || true)
    [ -n "$key" ] && rm -rf "$store/rootfs/$key"
    log="$logs/$config-$arch.log"
    set +e
    /usr/bin/time -f 'TIME %e %U %S %M' "$kci" -v rootfs "$config" --arch "$arch" "${locked[@]}" >"$log.out" 2>"$log"
    code=$?
    set -e
    read -r _ wall user sys rss < <(grep '^TIME ' "$log" | tail -1)
    pack=$(sed 's/\x1b\[[0-9;]*m//g' "$log" | sed -n 's/.*: packed in .*peak RSS \(.*\)$/\1/p' | tail -1)
    if [ $code -eq 0 ]; then
      outcome=$([ ${#locked[@]} -gt 0 ] && echo "reproduced the lock" || echo "built, locked anew")
    else
      outcome="exit $code ($(grep -m1 '^error' "$log" | cut -c1-80))"
    fi
    printf '| %s/%s | %s | %dm%02ds | %.0f s | %d MB | %s |\n' "$config" "$arch" "$outcome" \
      "$(( ${wall%.*} / 60 ))" "$(( ${wall%.*} % 60 ))" "$(echo "$user + $sys" | bc)" \
      "$(( rss / 1000 ))" "${pack:-?}"
  done
done
