#!/usr/bin/env bash
# bench/tcp.sh: TCP (L4) mode side by side: berthd `mode: tcp` frontend vs HAProxy `mode tcp`
# vs nginx `stream`, one run, same machine. Called by `bench/run.sh --only tcp`, or alone.
#
# Layout as in run.sh (2 cores): wrk ($WRK_THREADS threads, 2 by default) and the backend (nginx, one worker) pinned on
# LOAD_CPU, the proxy under test on PROXY_CPU, one worker/thread each, nothing logged per
# connection. The proxies only move bytes (no HTTP parsing); wrk speaks HTTP to the backend
# through them. Two loads:
#   conn   : wrk -c$CONN_CONNS with "Connection: close" for a small 200: every request is a new
#            TCP connection through the proxy, so requests/s = connections/s.
#   stream : wrk -c$STREAM_CONNS keep-alive GETs of a $BIG_MIB MiB file: MB/s through the proxy.
# Rounds are interleaved; the table shows the median per cell, with the proxy's CPU use
# (user+system time / wall time; 100% = one core). JSON: bench/results/tcp-latest.json.
#
# Usage: bash bench/tcp.sh   (env: ROUNDS=3 DURATION=10 WARMUP=2 BERTHD=... BUILD=0|1)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
DURATION=${DURATION:-10}
WARMUP=${WARMUP:-2}
ROUNDS=${ROUNDS:-3}
WRK_THREADS=${WRK_THREADS:-2}   # 2, as in run.sh: with one thread wrk, not the proxy, was the limit (85-92 % proxy CPU)
CONN_CONNS=${CONN_CONNS:-16}
STREAM_CONNS=${STREAM_CONNS:-8}
BIG_MIB=${BIG_MIB:-1}
LOAD_CPU=${LOAD_CPU:-0}
PROXY_CPU=${PROXY_CPU:-1}
BASE_PORT=${TCP_BASE_PORT:-18580}
PROXIES=${TCP_PROXIES:-"berthd haproxy nginx"}
BERTHD=${BERTHD:-$REPO/target/release/berthd}
BUILD=${BUILD:-1}
OUT=${TCP_OUT:-$BENCH_DIR/results/tcp-latest.json}

BACKEND_PORT=$BASE_PORT
declare -A PORT=([berthd]=$((BASE_PORT + 1)) [haproxy]=$((BASE_PORT + 2)) [nginx]=$((BASE_PORT + 3)))
BERTHD_HTTP=$((BASE_PORT + 7))
BERTHD_API=$((BASE_PORT + 8))

log() { printf '[bench-tcp %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

for tool in haproxy nginx wrk curl python3 taskset; do
    command -v "$tool" >/dev/null 2>&1 || die "missing: $tool"
done

WORK=$(mktemp -d /tmp/berth-bench-tcp.XXXXXX)
# nginx's workers run as nobody when started as root: mktemp's 0700 hid /big from them (403).
chmod 755 "$WORK"
declare -a STARTED=()
declare -A PID_OF=()
cleanup() {
    local pid
    for pid in "${STARTED[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    sleep 0.3
    for pid in "${STARTED[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ "${KEEP_WORK:-0}" = 1 ] || rm -rf "$WORK"
}
trap cleanup EXIT

start() { # start NAME CPU CMD...: pinned, logged, remembered by PID
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$WORK/$name.log" 2>&1 &
    STARTED+=("$!")
    PID_OF[$name]=$!
}

pids_of() { echo "${PID_OF[$1]}" $(pgrep -P "${PID_OF[$1]}" 2>/dev/null || true); }

cpu_ticks() { # user+system ticks summed over PIDs
    local t=0 pid u s
    for pid in "$@"; do
        read -r u s < <(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12, $13}') || true
        t=$((t + ${u:-0} + ${s:-0}))
    done
    echo "$t"
}

wait_200() { # wait_200 PORT NAME
    local deadline=$((SECONDS + 10))
    while [ "$SECONDS" -lt "$deadline" ]; do
        kill -0 "${PID_OF[$2]}" 2>/dev/null || { cat "$WORK/$2.log" >&2; die "$2 exited"; }
        [ "$(curl -s -o /dev/null -w '%{http_code}' --max-time 1 "http://127.0.0.1:$1/" 2>/dev/null)" = 200 ] && return 0
        sleep 0.1
    done
    cat "$WORK/$2.log" >&2
    die "$2 did not answer on port $1"
}

start_backend() {
    local d=$WORK/backend
    mkdir -p "$d/tmp" "$d/www"
    head -c $((BIG_MIB << 20)) /dev/urandom >"$d/www/big"
    cat >"$d/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    sendfile on;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {
        listen 127.0.0.1:$BACKEND_PORT backlog=4096;
        default_type application/octet-stream;
        location = / { return 200 "hello from the bench backend\n"; }
        location = /big { root $d/www; }
    }
}
EOF
    start backend "$LOAD_CPU" nginx -c "$d/nginx.conf" -p "$d" -e "$d/error.log"
    wait_200 "$BACKEND_PORT" backend
}

