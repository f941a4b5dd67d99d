# SPDX-License-Identifier: Apache-2.0
"""Traces (docs/observability.md) through two sidecars: A (the client's,
outbound) and B (the server's, inbound, over mutual TLS), each exporting to
its own OTLP/HTTP JSON receiver (otlprecv.py: every payload checked against
the OTLP protobuf JSON mapping) on 127.0.0.1:4318 in its pod.

  - a curl request with a traceparent gives A's CLIENT span (child of the
    client's span) and B's SERVER span (child of A's), both with the
    client's trace id; the backend sees a traceparent naming B's span, and
    the tracestate unchanged; without a traceparent, a new trace; B3 single
    and multi are understood; not sampled is respected;
  - h2load gives one span per stream, grpcio one per call (rpc.* attributes);
  - shuntctl tap lines carry the request id and the trace id;
  - collector down, then slow (answers after seconds): requests all succeed,
    drops are counted, RSS stays within a bound over thousands of requests
    (memory flat); spans flow again after."""

import json
import os
import re
import subprocess
import sys

import pytest

import mtls_pki as pki
import shuntlib as sl
import sidecar_pair
from shuntlib import Topology as T
from sidecar_pair import GRPCPEER, H1_PORT, H2_PORT, RPC_PORT

OTLPRECV = os.path.join(sl.HERE, "otlprecv.py")
VIP_WEB, VIP_H2, VIP_RPC = "10.96.0.60", "10.96.0.61", "10.96.0.62"
COLLECTOR = "127.0.0.1:4318"
WEB_ID = pki.spiffe("web")
CLIENT_ID = pki.spiffe("client")
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = "00f067aa0ba902b7"
TRACE_TAP = "5bf92f3577b34da6a3ce929d0e0e4737"
SERVER, CLIENT = 2, 3


def registry():
    def svc(name, vip, port, proto):
        return sl.service(name, vip, port, [T.REMOTE4], proto, port_name="p", service_port=80,
                          identity=WEB_ID)

    return {"services": [svc("web", VIP_WEB, H1_PORT, "HTTP"), svc("web2", VIP_H2, H2_PORT, "HTTP2"),
                         svc("rpc", VIP_RPC, RPC_PORT, "GRPC")]}  # fmt: skip


def otlp_schema():
    """The node_modules with the OTLP schema otlprecv.py checks payloads
    against (scripts/get-otlp-schema.sh: fetched once from npm, cached)."""
    for tool in ("node", "npm"):
        sl.require_tool(tool, "nodejs" if tool == "node" else tool)
    p = subprocess.run([os.path.join(sl.SOURCE, "scripts", "get-otlp-schema.sh")],
                       capture_output=True, text=True, timeout=600)  # fmt: skip
    assert p.returncode == 0, "scripts/get-otlp-schema.sh failed: %s" % p.stderr.strip()
    return os.path.join(p.stdout.strip().splitlines()[-1], "node_modules")


class Receiver:
    """otlprecv.py in pod; its requests as parsed lines."""

    schema = None

    def __init__(self, pod, *extra):
        if Receiver.schema is None:
            Receiver.schema = otlp_schema()
        self.pod = pod
        self.out = os.path.join(sl.tmpdir(), "otlp.jsonl")
        self.extra = extra
        self.proc = None
        self.start(*extra)

    def start(self, *extra):
        open(self.out, "a").close()
        self.proc = self.pod.spawn_ready(
            [sys.executable, OTLPRECV, "--listen", COLLECTOR, "--out", self.out, "--schema",
             Receiver.schema] + list(extra),
            "otlprecv")

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None

    def requests(self):
        with open(self.out) as f:
            return [json.loads(l) for l in f if l.strip()]

    def spans(self):
        out = []
        for r in self.requests():
            assert not r["errors"], r["errors"]
            assert r["content_type"] == "application/json" and r["path"] == "/v1/traces", r
            out += r["spans"]
        return out

    def wait_spans(self, pred, n=1, timeout=10):
        def got():
            s = [x for x in self.spans() if pred(x)]
            return s if len(s) >= n else None

        return sl.wait_until(got, timeout, what="%d span(s) at the receiver" % n)


