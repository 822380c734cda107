#!/usr/bin/env bash
#! Builds the appliance image twice (same .deb, same SOURCE_DATE_EPOCH) into two directories
#! and checks that the raw disks, qcow2 images, kernels, initrds, kernel command lines and
#! manifests are byte-identical (SHA256SUMS). On a difference, says which partition differs
#! and which files in the two root filesystems differ.
# Usage: image/check-reproducible.sh [WORKDIR] [DEB]   (WORKDIR default: a temp dir, removed
#        on success). BERTH_REPRO_PARALLEL=1 runs the two builds at the same time.
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
build() { # build N: one image build into $work/buildN, timed
  local t0; t0=$(date +%s)
  if "$here/build.sh" "$work/build$1" "$deb" >"$work/build$1.log" 2>&1; then
    echo "check-reproducible: build $1 took $(( $(date +%s) - t0 )) s"
  else
    tail -n 30 "$work/build$1.log" >&2; echo "check-reproducible: build $1 failed" >&2; return 1
  fi
}
if [ -n "${BERTH_REPRO_PARALLEL:-}" ]; then
  # Both builds at once (faster on an idle machine; each still gets its own tree and work dir).
  build 1 & p1=$!
  build 2 & p2=$!
  rc=0; wait "$p1" || rc=1; wait "$p2" || rc=1
  [ "$rc" = 0 ] || exit 1
else
  build 1 || exit 1
  build 2 || exit 1
fi

echo "check-reproducible: manifest sha256 $(sha256sum <"$work/build1/manifest.txt" | cut -d' ' -f1) ($(wc -l <"$work/build1/manifest.txt") packages)"
if cmp -s "$work/build1/SHA256SUMS" "$work/build2/SHA256SUMS"; then
  sed 's/^/  /' "$work/build1/SHA256SUMS"
  echo "check-reproducible: OK, byte-identical ($(( $(date +%s) - start )) s for both builds)"
  [ "$keep" = 1 ] || rm -rf "$work"
  exit 0
fi

echo "check-reproducible: DIFFERENT:" >&2
diff "$work/build1/SHA256SUMS" "$work/build2/SHA256SUMS" >&2 || true
# Where the disks differ, mount-free: (1) which GPT partition (or the gaps between them);
# then for the root filesystem, extracted with dd: (2) the blocks that differ, mapped to inodes
# and paths with debugfs icheck/ncheck; (3) the superblocks; (4) both trees extracted with
# debugfs rdump and listed with mode, owner, size, mtime and content hash.
d1=$work/build1/berth-appliance.raw d2=$work/build2/berth-appliance.raw
cmp -l "$d1" "$d2" 2>/dev/null | awk '{ print int(($1 - 1) / 512) }' | uniq >"$work/diff-sectors" || true
sfdisk --json "$d1" | python3 -c '
import json, sys
parts = json.load(sys.stdin)["partitiontable"]["partitions"]
secs = [int(l) for l in open(sys.argv[1])]
def where(s):
    for i, p in enumerate(parts, 1):
        if p["start"] <= s < p["start"] + p["size"]:
            return "partition %d (%s)" % (i, p.get("name", ""))
    return "outside partitions (MBR/GPT headers)"
seen = {}
for s in secs:
    seen.setdefault(where(s), []).append(s)
for w, ss in seen.items():
    print("differing sectors in %s: %d, first %d" % (w, len(ss), ss[0]))
' "$work/diff-sectors" >&2
root_start=$(sfdisk --json "$d1" | python3 -c 'import json,sys; print(json.load(sys.stdin)["partitiontable"]["partitions"][2]["start"])')
for n in 1 2; do
  dd if="$work/build$n/berth-appliance.raw" of="$work/root$n.ext4" bs=1M iflag=skip_bytes \
    skip=$((root_start * 512)) conv=sparse status=none
done
r1=$work/root1.ext4 r2=$work/root2.ext4
blocks=$(cmp -l "$r1" "$r2" 2>/dev/null | awk '{ b = int(($1 - 1) / 4096); if (!(b in s)) { s[b] = 1; print b } }' | head -n 40 | tr '\n' ' ')
echo "differing root filesystem blocks (first 40): $blocks" >&2
if [ -n "$blocks" ]; then
  inodes=$(debugfs -R "icheck $blocks" "$r1" 2>/dev/null | awk 'NR > 1 && $2 ~ /^[0-9]+$/ { print $2 }' | sort -un | tr '\n' ' ')
  [ -n "$inodes" ] && debugfs -R "ncheck $inodes" "$r1" 2>/dev/null | sed 's/^/  /' >&2
  diff <(dumpe2fs -h "$r1" 2>/dev/null) <(dumpe2fs -h "$r2" 2>/dev/null) >&2 || true
  for n in 1 2; do
    rm -rf "$work/tree$n"; mkdir "$work/tree$n"
    debugfs -R "rdump / $work/tree$n" "$work/root$n.ext4" >/dev/null 2>&1 || true
    (cd "$work/tree$n" && find . -printf '%p %m %U %G %s %T@ %l\n' | LC_ALL=C sort >"$work/list$n.txt"
     find . -type f -print0 | LC_ALL=C sort -z | xargs -0r sha256sum >>"$work/list$n.txt")
  done
  diff "$work/list1.txt" "$work/list2.txt" | head -n 60 >&2 || true
fi
echo "check-reproducible: kept $work for inspection" >&2
exit 1
