#!/usr/bin/env bash
# Runs every Berth test, installing what the tests need first. The system tests (real dockerd,
# pebble, systemd tools) run when BERTH_SYSTEM_TESTS=1 (CI sets it).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh --docker
export PATH="$HOME/.cargo/bin:$PATH"
echo "== cargo fmt --check"; cargo fmt --check
echo "== cargo clippy"; cargo clippy --all-targets -- -D warnings
echo "== nix files"; bash scripts/check-nix.sh
echo "== cargo test"; cargo test --all-targets -- --test-threads=2
