#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""A stand-in for the Kubernetes API server, for shunt's kubernetes discovery
tests. Written from the API documentation (API concepts: efficient detection
of changes, watch bookmarks, resource versions, 410 Gone), serving only what
the discovery backend uses:

  GET /api/v1[/namespaces/NS]/services
  GET /apis/discovery.k8s.io/v1[/namespaces/NS]/endpointslices
  GET /api/v1[/namespaces/NS]/pods
  GET /api/v1/namespaces                      (cluster-scoped)
      list:  {"kind":"...List","metadata":{"resourceVersion":"N"},"items":[...]}
      ?watch=1&resourceVersion=N[&allowWatchBookmarks=true][&timeoutSeconds=S]
             200, Transfer-Encoding: chunked, one JSON event per line
             {"type":"ADDED|MODIFIED|DELETED|BOOKMARK|ERROR","object":{...}};
             a resourceVersion older than the event history -> an ERROR event
             with a Status of code 410 (or HTTP 410, see gone_as_status).
             The history keeps at most --history-max events and, with
             --history-s (or /inject history_s), only those of the last S
             seconds, as etcd's compaction does (5 minutes by default there):
             the resourceVersion of a dropped event becomes the floor, and a
             watch from anything older gets 410. resourceVersions are global
             across kinds, so a client that sees no event of its own for S
             seconds while other objects change must take the newer
             resourceVersion from bookmarks, or relist.
      ?limit=N[&continue=TOKEN]: pages (at most --max-page items each), the
             continue token in metadata.continue; an expired token -> 410
      ?labelSelector=k=v,k!=v,k,!k (equality and existence)
      ?fieldSelector=metadata.name=X,metadata.namespace=Y
      A watch with a selector sees an object that stops matching as DELETED
      (carrying the object as it was before, at the event's resourceVersion)
      and one that starts matching as ADDED, as the API server's watch cache
      does.
  GET /apis/gateway.networking.k8s.io/v1[/namespaces/NS]/httproutes|grpcroutes
      the same, for Gateway API routes: the CRD schema's defaults filled in
      and its validation applied at POST /apply (422); POST /missing
      {"kinds": [...]} makes them 404 as without their CRDs; see "Gateway API routes"
  A kind made forbidden (/inject forbid) answers lists and watches with 403
  and the Status RBAC's authorizer writes ("services is forbidden: User ...
  cannot watch resource ...", reason Forbidden, details.kind/group).
  Authorization: Bearer TOKEN checked (401 Status otherwise), unless the
  client presented a certificate issued by --client-ca; TLS with the given
  certificate.

A plain-HTTP control endpoint (loopback) lets the test change objects and
inject failures:

  POST /apply   {"kind":"services|endpointslices","type":"ADDED|MODIFIED|DELETED","object":{...}}
  POST /inject  {"bad_json":"endpointslices"}   one malformed line on open watches
                {"silence":true}                 open watch streams go silent (stay open)
                {"gone_event":true}              history compacted; open watches get ERROR 410
                {"gone_status":true}             history compacted; open watches closed;
                                                 old resourceVersions then get HTTP 410
                {"bookmark_s":N}                 bookmark interval (0: none)
                {"token":"..."}                  the accepted bearer token
                {"expire_continue":true}         the next list continue token gets 410
                {"huge":{"kind":..,"object":..}} the object MODIFIED with a 17 MiB annotation
                {"history_s":S}                  events older than S seconds compacted (0: no age limit)
                {"forbid":["endpointslices",..]} those kinds answer 403 (RBAC); [] lifts it
                {"list_delay_s":S}               lists answer only after S seconds
  GET  /stats   request counters

Service-account tokens and TokenReview (for shunt-ca), see the section
"service-account tokens" below:

  POST /apis/authentication.k8s.io/v1/tokenreviews   (API, caller authenticated as above)
  POST /token        {"namespace","service_account","audience","expires_in","pod"} -> {"token"}
  POST /tokenreview  {"fail_status":500|0, "delay_s":S, "bad_json":bool,
                      "delete_service_account":"ns/sa", "restore_service_account":"ns/sa"}
  GET  /tokenreview  TokenReview counters

Single pods, pod field selectors and pod-bound tokens (shunt-ca's delegated
issuance): the section "node-mode identities" below.

State (objects and resourceVersion) is kept in --state so that a restarted
server keeps its objects; its event history starts empty, as an API server's
watch cache does after a restart.
"""

import argparse
import base64
import copy
import hashlib
import hmac
import json
import os
import ssl
import threading
import time
import urllib.parse
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

KINDS = {
    "services": ("v1", "Service", "ServiceList", "/api/v1"),
    "endpointslices": ("discovery.k8s.io/v1", "EndpointSlice", "EndpointSliceList",
                       "/apis/discovery.k8s.io/v1"),
}

# ---- pods and namespaces (k8s-identity) ------------------------------------
# Namespaces are cluster-scoped (no metadata.namespace; key ("", name)).
KINDS["pods"] = ("v1", "Pod", "PodList", "/api/v1")
KINDS["namespaces"] = ("v1", "Namespace", "NamespaceList", "/api/v1")
CLUSTER_SCOPED = {"namespaces"}


def field_match(sel, obj):
    """fieldSelector: metadata.name / metadata.namespace, = == and !=."""
    md = obj.get("metadata") or {}
    for term in (sel or "").split(","):
        term = term.strip()
        if not term:
            continue
        neg = "!=" in term
        k, v = term.replace("!=", "=").replace("==", "=").split("=", 1)
        have = md.get(k.strip()[len("metadata."):], "") if k.strip().startswith("metadata.") \
            else None
        if (have == v.strip()) == neg:
            return False
    return True


def selector_event(line, old, visible):
    """The event a watch with a selector sees for a history line whose object
    was `old` before the change: None (not visible before nor after), or
    the line, retyped ADDED/DELETED when the object starts/stops matching.
    Leaving the selector, the watch cache sends the object as it was (it
    matched then) with the event's resourceVersion."""
    ev = json.loads(line)
    now_vis = visible(ev["object"])
    old_vis = old is not None and visible(old)
    if ev["type"] == "MODIFIED" and old is not None and old_vis != now_vis:
        if now_vis:
            ev["type"] = "ADDED"
        else:
            prev = copy.deepcopy(old)
            prev["metadata"]["resourceVersion"] = ev["object"]["metadata"]["resourceVersion"]
            ev = {"type": "DELETED", "object": prev}
        return json.dumps(ev).encode()
    if ev["type"] == "DELETED":
        return line if (old_vis if old is not None else now_vis) else None
    return line if now_vis else None
# ---- end pods and namespaces -------------------------------------------------


# ---- shunt.io AuthorizationPolicy (engineer authz): a namespaced custom
# resource, served like the built-in kinds: list (pages), watch, 410, bookmarks.
#   GET /apis/shunt.io/v1alpha1[/namespaces/NS]/authorizationpolicies
#   POST /apply {"kind":"authorizationpolicies", ...}
KINDS["authorizationpolicies"] = ("shunt.io/v1alpha1", "AuthorizationPolicy",
                                  "AuthorizationPolicyList", "/apis/shunt.io/v1alpha1")


class State:
    def __init__(self, path, token, bookmark_s, history_max=2000, history_s=0.0):
        self.path = path
        self.cv = threading.Condition()
        self.objects = {k: {} for k in KINDS}
        self.rv = 1
        if path and os.path.exists(path):
            with open(path) as f:
                saved = json.load(f)
            self.objects.update({k: {tuple(key.split("/", 1)): o for key, o in v.items()}
                                 for k, v in saved["objects"].items()})
            self.rv = saved["rv"]
        # history: list of (seq, rv, kind, line bytes, monotonic time); floor:
        # oldest rv a watch may resume from
        self.history = []
        self.history_max = history_max
        self.history_s = history_s
        self.forbid = set()
        self.list_delay_s = 0.0
        self.before = {}  # seq -> the object before a MODIFIED/DELETED (selector watches)
        self.seq = 0
        self.floor = self.rv
        self.epoch = 0  # bumped by compaction: open watches of older epochs end
        self.watch_ids = 0
        self.silence_upto = 0  # watch streams with an id up to this one are silent
        self.token = token
        self.bookmark_s = bookmark_s
        self.gone_as_status = False
        self.max_page = 0
        self.expire_continue = False
        self.stats = {"list": {k: 0 for k in KINDS}, "watch": {k: 0 for k in KINDS},
                      "unauthorized": 0, "client_cert": 0, "pages": 0, "continue_expired": 0, "gone_status": 0, "gone_event": 0, "open_watches": 0,
                      "compacted": 0, "forbidden": 0, "lists_in_flight": 0,
                      "watch_from": {k: None for k in KINDS}}

    def save(self):
        if not self.path:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"rv": self.rv, "objects": {
                k: {"/".join(key): o for key, o in v.items()} for k, v in self.objects.items()}}, f)
        os.rename(tmp, self.path)

    def push(self, kind, line, pending=False, before=None):
        # a pending entry (injected bad JSON) sorts after the current
        # resourceVersion: a watch opened from it still receives it
        self.seq += 1
        self.history.append((self.seq, self.rv + (0.5 if pending else 0), kind, line,
                             time.monotonic()))
        if before is not None:
            self.before[self.seq] = before
        self.compact()
        self.cv.notify_all()

    def compact(self):
        """Drops the events beyond --history-max, and those older than
        history_s seconds; the newest dropped one's resourceVersion becomes
        the floor: a watch from before it would miss it, so it gets 410."""
        cut = max(0, len(self.history) - self.history_max)
        if self.history_s:
            old = time.monotonic() - self.history_s
            while cut < len(self.history) and self.history[cut][4] < old:
                cut += 1
        if not cut:
            return
        self.floor = max(self.floor, self.history[cut - 1][1])
        self.stats["compacted"] += cut
        del self.history[:cut]
        first = self.history[0][0] if self.history else self.seq + 1
        for s in [s for s in self.before if s < first]:
            del self.before[s]

    def apply(self, kind, etype, obj):
        with self.cv:
            md = obj.setdefault("metadata", {})
            if kind in CLUSTER_SCOPED:
                md.pop("namespace", None)
                key = ("", md["name"])
            else:
                md.setdefault("namespace", "default")
                key = (md["namespace"], md["name"])
            before = copy.deepcopy(self.objects[kind].get(key))
            if before is not None and etype != "DELETED":
                md.setdefault("uid", before["metadata"].get("uid"))
            md.setdefault("uid", "%08x-0000-4000-8000-%012x" % (self.rv, self.seq))
            self.rv += 1
            md["resourceVersion"] = str(self.rv)
            api, k, _, _ = KINDS[kind]
            obj.setdefault("apiVersion", api)
            obj.setdefault("kind", k)
            if etype == "DELETED":
                old = self.objects[kind].pop(key, None)
                if old is None:
                    return False
                obj = old
                obj["metadata"]["resourceVersion"] = str(self.rv)
            else:
                self.objects[kind][key] = obj
            line = json.dumps({"type": etype, "object": obj}).encode()
            self.push(kind, line, before=before)
            self.save()
            return True


