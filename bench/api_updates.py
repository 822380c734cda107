#!/usr/bin/env python3
"""Route updates under load: PUTs to berthd's REST API at a fixed rate over one kept-alive
connection, bounded by count and by time. Prints one JSON line with what happened.

  api_updates.py --port API_PORT --token TOKEN --rate 100 --seconds 10 \
      --backend 127.0.0.1:B1 --backend2 127.0.0.1:B2 --route bench --dyn-route bench-dyn

Even updates change the benched route itself (PUT /v1/routes/ROUTE/backends/b: weight 1..5,
address alternating between the two backend listeners); odd updates replace a second route
(PUT /v1/routes/DYN, its backend alternating). Every update republishes the route table the
proxy serves from, so the load on ROUTE must keep being answered throughout.
"""

import argparse
import http.client
import json
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--token", required=True)
    ap.add_argument("--rate", type=float, default=100.0)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--backend", required=True)
    ap.add_argument("--backend2", required=True)
    ap.add_argument("--route", default="bench")
    ap.add_argument("--dyn-route", default="bench-dyn")
    ap.add_argument("--dyn-domain", default="dyn.bench.test")
    args = ap.parse_args()

    max_count = int(args.rate * args.seconds)
    headers = {"Authorization": f"Bearer {args.token}", "Content-Type": "application/json"}
    conn = None
    sent = applied = failed = reconnects = 0
    statuses = {}
    api_ms = []
    start = time.monotonic()
    deadline = start + args.seconds
    for i in range(max_count):
        # Rate limit: update i is due at start + i / rate; never run past the deadline.
        due = start + i / args.rate
        now = time.monotonic()
        if due > now:
            time.sleep(due - now)
        if time.monotonic() >= deadline:
            break
        if i % 2 == 0:
            addr = args.backend if (i // 2) % 2 == 0 else args.backend2
            path = f"/v1/routes/{args.route}/backends/b"
            body = {"address": addr, "weight": 1 + (i // 2) % 5}
        else:
            addr = args.backend2 if (i // 2) % 2 == 0 else args.backend
            path = f"/v1/routes/{args.dyn_route}"
            body = {"domains": [args.dyn_domain], "backends": [{"id": "d", "address": addr, "weight": 1 + i % 3}]}
        data = json.dumps(body)
        t0 = time.monotonic()
        sent += 1
        try:
            if conn is None:
                conn = http.client.HTTPConnection("127.0.0.1", args.port, timeout=5)
            conn.request("PUT", path, body=data, headers=headers)
            resp = conn.getresponse()
            resp.read()
            statuses[resp.status] = statuses.get(resp.status, 0) + 1
            if 200 <= resp.status < 300:
                applied += 1
            else:
                failed += 1
            if resp.getheader("connection", "").lower() == "close":
                conn.close()
                conn = None
        except (OSError, http.client.HTTPException) as e:
            failed += 1
            statuses[type(e).__name__] = statuses.get(type(e).__name__, 0) + 1
            if conn is not None:
                conn.close()
            conn = None
            reconnects += 1
        api_ms.append((time.monotonic() - t0) * 1000)
    elapsed = time.monotonic() - start
    if conn is not None:
        conn.close()
    api_ms.sort()
    out = {
        "sent": sent,
        "applied": applied,
        "failed": failed,
        "statuses": {str(k): v for k, v in statuses.items()},
        "reconnects": reconnects,
        "elapsed_s": round(elapsed, 3),
        "rate_per_s": round(sent / elapsed, 1) if elapsed > 0 else 0.0,
        "api_p50_ms": round(statistics.median(api_ms), 2) if api_ms else None,
        "api_p99_ms": round(api_ms[min(len(api_ms) - 1, int(len(api_ms) * 0.99))], 2) if api_ms else None,
    }
    print("UPDATES_JSON " + json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
