# SPDX-License-Identifier: Apache-2.0
"""Several registries at once (service_discovery.clusters): two stand-in
Kubernetes API servers (k8s_standin.py, each with its own CA and token),
clusters "east" (priority 10) and "west" (priority 20). A service present
in both is one service with the endpoints of both, each carrying its
cluster (the same address in both clusters is two endpoints); traffic
through either cluster's virtual IP reaches all of them; a conflicting
definition is reported and the lower priority value wins; one API server
stopped: its endpoints stay, stale and serving, while the other cluster
keeps updating; back, it syncs again. /endpoints, name.namespace.cluster
and `shuntctl endpoints` show the cluster."""

import os
import signal

import pytest

import shuntlib as sl
from shuntlib import Topology as T
from test_dns import refused, served_by as served, wait_routed
from test_k8s import Env, service_obj, slice_obj

PORT = 8081
EAST_EPS = [T.REMOTE4, T.REMOTE4B]
WEST_EPS = ["10.77.0.4", "10.77.0.5"]
EAST_VIP, WEST_VIP = "10.96.0.20", "10.96.1.20"
WATCH_TIMEOUT_S = 2


def start_cluster(topo, api_port, eps, vip, zone):
    e = Env(topo, api=("127.0.0.1", api_port), ctl=("127.0.0.1", api_port + 1))
    e.make_certs()
    e.token = "token-%d" % api_port
    e.token_file = os.path.join(e.dir, "token")
    with open(e.token_file, "w") as f:
        f.write(e.token + "\n")
    os.chmod(e.token_file, 0o644)
    e.kubeconfig = e.write_kubeconfig(e.token_file)
    e.start_standin()
    e.apply("services", "ADDED", service_obj(vip=vip))
    e.apply("endpointslices", "ADDED", slice_obj(eps, zone=zone))
    return e


@pytest.fixture(scope="module")
def env():
    topo = T()
    procs, standins = [], []
    daemon = None
    try:
        topo.add_remote4(*WEST_EPS)
        topo.route_vips()
        for i, a in enumerate(EAST_EPS + WEST_EPS):
            procs.append(topo.remote.spawn_peer("http", "ep%d" % i, ["%s:%d" % (a, PORT)]))
        east = start_cluster(topo, 16443, EAST_EPS, EAST_VIP, "zone-a")
        standins.append(east)
        west = start_cluster(topo, 17443, WEST_EPS, WEST_VIP, "")
        standins.append(west)
        daemon = sl.Shuntd(
            topo.app, sl.shuntd_args(**{
                # its own upgrade socket: not the default path other daemons share
                "upgrade.socket": os.path.join(sl.tmpdir(), "upgrade.sock")}),
            config={"service_discovery": {"clusters": [
                {"name": "east", "region": "r1", "zone": "zone-a", "priority": 10,
                 "type": "kubernetes", "kubernetes": {"kubeconfig_path": east.kubeconfig}},
                {"name": "west", "region": "r2", "zone": "zone-w", "priority": 20,
                 "type": "kubernetes", "kubernetes": {"kubeconfig_path": west.kubeconfig}},
            ]}},
            env={"SHUNT_K8S_WATCH_TIMEOUT": str(WATCH_TIMEOUT_S)},
        )
        daemon.wait_ready()
        yield topo, daemon, east, west
    finally:
        try:
            sl.stop_checked([daemon] if daemon else [])
        finally:
            for e in standins:
                if e.standin:
                    e.standin.stop()
            for p in procs:
                p.stop()
            topo.delete()


def svc(d, name="web", q=None):
    js = d.json("/endpoints" + ("?service=" + q if q else ""))
    for s in js["services"]:
        if s["name"] == name:
            return s
    return None


def eps(d, q=None):
    s = svc(d, q=q)
    return sorted((e["address"], e["cluster"]) for e in s["endpoints"]) if s else []


def all_four():
    return sorted([(a, "east") for a in EAST_EPS] + [(a, "west") for a in WEST_EPS])


def fed_state(d):
    return d.json("/debug/cache")["backend"]["state"]


def test_one_service_across_clusters(env):
    topo, d, east, west = env
    wait_routed(d, lambda d: eps(d) == all_four(), "web's endpoints from both clusters")
    s = svc(d)
    assert sorted(s["addresses"]) == sorted([EAST_VIP, WEST_VIP]), s["addresses"]
    by = {(e["address"], e["cluster"]): e for e in s["endpoints"]}
    # the slice's zone wins; without one, the cluster's zone and region
    assert by[(EAST_EPS[0], "east")]["zone"] == "zone-a"
    assert by[(WEST_EPS[0], "west")]["zone"] == "zone-w"
    assert by[(WEST_EPS[0], "west")]["region"] == "r2"
    assert by[(WEST_EPS[0], "west")]["source"] == "kubernetes@west"
    for vip in (EAST_VIP, WEST_VIP):
        assert sorted(served(topo, vip, 24)) == ["ep0", "ep1", "ep2", "ep3"]
    # name.namespace.cluster: one cluster's endpoints
    assert eps(d, "web.default.west") == [(a, "west") for a in WEST_EPS]
    out = sl.shuntctl(topo.app, "endpoints", "web")
    head = out.stdout.splitlines()[0].split()
    assert head[-1] == "CLUSTER", out.stdout
    rows = [l.split() for l in out.stdout.splitlines()[1:] if l.strip()]
    assert sorted(r[-1] for r in rows) == ["east", "east", "west", "west"], out.stdout
    st = fed_state(d)
    assert [c["name"] for c in st["clusters"]] == ["east", "west"]
    assert all(c["synced"] and not c["stale"] for c in st["clusters"]), st


