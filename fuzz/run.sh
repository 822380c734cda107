#!/usr/bin/env bash
# Runs each fuzz target of tests/proxy/fuzz.rs for SECS seconds (default 600), one at a time and
# niced, and prints each target's executions, corpus size and seed. A property violation
# stops the run; the input is saved under target/fuzz-findings/.
# Usage: fuzz/run.sh [SECS] [TARGET...]   (targets: upstream_response_parser,
#        host_normalisation, label_parsing)
set -euo pipefail
cd "$(dirname "$0")/.."
secs="${1:-600}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(upstream_response_parser host_normalisation label_parsing)
cargo test --test proxy --no-run
for t in "${targets[@]}"; do
    BERTH_FUZZ_SECS="$secs" nice -n 10 cargo test --test proxy -- --exact "fuzz::fuzz_$t" --nocapture 2>&1 \
        | grep -E '^fuzz |test result|panicked|property violated'
done
