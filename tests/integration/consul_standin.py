#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A stand-in for a Consul agent's HTTP API, for shunt's integration tests.

Written from Consul's documented wire behaviour (HTTP API: catalog, health,
blocking queries, ACL tokens), not from its code. It serves:

  GET /v1/catalog/services        {"name": [tags...], ...}
  GET /v1/health/service/<name>   [{"Node": {...}, "Service": {...}, "Checks": [...]}]

Both are blocking endpoints: every answer carries X-Consul-Index; with
?index=N (N > 0) the request hangs while the resource's index is still N or
lower, until it changes (answered at once) or the wait runs out (answered
with the same index: nothing changed). ?wait= takes "10s", "5m" or "100ms",
default 5m, honoured in full up to 10 minutes as Consul does (--max-wait can
lower that cap), plus up to wait/16 of jitter, as Consul adds.
?dc= must name --datacenter (else 500 "No path to datacenter").
With --token, X-Consul-Token (or ?token=) must match: else 403
"ACL not found". A known token whose policy does not grant service:read on
a service (set_acl) is not refused: as Consul does, the answer is 200 with
that service filtered out (an empty array on /v1/health/service/<name>, no
key in /v1/catalog/services) and X-Consul-Results-Filtered-By-ACLs: true.
Weights default to {"Passing": 1, "Warning": 1}, as Consul fills them in.

    consul_standin.py --listen HOST:PORT --control HOST:PORT [--token T]
                      [--datacenter dc1] [--max-wait SECONDS] [--lifetime S]
                      [--tls-cert PEM --tls-key PEM [--tls-client-ca PEM]]

With --tls-cert the API listener serves HTTPS (Consul's https port, 8501 by
default); with --tls-client-ca it also requires a client certificate signed
by those CAs, as an agent with verify_incoming does.

It prints "READY {...}" on stdout when both listeners are up. The control
listener takes POST /control with a JSON object {"op": ...}:

  {"op": "set_service", "name", "instances": [{"id", "node", "node_address",
      "address", "port", "tags", "tagged_addresses", "weights", "status",
      "meta", "connect_native", "namespace"}]}
      (meta: Service.Meta; connect_native: Service.Connect.Native, a
      Connect-native instance; namespace: Service.Namespace, Enterprise)
  {"op": "delete_service", "name"}
  {"op": "set_status", "name", "id", "status": "passing|warning|critical"}
  {"op": "fail", "mode": "slow|bad_json|drop|http500", "count": N, "seconds": S}
       the next N API requests (-1: all until {"mode": "none"}) misbehave
  {"op": "down"} / {"op": "up"}     stop / restart the API listener
  {"op": "set_token", "token": T}  the ACL token required from now on
  {"op": "reset_index"}             every index goes backwards (like a
                                    restored snapshot or a new cluster)
  {"op": "zero_index", "name", "on"} answers for that service carry
                                    X-Consul-Index: 0 (a Consul bug the
                                    documentation says still happens)
  {"op": "spurious", "name", "seconds", "interval"}  the service's index
                                    moves every interval seconds with the
                                    same data (writes elsewhere, idempotent
                                    writes): blocked queries wake up for nothing
  {"op": "set_acl", "deny": [names], "deny_nodes": [nodes]}  the token
                                    lacks service:read on those services
                                    (left out of the catalog and of their
                                    health), node:read on those nodes (their
                                    instances left out of health answers);
                                    blocked queries see it at their next answer
  {"op": "stats"}                   request counts and the last queries

