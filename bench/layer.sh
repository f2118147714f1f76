#!/usr/bin/env bash
# Layer rewrite throughput and peak memory at two layer sizes, beside the tools a user
# would otherwise use (sha256sum for hashing, gzip -6 for what docker push does).
# Usage: bench/layer.sh   (needs ~3 GB in $TMPDIR)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$root" && cargo bench --bench layer --no-run 2>/dev/null
bin=$(ls -t "$root"/target/release/deps/layer-* | grep -v '\.d$' | head -1)
tar -cf "$work/small.tar" -C / usr/share 2>/dev/null || true
tar -cf "$work/large.tar" -C / usr/share usr/lib/x86_64-linux-gnu usr/lib/gcc 2>/dev/null || true
cat /dev/null "$work/small.tar" "$work/large.tar" >/dev/null   # warm the page cache
for f in small large; do
  for mode in normalise full; do
    /usr/bin/time -f "  peak RSS %M KiB" "$bin" "$mode" "$work/$f.tar"
  done
  echo "  sha256sum: $( { /usr/bin/time -f %e sha256sum "$work/$f.tar" >/dev/null; } 2>&1 ) s"
  echo "  gzip -6:   $( { /usr/bin/time -f %e gzip -6 -c "$work/$f.tar" >/dev/null; } 2>&1 ) s"
  ls -l "$work/$f.tar" | awk '{print "  size " $5/1e6 " MB"}'
done
