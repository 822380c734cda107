#!/usr/bin/env bash
# Installs what building and testing Berth needs on a Debian machine (idempotent).
# Usage: scripts/setup.sh [--docker] [--system] [--tools]
#   --docker  also install and start dockerd (for deploy tests and the demo)
#   --system  also install what the system tests use (pebble, knot, chromium + node for the status
#             page test, systemd tools, nspawn/mmdebstrap)
#   --tools   also install load/proxy tools for the benchmark (haproxy, nginx, wrk)
set -euo pipefail
want_docker=0; want_tools=0; want_system=0
for a in "$@"; do
  case "$a" in
    --docker) want_docker=1 ;;
    --system) want_system=1 ;;
    --tools) want_tools=1 ;;
    *) echo "setup.sh: unknown option $a" >&2; exit 2 ;;
  esac
done

SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
pkgs=(build-essential pkg-config curl ca-certificates python3 python3-venv systemd)
[ $want_docker = 1 ] && pkgs+=(docker.io busybox-static)
[ $want_tools = 1 ] && pkgs+=(haproxy nginx-light wrk nghttp2-client)
[ $want_system = 1 ] && pkgs+=(pebble knot knot-dnsutils chromium openssl systemd-container mmdebstrap nix-bin \
  docker-registry apache2-utils \
  e2fsprogs fdisk mtools dosfstools ovmf openssh-client)  # + qemu from bookworm-backports: vm-tests/qemu/ci.sh
# Node.js for the status-page browser test: Debian's nodejs + npm, unless a node with npm exists.
if [ $want_system = 1 ] && ! { command -v node >/dev/null && command -v npm >/dev/null; }; then
  pkgs+=(nodejs npm)
fi
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  if [ -x "$HOME/.cargo/bin/cargo" ]; then
    export PATH="$HOME/.cargo/bin:$PATH"
  else
    echo "setup: installing Rust with rustup"
    curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c clippy,rustfmt
    export PATH="$HOME/.cargo/bin:$PATH"
  fi
fi

if [ $want_docker = 1 ] && ! docker info >/dev/null 2>&1; then
  echo "setup: starting dockerd"
  mkdir -p /var/log
  # --iptables=false: these machines have no netfilter for Docker; loopback traffic only.
  $SUDO sh -c 'nohup dockerd --iptables=false >/var/log/berth-dockerd.log 2>&1 &'
  for _ in $(seq 1 60); do docker info >/dev/null 2>&1 && break; sleep 1; done
  docker info >/dev/null 2>&1 || { echo "setup: dockerd did not start; see /var/log/berth-dockerd.log" >&2; exit 1; }
fi
