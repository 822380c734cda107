#!/usr/bin/env bash
# bench/run.sh: berthd, HAProxy and nginx side by side under wrk, on one machine, in one run.
#
# Layout (2 cores): the load generator (wrk, WRK_THREADS=2 threads) and the shared backend (an nginx
# instance with one worker answering a small fixed 200) are pinned on LOAD_CPU; the proxy under
# test is pinned on PROXY_CPU. Each proxy runs one worker/thread, keeps connections to the
# backend alive, logs nothing per request, and routes by Host (bench.test) like berthd does.
# Rounds are interleaved (round 1: berthd, haproxy, nginx; round 2: ...) and the table shows the
# median per cell. Results: a table on stdout and JSON in bench/results/latest.json.
# Every cell reports the proxy's CPU % next to req/s; a cell where the proxy used less than
# MIN_PROXY_CPU % of its core is flagged ("!"): its req/s measures the load generator as much as
# the proxy (compare CPU us/req there). Two wrk threads keep the proxy saturated on this machine.
# A/B: BERTHD_B=/path/to/other/berthd adds "berthd_b" to every cell (same run, same noise) and
# the table shows berthd_b / berthd.
#
# Usage: bash bench/run.sh            (env knobs below, e.g. ROUNDS=5 DURATION=20 bash bench/run.sh)
#        bash bench/run.sh --only basic,https,updates,torture,deploy,tcp   (any subset; default
#        all but tcp; tcp = TCP mode vs HAProxy mode tcp vs nginx stream, see bench/tcp.sh)
#        bash bench/run.sh --profile  (berthd only: perf profile under load, see bench/README.md)
#
# Parts: basic = keepalive + close over HTTP; https = https-keepalive + https-close (same
# self-signed ECDSA certificate for all three); updates = berthd keep-alive load with and without
# ~100 API route updates/s; torture = 10 reloads/s for 10 s (berthd upgrade by SIGUSR2, HAProxy
# master-worker SIGUSR2, nginx SIGHUP), first under TORTURE_KA_CONNS keep-alive connections
# alone (errors per 10k and req/s against the same load without reloads, TORTURE_KA_ROUNDS
# pairs), then under new-connection load next to a few keep-alive connections; deploy = the docker_deploy system
# test's 3-replica rolling deploy timing (needs dockerd).
#
# Needs: haproxy, nginx-light, wrk, curl, openssl, python3, taskset/setsid (util-linux), cargo
# (unless BERTHD=...); linux-perf for --profile; docker for deploy.
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
SCENARIOS=${SCENARIOS:-}         # wrk load shapes; default from --only (basic, https)
BASE_PORT=${BASE_PORT:-18480}     # backend +0/+6; proxies +1..+4, TLS +41..+44; APIs +9/+10; see below
UPDATE_RATE=${UPDATE_RATE:-100}   # updates: API updates per second during the load
UPDATE_ROUNDS=${UPDATE_ROUNDS:-2} # updates: interleaved quiet/updates runs, median shown
RELOAD_RATE=${RELOAD_RATE:-10}    # torture: reloads per second ...
RELOAD_SECS=${RELOAD_SECS:-10}    # ... for this long (bounded: RATE*SECS reloads per proxy)
TORTURE_KA_CONNS=${TORTURE_KA_CONNS:-64} # torture: keep-alive connections through reloads
TORTURE_KA_ROUNDS=${TORTURE_KA_ROUNDS:-3} # torture: quiet/reloads pairs of that load; the median drop counts
TORTURE_MIX_KA_CONNS=${TORTURE_MIX_KA_CONNS:-8} # torture: keep-alive connections next to the close load
BERTHD_RELOAD=${BERTHD_RELOAD:-signal} # torture: berthd upgraded by SIGUSR2 (signal) or `berthd upgrade` (command)
MEMORY_CONNS=${MEMORY_CONNS:-10000} # memory: idle keep-alive client connections held open
MEMORY_TIMEOUT=${MEMORY_TIMEOUT:-180} # memory: bound (s) on opening, sampling and closing them
MEMORY_SETTLE=${MEMORY_SETTLE:-2}    # memory: s after the last connection opened (and after the close) before sampling
WRK_THREADS=${WRK_THREADS:-2}     # wrk threads (2: the proxy, not wrk, is the limit)
MIN_PROXY_CPU=${MIN_PROXY_CPU:-95} # cells where the proxy used less of its core are flagged
LOAD_CPU=${LOAD_CPU:-0}           # wrk and the backend
PROXY_CPU=${PROXY_CPU:-1}         # the proxy under test
BERTHD=${BERTHD:-$REPO/target/release/berthd}
BERTHD_B=${BERTHD_B:-}            # optional second berthd binary ("berthd_b") for A/B comparisons
BUILD=${BUILD:-1}                 # 1: cargo build --release first (no-op when up to date)
OUT=${OUT:-$BENCH_DIR/results/latest.json}
HOST_HEADER=bench.test
ONLY=basic,https,updates,torture,memory,deploy
PROFILE=0
ARGS=("$@")   # kept for the re-exec below (the loop shifts them away)
while [ $# -gt 0 ]; do
    case "$1" in
        --only) ONLY=${2:?--only needs a list, e.g. basic,https}; shift ;;
        --only=*) ONLY=${1#--only=} ;;
        --profile) PROFILE=1 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (try --help)" >&2; exit 2 ;;
    esac
    shift
done
for part in ${ONLY//,/ }; do
    case "$part" in
        basic|https|updates|torture|memory|deploy|tcp) ;;
        *) echo "run.sh: unknown part $part in --only (basic, https, updates, torture, memory, deploy, tcp)" >&2; exit 2 ;;
    esac
