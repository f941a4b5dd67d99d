# SPDX-License-Identifier: Apache-2.0
"""The seed's load-balancing acceptance table (Milestone 4), through shuntd's
HTTP/1.1 proxying with real HTTP/1.1 backends (httpbackend.py) that answer
with their own name. Every request is counted by the name in its answer."""

import collections
import concurrent.futures
import http.client
import json

import pytest

import httpbackend
import shuntlib as sl
from shuntlib import Topology as T

# Endpoint addresses in the remote pod (10.77.0.2 and .3 exist already).
ADDRS = [T.REMOTE4, T.REMOTE4B, "10.77.0.4", "10.77.0.5", "10.77.0.6"]
VIPS = {
    "rr": "10.96.2.1",
    "weighted": "10.96.2.2",
    "hash": "10.96.2.3",
    "health": "10.96.2.4",
    "least": "10.96.2.5",
    "cookie": "10.96.2.6",
    "source": "10.96.2.7",
}
PORTS = {name: 9001 + i for i, name in enumerate(VIPS)}


def service(name, n, algorithm=None, weights=None, unhealthy=(), hash_key=None):
    eps = []
    for i in range(n):
        ep = {"address": ADDRS[i], "port": PORTS[name]}
        if weights:
            ep["weight"] = weights[i]
        if i in unhealthy:
            ep["health"] = "unhealthy"
        eps.append(ep)
    svc = {
        "name": name,
        "namespace": "default",
        "addresses": [VIPS[name]],
        "ports": [{"name": "http", "port": 80, "target_port": PORTS[name], "protocol": "HTTP"}],
        "endpoints": eps,
    }
    lb = {}
    if algorithm:
        lb["algorithm"] = algorithm
    if hash_key:
        lb["hash_key"] = hash_key
    if lb:
        svc["load_balancing"] = lb
    return svc


def registry(hash_endpoints=4):
    return {
        "services": [
            service("rr", 3),
            service("weighted", 3, "weighted", weights=[1, 2, 3]),
            service("hash", hash_endpoints, "consistent_hash"),
            service("health", 3, unhealthy=(1,)),
            service("least", 3, "least_connections"),
            service("cookie", 4, "consistent_hash", hash_key="cookie:session"),
            service("source", 4, "consistent_hash", hash_key="source_ip"),
        ]
    }


@pytest.fixture(scope="module")
def env():
    topo = T()
    procs = []
    daemon = None
    try:
        topo.add_remote4(*ADDRS[2:])
        topo.route_vips()
        specs = [
            "%s:%d=%s-ep%d" % (a, PORTS[name], name, i)
            for name in VIPS
            for i, a in enumerate(ADDRS)
        ]
        procs.append(httpbackend.spawn(topo.remote, specs))
        path = sl.registry_file(registry())
        daemon = sl.Shuntd(
            topo.app,
            sl.shuntd_args(**{"service-discovery.file.path": path, "log-level": "info"}),
        ).wait_ready()
        yield topo, daemon, path
    finally:
        sl.teardown(topo, [daemon], procs)


class Client:
    """One keep-alive HTTP/1.1 connection from the app pod to a VIP."""

    def __init__(self, topo, vip, timeout=10):
        self.conn = http.client.HTTPConnection(vip, 80, timeout=timeout)
        self.conn.sock = topo.app.connect(vip, 80, timeout)

    def get(self, path="/", headers=None):
        self.conn.request("GET", path, headers=headers or {})
        r = self.conn.getresponse()
        body = r.read()
        assert r.status == 200, (r.status, body)
        return json.loads(body)["server"]

    def close(self):
        self.conn.close()


def count(topo, vip, n, headers=None):
    c = Client(topo, vip)
    try:
        return collections.Counter(c.get(headers=headers) for _ in range(n))
    finally:
        c.close()


def test_round_robin_300_over_3(env):
    topo, d, _ = env
    counts = count(topo, VIPS["rr"], 300)
    assert sorted(counts) == ["rr-ep0", "rr-ep1", "rr-ep2"], counts
    assert all(95 <= n <= 105 for n in counts.values()), counts


def test_weighted_1_2_3_over_600(env):
    topo, d, _ = env
    counts = count(topo, VIPS["weighted"], 600)
    for i, want in enumerate((100, 200, 300)):
        got = counts["weighted-ep%d" % i]
        assert abs(got - want) <= want * 0.10, counts


def hash_map(topo, vip, keys, header=None, cookie=None):
    c = Client(topo, vip)
    try:
        out = {}
        for k in keys:
            h = {header: k} if header else {"Cookie": "theme=dark; %s=%s" % (cookie, k)}
            out[k] = c.get(headers=h)
        return out
    finally:
        c.close()


