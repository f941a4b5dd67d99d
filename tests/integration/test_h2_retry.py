# SPDX-License-Identifier: Apache-2.0
"""HTTP/2: a stream answered by shuntd itself (timeouts.request ran out)
while it waited out a retry's backoff must not be sent upstream when the
backoff ends: the client has its answer. The client keeps its request
open (no END_STREAM), so the stream lives on after the answer."""

import socket
import time

import pytest

import shuntlib as sl
from shuntlib import Topology as T

VIP = "10.96.7.30"
DEAD_PORT = 8096  # nothing listens: every connect is refused


def request_headers(authority):
    """HPACK: POST (static 3), http (6), / (4), :authority literal (name 1)."""
    a = authority.encode()
    return b"\x83\x86\x84\x01" + bytes([len(a)]) + a


def read_frames(sock, until, stop=None):
    """(type, flags, stream) of every frame read before the time until (or
    up to the first frame for which stop is true)."""
    out, buf = [], b""
    while time.monotonic() < until and not (stop and any(stop(*f) for f in out)):
        sock.settimeout(max(0.01, until - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            break
        if not chunk:
            break
        buf += chunk
        while len(buf) >= 9:
            n = int.from_bytes(buf[:3], "big")
            if len(buf) < 9 + n:
                break
            out.append((buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF))
            buf = buf[9 + n :]
    return out


@pytest.fixture(scope="module")
def env():
    topo = T()
    daemon = None
    try:
        topo.route_vips()
        reg = {"services": [sl.service("dead", VIP, DEAD_PORT, [T.REMOTE4], protocol="HTTP2")]}
        daemon = sl.Shuntd(
            topo.app,
            sl.shuntd_args(
                **{
                    "service-discovery.file.path": sl.registry_file(reg),
                    "timeouts.request": "200ms",
                    "retries.backoff_base": "3s",
                    "retries.backoff_max": "3s",
                    "log-level": "info",
                }
            ),
        ).wait_ready()
        yield topo, daemon
    finally:
        sl.teardown(topo, [daemon])


def test_answered_stream_is_not_retried_after_its_backoff(env):
    topo, d = env
    opened = d.metric("shunt_http2_upstream_sessions_total", event="opened", default=0)
    s = topo.app.connect(VIP, 80)
    try:
        s.sendall(
            sl.H2_PREFACE
            + sl.h2_frame(4, 0, 0)  # SETTINGS
            + sl.h2_frame(1, 0x4, 1, request_headers(VIP))  # HEADERS, END_HEADERS, no END_STREAM
        )
        # The first attempt is refused, the retry waits its backoff (1.5 to
        # 3 s), the request timeout (0.2 s) answers 504 meanwhile.
        frames = read_frames(s, time.monotonic() + 1.4, stop=lambda t, _, sid: t == 1 and sid == 1)
        assert any(t == 1 and sid == 1 for t, _, sid in frames), frames
        assert d.metric("shunt_http2_local_responses_total", status="504") >= 1
        assert d.metric("shunt_http2_upstream_sessions_total", event="opened") == opened + 1
        # Past the end of the backoff, the stream still open on our side.
        read_frames(s, time.monotonic() + 3.5)
        assert d.metric("shunt_http2_upstream_sessions_total", event="opened") == opened + 1
    finally:
        s.close()
    d.wait_metric("shunt_http2_streams_active", lambda v: v == 0, timeout=10)
