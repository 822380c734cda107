#!/usr/bin/env bash
# System test: the .deb and the units under real systemd. Boots Debian bookworm with systemd as
# PID 1 (systemd-nspawn on an overlay of a cached tree), installs the package with dpkg -i, and
# checks socket activation with named fds, STATUS=, reload, hitless `berthd upgrade` and package
# upgrade under load (MainPID tracked, unit active), `systemctl restart` with the fd store, the
# watchdog, structured journal fields, and the unit's `systemd-analyze security` exposure.
# Runs only with BERTH_SYSTEM_TESTS=1; needs root. Env: BERTH_DEB_PROFILE (default dev: reuses
# `cargo test`'s binaries), BERTH_TEST_CACHE (default /var/cache/berth-test),
# BERTH_KEEP_MACHINES=1 keeps the scratch directory for debugging.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${BERTH_SYSTEM_TESTS:-}" != 1 ]; then echo "skipped: set BERTH_SYSTEM_TESTS=1"; exit 0; fi
[ "$(id -u)" -eq 0 ] || { echo "test-systemd: needs root (nspawn, overlay mounts)" >&2; exit 1; }
for p in systemd-container mmdebstrap; do
  dpkg -s $p >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd-container mmdebstrap >/dev/null; break; }
done

t0=$SECONDS
export BERTH_DEB_PROFILE=${BERTH_DEB_PROFILE:-dev}
MACHINE_WORK=$(mktemp -d /tmp/berth-systemd.XXXXXX)
source scripts/system/machine.sh
trap machines_cleanup EXIT

