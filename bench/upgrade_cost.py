#!/usr/bin/env python3
"""CPU cost of `berthd upgrade` under keep-alive load, in figures other jobs on the machine do
not distort: CPU time (utime+stime) of every berthd process, taken from the kernel's own
accounting, not wall-clock rates.

This script makes itself a child subreaper (prctl PR_SET_CHILD_SUBREAPER), so every successor
berthd starts (detached: its parent is a short-lived intermediate) is re-parented to it, and
wait4() hands back each process's exact rusage when it exits. Per upgrade it reports:

* successor start: CPU of the new process from exec to "ready" (read from /proc/PID/stat and
  the thread schedstats the moment `berthd upgrade` returns), its thread count then;
* old process, upgrade -> exit: CPU the old process spent from the upgrade command to its exit
  (it keeps serving until the successor is ready, then drains);
* total: CPU (and minor page faults) of all berthd processes over the whole run, per request,
  against a quiet run of the same load: the extra CPU per upgrade. With --no-load (an idle
  berthd) the total divided by the upgrades is the fixed cost per upgrade. With --baseline
  each upgrade run follows a quiet run of the same binary: extra_ms_per_upgrade = CPU of all
  berthd processes minus (quiet CPU per request x requests), per upgrade;
* connections per upgrade: client connections berthd accepted (this network namespace's
  PassiveOpens minus the backend's accepts, so other jobs' connections count too: take the
  median of several runs) and upstream connections it opened (the backend nginx's
  stub_status accepts);
* old_exit_after_ms_median: how long an old process lives on after `berthd upgrade` returned
  (pidfd), i.e. how long the two processes share the proxy's core; context switches per
  upgrade (wait4 rusage); busy % of LOAD_CPU and PROXY_CPU over the load (/proc/stat, every
  process on the machine).

Setup like bench/run.sh's torture: one nginx backend (CPU LOAD_CPU), berthd with the bench
config (`proxy.workers: 1`, no access log) pinned on PROXY_CPU, wrk -t2 -c CONNS on LOAD_CPU.
The upgrade client itself runs on LOAD_CPU so it does not land on the proxy's core. Bounded:
UPGRADES upgrades at most, wrk with a fixed duration, every wait with a timeout.

A/B in one invocation: `--b BERTHD_B --rounds N` runs A, B, A, B, ... (N runs of each, the
same options), prints each run's JSON line prefixed with its side, then the medians per side.

Usage: python3 bench/upgrade_cost.py BERTHD [--upgrades 20] [--interval 0.1] [--conns 64]
       [--secs 12] [--deploy off|auto] [--quiet] [--no-load] [--b BERTHD_B] [--rounds 1]
       [--baseline]
       (env: LOAD_CPU=0 PROXY_CPU=1 PORT=18700)
"""

import argparse
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
LOAD_CPU = os.environ.get("LOAD_CPU", "0")
PROXY_CPU = os.environ.get("PROXY_CPU", "1")
BASE = int(os.environ.get("PORT", "18700"))


