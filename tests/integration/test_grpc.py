# SPDX-License-Identifier: Apache-2.0
"""gRPC through shuntd, request by request: python3-grpcio clients in the
app pod call three grpcio servers (grpcpeer.py) in the remote pod through a
service's virtual address. Every call is an HTTP/2 stream and gets its own
endpoint, so calls over one channel spread; failures come back as gRPC
status in trailers, never as a broken connection; a frame flood closes only
the flooding connection."""

import json
import os
import signal
import socket
import struct
import sys
import threading

import pytest

import shuntlib as sl
from shuntlib import Topology as T

GRPCPEER = os.path.join(sl.HERE, "grpcpeer.py")
VIP = "10.96.0.20"  # GRPC declared on the port
VIP_SNIFF = "10.96.0.21"  # nothing declared: sniffed as gRPC
VIP_DOWN = "10.96.0.22"  # endpoints with nothing listening
VIP_STALL = "10.96.0.23"  # an endpoint that accepts and then reads nothing
STALL_PORT = 50060
VIP_RESET = "10.96.0.24"  # an endpoint that accepts and then resets
VIP_DIE = "10.96.0.27"  # one server, killed in the middle of a call
DIE_PORT = 50080
VIP_EMPTY = "10.96.0.25"  # no endpoints at all, GRPC declared
VIP_EMPTY_SNIFF = "10.96.0.26"  # no endpoints at all, sniffed
RESET_PORT = 50070
EP_ADDRS = sl.EP_ADDRS
PORT = 50051
DEAD_PORT = 50099
FLOOD_LIMIT = 200


def service(name, vip, port, protocol=None, addrs=EP_ADDRS, **extra):
    return sl.service(name, vip, port, addrs, protocol, port_name="grpc", **extra)


def grpc_server(pod, name, addr, port=PORT):
    return pod.spawn_ready(
        [sys.executable, GRPCPEER, "server", "--name", name, "--listen", "%s:%d" % (addr, port)],
        "grpc-" + name,
        20,
        what="grpc server " + name,
    )


@pytest.fixture(scope="module")
def env():
    topo = T()
    daemon = None
    try:
        topo.add_remote4()
        topo.route_vips()
        servers = [grpc_server(topo.remote, "ep%d" % i, a) for i, a in enumerate(EP_ADDRS)]
        servers.append(grpc_server(topo.remote, "dies", T.REMOTE4B, DIE_PORT))
        topo.remote.spawn_peer(
            "stall", "stalled", ["%s:%d" % (T.REMOTE4, STALL_PORT)], extra=["--stall", "120"]
        )
        topo.remote.spawn_peer(
            "reset", "resetting", ["%s:%d" % (T.REMOTE4, RESET_PORT)], extra=["--reset-after", "0"]
        )
        path = sl.registry_file(
            {
                "services": [
                    # passive ejection short: a restarted server is back in a test's wait
                    service("greeter", VIP, PORT, "GRPC", health_check={"ejection_time": "1s"}),
                    service("greeter-sniffed", VIP_SNIFF, PORT),
                    service("greeter-down", VIP_DOWN, DEAD_PORT, "GRPC"),
                    service("greeter-stalled", VIP_STALL, STALL_PORT, "GRPC", [T.REMOTE4]),
                    service("greeter-reset", VIP_RESET, RESET_PORT, "GRPC", [T.REMOTE4]),
                    service("greeter-empty", VIP_EMPTY, PORT, "GRPC", []),
                    service("greeter-die", VIP_DIE, DIE_PORT, "GRPC", [T.REMOTE4B]),
                    service("greeter-empty-sniffed", VIP_EMPTY_SNIFF, PORT, None, []),
                ]
            }
        )
        daemon = sl.Shuntd(
            topo.app,
            sl.shuntd_args(
                **{
                    "service-discovery.file.path": path,
                    "http2.max-control-frames-per-second": str(FLOOD_LIMIT),
                    "log-level": "debug",
                    # a restarted server is back in rotation within a test's wait
                    "circuit-breaker.open-timeout": "500ms",
                    "outlier-detection.base-ejection-time": "500ms",
                }
            ),
        ).wait_ready()
        yield topo, daemon, servers
    finally:
        # Under ASan/UBSan (build-asan) a leak or memory error shows here.
        sl.teardown(topo, [daemon])


def client(topo, vip, *args, timeout=120):
    r = topo.app.run(
        [sys.executable, GRPCPEER, "client", "--target", "%s:80" % vip] + [str(a) for a in args],
        timeout=timeout,
        check=False,
    )
    if r.returncode != 0:
        raise sl.HarnessError("grpc client failed (%d): %s %s" % (r.returncode, r.stdout, r.stderr))
    return json.loads(r.stdout)