def test_same_address_in_both_clusters(env):
    """Endpoint keys carry the cluster: an address both clusters list is two
    endpoints, in the registry and in the load-balancer table, each leaving
    with its own cluster, and traffic keeps flowing."""
    topo, d, east, west = env
    west.apply("endpointslices", "MODIFIED", slice_obj(WEST_EPS + [EAST_EPS[0]]))
    wait_routed(d, lambda d: eps(d) == sorted(all_four() + [(EAST_EPS[0], "west")]),
                "10.77.0.2 in both clusters")
    # The load-balancer table keys endpoints by cluster too: the service's
    # port keeps its table (a duplicate address refused it before) and every
    # endpoint is still served.
    for vip in (EAST_VIP, WEST_VIP):
        assert sorted(served(topo, vip, 24)) == ["ep0", "ep1", "ep2", "ep3"]
    assert "listed twice" not in d.log_text()
    east.apply("endpointslices", "MODIFIED", slice_obj(EAST_EPS[1:], zone="zone-a"))
    wait_routed(d, lambda d: eps(d) == sorted([(EAST_EPS[1], "east"), (EAST_EPS[0], "west")] +
                                            [(a, "west") for a in WEST_EPS]),
                "10.77.0.2 gone from east, still in west")
    west.apply("endpointslices", "MODIFIED", slice_obj(WEST_EPS))
    east.apply("endpointslices", "MODIFIED", slice_obj(EAST_EPS, zone="zone-a"))
    wait_routed(d, lambda d: eps(d) == all_four(), "back to four")


def test_conflict_resolved_by_priority(env):
    topo, d, east, west = env
    api_e = service_obj("api", vip="10.96.0.30")
    api_w = service_obj("api", vip="10.96.1.30")
    api_w["spec"]["ports"][0]["port"] = 81
    west.apply("services", "ADDED", api_w)
    east.apply("services", "ADDED", api_e)
    try:
        sl.wait_until(lambda: fed_state(d)["conflicts"] >= 1, 15, what="the conflict reported")
        s = svc(d, "api")
        assert [p["port"] for p in s["ports"]] == [80], s["ports"]  # east's: priority 10 < 20
        msg = fed_state(d)["last_conflict"]
        assert "api" in msg and "west" in msg and "east" in msg, msg
        assert [l for l in d.log_lines() if "declares other ports" in l.get("msg", "")]
        assert {c["name"]: c["conflicts"] for c in fed_state(d)["clusters"]}["west"] == 1
    finally:
        west.apply("services", "DELETED", api_w)
        east.apply("services", "DELETED", api_e)
    sl.wait_until(lambda: svc(d, "api") is None and fed_state(d)["conflicts"] == 0, 15,
                  what="api gone")


def test_one_api_server_down(env):
    """west's API server killed: its endpoints stay, stale and serving, while
    east keeps updating; restarted, west syncs again."""
    topo, d, east, west = env
    wait_routed(d, lambda d: eps(d) == all_four(), "four endpoints")
    west.standin.stop(signal.SIGKILL)
    west.standin = None
    try:
        sl.wait_until(
            lambda: {c["name"]: c["stale"] for c in fed_state(d)["clusters"]} ==
            {"east": False, "west": True}, 20, what="west stale, east not")
        by = {(e["address"], e["cluster"]): e for e in svc(d)["endpoints"]}
        assert all(by[(a, "west")]["stale"] for a in WEST_EPS), by
        assert not any(by[(a, "east")]["stale"] for a in EAST_EPS), by
        # east keeps updating meanwhile
        east.apply("endpointslices", "MODIFIED", slice_obj(EAST_EPS[:1], zone="zone-a"))
        wait_routed(d, lambda d: eps(d) == sorted([(EAST_EPS[0], "east")] +
                                                [(a, "west") for a in WEST_EPS]),
                    "east scaled to 1 while west is down")
        assert sorted(served(topo, EAST_VIP, 18)) == ["ep0", "ep2", "ep3"]
        up = sl.parse_metrics(d.metrics_text())
        assert up[("shunt_discovery_source_up",
                   (("source", "kubernetes@west"), ("type", "kubernetes")))] == 0
        assert up[("shunt_discovery_source_up",
                   (("source", "kubernetes@east"), ("type", "kubernetes")))] == 1
    finally:
        west.start_standin()
    sl.wait_until(lambda: not any(c["stale"] for c in fed_state(d)["clusters"]), 30,
                  what="west synced again")
    east.apply("endpointslices", "MODIFIED", slice_obj(EAST_EPS, zone="zone-a"))
    wait_routed(d, lambda d: eps(d) == all_four() and not any(
        e["stale"] for e in svc(d)["endpoints"]), "four fresh endpoints")


BAD = [
    ("type-and-clusters", {"type": "kubernetes", "clusters": [
        {"name": "a", "type": "kubernetes"}]}, "each cluster has its own type"),
    ("bad-name", {"clusters": [{"name": "A_1", "type": "file"}]}, "not a lower-case DNS label"),
    ("bad-type", {"clusters": [{"name": "a", "type": "dns"}]}, "not file, kubernetes or consul"),
    ("dup-name", {"clusters": [{"name": "a", "type": "file"}, {"name": "a", "type": "file"}]},
     "is used by clusters[0]"),
    ("unknown-key", {"clusters": [{"name": "a", "type": "file", "weight": 3}]}, "weight"),
    ("other-settings", {"clusters": [{"name": "a", "type": "file", "consul": {}}]},
     "settings of another type"),
    ("bad-priority", {"clusters": [{"name": "a", "type": "file", "priority": -1}]}, "0..1000"),
]


@pytest.mark.parametrize("sd,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_clusters_config(sd, words):
    refused(sd, words)