def selector_match(sel, labels):
    if not sel:
        return True
    for term in sel.split(","):
        term = term.strip()
        if not term:
            continue
        if "!=" in term:
            k, v = term.split("!=", 1)
            if labels.get(k.strip()) == v.strip():
                return False
        elif "==" in term or "=" in term:
            k, v = term.replace("==", "=").split("=", 1)
            if labels.get(k.strip()) != v.strip():
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def status(code, reason, message):
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


def rbac_forbidden(kind, ns, verb, user):
    """The Status kube-apiserver sends when the authorizer (RBAC) denies a
    request: 403, reason Forbidden, the message naming user, verb, resource,
    API group and scope."""
    group = KINDS[kind][0].rpartition("/")[0]
    where = 'in the namespace "%s"' % ns if ns else "at the cluster scope"
    st = status(403, "Forbidden", '%s%s is forbidden: User "%s" cannot %s resource "%s" in '
                'API group "%s" %s' % (kind, "." + group if group else "", user, verb, kind,
                                       group, where))
    st["details"] = dict({"kind": kind}, **({"group": group} if group else {}))
    return st


def cert_cn(cert):
    for rdn in cert.get("subject", ()):
        for k, v in rdn:
            if k == "commonName":
                return v
    return ""


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "k8s-standin"

    def log_message(self, fmt, *args):
        pass

    def send_json(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def route(self, path):
        for kind, (_, _, _, prefix) in KINDS.items():
            if path == "%s/%s" % (prefix, kind):
                return kind, None
            if path.startswith(prefix + "/namespaces/") and path.endswith("/" + kind):
                ns = path[len(prefix + "/namespaces/"):-len("/" + kind)]
                if ns and "/" not in ns:
                    return kind, ns
        return None, None

    def do_GET(self):  # noqa: N802
        st = self.server.state
        u = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(u.query))
        cert = None
        try:
            cert = self.connection.getpeercert()
        except (AttributeError, ValueError):
            pass
        if cert:
            with st.cv:
                st.stats["client_cert"] += 1
        elif self.headers.get("Authorization") != "Bearer " + st.token:
            with st.cv:
                st.stats["unauthorized"] += 1
            return self.send_json(401, status(401, "Unauthorized", "Unauthorized"))
        kind, ns = self.route(u.path)
        if not kind:
            return self.send_json(404, status(404, "NotFound", "the server could not find the "
                                              "requested resource"))
        with st.cv:
            forbidden = kind in st.forbid
            if forbidden:
                st.stats["forbidden"] += 1
        if forbidden:
            return self.send_json(403, rbac_forbidden(
                kind, ns, "watch" if q.get("watch") in ("1", "true") else "list",
                cert_cn(cert) if cert else st.user))
        sel = q.get("labelSelector", "")
        fsel = q.get("fieldSelector", "")

        def visible(obj):
            md = obj["metadata"]
            return (ns is None or md.get("namespace") == ns) and selector_match(
                sel, md.get("labels") or {}) and field_match(fsel, obj)

        if q.get("watch") not in ("1", "true"):
            return self.list(st, kind, q, visible)
        self.watch(st, kind, q, visible)

    def list(self, st, kind, q, visible):
        """A list; with limit, pages of at most min(limit, --max-page) items
        and a continue token (the server may return fewer than asked)."""
        api, _, lkind, _ = KINDS[kind]
        with st.cv:
            delay = st.list_delay_s
            st.stats["lists_in_flight"] += 1
        if delay:
            time.sleep(delay)  # a slow API server: the answer is late, not missing
        with st.cv:
            st.stats["lists_in_flight"] -= 1
            st.stats["list"][kind] += 1
            st.stats["pages"] += 1
            rv, after = st.rv, None
            if q.get("continue"):
                try:
                    tok = json.loads(base64.b64decode(q["continue"]))
                except (ValueError, TypeError):
                    return self.send_json(400, status(400, "BadRequest", "invalid continue"))
                if tok["epoch"] != st.epoch or st.expire_continue:
                    st.expire_continue = False
                    st.stats["continue_expired"] += 1
                    return self.send_json(410, status(
                        410, "Expired", "The provided continue parameter is too old to display a "
                        "consistent list result. You can start a new list without the continue "
                        "parameter."))
                rv, after = tok["rv"], tuple(tok["after"])
            keys = sorted(k for k, o in st.objects[kind].items()
                          if visible(o) and (after is None or k > after))
            limit = int(q.get("limit", "0") or "0")
            if limit and st.max_page:
                limit = min(limit, st.max_page)
            more = bool(limit) and len(keys) > limit
            if limit:
                keys = keys[:limit]
            items = [copy.deepcopy(st.objects[kind][k]) for k in keys]
            md = {"resourceVersion": str(rv)}
            if more:
                md["continue"] = base64.b64encode(json.dumps(
                    {"rv": rv, "after": list(keys[-1]), "epoch": st.epoch}).encode()).decode()
        return self.send_json(200, {"kind": lkind, "apiVersion": api, "metadata": md,
                                    "items": items})

    def chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def watch(self, st, kind, q, visible):
        try:
            rv = int(q.get("resourceVersion", "0") or "0")
        except ValueError:
            return self.send_json(400, status(400, "BadRequest", "invalid resourceVersion"))
        timeout = float(q.get("timeoutSeconds", "1800"))
        bookmarks = q.get("allowWatchBookmarks") == "true"
        with st.cv:
            st.compact()
            st.stats["watch"][kind] += 1
            st.stats["watch_from"][kind] = rv
            too_old = rv < st.floor
            if too_old and st.gone_as_status:
                st.stats["gone_status"] += 1
        msg = "too old resource version: %d (%d)" % (rv, int(st.floor))
        if too_old and st.gone_as_status:
            return self.send_json(410, status(410, "Expired", msg))
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        self.wfile.flush()
        if too_old:
            with st.cv:
                st.stats["gone_event"] += 1
            self.chunk(json.dumps({"type": "ERROR", "object": status(410, "Expired", msg)})
                       .encode() + b"\n")
            self.chunk(b"")
            return
        end = time.monotonic() + timeout
        with st.cv:
            epoch = st.epoch
            # resume after rv: the entries newer than it
            seq = 0
            for s, erv, _, _, _ in st.history:
                if erv <= rv:
                    seq = s
            st.stats["open_watches"] += 1
            st.watch_ids += 1
            wid = st.watch_ids
        last_bookmark = time.monotonic()
        try:
            while True:
                out = []
                with st.cv:
                    now = time.monotonic()
                    if wid <= st.silence_upto:
                        # this stream was open when silence was injected: it hangs,
                        # past its timeout too, sending nothing (bounded: 120 s)
                        if now >= end + 120:
                            self.close_connection = True
                            return
                        st.cv.wait(0.5)
                        continue
                    if now >= end:
                        break
                    if st.epoch != epoch:
                        if st.gone_as_status:
                            break  # dropped; the client reconnects and gets HTTP 410
                        out.append(json.dumps({"type": "ERROR", "object": status(
                            410, "Expired", "too old resource version")}).encode())
                        st.stats["gone_event"] += 1
                        closing = True
                    else:
                        closing = False
                        for s, erv, k, line, _ in st.history:
                            if s <= seq:
                                continue
                            seq = s
                            if k != kind:
                                continue
                            if line.startswith(b"{") and line.endswith(b"}"):
                                line = selector_event(line, st.before.get(s), visible)
                                if line is None:
                                    continue
                            out.append(line)
                        if not out and bookmarks and st.bookmark_s and \
                                now - last_bookmark >= st.bookmark_s:
                            api, k, _, _ = KINDS[kind]
                            out.append(json.dumps({"type": "BOOKMARK", "object": {
                                "kind": k, "apiVersion": api,
                                "metadata": {"resourceVersion": str(st.rv)}}}).encode())
                            last_bookmark = now
                        if not out:
                            st.cv.wait(min(end - now, 0.2))
                            continue
                for line in out:
                    self.chunk(line + b"\n")
                if closing:
                    break
            self.chunk(b"")
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            self.close_connection = True
        finally:
            with st.cv:
                st.stats["open_watches"] -= 1


