# SPDX-License-Identifier: Apache-2.0
"""Access logs (docs/observability.md) through two sidecars: A (the client's,
outbound, log_level warn) and B (the server's, inbound, over mutual TLS).

Every line on each daemon's stdout parses as JSON with the documented fields
and types; one line per HTTP/1.1 request (curl), per HTTP/2 stream (h2load),
per gRPC call (grpcio) and per TCP connection; local answers included (a 503
with no endpoint, a 431 for an oversized head); the request id is the
client's x-request-id, else one made by A that B logs too; log_level warn
does not turn access logging off; shunt_access_log_* counts the lines;
metrics.requests off (a reload) stops the request metrics, not the lines."""

import json
import re
import signal
import sys

import pytest

import httpbackend
import mtls_pki as pki
import shuntlib as sl
import sidecar_pair
from shuntlib import Topology as T
from sidecar_pair import ECHO_PORT, GRPCPEER, H1_PORT, H2_PORT, RPC_PORT

VIP_WEB, VIP_H2, VIP_RPC, VIP_ECHO, VIP_NONE = (
    "10.96.0.50", "10.96.0.51", "10.96.0.52", "10.96.0.53", "10.96.0.54")
WEB_ID = pki.spiffe("web")
CLIENT_ID = pki.spiffe("client")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")

# The documented fields: name -> allowed types (None: JSON null).
COMMON = {
    "time": (str,), "component": (str,), "type": (str,), "direction": (str,),
    "protocol": (str,), "conn": (int,), "client": (str,), "destination": (str,),
    "service": (str, type(None)), "upstream": (str, type(None)),
    "peer_identity": (str, type(None)), "bytes_received": (int,), "bytes_sent": (int,),
    "end": (str,),
}  # fmt: skip
HTTP = dict(COMMON, **{
    "method": (str, type(None)), "path": (str, type(None)), "authority": (str, type(None)),
    "status": (int,), "grpc_status": (int, type(None)), "request_id": (str, type(None)),
    "trace_id": (str, type(None)), "span_id": (str, type(None)), "sampled": (bool,),
    "attempts": (int,), "duration_ms": (float, int),
})  # fmt: skip
TCP = dict(COMMON, duration_ms=(int,))


def registry():
    def svc(name, vip, port, proto, addrs=(T.REMOTE4,)):
        return sl.service(name, vip, port, list(addrs), proto, port_name="p", service_port=80,
                          identity=WEB_ID)

    return {"services": [
        svc("web", VIP_WEB, H1_PORT, "HTTP"),
        svc("web2", VIP_H2, H2_PORT, "HTTP2"),
        svc("rpc", VIP_RPC, RPC_PORT, "GRPC"),
        svc("echo", VIP_ECHO, ECHO_PORT, "TCP"),
        svc("none", VIP_NONE, H1_PORT, "HTTP", addrs=()),
    ]}  # fmt: skip


@pytest.fixture(scope="module")
def mesh():
    with sidecar_pair.mesh(("web", "web2", "rpc", "echo")) as m:
        a, b = m.start(registry(), a_flags={"log-level": "warn"}, b_flags={"log-level": "warn"},
                       b_config={"metrics": {"requests": "on"}})  # fmt: skip
        yield m.topo, a, b


def check_fields(line):
    """Every documented field, of its documented type."""
    want = HTTP if line.get("type") == "http" else TCP
    assert line.get("type") in ("http", "tcp"), line
    for k, types in want.items():
        assert k in line, (k, line)
        assert isinstance(line[k], types) and not (bool in types) ^ isinstance(line[k], bool), (
            k, line)  # fmt: skip
    assert line["component"] == "access" and line["direction"] in ("inbound", "outbound"), line
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", line["time"]), line


def lines_for(d, pred, n, what):
    return sl.wait_until(lambda: (lambda got: got if len(got) >= n else None)(
        [l for l in d.access_lines() if pred(l)]), 10, what=what)


