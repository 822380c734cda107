#!/usr/bin/env bash
# Berth's main job, end to end on this machine: build berthd, start it with a sample config,
# start a sample backend, and show requests served through the proxy (and a hitless upgrade).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

echo "== building berthd"
cargo build --quiet --bin berthd
BERTHD=$PWD/target/debug/berthd

work=$(mktemp -d /tmp/berth-demo.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

echo "== starting a sample backend on 127.0.0.1:18181"
mkdir -p "$work/www" && echo "hello from the sample app" > "$work/www/index.html"
python3 -m http.server 18181 --bind 127.0.0.1 --directory "$work/www" >"$work/backend.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -s -o /dev/null http://127.0.0.1:18181/ && break; sleep 0.1; done

cat > "$work/berthd.yaml" <<YAML
http:
  listen: 127.0.0.1:18180
data_dir: $work/data
routes:
  - domains: [demo.localhost]
    aliases: [www.demo.localhost]
    backends:
      - address: 127.0.0.1:18181
YAML
"$BERTHD" check-config "$work/berthd.yaml"
echo "== starting berthd on 127.0.0.1:18180"
"$BERTHD" --config "$work/berthd.yaml" >"$work/berthd.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 50); do curl -s -o /dev/null http://127.0.0.1:18180/ && break; sleep 0.1; done

echo "== a request through the proxy (Host: demo.localhost)"
curl -sS -i -H 'Host: demo.localhost' http://127.0.0.1:18180/
echo "== an alias redirects to the canonical domain"
curl -sS -o /dev/null -w '%{http_code} -> %{redirect_url}\n' -H 'Host: www.demo.localhost' http://127.0.0.1:18180/page
echo "== an unknown host"
curl -sS -w '%{http_code}\n' -H 'Host: nope.localhost' http://127.0.0.1:18180/
echo "== hitless binary upgrade while serving"
"$BERTHD" --config "$work/berthd.yaml" upgrade
curl -sS -H 'Host: demo.localhost' http://127.0.0.1:18180/
"$BERTHD" --config "$work/berthd.yaml" status
echo "== berthd log (access log lines included)"
cat "$work/berthd.log"
pid=$("$BERTHD" --config "$work/berthd.yaml" status | awk '{print $2}')
kill "$pid"
echo "demo finished"