done
want() { case ",$ONLY," in *",$1,"*) return 0 ;; *) return 1 ;; esac; }
if [ -z "$SCENARIOS" ]; then
    want basic && SCENARIOS="keepalive close"
    want https && SCENARIOS="$SCENARIOS https-keepalive https-close"
    SCENARIOS=${SCENARIOS# }
fi

# CPU priority. The machine is shared, and with autogroup scheduling a plain `nice` only counts
# inside one session, so the run moves into its own session (setsid) and gives that session's
# autogroup this nice value. Everything the bench starts (backend, proxies, wrk) inherits it, so
# the three proxies are treated alike. BENCH_NICE=0 runs without any of this.
BENCH_NICE=${BENCH_NICE:--10}
if [ "$BENCH_NICE" != 0 ] && [ -z "${BERTH_BENCH_SESSION:-}" ] && [ -w /proc/self/autogroup ]; then
    BERTH_BENCH_SESSION=1 setsid bash "$0" ${ARGS[@]+"${ARGS[@]}"} &
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
BACKEND2_PORT=$((BASE_PORT + 6))  # second listener of the same backend (route updates switch to it)
declare -A PORT=([berthd]=$((BASE_PORT + 1)) [haproxy]=$((BASE_PORT + 2)) [nginx]=$((BASE_PORT + 3))
                [berthd_b]=$((BASE_PORT + 4)) [berthd_u]=$((BASE_PORT + 5))
                [berthd_t]=$((BASE_PORT + 21)) [haproxy_t]=$((BASE_PORT + 22)) [nginx_t]=$((BASE_PORT + 23))
                [berthd_m]=$((BASE_PORT + 31)) [haproxy_m]=$((BASE_PORT + 32)) [nginx_m]=$((BASE_PORT + 33))
                [berthd_b_m]=$((BASE_PORT + 34)))
declare -A TLS_PORT=([berthd]=$((BASE_PORT + 41)) [haproxy]=$((BASE_PORT + 42)) [nginx]=$((BASE_PORT + 43))
                    [berthd_b]=$((BASE_PORT + 44)))
declare -A API_PORT=([berthd]=$((BASE_PORT + 9)) [berthd_b]=$((BASE_PORT + 10)) [berthd_u]=$((BASE_PORT + 11))
                    [berthd_t]=$((BASE_PORT + 12)) [berthd_m]=$((BASE_PORT + 13)) [berthd_b_m]=$((BASE_PORT + 14)))

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
    # berthd upgrades (torture) leave successors that are not our children: stop them by PID.
    [ ! -f "$WORK/berthd_t.pids" ] || stop_berthd_t
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

# The words after the first argument, rotated left by it: rotate 1 a b c -> b c a.
rotate() {
    local k=$1
    shift
    local words=("$@") n=$# i
    for (( i = 0; i < n; i++ )); do
        printf '%s ' "${words[$(( (i + k) % n ))]}"
    done
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

wait_http() { # wait_http PORT NAME [https]: until a request through it returns 200 (10 s deadline)
    local port=$1 name=$2 scheme=${3:-http} deadline=$((SECONDS + 10))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if ! kill -0 "${PROC_PID[$name]}" 2>/dev/null; then
            cat "$WORK/$name.log" >&2 || true
            die "$name exited during start-up"
        fi
        if [ "$(curl -sk -o /dev/null -w '%{http_code}' -H "Host: $HOST_HEADER" \
                --max-time 1 "$scheme://127.0.0.1:$port/" 2>/dev/null)" = 200 ]; then
            return 0
        fi
        sleep 0.1
    done
    cat "$WORK/$name.log" >&2 || true
    die "$name did not answer 200 on $scheme://127.0.0.1:$port within 10 s"
}

# One self-signed ECDSA P-256 certificate for bench.test, shared by the three proxies (HTTPS).
make_cert() {
    local d=$WORK/cert
    mkdir -p "$d"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
        -subj "/CN=$HOST_HEADER" -addext "subjectAltName=DNS:$HOST_HEADER" \
        -keyout "$d/key.pem" -out "$d/cert.pem" 2>/dev/null || die "openssl could not make the bench certificate"
    cat "$d/cert.pem" "$d/key.pem" >"$d/combined.pem"   # HAProxy wants both in one file
    CERT=$d/cert.pem
    KEY=$d/key.pem
    COMBINED=$d/combined.pem
}

# ---------------------------------------------------------------------------------------------
# Preflight and build
# ---------------------------------------------------------------------------------------------
preflight() {
    local missing=()
    for tool in haproxy nginx wrk curl openssl python3 taskset pgrep; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] ||
        die "missing: ${missing[*]} (apt-get install -y haproxy nginx-light wrk curl openssl python3 util-linux procps)"
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
        declare -F "wrk_args_${s//-/_}" >/dev/null || die "unknown scenario $s"
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
        listen 127.0.0.1:$BACKEND2_PORT;
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

# berthd_config NAME [routes]: the bench config of berthd instance NAME on stdout. With "routes"
# (the default) the bench route is in the config; with "none" it is left to the API.
berthd_config() {
    local name=$1 routes=${2:-routes}
    local d=$WORK/$name level=warn
    # The torture instance logs at info: the reload loop learns that an upgrade is done (and the
    # successor's pid) from the old process's "upgrade phase=handed over to process N" line
    # (~14 info lines per upgrade, none per request or connection), as it learns HAProxy's and
    # nginx's from their logs.
    [ "$name" != berthd_t ] || level=info
    cat <<EOF
http:
  listen: "127.0.0.1:${PORT[$name]}"
api:
  listen: "127.0.0.1:${API_PORT[$name]}"
data_dir: "$d/data"
proxy:
  workers: 1
log:
  level: $level
  access_log: false
EOF
    if [ "$name" = berthd_t ]; then
        # The torture instance upgrades 10 times a second: with deploy.enabled at its default
        # (auto), every successor would connect to a running dockerd, list and watch it (~3 ms
        # of berthd CPU and ~6 ms of dockerd CPU per upgrade, measured with
        # bench/upgrade_cost.py), so the result would depend on whether dockerd runs. The bench
        # routes no apps: the proxy alone, like HAProxy and nginx.
        cat <<EOF
deploy:
  enabled: off
EOF
    fi
    if [ -n "${TLS_PORT[$name]:-}" ]; then
        cat <<EOF
tls:
  listen: "127.0.0.1:${TLS_PORT[$name]}"
  redirect: false
  certs: [{cert: "$CERT", key: "$KEY"}]
  default_cert: {cert: "$CERT", key: "$KEY"}
EOF
    fi
    if [ "$routes" = routes ]; then
        cat <<EOF
routes:
  - domains: ["$HOST_HEADER"]
    backends:
      - address: "127.0.0.1:$BACKEND_PORT"
EOF
    fi
}

start_berthd_as() {
    local name=$1 bin=$2 routes=${3:-routes}
    local d=$WORK/$name
    [ -x "$bin" ] || die "no berthd binary at $bin"
    mkdir -p "$d/data"
    chmod 700 "$d/data"
    berthd_config "$name" "$routes" >"$d/berthd.yaml"
    "$bin" check-config "$d/berthd.yaml" >&2 || die "$name rejected the bench config"
    start "$name" "$PROXY_CPU" "$bin" --config "$d/berthd.yaml"
    if [ "$routes" = routes ]; then
        wait_http "${PORT[$name]}" "$name"
        [ -z "${TLS_PORT[$name]:-}" ] || wait_http "${TLS_PORT[$name]}" "$name" https
    fi
}

write_haproxy_cfg() {
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
    bind 127.0.0.1:${TLS_PORT[haproxy]} ssl crt $COMBINED alpn http/1.1
    http-request set-header X-Forwarded-Proto https if { ssl_fc }
    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Real-IP %[src]
    acl bench hdr(host) -i $HOST_HEADER
    http-request return status 404 content-type text/plain string "no route for this host" if !bench
    use_backend be if bench
backend be
    server s1 127.0.0.1:$BACKEND_PORT
EOF
}

start_haproxy() {
    local d=$WORK/haproxy
    write_haproxy_cfg
    haproxy -c -q -f "$d/haproxy.cfg" || die "haproxy rejected the bench config"
    # -db: foreground, one process (no master), so RSS/CPU of that PID is the whole proxy.
    start haproxy "$PROXY_CPU" haproxy -db -f "$d/haproxy.cfg"
    wait_http "${PORT[haproxy]}" haproxy
    wait_http "${TLS_PORT[haproxy]}" haproxy https
}

write_nginx_conf() {
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
    ssl_certificate $CERT;
    ssl_certificate_key $KEY;
    ssl_protocols TLSv1.2 TLSv1.3;
    server {
        listen 127.0.0.1:${PORT[nginx]} default_server;
        listen 127.0.0.1:${TLS_PORT[nginx]} ssl default_server;
        return 404 "no route for this host\n";
    }
    server {
        listen 127.0.0.1:${PORT[nginx]};
        listen 127.0.0.1:${TLS_PORT[nginx]} ssl;
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
}

start_nginx() {
    local d=$WORK/nginx
    write_nginx_conf
    nginx -t -q -c "$d/nginx.conf" -p "$d" -e "$d/error.log" || die "nginx rejected the bench config"
    # Master + one worker, both pinned (the worker inherits the affinity); RSS/CPU are summed.
    start nginx "$PROXY_CPU" nginx -c "$d/nginx.conf" -p "$d" -e "$d/error.log"
    wait_http "${PORT[nginx]}" nginx
    wait_http "${TLS_PORT[nginx]}" nginx https
}

# ---------------------------------------------------------------------------------------------
# Scenarios: wrk_args_NAME prints the wrk arguments for scenario NAME. Add a scenario by adding
# a function here and its name to SCENARIOS.
# ---------------------------------------------------------------------------------------------
# Scenario names may contain '-' (https-keepalive -> wrk_args_https_keepalive).
wrk_args_keepalive() { echo "-c$KA_CONNS"; }
wrk_args_close() { echo "-c$CLOSE_CONNS"; echo "-H"; echo "Connection: close"; }
# HTTPS: wrk (OpenSSL) negotiates TLS 1.3; it never resumes sessions, so with Connection: close
# every request is a new TCP connection with a full handshake (ECDHE + ECDSA P-256 signature).
wrk_args_https_keepalive() { wrk_args_keepalive; }
wrk_args_https_close() { wrk_args_close; }

# url_of PROXY SCENARIO: where the load goes.
url_of() {
    case "$2" in
        https-*) echo "https://127.0.0.1:${TLS_PORT[$1]}/" ;;
        *) echo "http://127.0.0.1:${PORT[$1]}/" ;;
    esac
}

# run_wrk PROXY SCENARIO SECONDS [extra wrk args...]: one wrk run against PROXY, pinned.
run_wrk() {
    local proxy=$1 scenario=$2 secs=$3
    shift 3
    local args=()
    mapfile -t args < <("wrk_args_${scenario//-/_}")
    # wrk stops at -d; `timeout` is a second bound in case it ever hangs.
    timeout --kill-after=5 $((secs + 30)) \
        taskset -c "$LOAD_CPU" wrk -t"$WRK_THREADS" "${args[@]}" -d"${secs}s" --timeout 5s \
        -H "Host: $HOST_HEADER" "$@" "$(url_of "$proxy" "$scenario")"
}

# Fails loudly (with the server's log) if a server we started is gone.
ensure_alive() {
    local name=$1
    if ! kill -0 "${PROC_PID[$name]}" 2>/dev/null; then
        tail -n 30 "$WORK/$name.log" >&2 || true
        die "$name (pid ${PROC_PID[$name]}) is no longer running"
    fi
}

# measure PROXY SCENARIO ROUND [LABEL]: warm-up, then one measured run; appends a JSON line to
# raw.jsonl (scenario recorded as LABEL if given). If DURING_MEASURE names a function, it runs in
# the background during the measured run and is waited for afterwards.
measure() {
    local proxy=$1 scenario=$2 round=$3 label=${4:-$2}
    local out=$WORK/wrk-$proxy-$label-$round.txt
    ensure_alive backend
    ensure_alive "$proxy"
    run_wrk "$proxy" "$scenario" "$WARMUP" >/dev/null
    local pids
    pids=$(pids_of "$proxy")
    # shellcheck disable=SC2086  # $pids is a space-separated list on purpose
    local t0 u0 s0 bu0 bs0 l0 p0
    t0=$(date +%s.%N); read -r u0 s0 < <(cpu_ticks $pids); read -r bu0 bs0 < <(cpu_ticks $(pids_of backend))
    l0=$(cpu_busy_ticks "$LOAD_CPU"); p0=$(cpu_busy_ticks "$PROXY_CPU")
    local during_pid=
    if [ -n "${DURING_MEASURE:-}" ]; then
        "$DURING_MEASURE" "$round" &
        during_pid=$!
    fi
    run_wrk "$proxy" "$scenario" "$DURATION" --latency -s "$BENCH_DIR/report.lua" >"$out"
    [ -z "$during_pid" ] || wait "$during_pid" || die "$DURING_MEASURE failed"
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
        "$proxy" "$label" "$round" "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.3f", b - a}')" \
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
    # tcp: TCP mode vs HAProxy mode tcp vs nginx stream (bench/tcp.sh, its own table and JSON).
    if [ "$ONLY" = tcp ]; then
        BUILD=0 BERTHD=$BERTHD bash "$BENCH_DIR/tcp.sh"
        return
    fi
    local commit dirty
    commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)
    dirty=$(git -C "$REPO" status --porcelain -- src Cargo.toml Cargo.lock 2>/dev/null | head -1)
    [ -n "$dirty" ] && commit="$commit+dirty"
    local load_before
    load_before=$(cut -d' ' -f1-3 /proc/loadavg)
    log "work dir $WORK; proxies on CPU $PROXY_CPU, wrk + backend on CPU $LOAD_CPU"
    log "load average before: $load_before (other processes on this machine share both CPUs)"

    make_cert
    start_backend
    : >"$WORK/raw.jsonl"
    : >"$WORK/extra.jsonl"
    if [ -n "$SCENARIOS" ]; then
        for p in $PROXIES; do
            "start_$p"
        done
    fi
    local cells
    cells=$(( ROUNDS * $(echo $PROXIES | wc -w) * $(echo $SCENARIOS | wc -w) ))
    log "$cells cells of ${WARMUP}+${DURATION} s: about $(( cells * (WARMUP + DURATION + 1) / 60 + 1 )) min"
    # Scenario by scenario inside a round, so the proxies' cells of one scenario are measured
    # back to back (the per-round ratios compare runs ~12 s apart, not ~50 s), and the
    # proxies' order rotates from round to round (no proxy always runs first or last).
    local order
    for round in $(seq 1 "$ROUNDS"); do
        [ -n "$SCENARIOS" ] || break
        order=$(rotate "$(( round - 1 ))" $PROXIES)
        for s in $SCENARIOS; do
            for p in $order; do
                measure "$p" "$s" "$round"
            done
        done
    done
    ! want updates || scenario_updates
    ! want torture || scenario_torture
    ! want memory || scenario_memory
    ! want deploy || scenario_deploy
    ! want tcp || BUILD=0 BERTHD=$BERTHD bash "$BENCH_DIR/tcp.sh"
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
                 "load_cpu": $LOAD_CPU, "proxy_cpu": $PROXY_CPU, "wrk_threads": $WRK_THREADS,
                 "min_proxy_cpu": $MIN_PROXY_CPU,
                 "only": "$ONLY", "scenarios": "$SCENARIOS", "update_rate": $UPDATE_RATE,
                 "update_rounds": $UPDATE_ROUNDS, "reload_rate": $RELOAD_RATE, "reload_secs": $RELOAD_SECS,
                 "torture_keepalive_connections": $TORTURE_KA_CONNS,
                 "torture_mix_keepalive_connections": $TORTURE_MIX_KA_CONNS},
}
json.dump(meta, open(sys.argv[1], "w"))
EOF
    mkdir -p "$(dirname "$OUT")"
    python3 "$BENCH_DIR/report.py" summary "$WORK/raw.jsonl" "$WORK/meta.json" --extra "$WORK/extra.jsonl" --json "$OUT"
    # The same report as markdown, ready to paste into bench/README.md.
    python3 "$BENCH_DIR/report.py" summary "$WORK/raw.jsonl" "$WORK/meta.json" --extra "$WORK/extra.jsonl" \
        --markdown >"${OUT%.json}.md"
    log "JSON written to $OUT, markdown to ${OUT%.json}.md"
}

