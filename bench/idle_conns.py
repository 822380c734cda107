#!/usr/bin/env python3
"""RSS of a proxy holding N idle keep-alive client connections (bench/run.sh --only memory).

Opens N connections to the proxy (plain or TLS), sends one GET on each and reads the
answer, so every connection has carried a request and sits idle in keep-alive; samples the
proxy's VmRSS (summed over --pid, the proxy's processes) before, with all N idle, and after
closing them all (at once, then after --settle seconds). Prints one JSON line:
MEMORY_JSON {"conns":..., "opened":..., "rss_kb": {"base":..., "idle":..., "closed":...,
"settled":...}, "per_conn_bytes":..., "returned_pct":...}.

Bounded: at most --conns connections, opened --batch at a time, the whole run within
--timeout seconds; traffic only to 127.0.0.1.
"""

import argparse
import asyncio
import json
import ssl
import sys
import time


def rss_kb(pids):
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return total


async def one(port, host, tls_ctx, held):
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=tls_ctx, server_hostname=host if tls_ctx else None
    )
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = head.split(b" ", 2)[1]
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    if status != b"200":
        raise RuntimeError(f"status {status!r}")
    held.append(writer)


async def run(args):
    pids = [int(p) for p in args.pid]
    tls_ctx = None
    if args.tls:
        tls_ctx = ssl.create_default_context()
        tls_ctx.check_hostname = False
        tls_ctx.verify_mode = ssl.CERT_NONE
    base = rss_kb(pids)
    held = []
    failed = 0
    for start in range(0, args.conns, args.batch):
        n = min(args.batch, args.conns - start)
        results = await asyncio.gather(
            *(one(args.port, args.host, tls_ctx, held) for _ in range(n)), return_exceptions=True
        )
        bad = [r for r in results if isinstance(r, BaseException)]
        failed += len(bad)
        if bad and failed <= 3:
            print(f"idle_conns: {bad[0]!r}", file=sys.stderr)
    await asyncio.sleep(args.settle)
    idle = rss_kb(pids)
    for w in held:
        w.close()
    await asyncio.sleep(0.5)
    closed = rss_kb(pids)
    await asyncio.sleep(args.settle)
    settled = rss_kb(pids)
    opened = len(held)
    per_conn = (idle - base) * 1024 / opened if opened else 0
    returned = 100.0 * (idle - settled) / (idle - base) if idle > base else 0.0
    out = {
        "conns": args.conns,
        "opened": opened,
        "failed": failed,
        "tls": args.tls,
        "rss_kb": {"base": base, "idle": idle, "closed": closed, "settled": settled},
        "per_conn_bytes": round(per_conn),
        "returned_pct": round(returned, 1),
    }
    print("MEMORY_JSON " + json.dumps(out), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--pid", action="append", required=True, help="proxy PID (repeatable)")
    ap.add_argument("--host", default="bench.test")
    ap.add_argument("--conns", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=250)
    ap.add_argument("--settle", type=float, default=2.0)
    ap.add_argument("--tls", action="store_true")
    ap.add_argument("--timeout", type=float, default=180.0)
    args = ap.parse_args()
    t0 = time.monotonic()
    try:
        asyncio.run(asyncio.wait_for(run(args), args.timeout))
    except asyncio.TimeoutError:
        print(f"idle_conns: gave up after {time.monotonic() - t0:.0f} s", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
