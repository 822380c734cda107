#!/usr/bin/env bash
# bench/callgrind.sh: user-space instructions per request of berthd and HAProxy, counted by
# valgrind's callgrind (deterministic, so usable on a busy machine where req/s and even CPU
# time move with the other jobs), plus syscalls per request counted natively by the kernel's
# raw_syscalls tracepoint (perf stat; also load-independent).
#
# Usage: bash bench/callgrind.sh                        every proxy x scenario, markdown table
#        PROXIES=berthd SCENARIOS=close bash bench/callgrind.sh   one cell
#        BERTHD_B=/path/other/berthd bash bench/callgrind.sh     adds a berthd_b row (A/B)
# Env: BERTHD (default target/release/berthd), PROXIES="berthd [berthd_b] haproxy",
#      SCENARIOS="keepalive close https-keepalive https-close", CONNS=16, WARM=2,
#      REQS (requests per measured run; default 20000 for keep-alive, 4000 for close,
#      1500 for https-close), SYSCALLS=1 (also count syscalls natively), CALLGRIND=0 (skip
#      valgrind: syscall counts only), STRACE=1 (also `strace -c -f` the same native load and
#      print the per-syscall table, per 1,000 requests), TOP=0 (print the
#      top N inclusive functions of each cell), KEEP=1 (keep the work dir with callgrind.out),
#      COUNTS=1 (also run the same native load with perf stat on the proxy, on the backend's
#      worker and on wrk, and nstat around it: page faults, context switches, CPU migrations,
#      syscalls and CPU time per request of all three, TCP segments and ACKs per request on
#      loopback; PIN=1 puts the proxy on CPU 1 and wrk + backend on CPU 0 as run.sh does),
#      BASE_PORT=18580, OUT=path (JSON lines; default none).
# Prints one "IR_PER_REQ" line per cell and a markdown table at the end.
#
# Method: the proxy starts under `valgrind --tool=callgrind --instr-atstart=no`; one nginx
# backend (not instrumented) answers a fixed 29-byte 200; wrk warms up WARM s (uncounted),
# then instrumentation is switched on (`callgrind_control -i on`) for a measured run of exactly
# REQS requests (wrk with bench/fixed_count.lua: each of the CONNS connections stops after
# its share) and off again; total Ir / requests is the figure. Scenarios: keepalive (CONNS
# reused connections), close (`Connection: close`: a new TCP connection per request, so the
# figure includes accept, connection set-up and teardown), https-keepalive, https-close (a full
# TLS 1.3 handshake per request, ECDSA P-256, no resumption). The setup of the CONNS keep-alive
# connections is included in the keep-alive figures (<1 % at the default REQS).
# Syscalls: the same load without valgrind, `perf stat -e raw_syscalls:sys_enter -p PID`.
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
BERTHD=${BERTHD:-${1:-$REPO/target/release/berthd}}
BERTHD_B=${BERTHD_B:-}
PROXIES=${PROXIES:-"berthd ${BERTHD_B:+berthd_b }haproxy"}
SCENARIOS=${SCENARIOS:-"keepalive close https-keepalive https-close"}
CONNS=${CONNS:-16}
WARM=${WARM:-2}
SYSCALLS=${SYSCALLS:-1}
BASE_PORT=${BASE_PORT:-18580}
OUT=${OUT:-}
BACKEND_PORT=$BASE_PORT
PROXY_PORT=$((BASE_PORT + 1))
TLS_PORT=$((BASE_PORT + 2))
API_PORT=$((BASE_PORT + 3))

for tool in valgrind callgrind_control callgrind_annotate wrk nginx curl openssl; do
    command -v "$tool" >/dev/null || { echo "callgrind.sh: missing $tool (apt-get install -y valgrind wrk nginx-light curl openssl)" >&2; exit 1; }
done
CALLGRIND=${CALLGRIND:-1}
STRACE=${STRACE:-0}
COUNTS=${COUNTS:-0}
PIN=${PIN:-0}
if [ "$COUNTS" = 1 ]; then
    for tool in perf nstat; do
        command -v "$tool" >/dev/null || { echo "callgrind.sh: COUNTS=1 needs $tool (apt-get install -y linux-perf iproute2)" >&2; exit 1; }
    done