# =============================================================================================
# updates: route updates under keep-alive load (berthd only, own instance "berthd_u" whose bench
# route lives in the API so it can be changed at run time). Interleaved: quiet run, run with
# UPDATE_RATE updates/s, UPDATE_ROUNDS times; rows "updates-off" / "updates-on" in the table.
# =============================================================================================
api_put() { # api_put NAME PATH JSON: one authenticated PUT, fails on a non-2xx answer
    curl -sf -o /dev/null --max-time 5 -X PUT -H "Authorization: Bearer $UPDATES_TOKEN" \
        -H 'Content-Type: application/json' --data "$3" "http://127.0.0.1:${API_PORT[$1]}$2" ||
        die "API PUT $2 on $1 failed"
}

run_updates_loop() { # DURING_MEASURE hook: the bounded update loop for one measured run
    timeout --kill-after=5 $((DURATION + 30)) python3 "$BENCH_DIR/api_updates.py" \
        --port "${API_PORT[berthd_u]}" --token "$UPDATES_TOKEN" --rate "$UPDATE_RATE" \
        --seconds "$DURATION" --backend "127.0.0.1:$BACKEND_PORT" --backend2 "127.0.0.1:$BACKEND2_PORT" |
        sed -n 's/^UPDATES_JSON //p' | python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d["round"]=int(sys.argv[1]); d["part"]="updates"; print(json.dumps(d))' "$1" \
        >>"$WORK/extra.jsonl"
}

