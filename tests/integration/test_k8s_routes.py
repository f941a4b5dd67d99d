# SPDX-License-Identifier: Apache-2.0
"""Gateway API routes from Kubernetes (issue 20, the GAMMA mesh profile):
HTTPRoute and GRPCRoute objects attached to a Service, served by the API
stand-in (k8s_standin.py: the CRD schema's defaults and validation), are
created, changed and deleted, and each change takes effect within a
second for real clients (curl; python grpcio) and real backends
(httpbackend.py, grpcpeer.py), while a kept-alive connection carrying
requests across the changes is never dropped. Objects that cannot be
applied (a regex that does not compile, weights summing to 0, a backend
that does not exist) are logged once, listed in /routes "rejected", and
ignored; a bad change keeps the last good version in force; an object the
schema refuses never reaches shuntd (422). shuntd starts while the CRDs are
missing (404): discovery syncs, not stale, said once; installed, the
routes are read."""

import json
import os
import re
import sys
import time

import pytest

import httpbackend
import shuntlib as sl
from test_k8s import WATCH_TIMEOUT_S, Env

EP = sl.EP_ADDRS
HTTP_PORT, GRPC_PORT = 8081, 8083
VIPS = {"reviews": "10.96.3.10", "reviews-v2": "10.96.3.11", "rpc": "10.96.3.12",
        "rpc-v2": "10.96.3.13"}
GRPCPEER = os.path.join(sl.HERE, "grpcpeer.py")
NS = "shop"


def service(name, grpc=False):
    return {"metadata": {"name": name, "namespace": NS},
            "spec": {"clusterIP": VIPS[name], "clusterIPs": [VIPS[name]],
                     "ports": [{"name": "grpc" if grpc else "http", "port": 80,
                                "targetPort": GRPC_PORT if grpc else HTTP_PORT,
                                "protocol": "TCP", "appProtocol": "grpc" if grpc else "http"}]}}


def endpoints(name, addr, grpc=False):
    return {"metadata": {"name": name + "-x1", "namespace": NS,
                         "labels": {"kubernetes.io/service-name": name}},
            "addressType": "IPv4",
            "endpoints": [{"addresses": [addr], "conditions": {"ready": True}}],
            "ports": [{"name": "grpc" if grpc else "http",
                       "port": GRPC_PORT if grpc else HTTP_PORT, "protocol": "TCP"}]}


def parent(name, **extra):
    return dict({"group": "", "kind": "Service", "name": name}, **extra)


def http_route(name, rules, svc="reviews"):
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"parentRefs": [parent(svc, port=80)], "rules": rules}}


def grpc_route(name, rules):
    return {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GRPCRoute",
            "metadata": {"name": name, "namespace": NS},
            "spec": {"parentRefs": [parent("rpc")], "rules": rules}}


def backend(name, weight=None):
    b = {"name": name, "port": 80}
    if weight is not None:
        b["weight"] = weight
    return b


@pytest.fixture(scope="module")
def env():
    e = Env()
    try:
        e.topo.add_remote4()
        e.topo.route_vips()
        e.procs.append(httpbackend.spawn(e.topo.remote, ["%s:%d=v1" % (EP[0], HTTP_PORT),
                                                          "%s:%d=v2" % (EP[1], HTTP_PORT)]))
        for i, v in enumerate(["v1", "v2"]):
            e.procs.append(e.topo.remote.spawn_ready(
                [sys.executable, GRPCPEER, "server", "--name", v, "--listen",
                 "%s:%d" % (EP[i], GRPC_PORT)], "grpc-" + v, 20))
        kubeconfig = e.token_kubeconfig("standin-token-routes")
        e.start_standin()
        # shuntd starts without the Gateway API CRDs (test_crds_installed_later)
        e.ctl("POST", "/missing", {"kinds": ["httproutes", "grpcroutes"]})
        for name, addr in (("reviews", EP[0]), ("reviews-v2", EP[1])):
            e.apply("services", "ADDED", service(name))
            e.apply("endpointslices", "ADDED", endpoints(name, addr))
        for name, addr in (("rpc", EP[0]), ("rpc-v2", EP[1])):
            e.apply("services", "ADDED", service(name, grpc=True))
            e.apply("endpointslices", "ADDED", endpoints(name, addr, grpc=True))
        e.daemon = sl.Shuntd(
            e.topo.app,
            sl.shuntd_args(**{"service-discovery.type": "kubernetes",
                              "service-discovery.kubernetes.kubeconfig-path": kubeconfig,
                              "service-discovery.kubernetes.namespace": NS,
                              "log-level": "info"}),
            env={"SHUNT_K8S_WATCH_TIMEOUT": str(WATCH_TIMEOUT_S)},
        ).wait_ready()
        sl.wait_until(lambda: len(e.daemon.json("/endpoints")["services"]) == 4, 20,
                      what="first sync")
        yield e
    finally:
        e.close()
    e.check_clean_exit()