failures=0
ok()   { echo "  ok: $*"; }
bad()  { echo "  FAIL: $*"; failures=$((failures + 1)); }
check() { local what=$1; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }
not() { ! "$@" >/dev/null 2>&1; }
section() { echo "== $* (t=$((SECONDS - t0))s)"; }
show() { m m1 systemctl show -p "$1" --value berthd; }
status_matches() { [[ "$(show StatusText)" =~ $1 ]] || { echo "    StatusText: $(show StatusText)"; return 1; }; }
served() { # served HOST EXPECTED: one request through berthd on :80 returns EXPECTED
  local body
  body=$(m m1 curl -sS --max-time 5 -H "Host: $1" http://127.0.0.1/ 2>&1) || true
  [ "$body" = "$2" ] || { echo "    got: $body"; return 1; }
}
journal_has() { # journal_has JQ-ish: python filter over `journalctl -u berthd -o json`
  m m1 journalctl -u berthd -o json --no-pager | python3 -c "
import json, sys
rows = [json.loads(l) for l in sys.stdin if l.strip()]
sys.exit(0 if any($1 for r in rows) else 1)"
}
load_start() { # load_start EXTRA_ARGS...: bounded load inside m1, until /root/load.stop
  m m1 rm -f /root/load.stop
  m m1 python3 /opt/berth-test/load.py --host app.test --expect backend-a \
    --stop-file /root/load.stop --max-seconds 90 "$@" >"$MACHINE_WORK/load.json" &
  LOAD_PID=$!
  sleep 1
}
load_stop() { # prints the JSON result; fails when the load saw any failure
  m m1 touch /root/load.stop
  wait "$LOAD_PID" || true
  cat "$MACHINE_WORK/load.json"
  python3 -c "
import json, sys
r = json.load(open('$MACHINE_WORK/load.json'))
ok = r['ok'] > 100 and r['failed'] == 0 and r['unix_refused'] == 0
sys.exit(0 if ok else 1)"
}
diagnose() { m m1 journalctl -u berthd --no-pager -n 40 || true; }

section "build the .deb (profile $BERTH_DEB_PROFILE) and the second version for the upgrade"
debdir=$MACHINE_WORK/deb
deb1=$(scripts/system/build-deb.sh "$debdir")
deb2=$(scripts/system/build-deb.sh "$debdir/v2" 0.1.0-2)
echo "  $deb1"; echo "  $deb2"

section "boot Debian with systemd (nspawn, private network)"
machine_boot m1 --private-network
root=${MACHINE_ROOT[m1]}
mkdir -p "$root/opt/berth-test" "$root/srv/a" "$root/srv/b"
cp "$deb1" "$root/root/berth_1.deb"; cp "$deb2" "$root/root/berth_2.deb"
cp tests/system/load.py "$root/opt/berth-test/"
echo backend-a >"$root/srv/a/index.html"; echo backend-b >"$root/srv/b/index.html"
m m1 systemd-run -q --unit=backend-a python3 -m http.server 8001 --bind 127.0.0.1 --directory /srv/a
m m1 systemd-run -q --unit=backend-b python3 -m http.server 8002 --bind 127.0.0.1 --directory /srv/b
echo "  booted in $((SECONDS - t0))s total so far"

section "dpkg -i: user, state directory, conffile, units"
m m1 dpkg -i /root/berth_1.deb >/dev/null
check "berth is a system user in group docker" m m1 sh -c 'id -nG berth | grep -qw docker && [ "$(id -u berth)" -lt 1000 ]'
check "/var/lib/berth is berth-owned 0700" m m1 sh -c '[ "$(stat -c %U:%a /var/lib/berth)" = berth:700 ]'
check "/etc/berth/berthd.yaml is a conffile and valid" m m1 sh -c 'dpkg-query -W -f="\${Conffiles}" berth | grep -q /etc/berth/berthd.yaml && berthd check-config'
check "berthd and berth binaries installed" m m1 sh -c 'berthd --version >/dev/null && berth --version >/dev/null'
check "package did not start anything by itself" m m1 sh -c '! systemctl is-active -q berthd.service berthd.socket'

cat >"$root/etc/berth/berthd.yaml" <<'YAML'
log:
  access_log: false
proxy:
  timeouts:
    drain: 5s
routes:
  - domains: [app.test]
    backends:
      - address: "127.0.0.1:8001"
YAML

section "socket activation: first connection starts berthd with named fds"
check "systemctl enable --now berthd.socket berthd" m m1 systemctl enable --now -q berthd.socket berthd
m m1 systemctl stop berthd.service
m m1 systemctl start berthd.socket
check "all three sockets enabled (Also=) and listening" m m1 systemctl is-active -q berthd.socket berthd-https.socket berthd-api.socket
check "sockets.target wants https and api sockets" m m1 systemctl is-enabled -q berthd-https.socket berthd-api.socket
check "berthd not running before the first connection" m m1 sh -c '! systemctl is-active -q berthd.service'
check "first connection answered by the backend" served app.test backend-a
check "berthd.service active after the first connection" m m1 systemctl is-active -q berthd.service
check "journal: http listener taken from systemd" journal_has "r.get('MESSAGE')=='listening' and r.get('F_FROM')=='systemd'"
check "systemd still holds :443 and 127.0.0.1:9922" m m1 sh -c 'ss -Hltn | grep -q ":443 " && ss -Hltn | grep -q "127.0.0.1:9922 "'
# Each named fd is either taken by berthd (it then holds the listening socket too) or closed
# with a log line naming it; neither stops the daemon.
fd_taken_or_closed() { # NAME ADDR
  local used=0 closed=0
  m m1 ss -Hltnp | grep -F "$2 " | grep -q '"berthd"' && used=1
  journal_has "r.get('MESSAGE','').startswith('inherited descriptor not used') and r.get('F_NAME')=='$1'" && closed=1
  echo "    $1: $([ $used = 1 ] && echo taken by berthd)$([ $closed = 1 ] && echo closed, logged)"
  [ $((used + closed)) = 1 ]
}
check "named fd https: taken or closed by name, not fatal" fd_taken_or_closed https ":443"
check "named fd api: taken or closed by name, not fatal" fd_taken_or_closed api "127.0.0.1:9922"

section "systemctl status shows STATUS="
status_out=$(m m1 systemctl status berthd --no-pager 2>&1 || true)
echo "$status_out" | grep -E '^\s+(Status|Main PID|Active):' | sed 's/^/    /'
check "status line 'serving on ...'" grep -q 'Status: "serving on' <<<"$status_out"

section "systemctl reload applies a changed config"
check "b.test not routed yet" not m m1 curl -sf --max-time 5 -H "Host: b.test" http://127.0.0.1/
pid_before=$(show MainPID)
cat >>"$root/etc/berth/berthd.yaml" <<'YAML'
  - domains: [b.test]
    backends:
      - address: "127.0.0.1:8002"
YAML
check "systemctl reload succeeds" m m1 systemctl reload berthd
check "new route b.test served" served b.test backend-b
check "old route still served" served app.test backend-a
check "same main process (in place)" test "$(show MainPID)" = "$pid_before"
cp "$root/etc/berth/berthd.yaml" "$MACHINE_WORK/good.yaml"
echo 'routes: [{domains: ["bad host"]}]' >"$root/etc/berth/berthd.yaml"
check "invalid config: systemctl reload fails" not m m1 systemctl reload berthd
check "invalid config: still serving the old routes" served b.test backend-b
check "invalid config: STATUS= says reload rejected" status_matches "^reload rejected: "
check "invalid config: unit still active" m m1 systemctl is-active -q berthd
cp "$MACHINE_WORK/good.yaml" "$root/etc/berth/berthd.yaml"
m m1 systemctl reload berthd

section "berthd upgrade under systemd, under load: zero failures, MainPID tracked"
load_start --new 3 --keepalive 2
upgrades=0
for i in 1 2 3 4 5; do
  old=$(show MainPID)
  out=$(m m1 berthd upgrade 2>&1) || { bad "upgrade $i: $out"; diagnose; continue; }
  new=$(sed -n 's/^new process \([0-9]*\) is serving$/\1/p' <<<"$out")
  [ -n "$new" ] && [ "$new" != "$old" ] && [ "$(show MainPID)" = "$new" ] \
    && [ "$(show ActiveState)" = active ] && upgrades=$((upgrades + 1)) \
    || bad "upgrade $i: out=$out old=$old MainPID=$(show MainPID) state=$(show ActiveState)"
  sleep 0.5
done
check "5 upgrades: MainPID followed each new process, unit active" test $upgrades = 5
check "load across the upgrades: zero failed requests" load_stop
check "STATUS= comes from the new main process" status_matches "^serving on "
check "systemd supervises the new process as its own child (not alien)" not journal_has "'not our child' in r.get('MESSAGE','')"
check "old processes drained and exited (one berthd left)" m_wait m1 12 sh -c '[ "$(pgrep -c -x berthd)" = 1 ]'
nr=$(show NRestarts); main=$(show MainPID)
m m1 kill -KILL "$main"
check "systemd notices the upgraded main process dying (restart, new pid)" m_wait m1 10 sh -c "[ \"\$(systemctl show -p NRestarts --value berthd)\" -gt $nr ] && systemctl is-active -q berthd"
check "serving after that restart" served app.test backend-a

section "package upgrade (dpkg -i v2) while serving: postinst runs berthd upgrade"
load_start --new 3 --keepalive 2
old=$(show MainPID)
m m1 dpkg -i /root/berth_2.deb >"$MACHINE_WORK/dpkg2.log" 2>&1 || { bad "dpkg -i v2"; cat "$MACHINE_WORK/dpkg2.log"; }
check "package version 0.1.0-2 installed" test "$(m m1 dpkg-query -W -f='${Version}' berth)" = 0.1.0-2
check "new main process after the package upgrade" test "$(show MainPID)" != "$old"
check "unit active" m m1 systemctl is-active -q berthd
check "load across the package upgrade: zero failed requests" load_stop

section "systemctl restart with the fd store: no refused connection"
load_start --new 3 --keepalive 2 --unix /var/lib/berth/control.sock
old=$(show MainPID)
m m1 systemctl restart berthd
check "restarted (new pid, active)" test "$(show MainPID)" != "$old" -a "$(show ActiveState)" = active
check "the old process drained (SIGTERM, exit 0), not SIGKILLed" not journal_has "'SIGKILL' in r.get('MESSAGE','')"
sleep 1
check "load across the restart: zero failed, zero refused (HTTP and control socket)" load_stop
new=$(show MainPID)
check "control socket (in no socket unit) came back from the fd store" journal_has "r.get('MESSAGE')=='control socket ready' and r.get('F_FROM')=='systemd' and r.get('_PID')=='$new'"

section "watchdog restarts a hung daemon"
mkdir -p "$root/etc/systemd/system/berthd.service.d"
printf '[Service]\nWatchdogSec=2\nEnvironment=BERTH_DEBUG_WATCHDOG_HANG=1\n' >"$root/etc/systemd/system/berthd.service.d/hang.conf"
m m1 systemctl daemon-reload
m m1 systemctl restart berthd
nr=$(show NRestarts); hung=$(show MainPID)
check "watchdog fired and systemd restarted berthd" m_wait m1 15 sh -c "[ \"\$(systemctl show -p NRestarts --value berthd)\" -gt $nr ]"
check "journal: systemd logged the watchdog timeout" journal_has "'Watchdog timeout' in r.get('MESSAGE','')"
rm "$root/etc/systemd/system/berthd.service.d/hang.conf"
m m1 systemctl daemon-reload
m m1 systemctl restart berthd
nr=$(show NRestarts)
sleep 5
check "with pings (WatchdogSec=30 halves to 15 s; 2 s here) no further restarts" test "$(show NRestarts)" = "$nr"
check "serving after the watchdog episode" served app.test backend-a
echo "    hung pid was $hung; now $(show MainPID)"

section "journal: structured fields"
check "MESSAGE + CODE_FILE + TARGET + F_* fields, attributed to the unit" journal_has "r.get('_SYSTEMD_UNIT')=='berthd.service' and r.get('TARGET','').startswith('berth') and 'CODE_FILE' in r and 'F_HTTP' in r"
check "upgrade phases logged with F_PHASE" journal_has "r.get('MESSAGE')=='upgrade' and 'F_PHASE' in r"

section "systemctl stop: clean exit; the sockets stay and re-activate"
m m1 systemctl stop berthd
check "stopped cleanly (Result=success)" test "$(show Result)" = success
check "next connection starts it again" served app.test backend-a

section "systemd-analyze security"
score=$(m m1 systemd-analyze security berthd.service --no-pager 2>/dev/null | sed -n 's/.*Overall exposure level for berthd.service: \([0-9.]*\).*/\1/p')
echo "    exposure: $score (10 = unsafe; the unit before hardening scored 9.4)"
check "exposure at most 2.0" python3 -c "import sys; sys.exit(0 if float('${score:-10}') <= 2.0 else 1)"

section "done in $((SECONDS - t0))s: $failures failure(s)"
[ $failures = 0 ]
