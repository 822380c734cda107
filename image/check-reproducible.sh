#!/usr/bin/env bash
#! Builds the appliance image twice (same .deb, same SOURCE_DATE_EPOCH) into two directories
#! and checks that the raw images, qcow2 images, kernels, initrds and manifests are
#! byte-identical. On a difference, lists which files in the two filesystems differ.
# Usage: image/check-reproducible.sh [WORKDIR] [DEB]   (WORKDIR default: a temp dir, removed
#        on success)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
work=${1:-}
keep=1
if [ -z "$work" ]; then work=$(mktemp -d "${TMPDIR:-/tmp}/berth-repro.XXXXXX"); keep=0; fi
mkdir -p "$work"
deb=${2:-}
if [ -z "$deb" ]; then
  deb=$(BERTH_DEB_PROFILE=${BERTH_DEB_PROFILE:-deb-test} "$repo/scripts/system/build-deb.sh" "$work/deb")
fi
export SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct)}

start=$(date +%s)
for n in 1 2; do
  t0=$(date +%s)
  "$here/build.sh" "$work/build$n" "$deb" >"$work/build$n.log" 2>&1 \
    || { tail -n 30 "$work/build$n.log" >&2; echo "check-reproducible: build $n failed" >&2; exit 1; }
  echo "check-reproducible: build $n took $(( $(date +%s) - t0 )) s"
done

echo "check-reproducible: manifest sha256 $(sha256sum <"$work/build1/manifest.txt" | cut -d' ' -f1) ($(wc -l <"$work/build1/manifest.txt") packages)"
if cmp -s "$work/build1/SHA256SUMS" "$work/build2/SHA256SUMS"; then
  sed 's/^/  /' "$work/build1/SHA256SUMS"
  echo "check-reproducible: OK, byte-identical ($(( $(date +%s) - start )) s for both builds)"
  [ "$keep" = 1 ] || rm -rf "$work"
  exit 0
fi

echo "check-reproducible: DIFFERENT:" >&2
diff "$work/build1/SHA256SUMS" "$work/build2/SHA256SUMS" >&2 || true
# Which files differ, mount-free: (1) the blocks that differ, mapped to inodes and paths with
# debugfs icheck/ncheck; (2) the superblocks; (3) both trees extracted with debugfs rdump and
# listed with mode, owner, size, mtime and content hash.
r1=$work/build1/berth-appliance.raw r2=$work/build2/berth-appliance.raw
blocks=$(cmp -l "$r1" "$r2" 2>/dev/null | awk '{ b = int(($1 - 1) / 4096); if (!(b in s)) { s[b] = 1; print b } }' | head -n 40 | tr '\n' ' ')
echo "differing blocks (first 40): $blocks" >&2
inodes=$(debugfs -R "icheck $blocks" "$r1" 2>/dev/null | awk 'NR > 1 && $2 ~ /^[0-9]+$/ { print $2 }' | sort -un | tr '\n' ' ')
[ -n "$inodes" ] && debugfs -R "ncheck $inodes" "$r1" 2>/dev/null | sed 's/^/  /' >&2
diff <(dumpe2fs -h "$r1" 2>/dev/null) <(dumpe2fs -h "$r2" 2>/dev/null) >&2 || true
for n in 1 2; do
  rm -rf "$work/tree$n"; mkdir "$work/tree$n"
  debugfs -R "rdump / $work/tree$n" "$work/build$n/berth-appliance.raw" >/dev/null 2>&1 || true
  (cd "$work/tree$n" && find . -printf '%p %m %U %G %s %T@ %l\n' | LC_ALL=C sort >"$work/list$n.txt"
   find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum >>"$work/list$n.txt")
done
diff "$work/list1.txt" "$work/list2.txt" | head -n 60 >&2 || true
echo "check-reproducible: kept $work for inspection" >&2
exit 1