class Control(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def reply(self, code, obj):
        body = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):  # noqa: N802
        st = self.server.state
        if self.path == "/tokenreview":
            return self.reply(200, st.authn.control({}))
        with st.cv:
            st.compact()
            return self.reply(200, dict(st.stats, rv=st.rv, floor=st.floor))

    def do_POST(self):  # noqa: N802
        st = self.server.state
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
        if self.path in ("/token", "/tokenreview"):
            return control_post_authn(self, st, body)
        if self.path == "/apply":
            ok = st.apply(body["kind"], body["type"], body["object"])
            return self.reply(200 if ok else 404, {"rv": st.rv})
        if self.path == "/inject":
            with st.cv:
                if "bad_json" in body:
                    st.push(body["bad_json"], b'{"type":"MODIFIED","object":{"metadata":', pending=True)
                    then = body.get("then_apply")
                    if then:  # a good event right behind it, on the same streams
                        st.apply(then["kind"], then["type"], then["object"])
                if body.get("silence"):
                    st.silence_upto = st.watch_ids
                if body.get("gone_event") or body.get("gone_status"):
                    st.gone_as_status = bool(body.get("gone_status"))
                    st.history = []
                    st.floor = st.rv + 1  # every resourceVersion handed out is now too old
                    st.rv += 1
                    st.epoch += 1
                    st.save()
                if "bookmark_s" in body:
                    st.bookmark_s = float(body["bookmark_s"])
                if "huge" in body:  # an object whose event line is over 16 MiB
                    obj = copy.deepcopy(body["huge"]["object"])
                    obj["metadata"].setdefault("annotations", {})["big"] = "x" * (17 << 20)
                    st.apply(body["huge"]["kind"], "MODIFIED", obj)
                if "history_s" in body:
                    st.history_s = float(body["history_s"])
                    st.compact()
                if "forbid" in body:
                    st.forbid = set(body["forbid"])
                if "list_delay_s" in body:
                    st.list_delay_s = float(body["list_delay_s"])
                if body.get("expire_continue"):
                    st.expire_continue = True
                if "token" in body:
                    st.token = body["token"]
                st.cv.notify_all()
            return self.reply(200, {"rv": st.rv})
        return self.reply(404, {"error": "unknown"})


