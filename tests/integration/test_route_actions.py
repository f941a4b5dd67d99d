# SPDX-License-Identifier: Apache-2.0
"""Traffic route actions of issue 20 on the outbound path, with real
clients (curl over HTTP/1.1 and HTTP/2, python grpcio) and real backends
(httpbackend.py, h2echo.py, grpcpeer.py): fault delays for a share of the
requests, held on a timer without holding up the others; local rate
limits per rule and per source (the accepted rate measured with wrk, 429 /
RESOURCE_EXHAUSTED at once with Retry-After); request mirrors (the
copies, a share, and a mirror that answers after 5 s or never leaves the
primary's latency alone, its copies bounded and their drops counted), for
HTTP/1.1 and for HTTP/2 and gRPC (curl --http2-prior-knowledge, h2load,
grpcio) to an HTTP/2 mirror (python3-h2). It measures rates and latencies:
it runs alone (SHUNT_SOLO_TESTS)."""

import json
import os
import re
import socket
import statistics
import sys
import threading
import time

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import pytest

import httpbackend
import shuntlib as sl
from shuntlib import Topology as T

EP = sl.EP_ADDRS[0]
VIP_H1, VIP_H2, VIP_GRPC, VIP_GRPC_RL = "10.96.3.10", "10.96.3.11", "10.96.3.12", "10.96.3.13"
VIP_H2M, VIP_GRPCM = "10.96.3.14", "10.96.3.15"  # mirrored HTTP/2 and gRPC
# per-try timeouts: a live and a stalled endpoint each (HTTP/1.1, HTTP/2,
# gRPC), and a service of stalled endpoints only
VIP_TRY, VIP_TRY_H2, VIP_TRY_GRPC, VIP_TRY_ALL = "10.96.3.16", "10.96.3.17", "10.96.3.18", "10.96.3.19"
TRY_MS = 300
SECOND_SOURCE = "10.77.0.9"  # another client address in the app pod
RATE, BURST = 200, 20
SHADOW, SHADOW_PORT, SHADOW_H2_PORT = sl.EP_ADDRS[1], 8095, 8096
MIRROR_MAX_IN_FLIGHT = 20  # per worker (2 workers)
H1_PORT, H2_PORT, GRPC_PORT = 8091, 8092, 8093
H2ECHO = os.path.join(sl.HERE, "h2echo.py")
GRPCPEER = os.path.join(sl.HERE, "grpcpeer.py")

DELAY_MS, DELAY_PCT = 400, 25


def prefix(p):
    return {"path": {"type": "PathPrefix", "value": p}}


def delay_rule(matches=None):
    rule = {"fault": {"delay": {"fixedDelay": "%dms" % DELAY_MS, "percentage": DELAY_PCT}}}
    if matches:
        rule["matches"] = matches
    return rule


def try_svc(name, vip, port, proto, addrs, request, attempts=2):
    """A service whose one rule gives each try TRY_MS (timeouts.backendRequest)
    and the request `request`, with `attempts` retries."""
    s = sl.service(name, vip, port, addrs, protocol=proto)
    rule = {"timeouts": {"request": request, "backendRequest": "%dms" % TRY_MS}, "retry": {"attempts": attempts}}
    s["routes"] = [{"name": "try", "rules": [rule]}]
    return s


