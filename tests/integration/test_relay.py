# SPDX-License-Identifier: Apache-2.0
"""The TCP relay: server-first protocols, half-close, many connections."""

import hashlib
import os
import selectors
import socket
import time

import pytest

import shuntlib as sl
from shuntlib import Topology as T


def test_server_first_not_delayed_by_sniffing(fresh_topo, start_shuntd):
    """With a 5 s detection timeout, a server that speaks first (like SMTP)
    still greets at once: shuntd connects upstream while it waits for the
    client's first bytes. A stall behind the sniffer would take 5 s."""
    topo = fresh_topo
    sl.spawn_remote_peers(topo, {}, ["greet"])
    d = start_shuntd(topo.app, sl.shuntd_args(protocol_detection_timeout="5s"))
    for host in (T.REMOTE4, T.REMOTE6):
        t0 = time.monotonic()
        s = topo.app.connect(host, 2525)
        try:
            # The client sends nothing before the greeting.
            line = sl.recv_line(s, timeout=2.0)
            took = time.monotonic() - t0
            assert line == b"220 greet ready\r\n"
            assert took < 2.0, took
            # After the greeting the client talks; the relay still works and
            # the connection went through shuntd.
            assert sl.echo(s, b"EHLO client\r\n") == b"EHLO client\r\n"
            c = [x for x in d.connections() if sl.hostport(x["original_dst"]) == (host, 2525)]
            assert len(c) == 1, d.connections()
        finally:
            s.close()
    assert d.metric("shunt_connections_accepted_total", direction="outbound") == 2


@pytest.mark.parametrize("family", ["v4", "v6"])
def test_half_close_delivers_all_bytes(topo, shuntd, family):
    """Client sends 5 MB then shutdown(SHUT_WR); the server reads to EOF and
    answers with the byte count and SHA-256, which must match."""
    host = T.REMOTE4 if family == "v4" else T.REMOTE6
    data = os.urandom(5 * 1024 * 1024)
    before = shuntd.metric("shunt_connections_accepted_total", direction="outbound")
    s = topo.app.connect(host, 7100, timeout=30)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = sl.recv_all(s, timeout=15)
    finally:
        s.close()
    assert reply == ("%d %s\n" % (len(data), hashlib.sha256(data).hexdigest())).encode()
    assert shuntd.metric("shunt_connections_accepted_total", direction="outbound") == before + 1


def test_half_close_other_direction(topo, shuntd):
    """The echo server half-closes after the client's EOF; the client still
    receives everything echoed before the FIN, then EOF."""
    data = os.urandom(256 * 1024)
    s = topo.app.connect(T.REMOTE4, 7000, timeout=30)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        got = sl.recv_all(s, timeout=15)
    finally:
        s.close()
    assert got == data


def test_thousand_concurrent_connections(topo, shuntd):
    """1,000 echo connections open at once through shuntd; each echoes its
    own message; afterwards no connection is left in shuntd."""
    n = 1000
    sl.raise_nofile(4 * n)
    acc_before = shuntd.metric("shunt_connections_accepted_total", direction="outbound")
    socks = topo.app.sockets(n)
    sel = selectors.DefaultSelector()
    try:
        for s in socks:
            s.setblocking(False)
            err = s.connect_ex((T.REMOTE4, 7000))
            assert err in (0, 115), os.strerror(err)  # EINPROGRESS
            sel.register(s, selectors.EVENT_WRITE)
        # Wait for every connect.
        pending = n
        deadline = time.monotonic() + 60
        while pending:
            assert time.monotonic() < deadline, "%d connects pending" % pending
            for key, _ in sel.select(1.0):
                s = key.fileobj
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                assert err == 0, os.strerror(err)
                sel.unregister(s)
                pending -= 1
        # All open at once, all through shuntd.
        sl.wait_until(
            lambda: shuntd.metric("shunt_connections_active", direction="outbound") >= n,
            30,
            what="%d active connections" % n,
        )
        assert len(shuntd.connections()) >= n

        msgs = {s: b"conn-%04d-%s\n" % (i, os.urandom(8).hex().encode()) for i, s in enumerate(socks)}
        got = {s: b"" for s in socks}
        for s in socks:
            s.sendall(msgs[s])
            sel.register(s, selectors.EVENT_READ)
        pending = n
        deadline = time.monotonic() + 60
        while pending:
            assert time.monotonic() < deadline, "%d echoes pending" % pending
            for key, _ in sel.select(1.0):
                s = key.fileobj
                chunk = s.recv(4096)
                assert chunk, "EOF before echo"
                got[s] += chunk
                if len(got[s]) >= len(msgs[s]):
                    sel.unregister(s)
                    pending -= 1
        for s in socks:
            assert got[s] == msgs[s]
    finally:
        sel.close()
        for s in socks:
            s.close()
    assert (
        shuntd.metric("shunt_connections_accepted_total", direction="outbound") == acc_before + n
    )
    # Every connection's state is freed.
    sl.wait_until(
        lambda: shuntd.metric("shunt_connections_active", direction="outbound") == 0
        and shuntd.connections() == [],
        30,
        what="no active connections left",
    )
    st = shuntd.json("/status")
    assert st["connections"]["active"] == 0