# ---- service-account tokens and TokenReview -------------------------------------------
#
# Tokens are JWT-shaped (header.payload.signature, base64url) like the
# kubelet's projected tokens, HMAC-SHA256-signed with a secret only this
# process knows. TokenReview follows authentication.k8s.io/v1: a TokenReview
# object in, the same object with a status out (201 Created); a refused
# token gets authenticated omitted, user {} and kube-apiserver's error text;
# status.audiences is the intersection of spec.audiences (default: the API
# server's own audience) and the token's aud.

APISERVER_AUDIENCE = "https://kubernetes.default.svc.cluster.local"
TOKENREVIEW_PATH = "/apis/authentication.k8s.io/v1/tokenreviews"


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class Authn:
    def __init__(self):
        self.lock = threading.Lock()
        self.secret = os.urandom(32)
        self.sa_uids = {}  # (ns, sa) -> uid; a deleted account gets a new uid when restored
        self.deleted = set()
        self.fail_status = 0
        self.delay_s = 0.0
        self.bad_json = False
        self.stats = {"tokenreviews": 0, "authenticated": 0, "refused": 0, "failed": 0,
                      "tokens": 0}

    def sa_uid(self, ns, sa):
        with self.lock:
            return self.sa_uids.setdefault((ns, sa), str(uuid.uuid4()))

    def mint(self, body):
        ns, sa = body["namespace"], body["service_account"]
        aud = body.get("audience", APISERVER_AUDIENCE)
        now = int(time.time())
        exp = now + int(body.get("expires_in", 3600))
        claims = {"iss": "https://kubernetes.default.svc.cluster.local",
                  "sub": "system:serviceaccount:%s:%s" % (ns, sa),
                  "aud": aud if isinstance(aud, list) else [aud],
                  "exp": exp, "iat": now, "nbf": now,
                  "kubernetes.io": {"namespace": ns,
                                    "serviceaccount": {"name": sa, "uid": self.sa_uid(ns, sa)}}}
        pod = body.get("pod")
        if pod:
            claims["kubernetes.io"]["pod"] = {"name": pod, "uid": str(uuid.uuid5(
                uuid.NAMESPACE_URL, "pod/%s/%s" % (ns, pod)))}
        head = b64url(json.dumps({"alg": "HS256", "kid": "standin"}).encode())
        payload = b64url(json.dumps(claims).encode())
        sig = b64url(hmac.new(self.secret, ("%s.%s" % (head, payload)).encode(),
                              hashlib.sha256).digest())
        with self.lock:
            self.stats["tokens"] += 1
        return "%s.%s.%s" % (head, payload, sig)

    def review(self, token, audiences):
        """(status dict) for a token, as kube-apiserver's authenticators answer."""
        def refused(why):
            return {"user": {}, "error": "[invalid bearer token, %s]" % why}
        parts = token.split(".")
        if len(parts) != 3:
            return refused("square/go-jose: compact JWS format must have three parts")
        try:
            claims = json.loads(b64url_decode(parts[1]))
            want = hmac.new(self.secret, ("%s.%s" % (parts[0], parts[1])).encode(),
                            hashlib.sha256).digest()
            good = hmac.compare_digest(want, b64url_decode(parts[2]))
        except (ValueError, TypeError):
            return refused("square/go-jose: error in cryptographic primitive")
        if not good:
            return refused("square/go-jose: error in cryptographic primitive")
        now = time.time()
        if claims.get("exp", 0) <= now:
            return refused("service account token has expired")
        if claims.get("nbf", 0) > now + 60:
            return refused("service account token is not valid yet")
        audiences = audiences or [APISERVER_AUDIENCE]
        inter = [a for a in audiences if a in claims.get("aud", [])]
        if not inter:
            return refused("token audiences %s is invalid for the target audiences %s" % (
                json.dumps(claims.get("aud", [])), json.dumps(audiences)))
        k = claims.get("kubernetes.io", {})
        ns, sa = k.get("namespace", ""), k.get("serviceaccount", {}).get("name", "")
        with self.lock:
            uid = self.sa_uids.get((ns, sa))
            gone = (ns, sa) in self.deleted
        if gone or uid is None:
            return refused('serviceaccounts "%s" not found' % sa)
        if uid != k.get("serviceaccount", {}).get("uid"):
            return refused("service account token has been invalidated")
        extra = {}
        if "pod" in k:
            extra = {"authentication.kubernetes.io/pod-name": [k["pod"]["name"]],
                     "authentication.kubernetes.io/pod-uid": [k["pod"]["uid"]]}
        return {"authenticated": True,
                "user": {"username": "system:serviceaccount:%s:%s" % (ns, sa), "uid": uid,
                         "groups": ["system:serviceaccounts", "system:serviceaccounts:" + ns,
                                    "system:authenticated"], "extra": extra},
                "audiences": inter}

    def control(self, body):
        with self.lock:
            if "fail_status" in body:
                self.fail_status = int(body["fail_status"])
            if "delay_s" in body:
                self.delay_s = float(body["delay_s"])
            if "bad_json" in body:
                self.bad_json = bool(body["bad_json"])
            if body.get("delete_service_account"):
                self.deleted.add(tuple(body["delete_service_account"].split("/", 1)))
            if body.get("restore_service_account"):
                key = tuple(body["restore_service_account"].split("/", 1))
                self.deleted.discard(key)
                self.sa_uids[key] = str(uuid.uuid4())  # a new object: old tokens stay invalid
            return dict(self.stats, fail_status=self.fail_status, delay_s=self.delay_s)


