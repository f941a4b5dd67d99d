# SPDX-License-Identifier: Apache-2.0
"""Bad input: a bad configuration stops start-up with one clear line and
exit code 2; bad bytes and bad peers on the data path get a clear log line
and nothing else breaks."""

import os
import signal
import socket
import struct

import pytest

import shuntlib as sl
from shuntlib import Topology as T


@pytest.fixture(scope="module")
def lone_pod():
    """A pod with only lo, for daemons that must refuse to start."""
    p = sl.Pod("cfg")
    try:
        yield p
    finally:
        p.delete()


def run_bad(pod, args, config_text=None):
    """Runs shuntd expecting it to refuse its configuration."""
    argv = [sl.SHUNTD]
    if config_text is not None:
        path = os.path.join(sl.tmpdir(), "bad.json")
        with open(path, "w") as f:
            f.write(config_text)
        argv += ["--config", path]
    argv += list(args)
    p = pod.run(argv, timeout=20, check=False)
    return p


BAD_CONFIGS = [
    # (id, flags, file contents, words the error line must contain)
    ("malformed-json", [], '{"inbound_port": 15001,, }', ["config"]),
    ("truncated-json", [], '{"timeouts": {"connect": "5s"', ["config"]),
    ("port-out-of-range-flag", ["--inbound-port", "70000"], None, ["inbound", "70000"]),
    ("port-zero-file", [], '{"outbound_port": 0}', ["outbound_port", "0"]),
    ("port-negative", ["--admin-port", "-1"], None, ["admin", "-1"]),
    ("unknown-key-file", [], '{"inbound_port": 15001, "no_such_key": 1}', ["no_such_key"]),
    ("unknown-nested-key", [], '{"timeouts": {"conect": "5s"}}', ["conect"]),
    ("unknown-flag", ["--no-such-flag", "1"], None, ["no-such-flag"]),
    ("bad-duration", ["--drain-timeout", "banana"], None, ["drain", "banana"]),
    ("bad-redirect", ["--redirect", "sideways"], None, ["redirect", "sideways"]),
    ("bad-workers", ["--workers", "100000"], None, ["workers", "100000"]),
    ("bad-cidr", ["--exclude-outbound-cidrs", "10.0.0.0/33"], None, ["10.0.0.0/33"]),
    ("wrong-type", [], '{"inbound_port": "many"}', ["inbound_port"]),
    ("missing-file", ["--config", "/nonexistent/shunt.json"], None, ["/nonexistent/shunt.json"]),
]


@pytest.mark.parametrize("flags,text,words", [c[1:] for c in BAD_CONFIGS], ids=[c[0] for c in BAD_CONFIGS])
def test_bad_config_exits_2_with_one_line(lone_pod, flags, text, words):
    p = run_bad(lone_pod, flags, text)
    lines = [l for l in p.stderr.splitlines() if l.strip()]
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert len(lines) == 1, p.stderr
    assert lines[0].startswith("config: "), lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])
    # Nothing was set up on the way.
    assert "SIDECAR_PROXY" not in lone_pod.iptables_save()
    assert "SIDECAR_PROXY" not in lone_pod.iptables_save(v6=True)


def accepted(d):
    return d.metric("shunt_connections_accepted_total", default=0.0, direction="outbound")


def proto_count(d, proto):
    return d.metric("shunt_protocol_detected_total", default=0.0, protocol=proto)


@pytest.mark.parametrize(
    "payload",
    [
        bytes([0x00, 0xFF, 0x13, 0x37]) + os.urandom(200),
        b"\x16\x03\x01\x00\x05hello",  # a TLS record header, then not a ClientHello
        b"GET\x00\xff not http at all\r\n\r\n",
        b"G\x00\x01\x02\r\n\r\n",  # starts like GET, is not
        b"\x00" * 3,
    ],
    ids=["binary", "fake-tls", "broken-http", "almost-get", "three-zeros"],
)
def test_garbage_before_protocol_is_relayed_as_tcp(topo, shuntd, payload):
    """Bytes that match no protocol are relayed unchanged, as TCP."""
    before = accepted(shuntd)
    tcp_before = proto_count(shuntd, "tcp")
    s = topo.app.connect(T.REMOTE4, 7000)
    try:
        assert sl.echo(s, payload) == payload
        assert sl.echo(s, b"and more") == b"and more"
    finally:
        s.close()
    assert accepted(shuntd) == before + 1
    sl.wait_until(lambda: proto_count(shuntd, "tcp") == tcp_before + 1, 5, what="sniffed as tcp")


