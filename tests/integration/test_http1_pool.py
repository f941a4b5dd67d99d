# SPDX-License-Identifier: Apache-2.0
"""HTTP/1.1 upstream pool: a connection whose server sent its FIN after the
response (without Connection: close) while a slow client was still reading
that response must not be pooled: the FIN's edge is spent, the pool would
never see it, and the next request, a POST that cannot be re-sent, would
get a 502."""

import json
import socket
import time

import pytest

import shuntlib as sl
from shuntlib import Topology as T

VIP = "10.96.7.10"
PORT = 8097
BODY = 512 * 1024  # more than a slow client's socket buffers take
BUFFER = 1024 * 1024  # shuntd's buffer_size: the whole body fits


def read_request(conn):
    """One request head and its Content-Length body, or None at EOF."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(4096)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = 0
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == "content-length":
            length = int(v.strip())
    while len(body) < length:
        chunk = conn.recv(4096)
        if not chunk:
            break
        body += chunk
    return lines[0].split(" ")[0]


class FinServer(sl.ThreadedServer):
    """Answers one request per connection, then closes a moment later; no
    Connection: close is sent. GET gets BODY bytes, anything else a short
    JSON body and Connection: close. One connection at a time."""

    def __init__(self, pod):
        self.seen = []  # (connection number, method)
        super().__init__(pod, T.REMOTE4, PORT, threaded=False)

    def serve(self, conn, n):
        conn.settimeout(5)
        method = read_request(conn)
        if method is None:
            return
        self.seen.append((n, method))
        if method == "GET":
            body, close = b"x" * BODY, b""
        else:
            body = json.dumps({"conn": n, "method": method}).encode()
            close = b"Connection: close\r\n"  # never pooled: no race with the next
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), close, body))
        if method == "GET":
            time.sleep(0.3)  # shuntd has the whole body; the client not yet


@pytest.fixture(scope="module")
def env():
    topo = T()
    server = None
    daemon = None
    try:
        topo.route_vips()
        server = FinServer(topo.remote)
        path = sl.registry_file({"services": [sl.service("fin", VIP, PORT, [T.REMOTE4], "HTTP")]})
        daemon = sl.Shuntd(
            topo.app, sl.shuntd_args(
                **{"service-discovery.file.path": path, "buffer-size": str(BUFFER)}
            )
        ).wait_ready()
        yield topo, daemon, server
    finally:
        try:
            sl.stop_checked([daemon] if daemon else [])
        finally:
            if server:
                server.close()
            topo.delete()


def slow_get(topo):
    """A GET whose client reads nothing for a second (a small receive
    buffer), then the whole response."""
    s = topo.app.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    try:
        s.connect((VIP, 80))
        s.sendall(b"GET / HTTP/1.1\r\nHost: fin\r\n\r\n")
        time.sleep(1.0)
        data = b""
        while b"\r\n\r\n" not in data:
            data += s.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        while len(body) < BODY:
            chunk = s.recv(65536)
            assert chunk, "client connection closed after %d bytes" % len(body)
            body += chunk
        return head.split(b" ")[1]
    finally:
        s.close()


def test_post_after_server_fin_gets_a_fresh_connection(env):
    topo, d, server = env
    retries = d.metric("shunt_http_retries_total")
    for i in range(3):
        assert slow_get(topo) == b"200"
        status, _, body = topo.app.http(VIP, 80, "POST", "/", body=b"x" * 100)
        assert status == 200, (i, body)
        assert json.loads(body)["method"] == "POST"
    # Every request had a connection of its own: none went out on a closed one.
    conns = [c for c, _ in server.seen]
    assert len(conns) == len(set(conns)) == 6, server.seen
    assert d.metric("shunt_http_retries_total") == retries