scenario_updates() {
    local name=berthd_u
    log "updates: berthd keep-alive load with and without $UPDATE_RATE API updates/s ($UPDATE_ROUNDS rounds)"
    mkdir -p "$WORK/$name/data"
    chmod 700 "$WORK/$name/data"
    berthd_config "$name" none >"$WORK/$name/berthd.yaml"
    UPDATES_TOKEN=$("$BERTHD" --config "$WORK/$name/berthd.yaml" token create --name bench 2>/dev/null) ||
        die "berthd token create failed"
    [ -n "$UPDATES_TOKEN" ] || die "berthd token create printed no token"
    start_berthd_as "$name" "$BERTHD" none
    local deadline=$((SECONDS + 10))
    until curl -sf -o /dev/null --max-time 1 "http://127.0.0.1:${API_PORT[$name]}/healthz"; do
        [ "$SECONDS" -lt "$deadline" ] || die "berthd_u API did not come up"
        sleep 0.1
    done
    api_put "$name" /v1/routes/bench "{\"domains\":[\"$HOST_HEADER\"],\"backends\":[{\"id\":\"a\",\"address\":\"127.0.0.1:$BACKEND_PORT\"},{\"id\":\"b\",\"address\":\"127.0.0.1:$BACKEND2_PORT\"}]}"
    api_put "$name" /v1/routes/bench-dyn "{\"domains\":[\"dyn.bench.test\"],\"backends\":[{\"id\":\"d\",\"address\":\"127.0.0.1:$BACKEND_PORT\"}]}"
    wait_http "${PORT[$name]}" "$name"
    for round in $(seq 1 "$UPDATE_ROUNDS"); do
        measure "$name" keepalive "$round" updates-off
        DURING_MEASURE=run_updates_loop measure "$name" keepalive "$round" updates-on
        tail -n 1 "$WORK/extra.jsonl" >&2
    done
}

