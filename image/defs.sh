# shellcheck shell=bash
#! The appliance image's definition, sourced by build.sh, customize.sh, assemble.sh and
#! build-cached.sh: fixed identities, kernel command line, package set, apt sources.
#! Identities are fixed so two builds are byte-identical; every flashed machine shares them
#! (as with any cloud image).
BERTH_ROOT_FS_UUID=6d3e7b1a-4f0c-4c55-9b7e-2b9e1a0b3e71    # ext4 root filesystem
BERTH_ROOT_HASH_SEED=0b7f3c9e-1d2a-4e8b-a6c4-5f1e2d3c4b5a  # ext4 directory hash seed
BERTH_ESP_VOLUME_ID=4245524e                              # FAT volume id of the ESP (4245-524E)
BERTH_DISK_GUID=02bac05e-3654-4e78-bf24-2bad9464f62c        # GPT disk GUID
BERTH_BIOS_PART_GUID=273a2f07-7ad9-4a49-8686-0c24c16470d6   # partition 1: BIOS boot (core.img)
BERTH_ESP_PART_GUID=d5340e28-3b69-468d-968b-9f2c5a134dee    # partition 2: EFI system partition
BERTH_ROOT_PART_GUID=a422503d-8da7-44f9-a1ab-d74564635436   # partition 3: root (ext4)
# Kernel command line (GRUB menu and direct -kernel boots). apparmor=0: Docker under TCG here
# needs it (the image has no apparmor package); console=ttyS0 last, so /dev/console is serial.
BERTH_KERNEL_CMDLINE="root=UUID=$BERTH_ROOT_FS_UUID ro console=tty0 console=ttyS0,115200n8 apparmor=0"

# The package set: sorted, no versions (they come from the mirror at build time and are
# recorded in manifest.txt). grub-pc-bin/grub-efi-amd64-bin: assemble.sh builds the boot
# loader with the tree's own grub-mkimage. cloud-guest-utils: growpart, so cloud-init grows
# the root partition to the provider's disk size. The Berth .deb comes on top (build.sh).
BERTH_IMAGE_PACKAGES=(
  ca-certificates
  cloud-guest-utils
  cloud-init
  dbus
  docker.io
  grub-efi-amd64-bin
  grub-pc-bin
  initramfs-tools
  iproute2
  linux-image-amd64
  openssh-server
  systemd-resolved
  systemd-sysv
  udev
)
# berth_image_packages: the package set plus BERTH_IMAGE_EXTRA_PACKAGES (space- or
# comma-separated, validated), sorted and unique, one per line.
berth_image_packages() {
  local p extra=()
  for p in $(echo "${BERTH_IMAGE_EXTRA_PACKAGES:-}" | tr ',' ' '); do
    [[ "$p" =~ ^[a-z0-9][a-z0-9+.-]+$ ]] || { echo "BERTH_IMAGE_EXTRA_PACKAGES: not a package name: $p" >&2; return 1; }
    extra+=("$p")
  done
  printf '%s\n' "${BERTH_IMAGE_PACKAGES[@]}" "${extra[@]}" | LC_ALL=C sort -u
}
# berth_image_sources: the apt sources, one "deb URI SUITE COMPONENT" line each.
berth_image_sources() {
  local mirror=${BERTH_IMAGE_MIRROR:-http://deb.debian.org/debian}
  printf '%s\n' "deb $mirror bookworm main" "deb $mirror bookworm-updates main" \
    "deb http://deb.debian.org/debian-security bookworm-security main"
}
