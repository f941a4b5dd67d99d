# SPDX-License-Identifier: Apache-2.0
"""HTTP/1.1 request-level proxying on the outbound side, with real clients
(curl, wrk, raw sockets) and real HTTP/1.1 backends (httpbackend.py) in
network namespaces, iptables capture."""

import collections
import http.client
import json
import os
import re
import signal
import socket
import threading
import time

import pytest

import httpbackend
import shuntlib as sl
from shuntlib import Topology as T

VIP_WEB = "10.96.1.10"  # HTTP declared: handed over at accept
VIP_SNIFF = "10.96.1.11"  # no protocol declared: sniffed, then handed over
VIP_DOWN = "10.96.1.12"  # endpoints where nothing listens
VIP_ONE = "10.96.1.13"  # a single endpoint
VIP_SNIFF2 = "10.96.1.14"  # sniffed, two endpoints
EP_ADDRS = sl.EP_ADDRS
PORT = 8081
DEAD_PORT = 8099
ONE_PORT = 8083  # its own listener: no other service's pooled connections
REQUEST_TIMEOUT_MS = 1000
UPSTREAM_IDLE_MS = 1500


def registry():
    def svc(name, vip, port, eps, protocol="HTTP"):
        return sl.service(name, vip, port, eps, protocol)

    return {
        "services": [
            svc("web", VIP_WEB, PORT, EP_ADDRS),
            svc("sniffed", VIP_SNIFF, PORT, EP_ADDRS, protocol=None),
            svc("down", VIP_DOWN, DEAD_PORT, EP_ADDRS[:2]),
            svc("one", VIP_ONE, ONE_PORT, EP_ADDRS[:1]),
            svc("sniffed2", VIP_SNIFF2, PORT, EP_ADDRS[:2], protocol=None),
        ]
    }


@pytest.fixture(scope="module")
def env():
    topo = T()
    procs = []
    daemon = None
    try:
        topo.add_remote4()
        topo.route_vips()
        procs.append(
            httpbackend.spawn(
                topo.remote,
                ["%s:%d=ep%d" % (a, PORT, i) for i, a in enumerate(EP_ADDRS)]
                + ["%s:%d=one" % (EP_ADDRS[0], ONE_PORT)],
            )
        )
        path = sl.registry_file(registry())
        daemon = sl.Shuntd(
            topo.app,
            sl.shuntd_args(
                **{
                    "service-discovery.file.path": path,
                    "timeouts.request": "%dms" % REQUEST_TIMEOUT_MS,
                    "http.upstream-idle-timeout": "%dms" % UPSTREAM_IDLE_MS,
                    "log-level": "info",
                }
            ),
        ).wait_ready()
        yield topo, daemon
    finally:
        sl.teardown(topo, [daemon], procs)


def keepalive(topo, host, n, path="/", headers=None):
    """n requests over one client connection: the parsed JSON bodies."""
    s = topo.app.connect(host, 80)
    conn = http.client.HTTPConnection(host, 80, timeout=10)
    conn.sock = s
    out = []
    try:
        for i in range(n):
            h = headers(i) if callable(headers) else (headers or {})
            conn.request("GET", path, headers=h)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 200, (resp.status, body)
            out.append(json.loads(body))
    finally:
        conn.close()
    return out


def raw(topo, host, data, timeout=5.0):
    """Sends data on a new connection, returns everything until the server
    closes (or timeout)."""
    s = topo.app.connect(host, 80, timeout)
    try:
        s.sendall(data)
        return sl.recv_all(s, timeout)
    finally:
        s.close()


def status_of(resp):
    m = re.match(rb"HTTP/1\.1 (\d{3}) ", resp)
    assert m, resp[:200]
    return int(m.group(1))