# =============================================================================================
# torture: RELOAD_RATE reloads/s for RELOAD_SECS s under new-connection load (CLOSE_CONNS
# connections with Connection: close) plus TORTURE_MIX_KA_CONNS keep-alive connections (after the keep-alive-only part), for each
# proxy in its own fresh instance: berthd (SIGUSR2, the same binary upgrade as `berthd upgrade`:
# a full handoff to a new process every time; BERTHD_RELOAD=command runs `berthd upgrade`
# instead), HAProxy master-worker (-W) with expose-fd listeners, reloaded by SIGUSR2 to the
# master, nginx (SIGHUP to the master, what `nginx -s reload` sends). Failures: every wrk error
# (connect/read/write/timeout) and non-2xx answer.
#
# The reload loop shares LOAD_CPU with wrk and the backend, which keep that core busy, so every
# process it starts is taken from the load (perf stat, task-clock per start: `timeout` +
# `berthd upgrade` 4.0 ms, `sleep` 1.6 ms, `grep -c` 1.2 ms): with a command per reload and
# `sleep` + `grep` polls while waiting, the proxy whose reload is a costlier command, or takes
# longer to finish (more polls), was measured against less load. So the loop starts no process
# at all: each proxy gets a signal (`kill` is a shell builtin), pauses are `read` timeouts on a
# FIFO nobody writes to, and "the reload is done" is a line the proxy appends to its own log,
# read with the `read` builtin from a descriptor opened at the log's end.
# =============================================================================================

# nap SECONDS: sleep without starting a process.
nap() { read -r -t "$1" -u "$NAP_FD" _ || true; }
# follow_log FILE: LOG_FD reads what is appended to FILE from now on.
follow_log() {
    exec {LOG_FD}<"$1"
    while IFS= read -r -u "$LOG_FD" _; do :; done
    LOG_PART=
}
# wait_log REGEX: until a line appended to the followed log matches (<= 3 s); the line in LOG_LINE.
wait_log() {
    local line deadline
    now_us
    deadline=$((NOW_US + 3000000))
    while :; do
        if IFS= read -r -u "$LOG_FD" line; then
            line=$LOG_PART$line
            LOG_PART=
            if [[ $line =~ $1 ]]; then
                LOG_LINE=$line
                return 0
            fi
        else
            # End of the file for now, maybe in the middle of a line: keep that part.
            LOG_PART+=$line
            now_us
            [ "$NOW_US" -lt "$deadline" ] || return 1
            nap 0.005
        fi
    done
}

start_berthd_t() {
    start_berthd_as berthd_t "$BERTHD"
    echo "${PROC_PID[berthd_t]}" >"$WORK/berthd_t.pids"
}
# The serving berthd_t: the last pid in berthd_t.pids (each successor is added as it takes over).
berthd_t_serving() {
    local l
    BERTHD_T_PID=
    while read -r l; do BERTHD_T_PID=$l; done <"$WORK/berthd_t.pids"
}
follow_berthd_t() { berthd_t_serving; follow_log "$WORK/berthd_t.log"; }
reload_berthd_t() {
    if [ "$BERTHD_RELOAD" = command ]; then
        local out
        out=$(timeout 10 "$BERTHD" --config "$WORK/berthd_t/berthd.yaml" upgrade 2>>"$WORK/berthd_t-upgrade.log") || return 1
        # The successor is a new process (the old one drains and exits): remember it for cleanup.
        [[ $out =~ new\ process\ ([0-9]+) ]] || return 1
    else
        kill -USR2 "$BERTHD_T_PID" 2>/dev/null || return 1
        # The old process logs this once the successor is ready (when `berthd upgrade` answers),
        # or that the upgrade failed (it keeps serving).
        wait_log 'upgrade phase=(handed over to process ([0-9]+)|upgrade failed)' || return 1
        [[ $LOG_LINE =~ handed\ over\ to\ process\ ([0-9]+) ]] || return 1
    fi
    BERTHD_T_PID=${BASH_REMATCH[1]}
    echo "$BERTHD_T_PID" >>"$WORK/berthd_t.pids"
    return 0
}
berthd_pid_t() {
    "$BERTHD" --config "$WORK/berthd_t/berthd.yaml" status 2>/dev/null |
        python3 -c 'import json,sys,re
t=sys.stdin.read()
try: print(json.loads(t)["pid"])
except Exception:
    m=re.search(r"pid\D*(\d+)", t); print(m.group(1) if m else "")'
}
stop_berthd_t() {
    local pid
    for pid in $(berthd_pid_t) $(cat "$WORK/berthd_t.pids"); do
        # Only processes still running this bench's config (guards against PID reuse).
        if { tr '\0' ' ' <"/proc/$pid/cmdline"; } 2>/dev/null | grep -qF "$WORK/berthd_t/berthd.yaml"; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
}