def subreaper():
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(36, 1, 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
        raise SystemExit("prctl(PR_SET_CHILD_SUBREAPER) failed")


def cpu_of(pid):
    """utime+stime (s) of a live process, all threads, at ns precision where schedstat has it."""
    total = 0.0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return None
    for t in tasks:
        try:
            with open(f"/proc/{pid}/task/{t}/schedstat") as f:
                total += int(f.read().split()[0]) / 1e9
        except (FileNotFoundError, ProcessLookupError):
            pass
    # Threads that already exited are in the process's stat (cutime excluded: children).
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = (int(fields[11]) + int(fields[12])) / CLK_TCK
    except FileNotFoundError:
        return None
    return max(total, ticks)


def minflt_of(pid):
    """Minor page faults of a live process so far (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])


def threads_of(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Threads:"):
                    return int(line.split()[1])
    except FileNotFoundError:
        pass
    return None


def cpu_busy_ticks(cpu):
    """(busy, total) ticks of one CPU so far (/proc/stat)."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                v = [int(x) for x in line.split()[1:]]
                return sum(v) - v[3] - v[4], sum(v)  # idle, iowait
    return 0, 1


def tcp_passive_opens():
    """Connections accepted by any socket in this network namespace so far (/proc/net/snmp)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Tcp:")]
    return int(rows[1][rows[0].index("PassiveOpens")])


def backend_accepts(port):
    """Connections the nginx backend accepted so far (its stub_status on `port`)."""
    with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
        s.sendall(b"GET / HTTP/1.0\r\nHost: status\r\n\r\n")
        data = b""
        while chunk := s.recv(4096):
            data += chunk
    m = re.search(rb"\n\s*(\d+) (\d+) (\d+)", data.split(b"\r\n\r\n", 1)[1])
    return int(m.group(1))


class ExitWatch:
    """Wall time at which each watched process exits (pidfd readable), from a thread: how long
    an old process overlaps its successor after `berthd upgrade` returned."""

    def __init__(self):
        import selectors
        import threading
        self.sel = selectors.DefaultSelector()
        self.exit_at = {}
        self.lock = threading.Lock()
        self.stop = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def watch(self, pid):
        try:
            fd = os.pidfd_open(pid)
        except (OSError, AttributeError):
            return
        with self.lock:
            self.sel.register(fd, 1, pid)

    def run(self):
        while not self.stop:
            with self.lock:
                ready = self.sel.select(timeout=0) if self.sel.get_map() else []
            for key, _ in ready:
                self.exit_at.setdefault(key.data, time.time())
                with self.lock:
                    self.sel.unregister(key.fd)
                os.close(key.fd)
            time.sleep(0.002)


def wait_port(port, secs=10):
    deadline = time.time() + secs
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


class Reaper:
    """Collects the rusage of every child (and adopted orphan) as it exits."""

    def __init__(self):
        self.exited = {}

    def poll(self):
        while True:
            try:
                pid, status, ru = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.exited[pid] = (ru.ru_utime + ru.ru_stime, ru.ru_minflt, status,
                                ru.ru_nvcsw + ru.ru_nivcsw)

    def wait_for(self, pid, secs):
        deadline = time.time() + secs
        while pid not in self.exited and time.time() < deadline:
            self.poll()
            time.sleep(0.01)
        return self.exited.get(pid)


def main():
    # This script and what it starts without an explicit CPU (`taskset` itself before it execs,
    # the upgrade client) belong to the load side: without this they ran wherever the scheduler
    # put them, often on the proxy's core (perf: `taskset` ~1.5 ms there per upgrade).
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    ap = argparse.ArgumentParser()
    ap.add_argument("--b", default=None, help="second binary: A/B in one invocation, runs alternate")
    ap.add_argument("--rounds", type=int, default=1, help="runs of each binary")
    ap.add_argument("berthd")
    ap.add_argument("--upgrades", type=int, default=20)
    ap.add_argument("--interval", type=float, default=0.1, help="at most one upgrade per this many s")
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--secs", type=int, default=12)
    ap.add_argument("--deploy", default=None, help="deploy.enabled for berthd (default: the bench's)")
    ap.add_argument("--quiet", action="store_true", help="no upgrades (the baseline)")
    ap.add_argument("--no-load", action="store_true", help="upgrades of an idle berthd: fixed costs only")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--baseline", action="store_true",
                    help="before each run, a quiet run of the same binary and load: reports the "
                         "extra CPU per upgrade under load (extra_ms_per_upgrade)")
    args = ap.parse_args()
    subreaper()
    reaper = Reaper()
    sides = [("A", args.berthd)] + ([("B", args.b)] if args.b else [])
    results = {name: [] for name, _ in sides}
    for r in range(args.rounds):
        for name, binary in sides:
            if args.baseline and not args.quiet and not args.no_load:
                q = run_once(binary, argparse.Namespace(**{**vars(args), "quiet": True}), reaper)
                res = run_once(binary, args, reaper)
                if q.get("cpu_us_per_req") and res.get("upgrades_ok"):
                    expected = q["cpu_us_per_req"] * 1e-6 * res["requests"]
                    res["quiet_cpu_us_per_req"] = q["cpu_us_per_req"]
                    res["extra_ms_per_upgrade"] = round(
                        (res["cpu_total_s"] - expected) / res["upgrades_ok"] * 1e3, 1)
            else:
                res = run_once(binary, args, reaper)
            results[name].append(res)
            print(json.dumps({"side": name, "round": r + 1, "berthd": binary, **res}), flush=True)
    if len(sides) > 1 or args.rounds > 1:
        keys = ["cpu_ms_per_upgrade", "extra_ms_per_upgrade", "cpu_us_per_req",
                "quiet_cpu_us_per_req", "successor_cpu_to_ready_ms",
                "old_cpu_upgrade_to_exit_ms", "minor_faults_per_upgrade", "upgrade_wall_ms_median",
                "old_exit_after_ms_median", "client_conns_per_upgrade", "upstream_conns_per_upgrade",
                "ctx_switches_per_upgrade",
                "failures", "upgrades_ok"]
        summary = {}
        for name, _ in sides:
            summary[name] = {}
            for k in keys:
                vals = sorted(v[k] for v in results[name] if v.get(k) is not None)
                if vals:
                    summary[name][k] = vals[len(vals) // 2]
        print(json.dumps({"medians": summary}))


def run_once(berthd, args, reaper):
    """One run of `berthd` with `args`; returns the result dict."""
    args = argparse.Namespace(**{**vars(args), "berthd": berthd})
    work = tempfile.mkdtemp(prefix="upgrade-cost.")
    backend_port, port, api_port, status_port = BASE, BASE + 1, BASE + 2, BASE + 3
    procs = []
    berthd_pids = []
    try:
        os.makedirs(f"{work}/backend/tmp")
        with open(f"{work}/backend/nginx.conf", "w") as f:
            f.write(f"""worker_processes 1;
daemon off;
pid {work}/backend/nginx.pid;
error_log {work}/backend/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/backend/tmp/body;
    proxy_temp_path {work}/backend/tmp/proxy;
    fastcgi_temp_path {work}/backend/tmp/fastcgi;
    uwsgi_temp_path {work}/backend/tmp/uwsgi;
    scgi_temp_path {work}/backend/tmp/scgi;
    keepalive_requests 10000000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{backend_port};
        default_type text/plain;
        location / {{ return 200 "hello from the bench backend\\n"; }}
    }}
    server {{
        listen 127.0.0.1:{status_port};
        location / {{ stub_status; }}
    }}
}}
""")
        procs.append(subprocess.Popen(["taskset", "-c", LOAD_CPU, "nginx", "-c", f"{work}/backend/nginx.conf",
                                       "-p", f"{work}/backend", "-e", f"{work}/backend/error.log"]))
        wait_port(backend_port)
        os.makedirs(f"{work}/data", mode=0o700)
        cfg = f"{work}/berthd.yaml"
        deploy = f"deploy:\n  enabled: {args.deploy}\n" if args.deploy else ""
        with open(cfg, "w") as f:
            f.write(f"""http:
  listen: "127.0.0.1:{port}"
