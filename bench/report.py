#!/usr/bin/env python3
"""Aggregates bench/run.sh measurements: medians per (proxy, scenario), ratio to HAProxy.

  report.py line RAW.jsonl                      one progress line for the last measurement
  report.py summary RAW.jsonl META.json [--json OUT] [--markdown]
                                                the table (stdout) and the JSON document
  report.py table results/latest.json [--markdown]   the table of a saved run

RAW.jsonl has one object per measured cell and round (written by run.sh); the "wrk" member is
the line bench/report.lua prints at the end of a wrk run.
"""

import argparse
import json
import statistics
import sys

REFERENCE = "haproxy"


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def derive(m):
    """Per-measurement numbers: req/s, latencies in ms, errors, CPU use, RSS."""
    w = m["wrk"]
    secs = w["duration_us"] / 1e6
    e = w["errors"]
    socket_errors = e["connect"] + e["read"] + e["write"] + e["timeout"]
    tck = m["clk_tck"]
    proxy_ticks = m["proxy_user_ticks"] + m["proxy_sys_ticks"]
    reqs = max(w["requests"], 1)
    wall = max(m["wall_s"], 1e-9)
    return {
        "rps": w["requests"] / secs if secs > 0 else 0.0,
        "p50_ms": w["p50_us"] / 1000,
        "p90_ms": w["p90_us"] / 1000,
        "p99_ms": w["p99_us"] / 1000,
        "max_ms": w["max_us"] / 1000,
        "socket_errors": socket_errors,
        "http_errors": e["status"],
        "errors": socket_errors + e["status"],
        "errors_detail": e,
        "requests": w["requests"],
        "rss_kb": m["rss_kb"],
        "worker_rss_kb": m.get("worker_rss_kb", m["rss_kb"]),
        "processes": m.get("processes", 1),
        # 100 = one core fully used by the proxy's processes during the measured window.
        "proxy_cpu_pct": 100.0 * proxy_ticks / tck / wall,
        # Proxy CPU time per request: what it costs, independent of how much CPU it was given.
        "proxy_cpu_us_per_req": 1e6 * proxy_ticks / tck / reqs,
        "proxy_user_us_per_req": 1e6 * m["proxy_user_ticks"] / tck / reqs,
        "proxy_sys_us_per_req": 1e6 * m["proxy_sys_ticks"] / tck / reqs,
        "backend_cpu_pct": 100.0 * m["backend_cpu_ticks"] / tck / wall,
        # Whole-CPU busy time, all processes on the machine (others share these CPUs).
        "load_cpu_busy_pct": 100.0 * m["load_cpu_busy_ticks"] / tck / wall,
        "proxy_cpu_busy_pct": 100.0 * m["proxy_cpu_busy_ticks"] / tck / wall,
    }


def cmd_line(args):
    m = load(args.raw)[-1]
    d = derive(m)
    print(
        f"  round {m['round']} {m['proxy']:>8} {m['scenario']:<10} "
        f"{d['rps']:>9.0f} req/s  p50 {d['p50_ms']:.2f} ms  p99 {d['p99_ms']:.2f} ms  "
        f"errors {d['errors']}  proxy CPU {d['proxy_cpu_pct']:.0f}% "
        f"({d['proxy_user_us_per_req']:.1f}+{d['proxy_sys_us_per_req']:.1f} us/req)  CPU busy: load side "
        f"{d['load_cpu_busy_pct']:.0f}%, proxy side {d['proxy_cpu_busy_pct']:.0f}%"
    )


def aggregate(raw):
    cells = {}
    order = []
    for m in raw:
        key = (m["proxy"], m["scenario"])
        if key not in cells:
            cells[key] = []
            order.append(key)
        cells[key].append((m["round"], derive(m)))
    out = []
    for key in order:
        rounds = cells[key]
        ds = [d for _, d in rounds]
        med = lambda k: statistics.median(d[k] for d in ds)  # noqa: E731
        out.append(
            {
                "proxy": key[0],
                "scenario": key[1],
                "rounds": len(ds),
                "median": {
                    k: med(k)
                    for k in (
                        "rps",
                        "p50_ms",
                        "p90_ms",
                        "p99_ms",
                        "rss_kb",
                        "worker_rss_kb",
                        "proxy_cpu_pct",
                        "proxy_cpu_us_per_req",
                        "proxy_user_us_per_req",
                        "proxy_sys_us_per_req",
                        "backend_cpu_pct",
                        "load_cpu_busy_pct",
                        "proxy_cpu_busy_pct",
                    )
                },
                # Errors are summed over all rounds, not medianed, so none can hide.
                "errors_total": sum(d["errors"] for d in ds),
                "socket_errors_total": sum(d["socket_errors"] for d in ds),
                "http_errors_total": sum(d["http_errors"] for d in ds),
                "requests_total": sum(d["requests"] for d in ds),
                "processes": ds[-1]["processes"],
                "per_round": [{"round": r, **d} for r, d in rounds],
            }
        )
    ref = {c["scenario"]: c["median"]["rps"] for c in out if c["proxy"] == REFERENCE}
    for c in out:
        r = ref.get(c["scenario"])
        c["rps_vs_haproxy"] = (c["median"]["rps"] / r) if r else None
    return out