@pytest.fixture(scope="module")
def mesh():
    with sidecar_pair.mesh(("web", "web2", "rpc")) as m:
        ra, rb = Receiver(m.topo.app), Receiver(m.topo.remote)
        m.procs += [ra, rb]
        # B's registry has the client's service (its identity, an endpoint
        # B never calls): B's inbound requests name it as source_service.
        reg_b = os.path.join(m.tmp, "registry-b.json")
        sl.write_json(reg_b, {"services": [sl.service(
            "client", "10.96.0.69", 8080, [T.APP4], "HTTP", identity=CLIENT_ID)]})  # fmt: skip
        # Under ASan (build-asan) freed memory waits in a quarantine (256 MB
        # by default, and 1 MB per thread) and RSS grows by design until it
        # is full: none keeps the RSS checks about shuntd's own memory (with
        # 4 MB, RSS still grew 4 MB over 3,000 requests; without, it is as
        # flat as the release build's). Other builds ignore it.
        asan = os.environ.get("ASAN_OPTIONS")
        os.environ["ASAN_OPTIONS"] = ((asan + ":" if asan else "") +
                                      "quarantine_size_mb=0:thread_local_quarantine_size_kb=0")
        tracing = {"tracing.enabled": "on", "tracing.endpoint": "http://%s/v1/traces" % COLLECTOR,
                   "tracing.sampling": "1", "tracing.flush-interval": "100ms",
                   "tracing.queue-size": "64", "tracing.batch-size": "16",
                   "tracing.timeout": "1s", "log-level": "info"}  # fmt: skip
        try:
            a, b = m.start(registry(), a_flags=dict(tracing, **{"tracing.service-name": "client"}),
                           b_flags=dict(tracing, **{"tracing.service-name": "web",
                                                    "service-discovery.file.path": reg_b}))
        finally:
            if asan is None:
                del os.environ["ASAN_OPTIONS"]
            else:
                os.environ["ASAN_OPTIONS"] = asan  # fmt: skip
        yield m.topo, a, b, ra, rb


def attrs(span):
    return span["attributes"]