def header_of(resp, name):
    head = re.split(rb"\r?\n\r?\n", resp, 1)[0].decode("latin-1")
    for line in re.split(r"\r?\n", head)[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == name.lower():
            return v.strip()
    return None


def test_curl_keepalive_spread_over_endpoints(env):
    """Six requests over one curl connection: one connection to shuntd, each
    request picked on its own (round robin over the three endpoints)."""
    topo, d = env
    urls = ["http://%s/r%d" % (VIP_WEB, i) for i in range(6)]
    r = topo.app.curl(["-w", "%{num_connects}\\n"] + urls)
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    bodies = [json.loads(l) for l in lines if l.startswith("{")]
    connects = [int(l) for l in lines if not l.startswith("{")]
    assert len(bodies) == 6
    assert sum(connects) == 1, connects  # curl reused its connection
    counts = collections.Counter(b["server"] for b in bodies)
    assert counts == {"ep0": 2, "ep1": 2, "ep2": 2}, counts
    assert [b["path"] for b in bodies] == ["/r%d" % i for i in range(6)]


def test_sniffed_port_is_proxied_per_request(env):
    """A port without a declared protocol: sniffed as HTTP/1.1, then
    per-request picks over one client connection."""
    topo, d = env
    bodies = keepalive(topo, VIP_SNIFF, 6)
    assert len({b["server"] for b in bodies}) >= 2, bodies


def test_sniffed_one_request_per_connection_round_robin(env):
    """One request per connection on a sniffed port with two endpoints: the
    relay's pick (made before sniffing) serves the first request, and its
    already open connection is used, so round robin alternates."""
    topo, d = env
    opened = d.metric("shunt_upstream_connections_total", event="opened")
    counts = collections.Counter(keepalive(topo, VIP_SNIFF2, 1)[0]["server"] for _ in range(40))
    assert set(counts) == {"ep0", "ep1"} and abs(counts["ep0"] - counts["ep1"]) <= 2, counts
    # Every request went over the connection the relay had opened for it.
    assert d.metric("shunt_upstream_connections_total", event="opened") - opened <= 40


def test_upstream_connections_are_reused(env):
    topo, d = env
    reused = d.metric("shunt_upstream_connections_total", event="reused")
    bodies = keepalive(topo, VIP_WEB, 30)
    assert d.metric("shunt_upstream_connections_total", event="reused") >= reused + 20
    # The backends saw few connections: the same conn numbers come back.
    per_server = collections.defaultdict(set)
    for b in bodies:
        per_server[b["server"]].add(b["conn"])
    assert all(len(c) <= 3 for c in per_server.values()), per_server


def test_stale_pooled_connection_retried_on_a_fresh_one(env):
    """The server closes a pooled connection just as the next request comes
    (without answering): shuntd re-sends it on a fresh connection and the
    client never notices."""
    topo, d = env
    retries = d.metric("shunt_http_retries_total")
    first, second = keepalive(topo, VIP_ONE, 2, path="/drop-if-reused")
    assert first["server"] == second["server"] == "one"
    assert second["conn"] != first["conn"]
    assert d.metric("shunt_http_retries_total") == retries + 1


def test_idle_upstream_closed_before_the_server_would(env):
    """A pooled connection is closed after http.upstream_idle_timeout."""
    topo, d = env
    expired = d.metric("shunt_upstream_idle_closed_total", reason="timeout")
    keepalive(topo, VIP_ONE, 1)
    assert d.metric("shunt_upstream_idle_connections") >= 1
    sl.wait_until(
        lambda: d.metric("shunt_upstream_idle_closed_total", reason="timeout") > expired,
        UPSTREAM_IDLE_MS / 1000 + 5,
        what="the idle upstream connection expired",
    )


def test_wrk_through_shuntd(env):
    topo, d = env
    ok2xx = d.metric("shunt_http_requests_total", **{"class": "2xx"})
    r = topo.app.run(
        ["wrk", "-t1", "-c8", "-d3s", "--timeout", "5s", "http://%s/" % VIP_WEB], timeout=30
    )
    out = r.stdout
    m = re.search(r"(\d+) requests in", out)
    assert m, out
    n = int(m.group(1))
    assert n > 100, out
    assert "Non-2xx" not in out and "Socket errors" not in out, out
    # wrk's last in-flight requests may be cut at the end: all but those counted.
    assert d.metric("shunt_http_requests_total", **{"class": "2xx"}) >= ok2xx + n


def test_all_endpoints_down_503_at_once(env):
    topo, d = env
    before = d.metric("shunt_http_local_responses_total", status="503")
    r = topo.app.curl(["-i", "--max-time", "5", "http://%s/" % VIP_DOWN], timeout=8)
    assert r.returncode == 0, r.stderr
    resp = r.stdout.encode()
    assert status_of(resp) == 503, r.stdout
    assert header_of(resp, "Retry-After") == "1"
    reason = header_of(resp, "X-Shunt-Reason")
    assert reason and "default/down:80" in reason and "could be reached" in reason, reason
    assert d.metric("shunt_http_local_responses_total", status="503") == before + 1
    assert d.metric("shunt_connect_retries_total") >= 1


def test_no_response_504(env):
    topo, d = env
    before = d.metric("shunt_http_local_responses_total", status="504")
    resp = raw(topo, VIP_WEB, b"GET /hang HTTP/1.1\r\nHost: web\r\nX-Request-ID: t-504\r\n\r\n",
               timeout=10)
    assert status_of(resp) == 504, resp
    assert "timeouts.request" in header_of(resp, "X-Shunt-Reason")
    assert header_of(resp, "X-Request-ID") == "t-504"  # the answer names the request
    assert d.metric("shunt_http_local_responses_total", status="504") == before + 1


@pytest.mark.parametrize(
    "name,request_bytes",
    [
        (
            "cl_and_te",
            b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\n\r\n",
        ),
        ("bad_chunk_size", b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"),
        (
            "chunk_size_overflow",
            b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"fffffffffffffffffff\r\n",
        ),
        (
            "two_lengths",
            b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        ),
        ("te_not_chunked", b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked, gzip\r\n\r\n"),
        ("obs_fold", b"GET / HTTP/1.1\r\nHost: web\r\nX-A: 1\r\n  folded\r\n\r\n"),
    ],
)
def test_smuggling_attempts_get_400(env, name, request_bytes):
    topo, d = env
    before = d.metric("shunt_http_local_responses_total", status="400")
    resp = raw(topo, VIP_WEB, request_bytes)
    assert status_of(resp) == 400, (name, resp)
    assert header_of(resp, "X-Shunt-Reason")
    assert header_of(resp, "Connection") == "close"
    # Only one response: nothing smuggled reached a backend.
    assert resp.count(b"HTTP/1.1") == 1, resp
    assert d.metric("shunt_http_local_responses_total", status="400") == before + 1


def test_header_over_limit_431(env):
    topo, d = env
    before = d.metric("shunt_http_local_responses_total", status="431")
    big = b"GET / HTTP/1.1\r\nHost: web\r\n" + b"X-Big: " + b"a" * 8000 + b"\r\n"
    req = big + b"".join(b"X-Fill-%d: %s\r\n" % (i, b"b" * 8000) for i in range(10)) + b"\r\n"
    resp = raw(topo, VIP_WEB, req)
    assert status_of(resp) == 431, resp[:300]
    assert "larger than" in header_of(resp, "X-Shunt-Reason")
    assert d.metric("shunt_http_local_responses_total", status="431") == before + 1
    # The service is fine for the next client.
    assert keepalive(topo, VIP_WEB, 1)[0]["server"].startswith("ep")


def test_http10_client(env):
    """An HTTP/1.0 client: its request goes out as HTTP/1.1 (with a Host),
    the answer comes back and the connection closes after it; with
    keep-alive asked for, it stays open and says so."""
    topo, d = env
    resp = raw(topo, VIP_WEB, b"GET /old HTTP/1.0\r\n\r\n")
    assert status_of(resp) == 200 and header_of(resp, "Connection") == "close", resp
    assert json.loads(resp.split(b"\r\n\r\n", 1)[1])["path"] == "/old"
    s = topo.app.connect(VIP_WEB, 80)
    try:
        for _ in range(2):
            s.sendall(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(4096)
            assert header_of(head, "Connection") == "keep-alive", head
            n = int(header_of(head, "Content-Length"))
            body = head.split(b"\r\n\r\n", 1)[1]
            body += sl.recv_exact(s, n - len(body)) if n > len(body) else b""
            assert json.loads(body)["server"].startswith("ep")
    finally:
        s.close()


def test_request_id_added_and_kept_traceparent_passed(env):
    topo, d = env
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    b = keepalive(topo, VIP_WEB, 1, headers={"traceparent": tp})[0]
    rid = b["headers"].get("x-request-id", "")
    assert re.fullmatch(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", rid), b
    assert b["headers"]["traceparent"] == tp
    b2 = keepalive(topo, VIP_WEB, 1, headers={"X-Request-ID": "abc-123"})[0]
    assert b2["headers"]["x-request-id"] == "abc-123"
    # Two requests, two ids.
    ids = {x["headers"]["x-request-id"] for x in keepalive(topo, VIP_WEB, 2)}
    assert len(ids) == 2


def test_chunked_request_body_and_streamed_response(env):
    """A chunked request body goes through with its framing; a chunked
    300 kB response comes back whole; both on one client connection."""
    topo, d = env
    s = topo.app.connect(VIP_WEB, 80)
    conn = http.client.HTTPConnection(VIP_WEB, 80, timeout=10)
    conn.sock = s
    try:
        chunks = [b"z" * n for n in (1, 1000, 70000)]
        conn.request("POST", "/x", body=iter(chunks), encode_chunked=True)
        r1 = conn.getresponse()
        j = json.loads(r1.read())
        assert r1.status == 200 and j["method"] == "POST" and j["body_len"] == 71001, j
        assert j["headers"]["transfer-encoding"] == "chunked"
        conn.request("GET", "/bytes/300000")
        r2 = conn.getresponse()
        assert r2.getheader("Transfer-Encoding") == "chunked"
        assert len(r2.read()) == 300000
        conn.request("HEAD", "/bytes/300000")
        r3 = conn.getresponse()
        assert r3.status == 200 and r3.read() == b""
    finally:
        conn.close()


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def test_slow_reader_bounded_memory_others_unaffected(env):
    """A client asks for 200 MB and reads nothing: shuntd's buffers fill and
    it stops reading the backend (whose writes then block); its memory stays
    bounded and other clients are served meanwhile."""
    topo, d = env
    pid = d.proc.pid
    base = rss_kb(pid)
    stalled = []
    try:
        for _ in range(4):
            s = topo.app.connect(VIP_WEB, 80)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(b"GET /bytes/200000000 HTTP/1.1\r\nHost: web\r\n\r\n")
            stalled.append(s)
        peak = base
        for _ in range(20):  # RSS sampled for 2 s of stalling: the window is what is tested
            time.sleep(0.1)
            peak = max(peak, rss_kb(pid))
            assert keepalive(topo, VIP_WEB, 1)[0]["server"].startswith("ep")
        # Four stalled sessions hold at most two 64 KiB buffers each.
        assert peak - base < 16 * 1024, (base, peak)
        st = [c for c in d.connections() if c.get("protocol") == "http1"]
        assert any(c["state"] == "streaming_response" for c in st), st
        assert all(c["bytes_out"] < 50_000_000 for c in st), st
    finally:
        for s in stalled:
            s.close()


# ---- mutual TLS to a service with an identity ---------------------------------

WEB_ID = "spiffe://cluster.local/ns/default/sa/web"
VIP_TLS, VIP_TLS_WRONG = "10.96.3.10", "10.96.3.11"


@pytest.fixture(scope="module")
def mesh():
    """Two pods with shuntd and one built-in CA: A's registry gives the
    remote HTTP service its SPIFFE identity (and once a wrong one)."""
    topo = T()
    procs, daemons = [], []
    try:
        topo.route_vips()
        procs.append(httpbackend.spawn(topo.remote, ["%s:%d=tls-web" % (T.REMOTE4, PORT)]))
        tmp = sl.tmpdir()
        ca_dir = os.path.join(tmp, "ca")

        def svc(name, vip, identity):
            return sl.service(name, vip, PORT, [T.REMOTE4], "HTTP", identity=identity)

        reg = sl.registry_file(
            {
                "services": [
                    svc("web", VIP_TLS, WEB_ID),
                    svc("wrong", VIP_TLS_WRONG, "spiffe://cluster.local/ns/default/sa/other"),
                ]
            },
            tmp,
        )
        a, b = sl.start_mtls_pair(
            topo, daemons, ca_dir, a_flags={"service-discovery.file.path": reg}
        )
        yield topo, a, b
    finally:
        sl.teardown(topo, daemons, procs)


def handshakes(d, direction, failure=None):
    """Completed handshakes, or failures for a reason."""
    if failure:
        return d.metric("shunt_tls_handshake_failures_total", direction=direction, reason=failure)
    return d.metric("shunt_tls_handshakes_total", direction=direction)


def test_mtls_upstream_pooled(mesh):
    """Requests to a service with an identity go over mutual TLS (the peer's
    shuntd terminates it); the TLS connection is pooled, so many requests on
    several client connections cost about one handshake per worker."""
    topo, a, b = mesh
    before = handshakes(a, "outbound")
    servers = []
    for _ in range(4):
        servers += [x["server"] for x in keepalive(topo, VIP_TLS, 5)]
    assert servers == ["tls-web"] * 20
    made = handshakes(a, "outbound") - before
    assert 1 <= made <= 2, (made, [l for l in a.metrics_text().splitlines() if "upstream" in l or "retries" in l])
    assert handshakes(b, "inbound") >= made


def test_mtls_wrong_identity_is_503(mesh):
    topo, a, b = mesh
    r = topo.app.curl(["-i", "http://%s/" % VIP_TLS_WRONG], timeout=10)
    resp = r.stdout.encode()
    assert status_of(resp) == 503, r.stdout
    assert "could be reached" in header_of(resp, "X-Shunt-Reason")
    assert handshakes(a, "outbound", failure="wrong_identity") >= 1


def test_drain_closes_idle_keepalive_and_finishes_requests(fresh_topo, tmp_path):
    """SIGTERM with a long drain_timeout: an idle keep-alive client is
    closed at once, a request in flight is answered (with Connection: close),
    and shuntd exits without waiting out the drain timeout."""
    topo = fresh_topo
    topo.route_vips()
    backend = httpbackend.spawn(topo.remote, ["%s:%d=ep0" % (T.REMOTE4, PORT)])
    d = None
    try:
        reg = str(tmp_path / "registry.json")
        with open(reg, "w") as f:
            json.dump({"services": [registry()["services"][0] | {"endpoints": [
                {"address": T.REMOTE4, "port": PORT}]}]}, f)
        d = sl.Shuntd(
            topo.app,
            sl.shuntd_args(**{"service-discovery.file.path": reg, "drain-timeout": "60s"}),
        ).wait_ready()
        idle = topo.app.connect(VIP_WEB, 80)
        idle.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        assert sl.recv_line(idle).startswith(b"HTTP/1.1 200")
        busy = topo.app.connect(VIP_WEB, 80)
        busy.sendall(b"GET /slow/1500 HTTP/1.1\r\nHost: web\r\n\r\n")
        sl.wait_until(
            lambda: any(c["state"] == "awaiting_response" for c in d.connections()),
            5,
            what="the slow request in flight",
        )
        d.signal(signal.SIGTERM)
        rest = sl.recv_all(idle, timeout=10)  # EOF comes (after the rest of the answer)
        assert b"HTTP/1.1" not in rest
        resp = sl.recv_all(busy, timeout=10)
        assert status_of(resp) == 200 and header_of(resp, "Connection") == "close", resp
        assert d.wait(20) == 0
    finally:
        sl.stop_checked([d] if d else [])
        backend.stop()


def read_response(f):
    """(status, headers, body) of one Content-Length response from file f."""
    status = int(f.readline().split()[1])
    headers = {}
    while True:
        line = f.readline().rstrip(b"\r\n")
        if not line:
            break
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, f.read(int(headers.get("content-length", "0")))


def test_pipelined_and_byte_by_byte_requests(env):
    """Three pipelined requests in one write are answered in order; a
    request sent one byte at a time is answered too."""
    topo, d = env
    s = topo.app.connect(VIP_WEB, 80)
    try:
        s.sendall(b"".join(b"GET /p%d HTTP/1.1\r\nHost: web\r\n\r\n" % i for i in range(3)))
        f = s.makefile("rb")
        for i in range(3):
            status, _, body = read_response(f)
            assert status == 200 and json.loads(body)["path"] == "/p%d" % i
        for b in b"GET /slowly HTTP/1.1\r\nHost: web\r\nX-A: b\r\n\r\n":
            s.send(bytes([b]))
        status, _, body = read_response(f)
        assert status == 200 and json.loads(body)["path"] == "/slowly"
    finally:
        s.close()


def test_broken_upstream_responses(env):
    """A malformed response head is a 502; a malformed chunked body or a
    body cut short after the head went out resets the client (it must not
    take a truncated body for a whole one); the next client is served."""
    topo, d = env
    resp = raw(topo, VIP_WEB, b"GET /badhead HTTP/1.1\r\nHost: web\r\n\r\n")
    assert status_of(resp) == 502 and "malformed" in header_of(resp, "X-Shunt-Reason"), resp
    for path in ("/badchunk", "/truncate"):
        s = topo.app.connect(VIP_WEB, 80)
        try:
            conn = http.client.HTTPConnection(VIP_WEB, 80, timeout=10)
            conn.sock = s
            conn.request("GET", path)
            with pytest.raises((http.client.IncompleteRead, ConnectionResetError)):
                conn.getresponse().read()
        finally:
            s.close()
    assert keepalive(topo, VIP_WEB, 3)[2]["server"].startswith("ep")


def test_trickling_head_gets_408(env):
    """A head that never completes is answered 408 after timeouts.request,
    however the bytes trickle (not only after the idle timeout)."""
    topo, d = env
    s = topo.app.connect(VIP_WEB, 80)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n")
        for _ in range(3):  # a byte every 0.4 s: never idle for long
            time.sleep(0.4)
            try:
                s.send(b"X")
            except OSError:
                break
        resp = sl.recv_all(s, timeout=10)
    finally:
        s.close()
    assert status_of(resp) == 408, resp
    assert "timeouts.request" in header_of(resp, "X-Shunt-Reason")


def test_random_clients_leave_nothing_behind(env):
    """300 clients with valid, malformed, pipelined, split and abandoned
    requests (seeded, so a failure repeats): shuntd answers what it can,
    every session ends, the active gauge returns to where it was, and the
    service still works."""
    import random

    topo, d = env
    rnd = random.Random(6)
    active = d.metric("shunt_connections_active", direction="outbound")
    pieces = [
        b"GET / HTTP/1.1\r\nHost: web\r\n\r\n",
        b"GET /bytes/70000 HTTP/1.1\r\nHost: web\r\n\r\n",
        b"POST /p HTTP/1.1\r\nHost: web\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /c HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HEAD / HTTP/1.1\r\nHost: web\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n",
        b"GET /status/500 HTTP/1.1\r\nHost: web\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: web\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
        b"POST /c HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\nq\r\n",
        b"\x00\x01\x02\xff" * 10,
    ]
    for i in range(300):
        data = b"".join(rnd.choice(pieces) for _ in range(rnd.randint(1, 4)))
        if rnd.random() < 0.2:
            data = data[: rnd.randint(0, len(data))]  # abandoned mid-request
        s = topo.app.connect(VIP_WEB, 80)
        try:
            pos = 0
            while pos < len(data):
                n = rnd.randint(1, 64) if rnd.random() < 0.3 else len(data)
                s.sendall(data[pos : pos + n])
                pos += n
            if rnd.random() < 0.5:
                s.settimeout(0.05)
                try:
                    while s.recv(65536):
                        pass
                except OSError:
                    pass
        finally:
            s.close()
    # (<=: a session of an earlier test may end meanwhile)
    try:
        sl.wait_until(
            lambda: d.metric("shunt_connections_active", direction="outbound") <= active,
            REQUEST_TIMEOUT_MS / 1000 + 10,
            what="every session ended",
        )
    except sl.HarnessError:
        raise AssertionError((active, d.connections())) from None
    assert d.alive()
    assert keepalive(topo, VIP_WEB, 3)[2]["server"].startswith("ep")


def test_upgrade_tunnel(env):
    """An Upgrade request goes out with its Upgrade header; the 101 comes
    back and the connection becomes a byte tunnel: 1 MiB echoed through it,
    the client's half-close passed on, the server's close comes back."""
    topo, d = env
    s = topo.app.connect(VIP_WEB, 80, timeout=10)
    try:
        s.sendall(
            b"GET /upgrade HTTP/1.1\r\nHost: web\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n"
        )
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            assert chunk, head
            head += chunk
        head, rest = head.split(b"\r\n\r\n", 1)
        assert status_of(head + b"\r\n\r\n") == 101, head
        assert header_of(head + b"\r\n\r\n", "Upgrade") == "echo"
        conns = [c for c in d.connections() if c.get("state") == "tunnel"]
        assert len(conns) == 1, d.connections()
        data = os.urandom(1 << 20)
        got = bytearray(rest)

        def reader():
            while True:
                b = s.recv(65536)
                if not b:
                    return
                got.extend(b)

        t = threading.Thread(target=reader)
        t.start()
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        t.join(15)
        assert not t.is_alive()
        assert bytes(got) == data
    finally:
        s.close()
    sl.wait_until(
        lambda: not [c for c in d.connections() if c.get("state") == "tunnel"],
        5,
        what="the tunnel closed",
    )
    # Declined (no Upgrade: echo): an ordinary answer on a kept-alive connection.
    s = topo.app.connect(VIP_WEB, 80)
    try:
        f = s.makefile("rb")
        s.sendall(b"GET /upgrade HTTP/1.1\r\nHost: web\r\nUpgrade: other\r\nConnection: upgrade\r\n\r\n")
        assert read_response(f)[0] == 426
        s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        assert read_response(f)[0] == 200
    finally:
        s.close()


def test_malformed_pipelined_request_after_a_long_response(env):
    """A valid request for 3 MB, and pipelined behind it a malformed one: the
    whole response arrives, then the 400, then shuntd's FIN. Closing with
    the client's bytes unread would make the kernel reset the connection and
    drop the tail of the response (issue 14, D4)."""
    topo, d = env
    n = 3_000_000
    s = topo.app.connect(VIP_WEB, 80, timeout=10)
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: web\r\n\r\n" % n
                  + b"GET /x HTTP/1.1\r\nHost: web\r\nContent-Length: 5, 6\r\n\r\n")
        # A reader slower than the backend: shuntd has the 400 ready long
        # before the response is out.
        got = bytearray()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                b = s.recv(16384)
            except ConnectionResetError:
                pytest.fail("reset after %d bytes" % len(got))
            if not b:
                break
            got += b
            time.sleep(0.001)  # a slow reader: the pace is what is tested
    finally:
        s.close()
    head, _, rest = bytes(got).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), head[:200]
    body = bytearray()
    while True:
        line, _, rest = rest.partition(b"\r\n")
        size = int(line.split(b";")[0], 16)
        if size == 0:
            rest = rest.partition(b"\r\n")[2]
            break
        body += rest[:size]
        rest = rest[size + 2:]
    assert len(body) == n, len(body)
    assert rest.startswith(b"HTTP/1.1 400"), rest[:200]


def backend_view(topo, request):
    """The backend's JSON account of one raw request sent through shuntd."""
    out = raw(topo, VIP_WEB, request)
    head, _, body = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200"), out[:300]
    return json.loads(body)


def test_requests_normalised_or_refused(env):
    """What a client could use to confuse the server or claim an identity is
    normalised or refused, not forwarded as sent (issue 14, D11)."""
    topo, _ = env
    # Identity claims only a sidecar may make do not leave the pod.
    v = backend_view(topo, b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close\r\n"
                     b"X-Forwarded-Client-Cert: By=spiffe://cluster.local/ns/x/sa/admin\r\n\r\n")
    assert "x-forwarded-client-cert" not in v["headers"], v
    # An absolute-form target: origin form, Host from the target's authority.
    v = backend_view(topo, b"GET http://web.default:80/p?q=1 HTTP/1.1\r\nHost: evil\r\n"
                     b"Connection: close\r\n\r\n")
    assert v["path"] == "/p?q=1" and v["headers"]["host"] == "web.default:80", v
    # A Content-Length list goes out as one value.
    v = backend_view(topo, b"POST / HTTP/1.1\r\nHost: web\r\nContent-Length: 5, 5\r\n"
                     b"Connection: close\r\n\r\nhello")
    assert v["headers"]["content-length"] == "5" and v["body_len"] == 5, v
    # An h2c upgrade is not passed on: the request is answered in HTTP/1.1.
    v = backend_view(topo, b"GET / HTTP/1.1\r\nHost: web\r\nConnection: Upgrade, HTTP2-Settings, "
                     b"close\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n")
    assert "upgrade" not in v["headers"] and "http2-settings" not in v["headers"], v
    # A request id the client declares hop-by-hop is replaced by a new one.
    v = backend_view(topo, b"GET / HTTP/1.1\r\nHost: web\r\nConnection: close, X-Request-ID\r\n"
                     b"X-Request-ID: client-id\r\n\r\n")
    rid = v["headers"].get("x-request-id", "")
    assert rid and rid != "client-id", v
    # Refused: userinfo in Host, CONNECT, framing fields in a trailer.
    for req, status in (
        (b"GET / HTTP/1.1\r\nHost: web@evil\r\n\r\n", b"400"),
        (b"CONNECT web:80 HTTP/1.1\r\nHost: web:80\r\n\r\n", b"501"),
        (b"POST / HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
         b"5\r\nhello\r\n0\r\nContent-Length: 500\r\n\r\n", b"400"),
    ):
        out = raw(topo, VIP_WEB, req)
        assert out.startswith(b"HTTP/1.1 " + status), (req, out[:300])
