#!/usr/bin/env bash
#! Boots a built appliance image under QEMU (TCG) from its own disk (BIOS/SeaBIOS or UEFI/OVMF,
#! no -kernel) on a throwaway qcow2 overlay, with a NoCloud seed drive carrying an SSH key and
#! user-data, and checks the first boot end to end; then powers the guest off. Exits non-zero
#! on any failure or timeout and prints the time of each milestone.
# Usage: image/boot-smoke.sh IMAGEDIR   (the OUTDIR of image/build.sh)
# Env: BERTH_SMOKE_BOOT  bios (default: SeaBIOS -> GRUB in the MBR/BIOS boot partition), uefi
#                        (OVMF -> EFI/BOOT/BOOTX64.EFI), kernel (-kernel/-initrd/cmdline.txt)
#      BERTH_SMOKE_DISK_IF  virtio (default) or ide
#      BERTH_SMOKE_TIMEOUT  seconds for the whole boot + checks (default 900)
#      BERTH_SMOKE_GROW     overlay size, to check that cloud-init grows the root (default 6G)
# Checks: boot loader menu on the serial console (bios/uefi); BERTH_FIRST_BOOT_TOKEN= on the
# console; berthd answers HTTP on guest :80 (socket-activated, forwarded to a host port);
# SSH as root with the key from the seed's user-data; over SSH: cloud-init finished without
# errors and ran our runcmd, the root partition was grown, docker.service active and dockerd
# answering, the three berthd sockets + berthd.service active, berth-first-boot.service
# succeeded, /var/lib/berth/first-boot-token is 0600 root and holds the console's token; over
# an SSH tunnel to the guest's loopback API: /healthz 200, /v1/routes 401 without the token and
# 200 with it. Finally ACPI power-off within 90 s.
set -euo pipefail
die() { echo "boot-smoke: FAIL: $*" >&2; exit 1; }
[ $# = 1 ] || die "usage: image/boot-smoke.sh IMAGEDIR"
dir=$(cd "$1" && pwd)
boot=${BERTH_SMOKE_BOOT:-bios}
disk_if=${BERTH_SMOKE_DISK_IF:-virtio}
timeout_s=${BERTH_SMOKE_TIMEOUT:-900}
grow=${BERTH_SMOKE_GROW:-6G}
case "$boot" in bios|uefi|kernel) ;; *) die "BERTH_SMOKE_BOOT must be bios, uefi or kernel" ;; esac
case "$disk_if" in virtio|ide) ;; *) die "BERTH_SMOKE_DISK_IF must be virtio or ide" ;; esac
for f in berth-appliance.qcow2 vmlinuz initrd.img cmdline.txt; do [ -f "$dir/$f" ] || die "missing $dir/$f"; done
for t in qemu-system-x86_64 qemu-img mkfs.vfat mcopy ssh ssh-keygen curl python3; do
  command -v "$t" >/dev/null || die "missing $t"
done
ovmf_code=/usr/share/OVMF/OVMF_CODE_4M.fd ovmf_vars=/usr/share/OVMF/OVMF_VARS_4M.fd
if [ "$boot" = uefi ]; then
  [ -f "$ovmf_code" ] && [ -f "$ovmf_vars" ] || die "missing $ovmf_code (apt-get install ovmf)"
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-smoke.XXXXXX")
qpid= tpid=
qmp() { # qmp COMMAND: one QMP command to the guest's QEMU
  python3 - "$work/qmp" "$1" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX); s.settimeout(5); s.connect(sys.argv[1])
f = s.makefile("rw")
f.readline()
for cmd in ("qmp_capabilities", sys.argv[2]):
    f.write(json.dumps({"execute": cmd}) + "\n"); f.flush(); f.readline()
