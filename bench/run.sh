#!/usr/bin/env bash
# bench/run.sh: berthd, HAProxy and nginx side by side under wrk, on one machine, in one run.
#
# Layout (2 cores): the load generator (wrk, one thread) and the shared backend (an nginx
# instance with one worker answering a small fixed 200) are pinned on LOAD_CPU; the proxy under
# test is pinned on PROXY_CPU. Each proxy runs one worker/thread, keeps connections to the
# backend alive, logs nothing per request, and routes by Host (bench.test) like berthd does.
# Rounds are interleaved (round 1: berthd, haproxy, nginx; round 2: ...) and the table shows the
# median per cell. Results: a table on stdout and JSON in bench/results/latest.json.
#
# Usage: bash bench/run.sh            (env knobs below, e.g. ROUNDS=5 DURATION=20 bash bench/run.sh)
#        bash bench/run.sh --planned  (also list the planned scenarios; they are not measured yet)
#        bash bench/run.sh --profile  (berthd only: perf profile under load, see bench/README.md)
#
# Needs: haproxy, nginx-light, wrk, curl, python3, taskset/setsid (util-linux), cargo (unless
# BERTHD=...); linux-perf for --profile.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")

# ---------------------------------------------------------------------------------------------
# Settings (all overridable from the environment)
# ---------------------------------------------------------------------------------------------
DURATION=${DURATION:-10}          # seconds measured per cell
WARMUP=${WARMUP:-2}               # seconds of unmeasured load before each cell
ROUNDS=${ROUNDS:-3}               # interleaved rounds; the table shows the median
KA_CONNS=${KA_CONNS:-64}          # connections in the keep-alive scenario
CLOSE_CONNS=${CLOSE_CONNS:-16}    # connections in the new-connection-per-request scenario
PROXIES=${PROXIES:-"berthd ${BERTHD_B:+berthd_b }haproxy nginx"}
SCENARIOS=${SCENARIOS:-"keepalive close"}
BASE_PORT=${BASE_PORT:-18480}     # backend; berthd +1, haproxy +2, nginx +3, berthd_b +4; APIs +9/+10
LOAD_CPU=${LOAD_CPU:-0}           # wrk and the backend
PROXY_CPU=${PROXY_CPU:-1}         # the proxy under test
BERTHD=${BERTHD:-$REPO/target/release/berthd}
BERTHD_B=${BERTHD_B:-}            # optional second berthd binary ("berthd_b") for A/B comparisons
BUILD=${BUILD:-1}                 # 1: cargo build --release first (no-op when up to date)
OUT=${OUT:-$BENCH_DIR/results/latest.json}
HOST_HEADER=bench.test
RUN_PLANNED=0
PROFILE=0
for arg in "$@"; do
    case "$arg" in
        --planned) RUN_PLANNED=1 ;;
        --profile) PROFILE=1 ;;
        -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

# CPU priority. The machine is shared, and with autogroup scheduling a plain `nice` only counts
# inside one session, so the run moves into its own session (setsid) and gives that session's
# autogroup this nice value. Everything the bench starts (backend, proxies, wrk) inherits it, so
# the three proxies are treated alike. BENCH_NICE=0 runs without any of this.
BENCH_NICE=${BENCH_NICE:--10}
if [ "$BENCH_NICE" != 0 ] && [ -z "${BERTH_BENCH_SESSION:-}" ] && [ -w /proc/self/autogroup ]; then
    BERTH_BENCH_SESSION=1 setsid bash "$0" "$@" &
    child=$!
    trap 'kill -TERM "$child" 2>/dev/null || true' INT TERM
    rc=0
    while kill -0 "$child" 2>/dev/null; do
        wait "$child" && rc=0 || rc=$?
    done
    exit "$rc"
fi
if [ "$BENCH_NICE" != 0 ] && [ -n "${BERTH_BENCH_SESSION:-}" ]; then
    echo "$BENCH_NICE" >/proc/self/autogroup 2>/dev/null ||
        echo "[bench] note: could not set the autogroup nice value; running at normal priority" >&2