def tokenreview_post(handler, authn):
    """POST .../tokenreviews on the API listener (the caller already authenticated)."""
    try:
        n = int(handler.headers.get("Content-Length", "0"))
        obj = json.loads(handler.rfile.read(n) or b"null")
    except ValueError:
        return handler.send_json(400, status(400, "BadRequest", "the request body is not JSON"))
    with authn.lock:
        authn.stats["tokenreviews"] += 1
        fail, delay, bad = authn.fail_status, authn.delay_s, authn.bad_json
    if delay:
        time.sleep(delay)
    if fail:
        with authn.lock:
            authn.stats["failed"] += 1
        return handler.send_json(fail, status(fail, "InternalError", "Internal error occurred: "
                                              "injected TokenReview failure"))
    if bad:
        body = b'{"kind":"TokenReview","status":{"authenticated":'
        handler.send_response(201)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.write(body)
        return None
    if not isinstance(obj, dict) or obj.get("kind") != "TokenReview" or \
            obj.get("apiVersion") != "authentication.k8s.io/v1":
        return handler.send_json(400, status(400, "BadRequest", "the body is not an "
                                             "authentication.k8s.io/v1 TokenReview"))
    spec = obj.get("spec") or {}
    token = spec.get("token", "")
    if not isinstance(token, str) or not token:
        return handler.send_json(422, status(422, "Invalid", 'TokenReview.authentication.k8s.io '
                                             '"" is invalid: spec.token: Required value'))
    st = authn.review(token, spec.get("audiences") or [])
    with authn.lock:
        authn.stats["authenticated" if st.get("authenticated") else "refused"] += 1
    return handler.send_json(201, {"kind": "TokenReview", "apiVersion": "authentication.k8s.io/v1",
                                   "metadata": {"creationTimestamp": None},
                                   "spec": spec, "status": st})


def api_authorized(handler, st):
    """The caller's own credentials, as do_GET checks them: a client certificate or the
    bearer token. Sends 401 and returns False otherwise."""
    cert = None
    try:
        cert = handler.connection.getpeercert()
    except (AttributeError, ValueError):
        pass
    if cert or handler.headers.get("Authorization") == "Bearer " + st.token:
        return True
    with st.cv:
        st.stats["unauthorized"] += 1
    handler.send_json(401, status(401, "Unauthorized", "Unauthorized"))
    return False


def api_post(handler):
    st = handler.server.state
    if not api_authorized(handler, st):
        return None
    if urllib.parse.urlsplit(handler.path).path == TOKENREVIEW_PATH:
        return tokenreview_post(handler, st.authn)
    return handler.send_json(405, status(405, "MethodNotAllowed", "the server does not allow "
                                         "this method on the requested resource"))


def control_post_authn(handler, st, body):
    """Control endpoints of this section; None when the path is not one of them."""
    if handler.path == "/token":
        return handler.reply(200, {"token": st.authn.mint(body)})
    if handler.path == "/tokenreview":
        return handler.reply(200, st.authn.control(body))
    return None


Api.do_POST = api_post  # noqa: N815


# ---- node-mode identities (engineer nodeca): what shunt-ca's delegated issuance
# reads, as kube-apiserver serves it. Additive: the code above is unchanged
# apart from main() creating a NodeAuthn.
#   GET /api/v1/namespaces/NS/pods/NAME   one Pod, or a 404 Status
#   ?fieldSelector= also on spec.nodeName, spec.serviceAccountName and
#       status.phase (= == !=), the pod fields the API server selects on
#   POST /token {"bound": true, "namespace", "service_account", "pod", ...}
#       a token bound to a pod the stand-in holds, as the kubelet's TokenRequest
#       makes one: the pod's real uid, and its node (name, uid) unless
#       pod_node_info is off; 404 when there is no such pod
#   TokenReview of a bound token: refused once its pod is gone or replaced
#       ("service account token has been invalidated", as the service-account
#       authenticator says); extra node-name/node-uid when the token has a node
#   POST /tokenreview also takes
#       {"pod_node_info": bool}    tokens minted from now on carry the node
#                                  (true, the default: Kubernetes 1.30 and later)
#       {"success_cache_s": S}     answer a token that authenticated from a cache
#                                  for S s, as kube-apiserver does (10 s there;
#                                  0, the default here: every review checks afresh)
#       {"pods_fail_status": N}    GETs of pods answered with HTTP N (0: served)
#       {"pods_delay_s": S}        GETs of pods answered after S s