def table(cells, markdown=False):
    head = [
        "proxy",
        "scenario",
        "req/s",
        "p50 ms",
        "p99 ms",
        "errors",
        "RSS MiB",
        "proxy CPU%",
        "CPU us/req (user+sys)",
        "vs HAProxy",
    ]
    rows = []
    for c in cells:
        m = c["median"]
        ratio = c["rps_vs_haproxy"]
        rss = f"{m['rss_kb'] / 1024:.1f}"
        if c["processes"] > 1:
            rss += f" ({c['processes']} procs)"
        rows.append(
            [
                c["proxy"],
                c["scenario"],
                f"{m['rps']:.0f}",
                f"{m['p50_ms']:.2f}",
                f"{m['p99_ms']:.2f}",
                str(c["errors_total"]),
                rss,
                f"{m['proxy_cpu_pct']:.0f}",
                f"{m['proxy_cpu_us_per_req']:.1f} ({m['proxy_user_us_per_req']:.1f}+{m['proxy_sys_us_per_req']:.1f})",
                f"{ratio:.2f}x" if ratio is not None else "-",
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    fmt = lambda r: "  ".join(  # noqa: E731
        v.ljust(widths[i]) if i < 2 else v.rjust(widths[i]) for i, v in enumerate(r)
    )
    return "\n".join([fmt(head), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])


def cmd_summary(args):
    raw = load(args.raw)
    with open(args.meta) as f:
        meta = json.load(f)
    cells = aggregate(raw)
    s = meta["settings"]
    print()
    print(
        f"berthd {meta['commit']} vs HAProxy {meta['haproxy']} vs nginx {meta['nginx']}, "
        f"{meta['date']}, {meta['cpus']} CPUs ({meta['cpu_model']})"
    )
    print(
        f"median of {s['rounds']} interleaved rounds, {s['duration_s']} s each after "
        f"{s['warmup_s']} s warm-up; keepalive = {s['keepalive_connections']} connections, "
        f"close = {s['close_connections']} connections with 'Connection: close'"
    )
    print(
        f"wrk -t1 + backend on CPU {s['load_cpu']}, proxy on CPU {s['proxy_cpu']}; "
        f"load average before {meta['load_average_before']}, after {meta['load_average_after']}"
    )
    print()
    print(table(cells, markdown=args.markdown))
    print()
    print(
        "errors: wrk socket errors (connect+read+write+timeout) + HTTP status >= 400, summed "
        "over rounds. RSS: VmRSS after the cell, summed over the proxy's processes "
        "(nginx: master + worker). proxy CPU%: CPU time of the proxy / wall time (100 = one core). "
        "CPU us/req: proxy CPU time / requests, split into user and kernel time."
    )
    if args.json:
        doc = {"meta": meta, "cells": cells}
        with open(args.json, "w") as f:
            json.dump(doc, f, indent=2)
            f.write("\n")


def cmd_table(args):
    with open(args.json_doc) as f:
        doc = json.load(f)
    print(table(doc["cells"], markdown=args.markdown))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("line")
    p.add_argument("raw")
    p.set_defaults(func=cmd_line)
    p = sub.add_parser("summary")
    p.add_argument("raw")
    p.add_argument("meta")
    p.add_argument("--json")
    p.add_argument("--markdown", action="store_true")
    p.set_defaults(func=cmd_summary)
    p = sub.add_parser("table", help="re-print the table of a results JSON (e.g. latest.json)")
    p.add_argument("json_doc")
    p.add_argument("--markdown", action="store_true")
    p.set_defaults(func=cmd_table)
    args = ap.parse_args()
    args.func(args)


if __name__ == "__main__":
    sys.exit(main())