def metric(d, name, **labels):
    return d.metric(name, default=0.0, **labels)


def test_unary_calls_over_one_channel_spread(env):
    topo, d, _ = env
    conns = metric(d, "shunt_http2_connections_total")
    ok = metric(d, "shunt_grpc_requests_total", code="OK")
    out = client(topo, VIP, "unary", "--n", 300, "--size", 2000)
    assert out["codes"] == {"OK": 300}, out
    # Round robin per call: 100 each, give or take the other worker's cursor.
    assert sorted(out["servers"]) == ["ep0", "ep1", "ep2"], out
    assert all(90 <= n <= 110 for n in out["servers"].values()), out
    assert metric(d, "shunt_http2_connections_total") == conns + 1
    assert metric(d, "shunt_grpc_requests_total", code="OK") == ok + 300
    assert metric(d, "shunt_http2_upstream_sessions_total", event="opened") >= 3


def test_sniffed_grpc_port_is_proxied_per_call(env):
    topo, d, _ = env
    out = client(topo, VIP_SNIFF, "unary", "--n", 30)
    assert out["codes"] == {"OK": 30}, out
    assert len(out["servers"]) == 3, out


def test_bidi_streams_spread_and_keep_their_endpoint(env):
    """30 bidirectional calls on one channel, 8 ping-pong messages of 200 KB
    each (several stream windows): every byte arrives intact, each call
    stays on one endpoint, the calls spread over all three."""
    topo, d, _ = env
    out = client(topo, VIP, "bidi", "--calls", 30, "--messages", 8, "--size", 200000)
    assert out["codes"] == {"OK": 30}, out
    for seen in out["calls"]:
        assert len(seen) == 8 and len(set(seen)) == 1, seen
    assert sorted(out["servers"]) == ["ep0", "ep1", "ep2"], out
    assert all(n >= 6 for n in out["servers"].values()), out
    assert metric(d, "shunt_http2_streams_active") == 0


def test_killed_backend_is_retried_around(env):
    """One of three servers killed: the session to it dies, new calls that
    pick it fail to connect and are retried on the others before anything
    was sent, so every call succeeds; passive health then takes it out.
    Two calls at a time: the retry budget allows 3 retries in flight
    (retries.budget_min), and every call holds at most one."""
    topo, d, servers = env
    retries = metric(d, "shunt_http2_stream_retries_total")
    servers[2].stop(signal.SIGKILL)
    try:
        out = client(topo, VIP, "--parallel", 2, "unary", "--n", 90)
        assert out["codes"] == {"OK": 90}, out
        assert "ep2" not in out["servers"] and len(out["servers"]) == 2, out
        assert metric(d, "shunt_http2_stream_retries_total") > retries
        assert metric(d, "shunt_http2_upstream_sessions_total", event="failed") >= 1
    finally:
        # back in rotation before the next test, whichever runs next
        servers[2] = grpc_server(topo.remote, "ep2", EP_ADDRS[2])
        sl.wait_until(lambda: "ep2" in client(topo, VIP, "unary", "--n", 6)["servers"], 15,
                      what="ep2 back")


def test_upstream_dying_mid_call_resets_that_call(env):
    """A bidirectional call got its first reply, then its server dies: the
    call ends with an error at once (the stream is reset towards the client,
    its connection stays), not a hang until the deadline."""
    topo, d, servers = env
    resets = metric(d, "shunt_http2_stream_resets_total")
    c = topo.app.spawn(
        [sys.executable, GRPCPEER, "client", "--target", "%s:80" % VIP_DIE, "--timeout", "30",
         "bidi", "--calls", "1", "--messages", "3", "--pause-ms", "3000"],
        "grpc-client-die",
        stdout_pipe=True,
    )
    try:
        sl.wait_until(
            lambda: metric(d, "shunt_http2_streams_active") >= 1,
            10,
            what="the call open",
        )
        # the first reply is back; the client pauses 3 s before the next
        sl.wait_until(lambda: "bidi reply 0 " in c.read_stderr(), 10, what="the first reply")
        servers[3].stop(signal.SIGKILL)
        line = c.readline(20)
    finally:
        c.stop()
    out = json.loads(line)
    assert out["codes"] in ({"INTERNAL": 1}, {"UNAVAILABLE": 1}), out
    assert out["calls"] == [["dies"]], out
    assert metric(d, "shunt_http2_stream_resets_total") == resets + 1


