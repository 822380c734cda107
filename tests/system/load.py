#!/usr/bin/env python3
"""Bounded HTTP load for the systemd tests (runs inside the test machine).

Worker threads either open a new connection per request or reuse keep-alive connections until
the server says `Connection: close`. Every failure (refused, reset, EOF, timeout, wrong status or
body) is counted. Runs until `--stop-file` exists, `--max-seconds` pass, or `--max-requests`
are done, whichever comes first; prints one JSON line with the counts.

Optional `--unix PATH`: also counts connection attempts to a Unix socket (refused or not).
"""
import argparse
import json
import os
import socket
import threading
import time


def read_response(f):
    line = f.readline()
    if not line:
        raise IOError("EOF before response")
    parts = line.split()
    if len(parts) < 2:
        raise IOError("bad status line %r" % line)
    status = int(parts[1])
    length, close = 0, False
    while True:
        h = f.readline()
        if not h:
            raise IOError("EOF in headers")
        if h in (b"\r\n", b"\n"):
            break
        k, _, v = h.decode("latin-1").partition(":")
        k = k.strip().lower()
        if k == "content-length":
            length = int(v.strip())
        elif k == "connection" and "close" in v.lower():
            close = True
    body = f.read(length) if length else b""
    if len(body) != length:
        raise IOError("short body")
    return status, close, body


class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.ok = 0
        self.failed = 0
        self.refused = 0
        self.unix_ok = 0
        self.unix_refused = 0
        self.unix_other = 0
        self.errors = []

    def fail(self, msg, refused=False):
        with self.lock:
            self.failed += 1
            if refused:
                self.refused += 1
            if len(self.errors) < 20:
                self.errors.append("%.3f %s" % (time.time(), msg))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--addr", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=80)
    ap.add_argument("--host", default="app.test")
    ap.add_argument("--expect", default="", help="body must contain this")
    ap.add_argument("--new", type=int, default=3, help="new-connection workers")
    ap.add_argument("--keepalive", type=int, default=2, help="keep-alive workers")
    ap.add_argument("--max-seconds", type=float, default=60)
    ap.add_argument("--max-requests", type=int, default=200000)
    ap.add_argument("--stop-file", default="")
    ap.add_argument("--unix", default="")
    a = ap.parse_args()

    st = Stats()
    deadline = time.monotonic() + a.max_seconds
    req = ("GET / HTTP/1.1\r\nHost: %s\r\n\r\n" % a.host).encode()
    done = threading.Event()

    def should_stop():
        if done.is_set() or time.monotonic() > deadline:
            return True
        if a.stop_file and os.path.exists(a.stop_file):
            done.set()
            return True
        with st.lock:
            if st.ok + st.failed >= a.max_requests:
                done.set()
                return True
        return False

    def check(status, body):
        if status != 200:
            return "status %d" % status
        if a.expect and a.expect.encode() not in body:
            return "unexpected body %r" % body[:80]
        return None

    def new_worker():
        while not should_stop():
            try:
                s = socket.create_connection((a.addr, a.port), timeout=10)
            except ConnectionRefusedError as e:
                st.fail("connect: %s" % e, refused=True)
                continue
            except OSError as e:
                st.fail("connect: %s" % e)
                continue
            try:
                s.sendall(req)
                status, _, body = read_response(s.makefile("rb"))
                err = check(status, body)
                if err:
                    st.fail("new: " + err)
                else:
                    with st.lock:
                        st.ok += 1
            except OSError as e:
                st.fail("new: %s" % e)
            finally:
                s.close()

    def keepalive_worker():
        s = f = None
        while not should_stop():
            if s is None:
                try:
                    s = socket.create_connection((a.addr, a.port), timeout=10)
                    f = s.makefile("rb")
                except ConnectionRefusedError as e:
                    st.fail("keep-alive connect: %s" % e, refused=True)
                    s = None
                    continue
                except OSError as e:
                    st.fail("keep-alive connect: %s" % e)
                    s = None
                    continue
            try:
                s.sendall(req)
                status, close, body = read_response(f)
                err = check(status, body)
                if err:
                    st.fail("keep-alive: " + err)
                    close = True
                else:
                    with st.lock:
                        st.ok += 1
            except OSError as e:
                st.fail("keep-alive: %s" % e)
                close = True
            if close:
                s.close()
                s = None
            time.sleep(0.001)
        if s is not None:
            s.close()

    def unix_worker():
        while not should_stop():
            u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            u.settimeout(10)
            try:
                u.connect(a.unix)
                u.sendall(b"status\n")
                reply = u.makefile("rb").readline()
                with st.lock:
                    if reply.startswith(b"ok "):
                        st.unix_ok += 1
                    else:
                        st.unix_other += 1
            except (ConnectionRefusedError, FileNotFoundError) as e:
                with st.lock:
                    st.unix_refused += 1
                    if len(st.errors) < 20:
                        st.errors.append("%.3f unix: %s" % (time.time(), e))
            except OSError:
                with st.lock:
                    st.unix_other += 1
            finally:
                u.close()
            time.sleep(0.01)

    threads = [threading.Thread(target=new_worker) for _ in range(a.new)]
    threads += [threading.Thread(target=keepalive_worker) for _ in range(a.keepalive)]
    if a.unix:
        threads.append(threading.Thread(target=unix_worker))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps({
        "ok": st.ok, "failed": st.failed, "refused": st.refused,
        "unix_ok": st.unix_ok, "unix_refused": st.unix_refused, "unix_other": st.unix_other,
        "errors": st.errors,
    }))


if __name__ == "__main__":
    main()