def registry():
    def svc(name, vip, port, proto, routes):
        s = sl.service(name, vip, port, [EP], protocol=proto)
        s["routes"] = routes
        return s

    def limited(path, rps, burst, per_source=False):
        return {"matches": [prefix(path)], "rateLimit": {"requestsPerSecond": rps, "burst": burst, "perSource": per_source}}

    def mirrored(path, percent=None, to="shadow"):
        m = {"backendRef": {"name": to, "port": 80}}
        if percent is not None:
            m["percent"] = percent
        rule = {"filters": [{"type": "RequestMirror", "requestMirror": m}]}
        if path:
            rule["matches"] = [prefix(path)]
        return rule

    api_rules = [
        mirrored("/mirror"),
        mirrored("/half", 50),
        delay_rule([prefix("/delay")]),
        limited("/limited", RATE, BURST),
        limited("/per-source", 0.1, 3, per_source=True),
        {},
    ]
    return {
        "services": [
            svc("api", VIP_H1, H1_PORT, "HTTP", [{"name": "api", "rules": api_rules}]),
            sl.service("shadow", "10.96.3.20", SHADOW_PORT, [SHADOW], protocol="HTTP"),
            sl.service("shadow-h2", "10.96.3.21", SHADOW_H2_PORT, [SHADOW], protocol="HTTP2"),
            try_svc("api-try", VIP_TRY, H1_PORT, "HTTP", [EP, SHADOW], "3s"),
            try_svc("api-try-h2", VIP_TRY_H2, H2_PORT, "HTTP2", [EP, SHADOW], "3s"),
            try_svc("api-try-grpc", VIP_TRY_GRPC, GRPC_PORT, "GRPC", [EP, SHADOW], "3s"),
            try_svc("api-try-all", VIP_TRY_ALL, H1_PORT, "HTTP", [SHADOW], "1s", attempts=10),
            svc("api-h2m", VIP_H2M, H2_PORT, "HTTP2", [{"name": "h2m", "rules": [mirrored("/mirror", to="shadow-h2"), {}]}]),
            svc("api-grpcm", VIP_GRPCM, GRPC_PORT, "GRPC", [{"name": "grpcm", "kind": "GRPCRoute", "rules": [mirrored(None, to="shadow-h2")]}]),
            svc(
                "api-h2",
                VIP_H2,
                H2_PORT,
                "HTTP2",
                [{"name": "h2", "rules": [delay_rule([prefix("/delay")]), limited("/limited", 0.1, 2), {}]}],
            ),
            svc("api-grpc", VIP_GRPC, GRPC_PORT, "GRPC", [{"name": "grpc", "kind": "GRPCRoute", "rules": [delay_rule()]}]),
            svc(
                "api-grpc-rl",
                VIP_GRPC_RL,
                GRPC_PORT,
                "GRPC",
                [{"name": "grpc-rl", "kind": "GRPCRoute", "rules": [{"rateLimit": {"requestsPerSecond": 0.1, "burst": 3}}]}],
            ),
        ]
    }


@pytest.fixture(scope="module")
def env():
    sl.require_tool("curl")
    topo = T()
    procs = []
    daemon = shadow = None
    try:
        topo.add_remote4()
        topo.route_vips()
        topo.app.ip("addr", "add", SECOND_SOURCE + "/24", "dev", "e-remote")
        procs.append(httpbackend.spawn(topo.remote, ["%s:%d=primary" % (EP, H1_PORT)]))
        procs.append(
            topo.remote.spawn_ready([sys.executable, H2ECHO, "--name", "h2", "--listen", "%s:%d" % (EP, H2_PORT)], "h2echo")
        )
        procs.append(
            topo.remote.spawn_ready(
                [sys.executable, GRPCPEER, "server", "--name", "g", "--listen", "%s:%d" % (EP, GRPC_PORT)], "grpc", 20
            )
        )
        shadow = MirrorServer(topo.remote, SHADOW, SHADOW_PORT)
        path = sl.registry_file(registry())
        args = {"service-discovery.file.path": path, "http.mirror-max-in-flight": MIRROR_MAX_IN_FLIGHT}
        daemon = sl.Shuntd(topo.app, sl.shuntd_args(**args)).wait_ready()
        yield topo, daemon, shadow
    finally:
        if shadow:
            shadow.close()
        sl.teardown(topo, [daemon], procs)


@pytest.fixture(scope="module")
def shadow_h2(env):
    """The HTTP/2 mirror's backend (shadow-h2)."""
    srv = H2MirrorServer(env[0].remote, SHADOW, SHADOW_H2_PORT)
    yield srv
    srv.close()


class MirrorServer(sl.ThreadedServer):
    """The mirror's backend: records each request (path, body) it reads,
    then answers at once ("fast"), after 5 s ("slow") or never ("never":
    holds the connection until the client leaves)."""

    def __init__(self, pod, addr, port):
        super().__init__(pod, addr, port, backlog=256)
        self.mode = "fast"
        self.got = []
        self.open = 0
        self.lock = threading.Lock()

    def serve(self, conn, n):
        with self.lock:
            self.open += 1
        try:
            conn.settimeout(30)
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            want = int((re.search(rb"(?im)^content-length: *(\d+)", head) or [0, b"0"])[1])
            while len(body) < want:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            with self.lock:
                self.got.append((head.split()[1].decode(), body, head.decode("latin-1")))
            if self.mode == "slow":
                time.sleep(5)
            elif self.mode == "never":
                while conn.recv(65536):
                    pass
                return
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\nConnection: close\r\n\r\nshadow")
        except OSError:
            pass
        finally:
            with self.lock:
                self.open -= 1