fi

BACKEND_PORT=$BASE_PORT
declare -A PORT=([berthd]=$((BASE_PORT + 1)) [haproxy]=$((BASE_PORT + 2)) [nginx]=$((BASE_PORT + 3))
                [berthd_b]=$((BASE_PORT + 4)))
declare -A API_PORT=([berthd]=$((BASE_PORT + 9)) [berthd_b]=$((BASE_PORT + 10)))

log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# ---------------------------------------------------------------------------------------------
# Process bookkeeping and cleanup: everything started here is killed on exit, by PID.
# ---------------------------------------------------------------------------------------------
WORK=$(mktemp -d /tmp/berth-bench.XXXXXX)
declare -a STARTED=()             # PIDs we started (direct children)
declare -A PROC_PID=()            # name -> main PID (backend, berthd, haproxy, nginx)

cleanup() {
    local rc=$?
    local pid
    for pid in "${STARTED[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for _ in $(seq 1 30); do
        local alive=0
        for pid in "${STARTED[@]}"; do
            kill -0 "$pid" 2>/dev/null && alive=1
        done
        [ "$alive" = 0 ] && break
        sleep 0.1
    done
    for pid in "${STARTED[@]}"; do
        kill -KILL "$pid" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    if [ "${KEEP_WORK:-0}" = 1 ]; then
        log "work directory kept: $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CPU CMD...: runs CMD pinned on CPU in the background, stderr to $WORK/NAME.log.
start() {
    local name=$1 cpu=$2
    shift 2
    taskset -c "$cpu" "$@" >"$WORK/$name.log" 2>&1 &
    local pid=$!
    STARTED+=("$pid")
    PROC_PID[$name]=$pid
}

# All PIDs of a started server: the main process and its children (nginx workers).
pids_of() {
    local main=${PROC_PID[$1]}
    echo "$main" $(pgrep -P "$main" 2>/dev/null || true)
}

# Sum of VmRSS (KiB) over the given PIDs.
rss_kb() {
    local total=0 pid v
    for pid in "$@"; do
        v=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# User and system CPU time (clock ticks) summed over the given PIDs (all their threads): "U S".
cpu_ticks() {
    local us=0 sy=0 pid u s
    for pid in "$@"; do
        # Fields 14 and 15 of /proc/PID/stat; the command name (field 2) may contain spaces.
        read -r u s < <(sed 's/^.*) //' "/proc/$pid/stat" 2>/dev/null | awk '{print $12, $13}') || true
        us=$((us + ${u:-0}))
        sy=$((sy + ${s:-0}))
    done
    echo "$us $sy"
}

# Busy ticks of one CPU from /proc/stat (everything except idle and iowait).
cpu_busy_ticks() {
    awk -v c="cpu$1" '$1 == c {print $2 + $3 + $4 + $7 + $8 + $9}' /proc/stat
}

wait_http() { # wait_http PORT NAME: until a request through it returns 200 (10 s deadline)
    local port=$1 name=$2 deadline=$((SECONDS + 10))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if ! kill -0 "${PROC_PID[$name]}" 2>/dev/null; then
            cat "$WORK/$name.log" >&2 || true
            die "$name exited during start-up"
        fi
        if [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Host: $HOST_HEADER" \
                --max-time 1 "http://127.0.0.1:$port/" 2>/dev/null)" = 200 ]; then
            return 0
        fi
        sleep 0.1
    done
    cat "$WORK/$name.log" >&2 || true
    die "$name did not answer 200 on 127.0.0.1:$port within 10 s"
}

# ---------------------------------------------------------------------------------------------
# Preflight and build
# ---------------------------------------------------------------------------------------------
preflight() {
    local missing=()
    for tool in haproxy nginx wrk curl python3 taskset pgrep; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] ||
        die "missing: ${missing[*]} (apt-get install -y haproxy nginx-light wrk curl python3 util-linux procps)"
    local ncpu
    ncpu=$(nproc)
    [ "$ncpu" -gt "$LOAD_CPU" ] && [ "$ncpu" -gt "$PROXY_CPU" ] ||
        die "LOAD_CPU=$LOAD_CPU / PROXY_CPU=$PROXY_CPU do not exist on this $ncpu-CPU machine"
    for p in $PROXIES; do
        case "$p" in
            berthd|haproxy|nginx) ;;
            berthd_b) [ -n "$BERTHD_B" ] || die "berthd_b needs BERTHD_B=/path/to/berthd" ;;
            *) die "unknown proxy $p" ;;
        esac
    done
    for s in $SCENARIOS; do
        declare -F "wrk_args_$s" >/dev/null || die "unknown scenario $s"
    done
}

