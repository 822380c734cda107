#!/usr/bin/env bash
#! mmdebstrap customize hook for the Berth appliance: fstab, network, units enabled, the
#! first-boot token unit, SSH host keys at first boot, the GRUB menu. Runs outside the chroot.
# Usage: customize.sh ROOT
set -euo pipefail
root=$1
# shellcheck source=image/defs.sh
. "$(dirname "$0")/defs.sh"
fs_uuid=$BERTH_ROOT_FS_UUID

echo berth >"$root/etc/hostname"
cat >"$root/etc/hosts" <<'EOF'
127.0.0.1	localhost
127.0.1.1	berth
::1	localhost ip6-localhost ip6-loopback
EOF
cat >"$root/etc/fstab" <<EOF
# The appliance's root filesystem (partition 3; the kernel command line says root=UUID=... ro).
UUID=$fs_uuid	/	ext4	defaults,errors=remount-ro	0	1
EOF

# Boot menu, read by the GRUB core images that image/assemble.sh builds (BIOS and UEFI both
# embed: search --fs-uuid for this filesystem, then configfile /boot/grub/berth.cfg). It boots
# the /vmlinuz and /initrd.img links that the kernel packages keep current, so kernel updates
# inside the machine need no boot loader step; update-grub is not installed and would not
# touch this file.
mkdir -p "$root/boot/grub"
cat >"$root/boot/grub/berth.cfg" <<EOF
# Berth appliance boot menu (image/customize.sh). Serial console first, then the screen.
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=2
set default=0
menuentry 'Berth appliance' {
	linux /vmlinuz $BERTH_KERNEL_CMDLINE
	initrd /initrd.img
}
menuentry 'Berth appliance (previous kernel)' {
	linux /vmlinuz.old $BERTH_KERNEL_CMDLINE
	initrd /initrd.img.old
}
EOF

# Network: DHCP on every Ethernet interface (cloud-init writes its own, earlier-sorting
# networkd files on providers that give it a network configuration).
mkdir -p "$root/etc/systemd/network"
cat >"$root/etc/systemd/network/99-berth-dhcp.network" <<'EOF'
[Match]
Name=en* eth*

[Network]
DHCP=yes
EOF

# cloud-init: the image has no locales package, so its default locale (en_US.UTF-8) cannot be
# set (cc_locale fails and cloud-init reports an error); the system locale is C.UTF-8, which
# glibc always has.
echo 'LANG=C.UTF-8' >"$root/etc/default/locale"
mkdir -p "$root/etc/cloud/cloud.cfg.d"
cat >"$root/etc/cloud/cloud.cfg.d/90-berth.cfg" <<'EOF'
# Berth appliance (image/customize.sh): no locales package; keep /etc/default/locale (C.UTF-8).
locale: false
EOF
# No VPS has a floppy drive; probing QEMU's empty one costs time and logs I/O errors.
mkdir -p "$root/etc/modprobe.d"
echo 'blacklist floppy' >"$root/etc/modprobe.d/berth-no-floppy.conf"

# SSH host keys are made on the machine at first boot, never at build time.
cat >"$root/etc/systemd/system/berth-ssh-hostkeys.service" <<'EOF'
[Unit]
Description=Generate SSH host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key

[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A

[Install]
WantedBy=ssh.service
EOF

# First boot: `berthd init` as the berth user creates the data dir's first API token; the
# `berth server add ...` line is kept in /var/lib/berth/first-boot-token (0600, root) and
# written to the console (the serial console with console=ttyS0), not to the journal.
mkdir -p "$root/usr/lib/berth"
cat >"$root/usr/lib/berth/first-boot" <<'EOF'
#!/bin/sh
# Runs once (berth-first-boot.service): create the first Berth API token.
set -eu
token_file=/var/lib/berth/first-boot-token
install -d -o berth -g berth -m 0700 /var/lib/berth
umask 077
line=$(runuser -u berth -- /usr/bin/berthd init --server-name "$(hostname)")
case "$line" in
*--token\ *) ;;
*) echo "berth-first-boot: berthd init printed no token (an init token exists already?)" >&2
   exit 1 ;;
esac
printf '%s\n' "$line" >"$token_file.tmp"
chmod 0600 "$token_file.tmp"
mv "$token_file.tmp" "$token_file"
token=${line##*--token }
printf '\nberth-first-boot: Berth API token (also in %s):\nBERTH_FIRST_BOOT_TOKEN=%s\nberth-first-boot: on your laptop: %s\n\n' \
  "$token_file" "$token" "$line" >/dev/console
echo "berth-first-boot: token written to $token_file"
EOF
chmod 0755 "$root/usr/lib/berth/first-boot"
cat >"$root/etc/systemd/system/berth-first-boot.service" <<'EOF'
[Unit]
Description=Create the first Berth API token
After=local-fs.target
# Before the gettys: agetty flushes the serial tty when it starts, which was seen to eat the
# end of the token line on the console.
Before=berthd.service multi-user.target getty.target serial-getty@ttyS0.service
ConditionPathExists=!/var/lib/berth/first-boot-token

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/lib/berth/first-boot
# Errors (never the token, which goes to /dev/console only) also on the console.
StandardError=journal+console

[Install]
WantedBy=multi-user.target
EOF

chroot "$root" systemctl enable \
  berth-first-boot.service berth-ssh-hostkeys.service \
  berthd.socket berthd-https.socket berthd-api.socket berthd.service \
  docker.service systemd-networkd.service systemd-resolved.service ssh.service
# resolv.conf via systemd-resolved's stub (a dangling link in the build tree is fine).
ln -sf ../run/systemd/resolve/stub-resolv.conf "$root/etc/resolv.conf"