def test_http1_request_both_sides(mesh):
    topo, a, b = mesh
    r = topo.app.curl(["-s", "-H", "X-Request-ID: rid-h1-1", "http://%s/x?q=1" % VIP_WEB])
    assert json.loads(r.stdout)["server"] == "web"
    out = lines_for(a, lambda l: l.get("request_id") == "rid-h1-1", 1, "A's line")
    inn = lines_for(b, lambda l: l.get("request_id") == "rid-h1-1", 1, "B's line")
    assert len(out) == 1 and len(inn) == 1, (out, inn)
    o, i = out[0], inn[0]
    for line in (o, i):
        check_fields(line)
        assert (line["type"], line["protocol"], line["method"], line["path"], line["status"],
                line["end"]) == ("http", "http1", "GET", "/x?q=1", 200, "done"), line
        assert line["authority"] == VIP_WEB and line["bytes_sent"] > 0, line
    assert o["direction"] == "outbound" and i["direction"] == "inbound"
    assert o["service"] == "default/web:80" and o["upstream"] == "%s:%d" % (T.REMOTE4, H1_PORT)
    assert o["peer_identity"] == WEB_ID and i["peer_identity"] == CLIENT_ID, (o, i)
    assert o["destination"] == "%s:80" % VIP_WEB and o["attempts"] == 1

    # Without one, A makes the request id and B logs the same.
    n = len(a.access_lines("http"))
    topo.app.curl(["-s", "-o", "/dev/null", "http://%s/" % VIP_WEB])
    new = lines_for(a, lambda l: l["type"] == "http", n + 1, "A's next line")[n:]
    rid = new[0]["request_id"]
    assert UUID.match(rid), rid
    lines_for(b, lambda l: l.get("request_id") == rid, 1, "B's line with A's request id")


def test_local_answers(mesh):
    topo, a, b = mesh
    r = topo.app.curl(["-s", "-o", "/dev/null", "-w", "%{http_code}",
                       "-H", "X-Request-ID: rid-503", "http://%s/" % VIP_NONE])
    assert r.stdout == "503", r.stdout
    got = lines_for(a, lambda l: l.get("request_id") == "rid-503", 1, "the 503's line")
    assert (got[0]["status"], got[0]["end"], got[0]["upstream"]) == (503, "local", None), got
    check_fields(got[0])

    r = topo.app.curl(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H",
                       "X-Big: " + "b" * 70000, "http://%s/" % VIP_WEB])
    assert r.stdout == "431", r.stdout
    got = lines_for(a, lambda l: l.get("status") == 431, 1, "the 431's line")
    check_fields(got[0])
    assert got[0]["end"] == "local" and got[0]["method"] is None, got
    assert UUID.match(got[0]["request_id"]), got


def test_one_line_per_h2_stream_and_grpc_call(mesh):
    topo, a, b = mesh
    n_a = len(a.access_lines("http"))
    r = topo.app.run(["h2load", "-n", "40", "-c", "1", "-m", "4", "http://%s:80/" % VIP_H2],
                     timeout=60, check=False)  # fmt: skip
    assert r.returncode == 0 and "40 succeeded" in r.stdout, r.stdout + r.stderr
    h2 = lines_for(a, lambda l: l.get("protocol") == "http2", 40, "40 stream lines")
    assert len(h2) == 40, len(h2)
    assert len({(l["conn"], l["stream"]) for l in h2}) == 40
    for line in h2:
        check_fields(line)
        assert line["status"] == 200 and line["end"] == "done", line
    lines_for(b, lambda l: l.get("protocol") == "http2", 40, "B's 40 stream lines")

    r = topo.app.run([sys.executable, GRPCPEER, "client", "--target", "%s:80" % VIP_RPC,
                      "unary", "--n", "12"], timeout=60, check=False)  # fmt: skip
    assert r.returncode == 0 and json.loads(r.stdout)["codes"] == {"OK": 12}, r.stdout
    calls = lines_for(a, lambda l: l.get("protocol") == "grpc", 12, "12 call lines")
    assert len(calls) == 12
    for line in calls:
        check_fields(line)
        assert (line["grpc_status"], line["path"]) == (0, "/shunt.Test/Unary"), line
    lines_for(b, lambda l: l.get("protocol") == "grpc", 12, "B's 12 call lines")
    assert len(a.access_lines("http")) >= n_a + 52


