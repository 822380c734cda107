#!/usr/bin/env bash
# Browser test of berthd's status page (/ui/): builds (or takes $BERTHD) berthd, builds two tiny
# app images locally (busybox httpd via `docker import`, never pulled), starts berthd with a
# temporary data dir, a fresh API token, the real Docker deploy engine on its own network and
# ACME pointed at an unreachable loopback directory (so certificate orders fail, locally), then
# drives Debian's headless chromium through playwright-core (tests/ui/ui.test.mjs), which
# deploys through the real API. Screenshots go to tests/ui/artifacts/. The app's containers and
# network are removed on exit, also when the test fails.
#
# Run directly (`tests/ui/run.sh`) or from cargo (`BERTH_SYSTEM_TESTS=1 cargo test --test
# ui_browser`). Needs: chromium (apt), nodejs + npm (apt), docker.io + busybox-static (apt) with
# dockerd running (`scripts/setup.sh --docker`); `npm ci` here fetches playwright-core once if
# node_modules is missing. Never downloads a browser or an image.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
START=$(date +%s)

if [ ! -x "$CHROMIUM" ]; then
  echo "ui test: $CHROMIUM not found (apt-get install -y chromium)" >&2
  exit 1
fi
if [ -z "${BERTHD:-}" ]; then
  (cd "$ROOT" && cargo build --quiet --bin berthd)
  BERTHD="${CARGO_TARGET_DIR:-$ROOT/target}/debug/berthd"
fi
if [ ! -d "$HERE/node_modules/playwright-core" ]; then
  (cd "$HERE" && npm ci --no-audit --no-fund --loglevel=error)
fi
if ! docker info >/dev/null 2>&1; then
  echo "ui test: dockerd is not running (scripts/setup.sh --docker, or see ENVIRONMENT.md)" >&2
  exit 1
fi
BUSYBOX=$(command -v busybox || true)
if [ -z "$BUSYBOX" ]; then echo "ui test: busybox missing (apt-get install busybox-static)" >&2; exit 1; fi

TMP=$(mktemp -d /tmp/berth-ui-test.XXXXXX)
# Names of this run: the app, its Docker network (containers carry berth.app=$APP).
RUN="ui-$$-$(date +%s)"
APP="$RUN"
NET="berth-$RUN"
IMG=berth-ui-test
PID=""
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
  fi
  # berthd leaves app containers running when it stops (they survive upgrades): remove ours.
  left=$(docker ps -aq --filter "label=berth.app=$APP" 2>/dev/null || true)
  if [ -n "$left" ]; then
    echo "ui test: removing $(echo "$left" | wc -l) container(s) of $APP" >&2
    echo "$left" | xargs -r docker rm -f >/dev/null 2>&1 || true
  fi
  docker network rm "$NET" >/dev/null 2>&1 || true
  if [ "${KEEP_TMP:-0}" != 1 ]; then rm -rf "$TMP"; else echo "ui test: kept $TMP" >&2; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The app image: busybox httpd serving "$1" at / and "ok" at /health; httpd runs as a child of
# sh so SIGTERM ends it at once (PID 1 ignores signals it has no handler for). Built once.
build_image() {
  local tag=$1 text=$2 r
  docker image inspect "$tag" >/dev/null 2>&1 && return 0
  r=$(mktemp -d "$TMP/rootfs.XXXXXX")
  mkdir -p "$r/bin" "$r/www"
  cp "$BUSYBOX" "$r/bin/busybox"
  for l in sh httpd kill; do ln -s busybox "$r/bin/$l"; done
  echo "$text" > "$r/www/index.html"
  echo ok > "$r/www/health"
  tar -C "$r" -c . | docker import \
    -c 'CMD ["/bin/sh","-c","trap '"'"'kill $P; exit 0'"'"' TERM; /bin/httpd -f -p 8080 -h /www & P=$!; wait $P"]' \
    -c 'LABEL berth.test=1' - "$tag" >/dev/null
}
build_image "$IMG:v1" v1
build_image "$IMG:v2" v2

cat > "$TMP/berthd.yaml" <<YAML
http:
  listen: "127.0.0.1:0"
api:
  listen: "127.0.0.1:0"
data_dir: "$TMP/data"
deploy:
  enabled: required
  network: "$NET"
  stop_grace: 2s
tls:
  listen: "127.0.0.1:0"
  acme:
    # Nothing listens on port 1: every order fails at once, and nothing leaves the machine.
    directory: "https://127.0.0.1:1/dir"
log:
  level: info
  access_log: false
YAML

TOKEN=$("$BERTHD" -c "$TMP/berthd.yaml" token create --name ui-test 2>/dev/null)
"$BERTHD" -c "$TMP/berthd.yaml" --log-format json run >"$TMP/berthd.log" 2>&1 &
PID=$!

API="" HTTP=""
for _ in $(seq 1 100); do
  # The proxy and the API each log their own listening line.
  HTTP=$(grep -o '"http":"[^"]*"' "$TMP/berthd.log" | head -n1 | cut -d'"' -f4 || true)
  API=$(grep -o '"api":"[^"]*"' "$TMP/berthd.log" | head -n1 | cut -d'"' -f4 || true)
  if [ -n "$API" ] && [ -n "$HTTP" ]; then
    break
  fi
  kill -0 "$PID" 2>/dev/null || { echo "ui test: berthd exited:" >&2; cat "$TMP/berthd.log" >&2; exit 1; }
  sleep 0.1
done
if [ -z "$API" ]; then echo "ui test: berthd did not report its listeners within 10 s" >&2; cat "$TMP/berthd.log" >&2; exit 1; fi

mkdir -p "$HERE/artifacts"
set +e
BERTH_API="http://$API" BERTH_PROXY="http://$HTTP" BERTH_TOKEN="$TOKEN" CHROMIUM="$CHROMIUM" \
  BERTH_APP="$APP" BERTH_IMAGE="$IMG" BERTHD_LOG="$TMP/berthd.log" \
  ARTIFACTS="$HERE/artifacts" UI_TMP="$TMP" node "$HERE/ui.test.mjs"
rc=$?
set -e
if [ $rc -ne 0 ]; then
  echo "--- berthd log (last 40 lines) ---" >&2
  tail -n 40 "$TMP/berthd.log" >&2
fi
echo "ui test: exit $rc after $(( $(date +%s) - START )) s" >&2
exit $rc