fi
# PIN=1: the proxy on CPU 1, wrk and the backend on CPU 0 (as bench/run.sh); else unpinned.
if [ "$PIN" = 1 ]; then PROXY_PIN=(taskset -c 1); LOAD_PIN=(taskset -c 0); else PROXY_PIN=(); LOAD_PIN=(); fi
if [ "$STRACE" = 1 ] && ! command -v strace >/dev/null; then
    echo "callgrind.sh: STRACE=1 needs strace (apt-get install -y strace)" >&2
    exit 1
fi
if [ "$SYSCALLS" = 1 ] && ! perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1; then
    echo "callgrind.sh: perf cannot count raw_syscalls:sys_enter here; syscalls not counted" >&2
    SYSCALLS=0
fi

WORK=$(mktemp -d /tmp/berth-callgrind.XXXXXX)
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${KEEP:-0}" = 1 ]; then echo "work dir kept: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
log() { printf '[callgrind %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

wait_200() { # wait_200 URL: until a request through it returns 200 (60 s: valgrind starts slowly)
    local deadline=$((SECONDS + 60))
    until [ "$(curl -sk -o /dev/null -w '%{http_code}' -H 'Host: bench.test' --max-time 2 "$1" || true)" = 200 ]; do
        [ "$SECONDS" -lt "$deadline" ] || { tail -n 20 "$WORK"/*.log >&2 || true; echo "no 200 from $1" >&2; exit 1; }
        sleep 0.2
    done
}

mkdir -p "$WORK/backend/tmp" "$WORK/cert"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 7 \
    -subj "/CN=bench.test" -addext "subjectAltName=DNS:bench.test" \
    -keyout "$WORK/cert/key.pem" -out "$WORK/cert/cert.pem" 2>/dev/null
cat "$WORK/cert/cert.pem" "$WORK/cert/key.pem" >"$WORK/cert/combined.pem"
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
${LOAD_PIN[@]+"${LOAD_PIN[@]}"} nginx -c "$WORK/backend/nginx.conf" -p "$WORK/backend" -e "$WORK/backend/error.log" >"$WORK/backend.log" 2>&1 &
BACKEND_PID=$!
PIDS+=("$BACKEND_PID")
wait_200 "http://127.0.0.1:$BACKEND_PORT/"

# The proxies, configured like bench/run.sh's (one worker/thread, Host routing, forwarded
# headers, keep-alive to the backend, no access log).
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
tls:
  listen: "127.0.0.1:$TLS_PORT"
  redirect: false
  certs: [{cert: "$WORK/cert/cert.pem", key: "$WORK/cert/key.pem"}]
  default_cert: {cert: "$WORK/cert/cert.pem", key: "$WORK/cert/key.pem"}
routes:
  - domains: ["bench.test"]
    backends:
      - address: "127.0.0.1:$BACKEND_PORT"
EOF
cat >"$WORK/haproxy.cfg" <<EOF
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
    bind 127.0.0.1:$PROXY_PORT
    bind 127.0.0.1:$TLS_PORT ssl crt $WORK/cert/combined.pem alpn http/1.1
    http-request set-header X-Forwarded-Proto https if { ssl_fc }
    http-request set-header X-Forwarded-Proto http if !{ ssl_fc }
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    http-request set-header X-Real-IP %[src]
    acl bench hdr(host) -i bench.test
    http-request return status 404 content-type text/plain string "no route for this host" if !bench
    use_backend be if bench
backend be
    server s1 127.0.0.1:$BACKEND_PORT
EOF

proxy_cmd() { # proxy_cmd PROXY: the command line of one proxy
    case "$1" in
        berthd) echo "${PROXY_PIN[@]+"${PROXY_PIN[@]}"}" "$BERTHD" --config "$WORK/berthd.yaml" ;;
        berthd_b) echo "${PROXY_PIN[@]+"${PROXY_PIN[@]}"}" "$BERTHD_B" --config "$WORK/berthd.yaml" ;;
        haproxy) echo "${PROXY_PIN[@]+"${PROXY_PIN[@]}"}" haproxy -db -f "$WORK/haproxy.cfg" ;;
        *) echo "callgrind.sh: unknown proxy $1" >&2; exit 2 ;;
    esac
}

url_of() { case "$1" in https-*) echo "https://127.0.0.1:$TLS_PORT/" ;; *) echo "http://127.0.0.1:$PROXY_PORT/" ;; esac; }
default_reqs() {
    case "$1" in
        keepalive|https-keepalive) echo 20000 ;;
        close) echo 4000 ;;
        https-close) echo 1500 ;;
    esac
}

# load SCENARIO REQS: wrk with exactly REQS requests spread over CONNS connections (the
# lua script stops each connection after its share); prints wrk's output.
load() {
    local scenario=$1 reqs=$2 extra=()
    case "$scenario" in *close) extra=(-H "Connection: close") ;; esac
    timeout --kill-after=5 600 env BENCH_REQS="$reqs" BENCH_CONNS="$CONNS" \
        ${LOAD_PIN[@]+"${LOAD_PIN[@]}"} wrk -t1 -c"$CONNS" -d600s --timeout 30s -H 'Host: bench.test' "${extra[@]}" \
        -s "$BENCH_DIR/fixed_count.lua" "$(url_of "$scenario")"
}
# warm SCENARIO: unmeasured load for WARM seconds.
warm() {
    local extra=()
    case "$1" in *close) extra=(-H "Connection: close") ;; esac
    timeout --kill-after=5 60 ${LOAD_PIN[@]+"${LOAD_PIN[@]}"} wrk -t1 -c"$CONNS" -d"${WARM}s" -H 'Host: bench.test' "${extra[@]}" \
        "$(url_of "$1")" >/dev/null
}
requests_of() { awk '/^FIXED_COUNT/ {print $2}' "$1"; }

declare -A IR=() IRT=() SYS=() REQN=()
one_cell() { # one_cell PROXY SCENARIO
    local p=$1 s=$2 reqs=${REQS:-$(default_reqs "$2")} pid tag=$1-$2
    [ "$CALLGRIND" = 1 ] && callgrind_cell "$p" "$s" "$reqs"
    [ "$SYSCALLS" = 1 ] && syscall_cell "$p" "$s" "$reqs"
    [ "$STRACE" = 1 ] && strace_cell "$p" "$s" "$reqs"
    [ "$COUNTS" = 1 ] && counts_cell "$p" "$s" "$reqs"
    [ -z "$OUT" ] || printf '{"proxy":"%s","scenario":"%s","requests":%d,"ir":%d,"ir_per_req":%s,"syscalls_per_req":%s}\n' \
        "$p" "$s" "${REQN[$tag]:-0}" "${IRT[$tag]:-0}" "${IR[$tag]:-null}" "${SYS[$tag]:-null}" >>"$OUT"
}
callgrind_cell() { # callgrind_cell PROXY SCENARIO REQS: Ir per request under valgrind
    local p=$1 s=$2 reqs=$3 pid tag=$1-$2
    # shellcheck disable=SC2046
    valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$WORK/cg-$tag.out" \
        $(proxy_cmd "$p") >"$WORK/proxy-$tag.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_200 "$(url_of "$s")"
    warm "$s"
    callgrind_control -i on "$pid" >/dev/null
    load "$s" "$reqs" >"$WORK/wrk-$tag.txt"
    callgrind_control -i off "$pid" >/dev/null
    callgrind_control -d "$pid" >/dev/null
    sleep 0.5
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    local n errs out total
    n=$(requests_of "$WORK/wrk-$tag.txt")
    errs=$(grep -E 'Non-2xx|Socket errors' "$WORK/wrk-$tag.txt" || true)
    [ -z "$errs" ] || log "$tag: wrk reported: $errs"
    # The dump written by `callgrind_control -d` holds the instrumented part (the largest
    # file; the one written at exit has the rest).
    out=$(ls -S "$WORK"/cg-"$tag".out* | head -1)
    callgrind_annotate "$out" >"$WORK/annotate-$tag.txt" 2>/dev/null || true
    total=$(awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}' "$WORK/annotate-$tag.txt")
    [ -n "$total" ] && [ -n "$n" ] || { log "$tag: no totals (see $WORK)"; KEEP=1; exit 1; }
    IR[$tag]=$((total / n))
    REQN[$tag]=$n
    echo "IR_PER_REQ ${IR[$tag]} proxy=$p scenario=$s requests=$n ir=$total"
    if [ "${TOP:-0}" -gt 0 ]; then
        callgrind_annotate --inclusive=yes "$out" 2>/dev/null | grep -E '^ *[0-9,]+ \(' |
            head -"$TOP" | cut -c1-200 || true
    fi
    IRT[$tag]=$total
}
attached_run() { # attached_run PROXY SCENARIO REQS NAME SETTLE TOOL...: the proxy natively
    # under REQS requests of the load, with TOOL (its pid appended) attached after warm-up;
    # the load's output goes to $WORK/wrk-NAME-PROXY-SCENARIO.txt.
    local p=$1 s=$2 reqs=$3 name=$4 settle=$5 pid tool_pid tag=$1-$2
    shift 5
    # shellcheck disable=SC2046
    $(proxy_cmd "$p") >"$WORK/$name-proxy-$tag.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_200 "$(url_of "$s")"
    warm "$s"
    "$@" "$pid" 2>/dev/null &
    tool_pid=$!
    # The tool needs a moment to attach (longer on a busy machine): calls before that are lost.
    sleep "$settle"
    load "$s" "$reqs" >"$WORK/wrk-$name-$tag.txt"
    kill -INT "$tool_pid" 2>/dev/null || true
    wait "$tool_pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}
syscall_cell() { # syscall_cell PROXY SCENARIO REQS: syscalls per request, native (perf stat)
    local p=$1 s=$2 reqs=$3 tag=$1-$2
    attached_run "$p" "$s" "$reqs" native 1 \
        perf stat -x, -e raw_syscalls:sys_enter -o "$WORK/perf-$tag.txt" -p
    local calls nn
    calls=$(awk -F, '/raw_syscalls:sys_enter/ {print $1}' "$WORK/perf-$tag.txt")
    nn=$(requests_of "$WORK/wrk-native-$tag.txt")
    SYS[$tag]=$(awk -v c="$calls" -v n="$nn" 'BEGIN {printf "%.2f", c / n}')
    echo "SYSCALLS_PER_REQ ${SYS[$tag]} proxy=$p scenario=$s requests=$nn syscalls=$calls"
}
strace_cell() { # strace_cell PROXY SCENARIO REQS: `strace -c -f` table, per 1,000 requests
    local p=$1 s=$2 reqs=$3 tag=$1-$2
    # -f: every thread (tokio's blocking pool included); -c: counts only, summed at detach.
    attached_run "$p" "$s" "$reqs" strace 0.5 \
        strace -c -f -U name,calls,errors -o "$WORK/strace-$tag.txt" -p
    local nn
    nn=$(requests_of "$WORK/wrk-strace-$tag.txt")
    echo "STRACE proxy=$p scenario=$s requests=$nn (calls per 1,000 requests; strace slows the proxy, so epoll_wait batches differently than natively)"
    awk -v n="$nn" 'NR > 2 && $1 !~ /^-/ {printf "  %-18s %9.1f calls %9.1f errors\n", $1, $2 * 1000 / n, ($3 == "" ? 0 : $3) * 1000 / n}' \
        "$WORK/strace-$tag.txt"
}

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime of a process, in ticks
declare -A COUNTROW=()
counts_cell() { # counts_cell PROXY SCENARIO REQS: per-request counts of proxy, backend, wrk, TCP
    local p=$1 s=$2 reqs=$3 pid tag=$1-$2 worker pp pb c0 c1 b0 b1 nn hz
    worker=$(pgrep -P "$BACKEND_PID" | head -1)
    # shellcheck disable=SC2046
    $(proxy_cmd "$p") >"$WORK/counts-proxy-$tag.log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    wait_200 "$(url_of "$s")"
    warm "$s"
    local events=page-faults,context-switches,cpu-migrations,raw_syscalls:sys_enter
    perf stat -x, -e "$events" -o "$WORK/counts-p-$tag.txt" -p "$pid" 2>/dev/null &
    pp=$!
    perf stat -x, -e "$events" -o "$WORK/counts-b-$tag.txt" -p "$worker" 2>/dev/null &
    pb=$!
    sleep 1
    export NSTAT_HISTORY=$WORK/nstat.history
    nstat -n >/dev/null
    c0=$(cpu_ticks "$pid")
    b0=$(cpu_ticks "$worker")
    # wrk under perf stat (it follows the child): its own faults, switches, syscalls, CPU.
    local extra=()
    case "$s" in *close) extra=(-H "Connection: close") ;; esac
    perf stat -x, -e "$events,task-clock" -o "$WORK/counts-w-$tag.txt" -- timeout --kill-after=5 600 env BENCH_REQS="$reqs" BENCH_CONNS="$CONNS" \
        ${LOAD_PIN[@]+"${LOAD_PIN[@]}"} wrk -t1 -c"$CONNS" -d600s --timeout 30s -H 'Host: bench.test' \
        "${extra[@]}" -s "$BENCH_DIR/fixed_count.lua" "$(url_of "$s")" >"$WORK/wrk-counts-$tag.txt"
    c1=$(cpu_ticks "$pid")
    b1=$(cpu_ticks "$worker")
    nstat -z >"$WORK/nstat-$tag.txt"
    kill -INT "$pp" "$pb" 2>/dev/null || true
    wait "$pp" "$pb" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    nn=$(requests_of "$WORK/wrk-counts-$tag.txt")
    hz=$(getconf CLK_TCK)
    per() { # per FILE: "faults/ctxsw/migrations/syscalls" per request from a perf stat -x, file
        awk -F, -v n="$nn" '$1 ~ /^[0-9.]+$/ {v[$3] = $1 / n}
            END {printf "%.3f / %.3f / %.3f / %.2f", v["page-faults"], v["context-switches"], v["cpu-migrations"], v["raw_syscalls:sys_enter"]}' "$1"
    }
    local tcp wrk_us
    tcp=$(awk -v n="$nn" '{v[$1] = $2} END {printf "%.2f / %.3f / %.3f / %.3f", v["TcpOutSegs"] / n, v["TcpExtTCPPureAcks"] / n, v["TcpExtDelayedACKs"] / n, v["TcpExtTCPAutoCorking"] / n}' "$WORK/nstat-$tag.txt")
    wrk_us=$(awk -F, -v n="$nn" '$3 == "task-clock" {printf "%.1f", $1 * 1000 / n}' "$WORK/counts-w-$tag.txt")
    local pu bu
    pu=$(awk -v a="$c0" -v b="$c1" -v n="$nn" -v hz="$hz" 'BEGIN {printf "%.1f", (b - a) * 1e6 / hz / n}')
    bu=$(awk -v a="$b0" -v b="$b1" -v n="$nn" -v hz="$hz" 'BEGIN {printf "%.1f", (b - a) * 1e6 / hz / n}')
    echo "COUNTS proxy=$p scenario=$s requests=$nn"
    printf '  %-8s cpu %5s us  faults/ctxsw/migr/syscalls %s\n' proxy "$pu" "$(per "$WORK/counts-p-$tag.txt")"
    printf '  %-8s cpu %5s us  faults/ctxsw/migr/syscalls %s\n' backend "$bu" "$(per "$WORK/counts-b-$tag.txt")"
    printf '  %-8s cpu %5s us  faults/ctxsw/migr/syscalls %s\n' wrk "${wrk_us:--}" "$(per "$WORK/counts-w-$tag.txt")"
    echo "  tcp (all of loopback) out segments / pure ACKs / delayed ACKs / autocorked: $tcp"
    COUNTROW[$tag]="$(per "$WORK/counts-p-$tag.txt") | $(per "$WORK/counts-b-$tag.txt") | $(per "$WORK/counts-w-$tag.txt") | $tcp | $pu / $bu / ${wrk_us:--}"
}

for s in $SCENARIOS; do
    for p in $PROXIES; do
        log "$p, $s"
        one_cell "$p" "$s"
    done
done

echo
echo "| scenario | $(for p in $PROXIES; do printf '%s Ir/req (syscalls/req) | ' "$p"; done)berthd / haproxy |"
echo "|---|$(for _ in $PROXIES; do printf -- '---|'; done)---|"
for s in $SCENARIOS; do
    row="| $s |"
    for p in $PROXIES; do
        row="$row ${IR[$p-$s]:--} (${SYS[$p-$s]:--}) |"
    done
    if [ -n "${IR[haproxy-$s]:-}" ] && [ -n "${IR[berthd-$s]:-}" ]; then
        row="$row $(awk -v a="${IR[berthd-$s]}" -v b="${IR[haproxy-$s]}" 'BEGIN {printf "%.2fx", a / b}') |"
    else
        row="$row - |"
    fi
    echo "$row"
done
if [ "$COUNTS" = 1 ]; then
    echo
    echo "Per request: page faults / context switches / CPU migrations / syscalls of the proxy, the backend's"
    echo "worker and wrk; TCP out segments / pure ACKs / delayed ACKs / autocorked sends (all of loopback);"
    echo "CPU us of proxy / backend / wrk (the only load-dependent column):"
    echo "| scenario | proxy | proxy | backend | wrk | tcp | CPU us |"
    echo "|---|---|---|---|---|---|---|"
    for s in $SCENARIOS; do
        for p in $PROXIES; do
            echo "| $s | $p | ${COUNTROW[$p-$s]:--} |"
        done
    done
fi
