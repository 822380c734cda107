#!/usr/bin/env bash
#! image/build.sh behind a cache: the image is keyed on everything that goes into it, and a
#! previous build with the same key is reused instead of rebuilt. See image/README.md.
# Usage: image/build-cached.sh [--print-key] OUTDIR [DEB]
#   --print-key: only resolve, write OUTDIR/key.txt and print the key (for CI cache keys).
# Env: BERTH_IMAGE_CACHE (default /var/cache/berth-image/images), BERTH_IMAGE_CACHE_KEEP
#      (entries kept, newest first; default 3), plus everything build.sh reads.
# The key is the sha256 of key.txt, which lists:
#   - the resolved package set: what apt resolves NOW from the image's sources for the
#     essential set + apt + the package list (defs.sh, plus BERTH_IMAGE_EXTRA_PACKAGES) + the
#     .deb, as name=version lines (a new Debian point release or security update changes it);
#   - the .deb's sha256;
#   - the sha256 of every image/*.sh (the build, the tree customization, the disk layout);
#   - the versions of the host tools that write bytes into the image (mmdebstrap, e2fsprogs,
#     dosfstools, mtools, fdisk/libfdisk1, qemu-utils);
#   - SOURCE_DATE_EPOCH and BERTH_IMAGE_SIZE.
# After a build on a miss, the resolved set must equal the image's manifest.txt (else the key
# would not describe the image: the entry is not stored and the script fails).
set -euo pipefail
die() { echo "image/build-cached.sh: $*" >&2; exit 1; }
print_key=
if [ "${1:-}" = --print-key ]; then print_key=1; shift; fi
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: image/build-cached.sh [--print-key] OUTDIR [DEB]"
[ "$(id -u)" = 0 ] || die "must run as root (image/build.sh does)"
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
cache=${BERTH_IMAGE_CACHE:-/var/cache/berth-image/images}
keep=${BERTH_IMAGE_CACHE_KEEP:-3}
# shellcheck source=image/defs.sh
. "$here/defs.sh"

deb=${2:-}
if [ -z "$deb" ]; then
  deb=$(BERTH_DEB_PROFILE=${BERTH_DEB_PROFILE:-deb-test} "$repo/scripts/system/build-deb.sh" "$out/deb")
fi
[ -f "$deb" ] || die "no such .deb: $deb"
deb=$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")
# Default timestamp: the last commit that changed image/*.sh (not HEAD), so that commits
# elsewhere (or to the README) do not change the image's timestamps and the cache can hit
# across them.
: "${SOURCE_DATE_EPOCH:=$(git -C "$repo" log -1 --format=%ct -- 'image/*.sh')}"
export SOURCE_DATE_EPOCH
: "${BERTH_IMAGE_SIZE:=4G}"
export BERTH_IMAGE_SIZE

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-image-key.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- Resolve the package set with apt, in a private apt directory ------------------------------
pkgs=$(berth_image_packages) || die "bad package list"
a=$work/apt
mkdir -p "$a/etc/apt/apt.conf.d" "$a/etc/apt/preferences.d" "$a/etc/apt/sources.list.d" \
  "$a/var/lib/apt/lists/partial" "$a/var/cache/apt/archives/partial" "$a/var/lib/dpkg"
: >"$a/var/lib/dpkg/status"
berth_image_sources | sed 's#^deb #deb [arch=amd64 signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] #' \
  >"$a/etc/apt/sources.list"
aptopts=(-o "Dir=$a" -o "Dir::State::status=$a/var/lib/dpkg/status" -o APT::Architecture=amd64
  -o APT::Architectures::=amd64 -o Acquire::Languages=none -o APT::Install-Recommends=false
  -o APT::Install-Suggests=false -o Debug::NoLocking=true)
apt-get "${aptopts[@]}" update -qq >"$work/apt-update.log" 2>&1 \
  || { cat "$work/apt-update.log" >&2; die "apt-get update (private dir) failed"; }