and answers {"ok": true, ...}. It exits after --lifetime seconds (default
600) whatever happens.
"""

import argparse
import json
import random
import re
import socket
import ssl
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class State:
    def __init__(self, datacenter, token, max_wait):
        self.cv = threading.Condition()
        self.dc = datacenter
        self.token = token
        self.max_wait = max_wait
        self.index = 10  # raft index: every write takes the next one
        self.catalog_index = 10
        self.services = {"consul": {"index": 10, "instances": []}}
        self.fail_mode = "none"
        self.fail_count = 0
        self.fail_seconds = 0.0
        self.requests = 0
        self.blocked = 0
        self.by_status = {}
        self.by_path = {}
        self.waits = []  # recent blocked queries: {"path", "wait", "blocked_s", "index"}
        self.zero = set()  # services answered with X-Consul-Index: 0
        self.deny = set()  # services the token cannot read
        self.deny_nodes = set()  # nodes the token cannot read
        self.spurious_wakeups = 0
        self.last = []  # recent (path, query, token) triples

    def bump(self):
        self.index += 1
        return self.index

    # ---- writes (control) ----------------------------------------------------

    def set_service(self, name, instances):
        with self.cv:
            idx = self.bump()
            if name not in self.services:
                self.catalog_index = idx
            elif [i.get("tags") for i in instances] != [
                i.get("tags") for i in self.services[name]["instances"]
            ]:
                self.catalog_index = idx
            self.services[name] = {"index": idx, "modify": idx,
                                   "instances": [dict(i) for i in instances]}
            self.cv.notify_all()

    def delete_service(self, name):
        with self.cv:
            if name in self.services:
                idx = self.bump()
                del self.services[name]
                self.catalog_index = idx
                self.cv.notify_all()

    def set_status(self, name, iid, status):
        with self.cv:
            for inst in self.services[name]["instances"]:
                if inst["id"] == iid:
                    inst["status"] = status
                    self.services[name]["index"] = self.services[name]["modify"] = self.bump()
                    self.cv.notify_all()
                    return True
            return False

    def churn(self, name, seconds, interval):
        """The service's index moves, its data does not."""
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            with self.cv:
                if name in self.services:
                    self.services[name]["index"] = self.bump()
                    self.spurious_wakeups += 1
                    self.cv.notify_all()
            time.sleep(interval)

    def reset_index(self):
        """Every index goes backwards: a restored snapshot or a new cluster."""
        with self.cv:
            self.index = 2
            self.catalog_index = self.bump()
            for s in self.services.values():
                s["index"] = s["modify"] = self.bump()
            self.cv.notify_all()

    # ---- reads ----------------------------------------------------------------

    def resource_index(self, kind, name):
        if kind == "catalog":
            return self.catalog_index
        if name in self.zero:
            return 0
        s = self.services.get(name)
        return s["index"] if s else self.catalog_index

    def render(self, kind, name, deny=(), deny_nodes=()):
        """The answer, less what deny/deny_nodes hide, and whether something
        was hidden."""
        out = self.render_all(kind, name, deny, deny_nodes)
        full = self.render_all(kind, name, (), ())
        return out, len(out) != len(full)

    def render_all(self, kind, name, deny, deny_nodes):
        if kind == "catalog":
            out = {}
            for n, s in sorted(self.services.items()):
                if n in deny:
                    continue
                tags = []
                for i in s["instances"]:
                    for t in i.get("tags", []):
                        if t not in tags:
                            tags.append(t)
                out[n] = tags
            return out
        s = self.services.get(name)
        if not s or name in deny:
            return []
        out = []
        for i in s["instances"]:
            node = i.get("node", "node-" + i["id"])
            sid = i["id"]
            if node in deny_nodes:
                continue
            out.append(
                {
                    "Node": {
                        "ID": "",
                        "Node": node,
                        "Address": i.get("node_address", "127.0.0.1"),
                        "Datacenter": self.dc,
                        "TaggedAddresses": {"lan": i.get("node_address", "127.0.0.1")},
                        "Meta": {},
                        "CreateIndex": 5,
                        "ModifyIndex": 5,
                    },
                    "Service": {
                        "ID": sid,
                        "Service": name,
                        "Tags": i.get("tags", []),
                        "Address": i.get("address", ""),
                        "TaggedAddresses": i.get("tagged_addresses", {}),
                        "Meta": i.get("meta", {}),
                        "Port": i["port"],
                        "Weights": i.get("weights", {"Passing": 1, "Warning": 1}),
                        "EnableTagOverride": False,
                        "Connect": {"Native": True} if i.get("connect_native") else {},
                        **({"Namespace": i["namespace"]} if "namespace" in i else {}),
                        # the entry's own indexes move with its data only
                        "CreateIndex": s.get("modify", s["index"]),
                        "ModifyIndex": s.get("modify", s["index"]),
                    },
                    "Checks": [
                        {
                            "Node": node,
                            "CheckID": "serfHealth",
                            "Name": "Serf Health Status",
                            "Status": "passing",
                            "ServiceID": "",
                            "ServiceName": "",
                        },
                        {
                            "Node": node,
                            "CheckID": "service:" + sid,
                            "Name": "Service '%s' check" % name,
                            "Status": i.get("status", "passing"),
                            "ServiceID": sid,
                            "ServiceName": name,
                        },
                    ],
                }
            )
        return out