POD_FIELDS = {"spec.nodeName", "spec.serviceAccountName", "status.phase"}
INVALIDATED = "service account token has been invalidated"
_field_match_metadata = field_match


def field_match(sel, obj):  # noqa: F811 (extends the one above with pod fields)
    rest = []
    for term in (sel or "").split(","):
        term = term.strip()
        key = term.replace("!=", "=").replace("==", "=").split("=", 1)[0].strip()
        if key not in POD_FIELDS:
            rest.append(term)
            continue
        neg = "!=" in term
        want = term.replace("!=", "=").replace("==", "=").split("=", 1)[1].strip()
        top, field = key.split(".")
        if (((obj.get(top) or {}).get(field, "")) == want) == neg:
            return False
    return _field_match_metadata(",".join(rest), obj)


class NodeAuthn(Authn):
    def __init__(self, state):
        super().__init__()
        self.state = state
        self.pod_node_info = True
        self.success_cache_s = 0.0
        self.pods_fail_status = 0
        self.pods_delay_s = 0.0
        self.cache = {}  # (token, audiences) -> (expiry, status)

    def stored_pod(self, ns, name):
        with self.state.cv:
            return copy.deepcopy(self.state.objects["pods"].get((ns, name)))

    def mint(self, body):
        if not body.get("bound"):
            return super().mint(body)
        pod = self.stored_pod(body["namespace"], body["pod"])
        if pod is None:
            raise LookupError('pods "%s" not found' % body["pod"])
        # an unbound token, then the claims TokenRequest adds for the pod
        head, payload, _ = super().mint(dict(body, pod=None)).split(".")
        claims = json.loads(b64url_decode(payload))
        claims["kubernetes.io"]["pod"] = {"name": body["pod"], "uid": pod["metadata"]["uid"]}
        node = (pod.get("spec") or {}).get("nodeName")
        with self.lock:
            with_node = self.pod_node_info
        if node and with_node:
            claims["kubernetes.io"]["node"] = {"name": node, "uid": str(uuid.uuid5(
                uuid.NAMESPACE_URL, "node/" + node))}
        claims["kubernetes.io"]["bound"] = True  # this stand-in's mark: validate the pod
        payload = b64url(json.dumps(claims).encode())
        sig = b64url(hmac.new(self.secret, ("%s.%s" % (head, payload)).encode(),
                              hashlib.sha256).digest())
        return "%s.%s.%s" % (head, payload, sig)

    def review(self, token, audiences):
        key = (token, tuple(audiences))
        now = time.monotonic()
        with self.lock:
            hit = self.cache.get(key)
            if hit and hit[0] > now:
                return copy.deepcopy(hit[1])
        st = super().review(token, audiences)
        if not st.get("authenticated"):
            return st
        k = json.loads(b64url_decode(token.split(".")[1]))["kubernetes.io"]
        if k.get("bound"):
            pod = self.stored_pod(k["namespace"], k["pod"]["name"])
            if pod is None or pod["metadata"]["uid"] != k["pod"]["uid"]:
                return {"user": {}, "error": "[invalid bearer token, %s]" % INVALIDATED}
        if "node" in k:
            st["user"]["extra"]["authentication.kubernetes.io/node-name"] = [k["node"]["name"]]
            st["user"]["extra"]["authentication.kubernetes.io/node-uid"] = [k["node"]["uid"]]
        with self.lock:
            if self.success_cache_s > 0:
                self.cache[key] = (now + self.success_cache_s, copy.deepcopy(st))
        return st

    def control(self, body):
        with self.lock:
            if "pod_node_info" in body:
                self.pod_node_info = bool(body["pod_node_info"])
            if "success_cache_s" in body:
                self.success_cache_s = float(body["success_cache_s"])
                self.cache.clear()
            if "pods_fail_status" in body:
                self.pods_fail_status = int(body["pods_fail_status"])
            if "pods_delay_s" in body:
                self.pods_delay_s = float(body["pods_delay_s"])
        return dict(super().control(body), pod_node_info=self.pod_node_info,
                    success_cache_s=self.success_cache_s,
                    pods_fail_status=self.pods_fail_status)


_api_get_list_watch = Api.do_GET


def api_get_pods(handler):
    """GET of one pod; pod lists too when failures are injected; the rest as above."""
    st = handler.server.state
    parts = urllib.parse.urlsplit(handler.path).path.split("/")
    one = len(parts) == 7 and parts[1:4] == ["api", "v1", "namespaces"] and parts[5] == "pods"
    if not one and handler.route(urllib.parse.urlsplit(handler.path).path)[0] != "pods":
        return _api_get_list_watch(handler)
    with st.authn.lock:
        fail, delay = st.authn.pods_fail_status, st.authn.pods_delay_s
    if delay:
        time.sleep(delay)
    if not api_authorized(handler, st):
        return None
    if fail:
        return handler.send_json(fail, status(fail, "InternalError", "Internal error occurred: "
                                              "injected failure"))
    if not one:
        return _api_get_list_watch(handler)
    pod = st.authn.stored_pod(parts[4], parts[6])
    if pod is None:
        return handler.send_json(404, status(404, "NotFound", 'pods "%s" not found' % parts[6]))
    return handler.send_json(200, pod)


Api.do_GET = api_get_pods  # noqa: N815
_control_post_authn = control_post_authn


def control_post_authn(handler, st, body):  # noqa: F811 (a bound token for a missing pod: 404)
    try:
        return _control_post_authn(handler, st, body)
    except LookupError as e:
        return handler.reply(404, {"error": str(e)})
# ---- end node-mode identities -------------------------------------------------