class H2MirrorServer(MirrorServer):
    """The same for HTTP/2 (cleartext, prior knowledge; python3-h2): each
    stream's (path, body, fields) recorded when it ended, then answered (a
    gRPC request the gRPC way) at once, after 5 s or never."""

    def serve(self, conn, n):
        with self.lock:
            self.open += 1
        try:
            conn.settimeout(30)
            c = h2.connection.H2Connection(config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
            c.initiate_connection()
            conn.sendall(c.data_to_send())
            streams = {}
            while True:
                data = conn.recv(65536)
                if not data:
                    return
                for ev in c.receive_data(data):
                    if isinstance(ev, h2.events.RequestReceived):
                        streams[ev.stream_id] = [dict(ev.headers), b""]
                    elif isinstance(ev, h2.events.DataReceived):
                        streams[ev.stream_id][1] += ev.data
                        c.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                    elif isinstance(ev, h2.events.StreamEnded):
                        fields, body = streams.pop(ev.stream_id)
                        with self.lock:
                            self.got.append((fields[":path"], body, fields))
                        if self.mode == "slow":
                            time.sleep(5)
                        if self.mode == "never":
                            continue
                        if fields.get("content-type", "").startswith("application/grpc"):
                            c.send_headers(ev.stream_id, [(":status", "200"), ("content-type", "application/grpc")])
                            c.send_data(ev.stream_id, b"\0\0\0\0\0")
                            c.send_headers(ev.stream_id, [("grpc-status", "0")], end_stream=True)
                        else:
                            c.send_headers(ev.stream_id, [(":status", "200"), ("content-length", "6")])
                            c.send_data(ev.stream_id, b"shadow", end_stream=True)
                conn.sendall(c.data_to_send())
        except (OSError, h2.exceptions.ProtocolError):
            pass
        finally:
            with self.lock:
                self.open -= 1


def rule_of(daemon, service, key, path=None):
    """The /routes rule of service that has key (and matches path)."""
    j = daemon.json("/routes?service=" + service)
    rules = [r for s in j["services"] for r in s["rules"] if key in r]
    if path:
        rules = [r for r in rules if r["matches"][0]["path"]["value"] == path]
    return rules[0]


def timed_curl(topo, url, n):
    """n requests to url (curl --parallel, 20 at a time): [(status, seconds)]."""
    args = ["-s", "-Z", "--parallel-immediate", "--parallel-max", "20", "-o", "/dev/null", "--max-time", "20"]
    args += ["-w", "%{http_code} %{time_total} %{exitcode} %{errormsg}\\n", "%s?i=[1-%d]" % (url, n)]
    out = topo.app.curl(args, timeout=60).stdout.split("\n")
    res = [(int(l.split()[0]), float(l.split()[1])) for l in out if l.strip()]
    assert all(l.split()[0] != "000" for l in out if l.strip()), [l for l in out if l.startswith("000")][:3]
    assert len(res) == n, out[-5:]
    return res


def check_delays(took, delays, n):
    """took: each request's seconds; delays: the rule's counter. Every
    delayed request took at least the delay; the others did not (a little
    slack for a loaded machine's stalls); the share is DELAY_PCT within
    about 3 standard deviations."""
    slow = sum(1 for t in took if t >= DELAY_MS / 1000.0)
    assert slow >= delays, "%d requests were counted delayed, only %d took %d ms" % (delays, slow, DELAY_MS)
    assert slow <= delays + max(2, n // 50), "%d requests took %d ms, %d were delayed" % (slow, DELAY_MS, delays)
    share = 100.0 * delays / n
    sigma = 100.0 * (DELAY_PCT / 100.0 * (1 - DELAY_PCT / 100.0) / n) ** 0.5
    assert abs(share - DELAY_PCT) <= 3.5 * sigma, "%.1f %% delayed, want %d" % (share, DELAY_PCT)


def test_fault_delay_http1(env):
    topo, daemon, _ = env
    n = 300
    res = timed_curl(topo, "http://%s/delay" % VIP_H1, n)
    assert {c for c, _ in res} == {200}
    rule = rule_of(daemon, "api", "fault")
    assert rule["fault"]["delay"] == {"fixedDelay_ms": DELAY_MS, "percentage": DELAY_PCT}
    check_delays([t for _, t in res], rule["delays"], n)
    m = daemon.metrics()
    assert m[("shunt_route_delays_total", (("route", "api"), ("rule", "2"), ("service", "default/api:80")))] == rule["delays"]
    # a request of another rule is never delayed
    assert max(t for _, t in timed_curl(topo, "http://%s/other" % VIP_H1, 40)) < DELAY_MS / 1000.0


def h2load(topo, url, n, streams=20):
    """n requests over ONE HTTP/2 connection (h2load, streams at a time):
    [(status, seconds)] from its per-request log."""
    sl.require_tool("h2load", "nghttp2-client")
    log = os.path.join(sl.tmpdir(), "h2load-%d.log" % os.getpid())
    topo.app.run(["h2load", "-n", str(n), "-c", "1", "-m", str(streams), "--log-file", log, url], timeout=60)
    with open(log) as f:
        res = [(int(l.split()[1]), int(l.split()[2]) / 1e6) for l in f if l.strip()]
    os.unlink(log)
    assert len(res) == n, res[:5]
    return res


def test_fault_delay_http2_streams_of_one_connection(env):
    """One HTTP/2 connection: a delayed stream holds up none of the others."""
    topo, daemon, _ = env
    n = 300
    res = h2load(topo, "http://%s/delay" % VIP_H2, n)
    assert {c for c, _ in res} == {200}
    check_delays([t for _, t in res], rule_of(daemon, "api-h2", "fault")["delays"], n)


def test_fault_delay_grpc(env):
    topo, daemon, _ = env
    n = 200
    r = topo.app.run(
        [sys.executable, GRPCPEER, "client", "--target", "%s:80" % VIP_GRPC, "--parallel", "20", "unary", "--n", str(n)],
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, (r.stdout, r.stderr)
    out = json.loads(r.stdout)
    assert out["codes"] == {"OK": n}, out
    check_delays(out["latencies"], rule_of(daemon, "api-grpc", "fault")["delays"], n)


def grpc_unary(topo, vip, n, parallel=20):
    r = topo.app.run(
        [sys.executable, GRPCPEER, "client", "--target", "%s:80" % vip, "--parallel", str(parallel), "unary", "--n", str(n)],
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, (r.stdout, r.stderr)
    return json.loads(r.stdout)


def test_rate_limit_accepted_rate(env):
    """wrk offers far more than the limit for 4 s: what it gets through is
    the burst plus RATE a second, within 5 %; the rest is 429."""
    topo, daemon, _ = env
    sl.require_tool("wrk")
    r = topo.app.run(["wrk", "-t2", "-c16", "-d4s", "--timeout", "5s", "http://%s/limited" % VIP_H1], timeout=60, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    total = int(re.search(r"(\d+) requests in ([\d.]+)(m?s)", r.stdout).group(1))
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", r.stdout)
    secs = float(m.group(2)) / (1000.0 if m.group(3) == "ms" else 1.0)
    refused = int((re.search(r"Non-2xx or 3xx responses: (\d+)", r.stdout) or [0, 0])[1])
    accepted = total - refused
    assert refused > accepted, "wrk did not offer more than the limit: %s" % r.stdout
    rate = (accepted - BURST) / secs
    assert abs(rate - RATE) <= 0.05 * RATE, "accepted %.1f requests/s, the limit is %d: %s" % (rate, RATE, r.stdout)
    rule = rule_of(daemon, "api", "rateLimit", "/limited")
    assert rule["rateLimit"] == {"requestsPerSecond": RATE, "burst": BURST, "perSource": False}
    # every 429 wrk saw was counted (the daemon may have refused a few more
    # that wrk's end cut off)
    assert refused <= rule["rate_limited"] <= refused + 16 * 2, (refused, rule["rate_limited"])
    m = daemon.metrics()
    assert m[("shunt_route_rate_limited_total", (("route", "api"), ("rule", "3"), ("service", "default/api:80")))] == rule["rate_limited"]


def test_rate_limit_per_source_and_429_at_once(env):
    """A per-source limit of 3 and 0.1 a second: each client address has
    its own bucket; the refused request is answered at once (not held
    until a token is back, 10 s away) with Retry-After."""
    topo, daemon, _ = env

    def one(source):
        r = topo.app.curl(
            ["-s", "-o", "/dev/null", "-D", "-", "--interface", source, "-w", "%{http_code} %{time_total}", "--max-time", "10"]
            + ["http://%s/per-source" % VIP_H1]
        )
        head, _, last = r.stdout.rpartition("\n")
        code, took = last.split()
        ra = re.search(r"(?im)^retry-after: *(\d+)", head)
        return int(code), float(took), int(ra.group(1)) if ra else None

    a = [one(T.APP4) for _ in range(5)]
    assert [c for c, _, _ in a] == [200, 200, 200, 429, 429], a
    for code, took, ra in a[3:]:
        assert took < 1.0, "a 429 took %.2f s" % took
        assert ra is not None and 1 <= ra <= 10, ra
    # another source still has its whole burst
    assert [one(SECOND_SOURCE)[0] for _ in range(4)] == [200, 200, 200, 429]
    assert rule_of(daemon, "api", "rateLimit", "/per-source")["rate_limited"] == 3


def test_rate_limit_http2_and_grpc(env):
    topo, _, _ = env
    codes = []
    for _ in range(3):
        r = topo.app.curl(["--http2-prior-knowledge", "-s", "-o", "/dev/null", "-D", "-", "--max-time", "10", "http://%s/limited" % VIP_H2])
        codes.append(int(r.stdout.split()[1]))
    assert codes == [200, 200, 429], codes
    assert re.search(r"(?im)^retry-after: *\d+", r.stdout), r.stdout
    t0 = time.monotonic()
    out = grpc_unary(topo, VIP_GRPC_RL, 10, parallel=1)
    assert out["codes"] == {"OK": 3, "RESOURCE_EXHAUSTED": 7}, out
    assert time.monotonic() - t0 < 10


def test_mirror_copies(env):
    """Every request of the rule reaches the mirror, head and body as the
    primary got them (Connection: close); the primary gets its own answer."""
    topo, daemon, shadow = env
    shadow.mode, shadow.got = "fast", []
    for i in range(20):
        r = topo.app.curl(["-s", "--max-time", "10", "--data-binary", "body-%d" % i, "http://%s/mirror/%d" % (VIP_H1, i)])
        assert json.loads(r.stdout)["server"] == "primary"
    sl.wait_until(lambda: len(shadow.got) == 20, 10, what="20 copies at the mirror")
    assert sorted((p, b) for p, b, _ in shadow.got) == sorted(("/mirror/%d" % i, b"body-%d" % i) for i in range(20))
    assert all(re.search(r"(?im)^connection: close$", h) for _, _, h in shadow.got)
    rule = rule_of(daemon, "api", "filters", "/mirror")
    f = [f for f in rule["filters"] if f["type"] == "RequestMirror"][0]
    assert (f["backend"], f["percent"], f["mirrors"], f["drops"]) == ("default/shadow", 100, 20, 0), f
    # a share: 50 % of 400 within about 3.5 standard deviations (10 points)
    shadow.got = []
    out = topo.app.curl(["-s", "-o", "/dev/null", "-w", "%{http_code}\\n", "http://%s/half?i=[1-400]" % VIP_H1], timeout=60).stdout
    assert out.split() == ["200"] * 400
    f = [f for f in rule_of(daemon, "api", "filters", "/half")["filters"] if f["type"] == "RequestMirror"][0]
    # (a copy the bound refused is drawn too: the mirror is slower than curl here)
    assert 160 <= f["mirrors"] + f["drops"] <= 240 and f["drops"] <= 40, f
    sl.wait_until(lambda: len(shadow.got) == f["mirrors"], 10, what="the share's copies at the mirror")
    m = daemon.metrics()
    assert m[("shunt_route_mirrors_total", (("route", "api"), ("rule", "1"), ("service", "default/api:80")))] == f["mirrors"]


def p50_ms(topo, path, n=60):
    out = topo.app.curl(["-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}\\n", "http://%s%s?i=[1-%d]" % (VIP_H1, path, n)], timeout=60).stdout.split("\n")
    res = [l.split() for l in out if l.strip()]
    assert len(res) == n and {c for c, _ in res} == {"200"}, res[:3]
    return statistics.median(float(t) for _, t in res) * 1000


def test_mirror_slow_or_silent_leaves_primary_alone(env):
    """A mirror that answers after 5 s, then one that never answers: the
    primary's p50 stays that of a request without a mirror (same run,
    generous tolerance); the copies in flight stay within
    http.mirror_max_in_flight per worker and the rest are dropped, counted."""
    topo, daemon, shadow = env
    base = p50_ms(topo, "/other")
    for mode in ("slow", "never"):
        shadow.mode = mode
        before = [f for f in rule_of(daemon, "api", "filters", "/mirror")["filters"] if f["type"] == "RequestMirror"][0]
        t0 = time.monotonic()
        mirrored = p50_ms(topo, "/mirror")
        took = time.monotonic() - t0
        assert mirrored <= 2 * base + 10, "p50 %.1f ms with a %s mirror, %.1f ms without" % (mirrored, mode, base)
        assert took < 5, "60 requests took %.1f s with a %s mirror" % (took, mode)
        after = [f for f in rule_of(daemon, "api", "filters", "/mirror")["filters"] if f["type"] == "RequestMirror"][0]
        sent, dropped = after["mirrors"] - before["mirrors"], after["drops"] - before["drops"]
        assert sent + dropped == 60, (sent, dropped)
        assert sent <= 2 * MIRROR_MAX_IN_FLIGHT and dropped >= 60 - 2 * MIRROR_MAX_IN_FLIGHT, (mode, sent, dropped)
        assert shadow.open <= 2 * MIRROR_MAX_IN_FLIGHT
        # the copies go away after http.mirror_timeout (5 s), answered or not
        sl.wait_until(lambda: shadow.open == 0, 15, what="the mirror's connections closed")
    shadow.mode = "fast"
    m = daemon.metrics()
    assert m[("shunt_route_mirror_drops_total", (("route", "api"), ("rule", "0"), ("service", "default/api:80")))] >= 40


def test_shuntctl_routes_counters(env):
    """shuntctl routes shows each rule's mirror, fault and rate-limit counters."""
    topo, daemon, _ = env
    out = sl.shuntctl(topo.app, "--admin", "127.0.0.1:15003", "routes", "api").stdout
    rules = {r["matches"][0]["path"]["value"]: r for r in daemon.json("/routes?service=api")["services"][0]["rules"]}
    mirror = [f for f in rules["/mirror"]["filters"] if f["type"] == "RequestMirror"][0]
    assert "RequestMirror(mirrors=%d drops=%d)" % (mirror["mirrors"], mirror["drops"]) in out, out
    assert "fault(aborts=0 delays=%d)" % rules["/delay"]["delays"] in out, out
    assert "rateLimit(limited=%d)" % rules["/limited"]["rate_limited"] in out, out


def mirror_filter(daemon, service, path=None):
    return [f for f in rule_of(daemon, service, "filters", path)["filters"] if f["type"] == "RequestMirror"][0]


def test_mirror_http2_copies(env, shadow_h2):
    """HTTP/2: every request of the rule reaches the HTTP/2 mirror, its
    fields as they went upstream and its body, once complete; a body of
    http.mirror_max_body (64 KiB, one byte over the stream's first window)
    is copied, one byte more is dropped and counted; the primary gets its
    own answer every time."""
    topo, daemon, _ = env
    shadow_h2.mode, shadow_h2.got = "fast", []
    for i in range(10):
        r = topo.app.curl(
            ["--http2-prior-knowledge", "-s", "--max-time", "10", "--data-binary", "body-%d" % i, "http://%s/mirror/%d" % (VIP_H2M, i)]
        )
        assert json.loads(r.stdout)["server"] == "h2", r.stdout
    # ten more streams on one connection at once
    res = h2load(topo, "http://%s/mirror/many" % VIP_H2M, 10, streams=10)
    assert {c for c, _ in res} == {200}
    sl.wait_until(lambda: len(shadow_h2.got) == 20, 10, what="20 copies at the HTTP/2 mirror")
    got = sorted((p, b) for p, b, _ in shadow_h2.got)
    assert got == sorted([("/mirror/%d" % i, b"body-%d" % i) for i in range(10)] + [("/mirror/many", b"")] * 10), got
    fields = shadow_h2.got[0][2]
    assert fields[":method"] in ("GET", "POST") and fields[":authority"] and fields.get("x-request-id"), fields
    f = mirror_filter(daemon, "api-h2m", "/mirror")
    assert (f["backend"], f["mirrors"], f["drops"]) == ("default/shadow-h2", 20, 0), f
    # the body bound: 64 KiB copied, 64 KiB + 1 not
    body = os.path.join(sl.tmpdir(), "mirror-body-%d" % os.getpid())
    try:
        for size in (65536, 65537):
            with open(body, "wb") as fh:
                fh.write(b"m" * size)
            r = topo.app.curl(
                ["--http2-prior-knowledge", "-s", "--max-time", "10", "--data-binary", "@" + body, "http://%s/mirror/big%d" % (VIP_H2M, size)]
            )
            assert json.loads(r.stdout)["body_len"] == size, r.stdout
    finally:
        os.unlink(body)
    sl.wait_until(lambda: len(shadow_h2.got) == 21, 10, what="the 64 KiB copy")
    assert [(p, len(b)) for p, b, _ in shadow_h2.got[20:]] == [("/mirror/big65536", 65536)]
    f = mirror_filter(daemon, "api-h2m", "/mirror")
    assert (f["mirrors"], f["drops"]) == (21, 1), f
    m = daemon.metrics()
    assert m[("shunt_route_mirror_drops_total", (("route", "h2m"), ("rule", "0"), ("service", "default/api-h2m:80")))] == 1


def test_mirror_grpc_copies(env, shadow_h2):
    """gRPC: each call of the GRPCRoute's rule reaches the mirror as a gRPC
    request (path, content-type, message); the calls all succeed. One call
    at a time: the Python mirror must not fall 20 copies behind (a copy over
    http.mirror_max_in_flight is dropped, as it should be)."""
    topo, daemon, _ = env
    shadow_h2.mode, shadow_h2.got = "fast", []
    out = grpc_unary(topo, VIP_GRPCM, 30, parallel=1)
    assert out["codes"] == {"OK": 30}, out
    sl.wait_until(lambda: len(shadow_h2.got) == 30, 10, what="30 gRPC copies at the mirror")
    for path, body, fields in shadow_h2.got:
        assert fields["content-type"].startswith("application/grpc") and path.count("/") == 2, (path, fields)
        assert len(body) >= 5 and body[0] == 0, body  # one length-prefixed message
    f = mirror_filter(daemon, "api-grpcm")
    assert (f["mirrors"], f["drops"]) == (30, 0), f


def test_mirror_http2_slow_or_silent_leaves_primary_alone(env, shadow_h2):
    """One HTTP/2 connection, 20 streams at a time, to a mirror answering
    after 5 s, then one that never answers: the primary's p50 stays that of
    the same requests without a mirror; the worker holds at most
    http.mirror_max_in_flight copies (one connection: one worker), the rest
    dropped and counted, and the copies' connections close after
    http.mirror_timeout."""
    topo, daemon, _ = env
    base = statistics.median(t for _, t in h2load(topo, "http://%s/other" % VIP_H2M, 100)) * 1000
    for mode in ("slow", "never"):
        shadow_h2.mode = mode
        before = mirror_filter(daemon, "api-h2m", "/mirror")
        t0 = time.monotonic()
        res = h2load(topo, "http://%s/mirror/%s" % (VIP_H2M, mode), 100)
        took = time.monotonic() - t0
        assert {c for c, _ in res} == {200}
        mirrored = statistics.median(t for _, t in res) * 1000
        assert mirrored <= 2 * base + 10, "p50 %.1f ms with a %s mirror, %.1f ms without" % (mirrored, mode, base)
        assert took < 5, "100 requests took %.1f s with a %s mirror" % (took, mode)
        after = mirror_filter(daemon, "api-h2m", "/mirror")
        sent, dropped = after["mirrors"] - before["mirrors"], after["drops"] - before["drops"]
        assert sent + dropped == 100, (sent, dropped)
        assert sent <= MIRROR_MAX_IN_FLIGHT and dropped >= 100 - MIRROR_MAX_IN_FLIGHT, (mode, sent, dropped)
        assert shadow_h2.open <= MIRROR_MAX_IN_FLIGHT
        sl.wait_until(lambda: shadow_h2.open == 0, 15, what="the mirror's connections closed")
    shadow_h2.mode = "fast"


@pytest.fixture(scope="module")
def stalled(env):
    """Endpoints that take requests and never answer, beside the live ones:
    SHADOW on the HTTP/1.1, HTTP/2 and gRPC ports."""
    topo = env[0]
    srvs = {"h1": MirrorServer(topo.remote, SHADOW, H1_PORT), "h2": H2MirrorServer(topo.remote, SHADOW, H2_PORT),
            "grpc": H2MirrorServer(topo.remote, SHADOW, GRPC_PORT)}
    for srv in srvs.values():
        srv.mode = "never"
    yield srvs
    for srv in srvs.values():
        srv.close()


def check_tries(took, stalled_got, n):
    """took: each request's seconds. A request that went to the stalled
    endpoint first took a try's timeout more (no more than that and a
    loaded machine's slack); the others did not (but for a stall or two of
    a loaded machine)."""
    slow = sum(1 for t in took if t >= TRY_MS / 1000.0)
    assert slow >= 1 and stalled_got >= 1, (took, stalled_got)
    assert max(took) < 3 * TRY_MS / 1000.0 + 0.5, took
    assert stalled_got <= slow <= stalled_got + 2, (took, stalled_got)


def test_per_try_timeout_http1(env, stalled):
    """HTTP/1.1: a try the stalled endpoint holds is given up after
    timeouts.backendRequest and the request (a POST, its body too: the rule
    has a retry policy) goes to the live endpoint; every request succeeds
    with the body it sent."""
    topo, daemon, _ = env
    stalled["h1"].got = []
    took = []
    for i in range(12):
        r = topo.app.curl(["-s", "--max-time", "10", "-w", "\n%{time_total}", "--data-binary", "try-%d" % i, "http://%s/try/%d" % (VIP_TRY, i)])
        body, _, t = r.stdout.rpartition("\n")
        j = json.loads(body)
        assert (j["server"], j["body_len"]) == ("primary", len("try-%d" % i)), r.stdout
        took.append(float(t))
    check_tries(took, len(stalled["h1"].got), 12)
    assert {p for p, _, _ in stalled["h1"].got} <= {"/try/%d" % i for i in range(12)}


def test_per_try_timeout_http2(env, stalled):
    topo, daemon, _ = env
    stalled["h2"].got = []
    took = []
    for i in range(12):
        r = topo.app.curl(
            ["--http2-prior-knowledge", "-s", "--max-time", "10", "-w", "\n%{time_total}", "--data-binary", "try-%d" % i, "http://%s/try/%d" % (VIP_TRY_H2, i)]
        )
        body, _, t = r.stdout.rpartition("\n")
        j = json.loads(body)
        assert (j["server"], j["body_len"]) == ("h2", len("try-%d" % i)), r.stdout
        took.append(float(t))
    check_tries(took, len(stalled["h2"].got), 12)


def test_per_try_timeout_grpc(env, stalled):
    """gRPC: the call's message goes again, unaltered (grpcpeer checks its
    digest), to the live endpoint after a try's timeout."""
    topo, daemon, _ = env
    stalled["grpc"].got = []
    out = grpc_unary(topo, VIP_TRY_GRPC, 12, parallel=1)
    assert out["codes"] == {"OK": 12}, out
    check_tries(out["latencies"], len(stalled["grpc"].got), 12)


def test_per_try_timeouts_bounded_by_the_request_timeout(env, stalled):
    """Every endpoint stalls and the rule allows 10 retries of 300 ms tries:
    timeouts.request (1 s) still ends the request, with 504."""
    topo, daemon, _ = env
    stalled["h1"].got = []
    r = topo.app.curl(["-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", "--max-time", "10", "http://%s/all" % VIP_TRY_ALL])
    code, took = r.stdout.split()
    assert code == "504", r.stdout
    assert 0.95 <= float(took) < 2.0, r.stdout
    assert 2 <= len(stalled["h1"].got) <= 4, len(stalled["h1"].got)
    rule = rule_of(daemon, "api-try-all", "timeouts")
    assert rule["timeouts"] == {"request_ms": 1000, "backend_request_ms": TRY_MS}, rule