def test_all_endpoints_down_is_unavailable_not_a_hang(env):
    topo, d, _ = env
    before = metric(d, "shunt_http2_local_responses_total", status="503")
    # A 20 s deadline: a hang would surface as DEADLINE_EXCEEDED.
    out = client(topo, VIP_DOWN, "--timeout", 20, "unary", "--n", 10)
    assert out["codes"] == {"UNAVAILABLE": 10}, out
    assert any("refused" in x or "no endpoint" in x for x in out["details"]), out
    assert metric(d, "shunt_http2_local_responses_total", status="503") >= before + 10
    assert metric(d, "shunt_grpc_requests_total", code="UNAVAILABLE") >= 10
    # The good service is unaffected.
    assert client(topo, VIP, "unary", "--n", 6)["codes"] == {"OK": 6}


@pytest.mark.parametrize("vip", [VIP_EMPTY, VIP_EMPTY_SNIFF])
def test_service_without_endpoints_is_unavailable(env, vip):
    """A known service with no endpoint at all: the connection is still taken
    (declared, or sniffed as gRPC) and every call gets UNAVAILABLE."""
    topo, d, _ = env
    out = client(topo, vip, "--timeout", 20, "unary", "--n", 5)
    assert out["codes"] == {"UNAVAILABLE": 5}, out
    assert all("no endpoint" in x for x in out["details"]), out


def test_upstream_reset_before_response_is_unavailable(env):
    """The only endpoint accepts, then resets the connection before any
    response: each call gets UNAVAILABLE with the reason, the client's
    connection stays up for the next calls."""
    topo, d, _ = env
    out = client(topo, VIP_RESET, "--parallel", 1, "unary", "--n", 3)
    assert out["codes"] == {"UNAVAILABLE": 3}, out
    assert all("upstream" in x for x in out["details"]), out
    assert metric(d, "shunt_http2_upstream_sessions_total", event="failed") >= 1


def grpc_frame(payload):
    return struct.pack(">BI", 0, len(payload)) + payload


def test_deadline_shorter_than_slow_backend(env):
    """A 300 ms deadline against a backend that takes 3 s: the client gets
    DEADLINE_EXCEEDED (from whichever deadline fires first: grpcio servers
    enforce grpc-timeout too), and the connection stays usable."""
    topo, d, _ = env
    out = client(topo, VIP, "--timeout", 0.3, "unary", "--n", 4, "--sleep-ms", 3000)
    assert out["codes"] == {"DEADLINE_EXCEEDED": 4}, out
    assert client(topo, VIP, "unary", "--n", 6)["codes"] == {"OK": 6}


def nghttp_grpc(topo, vip, timeout_header, sleep_ms=0):
    body = os.path.join(sl.tmpdir(), "req.bin")
    with open(body, "wb") as f:
        f.write(grpc_frame(b"hello"))
    return topo.app.run(
        [
            "nghttp", "-v", "-d", body,
            "-H", "content-type: application/grpc",
            "-H", "te: trailers",
            "-H", "grpc-timeout: " + timeout_header,
            "-H", "x-sleep-ms: %d" % sleep_ms,
            "http://%s:80/shunt.Test/Unary" % vip,
        ],
        timeout=30,
        check=False,
    ).stdout


def test_deadline_enforced_by_shuntd(env):
    """A backend that accepted the connection but never answers (it reads
    nothing): only shuntd can end the call, with DEADLINE_EXCEEDED in a
    trailers-only response when grpc-timeout elapses. nghttp sends the
    header without enforcing a deadline of its own."""
    topo, d, _ = env
    before = metric(d, "shunt_grpc_requests_total", code="DEADLINE_EXCEEDED")
    local = metric(d, "shunt_http2_local_responses_total", status="504")
    out = nghttp_grpc(topo, VIP_STALL, "300m")
    assert "grpc-status: 4" in out, out[-3000:]
    assert "grpc-message: deadline of 300 ms" in out, out[-3000:]
    assert "END_STREAM | END_HEADERS" in out, out[-3000:]  # trailers-only
    assert metric(d, "shunt_grpc_requests_total", code="DEADLINE_EXCEEDED") == before + 1
    assert metric(d, "shunt_http2_local_responses_total", status="504") == local + 1
    # A deadline long enough passes.
    assert "grpc-status: 0" in nghttp_grpc(topo, VIP, "5S", 100)


PREFACE, frame = sl.H2_PREFACE, sl.h2_frame


def read_frames(sock, limit=1 << 22, timeout=15):
    """Frames the server sent until it closed: [(type, flags, sid, payload)]."""
    sock.settimeout(timeout)
    buf = b""
    try:
        while len(buf) < limit:
            b = sock.recv(65536)
            if not b:
                break
            buf += b
    except (ConnectionResetError, socket.timeout):
        pass
    return sl.h2_frames(buf)


