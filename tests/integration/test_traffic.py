# SPDX-License-Identifier: Apache-2.0
"""Traffic routes (issue 20) on the outbound HTTP/1.1 path, with curl and
real HTTP/1.1 backends (httpbackend.py): a 90/10 weighted split, a header
match pinning requests to v2, Gateway API precedence (exact, regex,
longest prefix), a path rewrite and header edits seen by the backend, a
redirect, a per-route timeout, no match -> 404, GET /routes and shuntctl
routes with hit counts, and a bad routes file rejected with the last good
routes kept. HTTP/2 (curl, h2echo.py) and gRPC (grpcio, grpcpeer.py): the
same matches, edits and a GRPCRoute method match."""

import json
import os
import re
import sys
import time

import pytest

import httpbackend
import shuntlib as sl
from shuntlib import Topology as T

VIP = "10.96.2.10"
EP_ADDRS = sl.EP_ADDRS
PORT = 8081
URL = "http://%s" % VIP
VIP_H2, VIP_GRPC, VIP_TCP = "10.96.2.11", "10.96.2.12", "10.96.2.13"
H2_PORT, GRPC_PORT = 8082, 8083
H2ECHO = os.path.join(sl.HERE, "h2echo.py")
GRPCPEER = os.path.join(sl.HERE, "grpcpeer.py")


def v1_v2(weight_v1, weight_v2):
    return [
        {"name": "reviews", "weight": weight_v1, "selector": {"version": "v1"}},
        {"name": "reviews", "weight": weight_v2, "selector": {"version": "v2"}},
    ]


def only(version):
    return [{"name": "reviews", "selector": {"version": version}}]


def prefix(p):
    return {"path": {"type": "PathPrefix", "value": p}}


ROUTES = [
    {
        "name": "reviews",
        "rules": [
            # testers go to v2 (the same prefix with a header match ranks first)
            {
                "matches": [{**prefix("/stable"), "headers": [{"name": "x-canary", "value": "always"}]}],
                "backendRefs": only("v2"),
            },
            {"matches": [prefix("/split")], "backendRefs": v1_v2(90, 10)},
            {"matches": [prefix("/stable")], "backendRefs": only("v1")},
            {"matches": [prefix("/items")], "backendRefs": only("v1")},
            {"matches": [prefix("/items/special")], "backendRefs": only("v2")},
            {
                "matches": [{"path": {"type": "RegularExpression", "value": "/items/[0-9]+"}}],
                "backendRefs": only("v2"),
            },
            {"matches": [{"path": {"type": "Exact", "value": "/items/7"}}], "backendRefs": only("v1")},
            {
                "matches": [prefix("/old")],
                "filters": [
                    {
                        "type": "URLRewrite",
                        "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}},
                    },
                    {
                        "type": "RequestHeaderModifier",
                        "requestHeaderModifier": {
                            "set": [{"name": "x-route", "value": "old"}],
                            "add": [{"name": "x-added", "value": "1"}],
                            "remove": ["x-secret"],
                        },
                    },
                    {
                        "type": "ResponseHeaderModifier",
                        "responseHeaderModifier": {"add": [{"name": "x-served-by-route", "value": "old"}]},
                    },
                ],
                "backendRefs": only("v1"),
            },
            {
                "matches": [prefix("/moved")],
                "filters": [
                    {"type": "RequestRedirect", "requestRedirect": {"hostname": "elsewhere", "statusCode": 301}}
                ],
            },
            {"matches": [prefix("/slow")], "timeouts": {"request": "300ms"}, "backendRefs": only("v1")},
            {
                "matches": [prefix("/fault")],
                "fault": {"abort": {"httpStatus": 503, "percentage": 10}},
                "backendRefs": only("v1"),
            },
        ],
    }
]


def labelled(name, port, protocol):
    return {
        "name": name,
        "namespace": "default",
        "ports": [{"name": "p", "port": 80, "target_port": port, "protocol": protocol}],
        "endpoints": [
            {"address": EP_ADDRS[0], "port": port, "labels": {"version": "v1"}},
            {"address": EP_ADDRS[1], "port": port, "labels": {"version": "v2"}},
        ],
    }


def sel(name, version):
    return [{"name": name, "selector": {"version": version}}]