start_haproxy_t() {
    local d=$WORK/haproxy_t
    mkdir -p "$d"
    [ -f "$WORK/haproxy/haproxy.cfg" ] || write_haproxy_cfg
    sed -e "s|^    bind 127.0.0.1:${PORT[haproxy]}\$|    bind 127.0.0.1:${PORT[haproxy_t]}|" \
        -e '/ssl crt/d' \
        -e "s|^    nbthread 1\$|    nbthread 1\n    stats socket $d/admin.sock mode 600 level admin expose-fd listeners\n    hard-stop-after 10s|" \
        "$WORK/haproxy/haproxy.cfg" >"$d/haproxy.cfg"
    haproxy -c -q -f "$d/haproxy.cfg" || die "haproxy rejected the torture config"
    # -W: master-worker; the master re-executes itself on SIGUSR2 and takes the listening sockets
    # from the old worker over the expose-fd socket (seamless reload).
    start haproxy_t "$PROXY_CPU" haproxy -W -db -f "$d/haproxy.cfg" -S "$d/master.sock"
    wait_http "${PORT[haproxy_t]}" haproxy_t
}
# HAProxy and nginx reload asynchronously and merge signals that arrive during a reload, so each
# reload waits (up to 3 s) until the master logs it; like berthd's, which waits for the old
# process's "handed over" line. Without that, 100 signals give only ~45 actual reloads.
follow_haproxy_t() { follow_log "$WORK/haproxy_t.log"; }
reload_haproxy_t() {
    kill -USR2 "${PROC_PID[haproxy_t]}" && wait_log 'New worker'
}
stop_haproxy_t() { :; }

start_nginx_t() {
    local d=$WORK/nginx_t
    mkdir -p "$d/tmp"
    [ -f "$WORK/nginx/nginx.conf" ] || write_nginx_conf
    sed -e "s|$WORK/nginx/|$d/|g" -e "s|$WORK/nginx |$d |g" \
        -e "s|127.0.0.1:${PORT[nginx]}|127.0.0.1:${PORT[nginx_t]}|g" \
        -e '/ssl/d' -e 's|^worker_processes 1;|worker_processes 1;\nworker_shutdown_timeout 10s;|' \
        -e 's|^error_log \(.*\) warn;|error_log \1 notice;|' \
        "$WORK/nginx/nginx.conf" >"$d/nginx.conf"
    nginx -t -q -c "$d/nginx.conf" -p "$d" -e "$d/error.log" || die "nginx rejected the torture config"
    start nginx_t "$PROXY_CPU" nginx -c "$d/nginx.conf" -p "$d" -e "$d/error.log"
    wait_http "${PORT[nginx_t]}" nginx_t
}
follow_nginx_t() { follow_log "$WORK/nginx_t/error.log"; }
reload_nginx_t() {
    kill -HUP "${PROC_PID[nginx_t]}" && wait_log 'reconfiguring'
}
stop_nginx_t() { :; }