build_berthd() {
    if [ "$BUILD" = 1 ]; then
        log "cargo build --release (no-op when up to date)"
        (cd "$REPO" && cargo build --release --bin berthd) >&2
    fi
    [ -x "$BERTHD" ] || die "no berthd binary at $BERTHD"
}

# ---------------------------------------------------------------------------------------------
# The shared backend: nginx, one worker, fixed small 200 body, pinned on LOAD_CPU
# ---------------------------------------------------------------------------------------------
start_backend() {
    local d=$WORK/backend
    mkdir -p "$d/tmp"
    cat >"$d/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {
        listen 127.0.0.1:$BACKEND_PORT;
        default_type text/plain;
        location / { return 200 "hello from the bench backend\n"; }
    }
}
EOF
    start backend "$LOAD_CPU" nginx -c "$d/nginx.conf" -p "$d" -e "$d/error.log"
    wait_http "$BACKEND_PORT" backend
}

# ---------------------------------------------------------------------------------------------
# The proxies under test. Equivalent settings: one worker/thread, keep-alive to the backend,
# no access log, Host routing (bench.test -> backend, anything else -> 404), and the same
# forwarded headers berthd sets (X-Forwarded-For/-Proto/-Host, X-Real-IP).
# ---------------------------------------------------------------------------------------------
start_berthd() { start_berthd_as berthd "$BERTHD"; }
start_berthd_b() { start_berthd_as berthd_b "$BERTHD_B"; }

start_berthd_as() {
    local name=$1 bin=$2
    local d=$WORK/$name
    [ -x "$bin" ] || die "no berthd binary at $bin"
    mkdir -p "$d/data"
    cat >"$d/berthd.yaml" <<EOF
http:
  listen: "127.0.0.1:${PORT[$name]}"
api:
  listen: "127.0.0.1:${API_PORT[$name]}"
data_dir: "$d/data"
proxy:
  workers: 1
log:
  level: warn
  access_log: false
routes:
  - domains: ["$HOST_HEADER"]
    backends:
      - address: "127.0.0.1:$BACKEND_PORT"
EOF
    "$bin" check-config "$d/berthd.yaml" >&2 || die "$name rejected the bench config"
    start "$name" "$PROXY_CPU" "$bin" --config "$d/berthd.yaml"
    wait_http "${PORT[$name]}" "$name"
}

start_haproxy() {
    local d=$WORK/haproxy
    mkdir -p "$d"
    cat >"$d/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4096
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s
    option forwardfor
    http-reuse always
frontend fe
    bind 127.0.0.1:${PORT[haproxy]}
    http-request set-header X-Forwarded-Proto http
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Real-IP %[src]
    acl bench hdr(host) -i $HOST_HEADER
    http-request return status 404 content-type text/plain string "no route for this host" if !bench
    use_backend be if bench
backend be
    server s1 127.0.0.1:$BACKEND_PORT
EOF
    haproxy -c -q -f "$d/haproxy.cfg" || die "haproxy rejected the bench config"
    # -db: foreground, one process (no master), so RSS/CPU of that PID is the whole proxy.
    start haproxy "$PROXY_CPU" haproxy -db -f "$d/haproxy.cfg"
    wait_http "${PORT[haproxy]}" haproxy
}

