#!/usr/bin/env bash
#! Boots a built appliance image under QEMU (TCG) on a throwaway qcow2 overlay, waits for the
#! first-boot token on the serial console and for berthd to answer on the forwarded port 80,
#! then powers the guest off. Exits non-zero on any failure or timeout.
# Usage: image/boot-smoke.sh IMAGEDIR   (the OUTDIR of image/build.sh)
# Env: BERTH_SMOKE_TIMEOUT (seconds, default 600), BERTH_SMOKE_PORT (host port for guest :80,
#      default: a free one).
set -euo pipefail
die() { echo "boot-smoke: $*" >&2; exit 1; }
[ $# = 1 ] || die "usage: image/boot-smoke.sh IMAGEDIR"
dir=$(cd "$1" && pwd)
for f in berth-appliance.raw vmlinuz initrd.img; do [ -f "$dir/$f" ] || die "missing $dir/$f"; done
command -v qemu-system-x86_64 >/dev/null || die "missing qemu-system-x86_64 (bookworm-backports qemu-system-x86)"
timeout_s=${BERTH_SMOKE_TIMEOUT:-600}
port=${BERTH_SMOKE_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')}

work=$(mktemp -d "${TMPDIR:-/tmp}/berth-smoke.XXXXXX")
qpid=
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
  if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
    qmp quit >/dev/null 2>&1 || kill "$qpid" 2>/dev/null || true
    wait "$qpid" 2>/dev/null || true
  fi
  # Keep the console for the post-mortem.
  [ -f "$work/console.log" ] && cp "$work/console.log" "$dir/boot-smoke-console.log"
  rm -rf "$work"
}
trap cleanup EXIT
# The image stays untouched: the guest writes to an overlay.
qemu-img create -q -f qcow2 -F raw -b "$dir/berth-appliance.raw" "$work/overlay.qcow2"

start=$(date +%s)
qemu-system-x86_64 -accel tcg -m 2048 -smp 2 -nographic -no-reboot \
  -kernel "$dir/vmlinuz" -initrd "$dir/initrd.img" \
  -append "root=/dev/vda rw console=ttyS0 apparmor=0 panic=-1" \
  -drive "file=$work/overlay.qcow2,if=virtio,format=qcow2" \
  -nic "user,model=virtio-net-pci,restrict=on,hostfwd=tcp:127.0.0.1:$port-:80" \
  -qmp "unix:$work/qmp,server=on,wait=off" \
  -serial "file:$work/console.log" -monitor none -display none </dev/null >"$work/qemu.out" 2>&1 &
qpid=$!
echo "boot-smoke: qemu pid $qpid, guest :80 on 127.0.0.1:$port, console $work/console.log"

deadline=$(( start + timeout_s ))
token= healthy=
while [ "$(date +%s)" -lt "$deadline" ]; do
  kill -0 "$qpid" 2>/dev/null || { cat "$work/qemu.out" >&2; tail -n 40 "$work/console.log" >&2; die "qemu exited"; }
  if grep -aq 'Failed to start.*berth' "$work/console.log" 2>/dev/null; then
    grep -a 'berth' "$work/console.log" | tail -n 20 >&2
    die "a berth unit failed to start (console: $dir/boot-smoke-console.log)"
  fi
  if [ -z "$token" ] && grep -aq 'BERTH_FIRST_BOOT_TOKEN=' "$work/console.log" 2>/dev/null; then
    token=$(grep -ao 'BERTH_FIRST_BOOT_TOKEN=[A-Za-z0-9_.-]*' "$work/console.log" | head -n1 | cut -d= -f2-)
    echo "boot-smoke: first-boot token on the console after $(( $(date +%s) - start )) s"
  fi
  if [ -z "$healthy" ]; then
    code=$(curl -s -o "$work/http.out" -w '%{http_code}' --max-time 10 "http://127.0.0.1:$port/" 2>/dev/null || true)
    # Any HTTP answer from berthd (a 404/502 for an unrouted host is fine): the socket-activated
    # proxy is up. curl prints 000 while nothing answers.
    if [ -n "$code" ] && [ "$code" != 000 ]; then
      healthy=$code
      echo "boot-smoke: berthd answered HTTP $code on guest :80 after $(( $(date +%s) - start )) s"
    fi
  fi
  [ -n "$token" ] && [ -n "$healthy" ] && break
  sleep 2
done
if [ -z "$token" ] || [ -z "$healthy" ]; then
  tail -n 60 "$work/console.log" >&2
  die "timeout after ${timeout_s}s (token: ${token:+yes}${token:-no}, http: ${healthy:-no})"
fi
[ "${#token}" -ge 16 ] || die "token too short: $token"
# ACPI power button: the guest shuts down cleanly and QEMU exits (-no-reboot).
t0=$(date +%s)
qmp system_powerdown || die "QMP system_powerdown failed"
for _ in $(seq 1 60); do kill -0 "$qpid" 2>/dev/null || break; sleep 1; done
if kill -0 "$qpid" 2>/dev/null; then tail -n 20 "$work/console.log" >&2; die "guest did not power off within 60 s"; fi
wait "$qpid" || true; qpid=
echo "boot-smoke: powered off in $(( $(date +%s) - t0 )) s"
echo "boot-smoke: OK in $(( $(date +%s) - start )) s"