# ---- Gateway API routes (engineer gamma): HTTPRoute and GRPCRoute of
# gateway.networking.k8s.io/v1, served like the other kinds (list, pages,
# watch, 410, bookmarks, selectors). What kube-apiserver does with a custom
# resource before storing it, written from the published CRD schemas:
#   - the structural schema's defaults are filled in (parentRefs group
#     gateway.networking.k8s.io and kind Gateway; backendRefs group "", kind
#     Service, weight 1; an HTTPRoute without rules gets one matching "/";
#     a match without path gets PathPrefix "/"; header, query and gRPC
#     method matches type Exact; RequestRedirect statusCode 302);
#   - an object the schema refuses (types, enums, maxItems, patterns,
#     ranges, and the CEL rules below) is not stored: POST /apply answers
#     422 with the Status the API server writes ("HTTPRoute.gateway.
#     networking.k8s.io "NAME" is invalid: FIELD: ...", reason Invalid).
# What the schema lets through (a regex that does not compile, weights
# summing to 0, a backend that does not exist) is stored: the consumer
# must refuse it. Every object also gets metadata.creationTimestamp when
# created (kept on updates), as every object does.
GW = "gateway.networking.k8s.io"
KINDS["httproutes"] = (GW + "/v1", "HTTPRoute", "HTTPRouteList", "/apis/" + GW + "/v1")
KINDS["grpcroutes"] = (GW + "/v1", "GRPCRoute", "GRPCRouteList", "/apis/" + GW + "/v1")
TOKEN_RE = r"^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$"
DURATION_RE = r"^([0-9]{1,5}(h|m|s|ms)){1,4}$"
HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"}
HTTP_FILTERS = {"RequestHeaderModifier": "requestHeaderModifier",
                "ResponseHeaderModifier": "responseHeaderModifier",
                "RequestMirror": "requestMirror", "RequestRedirect": "requestRedirect",
                "URLRewrite": "urlRewrite", "ExtensionRef": "extensionRef", "CORS": "cors"}
GRPC_FILTERS = {k: v for k, v in HTTP_FILTERS.items()
                if k in ("RequestHeaderModifier", "ResponseHeaderModifier", "RequestMirror",
                         "ExtensionRef")}


class Invalid(ValueError):
    pass


def _check(ok, field, why):
    if not ok:
        raise Invalid("%s: %s" % (field, why))


def _items(obj, key, field, max_items):
    v = obj.get(key)
    if v is None:
        return []
    _check(isinstance(v, list), field, "Invalid value: must be an array")
    _check(len(v) <= max_items, field, "Too many: %d: must have at most %d items" % (
        len(v), max_items))
    return v


def _duration_ms(text):
    import re
    total = 0
    for num, unit in re.findall(r"([0-9]+)(ms|h|m|s)", text):
        total += int(num) * {"h": 3600000, "m": 60000, "s": 1000, "ms": 1}[unit]
    return total