start_nginx() {
    local d=$WORK/nginx
    mkdir -p "$d/tmp"
    cat >"$d/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $d/nginx.pid;
error_log $d/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $d/tmp/body;
    proxy_temp_path $d/tmp/proxy;
    fastcgi_temp_path $d/tmp/fastcgi;
    uwsgi_temp_path $d/tmp/uwsgi;
    scgi_temp_path $d/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 60s;
    upstream be {
        server 127.0.0.1:$BACKEND_PORT;
        keepalive 64;
        keepalive_requests 10000000;
    }
    server {
        listen 127.0.0.1:${PORT[nginx]} default_server;
        return 404 "no route for this host\n";
    }
    server {
        listen 127.0.0.1:${PORT[nginx]};
        server_name $HOST_HEADER;
        location / {
            proxy_pass http://be;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host \$host;
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_set_header X-Real-IP \$remote_addr;
            proxy_set_header X-Forwarded-Proto \$scheme;
            proxy_set_header X-Forwarded-Host \$host;
        }
    }
}
EOF
    nginx -t -q -c "$d/nginx.conf" -p "$d" -e "$d/error.log" || die "nginx rejected the bench config"
    # Master + one worker, both pinned (the worker inherits the affinity); RSS/CPU are summed.
    start nginx "$PROXY_CPU" nginx -c "$d/nginx.conf" -p "$d" -e "$d/error.log"
    wait_http "${PORT[nginx]}" nginx
}

# ---------------------------------------------------------------------------------------------
# Scenarios: wrk_args_NAME prints the wrk arguments for scenario NAME. Add a scenario by adding
# a function here and its name to SCENARIOS.
# ---------------------------------------------------------------------------------------------
wrk_args_keepalive() { echo "-c$KA_CONNS"; }
wrk_args_close() { echo "-c$CLOSE_CONNS"; echo "-H"; echo "Connection: close"; }

# run_wrk PROXY SCENARIO SECONDS [extra wrk args...]: one wrk run against PROXY, pinned.
run_wrk() {
    local proxy=$1 scenario=$2 secs=$3
    shift 3
    local args=()
    mapfile -t args < <("wrk_args_$scenario")
    # wrk stops at -d; `timeout` is a second bound in case it ever hangs.
    timeout --kill-after=5 $((secs + 30)) \
        taskset -c "$LOAD_CPU" wrk -t1 "${args[@]}" -d"${secs}s" --timeout 5s \
        -H "Host: $HOST_HEADER" "$@" "http://127.0.0.1:${PORT[$proxy]}/"
}

# Fails loudly (with the server's log) if a server we started is gone.
ensure_alive() {
    local name=$1
    if ! kill -0 "${PROC_PID[$name]}" 2>/dev/null; then
        tail -n 30 "$WORK/$name.log" >&2 || true
        die "$name (pid ${PROC_PID[$name]}) is no longer running"
    fi
}