H2_ROUTES = [
    {
        "name": "h2",
        "rules": [
            {
                "matches": [{**prefix("/h2"), "headers": [{"name": "x-canary", "value": "always"}]}],
                "backendRefs": sel("reviews-h2", "v2"),
            },
            {
                "matches": [prefix("/h2")],
                "filters": [
                    {
                        "type": "URLRewrite",
                        "urlRewrite": {"path": {"type": "ReplacePrefixMatch", "replacePrefixMatch": "/new"}},
                    },
                    {
                        "type": "RequestHeaderModifier",
                        "requestHeaderModifier": {"set": [{"name": "X-Route", "value": "h2"}], "remove": ["x-secret"]},
                    },
                ],
                "backendRefs": sel("reviews-h2", "v1"),
            },
        ],
    }
]

GRPC_ROUTES = [
    {
        "name": "grpc",
        "kind": "GRPCRoute",
        "rules": [
            {
                "matches": [{"method": {"service": "shunt.Test", "method": "Unary"}}],
                "backendRefs": sel("reviews-grpc", "v2"),
            }
        ],
    }
]


def registry(routes):
    return {
        "services": [
            labelled("reviews-h2", H2_PORT, "HTTP2"),
            labelled("reviews-grpc", GRPC_PORT, "GRPC"),
            {
                "name": "web-h2",
                "addresses": [VIP_H2],
                "ports": [{"port": 80, "protocol": "HTTP2"}],
                "routes": H2_ROUTES,
            },
            {
                "name": "web-tcp",
                "addresses": [VIP_TCP],
                "ports": [{"port": 80, "protocol": "TCP"}],
                "routes": [{"name": "tcp", "rules": [{"backendRefs": v1_v2(80, 20)}]}],
            },
            {
                "name": "web-grpc",
                "addresses": [VIP_GRPC],
                "ports": [{"port": 80, "protocol": "GRPC"}],
                "routes": GRPC_ROUTES,
            },
            {
                "name": "web",
                "namespace": "default",
                "addresses": [VIP],
                "ports": [{"name": "http", "port": 80, "protocol": "HTTP"}],
                "routes": routes,
            },
            {
                "name": "reviews",
                "namespace": "default",
                "ports": [{"name": "http", "port": 80, "target_port": PORT, "protocol": "HTTP"}],
                "endpoints": [
                    {"address": EP_ADDRS[0], "port": PORT, "labels": {"version": "v1"}},
                    {"address": EP_ADDRS[1], "port": PORT, "labels": {"version": "v2"}},
                ],
            },
        ]
    }


@pytest.fixture(scope="module")
def env():
    topo = T()
    procs = []
    daemon = None
    try:
        topo.add_remote4()
        topo.route_vips()
        procs.append(httpbackend.spawn(topo.remote, ["%s:%d=v1" % (EP_ADDRS[0], PORT), "%s:%d=v2" % (EP_ADDRS[1], PORT)]))
        for i, v in enumerate(["v1", "v2"]):
            procs.append(
                topo.remote.spawn_ready(
                    [sys.executable, H2ECHO, "--name", v, "--listen", "%s:%d" % (EP_ADDRS[i], H2_PORT)], "h2echo-" + v
                )
            )
            procs.append(
                topo.remote.spawn_ready(
                    [sys.executable, GRPCPEER, "server", "--name", v, "--listen", "%s:%d" % (EP_ADDRS[i], GRPC_PORT)],
                    "grpc-" + v,
                    20,
                )
            )
        path = sl.registry_file(registry(ROUTES))
        daemon = sl.Shuntd(
            topo.app,
            sl.shuntd_args(**{"service-discovery.file.path": path, "log-level": "info"}),
        ).wait_ready()
        yield topo, daemon, path
    finally:
        sl.teardown(topo, [daemon], procs)


def servers(topo, url, n, headers=()):
    """n requests on one kept-alive curl connection (URL globbing); the
    server that answered each."""
    args = ["-s", "--max-time", "60"]
    for h in headers:
        args += ["-H", h]
    out = topo.app.curl(args + ["-w", "\\n", "%s?i=[1-%d]" % (url, n)], timeout=90).stdout
    names = re.findall(r'"server": ?"(v[12])"', out)
    assert len(names) == n, out[-500:]
    return names