def test_silent_client_is_relayed_after_detection_timeout(topo, shuntd):
    """A client that sends nothing: after protocol_detection_timeout the
    connection is TCP; a server-first greeting arrives; later bytes flow."""
    tcp_before = proto_count(shuntd, "tcp")
    s = topo.app.connect(T.REMOTE4, 2525)
    try:
        assert sl.recv_line(s, timeout=3) == b"220 greet ready\r\n"
        # Default detection timeout is 100 ms; well past it:
        sl.wait_until(lambda: proto_count(shuntd, "tcp") == tcp_before + 1, 5, what="tcp verdict")
        c = [x for x in shuntd.connections() if sl.hostport(x["original_dst"]) == (T.REMOTE4, 2525)]
        assert len(c) == 1 and c[0]["protocol"] == "tcp", c
        # Client-first after the verdict: an HTTP request is still relayed
        # byte for byte (the verdict stays tcp).
        req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        assert sl.echo(s, req) == req
    finally:
        s.close()
    s = topo.app.connect(T.REMOTE4, 7000)
    try:
        # Quiet past the detection timeout: the verdict (tcp) comes first.
        sl.wait_until(lambda: proto_count(shuntd, "tcp") == tcp_before + 2, 5,
                      what="tcp verdict for the quiet echo client")
        assert sl.echo(s, b"late") == b"late"
    finally:
        s.close()


def test_client_that_sends_nothing_and_closes(topo, shuntd):
    before = accepted(shuntd)
    for _ in range(5):
        s = topo.app.connect(T.REMOTE4, 7000)
        s.close()
    # shuntd accepts asynchronously: the last connect may still be queued.
    sl.wait_until(lambda: accepted(shuntd) == before + 5, 5, what="5 connections accepted")
    sl.wait_until(lambda: shuntd.connections() == [], 5, what="silent connections freed")
    assert sl.echo(topo.app.connect(T.REMOTE4, 7000), b"ok") == b"ok"


def conn_end(shuntd, client, end):
    """The access line of the connection from client ("addr:port") names
    how it ended."""
    lines = sl.wait_until(
        lambda: [l for l in shuntd.access_lines("tcp") if l.get("client") == client],
        5,
        what="the access line of " + client,
    )
    assert len(lines) == 1 and lines[0]["end"] == end, lines


def test_upstream_reset_mid_stream(topo, shuntd):
    """The server sends 64 KiB then resets (SO_LINGER 0). The client sees a
    reset too (an EOF would make the truncated data look complete), shuntd
    logs this connection's end as upstream_reset and serves others."""
    s = topo.app.socket()
    s.bind((T.APP4, 0))
    me = "%s:%d" % s.getsockname()[:2]
    got = 0
    ended = None
    try:
        s.settimeout(10)
        try:
            s.connect((T.REMOTE4, 7200))
        except ConnectionResetError:
            # shuntd relayed the server's bytes and reset before this thread
            # saw its handshake complete: the reset is what the client gets.
            ended = "reset"
        while ended is None:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                ended = "reset"
                break
            if not chunk:
                ended = "eof"
                break
            got += len(chunk)
    finally:
        s.close()
    assert ended == "reset"
    assert got <= 65536
    conn_end(shuntd, me, "upstream_reset")
    shuntd.wait_metric("shunt_errors_total", lambda v: v >= 1, reason="upstream_reset")
    # Others are served.
    s2 = topo.app.connect(T.REMOTE4, 7000)
    try:
        assert sl.echo(s2, b"still serving") == b"still serving"
    finally:
        s2.close()
    sl.wait_until(lambda: shuntd.connections() == [], 5, what="connections freed")


