#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""The application side of nodelab's pods: a client that runs inside a pod
(its network namespace and its cgroup, as nodelab.Lab.spawn_app starts it)
and prints one JSON line with what it saw. Standard library only.

  labclient.py echo HOST PORT --conns N [--size B] [--conc C]
      N connections (C at a time), each sends B random bytes, half-closes and
      reads everything back: {"ok", "bad", "errors": [...], "bytes"}; a
      connection is ok only when the echo is byte-exact.
  labclient.py http HOST PORT --requests N [--path P]
      N GETs, a new connection each: {"ok", "errors", "servers": {name: n}}
      (the http peer names itself in its JSON reply).
  labclient.py load HOST PORT --seconds S [--size B] [--max N]
      echo round trips of B bytes, a new connection every --per-conn of them,
      until S seconds or N round trips: {"ok", "errors", "p50_ms", "p99_ms",
      "max_ms", "rounds", "first_error_s", "last_error_s" (from the start),
      "ok_after_last_error"}; every round trip byte-exact or counted an error.
  labclient.py flood HOST PORT --seconds S [--hold H]
      opens connections as fast as it can, keeping at most H open (the oldest
      closed first), until S seconds: {"opened", "errors"}.

Every loop is bounded by a count and a deadline; a socket operation times
out after 10 s."""

import argparse
import collections
import concurrent.futures
import json
import os
import socket
import sys
import time

IO_TIMEOUT = 10.0


def connect(host, port):
    s = socket.create_connection((host, port), timeout=IO_TIMEOUT)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_n(s, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = s.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            break
        buf += chunk
    return bytes(buf)


def echo_once(host, port, size):
    data = os.urandom(size)
    with connect(host, port) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = bytearray()
        while True:
            chunk = s.recv(1 << 20)
            if not chunk:
                break
            got += chunk
            if len(got) > size:
                break
    if bytes(got) != data:
        raise ValueError("echo not byte-exact: sent %d bytes, got %d%s" % (
            size, len(got), "" if len(got) != size else " (differing)"))
    return size


def cmd_echo(a):
    out = {"ok": 0, "bad": 0, "errors": [], "bytes": 0}
    with concurrent.futures.ThreadPoolExecutor(max_workers=a.conc) as ex:
        futs = [ex.submit(echo_once, a.host, a.port, a.size) for _ in range(a.conns)]
        for f in futs:
            try:
                out["bytes"] += f.result(timeout=60)
                out["ok"] += 1
            except Exception as e:  # noqa: BLE001 - reported
                out["bad"] += 1
                if len(out["errors"]) < 10:
                    out["errors"].append(repr(e))
    return out


def http_get(host, port, path):
    with connect(host, port) as s:
        s.sendall(("GET %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n\r\n"
                   % (path, host)).encode())
        data = bytearray()
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > 1 << 20:
                raise ValueError("reply too long")
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    status = head.split(b" ", 2)[1] if head.startswith(b"HTTP/1.") else b"?"
    if status != b"200":
        raise ValueError("status %r: %r" % (status, head[:200]))
    return json.loads(body)["server"]


def cmd_http(a):
    out = {"ok": 0, "errors": [], "servers": collections.Counter()}
    for _ in range(a.requests):
        try:
            out["servers"][http_get(a.host, a.port, a.path)] += 1
            out["ok"] += 1
        except Exception as e:  # noqa: BLE001 - reported
            out["errors"].append(repr(e))
            if len(out["errors"]) >= 20:
                break
    return out


def pct(sorted_ms, p):
    if not sorted_ms:
        return None
    return sorted_ms[min(len(sorted_ms) - 1, int(len(sorted_ms) * p / 100.0))]


def cmd_load(a):
    start = time.monotonic()
    deadline = start + a.seconds
    lat, errors, rounds = [], [], 0
    first_err = last_err = None
    ok_after = 0
    s = None
    while time.monotonic() < deadline and rounds < a.max:
        rounds += 1
        data = os.urandom(a.size)
        t0 = time.monotonic()
        try:
            if s is None:
                s = connect(a.host, a.port)
            s.sendall(data)
            got = recv_n(s, a.size)
            if got != data:
                raise ValueError("round trip not byte-exact (%d of %d bytes)" % (len(got), a.size))
            lat.append((time.monotonic() - t0) * 1000.0)
            ok_after += 1
        except Exception as e:  # noqa: BLE001 - counted
            errors.append(repr(e))
            last_err = time.monotonic() - start
            first_err = last_err if first_err is None else first_err
            ok_after = 0
            if s is not None:
                s.close()
                s = None
            time.sleep(0.01)
            continue
        if rounds % a.per_conn == 0:
            s.close()
            s = None
    if s is not None:
        s.close()
    lat.sort()
    return {"ok": len(lat), "errors": len(errors), "first_errors": errors[:10], "rounds": rounds,
            "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "max_ms": lat[-1] if lat else None,
            "first_error_s": first_err, "last_error_s": last_err, "ok_after_last_error": ok_after}


def cmd_flood(a):
    deadline = time.monotonic() + a.seconds
    held = collections.deque()
    opened, errors = 0, 0
    while time.monotonic() < deadline and opened < a.max:
        try:
            s = socket.create_connection((a.host, a.port), timeout=1.0)
            held.append(s)
            opened += 1
        except OSError:
            errors += 1
            time.sleep(0.001)
        while len(held) > a.hold:
            held.popleft().close()
    for s in held:
        s.close()
    return {"opened": opened, "errors": errors}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("echo", "http", "load", "flood"):
        sp = sub.add_parser(name)
        sp.add_argument("host")
        sp.add_argument("port", type=int)
        if name == "echo":
            sp.add_argument("--conns", type=int, required=True)
            sp.add_argument("--size", type=int, default=65536)
            sp.add_argument("--conc", type=int, default=4)
        elif name == "http":
            sp.add_argument("--requests", type=int, required=True)
            sp.add_argument("--path", default="/lab")
        elif name == "load":
            sp.add_argument("--seconds", type=float, required=True)
            sp.add_argument("--size", type=int, default=1024)
            sp.add_argument("--max", type=int, default=1000000)
            sp.add_argument("--per-conn", type=int, default=20)
        else:
            sp.add_argument("--seconds", type=float, required=True)
            sp.add_argument("--hold", type=int, default=200)
            sp.add_argument("--max", type=int, default=200000)
    a = p.parse_args(argv)
    out = {"echo": cmd_echo, "http": cmd_http, "load": cmd_load, "flood": cmd_flood}[a.cmd](a)
    print(json.dumps(out), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
