# SPDX-License-Identifier: Apache-2.0
"""HTTP/2 clients that attack shuntd (issue 14 D1, D6, D7), each written as a
raw client sending the frames an attacker would, against one nginx h2c
endpoint, while a well-behaved curl client on the same service must be
served in full:

- D7: a flood of WINDOW_UPDATE frames (no DATA was sent to earn them) ends
  with GOAWAY ENHANCE_YOUR_CALM, counted as a flood;
- D6: HPACK bombs (a header block of one-byte references to a 4,000-byte
  dynamic table entry) are answered 431 and cost the worker what their
  bytes cost, not what they expand to (CPU seconds from /proc);
- D1: a client that opens many streams for a large body and grants no
  window must not stall another client's streams on the shared upstream
  session; its streams are reset after http2.stream_stall_timeout."""

import hashlib
import os
import socket
import struct
import threading
import time

import pytest

import shuntlib as sl
from shuntlib import Topology as T
from test_h2 import PORT, nginx

VIP = "10.96.0.40"
BIG = 3 * 1024 * 1024 + 5
FLOOD_LIMIT = 1000  # http2.max_control_frames_per_second (the default)
STALL = 6.0  # http2.stream_stall_timeout, seconds

PREFACE, frame = sl.H2_PREFACE, sl.h2_frame
DATA, HEADERS, RST_STREAM, SETTINGS, GOAWAY, WINDOW_UPDATE, CONTINUATION = 0, 1, 3, 4, 7, 8, 9
ENHANCE_YOUR_CALM = 11


@pytest.fixture(scope="module")
def env():
    topo = T()
    daemon = None
    try:
        topo.route_vips()
        big = os.path.join(sl.tmpdir(), "big.bin")
        with open(big, "wb") as f:
            f.write(os.urandom(BIG))
        nginx(topo.remote, "ep0", T.REMOTE4, big)
        reg = {"services": [sl.service("abuse", VIP, PORT, [T.REMOTE4], "HTTP2", port_name="web")]}
        daemon = sl.Shuntd(
            topo.app,
            sl.shuntd_args(
                **{
                    "service-discovery.file.path": sl.registry_file(reg),
                    # One worker: every client shares its upstream session.
                    "workers": "1",
                    "http2.stream-stall-timeout": "%dms" % (STALL * 1000),
                    "log-level": "info",
                }
            ),
        ).wait_ready()
        with open(big, "rb") as f:
            want = hashlib.sha256(f.read()).hexdigest()
        yield topo, daemon, want
    finally:
        sl.teardown(topo, [daemon])


def metric(d, name, **labels):
    return d.metric(name, default=0.0, **labels)


def literal(k, v):
    """An HPACK literal field without indexing, new name (short strings)."""
    return bytes([0, len(k)]) + k + bytes([len(v)]) + v


def get_block(path):
    return b"".join(
        literal(k, v)
        for k, v in [(b":method", b"GET"), (b":scheme", b"http"), (b":path", path),
                     (b":authority", VIP.encode())]
    )


class Reader:
    """Reads frames from a raw client socket in a thread: [(time, type,
    flags, stream, payload)], until the peer closes or stop()."""

    def __init__(self, sock):
        self.sock, self.frames, self.closed = sock, [], False
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        buf = b""
        self.sock.settimeout(0.2)
        while not self._stop:
            try:
                b = self.sock.recv(1 << 16)
            except socket.timeout:
                continue
            except OSError:
                break
            if not b:
                break
            buf += b
            got = sl.h2_frames(buf)
            buf = buf[sum(9 + len(f[3]) for f in got):]
            now = time.monotonic()
            self.frames.extend((now,) + f for f in got)
        self.closed = True

    def of(self, ftype):
        return [f for f in self.frames if f[1] == ftype]

    def stop(self):
        self._stop = True
        self.thread.join(5)


def good_client(topo, want, n, out):
    """n full downloads of the large body, each checked by SHA-256."""
    for _ in range(n):
        r = topo.app.run(
            ["sh", "-c", "curl -sS --http2-prior-knowledge --max-time 20 "
             "http://%s:80/big.bin | sha256sum" % VIP],
            timeout=30, check=False,
        )
        out.append(r.stdout.split()[0] if r.stdout.strip() else "error: " + r.stderr.strip())
    out.append("done")


def rss_kb(d):
    with open("/proc/%d/status" % d.proc.pid) as f:
        return int(next(line for line in f if line.startswith("VmRSS:")).split()[1])