def servers(e, path, n=20, headers=()):
    """The backend that answered each of n requests on one connection."""
    args = ["-s", "--max-time", "30", "-w", "\\n"]
    for h in headers:
        args += ["-H", h]
    out = e.topo.app.curl(args + ["http://%s%s?i=[1-%d]" % (VIPS["reviews"], path, n)],
                          timeout=40).stdout
    names = re.findall(r'"server": ?"(v[12])"', out)
    assert len(names) == n, out[-500:]
    return names


def routes(e, service="shop/reviews"):
    return e.daemon.json("/routes?service=" + service)


def route_names(e, service="shop/reviews"):
    return sorted({r["route"] for s in routes(e, service)["services"] for r in s["rules"]})


def applied_within_1s(e, kind, etype, obj, pred, what):
    """Applies the change and waits for pred() (the daemon's /routes): it
    must hold within a second of the API server storing the object."""
    e.apply(kind, etype, obj)
    t0 = time.monotonic()
    sl.wait_until(pred, 5, interval=0.02, what=what)
    took = time.monotonic() - t0
    assert took < 1.0, "%s took %.2f s" % (what, took)


def rejected(e, name):
    return [r for r in routes(e, "shop/reviews")["rejected"] if r["name"] == name]


def grpc_client(e, *args):
    r = e.topo.app.run([sys.executable, GRPCPEER, "client", "--target",
                        "%s:80" % VIPS["rpc"]] + [str(a) for a in args], timeout=60, check=False)
    assert r.returncode == 0, (r.stdout, r.stderr)
    return json.loads(r.stdout)


def k8s_missing(e, kind):
    """/debug/cache: the 404s (CRD missing) the kind's watch has had."""
    found = re.search(r'"%s": \{[^}]*?"missing": (\d+)' % kind,
                      json.dumps(e.daemon.json("/debug/cache")))
    return int(found.group(1)) if found else 0


def test_crds_installed_later(env):
    """Without the Gateway API CRDs (404) discovery still syncs, is not
    stale, and says so once per kind; installed, the routes are read."""
    e = env
    svcs = e.daemon.json("/endpoints")["services"]
    assert svcs and not any(s["stale"] for s in svcs), svcs
    assert k8s_missing(e, "httproutes") >= 1 and k8s_missing(e, "grpcroutes") >= 1
    e.apply("httproutes", "ADDED", http_route("early", [{"backendRefs": [backend("reviews-v2")]}]))
    # another round of the backoff: 404 again, not said again
    sl.wait_until(lambda: all(k8s_missing(e, k) >= 2 for k in ("httproutes", "grpcroutes")), 10,
                  what="a second 404")
    log = e.daemon.log_text()
    for kind in ("httproutes", "grpcroutes"):
        assert log.count("kubernetes: %s: HTTP 404" % kind) == 1, log[-3000:]
    e.ctl("POST", "/missing", {"kinds": []})
    sl.wait_until(lambda: route_names(e) == ["early"], 40, what="routes read once installed")
    assert set(servers(e, "/", n=5)) == {"v2"}
    e.apply("httproutes", "DELETED", {"metadata": {"name": "early", "namespace": NS}})
    sl.wait_until(lambda: route_names(e) == [], 5, what="early deleted")


