# SPDX-License-Identifier: Apache-2.0
"""Active health checks through shuntd with the file registry: a service of
three endpoints with an http check (path /healthz, interval 200ms) on a
separate health port. An endpoint whose check fails gets no new requests
(even though its traffic port still answers), and is back in rotation when
its check passes again; a backend killed outright is taken out by its check
(no connect retries needed)."""

import collections
import json
import signal

import pytest

import shuntlib as sl
from shuntlib import Topology as T

VIP4 = "10.96.0.20"
EP_ADDRS = sl.EP_ADDRS
PORT = 8081
HC_PORT = 8082


def registry():
    hc = {
        "type": "http",
        "path": "/healthz",
        "port": HC_PORT,
        "interval": "200ms",
        "timeout": "150ms",
        "healthy_threshold": 1,
        "unhealthy_threshold": 1,
    }
    return {"services": [sl.service("web", VIP4, PORT, EP_ADDRS, "HTTP", health_check=hc)]}


@pytest.fixture(scope="module")
def env():
    topo = T()
    traffic, health = [], []
    daemon = None
    try:
        topo.add_remote4()
        topo.route_vips()
        for i, a in enumerate(EP_ADDRS):
            traffic.append(topo.remote.spawn_peer("http", "ep%d" % i, ["%s:%d" % (a, PORT)]))
            health.append(topo.remote.spawn_peer("http", "hc%d" % i, ["%s:%d" % (a, HC_PORT)]))
        path = sl.registry_file(registry())
        daemon = sl.Shuntd(
            topo.app, sl.shuntd_args(**{"service-discovery.file.path": path})
        ).wait_ready()
        yield topo, daemon, traffic, health
    finally:
        sl.teardown(topo, [daemon], traffic + health)


def health_of(d, addr):
    for svc in d.json("/endpoints")["services"]:
        if svc["name"] != "web":
            continue
        for ep in svc["endpoints"]:
            if ep["address"] == addr and ep["port"] == PORT:
                return ep["health"]
    return None


def wait_health(d, addr, want):
    """Waits until addr has health want in /endpoints and the proxy routes by
    that registry version (or a later one)."""
    def ok():
        js = d.json("/endpoints")
        for svc in js["services"]:
            for ep in svc["endpoints"] if svc["name"] == "web" else []:
                if ep["address"] == addr and ep["port"] == PORT and ep["health"] == want:
                    return js["version"]
        return None

    v = sl.wait_until(ok, 10, what="%s %s" % (addr, want))
    prefix = "routing by registry version "

    def routed():
        return any(
            l.get("msg", "").startswith(prefix) and int(l["msg"][len(prefix):]) >= v
            for l in d.log_lines()
        )

    sl.wait_until(routed, 10, what="the proxy routing by registry version %d" % v)


def served_by(topo, n):
    counts = collections.Counter()
    for _ in range(n):
        status, _, body = topo.app.http(VIP4, 80, "GET", "/")
        assert status == 200
        counts[json.loads(body)["server"]] += 1
    return counts


def all_healthy(d):
    return all(health_of(d, a) == "healthy" for a in EP_ADDRS)


def test_checks_mark_endpoints_healthy(env):
    topo, d, _, _ = env
    sl.wait_until(lambda: all_healthy(d), 10, what="all endpoints healthy by their checks")
    assert sorted(served_by(topo, 30)) == ["ep0", "ep1", "ep2"]


def test_failing_check_takes_endpoint_out(env):
    """ep1's health port goes away, its traffic port stays: after the check
    fails, ep1 gets 0 new requests; when the check passes again it is back."""
    topo, d, _, health = env
    sl.wait_until(lambda: all_healthy(d), 10, what="all endpoints healthy")
    health[1].stop(signal.SIGKILL)
    try:
        wait_health(d, EP_ADDRS[1], "unhealthy")
        counts = served_by(topo, 60)
        assert counts["ep1"] == 0 and sum(counts.values()) == 60, counts
    finally:
        health[1] = topo.remote.spawn_peer("http", "hc1", ["%s:%d" % (EP_ADDRS[1], HC_PORT)])
    wait_health(d, EP_ADDRS[1], "healthy")
    assert served_by(topo, 30)["ep1"] > 0


def test_killed_backend_needs_no_retries(env):
    """The whole backend ep2 is killed: once its check failed, connections
    are not even attempted to it (no connect retries), the others serve."""
    topo, d, traffic, health = env
    sl.wait_until(lambda: all_healthy(d), 10, what="all endpoints healthy")
    traffic[2].stop(signal.SIGKILL)
    health[2].stop(signal.SIGKILL)
    try:
        wait_health(d, EP_ADDRS[2], "unhealthy")
        retries = d.metric("shunt_connect_retries_total", default=0)
        counts = served_by(topo, 60)
        assert counts["ep2"] == 0 and sum(counts.values()) == 60, counts
        assert d.metric("shunt_connect_retries_total", default=0) == retries
    finally:
        traffic[2] = topo.remote.spawn_peer("http", "ep2", ["%s:%d" % (EP_ADDRS[2], PORT)])
        health[2] = topo.remote.spawn_peer("http", "hc2", ["%s:%d" % (EP_ADDRS[2], HC_PORT)])
    wait_health(d, EP_ADDRS[2], "healthy")
    assert served_by(topo, 30)["ep2"] > 0

