#!/usr/bin/env bash
#! QEMU runner for the Berth VM tests: boots the image/ appliance once under TCG (user-mode
#! network, hostfwd on 127.0.0.1 only, a cloud-init NoCloud seed for the SSH control channel)
#! and drives the scenarios from the host: deploy, failover, cert-renewal. Any failure makes the
#! exit status non-zero; logs (serial console, guest journal, berthd, pebble, load results) go
#! to the artefact directory. The VM is always stopped on exit. See vm-tests/qemu/README.md.
# Usage: vm-tests/qemu/run.sh --image DIR [--scenario deploy|failover|cert-renewal|all]
#            [--artifacts DIR] [--berth PATH] [--boot kernel|disk] [--deb PATH] [--keep-work]
#   --deb: install this berth .deb in the guest after boot (a newer berthd on an older image;
#          CI does not use it: ci.sh builds the image with the current .deb)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)

scenario=all
image=""
art=""
berth=""
boot=""
keep_work=0
deb=""
usage() {
  sed -n 's/^# \{0,1\}//;/^Usage:/,/^$/p' "$0" | sed -n '1,3p' >&2
  exit 2
}
while [ $# -gt 0 ]; do
  case "$1" in
    --scenario) scenario=${2:?}; shift 2 ;;
    --image) image=${2:?}; shift 2 ;;
    --artifacts) art=${2:?}; shift 2 ;;
    --berth) berth=${2:?}; shift 2 ;;
    --boot) boot=${2:?}; shift 2 ;;
    --deb) deb=$(cd "$(dirname "${2:?}")" && pwd)/$(basename "$2"); shift 2 ;;
    --keep-work) keep_work=1; shift ;;
    -h|--help) usage ;;
    *) echo "run.sh: unknown argument $1" >&2; usage ;;
  esac
done
[ -n "$image" ] || { echo "run.sh: --image DIR is required" >&2; usage; }
case "$scenario" in
  deploy) scenarios=(deploy) ;;
  failover) scenarios=(failover) ;;
  cert-renewal) scenarios=(cert-renewal) ;;
  all) scenarios=(deploy failover cert-renewal) ;;
  *) echo "run.sh: unknown scenario $scenario" >&2; usage ;;
esac

# Tunables (environment): memory, CPUs, how long the boot may take; BERTH_VM_BIOS (firmware
# for --boot disk).
mem=${BERTH_VM_MEM:-2048}
smp=${BERTH_VM_SMP:-2}
boot_timeout=${BERTH_VM_BOOT_TIMEOUT:-900}
app=vmweb
domain=vmweb.berth.test

image=$(cd "$image" && pwd)
if [ -f "$image/berth-appliance.qcow2" ]; then
  disk_src=$image/berth-appliance.qcow2; disk_fmt=qcow2
elif [ -f "$image/berth-appliance.raw" ]; then
  disk_src=$image/berth-appliance.raw; disk_fmt=raw
else
  echo "run.sh: no berth-appliance.qcow2 or .raw in $image" >&2; exit 2
fi
if [ -z "$boot" ]; then
  if [ -f "$image/vmlinuz" ] && [ -f "$image/initrd.img" ]; then boot=kernel; else boot=disk; fi
fi
case "$boot" in kernel|disk) ;; *) echo "run.sh: --boot kernel|disk" >&2; exit 2 ;; esac

if [ -z "$berth" ]; then
  for c in "$repo/target/debug/berth" "$repo/target/deb-test/berth" "$(command -v berth || true)"; do
    [ -n "$c" ] && [ -x "$c" ] && { berth=$c; break; }
  done
fi
[ -n "$berth" ] && [ -x "$berth" ] || { echo "run.sh: no berth CLI (give --berth PATH)" >&2; exit 2; }
berth=$(cd "$(dirname "$berth")" && pwd)/$(basename "$berth")

need=(qemu-system-x86_64 qemu-img mkfs.vfat mcopy ssh scp ssh-keygen python3 curl openssl)
for s in "${scenarios[@]}"; do
  case "$s" in
    deploy|failover) need+=(busybox) ;;
    cert-renewal) need+=(busybox pebble pebble-challtestsrv) ;;
  esac
