#!/usr/bin/env bash
# Builds the berth .deb from the Cargo metadata ([package.metadata.deb]) and prints its path.
# Usage: scripts/system/build-deb.sh [OUTDIR] [DEB_VERSION]
#   BERTH_DEB_PROFILE=release (default for releases: `cargo deb`), or dev / deb-test for tests
#   (dev reuses the binaries `cargo test` already built).
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
out=${1:-target/debian}
version=${2:-}
profile=${BERTH_DEB_PROFILE:-release}
if ! command -v cargo-deb >/dev/null; then
  echo "build-deb: installing cargo-deb (cargo install cargo-deb --locked; a few minutes)" >&2
  cargo install cargo-deb --locked >&2
fi
mkdir -p "$out"
args=(--profile "$profile" -o "$out")
[ -n "$version" ] && args+=(--deb-version "$version")
# Test packages: faster compression (the dev binaries are large; xz -9 on them takes a minute).
[ "$profile" != release ] && args+=(--fast)
# cargo deb prints the package path last on stdout.
cargo deb "${args[@]}" 2> >(grep -v '^\s*Compiling' >&2) | tail -n1
