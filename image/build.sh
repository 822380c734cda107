#!/usr/bin/env bash
#! Builds the Berth appliance disk image (GPT: BIOS boot + ESP + ext4 root, GRUB for BIOS and
#! UEFI; raw + qcow2, kernel/initrd beside it) with mmdebstrap from Debian bookworm,
#! reproducibly. See image/README.md.
# Usage: image/build.sh OUTDIR [DEB]
#   DEB: the berth .deb to install; built with scripts/system/build-deb.sh (profile
#        BERTH_DEB_PROFILE, default deb-test) when not given.
# Env: BERTH_IMAGE_SIZE (whole disk, default 4G), BERTH_IMAGE_MIRROR (default
#      http://deb.debian.org/debian), BERTH_IMAGE_EXTRA_PACKAGES (more bookworm packages,
#      space- or comma-separated, e.g. "pebble" for test images), BERTH_IMAGE_DEB_CACHE (dir
#      keeping downloaded .debs between builds; default /var/cache/berth-image/debs; empty
#      string disables), SOURCE_DATE_EPOCH (default: the commit time of HEAD),
#      BERTH_IMAGE_KEEP_WORK=1 (keep the work dir with the tree, for debugging).
# Output in OUTDIR: berth-appliance.raw, berth-appliance.qcow2, vmlinuz, initrd.img,
#      cmdline.txt (kernel command line for -kernel boots), manifest.txt (dpkg name=version,
#      sorted), SHA256SUMS.
set -euo pipefail

die() { echo "image/build.sh: $*" >&2; exit 1; }
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: image/build.sh OUTDIR [DEB]"
[ "$(id -u)" = 0 ] || die "must run as root (mmdebstrap root mode, file ownership in the image)"
for t in mmdebstrap mkfs.ext4 debugfs qemu-img mkfs.vfat mcopy sfdisk python3; do
  command -v "$t" >/dev/null || die "missing $t (apt-get install mmdebstrap e2fsprogs qemu-utils dosfstools mtools fdisk python3)"
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

cache=${BERTH_IMAGE_DEB_CACHE-/var/cache/berth-image/debs}
# The image definition: package set, apt sources, fixed identities, kernel command line.
# shellcheck source=image/defs.sh
. "$here/defs.sh"

# The package set (defs.sh) plus BERTH_IMAGE_EXTRA_PACKAGES.
pkgs=$(berth_image_packages) || die "bad package list"
include=$(paste -sd, - <<<"$pkgs")
mapfile -t sources < <(berth_image_sources)

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-image.XXXXXX")
cleanup() {
  if [ -n "${BERTH_IMAGE_KEEP_WORK:-}" ]; then echo "image/build.sh: kept $work" >&2; else rm -rf "$work"; fi
}
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
  --customize-hook="\"$here/customize.sh\" \"\$1\"" \
  bookworm "$root" "${sources[@]}" >&2

# Manifest: what is in the image, by name=version.
chroot "$root" dpkg-query -W -f='${binary:Package}=${Version}\n' | LC_ALL=C sort >"$out/manifest.txt"

# Kernel and initrd for -kernel/-initrd boots (also inside the image under /boot).
cp "$(readlink -f "$root/vmlinuz")" "$out/vmlinuz"
cp "$(readlink -f "$root/initrd.img")" "$out/initrd.img"

printf '%s\n' "$BERTH_KERNEL_CMDLINE" >"$out/cmdline.txt"

"$here/normalize.sh" "$root"

echo "image/build.sh: assembling the disk ($(numfmt --from=iec "${BERTH_IMAGE_SIZE:=4G}") bytes)" >&2
export BERTH_IMAGE_SIZE
"$here/assemble.sh" "$root" "$out"
(cd "$out" && sha256sum berth-appliance.raw berth-appliance.qcow2 vmlinuz initrd.img cmdline.txt manifest.txt >SHA256SUMS)
echo "image/build.sh: done: $out" >&2
cat "$out/SHA256SUMS"
