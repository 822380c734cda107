#!/usr/bin/env bash
# bench/callgrind.sh: user-space instructions per request of one proxy under keep-alive load,
# counted by valgrind's callgrind (deterministic, so usable on a busy machine where req/s and
# even CPU time move with the other jobs).
#
# Usage: bash bench/callgrind.sh [BERTHD_BINARY]     (default target/release/berthd)
#        PROXY=haproxy bash bench/callgrind.sh       (HAProxy with the bench's settings)
# Env: CONNS=16 WARM=3 SECS=8 BASE_PORT=18580 KEEP=1 (keep the work dir with callgrind.out).
# Prints "IR_PER_REQ <n> requests=<r> ir=<total>" and the top inclusive functions.
#
# Method: the proxy starts under `valgrind --tool=callgrind --instr-atstart=no`, one nginx
# backend answers a fixed 200, wrk warms up (uncounted), then instrumentation is switched on
# for a measured wrk run and off again; the total Ir divided by wrk's request count is the
# figure. Connection set-up of the measured run's CONNS connections is included (~1-2 %).
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
BIN=${1:-$REPO/target/release/berthd}
PROXY=${PROXY:-berthd}
CONNS=${CONNS:-16}
WARM=${WARM:-3}
SECS=${SECS:-8}
BASE_PORT=${BASE_PORT:-18580}
BACKEND_PORT=$BASE_PORT
PROXY_PORT=$((BASE_PORT + 1))
API_PORT=$((BASE_PORT + 2))

for tool in valgrind callgrind_control callgrind_annotate wrk nginx curl; do
    command -v "$tool" >/dev/null || { echo "callgrind.sh: missing $tool (apt-get install -y valgrind wrk nginx-light curl)" >&2; exit 1; }
done

WORK=$(mktemp -d /tmp/berth-callgrind.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

wait_200() { # wait_200 PORT: until a request through it returns 200 (60 s: valgrind starts slowly)
    local deadline=$((SECONDS + 60))
    until [ "$(curl -s -o /dev/null -w '%{http_code}' -H 'Host: bench.test' --max-time 2 "http://127.0.0.1:$1/" || true)" = 200 ]; do
        [ "$SECONDS" -lt "$deadline" ] || { cat "$WORK"/*.log >&2 || true; echo "no 200 on port $1" >&2; exit 1; }
        sleep 0.2
    done
}

mkdir -p "$WORK/backend/tmp"
cat >"$WORK/backend/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $WORK/backend/nginx.pid;
error_log $WORK/backend/error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $WORK/backend/tmp/body;
    proxy_temp_path $WORK/backend/tmp/proxy;
    fastcgi_temp_path $WORK/backend/tmp/fastcgi;
    uwsgi_temp_path $WORK/backend/tmp/uwsgi;
    scgi_temp_path $WORK/backend/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {
        listen 127.0.0.1:$BACKEND_PORT;
        default_type text/plain;
        location / { return 200 "hello from the bench backend\n"; }
    }
}
EOF
nginx -c "$WORK/backend/nginx.conf" -p "$WORK/backend" -e "$WORK/backend/error.log" >"$WORK/backend.log" 2>&1 &
PIDS+=($!)
wait_200 "$BACKEND_PORT"

case "$PROXY" in
    berthd)
        mkdir -p "$WORK/data" && chmod 700 "$WORK/data"
        cat >"$WORK/berthd.yaml" <<EOF
http:
  listen: "127.0.0.1:$PROXY_PORT"
api:
  listen: "127.0.0.1:$API_PORT"
data_dir: "$WORK/data"
proxy:
  workers: 1
log:
  level: warn
  access_log: false
routes:
  - domains: ["bench.test"]
    backends:
      - address: "127.0.0.1:$BACKEND_PORT"
EOF
        valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.out" \
            "$BIN" --config "$WORK/berthd.yaml" >"$WORK/proxy.log" 2>&1 &
        ;;
    haproxy)
        cat >"$WORK/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option forwardfor
    http-reuse always
frontend fe
    bind 127.0.0.1:$PROXY_PORT
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Real-IP %[src]
    acl bench hdr(host) -i bench.test
    http-request return status 404 content-type text/plain string "no route" if !bench
    use_backend be if bench
backend be
    server s1 127.0.0.1:$BACKEND_PORT
EOF
        valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/callgrind.out" \
            haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/proxy.log" 2>&1 &
        ;;
    *) echo "callgrind.sh: PROXY must be berthd or haproxy" >&2; exit 2 ;;
esac
VPID=$!
PIDS+=($VPID)
wait_200 "$PROXY_PORT"

url="http://127.0.0.1:$PROXY_PORT/"
timeout 60 wrk -t1 -c"$CONNS" -d"${WARM}s" -H 'Host: bench.test' "$url" >/dev/null
callgrind_control -i on "$VPID" >/dev/null
timeout 120 wrk -t1 -c"$CONNS" -d"${SECS}s" -H 'Host: bench.test' "$url" >"$WORK/wrk.txt"
callgrind_control -i off "$VPID" >/dev/null
callgrind_control -d "$VPID" >/dev/null
sleep 1
reqs=$(awk '/requests in/ {print $1}' "$WORK/wrk.txt")
errs=$(grep -E 'Non-2xx|Socket errors' "$WORK/wrk.txt" || true)
[ -z "$errs" ] || echo "wrk reported: $errs" >&2
# The dump written by `callgrind_control -d` holds the instrumented part.
out=$(ls -t "$WORK"/callgrind.out* | head -1)
callgrind_annotate "$out" >"$WORK/annotate.txt" 2>/dev/null || true
total=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' "$WORK/annotate.txt")
[ -n "$total" ] && [ -n "$reqs" ] || { echo "callgrind.sh: no totals (see $WORK)" >&2; KEEP=1; exit 1; }
echo "IR_PER_REQ $((total / reqs)) requests=$reqs ir=$total proxy=$PROXY bin=$BIN"
callgrind_annotate --inclusive=yes "$out" >"$WORK/inclusive.txt" 2>/dev/null || true
grep -E '^ *[0-9,]+ \(' "$WORK/inclusive.txt" | head -"${TOP:-30}" | cut -c1-200 || true
