#!/usr/bin/env bash
# Berth's main job on one machine: dockerd up, berthd up (`berthd init`), a demo app built
# locally (a 1 MB busybox httpd image, no registry), `berth deploy` uploads and deploys it,
# requests are served through the proxy, v2 is deployed with zero failed requests while a
# request loop runs, then rolled back.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup.sh --docker
export PATH="$HOME/.cargo/bin:$PATH"

echo "== building berthd and berth"
cargo build --quiet --bin berthd --bin berth
BERTHD=$PWD/target/debug/berthd
BERTH=$PWD/target/debug/berth

work=$(mktemp -d /tmp/berth-demo.XXXXXX)
export BERTH_CLI_CONFIG=$work/cli.yaml
pid=""
cleanup() {
  if [ -f "$work/berthd.yaml" ]; then
    p=$("$BERTHD" --config "$work/berthd.yaml" status 2>/dev/null | awk '{print $2}') || true
    [ -n "${p:-}" ] && kill "$p" 2>/dev/null || true
  fi
  [ -n "$pid" ] && kill "$pid" 2>/dev/null || true
  [ -n "${KEEP_LOG:-}" ] && cp "$work/berthd.log" /tmp/demo-berthd.log
  docker ps -aq --filter label=berth.app=demo | xargs -r docker rm -f >/dev/null 2>&1 || true
  rm -rf "$work"
}
trap cleanup EXIT

echo "== building the demo images locally (busybox httpd, v1 and v2)"
for v in v1 v2; do
  r=$work/rootfs-$v; mkdir -p "$r/bin" "$r/www"
  cp "$(command -v busybox)" "$r/bin/"; ln -s busybox "$r/bin/sh"; ln -s busybox "$r/bin/httpd"
  echo "hello from demo $v" > "$r/www/index.html"
  tar -C "$r" -c . | docker import -c 'CMD ["/bin/httpd","-f","-p","8080","-h","/www"]' - "berth-demo:$v" >/dev/null
  docker save -o "$work/demo-$v.tar" "berth-demo:$v"
done

echo "== berthd init + start (proxy on 127.0.0.1:18180, API on 127.0.0.1:18922)"
cat > "$work/berthd.yaml" <<YAML
http:
  listen: 127.0.0.1:18180
api:
  listen: 127.0.0.1:18922
data_dir: $work/data
log:
  access_log: false
YAML
add_line=$("$BERTHD" --config "$work/berthd.yaml" init --server-name demo 2>/dev/null)
"$BERTHD" --config "$work/berthd.yaml" >"$work/berthd.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do curl -sf http://127.0.0.1:18922/healthz >/dev/null && break; sleep 0.2; done

echo "== on the laptop: $(echo "$add_line" | sed 's/--token .*/--token ****/')"
eval "${add_line/berth /$BERTH }"

cd "$work"
cat > berth.yaml <<YAML
name: demo
image: berth-demo:v1
domains: [demo.localhost]
aliases: [www.demo.localhost]
port: 8080
replicas: 2
health: {path: /, interval: 1s, timeout: 2s}
YAML
echo "== berth deploy (v1, image uploaded from a docker save tarball)"
"$BERTH" deploy --image-tar demo-v1.tar
echo "== a request through the proxy"
curl -sS -H 'Host: demo.localhost' http://127.0.0.1:18180/

echo "== v2 with a zero-downtime rolling deploy while a request loop runs"
( ok=0; fail=0; end=$((SECONDS + 60))
  while [ ! -f stop-loop ] && [ $SECONDS -lt $end ]; do
    if curl -sf -o /dev/null -H 'Host: demo.localhost' http://127.0.0.1:18180/; then ok=$((ok+1)); else fail=$((fail+1)); fi
  done; echo "$ok $fail" > loop-result ) &
loop=$!
sed -i 's/berth-demo:v1/berth-demo:v2/' berth.yaml
"$BERTH" deploy --image-tar demo-v2.tar
touch stop-loop; wait $loop
read -r ok fail < loop-result
echo "request loop during the deploy: $ok ok, $fail failed"
curl -sS -H 'Host: demo.localhost' http://127.0.0.1:18180/
"$BERTH" status
"$BERTH" deployments demo
echo "== berth rollback demo"
"$BERTH" rollback demo
curl -sS -H 'Host: demo.localhost' http://127.0.0.1:18180/
[ "$fail" -eq 0 ] || { echo "demo: $fail requests failed during the deploy" >&2; exit 1; }
echo "demo finished"
