#!/usr/bin/env bash
#! Builds the Berth appliance disk image (raw ext4 + qcow2, kernel/initrd beside it) with
#! mmdebstrap from Debian bookworm, reproducibly. See image/README.md.
# Usage: image/build.sh OUTDIR [DEB]
#   DEB: the berth .deb to install; built with scripts/system/build-deb.sh (profile
#        BERTH_DEB_PROFILE, default deb-test) when not given.
# Env: BERTH_IMAGE_SIZE (default 4G), BERTH_IMAGE_MIRROR (default http://deb.debian.org/debian),
#      BERTH_IMAGE_DEB_CACHE (dir keeping downloaded .debs between builds; default
#      /var/cache/berth-image/debs; empty string disables), SOURCE_DATE_EPOCH (default: the
#      commit time of HEAD).
# Output in OUTDIR: berth-appliance.raw, berth-appliance.qcow2, vmlinuz, initrd.img,
#      manifest.txt (dpkg name=version, sorted), SHA256SUMS.
set -euo pipefail

die() { echo "image/build.sh: $*" >&2; exit 1; }
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: image/build.sh OUTDIR [DEB]"
[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap root mode, file ownership in the image)"
for t in mmdebstrap mkfs.ext4 debugfs qemu-img; do
  command -v "$t" >/dev/null || die "missing $t (apt-get install mmdebstrap e2fsprogs qemu-utils)"
done

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
deb=${2:-}
if [ -z "$deb" ]; then
  deb=$(BERTH_DEB_PROFILE=${BERTH_DEB_PROFILE:-deb-test} "$repo/scripts/system/build-deb.sh" "$out/deb")
fi
[ -f "$deb" ] || die "no such .deb: $deb"
deb=$(cd "$(dirname "$deb")" && pwd)/$(basename "$deb")

: "${SOURCE_DATE_EPOCH:=$(git -C "$repo" log -1 --format=%ct)}"
export SOURCE_DATE_EPOCH
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH
# Reproducible-builds conventions for everything the maintainer scripts run.
export LC_ALL=C.UTF-8 TZ=UTC PYTHONHASHSEED=0
umask 022

size=${BERTH_IMAGE_SIZE:-4G}
mirror=${BERTH_IMAGE_MIRROR:-http://deb.debian.org/debian}
cache=${BERTH_IMAGE_DEB_CACHE-/var/cache/berth-image/debs}
# Fixed identities: the root filesystem's UUID and its directory hash seed.
fs_uuid=6d3e7b1a-4f0c-4c55-9b7e-2b9e1a0b3e71
hash_seed=0b7f3c9e-1d2a-4e8b-a6c4-5f1e2d3c4b5a

# Sorted, fixed package set (no versions: they come from the mirror at build time and are
# recorded in manifest.txt).
packages=(
  ca-certificates
  cloud-init
  dbus
  docker.io
  initramfs-tools
  iproute2
  linux-image-amd64
  openssh-server
  systemd-resolved
  systemd-sysv
  udev
)
include=$(printf '%s\n' "${packages[@]}" | LC_ALL=C sort | paste -sd, -)

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-image.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT
root=$work/root

hooks=()
if [ -n "$cache" ]; then
  mkdir -p "$cache"
  # Reuse downloaded packages: copy them in before apt runs, copy new ones back afterwards.
  hooks+=(--setup-hook="mkdir -p \"\$1/var/cache/apt/archives\"; find '$cache' -maxdepth 1 -name '*.deb' -exec cp -t \"\$1/var/cache/apt/archives/\" {} +; true")
  hooks+=(--skip=download/empty)
  hooks+=(--customize-hook="find \"\$1/var/cache/apt/archives\" -maxdepth 1 -name '*.deb' -exec cp -n -t '$cache' {} +")
fi

echo "image/build.sh: SOURCE_DATE_EPOCH=$SOURCE_DATE_EPOCH deb=$deb" >&2
echo "image/build.sh: mmdebstrap bookworm ($include)" >&2
mmdebstrap \
  --mode=root \
  --variant=minbase \
  --architectures=amd64 \
  --components=main \
  --include="$include" \
  --aptopt='Acquire::Languages "none"' \
  --aptopt='APT::Install-Recommends "false"' \
  --aptopt='APT::Install-Suggests "false"' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --dpkgopt='path-exclude=/usr/share/info/*' \
  "${hooks[@]}" \
  --customize-hook="copy-in '$deb' /tmp" \
  --customize-hook="chroot \"\$1\" apt-get install -y --no-install-recommends /tmp/$(basename "$deb")" \
  --customize-hook="rm -f \"\$1/tmp/$(basename "$deb")\"" \
  --customize-hook="\"$here/customize.sh\" \"\$1\" $fs_uuid" \
  bookworm "$root" "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
  "deb http://deb.debian.org/debian-security bookworm-security main" >&2

# Manifest: what is in the image, by name=version.
chroot "$root" dpkg-query -W -f='${binary:Package}=${Version}\n' | LC_ALL=C sort >"$out/manifest.txt"

# Kernel and initrd for -kernel/-initrd boots (also inside the image under /boot).
cp "$(readlink -f "$root/vmlinuz")" "$out/vmlinuz"
cp "$(readlink -f "$root/initrd.img")" "$out/initrd.img"

"$here/normalize.sh" "$root"

echo "image/build.sh: mkfs.ext4 -d ($size)" >&2
raw=$out/berth-appliance.raw
rm -f "$raw" "$out/berth-appliance.qcow2"
mkfs.ext4 -q -F -L berth-root -U "$fs_uuid" \
  -E "hash_seed=$hash_seed,root_owner=0:0" \
  -d "$root" "$raw" "$size"

# mkfs.ext4 -d copies atime and ctime from the build tree (both set by the host when the tree
# is written and read); pin them to SOURCE_DATE_EPOCH on every inode.
(
  cd "$root"
  find . -printf '%P\n' | LC_ALL=C sort | while IFS= read -r p; do
    printf 'sif "/%s" atime @%s\nsif "/%s" ctime @%s\n' "$p" "$SOURCE_DATE_EPOCH" "$p" "$SOURCE_DATE_EPOCH"
  done
  printf 'sif /lost+found atime @%s\nsif /lost+found ctime @%s\n' "$SOURCE_DATE_EPOCH" "$SOURCE_DATE_EPOCH"
) >"$work/debugfs.cmds"
if grep -q '"/[^"]*"[^ ]' "$work/debugfs.cmds" || find "$root" -name '*"*' | grep -q .; then
  die "a path in the tree contains a double quote; debugfs cannot address it"
fi
debugfs -w -f "$work/debugfs.cmds" "$raw" >"$work/debugfs.log" 2>&1
if grep -v '^debugfs' "$work/debugfs.log" | grep -q .; then
  grep -v '^debugfs' "$work/debugfs.log" | head >&2
  die "debugfs reported errors"
fi
e2fsck -fn "$raw" >"$work/fsck.log" 2>&1 || { cat "$work/fsck.log" >&2; die "e2fsck found errors"; }

qemu-img convert -f raw -O qcow2 "$raw" "$out/berth-appliance.qcow2"
(cd "$out" && sha256sum berth-appliance.raw berth-appliance.qcow2 vmlinuz initrd.img manifest.txt >SHA256SUMS)
echo "image/build.sh: done: $out" >&2
cat "$out/SHA256SUMS"