def test_httproute_create_change_delete(env):
    e = env
    # no route: the service itself
    assert set(servers(e, "/")) == {"v1"}
    canary = http_route("canary", [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/api"},
                      "headers": [{"name": "x-canary", "value": "on"}]}],
         "backendRefs": [backend("reviews-v2")]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
         "filters": [{"type": "RequestHeaderModifier",
                      "requestHeaderModifier": {"set": [{"name": "x-route", "value": "canary"}]}},
                     {"type": "URLRewrite", "urlRewrite": {"path": {
                         "type": "ReplacePrefixMatch", "replacePrefixMatch": "/v1api"}}}],
         "backendRefs": [backend("reviews", 100), backend("reviews-v2", 0)]},
        {"backendRefs": [backend("reviews")]},
    ])
    # A kept-alive client sends requests through every change below: its
    # connection stays (one connect for all) and every request is answered.
    slow = e.topo.app.spawn(["curl", "-s", "--max-time", "60", "-w",
                             "\\nRESULT %{http_code} %{num_connects}\\n",
                             "http://%s/slow/[100-179]" % VIPS["reviews"]], "held-curl")
    applied_within_1s(e, "httproutes", "ADDED", canary,
                      lambda: route_names(e) == ["canary"], "HTTPRoute created")
    assert set(servers(e, "/api/x", headers=["x-canary: on"])) == {"v2"}
    assert set(servers(e, "/api/x")) == {"v1"}
    r = e.topo.app.curl(["-s", "http://%s/api/x" % VIPS["reviews"]])
    seen = json.loads(r.stdout)
    assert seen["path"] == "/v1api/x" and seen["headers"]["x-route"] == "canary", seen
    # changed: the weights flip; the header rule goes
    canary["spec"]["rules"] = canary["spec"]["rules"][1:]
    canary["spec"]["rules"][0]["backendRefs"] = [backend("reviews", 0), backend("reviews-v2", 1)]
    applied_within_1s(e, "httproutes", "MODIFIED", canary,
                      lambda: len(routes(e)["services"][0]["rules"]) == 2, "HTTPRoute changed")
    assert set(servers(e, "/api/x", headers=["x-canary: on"])) == {"v2"}
    assert set(servers(e, "/api/x")) == {"v2"}
    assert set(servers(e, "/other")) == {"v1"}
    # deleted: the service itself again (no 404 for what no rule matches)
    applied_within_1s(e, "httproutes", "DELETED", canary,
                      lambda: route_names(e) == [], "HTTPRoute deleted")
    assert set(servers(e, "/api/x")) == {"v1"}
    assert slow.alive(), "the held connection ended before the changes did: make it longer"
    assert slow.wait(60) == 0, slow.read_stderr()
    lines = re.findall(r"RESULT (\d+) (\d+)", slow.read_stdout())
    codes, connects = [c for c, _ in lines], [int(n) for _, n in lines]
    assert codes == ["200"] * 80, lines
    assert sum(connects) == 1, "the held connection was dropped: %s" % lines


def test_grpcroute_create_change_delete(env):
    e = env
    assert grpc_client(e, "unary", "--n", 10)["servers"] == {"v1": 10}
    rpc = grpc_route("rpc", [
        {"matches": [{"method": {"service": "shunt.Test", "method": "Unary"}}],
         "backendRefs": [backend("rpc-v2")]}])
    applied_within_1s(e, "grpcroutes", "ADDED", rpc,
                      lambda: route_names(e, "shop/rpc") == ["rpc"], "GRPCRoute created")
    out = grpc_client(e, "unary", "--n", 20)
    assert out["servers"] == {"v2": 20}, out
    # no rule for Bidi: UNIMPLEMENTED (the Gateway API's 404)
    out = grpc_client(e, "bidi", "--calls", 1, "--messages", 1)
    assert out["codes"] == {"UNIMPLEMENTED": 1}, out
    # changed: any method of the service, by regex, to v1
    rpc["spec"]["rules"] = [{"matches": [{"method": {"type": "RegularExpression",
                                                      "service": "shunt\\.T.*"}}],
                             "backendRefs": [backend("rpc")]}]
    applied_within_1s(e, "grpcroutes", "MODIFIED", rpc,
                      lambda: routes(e, "shop/rpc")["services"][0]["rules"][0]["matches"][0]
                      ["path"]["type"] == "RegularExpression", "GRPCRoute changed")
    assert grpc_client(e, "unary", "--n", 10)["servers"] == {"v1": 10}
    out = grpc_client(e, "bidi", "--calls", 2, "--messages", 2)
    assert out["codes"] == {"OK": 2}, out
    applied_within_1s(e, "grpcroutes", "DELETED", rpc,
                      lambda: route_names(e, "shop/rpc") == [], "GRPCRoute deleted")
    assert grpc_client(e, "unary", "--n", 10)["servers"] == {"v1": 10}


