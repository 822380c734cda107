#!/usr/bin/env bash
# Builds (once) a Debian bookworm tree that boots with systemd-nspawn, cached under
# ${BERTH_TEST_CACHE:-/var/cache/berth-test} and keyed by its package list, and prints its path.
# Usage: scripts/system/nspawn-tree.sh            -> prints /var/cache/berth-test/tree-<key>
set -euo pipefail
cache=${BERTH_TEST_CACHE:-/var/cache/berth-test}
# python3 + python3-apt: Ansible modules and the test backends; docker.io: the role installs it
# and the package puts `berth` into its group (dockerd itself is masked inside the tree).
pkgs=systemd-sysv,dbus,iproute2,procps,ca-certificates,curl,python3,python3-apt,docker.io,sudo
key=$(printf '%s\nv1\n' "$pkgs" | sha256sum | cut -c1-12)
tree=$cache/tree-$key
if [ -e "$tree/.complete" ]; then echo "$tree"; exit 0; fi
for t in mmdebstrap systemd-nspawn; do
  command -v $t >/dev/null || { echo "nspawn-tree: $t missing (apt-get install mmdebstrap systemd-container)" >&2; exit 1; }
done
mkdir -p "$cache"
rm -rf "$tree.tmp"
echo "nspawn-tree: building $tree (packages: $pkgs)" >&2
mmdebstrap --variant=minbase --include="$pkgs" \
  --customize-hook='chroot "$1" systemctl mask docker.service docker.socket containerd.service systemd-networkd-wait-online.service getty@.service console-getty.service' \
  --customize-hook='echo berth-test > "$1/etc/hostname"' \
  --customize-hook='rm -f "$1"/etc/machine-id && : > "$1"/etc/machine-id' \
  bookworm "$tree.tmp" >&2
touch "$tree.tmp/.complete"
mv "$tree.tmp" "$tree"
echo "$tree"