def get(topo, path, headers=(), extra=()):
    args = ["-s", "-i", "--max-time", "10"] + list(extra)
    for h in headers:
        args += ["-H", h]
    r = topo.app.curl(args + [URL + path], timeout=20)
    head, _, body = r.stdout.replace("\r\n", "\n").partition("\n\n")
    status = int(head.split()[1]) if head else 0
    return status, head, body


def test_weighted_split_90_10(env):
    topo, _, _ = env
    names = servers(topo, URL + "/split", 2000)
    share = names.count("v1") / len(names) * 100
    assert 87 <= share <= 93, "v1 got %.1f %% of 2,000 requests, want 90 +- 3" % share


def test_header_match_pins_to_v2(env):
    topo, _, _ = env
    assert set(servers(topo, URL + "/stable", 200, headers=["x-canary: always"])) == {"v2"}
    assert set(servers(topo, URL + "/stable", 200)) == {"v1"}
    # another value of the header is not the match
    assert set(servers(topo, URL + "/stable", 50, headers=["x-canary: sometimes"])) == {"v1"}


def test_precedence(env):
    topo, _, _ = env
    want = {
        "/items": "v1",  # prefix
        "/items/x": "v1",
        "/items/special/1": "v2",  # the longer prefix
        "/items/12": "v2",  # regex over prefix
        "/items/7": "v1",  # exact over regex
    }
    for path, server in want.items():
        status, _, body = get(topo, path)
        assert status == 200, (path, status, body)
        assert json.loads(body)["server"] == server, path


def test_rewrite_and_headers_seen_by_backend(env):
    topo, _, _ = env
    status, head, body = get(topo, "/old/a/b?q=1", headers=["x-route: client", "x-secret: s"])
    assert status == 200, body
    seen = json.loads(body)
    assert seen["path"] == "/new/a/b?q=1"
    assert seen["headers"].get("x-route") == "old"
    assert seen["headers"].get("x-added") == "1"
    assert "x-secret" not in seen["headers"]
    assert "x-served-by-route: old" in head.lower()


def test_redirect_and_no_route(env):
    topo, _, _ = env
    status, head, _ = get(topo, "/moved/x?y=1")
    assert status == 301
    assert re.search(r"(?im)^location: http://elsewhere/moved/x\?y=1$", head), head
    status, head, _ = get(topo, "/nothing/here")
    assert status == 404, head


def test_per_route_timeout(env):
    topo, _, _ = env
    t0 = time.monotonic()
    status, _, _ = get(topo, "/slow/2000")
    took = time.monotonic() - t0
    assert status == 504
    assert took < 1.5, "the route's 300 ms timeout took %.2f s" % took


def test_routes_admin_and_cli(env):
    topo, daemon, _ = env
    j = daemon.json("/routes")
    svc = [s for s in j["services"] if s["service"] == "default/web"]
    assert len(svc) == 1 and svc[0]["port"] == 80
    rules = svc[0]["rules"]
    # precedence order: the exact match first
    assert rules[0]["matches"][0]["path"] == {"type": "Exact", "value": "/items/7"}
    split = [r for r in rules if r["matches"][0]["path"]["value"] == "/split"][0]
    assert split["hits"] >= 2000
    hits = {b["selector"]: b["hits"] for b in split["backends"]}
    assert hits["version=v1"] + hits["version=v2"] == split["hits"]
    assert svc[0]["misses"] >= 1
    m = daemon.metrics()
    assert m[("shunt_route_requests_total", (("route", "reviews"), ("rule", "1"), ("service", "default/web:80")))] >= 2000
    out = sl.shuntctl(topo.app, "--admin", "127.0.0.1:15003", "routes", "web").stdout
    assert "default/web:80" in out and "reviews#version=v1 w=90" in out, out


def h2_get(topo, path, headers=()):
    args = ["--http2-prior-knowledge", "-s", "-i", "--max-time", "10"]
    for h in headers:
        args += ["-H", h]
    r = topo.app.curl(args + ["http://%s%s" % (VIP_H2, path)], timeout=20)
    head, _, body = r.stdout.replace("\r\n", "\n").partition("\n\n")
    return int(head.split()[1]), body