def shuntd_cpu_seconds(d):
    """User + system CPU time of the shuntd process (all threads)."""
    with open("/proc/%d/stat" % d.proc.pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- D7


def test_window_update_flood_is_closed(env):
    """200,000 WINDOW_UPDATE frames that answer no DATA: GOAWAY
    ENHANCE_YOUR_CALM after the flood limit, counted; curl downloading
    meanwhile is unaffected."""
    topo, d, want = env
    floods = metric(d, "shunt_http2_connections_closed_total", reason="flood")
    good = []
    gt = threading.Thread(target=good_client, args=(topo, want, 2, good))
    gt.start()
    s = topo.app.connect(VIP, 80)
    reader = Reader(s)
    try:
        s.sendall(PREFACE + frame(SETTINGS, 0, 0))
        burst = frame(WINDOW_UPDATE, 0, 0, struct.pack(">I", 1)) * 200000
        try:
            s.sendall(burst)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed on us mid-flood: what we want
        # GOAWAY, then the close: every frame shuntd sent has been read
        sl.wait_until(lambda: reader.closed, 10, what="the flooding connection closed")
    finally:
        reader.stop()
        s.close()
    goaways = reader.of(GOAWAY)
    assert goaways, "no GOAWAY among %d frames" % len(reader.frames)
    assert int.from_bytes(goaways[-1][4][4:8], "big") == ENHANCE_YOUR_CALM, goaways
    sl.wait_until(
        lambda: metric(d, "shunt_http2_connections_closed_total", reason="flood") == floods + 1,
        5, what="the flood counted",
    )
    gt.join(60)
    assert good == [want, want, "done"], good


def test_window_updates_that_answer_data_are_not_a_flood(env):
    """A client that acknowledges every DATA frame it gets with two
    WINDOW_UPDATEs (stream and connection) downloads 3 MB: not a flood."""
    topo, d, want = env
    floods = metric(d, "shunt_http2_connections_closed_total", reason="flood")
    s = topo.app.connect(VIP, 80)
    s.settimeout(10)
    try:
        s.sendall(PREFACE + frame(SETTINGS, 0, 0) + frame(HEADERS, 5, 1, get_block(b"/big.bin")))
        h, buf, ended = hashlib.sha256(), b"", False
        deadline = time.monotonic() + 30
        while not ended and time.monotonic() < deadline:
            b = s.recv(1 << 16)
            assert b, "closed before the body ended"
            buf += b
            got = sl.h2_frames(buf)
            buf = buf[sum(9 + len(f[3]) for f in got):]
            acks = b""
            for t, fl, sid, payload in got:
                assert t not in (GOAWAY, RST_STREAM), (t, payload)
                if t == DATA and payload:
                    h.update(payload)
                    inc = struct.pack(">I", len(payload))
                    acks += frame(WINDOW_UPDATE, 0, sid, inc) + frame(WINDOW_UPDATE, 0, 0, inc)
                if t == DATA and fl & 1:
                    ended = True
            if acks:
                s.sendall(acks)
        assert ended and h.hexdigest() == want
    finally:
        s.close()
    assert metric(d, "shunt_http2_connections_closed_total", reason="flood") == floods


# ---------------------------------------------------------------- D6


def hpack_int(value, prefix_bits, first):
    """An HPACK integer (RFC 7541 5.1) with the first byte's high bits."""
    top = (1 << prefix_bits) - 1
    if value < top:
        return bytes([first | value])
    out, value = [first | top], value - top
    while value >= 128:
        out.append(value % 128 + 128)
        value //= 128
    return bytes(out + [value])


def bomb_block(size):
    """A request whose header block of about `size` bytes expands to
    ~4,000 times that: one 4,000-byte field added to the dynamic table,
    then one-byte references to it (index 62)."""
    block = b"\x82\x86\x84" + literal(b":authority", VIP.encode())
    block += b"\x40" + bytes([1]) + b"b" + hpack_int(4000, 7, 0) + b"a" * 4000
    return block + b"\xbe" * (size - len(block))


def send_bomb(s, sid, block, fsize=16384):
    """HEADERS (END_STREAM) and CONTINUATIONs, END_HEADERS on the last."""
    parts = [block[i:i + fsize] for i in range(0, len(block), fsize)]
    out = b""
    for i, p in enumerate(parts):
        flags = (4 if i == len(parts) - 1 else 0) | (1 if i == 0 else 0)
        out += frame(HEADERS if i == 0 else CONTINUATION, flags, sid, p)
    s.sendall(out)


BOMBS = 20
BOMB_SIZE = 120000  # HEADERS + 7 CONTINUATIONs of 16 KiB


def test_hpack_bomb_costs_what_its_bytes_cost(env):
    """20 bombs of 120 KB (each ~480 MB of header fields once expanded): each
    stream is reset (counted) once its list passes twice
    http2.max_header_list_size, and the worker spends well under 50 ms of
    CPU per bomb (before: every field was still validated, ~150 ms each in
    a release build, several times that under ASan); curl is served
    meanwhile, and a list just over the limit still gets 431."""
    topo, d, want = env
    resets = metric(d, "shunt_http2_stream_resets_total")
    good = []
    gt = threading.Thread(target=good_client, args=(topo, want, 2, good))
    s = topo.app.connect(VIP, 80)
    reader = Reader(s)
    try:
        s.sendall(PREFACE + frame(SETTINGS, 0, 0))
        block = bomb_block(BOMB_SIZE)
        cpu0 = shuntd_cpu_seconds(d)
        gt.start()
        for i in range(BOMBS):
            send_bomb(s, 1 + 2 * i, block)
        sl.wait_until(
            lambda: len({f[3] for f in reader.of(RST_STREAM)}) >= BOMBS or reader.closed, 60,
            what="every bomb's stream reset",
        )
        cpu = shuntd_cpu_seconds(d) - cpu0
        # The same connection still serves a request (HPACK state intact).
        s.sendall(frame(HEADERS, 5, 1 + 2 * BOMBS, get_block(b"/")))
        sl.wait_until(lambda: any(f[3] == 1 + 2 * BOMBS for f in reader.of(HEADERS)), 10,
                      what="a normal request after the bombs answered")
        gt.join(60)
    finally:
        reader.stop()
        s.close()
    reset = {f[3] for f in reader.of(RST_STREAM)}
    assert reset == {1 + 2 * i for i in range(BOMBS)}, (reset, reader.closed)
    assert not reader.of(GOAWAY)
    assert metric(d, "shunt_http2_stream_resets_total") == resets + BOMBS
    # The good client's two 3 MB downloads are in this CPU time too.
    assert cpu < 0.05 * BOMBS + 1.0, "%.2f s of CPU for %d bombs" % (cpu, BOMBS)
    print("CPU %.3f s for %d bombs" % (cpu, BOMBS))
    assert good == [want, want, "done"], good
    # A list just over the limit (two 35 KB fields) is still read and answered 431.
    s = topo.app.connect(VIP, 80)
    reader = Reader(s)
    try:
        big = get_block(b"/") + 2 * (b"\x00\x05x-big" + hpack_int(35000, 7, 0) + b"a" * 35000)
        s.sendall(PREFACE + frame(SETTINGS, 0, 0))
        send_bomb(s, 1, big)
        sl.wait_until(lambda: reader.of(HEADERS) or reader.of(RST_STREAM), 10, what="an answer")
    finally:
        reader.stop()
        s.close()
    assert reader.of(HEADERS) and b"431" in reader.of(HEADERS)[0][4], reader.frames
    assert d.alive()


# ---------------------------------------------------------------- D1

STREAMS = 20  # 20 x 64 KiB stream windows > the upstream session's 1 MiB


def test_client_granting_no_window_cannot_stall_others(env):
    """A client asks for the 3 MB body on 20 streams with an initial window
    of 0 and never opens it. All streams of the one worker share one
    upstream session; before, their buffered bytes held its 1 MiB
    connection window and another client's downloads on that session got
    200 and no body. Now the other client downloads in full (SHA-256)
    while the stalled streams still exist; those are reset (CANCEL) after
    http2.stream_stall_timeout, counted, and shuntd's memory stays flat."""
    topo, d, want = env
    stalls = metric(d, "shunt_http2_streams_stalled_total")
    rss0 = rss_kb(d)
    s = topo.app.connect(VIP, 80)
    reader = Reader(s)
    try:
        s.sendall(PREFACE + frame(SETTINGS, 0, 0, struct.pack(">HI", 4, 0)))
        t0 = time.monotonic()
        s.sendall(b"".join(frame(HEADERS, 5, 1 + 2 * i, get_block(b"/big.bin"))
                           for i in range(STREAMS)))
        sl.wait_until(lambda: len({f[3] for f in reader.of(HEADERS)}) == STREAMS, 10,
                      what="every stalled stream's response headers")
        # A bounded pause in which nginx fills the stalled streams' windows:
        # it builds the adverse state (no event says "full"); a shorter one
        # would make the test weaker, never wrongly red.
        time.sleep(0.5)
        good = []
        good_client(topo, want, 2, good)
        good_done = time.monotonic()
        assert good == [want, want, "done"], good
        first_rst = min([f[0] for f in reader.of(RST_STREAM)] or [float("inf")])
        assert good_done < first_rst, "served only once the stalled streams were reset"
        sl.wait_until(lambda: len({f[3] for f in reader.of(RST_STREAM)}) == STREAMS,
                      STALL + 10, what="every stalled stream reset")
        rss1 = rss_kb(d)
    finally:
        reader.stop()
        s.close()
    rsts = reader.of(RST_STREAM)
    assert {f[3] for f in rsts} == {1 + 2 * i for i in range(STREAMS)}
    assert all(int.from_bytes(f[4], "big") == 8 for f in rsts), rsts  # CANCEL
    ended = [f[0] - t0 for f in rsts]
    assert STALL - 0.5 <= min(ended) and max(ended) <= STALL + 5, ended
    assert not reader.of(DATA) and not reader.of(GOAWAY)
    assert metric(d, "shunt_http2_streams_stalled_total") == stalls + STREAMS
    sl.wait_until(lambda: metric(d, "shunt_http2_streams_active") == 0, 10,
                  what="no stream left")
    # 20 streams hold at most 20 x 64 KiB; allocator slack aside, flat.
    assert rss1 - rss0 < 32 * 1024, (rss0, rss1)