def test_client_reset_mid_stream(topo, shuntd):
    """A client that resets while data is in flight: shuntd logs it,
    frees the connection, and serves others."""
    s = topo.app.connect(T.REMOTE4, 7000)
    me = "%s:%d" % s.getsockname()[:2]
    s.sendall(os.urandom(512 * 1024))
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    sl.wait_until(lambda: shuntd.connections() == [], 10, what="reset connection freed")
    conn_end(shuntd, me, "client_reset")
    s2 = topo.app.connect(T.REMOTE4, 7000)
    try:
        assert sl.echo(s2, b"still serving") == b"still serving"
    finally:
        s2.close()
    assert shuntd.alive()


def test_connect_refused_upstream(topo, shuntd):
    """No server at the original destination: the client's connection is
    closed, the error is counted and logged, shuntd keeps serving."""
    n_lines = len(shuntd.log_lines())
    # shuntd accepted before it knew; it then resets or closes the client,
    # which may already show in connect().
    try:
        s = topo.app.connect(T.REMOTE4, 7999)
        try:
            s.settimeout(10)
            assert s.recv(10) == b""
        finally:
            s.close()
    except ConnectionResetError:
        pass
    sl.wait_until(
        lambda: [l for l in shuntd.access_lines("tcp")
                 if l["destination"].endswith(":7999") and l["end"] == "connect_refused"],
        5,
        what="an access line naming the refused destination",
    )
    shuntd.wait_metric("shunt_errors_total", lambda v: v >= 1, reason="connect_refused")
    assert sl.echo(topo.app.connect(T.REMOTE4, 7000), b"ok") == b"ok"


def test_sigkill_of_a_peer_does_not_hurt_shuntd(topo, shuntd):
    """A server process killed with connections open: the client connection
    ends, shuntd keeps serving the other servers."""
    p = topo.remote.spawn_peer("echo", "doomed", ["%s:7300" % T.REMOTE4])
    s = topo.app.connect(T.REMOTE4, 7300)
    try:
        assert sl.echo(s, b"a") == b"a"
        p.stop(signal.SIGKILL)
        s.settimeout(10)
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass
    finally:
        s.close()
    assert sl.echo(topo.app.connect(T.REMOTE4, 7000), b"ok") == b"ok"
    assert shuntd.alive()


def test_max_connections_sheds_load_and_says_so(fresh_topo, start_shuntd):
    """At max_connections a new connection is refused at once (not queued),
    counted and logged; existing ones keep working; after one closes, new
    connections are accepted again."""
    topo = fresh_topo
    sl.spawn_remote_peers(topo, {}, ["echo"])
    d = start_shuntd(topo.app, sl.shuntd_args(**{"max-connections": "3"}))
    held = [topo.app.connect(T.REMOTE4, 7000) for _ in range(3)]
    try:
        for i, s in enumerate(held):
            assert sl.echo(s, b"held %d" % i) == b"held %d" % i
        # shuntd accepts and resets at once: the reset may already reach the
        # client's connect(), or only its first send or receive.
        try:
            extra = topo.app.connect(T.REMOTE4, 7000)
            extra.settimeout(10)
            try:
                extra.sendall(b"x")
                assert extra.recv(10) == b""
            finally:
                extra.close()
        except (ConnectionResetError, BrokenPipeError):
            pass
        d.wait_metric("shunt_connections_rejected_total", lambda v: v == 1)
        d.wait_metric("shunt_connections_closed_total", lambda v: v == 1, reason="overload")
        assert [l for l in d.log_lines() if "max_connections (3) reached" in l.get("msg", "")]
        for i, s in enumerate(held):
            assert sl.echo(s, b"still %d" % i) == b"still %d" % i
    finally:
        held.pop().close()
    try:
        sl.wait_until(lambda: d.json("/status")["connections"]["active"] == 2, 5,
                      what="one connection freed")
        s = topo.app.connect(T.REMOTE4, 7000)
        assert sl.echo(s, b"again") == b"again"
        s.close()
    finally:
        for s in held:
            s.close()
