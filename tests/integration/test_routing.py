# SPDX-License-Identifier: Apache-2.0
"""Outbound routing by the file registry: a connection to a service's
virtual address reaches one of its endpoints, chosen by the load balancer;
the registry is watched; a failed endpoint is retried around; a service
with no endpoint that can serve is refused at once."""

import collections
import json
import os
import signal
import socket
import subprocess
import time

import pytest

import shuntlib as sl
from shuntlib import Topology as T

VIP4, VIP6 = "10.96.0.10", "fd96::10"
EXTRA4 = sl.EXTRA4  # a third endpoint address in the remote pod
EP_ADDRS = sl.EP_ADDRS
PORT = 8081


def registry(endpoints, health=None, algorithm=None, extra_services=()):
    svc = {
        "name": "web",
        "namespace": "default",
        "addresses": [VIP4, VIP6],
        "ports": [{"name": "http", "port": 80, "target_port": PORT, "protocol": "HTTP"}],
        # passive ejection short: a restarted endpoint is back within a test's wait
        "health_check": {"ejection_time": "1s"},
        "endpoints": [
            {"address": a, "port": PORT, **({"health": health[a]} if health and a in health else {})}
            for a in endpoints
        ],
    }
    if algorithm:
        svc["load_balancing"] = {"algorithm": algorithm}
    return {"services": [svc] + list(extra_services)}


@pytest.fixture(scope="module")
def env():
    topo = T()
    procs = []
    daemon = None
    try:
        topo.add_remote4()
        topo.route_vips(v6=True)
        for i, a in enumerate(EP_ADDRS):
            procs.append(topo.remote.spawn_peer("http", "ep%d" % i, ["%s:%d" % (a, PORT)]))
        path = sl.registry_file(registry(EP_ADDRS))
        # A killed endpoint opens its circuit breaker and is ejected; short
        # times let the next tests see it back within their 5 s waits.
        daemon = sl.Shuntd(
            topo.app,
            sl.shuntd_args(
                **{
                    "service-discovery.file.path": path,
                    "circuit-breaker.open-timeout": "500ms",
                    "outlier-detection.base-ejection-time": "500ms",
                }
            ),
        ).wait_ready()
        yield topo, daemon, path, procs
    finally:
        sl.teardown(topo, [daemon], procs)


def served_by(topo, host, n):
    """n requests, each on a new connection: which endpoint answered."""
    counts = collections.Counter()
    for _ in range(n):
        status, _, body = topo.app.http(host, 80, "GET", "/")
        assert status == 200
        counts[json.loads(body)["server"]] += 1
    return counts


def test_round_robin_spreads_over_endpoints(env):
    topo, d, path, _ = env
    before = d.metric("shunt_outbound_routes_total", route="service")
    counts = served_by(topo, VIP4, 300)
    # One rotation per worker (2 workers): each endpoint within 100 +- 5.
    assert sorted(counts) == ["ep0", "ep1", "ep2"], counts
    assert all(95 <= n <= 105 for n in counts.values()), counts
    assert d.metric("shunt_outbound_routes_total", route="service") == before + 300


def test_ipv6_virtual_address(env):
    topo, d, _, _ = env
    counts = served_by(topo, VIP6, 6)
    assert sum(counts.values()) == 6 and len(counts) >= 2, counts