# measure PROXY SCENARIO ROUND: warm-up, then one measured run; appends a JSON line to raw.jsonl.
measure() {
    local proxy=$1 scenario=$2 round=$3
    local out=$WORK/wrk-$proxy-$scenario-$round.txt
    ensure_alive backend
    ensure_alive "$proxy"
    run_wrk "$proxy" "$scenario" "$WARMUP" >/dev/null
    local pids
    pids=$(pids_of "$proxy")
    # shellcheck disable=SC2086  # $pids is a space-separated list on purpose
    local t0 u0 s0 bu0 bs0 l0 p0
    t0=$(date +%s.%N); read -r u0 s0 < <(cpu_ticks $pids); read -r bu0 bs0 < <(cpu_ticks $(pids_of backend))
    l0=$(cpu_busy_ticks "$LOAD_CPU"); p0=$(cpu_busy_ticks "$PROXY_CPU")
    run_wrk "$proxy" "$scenario" "$DURATION" --latency -s "$BENCH_DIR/report.lua" >"$out"
    local t1 u1 s1 bu1 bs1 l1 p1 rss
    t1=$(date +%s.%N); read -r u1 s1 < <(cpu_ticks $pids); read -r bu1 bs1 < <(cpu_ticks $(pids_of backend))
    l1=$(cpu_busy_ticks "$LOAD_CPU"); p1=$(cpu_busy_ticks "$PROXY_CPU")
    rss=$(rss_kb $pids)
    ensure_alive "$proxy"
    local wrk_json
    wrk_json=$(sed -n 's/^WRK_JSON //p' "$out")
    [ -n "$wrk_json" ] || { cat "$out" >&2; die "no result line from wrk ($proxy/$scenario)"; }
    local worker_rss=$rss
    if [ "$proxy" = nginx ]; then
        worker_rss=$(rss_kb $(pgrep -P "${PROC_PID[nginx]}" || true))
    fi
    printf '{"proxy":"%s","scenario":"%s","round":%d,"wall_s":%s,"proxy_user_ticks":%d,"proxy_sys_ticks":%d,"backend_cpu_ticks":%d,"load_cpu_busy_ticks":%d,"proxy_cpu_busy_ticks":%d,"clk_tck":%d,"rss_kb":%d,"worker_rss_kb":%d,"processes":%d,"wrk":%s}\n' \
        "$proxy" "$scenario" "$round" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')" \
        $((u1 - u0)) $((s1 - s0)) $((bu1 + bs1 - bu0 - bs0)) $((l1 - l0)) $((p1 - p0)) "$(getconf CLK_TCK)" \
        "$rss" "$worker_rss" "$(echo $pids | wc -w)" "$wrk_json" >>"$WORK/raw.jsonl"
    python3 "$BENCH_DIR/report.py" line "$WORK/raw.jsonl" >&2
}

# ---------------------------------------------------------------------------------------------
# Main: start everything once, then interleave rounds
# ---------------------------------------------------------------------------------------------
# --profile: berthd alone under each scenario's load, sampled with perf (DWARF call graphs), and
# a summary by request-path stage in bench/results/profile-SCENARIO.txt.
profile_berthd() {
    command -v perf >/dev/null 2>&1 || die "perf is missing (apt-get install -y linux-perf)"
    perf stat -e task-clock true >/dev/null 2>&1 || die "perf cannot sample here (perf_event_paranoid?)"
    PROXIES=berthd
    preflight
    build_berthd
    start_backend
    start_berthd
    local secs=$(( DURATION > 4 ? DURATION - 2 : 2 ))
    for s in $SCENARIOS; do
        log "profiling berthd under $s load for $secs s"
        run_wrk berthd "$s" "$WARMUP" >/dev/null
        run_wrk berthd "$s" "$DURATION" >"$WORK/wrk-profile-$s.txt" &
        local wrk_pid=$!
        sleep 1
        timeout --kill-after=5 $((secs + 30)) perf record -q -F 999 --call-graph dwarf,16384 \
            -o "$WORK/perf-$s.data" -p "${PROC_PID[berthd]}" -- sleep "$secs" >/dev/null 2>&1 ||
            die "perf record failed"
        wait "$wrk_pid" || true
        local outf=$BENCH_DIR/results/profile-$s.txt
        {
            echo "berthd $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null), $s load, $(date -u +%Y-%m-%dT%H:%M:%SZ)"
            grep -E 'Requests/sec|requests in' "$WORK/wrk-profile-$s.txt" || true
            echo
            perf script -i "$WORK/perf-$s.data" -F ip,sym,dso 2>/dev/null |
                python3 "$BENCH_DIR/perf_breakdown.py"
            echo
            echo "Top symbols by self time:"
            perf report -i "$WORK/perf-$s.data" --no-children -g none --sort dso,symbol --stdio 2>/dev/null |
                grep '%' | head -40 | cut -c1-160
        } >"$outf"
        log "profile summary written to $outf"
    done
}

