#!/usr/bin/env bash
# Checks every .nix file parses (nix-instantiate --parse), and evaluates the plain-attrset files
# (the module's default settings, the VM tests' berthd settings) to JSON and runs
# `berthd check-config` on each, so what the NixOS module renders is a config berthd accepts.
# (The VM tests' app specs in vm-tests/specs/ are checked by tests/nix_files.rs.) nixpkgs cannot
# be fetched on these machines, so module evaluation and NixOS VM tests run only where Nix has
# network access (`nix flake check`). Never lets nix touch the network.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nix-instantiate >/dev/null || { SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nix-bin >/dev/null; }
reg=$(mktemp); echo '{"flakes":[],"version":2}' > "$reg"
export NIX_CONFIG=$'experimental-features = nix-command flakes\nbuild-users-group =\nsubstituters =\nflake-registry = '"$reg"
fail=0
for f in flake.nix nix/*.nix vm-tests/*.nix; do
  if nix-instantiate --parse "$f" >/dev/null; then echo "nix parse ok: $f"; else echo "nix parse FAILED: $f"; fail=1; fi
done
tmp=$(mktemp -d)
cargo build -q --bin berthd
for f in nix/settings-defaults.nix vm-tests/cert-renewal-settings.nix; do
  out="$tmp/$(basename "$f" .nix).yaml"
  if nix-instantiate --eval --strict --json "$f" > "$out" && ./target/debug/berthd check-config "$out" >/dev/null; then
    echo "nix eval + berthd check-config ok: $f"
  else
    echo "nix eval or berthd check-config FAILED: $f"; ./target/debug/berthd check-config "$out" || true; fail=1
  fi
done
rm -rf "$reg" "$tmp"
exit $fail