@pytest.mark.parametrize(
    "kind",
    ["ping", "settings", "empty_data", "rst"],
)
def test_frame_flood_closes_only_that_connection(env, kind):
    topo, d, _ = env
    floods = metric(d, "shunt_http2_connections_closed_total", reason="flood")
    s = topo.app.connect(VIP, 80)
    frames = []
    reader = threading.Thread(target=lambda: frames.extend(read_frames(s)))
    reader.start()
    # A parallel well-behaved client, on its own connection.
    good = {}
    gt = threading.Thread(target=lambda: good.update(client(topo, VIP, "unary", "--n", 60)))
    gt.start()
    try:
        s.sendall(PREFACE + frame(4, 0, 0))
        n = FLOOD_LIMIT * 20
        if kind == "ping":
            burst = frame(6, 0, 0, b"12345678") * n
        elif kind == "settings":
            burst = frame(4, 0, 0) * n
        elif kind == "empty_data":
            # One open stream (a literal-only HPACK block), then empty DATA frames.
            hdrs = b"".join(
                bytes([0, len(k)]) + k + bytes([len(v)]) + v
                for k, v in [
                    (b":method", b"POST"),
                    (b":scheme", b"http"),
                    (b":path", b"/shunt.Test/Unary"),
                    (b":authority", b"x"),
                    (b"content-type", b"application/grpc"),
                ]
            )
            burst = frame(1, 4, 1, hdrs) + frame(0, 0, 1) * n
        else:
            hdrs = b"".join(
                bytes([0, len(k)]) + k + bytes([len(v)]) + v
                for k, v in [
                    (b":method", b"GET"),
                    (b":scheme", b"http"),
                    (b":path", b"/"),
                    (b":authority", b"x"),
                ]
            )
            burst = b"".join(
                frame(1, 5, sid, hdrs) + frame(3, 0, sid, struct.pack(">I", 8))
                for sid in range(1, 2 * n, 2)
            )
        try:
            s.sendall(burst)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us mid-flood: what we want
        reader.join(20)
    finally:
        s.close()
        gt.join(120)
    goaways = [f for f in frames if f[0] == 7]
    assert goaways, "no GOAWAY among %d frames" % len(frames)
    assert int.from_bytes(goaways[-1][3][4:8], "big") == 11, goaways  # ENHANCE_YOUR_CALM
    assert metric(d, "shunt_http2_connections_closed_total", reason="flood") == floods + 1
    assert good.get("codes") == {"OK": 60}, good
    assert d.alive()


# ---------------------------------------------------------------- through mTLS

WEB_ID = "spiffe://cluster.local/ns/default/sa/web"
VIP_MESH = "10.96.0.40"


@pytest.fixture(scope="module")
def mesh():
    """Two pods, each with shuntd, sharing one built-in CA: the app pod's
    registry gives the gRPC service a SPIFFE identity, so its HTTP/2 sessions
    to the endpoints run inside mutual TLS to the remote pod's shuntd, which
    relays them to the grpcio servers."""
    topo = T()
    daemons = []
    try:
        topo.route_vips()
        addrs = [T.REMOTE4, T.REMOTE4B]
        for i, a in enumerate(addrs):
            grpc_server(topo.remote, "ep%d" % i, a)
        tmp = sl.tmpdir()
        ca_dir = os.path.join(tmp, "ca")
        svc = service("greeter-mtls", VIP_MESH, PORT, "GRPC", addrs, identity=WEB_ID)
        reg = sl.registry_file({"services": [svc]}, tmp)
        a, b = sl.start_mtls_pair(
            topo, daemons, ca_dir, a_flags={"service-discovery.file.path": reg}
        )
        yield topo, a, b
    finally:
        sl.teardown(topo, daemons)


def handshakes(d, direction):
    lines = [
        l
        for l in d.metrics_text().splitlines()
        if l.startswith("shunt_tls_handshakes_total") and direction in l
    ]
    return float(lines[0].split()[-1]) if lines else 0.0


def test_grpc_inside_mutual_tls(mesh):
    """Calls over one channel spread over both endpoints, each upstream HTTP/2
    session is one TLS handshake shared by many calls, and the remote shuntd
    saw them arrive over TLS."""
    topo, a, b = mesh
    out = client(topo, VIP_MESH, "unary", "--n", 60, "--size", 5000)
    assert out["codes"] == {"OK": 60}, out
    assert sorted(out["servers"]) == ["ep0", "ep1"], out
    assert all(25 <= n <= 35 for n in out["servers"].values()), out
    out = client(topo, VIP_MESH, "bidi", "--calls", 6, "--messages", 4, "--size", 100000)
    assert out["codes"] == {"OK": 6}, out
    opened = metric(a, "shunt_http2_upstream_sessions_total", event="opened")
    hs = handshakes(a, "outbound")
    assert 2 <= hs <= opened, (hs, opened)
    assert opened < 66, opened  # sessions are shared, not one per call
    assert handshakes(b, "inbound") >= 2