def test_idle_connection_survives_below_idle_timeout(fresh_topo, start_shuntd):
    """idle_timeout 2 s: a connection quiet for 1.2 s twice (2.4 s in all)
    is kept, as every byte restarts the timer; left quiet, it is closed no
    sooner than 2 s after its last byte. (The sleeps are the quiet periods
    under test, not waits for something.)"""
    topo = fresh_topo
    procs = sl.spawn_remote_peers(topo, {}, ["echo"])
    try:
        start_shuntd(topo.app, sl.shuntd_args(**{"timeouts.idle-timeout": "2s"}))
        s = topo.app.connect(T.REMOTE4, 7000)
        try:
            assert sl.echo(s, b"a") == b"a"
            for msg in (b"b", b"c"):
                time.sleep(1.2)  # quiet, below the timeout: what is tested
                assert sl.echo(s, msg) == msg
            last = time.monotonic()
            s.settimeout(10)
            try:
                assert s.recv(1) == b""
            except ConnectionResetError:
                pass
            quiet = time.monotonic() - last
            assert 1.9 <= quiet < 8, quiet
        finally:
            s.close()
    finally:
        for p in procs.values():
            p.stop()


def test_idle_timeout_closes_quiet_connection(fresh_topo, start_shuntd):
    topo = fresh_topo
    sl.spawn_remote_peers(topo, {}, ["echo"])
    d = start_shuntd(topo.app, sl.shuntd_args(**{"timeouts.idle-timeout": "1s"}))
    s = topo.app.connect(T.REMOTE4, 7000)
    try:
        assert sl.echo(s, b"a") == b"a"
        t0 = time.monotonic()
        # shuntd closes both sides after ~1 s of silence: the client sees EOF.
        s.settimeout(10)
        try:
            assert s.recv(1) == b""
        except ConnectionResetError:
            pass
        # Not before the timeout either (t0 comes a moment after the echo).
        assert 0.9 <= time.monotonic() - t0 < 8
    finally:
        s.close()
    sl.wait_until(lambda: d.connections() == [], 5, what="connection freed")


def _rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS for pid %d" % pid)


def test_backpressure_bounds_memory_for_a_slow_reader(topo, shuntd):
    """The server reads nothing for 4 s while the client pushes as fast as it
    can: shuntd must stop reading from the client (bounded buffers) instead of
    queueing, so the client is held back and shuntd's memory does not grow by
    more than a few buffers. Then the server drains and every byte arrives."""
    stall = topo.remote.spawn_peer(
        "stall", "stall", ["%s:7300" % T.REMOTE4], extra=["--stall", "4"]
    )
    try:
        pid = shuntd.proc.pid
        rss_before = _rss_kib(pid)
        s = topo.app.connect(T.REMOTE4, 7300, timeout=10)
        total = 64 * 1024 * 1024
        h = hashlib.sha256()
        chunk = os.urandom(1024 * 1024)
        sent = 0
        s.setblocking(False)
        deadline = time.monotonic() + 2.5
        while sent < total and time.monotonic() < deadline:
            try:
                n = s.send(chunk)
                h.update(chunk[:n])
                sent += n
            except BlockingIOError:
                time.sleep(0.01)
        held_back = sent
        rss_stalled = _rss_kib(pid)
        # Kernel socket buffers on three sockets can hold some MiB; shuntd
        # adds at most its two 64 KiB relay buffers. Unbounded queueing
        # would have taken all 64 MiB.
        assert held_back < total, "the client was never held back"
        assert rss_stalled - rss_before < 16 * 1024, (rss_before, rss_stalled)
        s.setblocking(True)
        s.settimeout(30)
        while sent < total:
            n = s.send(chunk[: min(len(chunk), total - sent)])
            h.update(chunk[:n])
            sent += n
        s.shutdown(socket.SHUT_WR)
        reply = sl.recv_all(s, timeout=30)
        s.close()
        assert reply == ("%d %s\n" % (total, h.hexdigest())).encode()
    finally:
        stall.stop()