# reload_loop PROXY: up to RELOAD_RATE*RELOAD_SECS reloads at RELOAD_RATE/s, each one started
# only within RELOAD_SECS s (+0.5 s slack), so all of them happen under load; a proxy that
# reloads slower than RELOAD_RATE/s does fewer. Prints "done failed seconds".
# The loop is the load side's: it runs on LOAD_CPU (with wrk), so the proxy keeps its core to
# itself, and it starts no process per reload (see above; bash arithmetic on $EPOCHREALTIME:
# before that, date/awk/python3 per reload took ~20 % of the proxy's core and showed up as the
# proxy's drop).
now_us() { NOW_US=${EPOCHREALTIME//[.,]/}; }
reload_loop() {
    local p=$1 n=$((RELOAD_RATE * RELOAD_SECS)) ok=0 failed=0 i t0 due frac
    taskset -cp "$LOAD_CPU" "$BASHPID" >/dev/null
    [ -p "$WORK/nap.fifo" ] || mkfifo "$WORK/nap.fifo"
    exec {NAP_FD}<>"$WORK/nap.fifo"
    "follow_$p"
    now_us
    t0=$NOW_US
    for ((i = 0; i < n; i++)); do
        now_us
        due=$((t0 + i * 1000000 / RELOAD_RATE - NOW_US))
        if [ "$due" -gt 0 ]; then
            printf -v frac '%06d' $((due % 1000000))
            nap "$((due / 1000000)).$frac"
        fi
        now_us
        [ $((NOW_US - t0)) -le $((RELOAD_SECS * 1000000 + 500000)) ] || break
        if "reload_$p" >/dev/null; then ok=$((ok + 1)); else failed=$((failed + 1)); fi
    done
    now_us
    printf -v frac '%02d' $(((NOW_US - t0) % 1000000 / 10000))
    echo "$ok $failed $(((NOW_US - t0) / 1000000)).$frac"
}

# torture_wrk PROXY NAME SECS CONNS [wrk args...]: one torture load in the background (its PID in
# TORTURE_WRK_PID), output in $WORK/torture-PROXY-NAME.txt.
torture_wrk() {
    local p=$1 name=$2 secs=$3 conns=$4
    shift 4
    timeout --kill-after=5 $((secs + 30)) taskset -c "$LOAD_CPU" wrk -t"$WRK_THREADS" -c"$conns" -d"${secs}s" \
        --timeout 5s -H "Host: $HOST_HEADER" "$@" -s "$BENCH_DIR/report.lua" "http://127.0.0.1:${PORT[$p]}/" \
        >"$WORK/torture-$p-$name.txt" &
    TORTURE_WRK_PID=$!
}

# busy_mark FILE: appends the busy ticks of the proxy's and the load's core and the time, before
# and after a torture load: whether both cores were saturated (see the torture's pairs).
busy_mark() {
    echo "$(cpu_busy_ticks "$PROXY_CPU") $(cpu_busy_ticks "$LOAD_CPU") ${EPOCHREALTIME/,/.}" >>"$1"
}

torture_one() {
    local p=$1 secs=$((RELOAD_SECS + 5))  # load: 1 s before the first reload, >= 3 s after the last
    "start_$p"
    # 1. Keep-alive clients through reloads: TORTURE_KA_CONNS connections alone, first without
    # reloads (the baseline), then with them. A proxy that closes an idle keep-alive connection
    # while a request is on its way fails that request; one that answers the last request on an
    # old connection with "Connection: close" loses nothing. TORTURE_KA_ROUNDS pairs, each a
    # quiet run right before a run with reloads: the drop is taken per pair (the two runs next
    # to each other in time) and the median pair counts. One pair alone moved with the host by
    # more than the goal's 10 % (-34 % to +34 % for one binary in one morning).
    local r res_ka=""
    run_wrk "$p" keepalive "$WARMUP" >/dev/null
    for ((r = 1; r <= TORTURE_KA_ROUNDS; r++)); do
        log "torture: $p, $TORTURE_KA_CONNS keep-alive connections, ${secs} s without reloads (pair $r of $TORTURE_KA_ROUNDS)"
        busy_mark "$WORK/torture-$p-ka-quiet-$r.busy"
        torture_wrk "$p" "ka-quiet-$r" "$secs" "$TORTURE_KA_CONNS"
        wait "$TORTURE_WRK_PID" || true
        busy_mark "$WORK/torture-$p-ka-quiet-$r.busy"
        log "torture: $p, $TORTURE_KA_CONNS keep-alive connections, $((RELOAD_RATE * RELOAD_SECS)) reloads at $RELOAD_RATE/s (pair $r of $TORTURE_KA_ROUNDS)"
        busy_mark "$WORK/torture-$p-ka-reload-$r.busy"
        torture_wrk "$p" "ka-reload-$r" "$secs" "$TORTURE_KA_CONNS"
        local wka=$TORTURE_WRK_PID
        sleep 1
        res_ka+="$(reload_loop "$p"),"
        wait "$wka" || true
        busy_mark "$WORK/torture-$p-ka-reload-$r.busy"
        # Let the old processes of the last reloads finish before the next load.
        sleep 2
    done
    # 2. New connections per request (plus a few keep-alive ones) through reloads.
    log "torture: $p, $((RELOAD_RATE * RELOAD_SECS)) reloads at $RELOAD_RATE/s under new-connection load"
    run_wrk "$p" close "$WARMUP" >/dev/null
    torture_wrk "$p" close "$secs" "$CLOSE_CONNS" -H "Connection: close"
    local wc=$TORTURE_WRK_PID
    torture_wrk "$p" keepalive "$secs" "$TORTURE_MIX_KA_CONNS"
    local wk=$TORTURE_WRK_PID
    sleep 1
    local res
    res=$(reload_loop "$p")
    wait "$wc" || true
    wait "$wk" || true
    "stop_$p"
    python3 - "$p" "$res" "$res_ka" "$WORK/torture-$p" $((RELOAD_RATE * RELOAD_SECS)) >>"$WORK/extra.jsonl" <<'EOF'
import json, os, sys
proxy, res, res_ka, prefix, asked = sys.argv[1:6]
def wrk(name):
    for line in open(f"{prefix}-{name}.txt"):
        if line.startswith("WRK_JSON "):
            w = json.loads(line[9:])
            e = w["errors"]
            return {"requests": w["requests"], "errors": e,
                    "failures": e["connect"] + e["read"] + e["write"] + e["timeout"] + e["status"],
                    "rps": w["requests"] / (w["duration_us"] / 1e6), "p99_ms": w["p99_us"] / 1000}
    raise SystemExit(f"no WRK_JSON in {prefix}-{name}.txt")
def busy(name):
    """Busy % of the proxy's and the load's core over one torture load (None if not marked)."""
    try:
        (p0, l0, t0), (p1, l1, t1) = [map(float, line.split()) for line in open(f"{prefix}-{name}.busy")]
    except (OSError, ValueError):
        return None
    tick = os.sysconf("SC_CLK_TCK") * (t1 - t0)
    return {"proxy_core": round(100 * (p1 - p0) / tick), "load_core": round(100 * (l1 - l0) / tick)}
def reloads(r):
    ok, failed, secs = r.split()
    return {"reloads": int(ok), "reloads_asked": int(asked), "reload_failures": int(failed),
            "reload_seconds": float(secs)}
# One entry per quiet/reloads pair ("ok failed secs" each, comma-separated).
pairs = [{**reloads(r), "quiet": {**wrk(f"ka-quiet-{i}"), "busy_pct": busy(f"ka-quiet-{i}")},
          "reload": {**wrk(f"ka-reload-{i}"), "busy_pct": busy(f"ka-reload-{i}")}}
         for i, r in enumerate(filter(None, res_ka.split(",")), start=1)]
out = {"part": "torture", "proxy": proxy, **reloads(res),
       "close": wrk("close"), "keepalive": wrk("keepalive"), "ka_reload": {"pairs": pairs}}
print(json.dumps(out))
EOF
    tail -n 1 "$WORK/extra.jsonl" | cut -c1-300 >&2
}

scenario_torture() {
    local p
    for p in berthd_t haproxy_t nginx_t; do
        case "$p" in
            berthd_t) want_proxy berthd || continue ;;
            haproxy_t) want_proxy haproxy || continue ;;
            nginx_t) want_proxy nginx || continue ;;
        esac
        torture_one "$p"
    done
}
want_proxy() { case " $PROXIES " in *" $1 "*) return 0 ;; *) return 1 ;; esac; }