PY
}
cleanup() {
  [ -n "$tpid" ] && kill "$tpid" 2>/dev/null || true
  if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
    qmp quit >/dev/null 2>&1 || kill "$qpid" 2>/dev/null || true
    wait "$qpid" 2>/dev/null || true
  fi
  # Keep the console for the post-mortem.
  [ -f "$work/console.log" ] && cp "$work/console.log" "$dir/boot-smoke-console.log"
  rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port=$(free_port) ssh_port=$(free_port) api_port=$(free_port)

# The image stays untouched: the guest writes to an overlay, larger than the image so that
# cloud-init's growpart/resizefs have something to do.
qemu-img create -q -f qcow2 -F qcow2 -b "$dir/berth-appliance.qcow2" "$work/overlay.qcow2" "$grow"
img_bytes=$(qemu-img info --output=json "$dir/berth-appliance.qcow2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')

# NoCloud seed: a FAT drive labelled CIDATA with meta-data and user-data (root's SSH key, a
# runcmd marker). Debian's sshd allows root with a key (prohibit-password).
ssh-keygen -q -t ed25519 -N '' -f "$work/id" -C berth-smoke
mkdir "$work/seed"
printf 'instance-id: berth-smoke-1\nlocal-hostname: berth-smoke\n' >"$work/seed/meta-data"
cat >"$work/seed/user-data" <<EOF
#cloud-config
disable_root: false
ssh_authorized_keys:
  - $(cat "$work/id.pub")
runcmd:
  - [sh, -c, "echo berth-smoke-user-data-ran > /run/berth-smoke-user-data"]
EOF
mkfs.vfat -n CIDATA -C "$work/seed.img" 2048 >/dev/null
mcopy -i "$work/seed.img" "$work/seed/meta-data" "$work/seed/user-data" ::/

qemu_args=(-accel tcg -m 2048 -smp 2 -no-reboot
  -drive "file=$work/overlay.qcow2,if=$disk_if,format=qcow2"
  -drive "file=$work/seed.img,if=$disk_if,format=raw,readonly=on"
  -nic "user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:$http_port-:80,hostfwd=tcp:127.0.0.1:$ssh_port-:22"
  -qmp "unix:$work/qmp,server=on,wait=off"
  -serial "file:$work/console.log" -monitor none -display none)
case "$boot" in
  uefi)
    cp "$ovmf_vars" "$work/vars.fd"
    qemu_args+=(-drive "if=pflash,format=raw,unit=0,readonly=on,file=$ovmf_code"
                -drive "if=pflash,format=raw,unit=1,file=$work/vars.fd") ;;
  kernel)
    qemu_args+=(-kernel "$dir/vmlinuz" -initrd "$dir/initrd.img" -append "$(cat "$dir/cmdline.txt") panic=-1") ;;
esac

start=$(date +%s)
el() { echo $(( $(date +%s) - start )); }
qemu-system-x86_64 "${qemu_args[@]}" </dev/null >"$work/qemu.out" 2>&1 &
qpid=$!
echo "boot-smoke: boot=$boot disk=$disk_if qemu pid $qpid; guest :80 -> 127.0.0.1:$http_port, :22 -> 127.0.0.1:$ssh_port"
deadline=$(( start + timeout_s ))
alive() {
  kill -0 "$qpid" 2>/dev/null && return 0
  cat "$work/qemu.out" >&2; tail -n 40 "$work/console.log" >&2; die "qemu exited"
}
console_has() { grep -aq -- "$1" "$work/console.log" 2>/dev/null; }
sshg() {
  ssh -i "$work/id" -p "$ssh_port" -o BatchMode=yes -o StrictHostKeyChecking=no \
    -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=30 root@127.0.0.1 "$@"
}

