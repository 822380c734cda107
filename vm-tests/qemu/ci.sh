#!/usr/bin/env bash
#! CI entry of the QEMU VM tests: installs what the runner needs, builds the Berth .deb and the
#! appliance image (or reuses a cached image built from the same image/ scripts and the same
#! .deb), then boots it once and runs all three scenarios with vm-tests/qemu/run.sh.
# Usage: vm-tests/qemu/ci.sh            (root; BERTH_SYSTEM_TESTS=1 is expected but not checked)
# Env: BERTH_DEB_PROFILE (default dev: reuses `cargo test`'s binaries like test-systemd.sh, so
#      CI compiles nothing more; all three scenarios passed with it under TCG in 245 s of VM
#      time; deb-test: optimised, a separate ~15-35 min build here),
#      BERTH_VM_IMAGE_CACHE (default /var/cache/berth-vmtest; empty: always build in a temp dir),
#      BERTH_VM_ARTIFACTS (default target/vm-tests/<UTC time>), BERTH_VM_SCENARIO (default all).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
cd "$repo"
export PATH="$HOME/.cargo/bin:$PATH"
[ "$(id -u)" = 0 ] || { echo "vm-tests/qemu/ci.sh: must run as root (image build)" >&2; exit 1; }
start=$(date +%s)
step() { echo "== vm-tests: $* ($(( $(date +%s) - start ))s)" >&2; }

# Packages: the runner (qemu from bookworm-backports, see ENVIRONMENT.md; mtools/dosfstools for
# the cloud-init seed; pebble; busybox for the test app image) and the image build.
missing=()
for p in mtools dosfstools mmdebstrap e2fsprogs pebble busybox-static openssl openssh-client curl; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
bpo=()
command -v qemu-system-x86_64 >/dev/null || bpo+=(qemu-system-x86)
command -v qemu-img >/dev/null || bpo+=(qemu-utils)
if [ ${#bpo[@]} -gt 0 ]; then
  step "installing ${bpo[*]} from bookworm-backports"
  echo 'deb http://deb.debian.org/debian bookworm-backports main' >/etc/apt/sources.list.d/bpo.list
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -t bookworm-backports "${bpo[@]}" >/dev/null
fi


step "building the .deb (profile ${BERTH_DEB_PROFILE:-dev})"
debdir=$(mktemp -d /var/tmp/berth-vmtest-deb.XXXXXX)
trap 'rm -rf "$debdir"' EXIT
deb=$(BERTH_DEB_PROFILE=${BERTH_DEB_PROFILE:-dev} scripts/system/build-deb.sh "$debdir")
[ -f "$deb" ] || { echo "vm-tests/qemu/ci.sh: build-deb.sh printed no package ($deb)" >&2; exit 1; }
# The host CLI is the one from the same package.
dpkg-deb -x "$deb" "$debdir/root"
berth=$debdir/root/usr/bin/berth

# Image cache key: the image scripts and the exact .deb. Anything else that goes into the image
# comes from the Debian mirror at build time and is listed in the cached image's manifest.txt.
key=$( (cd image && sha256sum ./*.sh; sha256sum <"$deb") | sha256sum | cut -c1-16)
cache=${BERTH_VM_IMAGE_CACHE-/var/cache/berth-vmtest}
if [ -n "$cache" ]; then
  img=$cache/image-$key
else
  img=$debdir/image
fi
if [ -f "$img/SHA256SUMS" ] && (cd "$img" && sha256sum -c --quiet SHA256SUMS); then
  step "reusing the cached image $img (manifest $(sha256sum <"$img/manifest.txt" | cut -c1-12))"
else
  step "building the appliance image into $img"
  rm -rf "$img"
  if [ -n "$cache" ]; then
    # Keep only the newest image: each is ~1 GiB (qcow2) + a sparse 4 GiB raw.
    find "$cache" -mindepth 1 -maxdepth 1 -name 'image-*' -exec rm -rf {} + 2>/dev/null || true
  fi
  image/build.sh "$img" "$deb" >"$debdir/image-build.log" 2>&1 \
    || { tail -40 "$debdir/image-build.log" >&2; echo "vm-tests/qemu/ci.sh: image build failed" >&2; exit 1; }
  step "image built"
fi

art=${BERTH_VM_ARTIFACTS:-$repo/target/vm-tests/$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$art"
[ -f "$debdir/image-build.log" ] && cp "$debdir/image-build.log" "$art/"
step "booting the image and running the scenarios (artefacts: $art)"
rc=0
"$here/run.sh" --image "$img" --scenario "${BERTH_VM_SCENARIO:-all}" --artifacts "$art" --berth "$berth" || rc=$?
step "done (exit $rc)"
exit "$rc"
