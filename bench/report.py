#!/usr/bin/env python3
"""Aggregates bench/run.sh measurements: medians per (proxy, scenario), ratio to HAProxy.

  report.py line RAW.jsonl                      one progress line for the last measurement
  report.py summary RAW.jsonl META.json [--extra EXTRA.jsonl] [--json OUT] [--markdown]
                                                the table (stdout) and the JSON document;
                                                EXTRA has the updates/torture/deploy results
  report.py table results/latest.json [--markdown]   the table of a saved run

RAW.jsonl has one object per measured cell and round (written by run.sh); the "wrk" member is
the line bench/report.lua prints at the end of a wrk run.
"""

import argparse
import json
import statistics
import sys

REFERENCE = "haproxy"
# A/B: the second berthd binary (BERTHD_B) is compared with the first.
AB = ("berthd_b", "berthd")
# Below this proxy CPU % a cell's req/s measures the load generator too (overridden by meta).
MIN_PROXY_CPU = 95.0


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
    ref = {c["scenario"]: c["median"] for c in out if c["proxy"] == REFERENCE}
    a = {c["scenario"]: c["median"] for c in out if c["proxy"] == AB[1]}
    for c in out:
        r = ref.get(c["scenario"])
        m = c["median"]
        c["rps_vs_haproxy"] = (m["rps"] / r["rps"]) if r and r["rps"] else None
        c["p99_vs_haproxy"] = (m["p99_ms"] / r["p99_ms"]) if r and r["p99_ms"] else None
        # Per CPU-second: what counts when the load generator, not the proxy, is the limit.
        c["cpu_per_req_vs_haproxy"] = (
            m["proxy_cpu_us_per_req"] / r["proxy_cpu_us_per_req"]
            if r and r["proxy_cpu_us_per_req"]
            else None
        )
        ab = a.get(c["scenario"]) if c["proxy"] == AB[0] else None
        c["rps_vs_berthd"] = (m["rps"] / ab["rps"]) if ab and ab["rps"] else None
        c["proxy_cpu_low_rounds"] = sum(
            1 for d in c["per_round"] if d["proxy_cpu_pct"] < MIN_PROXY_CPU
        )
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
        "vs HAProxy (req/s, p99, CPU/req)",
        "A/B",
    ]
    rows = []
    if not cells:
        return "(no load scenarios in this run)"
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
                f"{m['proxy_cpu_pct']:.0f}"
                + (f" !{c['proxy_cpu_low_rounds']}" if c.get("proxy_cpu_low_rounds") else ""),
                f"{m['proxy_cpu_us_per_req']:.1f} ({m['proxy_user_us_per_req']:.1f}+{m['proxy_sys_us_per_req']:.1f})",
                (
                    f"{ratio:.2f}x, {c['p99_vs_haproxy']:.2f}x, {c['cpu_per_req_vs_haproxy']:.2f}x"
                    if ratio is not None and c.get("p99_vs_haproxy") and c.get("cpu_per_req_vs_haproxy")
                    else "-"
                ),
                f"{c['rps_vs_berthd']:.3f}x" if c.get("rps_vs_berthd") else "-",
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


# Issue 23's targets, as ratios to HAProxy in the same round: (scenario, label, value of one
# round's berthd and haproxy cells, goal test, goal text).
TARGETS = [
    ("keepalive", "keep-alive req/s", lambda b, h: b["rps"] / h["rps"], lambda v: v >= 1.10, ">= 1.10x"),
    ("keepalive", "keep-alive p99", lambda b, h: b["p99_ms"] / h["p99_ms"], lambda v: v <= 0.90, "<= 0.90x"),
    ("close", "new connection req/s", lambda b, h: b["rps"] / h["rps"], lambda v: v >= 1.10, ">= 1.10x"),
    ("https-keepalive", "HTTPS keep-alive req/s", lambda b, h: b["rps"] / h["rps"], lambda v: v >= 1.20, ">= 1.20x"),
    ("https-close", "HTTPS handshake per CPU-second",
     lambda b, h: h["proxy_cpu_us_per_req"] / b["proxy_cpu_us_per_req"], lambda v: v >= 1.50, ">= 1.50x"),
]


