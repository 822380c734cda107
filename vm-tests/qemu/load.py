#!/usr/bin/env python3
"""Bounded request loops for the QEMU VM tests (runs on the host, talks to hostfwd ports).

Modes:
  http  GET through the guest's proxy port with a Host header, one new connection per request.
        Counts ok / failed and which body (first line) was served, and when each body was first
        and last seen.
  tls   Full TLS handshake (no session resumption) with SNI, verified against a CA file, then
        GET. Records the leaf certificate's serial number per request and when it changed.

Every loop is bounded by --max-requests AND --max-seconds and also stops when --stop-file
exists (http) or --after-change seconds after the certificate changed (tls). Prints one JSON
object on stdout. Exit status: 0 when no request failed and the loop's goal was met, 1 else.
"""
import argparse
import http.client
import json
import os
import re
import socket
import ssl
import sys
import time


def http_once(port, host, path, timeout):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"Host": host, "Connection": "close"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, body.decode("utf-8", "replace")
    finally:
        conn.close()


def tls_once(port, sni, path, ctx, timeout):
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        tls = ctx.wrap_socket(raw, server_hostname=sni)
    except BaseException:
        raw.close()
        raise
    try:
        cert = tls.getpeercert()
        serial = cert.get("serialNumber", "?")
        not_after = cert.get("notAfter", "?")
        req = "GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n" % (path, sni)
        tls.sendall(req.encode())
        data = b""
        while True:
            try:
                chunk = tls.recv(65536)
            except ssl.SSLError:
                # A peer may close without close_notify after Connection: close.
                break
            if not chunk:
                break
            data += chunk
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        parts = line.split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise IOError("bad status line %r" % line)
        return int(parts[1]), serial, not_after
    finally:
        tls.close()


def run_http(a):
    start = time.monotonic()
    ok = failed = 0
    bodies = {}
    errors = []
    expect = re.compile(a.expect_body) if a.expect_body else None
    unexpected = 0
    slowest = 0.0
    slow = []  # [start_s, duration_s] of requests slower than 1 s (first 2000)
    while ok + failed < a.max_requests and time.monotonic() - start < a.max_seconds:
        if a.stop_file and os.path.exists(a.stop_file):
            break
        t = round(time.monotonic() - start, 3)
        try:
            t_req = time.monotonic()
            status, body = http_once(a.port, a.host, a.path, a.timeout)
            took = time.monotonic() - t_req
            slowest = max(slowest, took)
            if took > 1 and len(slow) < 2000:
                slow.append([t, round(took, 3)])
            if status != 200:
                raise IOError("status %d" % status)
            ok += 1
            first = body.strip().splitlines()[0] if body.strip() else ""
            b = bodies.setdefault(first, {"count": 0, "first_s": t, "last_s": t})
            b["count"] += 1
            b["last_s"] = t
            if expect and not expect.search(body):
                unexpected += 1
        except Exception as e:  # every failure counts, whatever it is
            failed += 1
            if len(errors) < 20:
                errors.append("%.3fs %s: %s" % (t, type(e).__name__, e))
        if a.interval > 0:
            time.sleep(a.interval)
    out = {
        "mode": "http", "ok": ok, "failed": failed, "unexpected_body": unexpected,
        "slowest_ok_s": round(slowest, 3), "slow_over_1s": slow,
        "seconds": round(time.monotonic() - start, 1), "bodies": bodies, "errors": errors,
    }
    good = failed == 0 and unexpected == 0 and ok > 0
    if a.min_requests and ok + failed < a.min_requests:
        out["too_few"] = True
        good = False
    return out, good


def run_tls(a):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(cafile=a.ca)
    ctx.check_hostname = True
    ctx.set_alpn_protocols(["http/1.1"])
    start = time.monotonic()
    ok = failed = 0
    errors = []
    serials = []  # [serial, first_s, last_s, count, not_after]
    changed_at = None
    slowest = 0.0
    while ok + failed < a.max_requests and time.monotonic() - start < a.max_seconds:
        if changed_at is not None and time.monotonic() - start > changed_at + a.after_change:
            break
        t = round(time.monotonic() - start, 3)
        try:
            t_req = time.monotonic()
            status, serial, not_after = tls_once(a.port, a.host, a.path, ctx, a.timeout)
            slowest = max(slowest, time.monotonic() - t_req)
            if status != 200:
                raise IOError("status %d" % status)
            ok += 1
            if not serials or serials[-1][0] != serial:
                serials.append([serial, t, t, 0, not_after])
                if len(serials) > 1 and changed_at is None:
                    changed_at = t
            serials[-1][2] = t
            serials[-1][3] += 1
        except Exception as e:
            failed += 1
            if len(errors) < 20:
                errors.append("%.3fs %s: %s" % (t, type(e).__name__, e))
        if a.interval > 0:
            time.sleep(a.interval)
    out = {
        "mode": "tls", "ok": ok, "failed": failed, "slowest_ok_s": round(slowest, 3),
        "seconds": round(time.monotonic() - start, 1),
        "renewed_after_s": changed_at,
        "serials": [
            {"serial": s, "first_s": f, "last_s": l, "count": c, "not_after": na}
            for s, f, l, c, na in serials
        ],
        "errors": errors,
    }
    return out, failed == 0 and changed_at is not None


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("mode", choices=["http", "tls"])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--host", required=True, help="Host header (http) or SNI name (tls)")
    p.add_argument("--path", default="/")
    p.add_argument("--ca", help="CA bundle (tls)")
    p.add_argument("--max-requests", type=int, default=10000)
    p.add_argument("--min-requests", type=int, default=0)
    p.add_argument("--max-seconds", type=float, default=120)
    p.add_argument("--interval", type=float, default=0.02, help="pause between requests")
    p.add_argument("--timeout", type=float, default=15, help="per request")
    p.add_argument("--stop-file", help="http: stop once this file exists")
    p.add_argument("--expect-body", help="http: regex every body must match")
    p.add_argument("--after-change", type=float, default=5,
                   help="tls: keep going this long after the certificate changed")
    p.add_argument("--out", help="also write the JSON here")
    a = p.parse_args()
    if a.mode == "tls" and not a.ca:
        p.error("tls needs --ca")
    out, good = run_http(a) if a.mode == "http" else run_tls(a)
    text = json.dumps(out, indent=1)
    if a.out:
        with open(a.out, "w") as f:
            f.write(text + "\n")
    print(text)
    sys.exit(0 if good else 1)


if __name__ == "__main__":
    main()
