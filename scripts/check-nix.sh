#!/usr/bin/env bash
# Checks every .nix file parses (nix-instantiate --parse). nixpkgs cannot be fetched on these
# machines, so module evaluation and NixOS VM tests run only where Nix has network access
# (`nix flake check`). Never lets nix touch the network.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nix-instantiate >/dev/null || { SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nix-bin >/dev/null; }
reg=$(mktemp); echo '{"flakes":[],"version":2}' > "$reg"
export NIX_CONFIG=$'experimental-features = nix-command flakes\nbuild-users-group =\nsubstituters =\nflake-registry = '"$reg"
fail=0
for f in flake.nix nix/*.nix vm-tests/*.nix; do
  if nix-instantiate --parse "$f" >/dev/null; then echo "nix parse ok: $f"; else echo "nix parse FAILED: $f"; fail=1; fi
done
rm -f "$reg"
exit $fail
