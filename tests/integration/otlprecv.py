#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A stand-in OTLP/HTTP trace receiver (JSON encoding) for the tracing tests.

    otlprecv.py --listen HOST:PORT --out FILE --schema NODE_MODULES
                [--delay S] [--status CODE]

Accepts POST /v1/traces with Content-Type application/json and checks the
body twice against the OTLP protobuf JSON mapping of ExportTraceServiceRequest
(opentelemetry/proto/collector/trace/v1, trace/v1, common/v1, resource/v1):

  - with the schema itself: otlp_check.js (node) runs it through the
    protobufjs code @opentelemetry/otlp-transformer generates from the
    .proto files (NODE_MODULES: scripts/get-otlp-schema.sh); unknown or
    misspelt fields, wrong JSON types (int64 not a string, enum not a
    number), undefined enum values, ids not lower-case hex of 16 and 8 bytes;
  - here, what the schema cannot say: traceId and spanId not all zero;
    64-bit times as decimal strings, end >= start; AnyValue with exactly one
    value field; no duplicate attribute key.

Prints "READY" once listening, then appends to FILE one JSON line per request:
{"path", "content_type", "errors": [...], "resource": {attrs},
"spans": [{..., "attributes": {key: python value}}]}. Answers 200 with an
empty ExportTraceServiceResponse ({}), after --delay seconds, or --status.
"""

import argparse
import json
import base64
import os
import re
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HEX32 = re.compile(r"^[0-9a-f]{32}$")
HEX16 = re.compile(r"^[0-9a-f]{16}$")
U64 = re.compile(r"^[0-9]{1,20}$")
I64 = re.compile(r"^-?[0-9]{1,19}$")

REQUEST = {"resourceSpans"}
RESOURCE_SPANS = {"resource", "scopeSpans", "schemaUrl"}
RESOURCE = {"attributes", "droppedAttributesCount"}
SCOPE_SPANS = {"scope", "spans", "schemaUrl"}
SCOPE = {"name", "version", "attributes", "droppedAttributesCount"}
SPAN = {"traceId", "spanId", "traceState", "parentSpanId", "flags", "name", "kind",
        "startTimeUnixNano", "endTimeUnixNano", "attributes", "droppedAttributesCount",
        "events", "droppedEventsCount", "links", "droppedLinksCount", "status"}  # fmt: skip
STATUS = {"message", "code"}
ANY = {"stringValue", "boolValue", "intValue", "doubleValue", "arrayValue", "kvlistValue",
       "bytesValue"}  # fmt: skip
SPAN_KINDS = range(0, 6)  # UNSPECIFIED, INTERNAL, SERVER, CLIENT, PRODUCER, CONSUMER
STATUS_CODES = range(0, 3)  # UNSET, OK, ERROR


class Checker:
    def __init__(self):
        self.errors = []

    def err(self, where, what):
        self.errors.append("%s: %s" % (where, what))

    def obj(self, where, v, allowed):
        if not isinstance(v, dict):
            self.err(where, "not an object")
            return {}
        for k in v:
            if k not in allowed:
                self.err(where, "unknown field %r" % k)
        return v

    def lst(self, where, v):
        if v is None:
            return []
        if not isinstance(v, list):
            self.err(where, "not an array")
            return []
        return v

    def any_value(self, where, v):
        v = self.obj(where, v, ANY)
        if len(v) != 1:
            self.err(where, "AnyValue must have exactly one field, has %s" % sorted(v))
            return None
        (k, x), = v.items()
        if k == "stringValue" and isinstance(x, str):
            return x
        if k == "boolValue" and isinstance(x, bool):
            return x
        if k == "intValue" and ((isinstance(x, str) and I64.match(x)) or
                                (isinstance(x, int) and not isinstance(x, bool))):
            return int(x)
        if k == "doubleValue" and isinstance(x, (int, float)) and not isinstance(x, bool):
            return float(x)
        if k == "arrayValue":
            a = self.obj(where + ".arrayValue", x, {"values"})
            return [self.any_value(where + "[]", e) for e in self.lst(where, a.get("values"))]
        if k == "kvlistValue":
            kv = self.obj(where + ".kvlistValue", x, {"values"})
            return self.attributes(where, kv.get("values"))
        if k == "bytesValue" and isinstance(x, str):
            return x
        self.err(where, "bad %s: %r" % (k, x))
        return None

    def attributes(self, where, v):
        out = {}
        for i, kv in enumerate(self.lst(where, v)):
            w = "%s[%d]" % (where, i)
            kv = self.obj(w, kv, {"key", "value"})
            key = kv.get("key")
            if not isinstance(key, str) or not key:
                self.err(w, "key must be a non-empty string")
                continue
            if key in out:
                self.err(w, "duplicate key %r" % key)
            out[key] = self.any_value(w + "." + key, kv.get("value"))
        return out

    def span(self, where, s):
        s = self.obj(where, s, SPAN)
        for f, rx in (("traceId", HEX32), ("spanId", HEX16)):
            v = s.get(f)
            if not isinstance(v, str) or not rx.match(v) or not v.strip("0"):
                self.err(where, "%s %r: not %d lower-case hex digits, not all zero"
                         % (f, v, 32 if f == "traceId" else 16))
        p = s.get("parentSpanId", "")
        if p and (not isinstance(p, str) or not HEX16.match(p)):
            self.err(where, "parentSpanId %r" % p)
        if not isinstance(s.get("name"), str) or not s["name"]:
            self.err(where, "name must be a non-empty string")
        k = s.get("kind", 0)
        if not isinstance(k, int) or isinstance(k, bool) or k not in SPAN_KINDS:
            self.err(where, "kind %r is not a SpanKind" % k)
        times = []
        for f in ("startTimeUnixNano", "endTimeUnixNano"):
            v = s.get(f)
            if not isinstance(v, str) or not U64.match(v):
                self.err(where, "%s %r: a fixed64 as a decimal string" % (f, v))
                times.append(0)
            else:
                times.append(int(v))
        if times[1] < times[0]:
            self.err(where, "ends before it starts")
        st = self.obj(where + ".status", s.get("status", {}), STATUS)
        code = st.get("code", 0)
        if not isinstance(code, int) or isinstance(code, bool) or code not in STATUS_CODES:
            self.err(where, "status.code %r" % code)
        for f in ("events", "links"):
            self.lst(where + "." + f, s.get(f))
        out = {k: s.get(k) for k in ("traceId", "spanId", "name", "kind",
                                     "startTimeUnixNano", "endTimeUnixNano")}  # fmt: skip
        out["parentSpanId"] = p or None
        out["status"] = code
        out["attributes"] = self.attributes(where + ".attributes", s.get("attributes"))
        return out

    def request(self, body):
        spans, resource = [], {}
        req = self.obj("request", body, REQUEST)
        rss = self.lst("resourceSpans", req.get("resourceSpans"))
        if not rss:
            self.err("request", "no resourceSpans")
        for i, rs in enumerate(rss):
            w = "resourceSpans[%d]" % i
            rs = self.obj(w, rs, RESOURCE_SPANS)
            res = self.obj(w + ".resource", rs.get("resource", {}), RESOURCE)
            resource = self.attributes(w + ".resource.attributes", res.get("attributes"))
            for j, ss in enumerate(self.lst(w + ".scopeSpans", rs.get("scopeSpans"))):
                w2 = "%s.scopeSpans[%d]" % (w, j)
                ss = self.obj(w2, ss, SCOPE_SPANS)
                self.obj(w2 + ".scope", ss.get("scope", {}), SCOPE)
                for k, sp in enumerate(self.lst(w2 + ".spans", ss.get("spans"))):
                    spans.append(self.span("%s.spans[%d]" % (w2, k), sp))
        return resource, spans


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        raw = self.rfile.read(n)
        c = Checker()
        if self.path != "/v1/traces":
            c.err("request", "path %s" % self.path)
        ctype = self.headers.get("Content-Type", "")
        if ctype.split(";")[0].strip() != "application/json":
            c.err("request", "Content-Type %r" % ctype)
        resource, spans = {}, []
        try:
            resource, spans = c.request(json.loads(raw))
        except ValueError as e:
            c.err("request", "not JSON: %s" % e)
        c.errors += ["schema: " + e for e in SCHEMA.check(raw)]
        line = json.dumps({"path": self.path, "content_type": ctype, "errors": c.errors,
                           "resource": resource, "spans": spans})
        with LOCK, open(ARGS.out, "a") as f:
            f.write(line + "\n")
        if ARGS.delay:
            time.sleep(ARGS.delay)
        body = b"{}"
        try:
            self.send_response(ARGS.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        except OSError:
            pass  # the exporter gave up (its timeout)


class Schema:
    """otlp_check.js, one process for the receiver's life: a body in, its
    errors out (a line each)."""

    def __init__(self, modules):
        self.lock = threading.Lock()
        self.proc = subprocess.Popen(
            ["node", os.path.join(os.path.dirname(os.path.abspath(__file__)), "otlp_check.js"),
             modules], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip

    def check(self, raw):
        with self.lock:
            try:
                self.proc.stdin.write(base64.b64encode(raw).decode() + "\n")
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
                return json.loads(line)
            except (OSError, ValueError) as e:
                return ["otlp_check.js failed (%s, exit status %s)" % (e, self.proc.poll())]


LOCK = threading.Lock()
ARGS = None
SCHEMA = None


def main():
    global ARGS, SCHEMA
    p = argparse.ArgumentParser()
    p.add_argument("--listen", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--schema", required=True, help="node_modules holding @opentelemetry/otlp-transformer")
    p.add_argument("--delay", type=float, default=0.0)
    p.add_argument("--status", type=int, default=200)
    p.add_argument("--lifetime", type=float, default=600.0)
    ARGS = p.parse_args()
    SCHEMA = Schema(ARGS.schema)
    # The checker answers a valid request before READY: a schema that does
    # not load fails the receiver's start, not its first request.
    ok = SCHEMA.check(b'{"resourceSpans":[]}')
    if ok:
        print("otlprecv: the schema check does not work: %s" % ok, file=sys.stderr)
        return 1
    host, _, port = ARGS.listen.rpartition(":")
    srv = ThreadingHTTPServer((host, int(port)), Handler)
    srv.daemon_threads = True
    t = threading.Timer(ARGS.lifetime, srv.shutdown)
    t.daemon = True
    t.start()
    print("READY", flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    sys.exit(main())