def _route_defaults_and_check(kind, obj):
    import re
    grpc = kind == "grpcroutes"
    spec = obj.setdefault("spec", {})
    _check(isinstance(spec, dict), "spec", "Invalid value: must be an object")
    for i, p in enumerate(_items(spec, "parentRefs", "spec.parentRefs", 32)):
        f = "spec.parentRefs[%d]" % i
        _check(isinstance(p, dict) and p.get("name"), f + ".name", "Required value")
        p.setdefault("group", GW)
        p.setdefault("kind", "Gateway")
        if "port" in p:
            _check(isinstance(p["port"], int) and 1 <= p["port"] <= 65535, f + ".port",
                   "Invalid value: must be 1..65535")
    _items(spec, "hostnames", "spec.hostnames", 16)
    if "rules" not in spec and not grpc:
        spec["rules"] = [{"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]}]
    rules = _items(spec, "rules", "spec.rules", 16)
    _check(grpc or "rules" not in spec or rules, "spec.rules", "Required value: at least 1 item")
    _check(sum(len(r.get("matches") or []) for r in rules if isinstance(r, dict)) <= 128,
           "spec.rules", "Invalid value: at most 128 matches across all rules")
    for k, r in enumerate(rules):
        f = "spec.rules[%d]" % k
        _check(isinstance(r, dict), f, "Invalid value: must be an object")
        if "matches" not in r and not grpc:
            r["matches"] = [{"path": {"type": "PathPrefix", "value": "/"}}]
        for m_i, m in enumerate(_items(r, "matches", f + ".matches", 64)):
            mf = "%s.matches[%d]" % (f, m_i)
            if grpc:
                meth = m.get("method")
                if meth is not None:
                    meth.setdefault("type", "Exact")
                    _check(meth["type"] in ("Exact", "RegularExpression"), mf + ".method.type",
                           "Unsupported value")
                    _check(meth.get("service") or meth.get("method"), mf + ".method",
                           "Invalid value: one or both of 'service' or 'method' must be specified")
                    if meth["type"] == "Exact":
                        _check(re.match(r"(?i)^\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*$",
                                        meth.get("service", "x")), mf + ".method.service",
                               "Invalid value: not a gRPC service name")
                        _check(re.match(r"^[A-Za-z_][A-Za-z_0-9]*$", meth.get("method", "x")),
                               mf + ".method.method", "Invalid value: not a gRPC method name")
            else:
                path = m.setdefault("path", {"type": "PathPrefix", "value": "/"})
                path.setdefault("type", "PathPrefix")
                path.setdefault("value", "/")
                _check(path["type"] in ("Exact", "PathPrefix", "RegularExpression"),
                       mf + ".path.type", 'Unsupported value: "%s"' % path["type"])
                _check(len(path["value"]) <= 1024, mf + ".path.value", "Too long")
                _check(path["type"] == "RegularExpression" or path["value"].startswith("/"),
                       mf + ".path", "Invalid value: value must be an absolute path and start "
                       "with '/' when type one of ['Exact', 'PathPrefix']")
                if "method" in m:
                    _check(m["method"] in HTTP_METHODS, mf + ".method",
                           'Unsupported value: "%s"' % m["method"])
            for key, vmax in (("headers", 4096), ("queryParams", 1024)):
                if grpc and key == "queryParams":
                    continue
                for h_i, h in enumerate(_items(m, key, "%s.%s" % (mf, key), 16)):
                    hf = "%s.%s[%d]" % (mf, key, h_i)
                    h.setdefault("type", "Exact")
                    _check(h["type"] in ("Exact", "RegularExpression"), hf + ".type",
                           "Unsupported value")
                    _check(re.match(TOKEN_RE, h.get("name", "")), hf + ".name", "Invalid value")
                    _check(1 <= len(h.get("value", "")) <= vmax, hf + ".value", "Invalid value")
        filters = _items(r, "filters", f + ".filters", 16)
        allowed = GRPC_FILTERS if grpc else HTTP_FILTERS
        types = [x.get("type") for x in filters]
        for x_i, x in enumerate(filters):
            xf = "%s.filters[%d]" % (f, x_i)
            _check(x.get("type") in allowed, xf + ".type", 'Unsupported value: "%s"' % x.get("type"))
            _check(allowed[x["type"]] in x, xf, "Invalid value: filter.%s must be specified for "
                   "%s filter.type" % (allowed[x["type"]], x["type"]))
            for other in allowed.values():
                _check(other == allowed[x["type"]] or other not in x, xf, "Invalid value: "
                       "filter.%s must be nil if the filter.type is not its type" % other)
            if x["type"] == "RequestRedirect":
                x["requestRedirect"].setdefault("statusCode", 302)
                _check(x["requestRedirect"]["statusCode"] in (301, 302, 303, 307, 308),
                       xf + ".requestRedirect.statusCode", "Unsupported value")
        _check(not ("RequestRedirect" in types and "URLRewrite" in types), f + ".filters",
               "Invalid value: May specify either httpRouteFilterRequestRedirect or "
               "httpRouteFilterRequestRewrite, but not both")
        backends = _items(r, "backendRefs", f + ".backendRefs", 16)
        _check(not ("RequestRedirect" in types and backends), f, "Invalid value: "
               "RequestRedirect filter must not be used together with backendRefs")
        for b_i, b in enumerate(backends):
            bf = "%s.backendRefs[%d]" % (f, b_i)
            _check(b.get("name"), bf + ".name", "Required value")
            b.setdefault("group", "")
            b.setdefault("kind", "Service")
            b.setdefault("weight", 1)
            _check(isinstance(b["weight"], int) and 0 <= b["weight"] <= 1000000,
                   bf + ".weight", "Invalid value: must be 0..1000000")
            _check(not (b["group"] == "" and b["kind"] == "Service") or "port" in b, bf,
                   "Invalid value: Must have port for Service reference")
            if "port" in b:
                _check(isinstance(b["port"], int) and 1 <= b["port"] <= 65535, bf + ".port",
                       "Invalid value: must be 1..65535")
        t = r.get("timeouts")
        if t is not None:
            _check(not grpc, f + ".timeouts", 'Unknown field "timeouts"')
            for key in ("request", "backendRequest"):
                if key in t:
                    _check(isinstance(t[key], str) and re.match(DURATION_RE, t[key]),
                           "%s.timeouts.%s" % (f, key), 'Invalid value: "%s": should match '
                           "'%s'" % (t.get(key), DURATION_RE))
            if "request" in t and "backendRequest" in t and _duration_ms(t["request"]):
                _check(_duration_ms(t["backendRequest"]) <= _duration_ms(t["request"]),
                       f + ".timeouts", "Invalid value: backendRequest timeout cannot be longer "
                       "than request timeout")


_state_apply = State.apply


def _apply_with_schema(self, kind, etype, obj):  # noqa: E302 (wraps State.apply above)
    md = obj.setdefault("metadata", {})
    if kind in ("httproutes", "grpcroutes") and etype != "DELETED":
        try:
            _route_defaults_and_check(kind, obj)
        except Invalid as e:
            raise Invalid('%s.%s "%s" is invalid: %s' % (KINDS[kind][1], GW, md.get("name", ""),
                                                        e))
    if etype != "DELETED":
        with self.cv:
            key = ("", md.get("name")) if kind in CLUSTER_SCOPED else (
                md.get("namespace", "default"), md.get("name"))
            before = self.objects[kind].get(key)
        md["creationTimestamp"] = before["metadata"].get("creationTimestamp") if before else \
            time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return _state_apply(self, kind, etype, obj)


State.apply = _apply_with_schema
_control_post = Control.do_POST


def _control_post_invalid(self):  # noqa: N802 (an object the schema refuses: 422)
    try:
        return _control_post(self)
    except Invalid as e:
        return self.reply(422, status(422, "Invalid", str(e)))


Control.do_POST = _control_post_invalid
_api_route = Api.route


def _route_unless_missing(self, path):
    """POST /missing {"kinds": [...]}: those kinds answer 404 (NotFound), as
    the API server does for a resource whose CRD is not installed; []
    installs them again (their objects were kept)."""
    kind, ns = _api_route(self, path)
    if kind in getattr(self.server.state, "missing", ()):
        return None, None
    return kind, ns


Api.route = _route_unless_missing
_control_post_schema = Control.do_POST


def _control_post_missing(self):  # noqa: N802
    if self.path != "/missing":
        return _control_post_schema(self)
    body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))) or b"{}")
    st = self.server.state
    with st.cv:
        st.missing = set(body.get("kinds", []))
    return self.reply(200, {"missing": sorted(st.missing)})


Control.do_POST = _control_post_missing
# ---- end Gateway API routes -------------------------------------------------------


def hostport(s):
    h, p = s.rsplit(":", 1)
    return h.strip("[]"), int(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", required=True)
    ap.add_argument("--control", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    ap.add_argument("--token", required=True)
    ap.add_argument("--state")
    ap.add_argument("--client-ca", help="also accept client certificates issued by this CA")
    ap.add_argument("--bookmark-s", type=float, default=1.0)
    ap.add_argument("--max-page", type=int, default=0, help="cap on list page sizes")
    ap.add_argument("--history-max", type=int, default=2000, help="events kept for watches")
    ap.add_argument("--history-s", type=float, default=0.0,
                    help="events older than this are compacted (0: no age limit)")
    ap.add_argument("--user", default="system:serviceaccount:shunt-system:shunt",
                    help="the user a bearer token authenticates as (in 403 messages)")
    a = ap.parse_args()
    st = State(a.state, a.token, a.bookmark_s, a.history_max, a.history_s)
    st.user = a.user
    st.authn = NodeAuthn(st)
    st.max_page = a.max_page
    api = ThreadingHTTPServer(hostport(a.listen), Api)
    api.daemon_threads = True
    api.state = st
    if a.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        if a.client_ca:
            ctx.load_verify_locations(a.client_ca)
            ctx.verify_mode = ssl.CERT_OPTIONAL
        api.socket = ctx.wrap_socket(api.socket, server_side=True)
    ctl = ThreadingHTTPServer(hostport(a.control), Control)
    ctl.daemon_threads = True
    ctl.state = st
    threading.Thread(target=ctl.serve_forever, daemon=True).start()
    print("READY", flush=True)
    api.serve_forever()


if __name__ == "__main__":
    main()