loader= kernel= token= http= sshok=
while :; do
  [ "$(date +%s)" -lt "$deadline" ] || {
    tail -n 60 "$work/console.log" >&2
    die "timeout after ${timeout_s}s (loader: ${loader:-no}, kernel: ${kernel:-no}, token: ${token:+yes}, http: ${http:-no}, ssh: ${sshok:-no})"
  }
  alive
  if console_has 'Failed to start.*[Bb]erth'; then
    grep -a -i 'berth' "$work/console.log" | tail -n 20 >&2
    die "a berth unit failed to start (console: $dir/boot-smoke-console.log)"
  fi
  if [ -z "$loader" ] && [ "$boot" != kernel ] && console_has "Booting \`Berth appliance'"; then
    loader=$(el); echo "boot-smoke: GRUB booted the menu entry after ${loader} s"
  fi
  if [ -z "$kernel" ] && console_has 'Linux version'; then
    kernel=$(el); echo "boot-smoke: kernel started after ${kernel} s"
  fi
  if [ -z "$token" ] && console_has 'BERTH_FIRST_BOOT_TOKEN='; then
    token=$(grep -ao 'BERTH_FIRST_BOOT_TOKEN=[^[:space:]]*' "$work/console.log" | head -n1 | cut -d= -f2-)
    echo "boot-smoke: first-boot token on the console after $(el) s"
  fi
  if [ -z "$http" ]; then
    # Any HTTP answer from berthd (404 for an unrouted host): the socket-activated proxy is up.
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 10 "http://127.0.0.1:$http_port/" 2>/dev/null || true)
    if [ -n "$code" ] && [ "$code" != 000 ]; then
      http=$code; echo "boot-smoke: berthd answered HTTP $code on guest :80 after $(el) s"
    fi
  fi
  if [ -z "$sshok" ] && sshg true 2>/dev/null; then
    sshok=$(el); echo "boot-smoke: SSH as root with the seed's key after ${sshok} s"
  fi
  [ -n "$token" ] && [ -n "$http" ] && [ -n "$sshok" ] && break
  sleep 3
done
[ "$boot" = kernel ] || [ -n "$loader" ] || die "no GRUB 'Booting \`Berth appliance'' line on the console"
[ "${#token}" -ge 16 ] || die "token too short: $token"

# Inside the guest: wait for cloud-init (bounded), then report facts as key=value lines.
remaining=$(( deadline - $(date +%s) ))
[ "$remaining" -gt 30 ] || die "no time left for the checks"
# Retried: on a saturated host the guest's sshd can miss even a 30 s banner timeout.
: >"$work/facts"
for attempt in 1 2 3; do
  remaining=$(( deadline - $(date +%s) ))
  [ "$remaining" -gt 30 ] || break
  sshg "timeout $((remaining - 20)) cloud-init status --wait >/dev/null 2>&1; sh -s" >"$work/facts" 2>"$work/facts.err" <<'EOF' || true
echo "cloudinit=$(cloud-init status 2>/dev/null | sed -n 's/^status: //p')"
echo "cloudinit_enabled=$(systemctl is-enabled cloud-init.service 2>/dev/null)"
echo "userdata=$(cat /run/berth-smoke-user-data 2>/dev/null)"
echo "root_bytes=$(df -B1 --output=size / | tail -n1 | tr -d ' ')"
echo "root_source=$(findmnt -no SOURCE /)"
for u in docker.service berthd.socket berthd-https.socket berthd-api.socket berthd.service ssh.service; do
  echo "active_$u=$(systemctl is-active "$u")"
done
echo "docker_server=$(docker version --format '{{.Server.Version}}' 2>/dev/null)"
echo "firstboot=$(systemctl show -p Result --value berth-first-boot.service)/$(systemctl show -p ExecMainStatus --value berth-first-boot.service)"
echo "token_file=$(stat -c '%a %U' /var/lib/berth/first-boot-token 2>/dev/null)"
echo "token_line=$(cat /var/lib/berth/first-boot-token 2>/dev/null)"
echo "failed_units=$(systemctl list-units --state=failed --no-legend --plain | awk '{print $1}' | tr '\n' ' ')"
echo "system=$(systemctl is-system-running)"
EOF
  grep -q '^system=' "$work/facts" && break
  echo "boot-smoke: fact collection over SSH failed (attempt $attempt): $(tr '\n' ' ' <"$work/facts.err")"