done
for t in "${need[@]}"; do
  command -v "$t" >/dev/null || { echo "run.sh: missing $t (see vm-tests/qemu/README.md)" >&2; exit 2; }
done

work=$(mktemp -d "${TMPDIR:-/var/tmp}/berth-vmrun.XXXXXX")
[ -n "$art" ] || art=$work/artifacts
mkdir -p "$art"
art=$(cd "$art" && pwd)
export BERTH_CLI_CONFIG=$work/cli.yaml
t0=$(date +%s)
qemu_pid=""
vm_up=0
failures=()
declare -A timing=()

log() { echo "[vm $(( $(date +%s) - t0 ))s] $*" | tee -a "$art/run.log" >&2; }
fail() { log "FAIL: $*"; failures+=("$*"); }
free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

ssh_port=$(free_port); http_port=$(free_port); https_port=$(free_port)
api_port=$(free_port); pmgmt_port=$(free_port)
ssh-keygen -q -t ed25519 -N '' -C berth-vmtest -f "$work/id_ed25519"
ssh_opts=(-i "$work/id_ed25519" -o IdentitiesOnly=yes -o BatchMode=yes
  -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR
  -o ConnectTimeout=10 -o ServerAliveInterval=10 -o ServerAliveCountMax=6)
# Every remote command is bounded (600 s unless vssh_t says otherwise).
vssh() { timeout 600 ssh "${ssh_opts[@]}" -p "$ssh_port" root@127.0.0.1 "$@"; }
vssh_t() { local t=$1; shift; timeout "$t" ssh "${ssh_opts[@]}" -p "$ssh_port" root@127.0.0.1 "$@"; }
vscp() { timeout 300 scp -q "${ssh_opts[@]}" -P "$ssh_port" "$@"; }
# vssh, tried again (5 times, 3 s apart) while the connection itself fails (ssh's exit 255):
# cloud-init restarts sshd during the first boot, and a connection made at that moment is reset
# ("kex_exchange_identification: read: Connection reset by peer") although SSH was up before.
vssh_retry() {
  local i rc=255
  for i in 1 2 3 4 5; do
    vssh "$@" && return 0 || rc=$?
    [ "$rc" = 255 ] || return "$rc"
    sleep 3
  done
  return "$rc"
}

collect_logs() {
  [ "$vm_up" = 1 ] || return 0
  log "collecting guest logs into $art"
  vssh_t 60 'journalctl -b --no-pager -o short-precise' >"$art/journal.txt" 2>&1 || true
  vssh_t 60 'journalctl -b --no-pager -o short-precise -u berthd.service -u berthd.socket -u berthd-api.socket -u berthd-https.socket -u berth-first-boot.service' >"$art/berthd.log" 2>&1 || true
  vssh_t 30 'journalctl -b --no-pager -o short-precise -u berth-vmtest-pebble -u berth-vmtest-challtestsrv' >"$art/pebble.log" 2>&1 || true
  vssh_t 30 'docker ps -a --no-trunc; echo; docker images; echo; systemctl --failed --no-pager; echo; cloud-init status --long; echo; systemd-analyze; systemd-analyze blame | head -25' >"$art/guest-state.txt" 2>&1 || true
  timeout 30 "$berth" status >"$art/berth-status.txt" 2>&1 || true
  timeout 30 "$berth" --json status >"$art/berth-status.json" 2>&1 || true
}

