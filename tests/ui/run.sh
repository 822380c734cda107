#!/usr/bin/env bash
# Browser test of berthd's status page (/ui/): builds (or takes $BERTHD) berthd, starts it with a
# temporary data dir and a fresh API token, then drives Debian's headless chromium through
# playwright-core (tests/ui/ui.test.mjs). Screenshots go to tests/ui/artifacts/.
#
# Run directly (`tests/ui/run.sh`) or from cargo (`BERTH_SYSTEM_TESTS=1 cargo test --test
# ui_browser`). Needs: chromium (apt), nodejs + npm (apt); `npm ci` here fetches playwright-core
# once if node_modules is missing. Never downloads a browser.
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

TMP=$(mktemp -d /tmp/berth-ui-test.XXXXXX)
PID=""
cleanup() {
  if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
    kill -TERM "$PID" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$PID" 2>/dev/null || true
  fi
  if [ "${KEEP_TMP:-0}" != 1 ]; then rm -rf "$TMP"; else echo "ui test: kept $TMP" >&2; fi
}
trap cleanup EXIT

cat > "$TMP/berthd.yaml" <<YAML
http:
  listen: "127.0.0.1:0"
api:
  listen: "127.0.0.1:0"
data_dir: "$TMP/data"
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
  ARTIFACTS="$HERE/artifacts" UI_TMP="$TMP" node "$HERE/ui.test.mjs"
rc=$?
set -e
if [ $rc -ne 0 ]; then
  echo "--- berthd log (last 40 lines) ---" >&2
  tail -n 40 "$TMP/berthd.log" >&2
fi
echo "ui test: exit $rc after $(( $(date +%s) - START )) s" >&2
exit $rc
