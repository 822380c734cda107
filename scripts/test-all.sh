#!/usr/bin/env bash
# Runs every Berth test, installing what the tests need first (Debian packages, Rust, dockerd).
# System tests (real dockerd, pebble, Chromium, systemd tools, schemathesis) are on by default;
# `--quick` (or BERTH_SYSTEM_TESTS=0) runs only the fast ones.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = "--quick" ] || [ "${BERTH_SYSTEM_TESTS:-1}" = "0" ]; then
  unset BERTH_SYSTEM_TESTS
  source scripts/setup.sh
else
  export BERTH_SYSTEM_TESTS=1
  source scripts/setup.sh --docker --system
  source scripts/setup.sh --tools  # haproxy: tests/proxy/conformance.rs compares Berth with it
fi
export PATH="$HOME/.cargo/bin:$PATH"
start=$(date +%s)
step() { echo; echo "== $* ($(( $(date +%s) - start ))s)"; }
step "cargo fmt --check"; cargo fmt --check
step "cargo clippy"; cargo clippy --all-targets -- -D warnings
step "nix files"; bash scripts/check-nix.sh
step "cargo test"; cargo test --all-targets --no-fail-fast -- --test-threads=2
if [ -n "${BERTH_SYSTEM_TESTS:-}" ]; then
  step "schemathesis against /v1/openapi.json"; bash scripts/schemathesis.sh
  command -v cargo-deb >/dev/null || { step "installing cargo-deb"; cargo install cargo-deb --locked --quiet; }
  step "systemd units and .deb under systemd-nspawn"; bash scripts/system/test-systemd.sh
  step "Ansible role (two nspawn machines, rolling upgrade)"; bash scripts/system/test-ansible.sh
  # BERTH_SKIP_VM_TESTS=1 leaves out the slowest step (image build + QEMU boot) locally; CI runs it.
  if [ -z "${BERTH_SKIP_VM_TESTS:-}" ]; then
    step "QEMU VM tests (appliance image: deploy, failover, cert renewal)"; bash vm-tests/qemu/ci.sh
  fi
fi
step "all tests passed"