cleanup() {
  local rc=$?
  set +e
  for p in $(jobs -p); do [ "$p" = "$qemu_pid" ] || kill "$p" 2>/dev/null; done
  collect_logs
  if [ -n "$qemu_pid" ] && kill -0 "$qemu_pid" 2>/dev/null; then
    [ "$vm_up" = 1 ] && vssh_t 20 'systemctl poweroff' >/dev/null 2>&1
    for _ in $(seq 1 60); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 1; done
    kill "$qemu_pid" 2>/dev/null
    for _ in $(seq 1 10); do kill -0 "$qemu_pid" 2>/dev/null || break; sleep 1; done
    kill -9 "$qemu_pid" 2>/dev/null
  fi
  wait 2>/dev/null
  if [ "$keep_work" = 1 ]; then
    echo "run.sh: work dir kept: $work" >&2
  else
    # The artefacts may live inside the work dir; keep them.
    case "$art" in
      "$work"/*) find "$work" -mindepth 1 -maxdepth 1 ! -path "$art" -exec rm -rf {} + ;;
      *) rm -rf "$work" ;;
    esac
  fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------------
# Boot

boot_vm() {
  log "image $disk_src ($disk_fmt), boot=$boot, ports: ssh=$ssh_port http=$http_port https=$https_port api=$api_port pebble-mgmt=$pmgmt_port"
  qemu-img create -q -f qcow2 -F "$disk_fmt" -b "$disk_src" "$work/disk.qcow2"

  # cloud-init NoCloud seed (vfat labelled CIDATA): root may log in with our throwaway key.
  mkdir -p "$work/seed"
  cat >"$work/seed/meta-data" <<EOF
instance-id: berth-vmtest-$(date +%s)
local-hostname: berth
EOF
  cat >"$work/seed/user-data" <<EOF
#cloud-config
users: []
disable_root: false
ssh_pwauth: false
ssh_genkeytypes: [ed25519]
# The image has no "locales" package: cc_locale's update-locale fails (cloud-init status:
# error) and locale generation costs time under TCG. Reported; skipped here.
locale: false
ssh_authorized_keys:
  - $(cat "$work/id_ed25519.pub")
EOF
  mkfs.vfat -n CIDATA -C "$work/seed.img" 2048 >/dev/null
  mcopy -i "$work/seed.img" "$work/seed/user-data" "$work/seed/meta-data" ::

  local fwd="hostfwd=tcp:127.0.0.1:$ssh_port-:22,hostfwd=tcp:127.0.0.1:$http_port-:80"
  fwd+=",hostfwd=tcp:127.0.0.1:$https_port-:443,hostfwd=tcp:127.0.0.1:$api_port-:9922"
  fwd+=",hostfwd=tcp:127.0.0.1:$pmgmt_port-:15000"
  local args=(-accel tcg -m "$mem" -smp "$smp" -display none -monitor none -no-reboot
    -serial "file:$art/serial.log"
    -drive "file=$work/disk.qcow2,if=virtio,format=qcow2"
    -drive "file=$work/seed.img,if=virtio,format=raw,readonly=on"
    -object rng-random,filename=/dev/urandom,id=rng0 -device virtio-rng-pci,rng=rng0
    -nic "user,model=virtio-net-pci,restrict=on,$fwd")
  if [ "$boot" = kernel ]; then
    # root by label: the same line works for the unpartitioned image and a partitioned one.
    args+=(-kernel "$image/vmlinuz" -initrd "$image/initrd.img"
      -append "root=LABEL=berth-root rw console=ttyS0 apparmor=0")
  elif [ -n "${BERTH_VM_BIOS:-}" ]; then
    # Disk boot with other firmware (e.g. OVMF for a UEFI-only image); default: SeaBIOS.
    args+=(-bios "$BERTH_VM_BIOS")
  fi
  qemu-system-x86_64 "${args[@]}" >"$art/qemu.log" 2>&1 &
  qemu_pid=$!
  local start=$(date +%s) token="" deadline=$(( $(date +%s) + boot_timeout ))
  while :; do
    kill -0 "$qemu_pid" 2>/dev/null || { log "qemu exited during boot (see qemu.log, serial.log)"; return 1; }
    [ "$(date +%s)" -lt "$deadline" ] || { log "no SSH within ${boot_timeout}s"; return 1; }
    if [ -z "$token" ] && grep -q 'BERTH_FIRST_BOOT_TOKEN=' "$art/serial.log" 2>/dev/null; then
      token=$(grep -a -o 'BERTH_FIRST_BOOT_TOKEN=[^[:space:]]*' "$art/serial.log" | head -1 | cut -d= -f2)
      timing[token_on_console_s]=$(( $(date +%s) - start ))
      log "first-boot token on the serial console after ${timing[token_on_console_s]}s"
    fi
    if vssh_t 30 true 2>/dev/null; then break; fi
    sleep 3
  done
  vm_up=1
  timing[ssh_up_s]=$(( $(date +%s) - start ))
  log "SSH up after ${timing[ssh_up_s]}s"
  vssh_retry 'timeout 300 cloud-init status --wait >/dev/null; cloud-init status' | tee -a "$art/run.log" >&2 || true
  # The first-boot token: from the file berth-first-boot.service wrote; it must match the
  # console's copy.
  local line secret
  line=$(vssh_retry 'cat /var/lib/berth/first-boot-token') || { log "no /var/lib/berth/first-boot-token"; return 1; }
  secret=${line##*--token }
  [ -n "$secret" ] && [ "$secret" != "$line" ] || { log "first-boot token file has no token"; return 1; }
  if [ -z "$token" ]; then
    token=$(grep -a -o 'BERTH_FIRST_BOOT_TOKEN=[^[:space:]]*' "$art/serial.log" | head -1 | cut -d= -f2 || true)
  fi
  [ "$token" = "$secret" ] || { log "console token and /var/lib/berth/first-boot-token differ"; return 1; }

  if [ -n "$deb" ]; then
    log "installing $(basename "$deb") in the guest (--deb)"
    vscp "$deb" root@127.0.0.1:/tmp/berth.deb && vssh 'dpkg -i /tmp/berth.deb && rm /tmp/berth.deb' >>"$art/run.log" 2>&1 \
      || { log "installing the .deb failed"; return 1; }
  fi
  # The API listens on the guest's loopback (berthd-api.socket); hostfwd reaches the guest's
  # own address, so the test moves the socket to all addresses with a drop-in.
  vssh 'set -e
    mkdir -p /etc/systemd/system/berthd-api.socket.d
    printf "[Socket]\nListenStream=\nListenStream=0.0.0.0:9922\n" >/etc/systemd/system/berthd-api.socket.d/vmtest.conf
    systemctl daemon-reload
    systemctl stop berthd.service
    systemctl restart berthd-api.socket
    systemctl start berthd.service' >>"$art/run.log" 2>&1 || { log "moving the API socket failed"; return 1; }
  local i
  for i in $(seq 1 60); do
    curl -sf -o /dev/null "http://127.0.0.1:$api_port/healthz" && break
    sleep 2
  done
  curl -sf -o /dev/null "http://127.0.0.1:$api_port/healthz" || { log "API not answering on the forwarded port"; return 1; }
  "$berth" server add vm "http://127.0.0.1:$api_port" --token "$secret" >>"$art/run.log" 2>&1 \
    || { log "berth server add failed"; return 1; }
  timing[api_ready_s]=$(( $(date +%s) - start ))
  log "berthd API reachable from the host with the first-boot token after ${timing[api_ready_s]}s"
}

# ---------------------------------------------------------------------------------------------
# The test app: busybox httpd images written as `docker save` tarballs on the host (mkapp.py;
# no Docker needed on the host, nothing pulled), uploaded by `berth deploy --image-tar`.

build_app_images() {
  [ -f "$work/app-v2.tar" ] && return 0
  local v
  for v in v1 v2; do
    python3 "$here/mkapp.py" "$work/app-$v.tar" "berth-vmtest:$v" "$v" >/dev/null || return 1
  done
}

app_file() { # VERSION
  mkdir -p "$work/app"
  cat >"$work/app/berth.yaml" <<EOF
name: $app
image: berth-vmtest:$1
domains: [$domain]
port: 8080
replicas: 2
health: {path: /, interval: 1s, timeout: 2s}
EOF
}

deploy_version() { # VERSION LOGNAME
  app_file "$1"
  (cd "$work/app" && timeout 600 "$berth" deploy --image-tar "$work/app-$1.tar") >"$art/$2" 2>&1
}

http_loop() { # NAME [extra load.py args...]
  local name=$1; shift
  python3 "$here/load.py" http --port "$http_port" --host "$domain" --out "$art/$name.json" "$@" >/dev/null
}

# Deploys v1 unless the app already runs (for failover/cert-renewal run on their own).
ensure_app() {
  if "$berth" status "$app" >/dev/null 2>&1; then return 0; fi
  build_app_images
  deploy_version v1 deploy-v1.log || { log "deploying v1 failed (deploy-v1.log)"; return 1; }
}

# Replicas of the app that berthd routes and reports ready (GET /v1/apps/APP through the CLI).
routed_replicas() {
  timeout 30 "$berth" --json status "$app" 2>/dev/null | python3 -c '
import json, sys
try:
    d = json.load(sys.stdin)
except ValueError:
    print(0); sys.exit()
apps = d.get("apps") or [d]
reps = apps[0].get("replicas", []) if apps else []
print(sum(1 for r in reps if r.get("routed") and r.get("running") and r.get("routing") == "ready"))' || echo 0
}

running_replicas() {
  vssh "docker ps --filter label=berth.app=$app --filter status=running --format '{{.ID}}'" | grep -c . || true
}

# ---------------------------------------------------------------------------------------------
# Scenarios (each returns non-zero on failure)

scenario_deploy() {
  build_app_images
  local s=$(date +%s)
  deploy_version v1 deploy-v1.log || { fail "deploy: v1 deploy failed (deploy-v1.log)"; return 1; }
  timing[deploy_v1_s]=$(( $(date +%s) - s ))
  log "deploy: v1 deployed in ${timing[deploy_v1_s]}s"
  http_loop deploy-v1-check --max-requests 20 --max-seconds 60 --expect-body 'hello from vmtest v1' \
    || { fail "deploy: v1 not served (deploy-v1-check.json)"; return 1; }

  rm -f "$work/stop"
  http_loop deploy-rolling --stop-file "$work/stop" --max-seconds 900 --max-requests 200000 &
  local loop=$!
  sleep 3
  s=$(date +%s)
  local deploy_rc=0
  deploy_version v2 deploy-v2.log || deploy_rc=$?
  timing[deploy_v2_s]=$(( $(date +%s) - s ))
  sleep 3
  touch "$work/stop"
  local loop_rc=0
  wait "$loop" || loop_rc=$?
  log "deploy: rolling v1->v2 took ${timing[deploy_v2_s]}s; loop: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["ok"], "ok,", d["failed"], "failed, slowest", d["slowest_ok_s"], "s, bodies", {k: v["count"] for k, v in d["bodies"].items()})' "$art/deploy-rolling.json")"
  [ "$deploy_rc" = 0 ] || { fail "deploy: v2 deploy failed (deploy-v2.log)"; return 1; }
  [ "$loop_rc" = 0 ] || { fail "deploy: requests failed during the rolling deploy (deploy-rolling.json)"; return 1; }
  http_loop deploy-v2-after --max-requests 50 --min-requests 50 --max-seconds 120 --interval 0 \
    --expect-body '^hello from vmtest v2' \
    || { fail "deploy: after the deploy not only v2 is served (deploy-v2-after.json)"; return 1; }
  log "deploy: 50/50 requests after the deploy served v2"
}

scenario_failover() {
  ensure_app || { fail "failover: app not deployed"; return 1; }
  local ids n victim
  ids=$(vssh "docker ps --filter label=berth.app=$app --filter status=running --format '{{.ID}}'")
  n=$(echo "$ids" | grep -c . || true)
  [ "$n" -ge 2 ] || { fail "failover: $n running replicas, need 2"; return 1; }
  victim=$(echo "$ids" | head -1)

  rm -f "$work/stop"
  # 60 s per request: while berthd restarts, connections wait in the kernel's accept queue.
  http_loop failover-loop --stop-file "$work/stop" --max-seconds 600 --max-requests 200000 --timeout 60 &
  local loop=$!
  sleep 5
  # A crash, not `docker kill` (which Docker counts as a manual stop that its unless-stopped
  # restart policy honours): the container's main process is killed from inside the guest.
  log "failover: kill -9 of the main process of $victim (one of $n replicas)"
  vssh "kill -9 \$(docker inspect -f '{{.State.Pid}}' $victim)" >/dev/null \
    || { fail "failover: killing the replica's process failed"; kill "$loop"; return 1; }
  local k=$(date +%s) i back=false
  # Docker restarts it; berthd took it out of the route at once (Docker's die event) and routes
  # it again after its health check. Nothing else is done here: it must come back by itself.
  for i in $(seq 1 90); do
    sleep 2
    if [ "$(routed_replicas)" -ge "$n" ] \
      && [ "$(vssh_t 30 "docker inspect -f '{{.RestartCount}}' $victim" 2>/dev/null || echo 0)" -ge 1 ]; then
      back=true; break
    fi
    [ $(( $(date +%s) - k )) -lt 180 ] || break
  done
  timing[failover_back_in_route_s]=$(( $(date +%s) - k ))
  if [ "$back" = true ]; then
    log "failover: the crashed replica was restarted by Docker and is routed again after ${timing[failover_back_in_route_s]}s"
  else
    fail "failover: the crashed replica is not routed again after ${timing[failover_back_in_route_s]}s ($(routed_replicas) of $n routed)"
  fi
  [ "$(running_replicas)" -ge "$n" ] || { fail "failover: the killed replica did not come back"; }
  # Keep the loop running while the replica is back in rotation (health-gated by berthd).
  sleep 10
  touch "$work/stop"
  local loop_rc=0
  wait "$loop" || loop_rc=$?
  log "failover: loop: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sl=d["slow_over_1s"]; print(d["ok"], "ok,", d["failed"], "failed, slowest", d["slowest_ok_s"], "s,", len(sl), "requests over 1 s taking", round(sum(x[1] for x in sl), 1), "s in all", d["errors"][:3])' "$art/failover-loop.json")"
  [ "$loop_rc" = 0 ] || { fail "failover: requests failed (failover-loop.json)"; return 1; }
  "$berth" status "$app" >"$art/failover-status.txt" 2>&1 || true
  [ "$(running_replicas)" -ge "$n" ] || return 1
}

scenario_cert_renewal() {
  ensure_app || { fail "cert-renewal: app not deployed"; return 1; }
  local pd=$work/pebble
  mkdir -p "$pd"
  # pebble's own HTTPS (directory + management port) needs a certificate: a throwaway CA.
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj '/CN=berth vmtest pebble WFE CA' \
    -keyout "$pd/wfe-ca.key" -out "$pd/wfe-ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj '/CN=localhost' -keyout "$pd/wfe.key" -out "$pd/wfe.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$pd/ext"
  openssl x509 -req -in "$pd/wfe.csr" -CA "$pd/wfe-ca.pem" -CAkey "$pd/wfe-ca.key" -CAcreateserial \
    -days 2 -extfile "$pd/ext" -out "$pd/wfe.pem" 2>/dev/null
  # httpPort 80: pebble validates HTTP-01 against berthd's :80 in the guest; 2-minute certs.
  cat >"$pd/pebble-config.json" <<'EOF'
{"pebble":{"listenAddress":"127.0.0.1:14000","managementListenAddress":"0.0.0.0:15000",
 "certificate":"/opt/berth-vmtest/wfe.pem","privateKey":"/opt/berth-vmtest/wfe.key",
 "httpPort":80,"tlsPort":443,"ocspResponderURL":"","externalAccountBindingRequired":false,
 "certificateValidityPeriod":120}}
EOF
  vssh 'mkdir -p /opt/berth-vmtest' || return 1
  vscp "$(command -v pebble)" "$(command -v pebble-challtestsrv)" "$pd/wfe.pem" "$pd/wfe.key" \
    "$pd/wfe-ca.pem" "$pd/pebble-config.json" root@127.0.0.1:/opt/berth-vmtest/ \
    || { fail "cert-renewal: copying pebble into the guest failed"; return 1; }
  vssh 'set -e
    cd /opt/berth-vmtest
    systemd-run --unit=berth-vmtest-challtestsrv --quiet ./pebble-challtestsrv -defaultIPv4 127.0.0.1 \
      -defaultIPv6 "" -dns01 127.0.0.1:8053 -http01 "" -https01 "" -tlsalpn01 "" -management 127.0.0.1:8055
    systemd-run --unit=berth-vmtest-pebble --quiet --working-directory=/opt/berth-vmtest \
      --setenv=PEBBLE_VA_NOSLEEP=1 --setenv=PEBBLE_WFE_NONCEREJECT=0 --setenv=PEBBLE_AUTHZREUSE=0 \
      ./pebble -config pebble-config.json -dnsserver 127.0.0.1:8053
    install -m 0644 wfe-ca.pem /etc/berth/pebble-wfe-ca.pem' >>"$art/run.log" 2>&1 \
    || { fail "cert-renewal: starting pebble in the guest failed"; return 1; }
  local i
  for i in $(seq 1 60); do
    curl -sf --cacert "$pd/wfe-ca.pem" -o "$pd/root.pem" "https://127.0.0.1:$pmgmt_port/roots/0" && break
    sleep 2
  done
  [ -s "$pd/root.pem" ] || { fail "cert-renewal: pebble's root not reachable on the management port"; return 1; }
  cp "$pd/root.pem" "$art/pebble-root.pem"

  # berthd: ACME against the guest's pebble, HTTP-01, no redirect (the HTTP loops stay 200).
  vssh 'set -e
    cp /etc/berth/berthd.yaml /etc/berth/berthd.yaml.vmtest-orig
    cat >>/etc/berth/berthd.yaml <<EOF

# Added by vm-tests/qemu/run.sh (cert-renewal): ACME against pebble inside this VM.
tls:
  redirect: false
  acme:
    directory: https://127.0.0.1:14000/dir
    email: ops@berth.test
    ca_root: /etc/berth/pebble-wfe-ca.pem
    challenge: http-01
EOF
    berthd --config /etc/berth/berthd.yaml check-config
    systemctl restart berthd.service' >>"$art/run.log" 2>&1 \
    || { fail "cert-renewal: configuring ACME in berthd failed (run.log)"; return 1; }
  local s=$(date +%s) issued=0
  for i in $(seq 1 90); do
    if curl -sf -o /dev/null --cacert "$pd/root.pem" --resolve "$domain:$https_port:127.0.0.1" \
      "https://$domain:$https_port/"; then issued=1; break; fi
    sleep 2
  done
  [ "$issued" = 1 ] || { fail "cert-renewal: no certificate for $domain within 180 s"; return 1; }
  timing[cert_issued_s]=$(( $(date +%s) - s ))
  log "cert-renewal: $domain served with a pebble certificate ${timing[cert_issued_s]}s after the berthd restart"
  # Handshake continuously until the served certificate changes (2-minute certificates renew
  # after ~80 s), then 10 s more; no handshake may fail.
  local rc=0
  python3 "$here/load.py" tls --port "$https_port" --host "$domain" --ca "$pd/root.pem" \
    --max-seconds 300 --max-requests 20000 --interval 0.1 --after-change 10 \
    --out "$art/cert-renewal-loop.json" >/dev/null || rc=$?
  log "cert-renewal: loop: $(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["ok"], "ok,", d["failed"], "failed, renewed after", d["renewed_after_s"], "s, serials", [(s["serial"][-8:], s["count"]) for s in d["serials"]], d["errors"][:3])' "$art/cert-renewal-loop.json")"
  timing[cert_renewed_after_s]=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["renewed_after_s"])' "$art/cert-renewal-loop.json")
  [ "$rc" = 0 ] || { fail "cert-renewal: certificate not renewed or handshakes failed (cert-renewal-loop.json)"; return 1; }
}

# ---------------------------------------------------------------------------------------------

if ! boot_vm; then
  fail "boot: the VM did not come up (serial.log, qemu.log)"
else
  for s in "${scenarios[@]}"; do
    log "=== scenario $s"
    ss=$(date +%s)
    if "scenario_${s//-/_}"; then log "=== $s: PASS ($(( $(date +%s) - ss ))s)"
    else
      [ ${#failures[@]} -gt 0 ] || fail "$s failed"
      log "=== $s: FAIL ($(( $(date +%s) - ss ))s)"
    fi
    timing[scenario_${s//-/_}_s]=$(( $(date +%s) - ss ))
  done
fi
timing[total_s]=$(( $(date +%s) - t0 ))
for k in "${!timing[@]}"; do echo "$k=${timing[$k]}"; done | sort >"$art/timings.txt"
log "timings: $(paste -sd' ' "$art/timings.txt")"
if [ ${#failures[@]} -gt 0 ]; then
  log "FAILED (${#failures[@]}): ${failures[*]}"
  exit 1
fi
log "all scenarios passed: ${scenarios[*]}"