main() {
    if [ "$PROFILE" = 1 ]; then
        profile_berthd
        return
    fi
    preflight
    build_berthd
    local commit dirty
    commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
    dirty=$(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | head -1)
    [ -n "$dirty" ] && commit="$commit+dirty"
    local load_before
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    log "work dir $WORK; proxies on CPU $PROXY_CPU, wrk + backend on CPU $LOAD_CPU"
    log "load average before: $load_before (other processes on this machine share both CPUs)"

    start_backend
    for p in $PROXIES; do
        "start_$p"
    done
    : >"$WORK/raw.jsonl"
    local cells
    cells=$(( ROUNDS * $(echo $PROXIES | wc -w) * $(echo $SCENARIOS | wc -w) ))
    log "$cells cells of ${WARMUP}+${DURATION} s: about $(( cells * (WARMUP + DURATION + 1) / 60 + 1 )) min"
    for round in $(seq 1 "$ROUNDS"); do
        for p in $PROXIES; do
            for s in $SCENARIOS; do
                measure "$p" "$s" "$round"
            done
        done
    done
    local load_after
    load_after=$(cut -d' ' -f1-3 /proc/loadavg)

    python3 - "$WORK/meta.json" <<EOF
import json, sys, platform, os
meta = {
    "date": "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
    "commit": "$commit",
    "berthd": "$BERTHD",
    "berthd_b": "$BERTHD_B",
    "haproxy": "$(haproxy -v 2>/dev/null | head -1 | cut -d' ' -f3)",
    "nginx": "$(nginx -v 2>&1 | sed 's|.*nginx/||')",
    "wrk": "$(dpkg-query -W -f='${Version}' wrk 2>/dev/null || echo unknown)",
    "kernel": platform.release(),
    "cpus": os.cpu_count(),
    "cpu_model": next((l.split(':', 1)[1].strip() for l in open('/proc/cpuinfo') if l.startswith('model name')), 'unknown'),
    "load_average_before": "$load_before",
    "autogroup": "$(cat /proc/self/autogroup 2>/dev/null || echo unknown)",
    "load_average_after": "$load_after",
    "settings": {"duration_s": $DURATION, "warmup_s": $WARMUP, "rounds": $ROUNDS,
                 "keepalive_connections": $KA_CONNS, "close_connections": $CLOSE_CONNS,
                 "load_cpu": $LOAD_CPU, "proxy_cpu": $PROXY_CPU, "wrk_threads": 1},
}
json.dump(meta, open(sys.argv[1], "w"))
EOF
    mkdir -p "$(dirname "$OUT")"
    python3 "$BENCH_DIR/report.py" summary "$WORK/raw.jsonl" "$WORK/meta.json" --json "$OUT"
    log "JSON written to $OUT"

    if [ "$RUN_PLANNED" = 1 ]; then
        planned_scenarios
    fi
}

# =============================================================================================
# PLANNED scenarios: not implemented yet, never part of the results above. Each one is a
# function so it can be filled in without touching the measured part.
# =============================================================================================
planned_https_keepalive() {
    # Same as keepalive over TLS: one self-signed certificate (openssl req -x509 ...) shared by
    # berthd (tls section, when it exists), haproxy (bind ... ssl crt) and nginx (listen ... ssl).
    echo "planned: https-keepalive: not yet implemented (needs berthd TLS)"
}
planned_https_close() {
    echo "planned: https-close (full TLS handshake per request): not yet implemented (needs berthd TLS)"
}
planned_route_updates_under_load() {
    # keepalive load on berthd while a bounded loop PUTs route changes to the API
    # (127.0.0.1:$BERTHD_API_PORT) at N/s; compare req/s and p99 with the quiet run, errors must be 0.
    echo "planned: route-updates-under-load: not yet implemented (needs the REST API)"
}
planned_reload_torture() {
    # 10 binary upgrades/s for DURATION seconds under keepalive and close load; count failed
    # requests and reset connections (must be 0), report p99 against the quiet run.
    echo "planned: reload-torture (10 upgrades/s): not yet implemented (needs hitless upgrades)"
}
planned_deploy_timing() {
    # Time from `berth deploy` to the new version serving, and requests failed during the switch.
    echo "planned: deploy-timing: not yet implemented (needs Docker deploys)"
}
planned_scenarios() {
    echo
    echo "== Planned scenarios (not measured; not part of the results above) =="
    planned_https_keepalive
    planned_https_close
    planned_route_updates_under_load
    planned_reload_torture
    planned_deploy_timing
}

main