# mmdebstrap --variant=minbase installs the Essential:yes and Priority:required packages and
# apt, then --include.
# shellcheck disable=SC2046
apt-get "${aptopts[@]}" install --simulate -qq '?essential' '?priority(required)' apt $(cat <<<"$pkgs") "$deb" \
  >"$work/sim.log" 2>&1 || { tail -n 20 "$work/sim.log" >&2; die "apt could not resolve the package set"; }
sed -n 's/^Inst \([^ ]*\) (\([^ ]*\) .*/\1=\2/p' "$work/sim.log" | sed 's/:amd64=/=/' | LC_ALL=C sort -u >"$work/resolved.txt"
[ -s "$work/resolved.txt" ] || { tail -n 20 "$work/sim.log" >&2; die "apt resolved nothing"; }

# --- The key -------------------------------------------------------------------------------------
{
  echo "# berth appliance image key inputs (image/build-cached.sh)"
  echo "source_date_epoch=$SOURCE_DATE_EPOCH"
  echo "image_size=$BERTH_IMAGE_SIZE"
  echo "package_list=$(paste -sd, - <<<"$pkgs")"
  echo "deb_sha256=$(sha256sum <"$deb" | cut -d' ' -f1)"
  for f in "$here"/*.sh; do echo "script_sha256 $(basename "$f")=$(sha256sum <"$f" | cut -d' ' -f1)"; done
  for p in mmdebstrap e2fsprogs dosfstools mtools fdisk libfdisk1 qemu-utils; do
    echo "host_tool $p=$(dpkg-query -W -f='${Version}' "$p" 2>/dev/null || echo missing)"
  done
  sed 's/^/package /' "$work/resolved.txt"
} >"$work/key.txt"
key=$(sha256sum <"$work/key.txt" | cut -d' ' -f1)
echo "image/build-cached.sh: key $key ($(wc -l <"$work/resolved.txt") resolved packages)" >&2
if [ -n "$print_key" ]; then cp "$work/key.txt" "$out/key.txt"; echo "$key"; exit 0; fi

files=(berth-appliance.raw berth-appliance.qcow2 vmlinuz initrd.img cmdline.txt manifest.txt SHA256SUMS)
entry=$cache/$key
if [ -f "$entry/SHA256SUMS" ] && (cd "$entry" && sha256sum --quiet -c SHA256SUMS); then
  for f in "${files[@]}"; do cp --sparse=always "$entry/$f" "$out/$f"; done
  cp "$work/key.txt" "$out/key.txt"
  touch "$entry"                                   # most recently used
  echo "image/build-cached.sh: cache hit: $entry" >&2
  cat "$out/SHA256SUMS"
  exit 0
fi

echo "image/build-cached.sh: cache miss; building" >&2
t0=$(date +%s)
"$here/build.sh" "$out" "$deb"
echo "image/build-cached.sh: built in $(( $(date +%s) - t0 )) s" >&2
cp "$work/key.txt" "$out/key.txt"
# Honesty check: the image holds exactly the resolved packages (berth from the .deb included).
sed 's/:amd64=/=/' "$out/manifest.txt" | LC_ALL=C sort -u >"$work/manifest.norm"
if ! cmp -s "$work/resolved.txt" "$work/manifest.norm"; then
  diff "$work/resolved.txt" "$work/manifest.norm" | head -n 20 >&2 || true
  die "the image's manifest differs from the resolved package set: key would be wrong; not cached"
fi
mkdir -p "$cache"
tmp=$(mktemp -d "$cache/.new.XXXXXX")
for f in "${files[@]}"; do cp --sparse=always "$out/$f" "$tmp/$f"; done
cp "$work/key.txt" "$tmp/key.txt"
rm -rf "$entry"
mv "$tmp" "$entry"
echo "image/build-cached.sh: stored $entry" >&2
# Keep the newest entries only.
find "$cache" -mindepth 1 -maxdepth 1 -type d -not -name '.*' -printf '%T@ %p\n' | sort -rn \
  | tail -n +$((keep + 1)) | cut -d' ' -f2- | while IFS= read -r old; do rm -rf "$old"; done