def curl_json(topo, *args):
    r = topo.app.curl(["-s"] + list(args))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_parent_and_child_spans(mesh):
    topo, a, b, ra, rb = mesh
    tp = "00-%s-%s-01" % (TRACE, PARENT)
    seen = curl_json(topo, "-H", "traceparent: " + tp, "-H", "tracestate: vendor=x,other=y",
                     "-H", "X-Request-ID: rid-trace-1", "http://%s/x?q=1" % VIP_WEB)
    h = seen["headers"]
    m = re.match(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-01$", h["traceparent"])
    assert m and m.group(1) == TRACE and m.group(2) != PARENT, h
    assert h["tracestate"] == "vendor=x,other=y", h

    out = ra.wait_spans(lambda s: s["traceId"] == TRACE)
    inn = rb.wait_spans(lambda s: s["traceId"] == TRACE)
    assert len(out) == 1 and len(inn) == 1, (out, inn)
    o, i = out[0], inn[0]
    assert (o["kind"], o["parentSpanId"]) == (CLIENT, PARENT), o
    assert (i["kind"], i["parentSpanId"]) == (SERVER, o["spanId"]), (i, o)
    assert i["spanId"] == m.group(2), "the backend's parent is B's span"
    # A's span starts before B receives the request (causal); the ends are
    # not ordered: B ends its span after its last write, which A may have
    # read and ended on first.
    assert int(o["startTimeUnixNano"]) <= int(i["startTimeUnixNano"])
    for s, peer in ((o, WEB_ID), (i, CLIENT_ID)):
        at = attrs(s)
        assert (s["name"], at["http.request.method"], at["url.path"], at["url.query"],
                at["http.response.status_code"], at["server.address"],
                at["network.protocol.version"], at["shunt.peer.spiffe_id"],
                at["shunt.request_id"]) == ("GET", "GET", "/x", "q=1", 200, VIP_WEB, "1.1", peer,
                                            "rid-trace-1"), at  # fmt: skip
        assert s["status"] == 0
    assert attrs(o)["shunt.endpoint"] == "%s:%d" % (T.REMOTE4, H1_PORT)
    assert attrs(o)["network.peer.port"] == H1_PORT
    assert ra.requests()[-1]["resource"]["service.name"] == "client"
    assert rb.requests()[-1]["resource"]["service.name"] == "web"
    # B's request metrics name the client's workload (its certificate) and
    # service (the registry's service with that identity).
    inbound = [dict(l) for (n, l), v in b.metrics().items()
               if n == "shunt_requests_total" and ("direction", "inbound") in l]  # fmt: skip
    assert inbound and all((l["source_workload"], l["source_namespace"], l["source_service"]) ==
                           ("client", "default", "client") for l in inbound), inbound  # fmt: skip
    # The access lines carry the same ids.
    line = sl.wait_until(lambda: [l for l in a.access_lines("http")
                                  if l["request_id"] == "rid-trace-1"], 5, what="A's line")[0]
    assert (line["trace_id"], line["span_id"], line["sampled"]) == (TRACE, o["spanId"], True)


def test_new_trace_b3_and_not_sampled(mesh):
    topo, a, b, ra, rb = mesh
    # No context: a new trace, A's span its root, B's its child.
    seen = curl_json(topo, "http://%s/" % VIP_WEB)
    tid = seen["headers"]["traceparent"].split("-")[1]
    assert tid != TRACE
    o = ra.wait_spans(lambda s: s["traceId"] == tid)[0]
    i = rb.wait_spans(lambda s: s["traceId"] == tid)[0]
    assert o["parentSpanId"] is None and i["parentSpanId"] == o["spanId"], (o, i)

    # B3 single: child of its span; the b3 header goes on rewritten.
    t3, p3 = "80f198ee56343ba864fe8b2a57d3eff7", "e457b5a2e4d86bd1"
    seen = curl_json(topo, "-H", "b3: %s-%s-1" % (t3, p3), "http://%s/" % VIP_WEB)
    o = ra.wait_spans(lambda s: s["traceId"] == t3)[0]
    i = rb.wait_spans(lambda s: s["traceId"] == t3)[0]
    assert o["parentSpanId"] == p3 and i["parentSpanId"] == o["spanId"]
    assert seen["headers"]["b3"] == "%s-%s-1" % (t3, i["spanId"]), seen["headers"]
    assert seen["headers"]["traceparent"] == "00-%s-%s-01" % (t3, i["spanId"])

    # B3 multi with a 64-bit trace id.
    seen = curl_json(topo, "-H", "X-B3-TraceId: 463ac35c9f6413ad", "-H",
                     "X-B3-SpanId: a2fb4a1d1a96d312", "-H", "X-B3-Sampled: 1",
                     "http://%s/" % VIP_WEB)  # fmt: skip
    t64 = "0000000000000000463ac35c9f6413ad"
    o = ra.wait_spans(lambda s: s["traceId"] == t64)[0]
    assert o["parentSpanId"] == "a2fb4a1d1a96d312"
    h = seen["headers"]
    assert (h["x-b3-traceid"], h["x-b3-sampled"]) == (t64, "1") and "x-b3-spanid" in h, h

    # Not sampled: no span, the ids still go on with the flag off.
    tn = "11111111111111111111111111111111"
    seen = curl_json(topo, "-H", "traceparent: 00-%s-%s-00" % (tn, PARENT),
                     "http://%s/" % VIP_WEB)
    assert re.match(r"^00-%s-[0-9a-f]{16}-00$" % tn, seen["headers"]["traceparent"]), seen
    # A later sampled request is exported after it: none of the unsampled.
    seen = curl_json(topo, "http://%s/" % VIP_WEB)
    after = seen["headers"]["traceparent"].split("-")[1]
    rb.wait_spans(lambda s: s["traceId"] == after)
    assert not [s for s in ra.spans() + rb.spans() if s["traceId"] == tn]
    # A malformed traceparent starts a new trace.
    seen = curl_json(topo, "-H", "traceparent: 00-%s-%s-0x" % (TRACE, PARENT),
                     "http://%s/" % VIP_WEB)
    assert seen["headers"]["traceparent"].split("-")[1] != TRACE


def test_h2_streams_and_grpc_calls(mesh):
    topo, a, b, ra, rb = mesh
    th = "22222222222222222222222222222222"
    r = topo.app.run(["h2load", "-n", "12", "-c", "1", "-m", "4", "-H",
                      "traceparent: 00-%s-%s-01" % (th, PARENT), "http://%s:80/" % VIP_H2],
                     timeout=60, check=False)  # fmt: skip
    assert r.returncode == 0 and "12 succeeded" in r.stdout, r.stdout + r.stderr
    out = ra.wait_spans(lambda s: s["traceId"] == th, 12)
    inn = rb.wait_spans(lambda s: s["traceId"] == th, 12)
    assert len(out) == 12 and len({s["spanId"] for s in out}) == 12
    assert {s["parentSpanId"] for s in out} == {PARENT}
    assert {s["parentSpanId"] for s in inn} == {s["spanId"] for s in out}
    for s in out:
        assert attrs(s)["network.protocol.version"] == "2" and s["kind"] == CLIENT
        assert attrs(s)["http.response.status_code"] == 200

    r = topo.app.run([sys.executable, GRPCPEER, "client", "--target", "%s:80" % VIP_RPC,
                      "unary", "--n", "5"], timeout=60, check=False)  # fmt: skip
    assert r.returncode == 0 and json.loads(r.stdout)["codes"] == {"OK": 5}, r.stdout
    calls = ra.wait_spans(lambda s: attrs(s).get("rpc.system") == "grpc", 5)
    assert len(calls) == 5 and len({s["traceId"] for s in calls}) == 5
    for s in calls:
        at = attrs(s)
        assert (s["name"], at["rpc.service"], at["rpc.method"], at["rpc.grpc.status_code"]) == (
            "shunt.Test/Unary", "shunt.Test", "Unary", 0), s
    server = rb.wait_spans(lambda s: attrs(s).get("rpc.system") == "grpc", 5)
    assert {s["parentSpanId"] for s in server} == {s["spanId"] for s in calls}


def dropped(d):
    m = d.metrics()
    return sum(m.get(("shunt_trace_spans_dropped_total", (("reason", r),)), 0)
               for r in ("queue_full", "export_failed"))


def load(topo, n=600):
    """A bounded burst of traced requests; all must succeed."""
    r = topo.app.run(["h2load", "-n", str(n), "-c", "2", "-m", "8", "http://%s:80/" % VIP_H2],
                     timeout=60, check=False)  # fmt: skip
    assert r.returncode == 0 and "%d succeeded" % n in r.stdout, r.stdout + r.stderr


def rss(d):
    return d.metric("process_resident_memory_bytes")


# Memory flat: what A's RSS may grow by over a phase of the collector down
# or slow, after a first round warmed its pools and allocator (seen: 0.3 MiB,
# 1.4 MiB under ASan). Spans wait in fixed rings (tracing.queue_size 64 per worker) and
# one batch (16), far below it; a span record (about 700 bytes) kept per
# request would pass it within the 5,000 requests of the two phases.
RSS_BOUND = 3 << 20


def test_collector_down_and_slow(mesh):
    topo, a, b, ra, rb = mesh
    ra.stop()
    d0 = dropped(a)
    load(topo, 2000)
    rss0 = rss(a)  # warm: after a first round
    sl.wait_until(lambda: dropped(a) > d0, 10, what="spans dropped with the collector down")
    m = a.metrics()
    assert m[("shunt_trace_export_requests_total", (("result", "error"),))] > 0
    assert m[("shunt_trace_spans_dropped_total", (("reason", "export_failed"),))] > 0
    # Many more requests, every span dropped: requests unaffected (load
    # checks each succeeded), memory flat.
    load(topo, 3000)
    rss1 = rss(a)
    assert rss1 - rss0 < RSS_BOUND, "RSS grew by %d bytes with the collector down" % (rss1 - rss0)

    # Slow: answers after 3 s, past tracing.timeout (1 s).
    ra.start("--delay", "3")
    d1 = dropped(a)
    load(topo, 2000)
    sl.wait_until(lambda: dropped(a) > d1, 10, what="spans dropped with the collector slow")
    # The exporter waits out its timeout: the workers' queues fill and shed.
    m = a.metrics()
    assert m[("shunt_trace_spans_dropped_total", (("reason", "queue_full"),))] > 0
    rss2 = rss(a)
    assert rss2 - rss0 < RSS_BOUND, "RSS grew by %d bytes with the collector slow" % (rss2 - rss0)

    # Back to normal: spans flow again.
    ra.stop()
    ra.start()
    seen = curl_json(topo, "http://%s/" % VIP_WEB)
    tid = seen["headers"]["traceparent"].split("-")[1]
    ra.wait_spans(lambda s: s["traceId"] == tid, timeout=15)


def test_tap_shows_trace_and_request_ids(mesh):
    """shuntctl tap shows each request's request id and trace id (this
    sidecar's span), so an operator can go from a tapped request to its
    access lines and its trace."""
    topo, a, b, ra, rb = mesh
    tap = topo.app.spawn([sl.SHUNTCTL, "tap", "--path", "/tapped", "--max", "1", "--seconds", "20"],
                         "tap-ids")  # fmt: skip
    try:
        a.wait_metric("shunt_tap_sessions", lambda v: v == 1, timeout=10)
        curl_json(topo, "-H", "traceparent: 00-%s-%s-01" % (TRACE_TAP, PARENT), "-H",
                  "X-Request-ID: rid-tap-1", "http://%s/tapped" % VIP_WEB)  # fmt: skip
        assert tap.wait(15) == 0, tap.read_stderr()
    finally:
        if tap.alive():
            tap.stop()
    line = tap.read_stdout()
    assert "/tapped" in line and " request_id=rid-tap-1" in line, line
    assert " trace_id=%s" % TRACE_TAP in line, line
    # The trace it names is the one A exported.
    ra.wait_spans(lambda s: s["traceId"] == TRACE_TAP and attrs(s)["shunt.request_id"] == "rid-tap-1")
