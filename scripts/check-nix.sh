#!/usr/bin/env bash
# The Nix channel, checked as far as a machine without nixpkgs allows (README, "NixOS"):
#  1. every .nix file parses (nix-instantiate --parse);
#  2. nix/eval evaluates flake.nix's outputs, the NixOS module (three configurations), the
#     appliance and the three NixOS VM tests with the real nixpkgs `lib` (vendored in
#     nix/eval/nixpkgs-lib) and option declarations typed as in NixOS, `nixpkgs.*` read-only in
#     test nodes as runNixOSTest makes it;
#  3. every berthd.yaml those evaluations render goes through `berthd check-config`;
#  4. the VM tests' final test scripts run against recording machines (nix/eval/driver_check.py):
#     each curl has one URL with its API path, background commands close stdout, pyflakes
#     (the driver's lint step) is clean;
#  5. `nix flake check --no-build` with the nixpkgs input replaced by that stand-in;
#  6. Cargo.toml's rust-version is at least what the locked dependencies declare, and at most
#     the rustc of the pinned nixpkgs release (nix/eval/releases.nix).
# Never lets nix touch the network: no substituters, an empty flake registry, --readonly-mode
# (store paths are computed, nothing is written to /nix/store).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v nix-instantiate >/dev/null || { SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq nix-bin >/dev/null; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo '{"flakes":[],"version":2}' > "$tmp/registry.json"
export NIX_CONFIG=$'experimental-features = nix-command flakes\nbuild-users-group =\nsubstituters =\nflake-registry = '"$tmp/registry.json"
fail=0

for f in flake.nix nix/*.nix vm-tests/*.nix nix/eval/*.nix nix/eval/nixos-modules/*/*/*.nix; do
  nix-instantiate --parse "$f" >/dev/null || { echo "FAILED nix parse: $f"; fail=1; }
done
echo "nix parse: done"

cargo build -q --bin berthd
berthd="${CARGO_TARGET_DIR:-target}/debug/berthd"

# The plain-attrset settings files, on their own.
for f in nix/settings-defaults.nix vm-tests/cert-renewal-settings.nix; do
  out="$tmp/$(basename "$f" .nix).plain.yaml"
  if nix-instantiate --readonly-mode --eval --strict --json "$f" > "$out" && "$berthd" check-config "$out" >/dev/null; then
    echo "ok nix eval + berthd check-config: $f"
  else
    echo "FAILED nix eval or berthd check-config: $f"; "$berthd" check-config "$out" || true; fail=1
  fi
done

items=(pin flake module vm-deploy vm-failover vm-cert-renewal)
for item in "${items[@]}"; do
  if nix-instantiate --readonly-mode --eval --strict --json nix/eval -A "$item" > "$tmp/$item.json" 2> "$tmp/$item.err"; then
    echo "ok nix eval: nix/eval -A $item"
  else
    echo "FAILED nix eval: nix/eval -A $item"; sed 's/^/    /' "$tmp/$item.err" | tail -n 25; rm -f "$tmp/$item.json"; fail=1
  fi
done
# pyflakes for the test scripts (the NixOS test driver lints them with it), Debian's package.
/usr/bin/python3 -c 'import pyflakes' 2>/dev/null || { SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo; DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-pyflakes >/dev/null; }
PYFLAKES="/usr/bin/python3 -m pyflakes" python3 nix/eval/driver_check.py "$berthd" "$tmp" "${items[@]}" || fail=1

# `nix flake check --no-build` on this repository with the input `nixpkgs` replaced by the
# stand-in (nix/eval/flake.nix, given the pinned release's name): Nix's own flake checks over
# every output, for both systems (derivations, modules, nixosConfigurations' toplevel, checks).
# Copies the flake sources (git-tracked files) into the local /nix/store; fetches nothing.
if [ ! -w /nix/store ]; then
  echo "skipped: nix flake check --no-build with the nixpkgs stand-in (it copies the flake into /nix/store, which is not writable for $(id -un))"
elif release=$(nix-instantiate --readonly-mode --eval nix/eval -A pin.release 2>/dev/null) && git rev-parse --git-dir >/dev/null 2>&1; then
  cp -r nix/eval "$tmp/nixpkgs-stand-in"; echo "${release//\"/}" > "$tmp/nixpkgs-stand-in/release"
  if nix flake check --no-build --no-write-lock-file --override-input nixpkgs "path:$tmp/nixpkgs-stand-in" "git+file://$PWD" > "$tmp/flake-check.log" 2>&1; then
    echo "ok nix flake check --no-build (nixpkgs: the offline stand-in for ${release//\"/})"
  else
    echo "FAILED nix flake check --no-build (nixpkgs: the offline stand-in)"; grep -v '^warning: Git tree' "$tmp/flake-check.log" | sed 's/^/    /' | tail -n 25; fail=1
  fi
else
  echo "FAILED nix flake check: no known pinned release, or not a git checkout"; fail=1
fi

# rust-version against the locked dependencies (cargo refuses to build one that declares a
# newer rust-version than the compiler) — the pinned release's rustc is checked in nix/eval.
if cargo metadata --format-version 1 --locked --offline --filter-platform x86_64-unknown-linux-gnu > "$tmp/metadata.json" 2>/dev/null; then
  python3 - "$tmp/metadata.json" <<'PY' || fail=1
import json, sys
m = json.load(open(sys.argv[1]))
v = lambda s: tuple((list(map(int, s.split("."))) + [0, 0])[:3])
used = {n["id"] for n in m["resolve"]["nodes"]}
root = next(p for p in m["packages"] if p["id"] == m["resolve"]["root"])
deps = [p for p in m["packages"] if p["id"] in used and p["id"] != root["id"] and p.get("rust_version")]
top = max(deps, key=lambda p: v(p["rust_version"]))
ok = v(top["rust_version"]) <= v(root["rust_version"])
print(f"{'ok' if ok else 'FAILED'} rust-version {root['rust_version']}: the locked dependencies need at least "
      f"{top['rust_version']} ({', '.join(sorted(p['name'] + ' ' + p['version'] for p in deps if p['rust_version'] == top['rust_version']))})")
sys.exit(0 if ok else 1)
PY
else
  echo "skipped: rust-version against the locked dependencies (cargo metadata --offline needs the crates downloaded)"
fi
exit $fail
