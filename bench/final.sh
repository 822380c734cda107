#!/usr/bin/env bash
# bench/final.sh: the one invocation behind the README's benchmark table (issue 23): berthd
# against HAProxy, every cell the targets are about, 5 interleaved rounds, about 17 minutes:
#   plain HTTP keep-alive and new connection per request, HTTPS keep-alive and full handshake
#   per request (5 rounds x 10 s + 2 s warm-up each), keep-alive clients through 100
#   upgrades/reloads (torture, 5 quiet/reloads pairs), RSS per 10,000 idle keep-alive connections (memory).
# Writes bench/results/final-<UTC date>.json and .md (the markdown report: the table with
# proxy CPU %, the issue's targets per round, torture and memory tables) and prints the report.
# Run it on a quiet machine: check `uptime` first (the run prints the load average too).
# Env: anything bench/run.sh takes (e.g. ROUNDS=1 DURATION=3 WARMUP=1 for a smoke test).
set -euo pipefail
BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
stamp=$(date -u +%Y-%m-%dT%H%M)
export ROUNDS=${ROUNDS:-5} DURATION=${DURATION:-10} WARMUP=${WARMUP:-2}
# The reload target as the others: 5 quiet/reloads pairs, met when met in 3 of them (the median).
export TORTURE_KA_ROUNDS=${TORTURE_KA_ROUNDS:-$ROUNDS}
export PROXIES=${PROXIES:-"berthd haproxy"}
export OUT=${OUT:-$BENCH_DIR/results/final-$stamp.json}
bash "$BENCH_DIR/run.sh" --only basic,https,torture,memory
echo
echo "markdown report: ${OUT%.json}.md"
