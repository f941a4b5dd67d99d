# SPDX-License-Identifier: Apache-2.0
"""Locality tiers across clusters (load_balancing.local_region): two file
clusters, "east" (this workload's region r1, zone r1a) and "west" (region
r2), each with two endpoints of web and a tcp health check every 300 ms.
East serves alone while healthy; one east endpoint killed: east keeps
min(100, 50 % * 1.4) = 70 % and 30 % spills to west; both killed: every
request goes to west within the health-check interval (plus the cluster
merge and the proxy's snapshot poll); restarted: back to east alone. The
tier is in /endpoints, in shunt_locality_* and in the access lines."""

import json
import os
import signal
import time

import pytest

import shuntlib as sl
from shuntlib import Topology as T
from test_dns import served_by, wait_routed

PORT = 8081
VIP = "10.96.0.40"
EAST = [T.REMOTE4, T.REMOTE4B]
WEST = ["10.77.0.4", "10.77.0.5"]
HC_INTERVAL_S = 0.3
SERVICE = "default/web:80"


def cluster_registry(addrs):
    hc = {"type": "tcp", "interval": "%dms" % int(HC_INTERVAL_S * 1000), "timeout": "200ms",
          "healthy_threshold": 1, "unhealthy_threshold": 1}
    return {"services": [sl.service("web", VIP, PORT, addrs, "HTTP", health_check=hc)]}


@pytest.fixture(scope="module")
def env():
    topo = T()
    procs = {}
    daemon = None
    try:
        topo.add_remote4(*WEST)
        topo.route_vips()
        for i, a in enumerate(EAST + WEST):
            procs[a] = topo.remote.spawn_peer("http", "ep%d" % i, ["%s:%d" % (a, PORT)])
        east = sl.registry_file(cluster_registry(EAST))
        west = sl.registry_file(cluster_registry(WEST))
        daemon = sl.Shuntd(
            topo.app,
            sl.shuntd_args(**{
                "upgrade.socket": os.path.join(sl.tmpdir(), "upgrade.sock"),
                "load-balancing.local-region": "r1",
                "load-balancing.local-zone": "r1a",
                "load-balancing.tiers.remote.connect-timeout": "2s",
                "load-balancing.tiers.remote.max-retries": "4",
                "load-balancing.tiers.remote.consecutive-failures": "9",
            }),
            config={"service_discovery": {"clusters": [
                {"name": "east", "region": "r1", "zone": "r1a", "type": "file",
                 "file": {"path": east}},
                {"name": "west", "region": "r2", "zone": "r2a", "type": "file",
                 "file": {"path": west}},
            ]}},
        )
        daemon.wait_ready()
        yield topo, daemon, procs
    finally:
        sl.teardown(topo, [daemon], list(procs.values()))


def web(d):
    for s in d.json("/endpoints")["services"]:
        if s["name"] == "web":
            return s
    return None


def healthy(d, want):
    """web's healthy endpoints are exactly want, and the proxy routes by
    that registry version (or a later one)."""
    def ok(d):
        s = web(d)
        return s and sorted(e["address"] for e in s["endpoints"]
                            if e["health"] == "healthy") == sorted(want)
    wait_routed(d, ok, "healthy endpoints %s" % want, timeout=10)


def tiers(d):
    s = web(d)
    return {t["tier"]: t for t in s["resilience"][0]["locality"]}


def restart(topo, procs, addr):
    i = (EAST + WEST).index(addr)
    procs[addr] = topo.remote.spawn_peer("http", "ep%d" % i, ["%s:%d" % (addr, PORT)])


def test_local_first_spill_and_back(env):
    topo, d, procs = env
    healthy(d, EAST + WEST)
    # all healthy: east alone
    assert set(served_by(topo, VIP, 20)) <= {"ep0", "ep1"}
    t = tiers(d)
    assert t["local"]["endpoints"] == 2 and t["local"]["load_percent"] == 100
    assert t["remote"]["endpoints"] == 2 and t["remote"]["load_percent"] == 0
    assert t["remote"]["connect_timeout_ms"] == 2000 and t["remote"]["max_retries"] == 4
    assert t["remote"]["consecutive_failures"] == 9
    assert t["region"]["endpoints"] == 0
    by = {e["address"]: e for e in web(d)["endpoints"]}
    assert by[EAST[0]]["resilience"][0]["tier"] == "local"
    assert by[WEST[0]]["resilience"][0]["tier"] == "remote"

    # one east endpoint down: 50 % * 1.4 = 70 % stays, 30 % spills to west
    procs[EAST[0]].stop(signal.SIGKILL)
    healthy(d, EAST[1:] + WEST)
    assert tiers(d)["local"]["load_percent"] == 70
    assert tiers(d)["remote"]["load_percent"] == 30
    got = served_by(topo, VIP, 60)
    assert "ep0" not in got and got["ep1"] > 0 and got["ep2"] + got["ep3"] > 0, got

    # both down: everything to west, within the health-check interval
    # (plus the cluster merge, 200 ms, and the proxy's 100 ms poll)
    procs[EAST[1]].stop(signal.SIGKILL)
    t0 = time.monotonic()
    healthy(d, WEST)
    moved = time.monotonic() - t0
    assert moved < HC_INTERVAL_S + 2.0, moved
    got = served_by(topo, VIP, 20)
    assert set(got) <= {"ep2", "ep3"}, got
    assert tiers(d)["remote"]["load_percent"] == 100
    picks = d.metric("shunt_locality_picks_total", service=SERVICE, tier="remote")
    assert picks >= 20
    assert d.metric("shunt_locality_load_percent", service=SERVICE, tier="remote") == 100
    lines = [l for l in d.access_lines("http") if l["direction"] == "outbound"]
    assert lines and lines[-1]["locality"] == "remote", lines[-1:]

    # back: east alone again
    restart(topo, procs, EAST[0])
    restart(topo, procs, EAST[1])
    healthy(d, EAST + WEST)
    assert set(served_by(topo, VIP, 20)) <= {"ep0", "ep1"}
    assert d.metric("shunt_locality_load_percent", service=SERVICE, tier="local") == 100
    lines = [l for l in d.access_lines("http") if l["direction"] == "outbound"]
    assert lines[-1]["locality"] == "local", lines[-1]