def parse_wait(s):
    m = re.fullmatch(r"(\d+)(ms|s|m)", s or "")
    if not m:
        return None
    n, unit = int(m.group(1)), m.group(2)
    return n / 1000.0 if unit == "ms" else n if unit == "s" else n * 60


def make_handler(st):
    class H(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def send(self, code, body, index=None, raw=False, filtered=False):
            data = body if raw else json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            if index is not None:
                self.send_header("X-Consul-Index", str(index))
                self.send_header("X-Consul-KnownLeader", "true")
                self.send_header("X-Consul-LastContact", "0")
            if filtered:
                self.send_header("X-Consul-Results-Filtered-By-ACLs", "true")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            with st.cv:
                st.by_status[code] = st.by_status.get(code, 0) + 1

        def do_GET(self):  # noqa: N802 - http.server naming
            u = urllib.parse.urlsplit(self.path)
            q = dict(urllib.parse.parse_qsl(u.query, keep_blank_values=True))
            token = self.headers.get("X-Consul-Token") or q.get("token", "")
            with st.cv:
                st.requests += 1
                st.by_path[u.path] = st.by_path.get(u.path, 0) + 1
                st.last.append({"path": u.path, "query": q, "token": token})
                del st.last[:-200]
                mode = st.fail_mode
                if mode != "none" and st.fail_count != 0:
                    if st.fail_count > 0:
                        st.fail_count -= 1
                        if st.fail_count == 0:
                            st.fail_mode = "none"
                else:
                    mode = "none"
                seconds = st.fail_seconds
            if mode == "drop":
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                return
            if mode == "slow":
                time.sleep(seconds)
            if mode == "http500":
                self.send(500, b"rpc error: stand-in failure", raw=True)
                return
            if st.token and token != st.token:
                self.send(403, b"ACL not found", raw=True)
                return
            if q.get("dc") and q["dc"] != st.dc:
                self.send(500, b"No path to datacenter", raw=True)
                return
            if u.path == "/v1/catalog/services":
                kind, name = "catalog", None
            elif u.path.startswith("/v1/health/service/"):
                kind, name = "health", urllib.parse.unquote(u.path[len("/v1/health/service/"):])
            else:
                self.send(404, b"not found", raw=True)
                return
            try:
                want = int(q.get("index", "0"))
            except ValueError:
                self.send(400, b"Invalid index", raw=True)
                return
            wait = parse_wait(q.get("wait", "5m")) if "wait" in q else 300
            if wait is None:
                self.send(400, b"Invalid wait time", raw=True)
                return
            asked = wait
            wait = min(wait, 600, st.max_wait)
            wait += random.uniform(0, wait / 16)
            t0 = time.monotonic()
            deadline = t0 + wait
            with st.cv:
                if want > 0 and st.resource_index(kind, name) <= want:
                    st.blocked += 1
                    while st.resource_index(kind, name) <= want:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        st.cv.wait(left)
                    st.waits.append({"path": u.path, "wait": asked, "index": want,
                                     "blocked_s": time.monotonic() - t0})
                    del st.waits[:-100]
                idx = st.resource_index(kind, name)
                # what the token cannot read is left out, which Consul says
                # only to an authenticated caller
                body, filtered = st.render(kind, name, st.deny, st.deny_nodes)
                filtered = filtered and bool(token)
            if mode == "bad_json":
                self.send(200, b'[{"Node": {"Node": "x"', index=idx + 1, raw=True)
                return
            self.send(200, body, index=idx, filtered=filtered)

    return H


def make_control(st, api):
    class C(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *args):
            pass

        def do_POST(self):  # noqa: N802
            n = int(self.headers.get("Content-Length", "0"))
            try:
                req = json.loads(self.rfile.read(n) or b"{}")
                out = self.handle_op(req)
                code = 200
            except Exception as e:  # noqa: BLE001 - reported to the test
                out, code = {"ok": False, "error": repr(e)}, 400
            data = json.dumps(out).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def handle_op(self, req):
            op = req["op"]
            if op == "set_service":
                st.set_service(req["name"], req["instances"])
            elif op == "delete_service":
                st.delete_service(req["name"])
            elif op == "set_status":
                if not st.set_status(req["name"], req["id"], req["status"]):
                    raise KeyError(req["id"])
            elif op == "fail":
                with st.cv:
                    st.fail_mode = req["mode"]
                    st.fail_count = int(req.get("count", 1))
                    st.fail_seconds = float(req.get("seconds", 0))
            elif op == "down":
                api.down()
            elif op == "up":
                api.up()
            elif op == "set_token":
                with st.cv:
                    st.token = req["token"]
            elif op == "reset_index":
                st.reset_index()
            elif op == "zero_index":
                with st.cv:
                    (st.zero.add if req.get("on", True) else st.zero.discard)(req["name"])
                    st.cv.notify_all()
            elif op == "spurious":
                threading.Thread(target=st.churn, daemon=True, args=(
                    req["name"], float(req["seconds"]), float(req.get("interval", 0.05)))).start()
            elif op == "set_acl":
                with st.cv:
                    st.deny = set(req.get("deny", []))
                    st.deny_nodes = set(req.get("deny_nodes", []))
            elif op == "stats":
                with st.cv:
                    return {
                        "ok": True,
                        "requests": st.requests,
                        "blocked": st.blocked,
                        "by_status": {str(k): v for k, v in st.by_status.items()},
                        "by_path": dict(st.by_path),
                        "waits": st.waits[-50:],
                        "spurious_wakeups": st.spurious_wakeups,
                        "last": st.last[-50:],
                        "index": st.index,
                        "up": api.server is not None,
                    }
            else:
                raise ValueError("unknown op " + op)
            return {"ok": True}

    return C


class Api:
    """The API listener, which the test can stop and restart on the same port.
    With tls (an ssl.SSLContext) it serves HTTPS, as an agent with an
    https port and verify_incoming does."""

    def __init__(self, host, port, handler, tls=None):
        self.host, self.port, self.handler = host, port, handler
        self.tls = tls
        self.server = None
        self.lock = threading.Lock()

    def up(self):
        with self.lock:
            if self.server:
                return
            ThreadingHTTPServer.allow_reuse_address = True
            ThreadingHTTPServer.daemon_threads = True
            srv = ThreadingHTTPServer((self.host, self.port), self.handler)
            if self.tls:
                # The handshake runs in the request's thread (on its first
                # read), so a client that never sends one holds no accept.
                srv.socket = self.tls.wrap_socket(srv.socket, server_side=True,
                                                  do_handshake_on_connect=False)
            self.port = srv.server_address[1]
            threading.Thread(target=srv.serve_forever, daemon=True).start()
            self.server = srv

    def down(self):
        with self.lock:
            srv, self.server = self.server, None
        if srv:
            srv.shutdown()
            srv.server_close()


def hostport(s):
    h, _, p = s.rpartition(":")
    return h.strip("[]"), int(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--control", required=True)
    ap.add_argument("--token", default="")
    ap.add_argument("--datacenter", default="dc1")
    ap.add_argument("--max-wait", type=float, default=600)
    ap.add_argument("--lifetime", type=float, default=600)
    ap.add_argument("--tls-cert", help="serve HTTPS with this PEM certificate chain")
    ap.add_argument("--tls-key")
    ap.add_argument("--tls-client-ca", help="require client certificates signed by these CAs")
    a = ap.parse_args()
    st = State(a.datacenter, a.token, a.max_wait)
    tls = None
    if a.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(a.tls_cert, a.tls_key)
        if a.tls_client_ca:
            tls.verify_mode = ssl.CERT_REQUIRED
            tls.load_verify_locations(a.tls_client_ca)
    api = Api(*hostport(a.listen), make_handler(st), tls)
    api.up()
    ch, cp = hostport(a.control)
    ThreadingHTTPServer.daemon_threads = True
    ctl = ThreadingHTTPServer((ch, cp), make_control(st, api))
    threading.Thread(target=ctl.serve_forever, daemon=True).start()
    print(
        "READY " + json.dumps({"listen": [api.host, api.port], "control": [ch, ctl.server_address[1]]}),
        flush=True,
    )
    time.sleep(a.lifetime)
    sys.exit(0)


if __name__ == "__main__":
    main()