def targets_report(cells, markdown=False):
    """Per-round ratios of berthd to HAProxy for each target; met when met in most rounds."""
    by = {(c["proxy"], c["scenario"]): {r["round"]: r for r in c["per_round"]} for c in cells}
    rows, doc = [], []
    for scenario, label, value, ok, goal in TARGETS:
        b, h = by.get(("berthd", scenario)), by.get((REFERENCE, scenario))
        if not b or not h:
            continue
        vals = [value(b[r], h[r]) for r in sorted(b) if r in h and h[r]["rps"] and b[r]["rps"]]
        if not vals:
            continue
        met = sum(1 for v in vals if ok(v))
        verdict = "met" if 2 * met > len(vals) else "not met"
        doc.append({"target": label, "goal": goal, "per_round": vals, "rounds_met": met,
                    "rounds": len(vals), "met": verdict == "met"})
        rows.append([label, goal, f"{statistics.median(vals):.2f}x",
                     " ".join(f"{v:.2f}" for v in vals), f"{met}/{len(vals)}", verdict])
    if not rows:
        return [], doc
    lines = ["", "Issue 23 targets (berthd / HAProxy per round; met = met in most rounds):"]
    lines += small_table(["target", "goal", "median", "per round", "rounds met", "verdict"], rows, markdown)
    return lines, doc


def small_table(head, rows, markdown=False):
    """A right-aligned text table indented by two spaces, or a markdown table."""
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
        return lines + ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  " + "  ".join(h.rjust(widths[i]) for i, h in enumerate(head))]
    return lines + ["  " + "  ".join(v.rjust(widths[i]) for i, v in enumerate(r)) for r in rows]


def median_of(xs):
    return statistics.median(xs) if xs else None