def test_consistent_hash_1000_sessions_stick_and_a_fifth_moves(env):
    topo, d, path = env
    keys = ["session-%d" % i for i in range(1000)]
    first = hash_map(topo, VIPS["hash"], keys, header="X-Request-Key")
    assert len(set(first.values())) == 4, collections.Counter(first.values())
    # Every session again, on two other connections (either worker): 100 % stick.
    for _ in range(2):
        again = hash_map(topo, VIPS["hash"], keys, header="X-Request-Key")
        assert again == first
    # A fifth endpoint: about a fifth of the keys move, all of them to it.
    sl.write_json(path, registry(hash_endpoints=5))
    try:
        sl.wait_until(
            lambda: "hash-ep4" in hash_map(topo, VIPS["hash"], keys[:50], "X-Request-Key").values(),
            10,
            what="the fifth endpoint in the hash ring",
        )
        after = hash_map(topo, VIPS["hash"], keys, header="X-Request-Key")
        moved = [k for k in keys if after[k] != first[k]]
        assert all(after[k] == "hash-ep4" for k in moved), collections.Counter(
            after[k] for k in moved
        )
        assert 0.12 <= len(moved) / len(keys) <= 0.28, len(moved)
    finally:
        sl.write_json(path, registry())


def test_consistent_hash_by_cookie(env):
    """The service's hash_key "cookie:session": the session cookie decides."""
    topo, d, _ = env
    keys = ["u%d" % i for i in range(200)]
    first = hash_map(topo, VIPS["cookie"], keys, cookie="session")
    assert len(set(first.values())) == 4
    assert hash_map(topo, VIPS["cookie"], keys, cookie="session") == first


def test_consistent_hash_by_source_address(env):
    """hash_key "source_ip": the client's address decides, whatever the
    request carries; without a configured key the source address is also the
    fallback for a request without X-Request-Key."""
    topo, d, _ = env
    by_source = hash_map(topo, VIPS["source"], ["k%d" % i for i in range(100)], "X-Request-Key")
    assert len(set(by_source.values())) == 1, collections.Counter(by_source.values())
    no_key = count(topo, VIPS["hash"], 50)
    assert len(no_key) == 1, no_key
    # Many sources: each sticks to one endpoint over new connections (new
    # source ports), and together they spread over the endpoints. 16 sources
    # on 4 endpoints all landing on 2 or fewer has a chance below 1e-3.
    sources = ["10.77.0.%d" % i for i in range(101, 117)]
    for a in sources:
        topo.app.ip("addr", "add", a + "/32", "dev", "e-remote")
    for vip in (VIPS["source"], VIPS["hash"]):
        picked = {}
        for a in sources:
            got = {get_from(topo, vip, a, {"X-Request-Key": "k%d" % n}) for n in range(3)}
            assert len(got) == 1, (vip, a, got)
            picked[a] = got.pop()
        assert len(set(picked.values())) >= 3, (vip, collections.Counter(picked.values()))


def get_from(topo, vip, src, headers):
    """One request on a new connection from source address src of the app
    pod; the endpoint's name. The key header must not matter: source_ip
    ignores it, and the "hash" service has no hash_key (X-Request-Key would
    be its key only when configured)."""
    s = topo.app.socket()
    s.settimeout(10)
    s.bind((src, 0))
    s.connect((vip, 80))
    conn = http.client.HTTPConnection(vip, 80, timeout=10)
    conn.sock = s
    try:
        conn.request("GET", "/", headers=headers if vip == VIPS["source"] else {})
        r = conn.getresponse()
        body = r.read()
        assert r.status == 200, (r.status, body)
        return json.loads(body)["server"]
    finally:
        conn.close()


def test_one_of_three_unhealthy_gets_nothing(env):
    topo, d, _ = env
    counts = count(topo, VIPS["health"], 200)
    assert counts["health-ep1"] == 0, counts
    assert counts["health-ep0"] + counts["health-ep2"] == 200
    assert abs(counts["health-ep0"] - counts["health-ep2"]) <= 10, counts


def test_least_connections_picks_the_least_busy(env):
    """Two slow requests keep two endpoints busy; every new request goes to
    the third, the only one with nothing in flight; once the slow ones are
    done all three serve again."""
    topo, d, _ = env
    vip = VIPS["least"]
    busy = []

    def slow():
        c = Client(topo, vip, timeout=30)
        try:
            c.conn.request("GET", "/slow/6000")  # outlasts the quick requests on a busy machine
            r = c.conn.getresponse()
            return json.loads(r.read())["server"]
        finally:
            c.close()

    with concurrent.futures.ThreadPoolExecutor(2) as ex:
        futs = [ex.submit(slow)]
        # The first slow request is in flight before the second is sent.
        sl.wait_until(
            lambda: any(c["state"] == "awaiting_response" for c in d.connections()),
            5,
            what="first slow request in flight",
        )
        futs.append(ex.submit(slow))
        sl.wait_until(
            lambda: sum(c["state"] == "awaiting_response" for c in d.connections()) == 2,
            5,
            what="two slow requests in flight",
        )
        quick = count(topo, vip, 30)
        busy = [f.result(timeout=30) for f in futs]
    assert len(set(busy)) == 2, busy
    (idle,) = {"least-ep0", "least-ep1", "least-ep2"} - set(busy)
    assert quick == {idle: 30}, (busy, quick)
    after = count(topo, vip, 30)
    assert len(after) == 3, after