def test_invalid_routes_reported_and_ignored(env):
    e = env
    good = http_route("pin", [{"matches": [{"path": {"type": "Exact", "value": "/pin"}}],
                               "backendRefs": [backend("reviews-v2")]},
                              {"backendRefs": [backend("reviews")]}])
    e.apply("httproutes", "ADDED", good)
    sl.wait_until(lambda: route_names(e) == ["pin"], 5, what="good route")
    bad = {
        "bad-regex": [{"matches": [{"path": {"type": "RegularExpression", "value": "/v("}}]}],
        "zero-weights": [{"matches": [{"path": {"value": "/z"}}],
                          "backendRefs": [backend("reviews", 0), backend("reviews-v2", 0)]}],
        "ghost": [{"matches": [{"path": {"value": "/g"}}], "backendRefs": [backend("nosuch")]}],
    }
    for name, rules in bad.items():
        e.apply("httproutes", "ADDED", http_route(name, rules))
    want = {"bad-regex": "spec.rules[0].matches[0].path.value: regular expression '/v(' rejected",
            "zero-weights": "spec.rules[0].backendRefs: the backends' weights sum to 0",
            "ghost": "unknown backend service shop/nosuch"}
    for name, text in want.items():
        sl.wait_until(lambda: rejected(e, name), 5, what="%s rejected" % name)
        (r,) = rejected(e, name)
        assert text in r["error"] and r["in_force"] is None, r
    assert route_names(e) == ["pin"]
    assert set(servers(e, "/pin", n=5)) == {"v2"} and set(servers(e, "/z", n=5)) == {"v1"}
    # a bad change keeps the last good version in force
    good["spec"]["rules"][0]["matches"][0]["path"] = {"type": "RegularExpression", "value": "(a"}
    e.apply("httproutes", "MODIFIED", good)
    sl.wait_until(lambda: rejected(e, "pin"), 5, what="bad change rejected")
    (r,) = rejected(e, "pin")
    assert r["in_force"] and r["in_force"] != r["resource_version"], r
    assert set(servers(e, "/pin", n=5)) == {"v2"}
    out = sl.shuntctl(e.topo.app, "--admin", "127.0.0.1:15003", "routes", "shop/reviews").stdout
    assert re.search(r"rejected: HTTPRoute shop/pin \(resourceVersion \d+\): spec.rules\[0\]"
                     r".*in force: resourceVersion \d+", out), out
    # the schema refuses this one: the API server never stores it
    over = http_route("over", [{"backendRefs": [backend("reviews", 2000000)]}])
    status, _, body = e.topo.app.http(e.ctl_at[0], e.ctl_at[1], "POST", "/apply",
                                      body=json.dumps({"kind": "httproutes", "type": "ADDED",
                                                       "object": over}))
    body = body.decode() if isinstance(body, bytes) else body
    assert status == 422 and "spec.rules[0].backendRefs[0].weight" in body, body
    # each problem logged once, however many builds saw it
    e.apply("endpointslices", "MODIFIED", endpoints("reviews", EP[0]))  # another build
    sl.wait_until(lambda: "ghost" in e.daemon.log_text(), 5, what="log")
    time.sleep(0.3)
    log = e.daemon.log_text()
    assert log.count("HTTPRoute shop/ghost") == 1, log[-3000:]
    assert log.count("HTTPRoute shop/bad-regex") == 1
    # the backend appears: ghost applies; fixed objects leave "rejected"
    e.apply("services", "ADDED", {"metadata": {"name": "nosuch", "namespace": NS},
                                  "spec": {"clusterIP": "10.96.3.14",
                                           "ports": [{"port": 80, "targetPort": HTTP_PORT}]}})
    sl.wait_until(lambda: "ghost" in route_names(e), 5, what="ghost applied")
    assert not rejected(e, "ghost")
    for name in list(bad) + ["pin", "nosuch"]:
        kind = "services" if name == "nosuch" else "httproutes"
        e.apply(kind, "DELETED", {"metadata": {"name": name, "namespace": NS}})
    sl.wait_until(lambda: route_names(e) == [] and not routes(e)["rejected"], 5,
                  what="all deleted")