def extras_report(cells, extra, conns_ka="?", markdown=False):
    """The updates, torture and deploy sections: (text lines, JSON document)."""
    lines, doc = [], {}
    upd = [e for e in extra if e.get("part") == "updates"]
    off = next((c for c in cells if c["scenario"] == "updates-off"), None)
    on = next((c for c in cells if c["scenario"] == "updates-on"), None)
    if upd and off and on:
        ratio = on["median"]["rps"] / off["median"]["rps"] if off["median"]["rps"] else None
        failed_load = on["errors_total"]
        doc["updates"] = {
            "rounds": upd,
            "updates_sent": sum(e["sent"] for e in upd),
            "updates_applied": sum(e["applied"] for e in upd),
            "updates_failed": sum(e["failed"] for e in upd),
            "update_rate_per_s_median": median_of([e["rate_per_s"] for e in upd]),
            "api_p99_ms_median": median_of([e["api_p99_ms"] for e in upd if e["api_p99_ms"] is not None]),
            "rps_without": off["median"]["rps"],
            "rps_with": on["median"]["rps"],
            "rps_ratio": ratio,
            "p99_ms_without": off["median"]["p99_ms"],
            "p99_ms_with": on["median"]["p99_ms"],
            "failed_requests_with_updates": failed_load,
            "failed_requests_without_updates": off["errors_total"],
            "requests_with_updates": on["requests_total"],
        }
        u = doc["updates"]
        lines += [
            "",
            f"Route updates under keep-alive load (berthd, {len(upd)} rounds, rows updates-off/updates-on above):",
            f"  updates applied {u['updates_applied']} of {u['updates_sent']} sent "
            f"({u['updates_failed']} failed), {u['update_rate_per_s_median']}/s, API p99 {u['api_p99_ms_median']} ms",
            f"  req/s without {u['rps_without']:.0f}, with {u['rps_with']:.0f} -> ratio {ratio:.2f}x; "
            f"p99 {u['p99_ms_without']:.2f} -> {u['p99_ms_with']:.2f} ms",
            f"  failed requests during updates: {failed_load} of {u['requests_with_updates']} "
            "(wrk socket errors + status >= 400; goal 0)",
        ]
    tort = [e for e in extra if e.get("part") == "torture"]

    def reloads_cell(e):
        """Reloads done, of the number asked for when known, and in how long."""
        asked = f" of {e['reloads_asked']}" if "reloads_asked" in e else ""
        return f"{e['reloads']}{asked} in {e['reload_seconds']:.1f}s"

    if tort:
        doc["torture"] = []
        ka = [e for e in tort if "ka_reload" in e]
        if ka:
            lines += ["", "Keep-alive clients through reloads (same connections, without and with reloads; "
                          "quiet/reloads pairs, medians, the drop per pair and its median):"]
            khead = ["proxy", "conns", "reloads", "req/s quiet", "req/s reloads", "drop", "drop per pair",
                     "failures", "per 10k", "p99 quiet ms", "p99 reloads ms"]
            krows = []
            for e in ka:
                k = e["ka_reload"]
                # One quiet/reloads pair in results written before pairs existed.
                pairs = k.get("pairs") or [k]
                drops = [1 - p["reload"]["rps"] / p["quiet"]["rps"] if p["quiet"]["rps"] else 0.0
                         for p in pairs]
                fails = sum(p["reload"]["failures"] for p in pairs)
                reqs = sum(p["reload"]["requests"] for p in pairs)
                k.update(
                    reloads=sum(p["reloads"] for p in pairs),
                    reloads_asked=sum(p["reloads_asked"] for p in pairs),
                    reload_failures=sum(p["reload_failures"] for p in pairs),
                    reload_seconds=median_of([p["reload_seconds"] for p in pairs]),
                    rps_quiet=median_of([p["quiet"]["rps"] for p in pairs]),
                    rps_reloads=median_of([p["reload"]["rps"] for p in pairs]),
                    p99_ms_quiet=median_of([p["quiet"]["p99_ms"] for p in pairs]),
                    p99_ms_reloads=median_of([p["reload"]["p99_ms"] for p in pairs]),
                    rps_drops=drops,
                    rps_drop=median_of(drops),
                    failures=fails,
                    requests=reqs,
                    failures_per_10k=1e4 * fails / reqs if reqs else 0.0,
                )
                krows.append([e["proxy"].removesuffix("_t"), str(conns_ka),
                              reloads_cell(k), f"{k['rps_quiet']:.0f}",
                              f"{k['rps_reloads']:.0f}", f"{100 * k['rps_drop']:.1f}%",
                              " ".join(f"{100 * d:.1f}%" for d in drops), str(fails),
                              f"{k['failures_per_10k']:.2f}", f"{k['p99_ms_quiet']:.2f}",
                              f"{k['p99_ms_reloads']:.2f}"])
            lines += small_table(khead, krows, markdown)

            def busy(run):
                b = run.get("busy_pct")
                return f"{b['proxy_core']}/{b['load_core']}" if b else "?"
            goal = "not measured"
            for e in ka:
                k = e["ka_reload"]
                if k.get("pairs"):
                    lines.append(f"  {e['proxy'].removesuffix('_t')}: busy % of the proxy's/load's core, "
                                 "quiet -> reloads, per pair: "
                                 + ", ".join(f"{busy(p['quiet'])} -> {busy(p['reload'])}" for p in k["pairs"]))
                if e["proxy"] == "berthd_t":
                    met = k["failures_per_10k"] == 0 and k["rps_drop"] <= 0.10
                    within = sum(d <= 0.10 for d in k["rps_drops"])
                    goal = f"{'met' if met else 'not met'} (drop <= 10 % in {within} of {len(k['rps_drops'])} pairs)"
            lines.append("  goal (issue 23): 0 failures per 10k, drop <= 10 % (median pair); berthd: " + goal)
        lines += ["", "Reload torture (reloads/s under Connection: close load + keep-alive connections):"]
        head = ["proxy", "reloads", "reload fails", "requests", "failures", "per 10k", "close fails",
                "ka fails", "close req/s", "close p99 ms"]
        rows = []
        for e in tort:
            req = e["close"]["requests"] + e["keepalive"]["requests"]
            fails = e["close"]["failures"] + e["keepalive"]["failures"]
            per10k = 1e4 * fails / req if req else 0.0
            row = dict(e, requests=req, failures=fails, failures_per_10k=per10k)
            doc["torture"].append(row)
            rows.append([e["proxy"].removesuffix("_t"), reloads_cell(e),
                         str(e["reload_failures"]), str(req), str(fails), f"{per10k:.2f}",
                         str(e["close"]["failures"]), str(e["keepalive"]["failures"]),
                         f"{e['close']['rps']:.0f}", f"{e['close']['p99_ms']:.2f}"])
        lines += small_table(head, rows, markdown)
        lines.append("  failures: wrk connect+read+write+timeout errors + status >= 400, both loads together")
    mem = [e for e in extra if e.get("part") == "memory"]
    if mem:
        doc["memory"] = mem
        ref = next((e for e in mem if e["proxy"] == REFERENCE), None)
        lines += ["", f"Memory: RSS with {mem[0]['conns']} idle keep-alive client connections "
                  "(each carried one request), and after they closed:"]
        head = ["proxy", "held", "RSS base MiB", "RSS idle MiB", "per conn KiB", "vs HAProxy",
                "RSS closed MiB", "RSS +2 s MiB", "returned"]
        rows = []
        for e in mem:
            r = e["rss_kb"]
            vs = (e["per_conn_bytes"] / ref["per_conn_bytes"]) if ref and ref["per_conn_bytes"] else None
            e["per_conn_vs_haproxy"] = vs
            rows.append([e["proxy"], f"{e['opened']}" + (f" ({e['failed']} failed)" if e["failed"] else ""),
                         f"{r['base'] / 1024:.1f}", f"{r['idle'] / 1024:.1f}",
                         f"{e['per_conn_bytes'] / 1024:.1f}", f"{vs:.2f}x" if vs else "-",
                         f"{r['closed'] / 1024:.1f}", f"{r['settled'] / 1024:.1f}", f"{e['returned_pct']:.0f}%"])
        lines += small_table(head, rows, markdown)
        b = next((e for e in mem if e["proxy"] == "berthd"), None)
        verdict = ("met" if b["per_conn_vs_haproxy"] <= 1.0 else "not met") if b and b.get("per_conn_vs_haproxy") else "not measured"
        lines.append("  per conn: (RSS idle - RSS base) / connections; returned: share of that growth given "
                     f"back 2.5 s after the close; goal (issue 23): per conn <= HAProxy's; berthd: {verdict}")
    dep = [e for e in extra if e.get("part") == "deploy"]
    if dep:
        d = dep[-1]
        doc["deploy"] = d
        lines.append("")
        if "skipped" in d:
            lines.append(f"Deploy timing: skipped ({d['skipped']})")
        else:
            lines.append(
                f"Deploy timing (3 replicas, rolling, image loaded): call -> 100% new version "
                f"{d['call_to_full_ms']} ms = Docker create/start {d['docker_ms']} ms + app health "
                f"{d['app_health_ms']} ms + Berth {d['berth_ms']} ms; call -> done {d['call_to_done_ms']} ms"
            )
    return lines, doc