def test_tcp_connection_and_every_line(mesh):
    topo, a, b = mesh
    s = topo.app.connect(VIP_ECHO, 80)
    me = "%s:%d" % s.getsockname()[:2]
    assert sl.echo(s, b"hello") == b"hello"
    s.close()
    got = lines_for(a, lambda l: l["type"] == "tcp" and l["client"] == me, 1, "the TCP line")
    check_fields(got[0])
    assert (got[0]["bytes_received"], got[0]["bytes_sent"], got[0]["end"]) == (5, 5, "done")
    assert got[0]["service"] == "default/echo:80" and got[0]["peer_identity"] == WEB_ID, got

    # Every line of both daemons (access_lines fails on one that is not
    # JSON), with its fields; none in the log on stderr at warn.
    for d in (a, b):
        for line in d.access_lines():
            check_fields(line)
        assert not [l for l in d.log_lines() if l.get("component") == "access"]
        m = d.metrics()
        assert m[("shunt_access_log_lines_total", ())] >= len(d.access_lines()) > 0
        assert m[("shunt_access_log_dropped_total", ())] == 0


def inbound_requests(d):
    return sum(v for (name, labels), v in d.metrics().items()
               if name == "shunt_requests_total" and ("direction", "inbound") in labels)  # fmt: skip


def reload(d, config):
    n = d.metric("shunt_config_reloads_total")
    d.write_config(config)
    d.signal(signal.SIGHUP)
    d.wait_metric("shunt_config_reloads_total", lambda v: v > n)


def test_request_metrics_switch(mesh):
    """metrics.requests off on B (a reload): its requests are proxied and
    logged as before, shunt_requests_total and the histogram stay still;
    on again, they count."""
    topo, a, b = mesh
    try:
        reload(b, {"metrics": {"requests": "off"}})
        before = inbound_requests(b)
        hist = b.metrics()
        for i in range(3):
            topo.app.curl(["-s", "-o", "/dev/null", "-H", "X-Request-ID: rid-nom-%d" % i,
                           "http://%s/" % VIP_WEB])  # fmt: skip
        lines_for(b, lambda l: (l.get("request_id") or "").startswith("rid-nom-"), 3,
                  "B's lines with request metrics off")  # fmt: skip
        assert inbound_requests(b) == before
        assert {k: v for k, v in b.metrics().items()
                if k[0].startswith("shunt_request_duration_seconds")} == {
            k: v for k, v in hist.items() if k[0].startswith("shunt_request_duration_seconds")}
    finally:
        reload(b, {"metrics": {"requests": "on"}})
    topo.app.curl(["-s", "-o", "/dev/null", "http://%s/" % VIP_WEB])
    sl.wait_until(lambda: inbound_requests(b) == before + 1, 5, what="B counting again")


def test_inbound_http_parsed_with_mtls_disabled():
    """mtls.mode disabled: inbound HTTP is still proxied request by request,
    so it is counted, logged and traced like the rest (issue 18), and the
    application gets the request; a TCP port stays a byte relay."""
    topo = T()
    procs, daemons = [], []
    try:
        procs.append(httpbackend.spawn(topo.remote, ["%s:%d=web" % (T.REMOTE4, H1_PORT)]))
        procs.append(topo.remote.spawn_peer("echo", "echo", ["%s:%d" % (T.REMOTE4, ECHO_PORT)]))
        b = sl.Shuntd(topo.remote, sl.shuntd_args(**{"mtls.mode": "disabled", "log-level": "warn"}),
                      name="shuntd-b")  # fmt: skip
        daemons.append(b)
        b.wait_ready()
        for i in range(3):
            r = topo.app.curl(["-s", "-H", "X-Request-ID: rid-dis-%d" % i,
                               "http://%s:%d/d%d" % (T.REMOTE4, H1_PORT, i)])  # fmt: skip
            assert json.loads(r.stdout)["server"] == "web", r
        lines = lines_for(b, lambda l: (l.get("request_id") or "").startswith("rid-dis-"), 3,
                          "B's inbound lines with mTLS disabled")  # fmt: skip
        for i, line in enumerate(sorted(lines, key=lambda l: l["request_id"])):
            check_fields(line)
            assert (line["type"], line["direction"], line["method"], line["path"], line["status"],
                    line["peer_identity"]) == ("http", "inbound", "GET", "/d%d" % i, 200, None), line
        sl.wait_until(lambda: inbound_requests(b) >= 3, 5, what="B's inbound request metrics")
        s = topo.app.connect(T.REMOTE4, ECHO_PORT)
        try:
            assert sl.echo(s, b"plain") == b"plain"
        finally:
            s.close()
        lines_for(b, lambda l: l["type"] == "tcp" and l["direction"] == "inbound", 1,
                  "B's inbound TCP line")  # fmt: skip
    finally:
        sl.teardown(topo, daemons, procs)