start_berthd() {
    local d=$WORK/berthd
    mkdir -p "$d/data"
    chmod 700 "$d/data"
    cat >"$d/berthd.yaml" <<EOF
http:
  listen: "127.0.0.1:$BERTHD_HTTP"
api:
  listen: "127.0.0.1:$BERTHD_API"
data_dir: "$d/data"
proxy:
  workers: 1
log:
  level: warn
  access_log: false
pools:
  - name: be
    members:
      - address: "127.0.0.1:$BACKEND_PORT"
frontends:
  - name: bench
    mode: tcp
    bind: "127.0.0.1:${PORT[berthd]}"
    pool: be
EOF
    "$BERTHD" check-config "$d/berthd.yaml" >&2 || die "berthd rejected the bench config"
    start berthd "$PROXY_CPU" "$BERTHD" --config "$d/berthd.yaml"
    wait_200 "${PORT[berthd]}" berthd
}

start_haproxy() {
    local d=$WORK/haproxy
    mkdir -p "$d"
    cat >"$d/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 8192
defaults
    mode tcp
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend fe
    bind 127.0.0.1:${PORT[haproxy]}
    default_backend be
backend be
    server s1 127.0.0.1:$BACKEND_PORT
EOF
    haproxy -c -q -f "$d/haproxy.cfg" || die "haproxy rejected the bench config"
    start haproxy "$PROXY_CPU" haproxy -db -f "$d/haproxy.cfg"
    wait_200 "${PORT[haproxy]}" haproxy
}

start_nginx() {
    local d=$WORK/nginx
    mkdir -p "$d"
    local module=/usr/lib/nginx/modules/ngx_stream_module.so
    # Debian builds the stream module as a dynamic module (package libnginx-mod-stream).
    { [ -f "$module" ] && echo "load_module $module;"; } >"$d/nginx.conf" || true
    cat >>"$d/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 8192; }
stream {
    upstream be { server 127.0.0.1:$BACKEND_PORT; }
    server {
        listen 127.0.0.1:${PORT[nginx]};
        proxy_pass be;
        proxy_connect_timeout 5s;
        proxy_timeout 60s;
    }
}
EOF
    nginx -t -q -c "$d/nginx.conf" -p "$d" -e "$d/error.log" || die "nginx rejected the bench config (needs the stream module: nginx-full or libnginx-mod-stream)"
    start nginx "$PROXY_CPU" nginx -c "$d/nginx.conf" -p "$d" -e "$d/error.log"
    wait_200 "${PORT[nginx]}" nginx
}

run_wrk() { # run_wrk PROXY LOAD SECONDS [extra]
    local p=$1 load=$2 secs=$3
    shift 3
    local args=(-c"$CONN_CONNS" -H "Connection: close" "http://127.0.0.1:${PORT[$p]}/")
    [ "$load" = stream ] && args=(-c"$STREAM_CONNS" "http://127.0.0.1:${PORT[$p]}/big")
    timeout --kill-after=5 $((secs + 30)) taskset -c "$LOAD_CPU" \
        wrk -t"$WRK_THREADS" -d"${secs}s" --timeout 5s "$@" "${args[@]}"
}

