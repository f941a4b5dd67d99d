# SPDX-License-Identifier: Apache-2.0
"""gRPC: a grpc-status that is not 1-3 digits is UNKNOWN, never a code
made of its characters ("0>" once read as 14, UNAVAILABLE, which counts
against the endpoint). The upstream is a raw HTTP/2 server written here;
curl sends the call."""

import pytest

import shuntlib as sl
from shuntlib import Topology as T

VIP = "10.96.7.50"
PORT = 8094


def literal(name, value):
    """HPACK literal without indexing, new name, no Huffman."""
    return b"\x00" + bytes([len(name)]) + name + bytes([len(value)]) + value


def recv_frame(conn, buf):
    while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
        chunk = conn.recv(65536)
        if not chunk:
            return None, buf
        buf += chunk
    n = int.from_bytes(buf[:3], "big")
    return (buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF), buf[9 + n :]


class OddStatusServer(sl.ThreadedServer):
    """Answers every stream with :status 200 and a grpc-status trailer of
    STATUS."""

    STATUS = b"0>"

    def __init__(self, pod):
        super().__init__(pod, T.REMOTE4, PORT, backlog=8)

    def serve(self, conn, n):
        conn.settimeout(10)
        buf = b""
        while len(buf) < 24:
            chunk = conn.recv(65536)
            if not chunk:
                return
            buf += chunk
        buf = buf[24:]  # the client preface
        conn.sendall(sl.h2_frame(4, 0, 0))
        while True:
            f, buf = recv_frame(conn, buf)
            if f is None:
                return
            ftype, flags, sid = f
            if ftype == 4 and not flags & 1:
                conn.sendall(sl.h2_frame(4, 1, 0))
            elif ftype == 1:
                head = b"\x88" + literal(b"content-type", b"application/grpc")
                conn.sendall(
                    sl.h2_frame(1, 0x4, sid, head)
                    + sl.h2_frame(1, 0x5, sid, literal(b"grpc-status", self.STATUS))
                )


@pytest.fixture(scope="module")
def env():
    topo = T()
    server = None
    daemon = None
    try:
        topo.route_vips()
        server = OddStatusServer(topo.remote)
        reg = {"services": [sl.service("odd", VIP, PORT, [T.REMOTE4], protocol="GRPC")]}
        daemon = sl.Shuntd(
            topo.app,
            sl.shuntd_args(
                **{"service-discovery.file.path": sl.registry_file(reg), "log-level": "info"}
            ),
        ).wait_ready()
        yield topo, daemon
    finally:
        try:
            sl.stop_checked([daemon] if daemon else [])
        finally:
            if server:
                server.close()
            topo.delete()


def test_malformed_grpc_status_is_unknown(env):
    topo, d = env
    unknown = d.metric("shunt_grpc_requests_total", code="UNKNOWN", default=0)
    unavailable = d.metric("shunt_grpc_requests_total", code="UNAVAILABLE", default=0)
    for _ in range(3):
        r = topo.app.curl(
            [
                "--http2-prior-knowledge",
                "-i",
                "-H",
                "content-type: application/grpc",
                "-H",
                "te: trailers",
                "http://%s:80/svc/Method" % VIP,
            ],
            timeout=10,
        )
        assert r.stdout.startswith("HTTP/2 200"), r.stdout + r.stderr
        assert "grpc-status: 0>" in r.stdout, r.stdout
    d.wait_metric(
        "shunt_grpc_requests_total", lambda v: v >= unknown + 3, timeout=5, code="UNKNOWN"
    )
    assert d.metric("shunt_grpc_requests_total", code="UNAVAILABLE", default=0) == unavailable
