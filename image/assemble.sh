#!/usr/bin/env bash
#! Turns a normalized appliance tree into a bootable GPT disk image, reproducibly and without
#! loop devices: ext4 root (mkfs.ext4 -d), FAT ESP (mkfs.vfat + mtools), GRUB for UEFI
#! (EFI/BOOT/BOOTX64.EFI) and legacy BIOS (boot.img in the MBR, core.img in a BIOS boot
#! partition), partitions laid out by sfdisk and written with dd at fixed offsets.
# Usage: image/assemble.sh ROOT OUTDIR   (called by image/build.sh; ROOT already normalized)
# Env (set by build.sh): SOURCE_DATE_EPOCH, BERTH_IMAGE_SIZE (whole disk, default 4G).
# Writes OUTDIR/berth-appliance.raw and OUTDIR/berth-appliance.qcow2.
# GRUB images are made by the grub-mkimage INSIDE the tree (grub-pc-bin, grub-efi-amd64-bin are
# in the image's package set), so manifest.txt names the boot loader's version too.
set -euo pipefail
die() { echo "image/assemble.sh: $*" >&2; exit 1; }
[ $# = 2 ] || die "usage: image/assemble.sh ROOT OUTDIR"
root=$(cd "$1" && pwd)
out=$(cd "$2" && pwd)
: "${SOURCE_DATE_EPOCH:?}"
export E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH TZ=UTC LC_ALL=C.UTF-8
for t in mkfs.ext4 debugfs e2fsck mkfs.vfat mcopy sfdisk qemu-img python3; do
  command -v "$t" >/dev/null || die "missing $t (apt-get install e2fsprogs dosfstools mtools fdisk qemu-utils python3)"
done
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=image/defs.sh
. "$here/defs.sh"

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-assemble.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- Disk geometry (512-byte sectors, 1 MiB aligned) ------------------------------------------
disk_bytes=$(numfmt --from=iec "${BERTH_IMAGE_SIZE:-4G}")
mib=$((1024 * 1024))
[ $((disk_bytes % mib)) = 0 ] || die "BERTH_IMAGE_SIZE must be a whole number of MiB"
disk_mib=$((disk_bytes / mib))
bios_start_mib=1 bios_mib=1
esp_start_mib=2 esp_mib=64
root_start_mib=66
root_mib=$((disk_mib - root_start_mib - 1))   # the last MiB keeps the backup GPT
[ "$root_mib" -ge 1024 ] || die "BERTH_IMAGE_SIZE too small (need at least 1091M)"
s() { echo $(($1 * 2048)); }                    # MiB -> sectors

# --- GRUB core images, made by the tree's own grub-mkimage -------------------------------------
# The embedded (early) config finds the root filesystem by UUID and reads the menu that
# customize.sh wrote to /boot/grub/berth.cfg. Every module the menu needs is built in, so a
# later grub package upgrade inside the machine cannot mismatch the core image.
cat >"$root/tmp/berth-early.cfg" <<EOF
search --no-floppy --fs-uuid --set=root $BERTH_ROOT_FS_UUID
set prefix=(\$root)/boot/grub
configfile (\$root)/boot/grub/berth.cfg
EOF
mods_common="part_gpt part_msdos ext2 fat search search_fs_uuid configfile normal linux echo
  serial terminal test gzio cat ls reboot halt minicmd sleep"
# shellcheck disable=SC2086
chroot "$root" grub-mkimage -O i386-pc -o /tmp/berth-core.img -c /tmp/berth-early.cfg \
  -p /boot/grub biosdisk $mods_common
# shellcheck disable=SC2086
chroot "$root" grub-mkimage -O x86_64-efi -o /tmp/berth-bootx64.efi -c /tmp/berth-early.cfg \
  -p /boot/grub efi_gop efi_uga $mods_common
cp "$root/usr/lib/grub/i386-pc/boot.img" "$work/boot.img"
mv "$root/tmp/berth-core.img" "$root/tmp/berth-bootx64.efi" "$work/"
rm -f "$root/tmp/berth-early.cfg"
touch -d "@$SOURCE_DATE_EPOCH" "$root/tmp"     # normalize.sh pinned it; keep it pinned
core_bytes=$(stat -c %s "$work/berth-core.img")
[ "$core_bytes" -le $((bios_mib * mib)) ] || die "core.img ($core_bytes bytes) exceeds the BIOS boot partition"

# --- ESP: FAT with a fixed volume id, files copied with their (pinned) mtimes ------------------
mkdir -p "$work/esp/EFI/BOOT"
cp "$work/berth-bootx64.efi" "$work/esp/EFI/BOOT/BOOTX64.EFI"
find "$work/esp" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
mkfs.vfat --invariant -i "$BERTH_ESP_VOLUME_ID" -n BERTH-ESP -C "$work/esp.img" $((esp_mib * 1024)) >/dev/null
mcopy -s -m -i "$work/esp.img" "$work/esp/EFI" ::/

# --- Root filesystem ----------------------------------------------------------------------------
mkfs.ext4 -q -F -L berth-root -U "$BERTH_ROOT_FS_UUID" \
  -E "hash_seed=$BERTH_ROOT_HASH_SEED,root_owner=0:0" \
  -d "$root" "$work/root.ext4" "${root_mib}M"
# mkfs.ext4 -d copies atime and ctime from the build tree (both set by the host when the tree
# is written and read); pin them to SOURCE_DATE_EPOCH on every inode.
(
  cd "$root"
  find . -printf '%P\n' | LC_ALL=C sort | while IFS= read -r p; do
    printf 'sif "/%s" atime @%s\nsif "/%s" ctime @%s\n' "$p" "$SOURCE_DATE_EPOCH" "$p" "$SOURCE_DATE_EPOCH"
  done
  printf 'sif /lost+found atime @%s\nsif /lost+found ctime @%s\n' "$SOURCE_DATE_EPOCH" "$SOURCE_DATE_EPOCH"
) >"$work/debugfs.cmds"
if find "$root" -name '*"*' | grep -q .; then
  die "a path in the tree contains a double quote; debugfs cannot address it"
fi
debugfs -w -f "$work/debugfs.cmds" "$work/root.ext4" >"$work/debugfs.log" 2>&1
if grep -v '^debugfs' "$work/debugfs.log" | grep -q .; then
  grep -v '^debugfs' "$work/debugfs.log" | head >&2
  die "debugfs reported errors"
fi
e2fsck -fn "$work/root.ext4" >"$work/fsck.log" 2>&1 || { cat "$work/fsck.log" >&2; die "e2fsck found errors"; }

# --- Disk: GPT with fixed GUIDs, partitions written at their offsets --------------------------
raw=$out/berth-appliance.raw
rm -f "$raw" "$out/berth-appliance.qcow2"
truncate -s "$disk_bytes" "$raw"
sfdisk --quiet --no-reread --no-tell-kernel "$raw" >/dev/null <<EOF
label: gpt
label-id: $BERTH_DISK_GUID
unit: sectors
first-lba: 2048
start=$(s $bios_start_mib), size=$(s $bios_mib), type=21686148-6449-6E6F-744E-656564454649, uuid=$BERTH_BIOS_PART_GUID, name="bios-boot"
start=$(s $esp_start_mib), size=$(s $esp_mib), type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, uuid=$BERTH_ESP_PART_GUID, name="esp"
start=$(s $root_start_mib), size=$(s $root_mib), type=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709, uuid=$BERTH_ROOT_PART_GUID, name="berth-root"
EOF
dd if="$work/esp.img" of="$raw" bs=1M seek=$esp_start_mib conv=notrunc,sparse status=none
dd if="$work/root.ext4" of="$raw" bs=4M oflag=seek_bytes seek=$((root_start_mib * mib)) conv=notrunc,sparse status=none

# Legacy BIOS: what grub-bios-setup does for a core image embedded in a BIOS boot partition,
# done on the file. boot.img (MBR code, 440 bytes + the drive-check bytes) learns the LBA of
# core.img; core.img's first sector (diskboot) gets one blocklist covering the rest of it.
python3 - "$raw" "$work/boot.img" "$work/berth-core.img" "$(s $bios_start_mib)" <<'PY'
import struct, sys
raw, boot_path, core_path, core_lba = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
SECTOR = 512
boot = bytearray(open(boot_path, "rb").read())
core = bytearray(open(core_path, "rb").read())
assert len(boot) == SECTOR, "boot.img is not one sector"
core += b"\0" * (-len(core) % SECTOR)
nsec = len(core) // SECTOR
with open(raw, "r+b") as f:
    mbr = bytearray(f.read(SECTOR))
    # Keep sfdisk's protective MBR: BPB area (0x03..0x5a) and the partition table with the
    # disk signature (0x1b8..0x1fe).
    boot[0x03:0x5a] = mbr[0x03:0x5a]
    boot[0x1b8:0x1fe] = mbr[0x1b8:0x1fe]
    struct.pack_into("<Q", boot, 0x5c, core_lba)  # GRUB_BOOT_MACHINE_KERNEL_SECTOR
    boot[0x64] = 0xFF                              # boot drive: the one the BIOS booted
    boot[0x66:0x68] = b"\x90\x90"                 # hard disk: skip the floppy drive check
    # Blocklists grow down from the end of diskboot's sector: clear them, then one entry
    # (start, length, load segment) for sectors 1..n-1 of core.img, then a zero terminator.
    blk = SECTOR - 12
    while struct.unpack_from("<H", core, blk + 8)[0] != 0:
        core[blk:blk + 12] = b"\0" * 12
        blk -= 12
        assert blk > 0, "no terminator in core.img"
    struct.pack_into("<QHH", core, SECTOR - 12, core_lba + 1, nsec - 1, 0x820)
    struct.pack_into("<QHH", core, SECTOR - 24, 0, 0, 0)
    f.seek(0); f.write(boot)
    f.seek(core_lba * SECTOR); f.write(core)
PY
sfdisk --verify "$raw" >"$work/verify.log" 2>&1 || { cat "$work/verify.log" >&2; die "sfdisk --verify failed"; }

qemu-img convert -f raw -O qcow2 "$raw" "$out/berth-appliance.qcow2"