measure() { # measure PROXY LOAD ROUND: one JSON line into raw.jsonl
    local p=$1 load=$2 round=$3 out=$WORK/wrk-$1-$2-$3.txt
    run_wrk "$p" "$load" "$WARMUP" >/dev/null
    local pids t0 c0 t1 c1
    pids=$(pids_of "$p")
    # shellcheck disable=SC2086
    t0=$(date +%s.%N); c0=$(cpu_ticks $pids)
    run_wrk "$p" "$load" "$DURATION" -s "$BENCH_DIR/report.lua" >"$out"
    # shellcheck disable=SC2086
    t1=$(date +%s.%N); c1=$(cpu_ticks $pids)
    kill -0 "${PID_OF[$p]}" 2>/dev/null || { tail -20 "$WORK/$p.log" >&2; die "$p died"; }
    local j
    j=$(sed -n 's/^WRK_JSON //p' "$out")
    [ -n "$j" ] || { cat "$out" >&2; die "no wrk result ($p/$load)"; }
    printf '{"proxy":"%s","load":"%s","round":%d,"wall_s":%s,"cpu_ticks":%d,"clk_tck":%d,"wrk":%s}\n' \
        "$p" "$load" "$round" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')" \
        $((c1 - c0)) "$(getconf CLK_TCK)" "$j" >>"$WORK/raw.jsonl"
    log "$p $load round $round: $(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); w=r["wrk"]; d=w["duration_us"]/1e6; print("%.0f conn/s" % (w["requests"]/d) if r["load"]=="conn" else "%.1f MB/s" % (w["bytes"]/d/1e6), "errors", w["errors"])' "$(tail -1 "$WORK/raw.jsonl")")"
}

if [ "$BUILD" = 1 ]; then
    log "cargo build --release (no-op when up to date)"
    (cd "$REPO" && cargo build --release --bin berthd) >&2
fi
[ -x "$BERTHD" ] || die "no berthd binary at $BERTHD"
log "work dir $WORK; proxies on CPU $PROXY_CPU, wrk + backend on CPU $LOAD_CPU; load average $(cut -d' ' -f1-3 /proc/loadavg)"
start_backend
for p in $PROXIES; do "start_$p"; done
: >"$WORK/raw.jsonl"
for round in $(seq 1 "$ROUNDS"); do
    for p in $PROXIES; do
        for load in conn stream; do
            measure "$p" "$load" "$round"
        done
    done
done
mkdir -p "$(dirname "$OUT")"
python3 - "$WORK/raw.jsonl" "$OUT" "$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)" <<'EOF'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
cells = {}
for r in rows:
    w = r["wrk"]
    secs = w["duration_us"] / 1e6
    errors = sum(w["errors"].values())
    value = w["requests"] / secs if r["load"] == "conn" else w["bytes"] / secs / 1e6
    cpu = 100.0 * r["cpu_ticks"] / r["clk_tck"] / r["wall_s"]
    cells.setdefault((r["proxy"], r["load"]), []).append((value, cpu, errors))
proxies = list(dict.fromkeys(r["proxy"] for r in rows))
def med(p, l, i):
    v = cells.get((p, l))
    return statistics.median(x[i] for x in v) if v else None
print()
print("TCP mode (median of %d rounds)" % max(r["round"] for r in rows))
print("%-8s %12s %8s %10s %8s %8s %14s %14s" % ("proxy", "conn/s", "cpu%", "MB/s", "cpu%", "errors", "conn vs haproxy", "MB/s vs haproxy"))
summary = {}
for p in proxies:
    c, cc, m, mc = med(p, "conn", 0), med(p, "conn", 1), med(p, "stream", 0), med(p, "stream", 1)
    errs = sum(x[2] for l in ("conn", "stream") for x in cells.get((p, l), []))
    hc, hm = med("haproxy", "conn", 0), med("haproxy", "stream", 0)
    rc = c / hc if c and hc else None
    rm = m / hm if m and hm else None
    print("%-8s %12.0f %7.0f%% %10.1f %7.0f%% %8d %14s %14s" % (p, c, cc, m, mc, errs,
          "%.2fx" % rc if rc else "-", "%.2fx" % rm if rm else "-"))
    summary[p] = {"connections_per_s": c, "conn_cpu_percent": cc, "mb_per_s": m, "stream_cpu_percent": mc,
                  "errors": errs, "conn_vs_haproxy": rc, "mb_vs_haproxy": rm}
json.dump({"commit": sys.argv[3], "summary": summary, "raw": rows}, open(sys.argv[2], "w"), indent=1)
print("\nJSON: %s" % sys.argv[2])
EOF
