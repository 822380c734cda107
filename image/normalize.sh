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
# Python bytecode is not reproducible (marshal output depends on reference counts); Python
# writes it again on first use.
find "$root/usr" -name __pycache__ -type d -prune -exec rm -rf {} +

# Pin every timestamp newer than SOURCE_DATE_EPOCH (files written by maintainer scripts).
find "$root" -newermt "@$SOURCE_DATE_EPOCH" -print0 | xargs -0r touch -h -d "@$SOURCE_DATE_EPOCH"