# =============================================================================================
# memory: RSS per MEMORY_CONNS idle keep-alive client connections (each carried one request),
# and RSS after they closed, for each proxy in its own fresh instance (plain HTTP, same config
# as the load cells but with room for the connections). bench/idle_conns.py opens, samples and
# closes; the file descriptor limit is raised for everything started from here on.
# =============================================================================================
start_berthd_m() { start_berthd_as berthd_m "$BERTHD"; }
start_berthd_b_m() { start_berthd_as berthd_b_m "$BERTHD_B"; }
start_haproxy_m() {
    local d=$WORK/haproxy_m
    mkdir -p "$d"
    [ -f "$WORK/haproxy/haproxy.cfg" ] || write_haproxy_cfg
    sed -e "s|^    bind 127.0.0.1:${PORT[haproxy]}\$|    bind 127.0.0.1:${PORT[haproxy_m]}|" \
        -e '/ssl crt/d' -e "s|^    maxconn 4096\$|    maxconn $((MEMORY_CONNS + 1000))|" \
        -e "s|^defaults\$|defaults\n    maxconn $((MEMORY_CONNS + 1000))|" \
        -e "s|^global\$|global\n    ulimit-n $MEMORY_NOFILE\n    no strict-limits|" \
        "$WORK/haproxy/haproxy.cfg" >"$d/haproxy.cfg"
    haproxy -c -q -f "$d/haproxy.cfg" || die "haproxy rejected the memory config"
    start haproxy_m "$PROXY_CPU" haproxy -db -f "$d/haproxy.cfg"
    wait_http "${PORT[haproxy_m]}" haproxy_m
}
start_nginx_m() {
    local d=$WORK/nginx_m
    mkdir -p "$d/tmp"
    [ -f "$WORK/nginx/nginx.conf" ] || write_nginx_conf
    sed -e "s|$WORK/nginx/|$d/|g" -e "s|$WORK/nginx |$d |g" \
        -e "s|127.0.0.1:${PORT[nginx]}|127.0.0.1:${PORT[nginx_m]}|g" -e '/ssl/d' \
        -e "s|worker_connections 4096;|worker_connections $((MEMORY_CONNS + 1000));|" \
        "$WORK/nginx/nginx.conf" >"$d/nginx.conf"
    nginx -t -q -c "$d/nginx.conf" -p "$d" -e "$d/error.log" || die "nginx rejected the memory config"
    start nginx_m "$PROXY_CPU" nginx -c "$d/nginx.conf" -p "$d" -e "$d/error.log"
    wait_http "${PORT[nginx_m]}" nginx_m
}

scenario_memory() {
    local p m pids
    # Each side (client script, proxy) holds MEMORY_CONNS sockets plus a few: raise the soft
    # limit to what is needed, as far as the hard limit allows.
    local need=$((MEMORY_CONNS + 2048)) hard
    hard=$(ulimit -Hn)
    [ "$hard" = unlimited ] || [ "$hard" -ge "$need" ] ||
        die "memory: the file descriptor hard limit ($hard) is below $need (MEMORY_CONNS + 2048)"
    [ "$hard" = unlimited ] && hard=$((2 * need))
    ulimit -n "$hard"
    MEMORY_NOFILE=$hard
    for p in $PROXIES; do
        m=${p}_m
        [ -n "${PORT[$m]:-}" ] || continue
        log "memory: $p, $MEMORY_CONNS idle keep-alive connections"
        "start_$m"
        # One request first: a proxy's lazily built state (upstream pool, buffers) is baseline.
        curl -s -o /dev/null -H "Host: $HOST_HEADER" "http://127.0.0.1:${PORT[$m]}/"
        sleep 1
        pids=$(pids_of "$m")
        local pid_args=()
        for pid in $pids; do pid_args+=(--pid "$pid"); done
        timeout --kill-after=5 $((MEMORY_TIMEOUT + 30)) taskset -c "$LOAD_CPU" python3 "$BENCH_DIR/idle_conns.py" \
            --port "${PORT[$m]}" --conns "$MEMORY_CONNS" --timeout "$MEMORY_TIMEOUT" --settle "$MEMORY_SETTLE" "${pid_args[@]}" \
            >"$WORK/memory-$p.txt" || { cat "$WORK/memory-$p.txt" >&2; die "memory: idle_conns.py failed for $p"; }
        ensure_alive "$m"
        sed -n 's/^MEMORY_JSON //p' "$WORK/memory-$p.txt" |
            python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); d.update(part="memory", proxy=sys.argv[1]); print(json.dumps(d))' "$p" \
            >>"$WORK/extra.jsonl"
        tail -n 1 "$WORK/extra.jsonl" >&2
        kill -TERM "${PROC_PID[$m]}" 2>/dev/null || true
    done
}

# =============================================================================================
# deploy: a 3-replica rolling deploy with the image already loaded, timed from the API call to
# 100 % of traffic on the new version. Runs the docker_deploy system test that measures it (real
# dockerd, locally built images) and parses its DEPLOY-TIMING line.
# =============================================================================================
scenario_deploy() {
    if ! docker info >/dev/null 2>&1; then
        log "deploy: skipped (dockerd is not running; see /work/shared/ENVIRONMENT.md)"
        echo '{"part":"deploy","skipped":"dockerd is not running"}' >>"$WORK/extra.jsonl"
        return 0
    fi
    log "deploy: cargo test --release --test deploy docker_deploy::rolling (3 replicas, real dockerd)"
    local out=$WORK/deploy-test.txt
    (cd "$REPO" && BERTH_SYSTEM_TESTS=1 timeout --kill-after=10 900 \
        cargo test --release --test deploy docker_deploy::rolling -- --nocapture) >"$out" 2>&1 ||
        { tail -n 40 "$out" >&2; die "the docker_deploy rolling test failed"; }
    python3 - "$out" >>"$WORK/extra.jsonl" <<'EOF'
import json, re, sys
text = open(sys.argv[1]).read()
m = re.search(r"DEPLOY-TIMING 3 replicas rolling: call→100% v2 traffic (\d+) ms = docker create/start (\d+) ms"
              r" \+ app health (\d+) ms \+ berth (-?\d+) ms; call→done (\d+) ms", text)
if not m:
    raise SystemExit("no DEPLOY-TIMING line in the test output")
to_full, docker, health, berth, done = map(int, m.groups())
events = [l.strip() for l in text.splitlines() if re.match(r"\s+\+\s*\d+ ms ", l)]
print(json.dumps({"part": "deploy", "replicas": 3, "call_to_full_ms": to_full, "docker_ms": docker,
                  "app_health_ms": health, "berth_ms": berth, "call_to_done_ms": done,
                  "events": events[:40]}))
EOF
    tail -n 1 "$WORK/extra.jsonl" | cut -c1-200 >&2
}

main