def test_h2_match_rewrite_headers(env):
    topo, _, _ = env
    status, body = h2_get(topo, "/h2/a?q=1", headers=["x-secret: s", "x-route: client"])
    assert status == 200, body
    seen = json.loads(body)
    hdrs = dict(seen["headers"])
    assert seen["server"] == "v1"
    assert hdrs[":path"] == "/new/a?q=1"
    assert hdrs.get("x-route") == "h2"
    assert "x-secret" not in hdrs
    status, body = h2_get(topo, "/h2/a", headers=["x-canary: always"])
    assert status == 200 and json.loads(body)["server"] == "v2"
    assert h2_get(topo, "/other")[0] == 404


def grpc_client(topo, vip, *args):
    r = topo.app.run(
        [sys.executable, GRPCPEER, "client", "--target", "%s:80" % vip] + [str(a) for a in args],
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, (r.stdout, r.stderr)
    return json.loads(r.stdout)


def test_grpc_method_match(env):
    topo, _, _ = env
    out = grpc_client(topo, VIP_GRPC, "unary", "--n", 50)
    assert out["servers"] == {"v2": 50}, out
    # no rule for Bidi: UNIMPLEMENTED, as the Gateway API's 404
    out = grpc_client(topo, VIP_GRPC, "bidi", "--calls", 1, "--messages", 1)
    assert out["codes"] == {"UNIMPLEMENTED": 1}, out


def test_fault_abort_10_percent(env):
    topo, daemon, _ = env
    out = topo.app.curl(
        ["-s", "-o", "/dev/null", "-w", "%{http_code}\\n", "--max-time", "60", URL + "/fault?i=[1-2000]"],
        timeout=90,
    ).stdout.split()
    assert len(out) == 2000 and set(out) <= {"200", "503"}, set(out)
    share = out.count("503") / 20.0
    assert 8 <= share <= 12, "%.1f %% aborted, want 10 +- 2" % share
    rule = [r for s in daemon.json("/routes")["services"] for r in s["rules"] if "fault" in r][0]
    assert rule["faults"] == out.count("503")


def test_tcp_split_per_connection(env):
    """A TCP service's rule without matches splits connections by weight;
    each connection stays on its backend."""
    topo, _, _ = env
    names = servers(topo, "http://%s/tcp" % VIP_TCP, 400, headers=["Connection: close"])
    share = names.count("v1") / len(names) * 100
    assert 73 <= share <= 87, "v1 got %.1f %% of 400 connections, want 80 +- 7" % share


def last_error(daemon):
    return " ".join(s.get("last_error") or "" for s in daemon.json("/debug/cache")["registry"]["sources"])


def test_bad_routes_rejected_last_good_kept(env):
    topo, daemon, path = env
    bad = json.loads(json.dumps(ROUTES))
    bad[0]["rules"][1]["matches"][0] = {"path": {"type": "RegularExpression", "value": "/split(("}}
    cases = [
        (bad, "routes[0].rules[1].matches[0].path.value: regular expression '/split((' rejected"),
        (
            [{"name": "r", "rules": [{"backendRefs": [{"name": "reviews", "weight": 0}]}]}],
            "routes[0].rules[0].backendRefs: the backends' weights sum to 0",
        ),
        (
            [{"name": "r", "rules": [{"backendRefs": [{"name": "ghost"}]}]}],
            "unknown backend service default/ghost",
        ),
        (
            [{"name": "r", "rules": [{"matches": [prefix("/a")]}, {"matches": [prefix("/a/")]}]}],
            "routes[0].rules[1].matches[0]: overlaps routes[0].rules[0].matches[0]",
        ),
    ]
    for routes, why in cases:
        sl.write_json(path, registry(routes))
        sl.wait_until(lambda: why in last_error(daemon), 5, what=why)
        # the last good routes still apply
        assert json.loads(get(topo, "/items/12")[2])["server"] == "v2"
        assert set(servers(topo, URL + "/stable", 20, headers=["x-canary: always"])) == {"v2"}
    sl.write_json(path, registry(ROUTES))
    sl.wait_until(lambda: last_error(daemon) == "", 5, what="the good file applied")