def cmd_summary(args):
    raw = load(args.raw)
    with open(args.meta) as f:
        meta = json.load(f)
    s = meta["settings"]
    global MIN_PROXY_CPU
    MIN_PROXY_CPU = float(s.get("min_proxy_cpu", MIN_PROXY_CPU))
    cells = aggregate(raw)
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
        f"wrk -t{s.get('wrk_threads', 1)} + backend on CPU {s['load_cpu']}, proxy on CPU {s['proxy_cpu']}; "
        f"load average before {meta['load_average_before']}, after {meta['load_average_after']}"
    )
    print()
    print(table(cells, markdown=args.markdown))
    print()
    print(
        "errors: wrk socket errors (connect+read+write+timeout) + HTTP status >= 400, summed "
        "over rounds. RSS: VmRSS after the cell, summed over the proxy's processes "
        "(nginx: master + worker). proxy CPU%: CPU time of the proxy / wall time (100 = one core). "
        "CPU us/req: proxy CPU time / requests, split into user and kernel time. "
        f"'!N': in N rounds the proxy used less than {MIN_PROXY_CPU:.0f} % of its core, so req/s "
        "measured the load generator too (compare CPU/req there). vs HAProxy: req/s ratio, p99 "
        "ratio, CPU-per-request ratio (lower is better). A/B: berthd_b req/s / berthd req/s."
    )
    target_lines, target_doc = targets_report(cells, args.markdown)
    for line in target_lines:
        print(line)
    extra = load(args.extra) if args.extra else []
    lines, extra_doc = extras_report(cells, extra, s.get("torture_keepalive_connections", "?"), args.markdown)
    for line in lines:
        print(line)
    if args.json:
        doc = {"meta": meta, "cells": cells, "targets": target_doc, **extra_doc}
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
    p.add_argument("--extra")
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