done
sed 's/^token_line=.*--token .*/token_line=(hidden)/; s/^/boot-smoke: guest: /' "$work/facts"
fact() { sed -n "s/^$1=//p" "$work/facts" | head -n1; }
fails=()
check() { # check NAME ACTUAL EXPECTED-REGEX
  if [[ "$2" =~ ^$3$ ]]; then echo "boot-smoke: ok   $1"; else echo "boot-smoke: FAIL $1: got '$2', want /$3/" >&2; fails+=("$1"); fi
}
check "cloud-init finished without errors" "$(fact cloudinit)" 'done'
check "cloud-init enabled" "$(fact cloudinit_enabled)" 'enabled'
check "user-data runcmd ran" "$(fact userdata)" 'berth-smoke-user-data-ran'
root_bytes=$(fact root_bytes)
check "root filesystem grown past the image size" "$(( ${root_bytes:-0} > img_bytes ))" 1
for u in docker.service berthd.socket berthd-https.socket berthd-api.socket berthd.service ssh.service; do
  check "$u active" "$(fact "active_$u")" active
done
check "dockerd answers" "$(fact docker_server)" '[0-9]+\..*'
check "berth-first-boot.service succeeded" "$(fact firstboot)" 'success/0'
check "token file 0600 root" "$(fact token_file)" '600 root'
line=$(fact token_line)
check "token file holds the console's token" "$([ "${line##*--token }" = "$token" ] && echo same || echo different)" same
check "no failed units" "$(fact failed_units)" ' *'

# The API listens on the guest's loopback: reach it through an SSH tunnel.
ssh_opts=(-i "$work/id" -p "$ssh_port" -o BatchMode=yes -o StrictHostKeyChecking=no
  -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -o ConnectTimeout=30)
ssh "${ssh_opts[@]}" -N -L "127.0.0.1:$api_port:127.0.0.1:9922" root@127.0.0.1 &
tpid=$!                                  # ssh itself (not a subshell), so kill ends the tunnel
for _ in $(seq 1 20); do curl -s -o /dev/null --max-time 5 "http://127.0.0.1:$api_port/healthz" && break; sleep 1; done
api() { curl -s -o /dev/null -w '%{http_code}' --max-time 10 "$@" || true; }
check "API /healthz" "$(api "http://127.0.0.1:$api_port/healthz")" 200
check "API /v1/routes without token" "$(api "http://127.0.0.1:$api_port/v1/routes")" 401
check "API /v1/routes with the first-boot token" "$(api -H "Authorization: Bearer $token" "http://127.0.0.1:$api_port/v1/routes")" 200
kill "$tpid" 2>/dev/null || true; wait "$tpid" 2>/dev/null || true; tpid=
if [ ${#fails[@]} != 0 ]; then
  cat "$work/facts.err" >&2
  # What went wrong inside: failed units, cloud-init's own report, errors in the journal.
  sshg 'systemctl --failed --no-pager; cloud-init status --long; journalctl -b -p err --no-pager | tail -n 40' 2>&1 \
    | sed 's/^/boot-smoke: guest diag: /' >&2 || true
  die "${#fails[@]} check(s) failed: ${fails[*]}"
fi
checked=$(el)

# ACPI power button: the guest shuts down cleanly and QEMU exits (-no-reboot).
t0=$(date +%s)
qmp system_powerdown || die "QMP system_powerdown failed"
for _ in $(seq 1 90); do kill -0 "$qpid" 2>/dev/null || break; sleep 1; done
if kill -0 "$qpid" 2>/dev/null; then tail -n 20 "$work/console.log" >&2; die "guest did not power off within 90 s"; fi
wait "$qpid" || true; qpid=
echo "boot-smoke: timings (s since qemu start): loader ${loader:--} kernel ${kernel:--} ssh $sshok checks-done $checked; power-off took $(( $(date +%s) - t0 )) s"
echo "boot-smoke: OK ($boot, $(el) s)"
