#!/usr/bin/env bash
# No-op build of a graph of N cached targets: `kci-build build` against `docker build` of
# the same Dockerfiles with a full Docker cache, side by side, with hyperfine.
# Usage: bench/noop.sh [N=60]   (needs: docker daemon, hyperfine, /bin/busybox, a release build)
set -euo pipefail
N=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
kci="$root/target/release/kci-build"
[ -x "$kci" ] || (cd "$root" && cargo build --release)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export KCI_BUILD_STORE="$work/store"
cd "$work"

mkdir -p images/busybox
printf 'prefix = "kernelci/"\nsource-date-epoch = 1717200000\n' > images/config.toml
cp /bin/busybox images/busybox/
printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n' > images/busybox/Dockerfile
printf '[[target]]\nname = "busybox"\n' > images/busybox/image.toml
for i in $(seq 2 "$N"); do
  d=images/t$i
  mkdir -p $d
  echo "target $i" > $d/data.txt
  printf 'ARG PARENT\nFROM ${PARENT}\nCOPY data.txt /data/%s.txt\nRUN echo %s > /data/%s.id\n' $i $i $i > $d/Dockerfile
  # A chain of depth 3 under busybox, then siblings: parents exist before children.
  parent=busybox; [ $i -gt 3 ] && parent="t$(( (i - 2) % 2 + 2 ))"
  printf '[[target]]\nname = "t%s"\nparent = "%s"\n' $i $parent > $d/image.toml
done

echo "bench: cold kci-build build of $N targets"
/usr/bin/time -f "%e s" "$kci" -q build -j2

# The same Dockerfiles through docker build, parents passed as image ids, cache warmed.
cat > docker-all.sh <<'SH'
#!/usr/bin/env bash
set -euo pipefail
export DOCKER_BUILDKIT=0
declare -A id
id[busybox]=$(docker build -q -t bench/busybox images/busybox)
for d in $(ls images | grep '^t' | sort -V); do
  p=$(sed -n 's/^parent = "\(.*\)"/\1/p' images/$d/image.toml)
  id[$d]=$(docker build -q --build-arg PARENT=${id[$p]} -t bench/$d images/$d)
done
SH
chmod +x docker-all.sh
echo "bench: warming docker's cache"
./docker-all.sh
hyperfine --warmup 1 --runs 5 --export-markdown "$work/noop.md" \
  -n "kci-build build (no-op, $N targets)" "$kci -q build -j2" \
  -n "docker build (cached, $N Dockerfiles)" ./docker-all.sh
cat "$work/noop.md"
docker image ls --format '{{.Repository}}:{{.Tag}}' | grep '^bench/' | xargs -r docker image rm >/dev/null; docker image prune -f >/dev/null