def test_declared_protocol_skips_sniffing(env):
    """Port 80 of the service is declared HTTP: the connection is http1 before
    the client has sent a byte (nothing waits for sniffing); it is proxied
    request by request, /connections shows the last request's endpoint."""
    topo, d, _, _ = env
    s = topo.app.connect(VIP4, 80)
    # Only this socket's connection: one from an earlier test may still be
    # closing.
    me = "%s:%d" % s.getsockname()[:2]

    def mine():
        return [c for c in d.connections() if c["service"] == "default/web:80" and c["client"] == me]

    try:
        conns = sl.wait_until(mine, 5, what="the connection in /connections")
        assert conns[0]["protocol"] == "http1"
        assert conns[0]["original_dst"] == "%s:80" % VIP4
        s.sendall(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
        assert sl.recv_line(s).startswith(b"HTTP/1.1 200")
        conns = mine()
        assert conns[0]["upstream"].endswith(":%d" % PORT), conns
        assert conns[0]["requests"] == 1
    finally:
        s.close()


def test_endpoints_admin_and_manual_registration(env):
    topo, d, _, _ = env
    eps = d.json("/endpoints")
    text = json.dumps(eps)
    for a in EP_ADDRS:
        assert a in text
    status, body = d.post(
        "/admin/endpoints",
        json.dumps({"service": "manual-svc", "endpoints": [{"id": "10.77.0.2:9999"}]}),
    )
    assert status == 200, body
    assert "manual-svc" in json.dumps(d.json("/endpoints"))
    status, body = d.post("/admin/endpoints", "{not json")
    assert status == 400 and b"error" in body


def test_failed_endpoint_is_retried_around(env):
    """A dead endpoint: connects to it fail, shuntd retries another endpoint,
    the client never notices; passive health then takes it out."""
    topo, d, _, procs = env
    retries = d.metric("shunt_connect_retries_total")
    procs[2].stop(signal.SIGKILL)
    try:
        counts = served_by(topo, VIP4, 30)
        assert sum(counts.values()) == 30 and "ep2" not in counts, counts
        assert d.metric("shunt_connect_retries_total") > retries
    finally:
        procs[2] = topo.remote.spawn_peer("http", "ep2", ["%s:%d" % (EXTRA4, PORT)])
        # back in rotation before the next test, whichever runs next
        sl.wait_until(lambda: "ep2" in served_by(topo, VIP4, 6), 10, what="ep2 back")


def test_registry_edit_is_followed(env):
    """Scaled from 3 to 2 endpoints by editing the file: picked up within a
    second or two; back to 3 afterwards."""
    topo, d, path, _ = env
    sl.write_json(path, registry(EP_ADDRS[:2]))
    try:
        sl.wait_until(
            lambda: "ep2" not in served_by(topo, VIP4, 6), 5, what="ep2 out of rotation"
        )
        assert "ep2" not in served_by(topo, VIP4, 30)
    finally:
        sl.write_json(path, registry(EP_ADDRS))
    sl.wait_until(lambda: "ep2" in served_by(topo, VIP4, 6), 5, what="ep2 back")


def test_no_endpoint_answered_at_once(env):
    """Every endpoint unhealthy: the client of the service's HTTP port gets a
    503 with Retry-After and the reason at once, not a reset or a hang."""
    topo, d, path, _ = env
    sl.write_json(path, registry(EP_ADDRS, health={a: "unhealthy" for a in EP_ADDRS}))
    try:
        def unavailable():
            status, headers, _ = topo.app.http(VIP4, 80, "GET", "/", timeout=2)
            return status == 503 and headers
        headers = sl.wait_until(unavailable, 5, what="503 from the unhealthy service")
        assert headers.get("Retry-After") == "1", headers
        assert "no healthy endpoint" in headers.get("X-Shunt-Reason", ""), headers
        assert d.metric("shunt_http_local_responses_total", status="503") >= 1
    finally:
        sl.write_json(path, registry(EP_ADDRS))
    sl.wait_until(lambda: sum(served_by(topo, VIP4, 3).values()) == 3, 5, what="service back")


def test_unknown_destination_passes_through_by_default(env):
    topo, d, _, procs = env
    before = d.metric("shunt_outbound_routes_total", route="passthrough")
    status, _, body = topo.app.http(T.REMOTE4, PORT, "GET", "/")
    assert status == 200 and json.loads(body)["server"] == "ep0"
    assert d.metric("shunt_outbound_routes_total", route="passthrough") == before + 1


def test_registry_only_policy(fresh_topo, start_shuntd):
    topo = fresh_topo
    topo.route_vips()
    p = topo.remote.spawn_peer("http", "ep0", ["%s:%d" % (T.REMOTE4, PORT)])
    try:
        path = os.path.join(sl.tmpdir(), "registry-only.json")
        sl.write_json(path, registry([T.REMOTE4]))
        d = start_shuntd(
            topo.app,
            sl.shuntd_args(
                **{"service-discovery.file.path": path, "outbound-policy": "registry_only"}
            ),
        )
        assert json.loads(topo.app.http(VIP4, 80, "GET", "/")[2])["server"] == "ep0"
        with pytest.raises((ConnectionError, OSError)):
            topo.app.http(T.REMOTE4, PORT, "GET", "/", timeout=2)
        # The worker counts the refusal just after closing the socket.
        d.wait_metric("shunt_connections_closed_total", lambda v: v == 1, reason="unknown_destination")
    finally:
        p.stop()


def test_shuntctl_endpoints(env):
    topo, _, _, _ = env
    out = sl.shuntctl(topo.app, "endpoints", "default/web")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].split()[:3] == ["SERVICE", "ENDPOINT", "HEALTH"]
    for a in EP_ADDRS:
        assert any("default/web" in l and "%s:%d" % (a, PORT) in l for l in lines), out.stdout
    js = sl.shuntctl(topo.app, "--json", "endpoints")
    assert js.returncode == 0 and json.loads(js.stdout)["services"]
    bad = sl.shuntctl(topo.app, "endpoints", "a b")
    assert bad.returncode == 2


def test_staleness_metric_when_the_registry_breaks(env):
    """A broken registry file keeps the last endpoints serving, marks the
    source down and stale; fixing it recovers. promtool accepts /metrics."""
    topo, d, path, _ = env
    assert d.metric("shunt_discovery_source_up", source="file", type="file") == 1
    with open(path + ".tmp", "w") as f:
        f.write('{"services": [ {"name": ')
    os.rename(path + ".tmp", path)
    try:
        sl.wait_until(
            lambda: d.metric("shunt_discovery_source_up", source="file", type="file") == 0,
            5,
            what="the file source marked down",
        )
        sl.wait_until(
            lambda: d.metric("shunt_discovery_staleness_seconds", source="file", type="file") >= 1,
            5,
            what="staleness seconds growing",
        )
        # The last good endpoints keep serving.
        assert sum(served_by(topo, VIP4, 3).values()) == 3
        assert d.metric("shunt_discovery_endpoints", health="unknown") + d.metric(
            "shunt_discovery_endpoints", health="healthy"
        ) >= 3
        text = d.metrics_text()
        p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=30)
        assert p.returncode == 0, p.stdout + p.stderr
    finally:
        sl.write_json(path, registry(EP_ADDRS))
    sl.wait_until(
        lambda: d.metric("shunt_discovery_source_up", source="file", type="file") == 1,
        5,
        what="the file source back up",
    )
