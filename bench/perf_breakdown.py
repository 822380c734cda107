#!/usr/bin/env python3
"""Groups `perf script -F ip,sym,dso` samples of berthd by where on the request path they fall.

Usage: perf script -i perf.data -F ip,sym,dso | python3 bench/perf_breakdown.py
Each sample is put in the first category whose marker appears in its stack (leaf to root), and
split into kernel / libc / berthd self time. Also lists who calls malloc/free and memmove.
"""
import collections
import re
import sys

# (category, regex on a frame's symbol); the innermost matching frame decides.
CATEGORIES = [
    ("upstream conn task (hyper client dispatch: write req, read resp)", r"dispatch::Client<|hyper::client::conn"),
    ("client conn task (hyper server dispatch: parse req, write resp)", r"dispatch::Server<|UpgradeableConnection<hyper_util::rt::tokio::TokioIo<berth::proxy::server::TrackedIo"),
]
HANDLER = ("request handler (berth handle/route_request, pool, direct upstream path)",
           r"berth::proxy::forward|berth::proxy::pool|berth::proxy::direct|Client<C,B>::send_request|Client<C,B>::request|pool::Checkout")
TOKIO = ("tokio runtime (scheduler, IO driver, timers, park)", r"tokio::runtime")
ALLOC = re.compile(r"malloc|_int_free|cfree|tcache|unlink_chunk|malloc_consolidate|realloc|__libc_free")
MOVE = re.compile(r"memmove|memcpy")


def samples(lines):
    cur = []
    for line in lines:
        line = line.rstrip("\n")
        if not line.strip():
            if cur:
                yield cur
            cur = []
            continue
        m = re.match(r"\s*([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$", line)
        if m:
            cur.append((m.group(2), m.group(3)))
        else:
            m = re.match(r"\s*([0-9a-f]+)\s+(.*)$", line)
            if m:
                cur.append((m.group(2), ""))
    if cur:
        yield cur


def main():
    cats = collections.Counter()
    split = collections.defaultdict(collections.Counter)
    alloc_callers = collections.Counter()
    move_callers = collections.Counter()
    total = 0
    for st in samples(sys.stdin):
        total += 1
        leaf_sym, leaf_dso = st[0]
        kind = "kernel" if "kernel" in leaf_dso else "libc" if "libc" in leaf_dso else "berthd"
        cat = None
        for sym, _ in st:
            if re.search(HANDLER[1], sym):
                cat = HANDLER[0]
                break
            for name, rx in CATEGORIES:
                if re.search(rx, sym):
                    cat = name
                    break
            if cat:
                break
        if cat is None:
            cat = TOKIO[0] if any(re.search(TOKIO[1], s) for s, _ in st) else "other"
        cats[cat] += 1
        split[cat][kind] += 1
        for which, rx, counter in (("alloc", ALLOC, alloc_callers), ("move", MOVE, move_callers)):
            if rx.search(leaf_sym):
                for sym, dso in st[1:]:
                    if "libc" in dso or rx.search(sym) or sym.startswith(("alloc::", "core::", "<alloc", "drop_in_place", "dealloc", "allocate", "<std::alloc", "__rustc::", "__rdl", "__rust_")) or "::" not in sym:
                        continue
                    counter[re.sub(r"<.*", "<..>", sym)[:110]] += 1
                    break
    print(f"{total} samples")
    for cat, n in cats.most_common():
        s = split[cat]
        print(f"{100 * n / total:5.1f}%  {cat}   [kernel {100 * s['kernel'] / total:.1f}%, libc {100 * s['libc'] / total:.1f}%, berthd {100 * s['berthd'] / total:.1f}%]")
    for title, counter in (("malloc/free callers", alloc_callers), ("memmove/memcpy callers", move_callers)):
        print(f"\n{title} (% of all samples):")
        for k, n in counter.most_common(12):
            print(f"  {100 * n / total:5.2f}%  {k}")


if __name__ == "__main__":
    main()