api:
  listen: "127.0.0.1:{api_port}"
data_dir: "{work}/data"
proxy:
  workers: 1
log:
  level: {os.environ.get("LOG_LEVEL", "warn")}
  access_log: false
{deploy}routes:
  - domains: ["bench.test"]
    backends:
      - address: "127.0.0.1:{backend_port}"
""")
        log = open(f"{work}/berthd.log", "w")
        first = subprocess.Popen(["taskset", "-c", PROXY_CPU, args.berthd, "--config", cfg],
                                 stdout=log, stderr=subprocess.STDOUT)
        berthd_pids.append(first.pid)
        wait_port(port)
        time.sleep(0.5)
        # Warm-up so the pool and the caches are what they are under load.
        subprocess.run(["taskset", "-c", LOAD_CPU, "wrk", "-t2", f"-c{args.conns}", "-d1s",
                        "-H", "Host: bench.test", f"http://127.0.0.1:{port}/"],
                       stdout=subprocess.DEVNULL, check=False, timeout=30)
        cpu_start = cpu_of(first.pid)
        minflt_start = minflt_of(first.pid)
        with open(f"/proc/{first.pid}/status") as f:
            st = dict(line.split(":", 1) for line in f)
        ctx_start = int(st["voluntary_ctxt_switches"]) + int(st["nonvoluntary_ctxt_switches"])
        accepts_start, passive_start = backend_accepts(status_port), tcp_passive_opens()
        exits = ExitWatch()
        busy_start = {c: cpu_busy_ticks(c) for c in (LOAD_CPU, PROXY_CPU)}
        load = ["sleep", str(args.secs)] if args.no_load else [
            "taskset", "-c", LOAD_CPU, "wrk", "-t2", f"-c{args.conns}", f"-d{args.secs}s", "--timeout", "5s",
            "-H", "Host: bench.test", f"http://127.0.0.1:{port}/"]
        wrk = subprocess.Popen(["timeout", str(args.secs + 30)] + load, stdout=subprocess.PIPE, text=True)
        time.sleep(1)
        ups = []
        cur = first.pid
        t0 = time.time()
        deadline = t0 + args.secs - 2
        for i in range(0 if args.quiet else args.upgrades):
            due = t0 + i * args.interval
            if time.time() < due:
                time.sleep(due - time.time())
            if time.time() > deadline:
                break
            before = cpu_of(cur)
            ts = time.time()
            r = subprocess.run(["taskset", "-c", LOAD_CPU, args.berthd, "--config", cfg, "upgrade"],
                               capture_output=True, text=True, timeout=30)
            te = time.time()
            m = re.search(r"new process (\d+) is serving", r.stdout + r.stderr)
            if r.returncode != 0 or not m:
                ups.append({"ok": False, "out": (r.stdout + r.stderr)[-300:]})
                continue
            new = int(m.group(1))
            berthd_pids.append(new)
            exits.watch(cur)
            ups.append({"ok": True, "old": cur, "new": new, "old_before": before, "wall_s": te - ts, "t_ready": te,
                        "new_cpu_at_ready": cpu_of(new), "new_threads": threads_of(new)})
            cur = new
            reaper.poll()
        out, _ = wrk.communicate(timeout=args.secs + 40)
        busy = {}
        for c, (b0, t0_) in busy_start.items():
            b1, t1 = cpu_busy_ticks(c)
            busy[c] = round((b1 - b0) / max(t1 - t0_, 1) * 100)
        # Client connections accepted by berthd = all accepts here minus the backend's (and
        # minus the upgrade commands' control-socket connections: Unix sockets, not counted).
        accepts = backend_accepts(status_port) - accepts_start
        passive = tcp_passive_opens() - passive_start - accepts - 1  # - the status request
        # Old processes exit once drained; the last one serves on.
        for u in ups:
            if u.get("ok"):
                reaper.wait_for(u["old"], 40)
        live_cpu = cpu_of(cur)
        os.kill(cur, signal.SIGTERM)
        reaper.wait_for(cur, 40)
        reaper.poll()
        total = 0.0
        minflt = 0
        ctx = -ctx_start
        for pid in berthd_pids:
            if pid in reaper.exited:
                total += reaper.exited[pid][0]
                minflt += reaper.exited[pid][1]
                ctx += reaper.exited[pid][3]
        exits.stop = True
        total -= cpu_start
        minflt -= minflt_start
        m = re.search(r"(\d+) requests in", out)
        reqs = int(m.group(1)) if m else 0
        errs = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
        non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
        failures = (sum(int(x) for x in errs.groups()) if errs else 0) + (int(non2xx.group(1)) if non2xx else 0)
        done = [u for u in ups if u.get("ok")]
        for u in done:
            ex = reaper.exited.get(u["old"])
            u["old_cpu_after"] = ex[0] - u["old_before"] if ex else None
        res = {
            "upgrades_ok": len(done), "upgrades_failed": len(ups) - len(done),
            "failed_upgrades": [u["out"] for u in ups if not u.get("ok")][:5],
            "requests": reqs, "failures": failures,
            "cpu_total_s": round(total, 3),
            "cpu_ms_per_upgrade": round(total / len([u for u in ups if u.get("ok")]) * 1e3, 1) if args.no_load and ups else None,
            "cpu_us_per_req": round(total / reqs * 1e6, 2) if reqs else None,
            "minor_faults": minflt,
            "live_cpu_at_end_s": round(live_cpu, 3) if live_cpu else None,
            # Busy % of the load generator's and the proxy's CPU over the load (every process:
            # other jobs on the machine included).
            "load_cpu_busy_pct": busy[LOAD_CPU], "proxy_cpu_busy_pct": busy[PROXY_CPU],
        }
        if done:
            n = len(done)
            res["successor_cpu_to_ready_ms"] = round(sum(u["new_cpu_at_ready"] for u in done) / n * 1e3, 1)
            res["successor_threads_at_ready"] = sorted({u["new_threads"] for u in done})
            olds = [u["old_cpu_after"] for u in done if u["old_cpu_after"] is not None]
            if olds:
                res["old_cpu_upgrade_to_exit_ms"] = round(sum(olds) / len(olds) * 1e3, 1)
            res["minor_faults_per_upgrade"] = round(minflt / n)
            res["upgrade_wall_ms_median"] = round(sorted(u["wall_s"] for u in done)[n // 2] * 1e3, 1)
            overlaps = sorted(exits.exit_at[u["old"]] - u["t_ready"] for u in done if u["old"] in exits.exit_at)
            if overlaps:
                res["old_exit_after_ms_median"] = round(overlaps[len(overlaps) // 2] * 1e3, 1)
            res["ctx_switches_per_upgrade"] = round(ctx / n)
            res["client_conns_per_upgrade"] = round(passive / n, 1)
            res["upstream_conns_per_upgrade"] = round(accepts / n, 1)
        if args.keep:
            print(f"work dir kept: {work}", file=sys.stderr)
        return res
    finally:
        for pid in berthd_pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()
        reaper.poll()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
