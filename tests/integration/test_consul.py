# SPDX-License-Identifier: Apache-2.0
"""The consul discovery backend against a stand-in Consul agent
(consul_standin.py): services learnt from the catalog, endpoints from
blocking queries on /v1/health/service/<name> with the ACL token and the
datacenter, traffic through the service's virtual IP (TaggedAddresses
consul-virtual), weights (Weights.Passing, Weights.Warning while a check
warns, 0 -> out), critical -> out, index resets, X-Consul-Index 0, index
churn with the same data (rate-limited, nothing applied), the full wait
honoured, agent failures (down, bad JSON, dropped connection, rejected
token) -> stale with traffic still flowing, and resync when the agent is back; mesh
identities per instance (tag shunt-meshed: Consul's SPIFFE form, Meta
shunt-identity, Connect native) and Meta shunt-mtls-mode strict refusing an
instance that is not meshed."""

import collections
import json
import os
import sys

import pytest

import shuntlib as sl
from shuntlib import Topology as T

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "consul_standin.py")
VIP = "240.0.0.10"
EP_ADDRS = sl.EP_ADDRS
PORT = 8081
API, CTL = 8500, 8600
TOKEN = "s3cret-token"
WAIT_S = 2  # SHUNT_CONSUL_WAIT: blocking queries of 2 s, which the agent honours in full
WEIGHTS = {"Passing": 2, "Warning": 1}


def instance(i, addr, status="passing", weights=None):
    return {
        "id": "web-%d" % i,
        "node": "node-%d" % i,
        "node_address": addr,
        "address": "" if i == 0 else addr,  # instance 0: Node.Address fallback
        "port": PORT,
        "tags": ["v1", "protocol=http"],
        "tagged_addresses": {"consul-virtual": {"Address": VIP, "Port": 80}},
        "status": status,
        "weights": weights or WEIGHTS,
    }


class Agent:
    def __init__(self, topo):
        self.topo = topo
        self.proc = topo.app.spawn_ready(
            [
                sys.executable, STANDIN,
                "--listen", "127.0.0.1:%d" % API,
                "--control", "127.0.0.1:%d" % CTL,
                "--token", TOKEN,
                "--datacenter", "dc1",
                "--lifetime", "300",
            ],
            "consul-standin",
        )

    def ctl(self, **req):
        status, _, body = self.topo.app.http(
            "127.0.0.1", CTL, "POST", "/control", body=json.dumps(req).encode(),
            headers={"Content-Type": "application/json"},
        )
        out = json.loads(body)
        assert status == 200 and out["ok"], out
        return out

    def set_web(self, statuses=None, addrs=EP_ADDRS, weights=None):
        statuses, weights = statuses or {}, weights or {}
        self.ctl(op="set_service", name="web",
                 instances=[instance(i, a, statuses.get(i, "passing"), weights.get(i))
                            for i, a in enumerate(addrs)])

    def web_requests(self):
        return self.ctl(op="stats")["by_path"].get("/v1/health/service/web", 0)


def _ready(daemon):
    try:
        return daemon.get("/ready")[0] == 200
    except OSError:
        return False


@pytest.fixture(scope="module")
def env():
    topo = T()
    procs = []
    agent = None
    daemon = None
    try:
        topo.add_remote4()
        topo.app.ip("route", "add", "240.0.0.0/8", "dev", "e-remote")
        for i, a in enumerate(EP_ADDRS):
            procs.append(topo.remote.spawn_peer("http", "ep%d" % i, ["%s:%d" % (a, PORT)]))
        agent = Agent(topo)
        agent.set_web()
        daemon = sl.Shuntd(
            topo.app,
            sl.shuntd_args(**{
                "service-discovery.type": "consul",
                "service-discovery.consul.address": "127.0.0.1:%d" % API,
                "service-discovery.consul.token": TOKEN,
                "service-discovery.consul.datacenter": "dc1",
                "load-balancing.algorithm": "weighted",
            }),
            env={"SHUNT_CONSUL_WAIT": str(WAIT_S)},
        )
        # (wait_ready notices an early exit only at its timeout)
        sl.wait_until(lambda: not daemon.alive() or _ready(daemon), 20, what="shuntd up or gone")
        assert daemon.alive(), "shuntd exited at start:\n" + daemon.log_text()[-3000:]
        daemon.wait_ready()
        yield topo, daemon, agent
    finally:
        try:
            sl.stop_checked([daemon] if daemon else [])
        finally:
            if agent:
                agent.proc.stop()
            for p in procs:
                p.stop()
            topo.delete()


def web(d):
    for svc in d.json("/endpoints")["services"]:
        if svc["name"] == "web":
            return svc
    return None


def eps_by_addr(d):
    svc = web(d)
    return {e["address"]: e for e in svc["endpoints"]} if svc else {}


def consul_state(d):
    return d.json("/debug/cache")["backend"]["state"]


def wait_routed(d, pred, what):
    """Waits until pred(/endpoints) holds and the proxy routes by that
    registry version (or a later one)."""
    def ok():
        js = d.json("/endpoints")
        return js["version"] if pred(js) else None

    v = sl.wait_until(ok, 15, what=what)
    prefix = "routing by registry version "
    sl.wait_until(
        lambda: any(
            l.get("msg", "").startswith(prefix) and int(l["msg"][len(prefix):]) >= v
            for l in d.log_lines()
        ),
        10,
        what="the proxy routing by version %d" % v,
    )


def svc_eps(js):
    for svc in js["services"]:
        if svc["name"] == "web":
            return {e["address"]: e for e in svc["endpoints"]}
    return {}


def served_by(topo, n):
    counts = collections.Counter()
    for _ in range(n):
        status, _, body = topo.app.http(VIP, 80, "GET", "/")
        assert status == 200
        counts[json.loads(body)["server"]] += 1
    return counts


def all_passing(js):
    eps = svc_eps(js)
    return len(eps) == 3 and all(e["health"] == "healthy" and e["weight"] == 200 for e in eps.values())


def test_traffic_through_virtual_ip(env):
    topo, d, agent = env
    wait_routed(d, all_passing, "3 healthy endpoints of web from consul")
    svc = web(d)
    assert VIP in svc["addresses"]
    assert svc["ports"][0]["port"] == 80 and svc["ports"][0]["target_port"] == PORT
    assert svc["ports"][0]["protocol"] in ("http1", "HTTP", "http")
    out = topo.app.curl(["http://%s/" % VIP])
    assert out.returncode == 0 and json.loads(out.stdout)["server"] in ("ep0", "ep1", "ep2"), out
    counts = served_by(topo, 30)
    assert sorted(counts) == ["ep0", "ep1", "ep2"], counts
    # wire behaviour: token on every request, the datacenter, blocking queries
    st = sl.wait_until(
        lambda: (lambda s: s if s["blocked"] > 0 and any(
            q["path"] == "/v1/health/service/web" and "index" in q["query"] for q in s["last"]
        ) else None)(agent.ctl(op="stats")),
        10,
        what="a blocking query on web",
    )
    assert st["last"] and all(q["token"] == TOKEN for q in st["last"])
    assert all(q["query"].get("dc") == "dc1" for q in st["last"])
    # a wait that runs out returns the same index: more requests, no change
    before = {s["name"]: s for s in consul_state(d)["services"]}["web"]
    sl.wait_until(
        lambda: {s["name"]: s for s in consul_state(d)["services"]}["web"]["requests"]
        >= before["requests"] + 2,
        10,
        what="two more blocking queries on web",
    )
    after = {s["name"]: s for s in consul_state(d)["services"]}["web"]
    assert after["changes"] == before["changes"] and after["index"] == before["index"]
    assert after["errors"] == before["errors"]
    # the agent held them for the full wait asked (not cut short), and
    # shuntd's request timeout outlasted it with Consul's jitter
    waits = [w for w in agent.ctl(op="stats")["waits"] if w["path"] == "/v1/health/service/web"]
    assert waits and all(w["wait"] == WAIT_S for w in waits), waits
    assert any(w["blocked_s"] >= WAIT_S for w in waits), waits


def test_warning_weight_critical_takes_out(env):
    """Weights.Passing while passing, Weights.Warning while a check warns
    (as Consul's own proxies weigh them), 0 or critical: out."""
    topo, d, agent = env
    agent.set_web({1: "warning"})  # Weights 2/1: 200:100:200
    wait_routed(
        d,
        lambda js: svc_eps(js).get(EP_ADDRS[1], {}).get("weight") == 100
        and svc_eps(js)[EP_ADDRS[1]]["health"] == "healthy",
        "ep1 at its warning weight",
    )
    counts = served_by(topo, 250)
    # smooth weighted round robin, weights 200:100:200, two workers
    assert 40 <= counts["ep1"] <= 60, counts
    assert 90 <= counts["ep0"] <= 110 and 90 <= counts["ep2"] <= 110, counts
    agent.set_web({1: "warning"}, weights={1: {"Passing": 2, "Warning": 4}})
    wait_routed(d, lambda js: svc_eps(js).get(EP_ADDRS[1], {}).get("weight") == 400,
                "ep1 at a warning weight above its passing one")
    counts = served_by(topo, 240)  # 200:400:200
    assert 110 <= counts["ep1"] <= 130, counts
    agent.set_web({1: "warning"}, weights={1: {"Passing": 2, "Warning": 0}})
    wait_routed(d, lambda js: svc_eps(js).get(EP_ADDRS[1], {}).get("health") == "unhealthy",
                "ep1 out at warning weight 0")
    counts = served_by(topo, 40)
    assert counts["ep1"] == 0 and sum(counts.values()) == 40, counts
    agent.set_web({1: "critical"})
    wait_routed(d, lambda js: svc_eps(js).get(EP_ADDRS[1], {}).get("health") == "unhealthy", "ep1 out")
    counts = served_by(topo, 40)
    assert counts["ep1"] == 0 and sum(counts.values()) == 40, counts
    agent.set_web()
    wait_routed(d, all_passing, "ep1 back")
    assert served_by(topo, 30)["ep1"] > 0


def test_index_reset(env):
    topo, d, agent = env
    wait_routed(d, all_passing, "all passing")
    resets = sum(s["index_resets"] for s in consul_state(d)["services"])
    agent.ctl(op="reset_index")
    sl.wait_until(
        lambda: sum(s["index_resets"] for s in consul_state(d)["services"]) > resets,
        10,
        what="an index reset seen by the web watch",
    )
    # after the reset, changes are followed again
    agent.set_web(addrs=EP_ADDRS[:2])
    wait_routed(d, lambda js: len(svc_eps(js)) == 2, "web scaled to 2 after the reset")
    assert "ep2" not in served_by(topo, 20)
    agent.set_web()
    wait_routed(d, all_passing, "web back to 3")


def test_agent_down_stale_then_resync(env):
    topo, d, agent = env
    wait_routed(d, all_passing, "all passing")
    agent.ctl(op="down")
    try:
        sl.wait_until(lambda: web(d)["stale"], 15, what="web stale while the agent is down")
        assert consul_state(d)["stale"]
        assert "refused" in (consul_state(d)["last_error"] or "") or consul_state(d)["last_error"]
        # last known endpoints keep serving, with their last health
        counts = served_by(topo, 30)
        assert sorted(counts) == ["ep0", "ep1", "ep2"], counts
        assert all(e["health"] == "healthy" for e in svc_eps(d.json("/endpoints")).values())
    finally:
        agent.ctl(op="up")
    # the agent is back with a change made while it was away
    agent.set_web(addrs=EP_ADDRS[:2])
    wait_routed(d, lambda js: len(svc_eps(js)) == 2 and not web(d)["stale"], "resync after the outage")
    assert not consul_state(d)["stale"]
    agent.set_web()
    wait_routed(d, all_passing, "web back to 3")


@pytest.mark.parametrize("mode", ["bad_json", "drop", "http500"])
def test_bad_answers_are_retried(env, mode):
    topo, d, agent = env
    wait_routed(d, all_passing, "all passing")
    errors = sum(s["errors"] for s in consul_state(d)["services"]) + consul_state(d)["catalog"]["errors"]
    agent.ctl(op="fail", mode=mode, count=2)
    agent.set_web({2: "warning"})  # wakes the blocked query into the failure
    sl.wait_until(
        lambda: sum(s["errors"] for s in consul_state(d)["services"])
        + consul_state(d)["catalog"]["errors"] > errors,
        10,
        what="the %s answer counted as an error" % mode,
    )
    # traffic keeps flowing meanwhile, and the change arrives after the retry
    assert sum(served_by(topo, 10).values()) == 10
    wait_routed(d, lambda js: svc_eps(js).get(EP_ADDRS[2], {}).get("weight") == 100, "change after retry")
    sl.wait_until(lambda: not consul_state(d)["stale"], 10, what="not stale after the retry")
    agent.set_web()
    wait_routed(d, all_passing, "all passing again")


def test_rejected_token(env):
    topo, d, agent = env
    wait_routed(d, all_passing, "all passing")
    agent.ctl(op="set_token", token="another-token")
    try:
        # queries already blocked were admitted with the old token; the next
        # ones are refused
        sl.wait_until(lambda: consul_state(d)["stale"], 10, what="stale on 403")
        assert "403" in consul_state(d)["last_error"]
        assert [l for l in d.log_lines() if "ACL token rejected" in l.get("msg", "")]
        def web_watch():
            return {s["name"]: s for s in consul_state(d)["services"]}["web"]

        sl.wait_until(lambda: web_watch()["failures"] > 0, 10, what="the web watch refused")
        agent.set_web({0: "critical"})  # not visible: every query is refused
        errors = web_watch()["errors"]
        sl.wait_until(lambda: web_watch()["errors"] > errors, 10, what="another 403 on web")
        assert svc_eps(d.json("/endpoints"))[EP_ADDRS[0]]["health"] == "healthy"
        assert sum(served_by(topo, 10).values()) == 10
    finally:
        agent.ctl(op="set_token", token=TOKEN)
    wait_routed(d, lambda js: svc_eps(js).get(EP_ADDRS[0], {}).get("health") == "unhealthy", "seen after the token is back")
    agent.set_web()
    wait_routed(d, all_passing, "all passing again")


def web_watch(d):
    return {s["name"]: s for s in consul_state(d)["services"]}["web"]


def test_index_churn_same_data(env):
    """The index moves every 50 ms with the same data (writes elsewhere,
    idempotent writes: Consul documents that a wake-up is no proof of a
    change). shuntd applies nothing for them and, its answers coming back at
    once, slows down to the rate limit instead of querying in a busy loop;
    a real change made meanwhile still arrives."""
    topo, d, agent = env
    wait_routed(d, all_passing, "all passing")
    before, reqs = web_watch(d), agent.web_requests()
    spurious = agent.ctl(op="stats")["spurious_wakeups"]
    agent.ctl(op="spurious", name="web", seconds=6, interval=0.05)
    sl.wait_until(lambda: agent.ctl(op="stats")["spurious_wakeups"] >= spurious + 40, 15,
                  what="the index churning")
    agent.set_web({0: "warning"})
    wait_routed(d, lambda js: svc_eps(js).get(EP_ADDRS[0], {}).get("weight") == 100,
                "a change amid the churn")
    sl.wait_until(lambda: agent.ctl(op="stats")["spurious_wakeups"] >= spurious + 100, 15,
                  what="the churn nearly over")
    churned = agent.web_requests() - reqs
    after = web_watch(d)
    # about 6 s of churn: a burst of 2, then one query per 5 s (plus the
    # change's); a busy loop would have made dozens
    assert churned <= 8, (churned, after)
    assert after["rate_limited"] > before["rate_limited"], after
    # only the real change was applied, none of the wake-ups
    assert after["changes"] == before["changes"] + 1, (before, after)
    assert after["errors"] == before["errors"]
    agent.set_web()
    wait_routed(d, all_passing, "all passing again")


def test_index_zero(env):
    """An agent answering X-Consul-Index: 0 (a bug Consul's documentation
    says still happens): shuntd blocks on index 1, so its queries wait
    instead of looping, and sees changes by content since the index does
    not move."""
    topo, d, agent = env
    wait_routed(d, all_passing, "all passing")
    agent.ctl(op="zero_index", name="web", on=True)
    try:
        sl.wait_until(lambda: web_watch(d)["zero_index"] > 0, 15, what="an index of 0 seen")
        reqs = agent.web_requests()
        agent.set_web({2: "warning"})
        wait_routed(d, lambda js: svc_eps(js).get(EP_ADDRS[2], {}).get("weight") == 100,
                    "a change under index 0")
        sl.wait_until(lambda: agent.web_requests() >= reqs + 3, 15, what="three more queries")
        st = agent.ctl(op="stats")
        blocked = [w for w in st["waits"] if w["path"] == "/v1/health/service/web"]
        assert blocked[-1]["index"] == 1 and blocked[-1]["blocked_s"] >= WAIT_S, blocked[-3:]
        assert [l for l in d.log_lines() if "X-Consul-Index 0" in l.get("msg", "")]
    finally:
        agent.ctl(op="zero_index", name="web", on=False)
    agent.set_web()
    wait_routed(d, all_passing, "all passing again")


def test_acl_filtered(env):
    """A token lacking node:read on a node, then service:read on web: Consul
    answers 200 with those left out and X-Consul-Results-Filtered-By-ACLs
    (not 403). shuntd routes what the token may see and says why the rest is
    missing: one warning per episode, counted."""
    topo, d, agent = env
    wait_routed(d, all_passing, "all passing")

    def denied():
        return d.metric("shunt_discovery_access_denied_total", source="consul", type="consul")

    def filtered_logs(what):
        return [l for l in d.log_lines()
                if "filtered out by ACLs" in l.get("msg", "") and what in l["msg"]]

    metric = denied()
    try:
        agent.ctl(op="set_acl", deny_nodes=["node-2"])
        wait_routed(d, lambda js: sorted(svc_eps(js)) == sorted(EP_ADDRS[:2]),
                    "ep2 left out by ACLs")
        assert web_watch(d)["acl_filtered"] > 0 and denied() > metric
        sl.wait_until(lambda: web_watch(d)["acl_filtered"] >= 3, 15, what="filtered answers")
        logs = filtered_logs("service web")
        assert len(logs) == 1 and "only the others" in logs[0]["msg"], logs  # once, not per answer
        agent.ctl(op="set_acl", deny_nodes=["node-0", "node-1", "node-2"])
        sl.wait_until(lambda: filtered_logs("none is left"), 15, what="every instance filtered")
        agent.ctl(op="set_acl", deny=["web"])
        sl.wait_until(lambda: web(d) is None, 15, what="web left out of the catalog")
        assert filtered_logs("catalog")
        assert not consul_state(d)["stale"]  # a valid answer, not a failure
    finally:
        agent.ctl(op="set_acl")
    wait_routed(d, all_passing, "web back once the token may read it")


def test_catalog_learns_and_forgets_services(env):
    topo, d, agent = env
    agent.ctl(op="set_service", name="api", instances=[
        {"id": "api-0", "address": T.REMOTE4, "port": PORT,
         "tagged_addresses": {"virtual": {"Address": "10.96.7.7", "Port": 8080}}}])
    sl.wait_until(lambda: any(s["name"] == "api" for s in d.json("/endpoints")["services"]), 10,
                  what="api learnt from the catalog")
    api = [s for s in d.json("/endpoints")["services"] if s["name"] == "api"][0]
    assert api["addresses"] == ["10.96.7.7"] and api["ports"][0]["port"] == 8080
    agent.ctl(op="delete_service", name="api")
    sl.wait_until(lambda: not any(s["name"] == "api" for s in d.json("/endpoints")["services"]), 10,
                  what="api forgotten")


def test_slow_answers_are_waited_for(env):
    """Answers slower than usual (but within the request timeout) are not
    errors: the change they carry arrives and nothing goes stale."""
    topo, d, agent = env
    wait_routed(d, all_passing, "all passing")
    # earlier tests' failed watches may still be in backoff
    sl.wait_until(lambda: not consul_state(d)["stale"], 40, what="no watch failing")
    state = consul_state(d)
    errors = sum(s["errors"] for s in state["services"]) + state["catalog"]["errors"]
    agent.ctl(op="fail", mode="slow", seconds=1.5, count=3)
    agent.set_web({0: "warning"})
    wait_routed(d, lambda js: svc_eps(js).get(EP_ADDRS[0], {}).get("weight") == 100, "change via slow answers")
    state = consul_state(d)
    assert sum(s["errors"] for s in state["services"]) + state["catalog"]["errors"] == errors
    assert not state["stale"]
    agent.ctl(op="fail", mode="none", count=0)
    agent.set_web()
    wait_routed(d, all_passing, "all passing again")


API_VIP = "240.0.0.11"


def test_mesh_identities_and_strict(env):
    topo, d, agent = env

    def inst(i, **kw):
        out = {"id": "api-%d" % i, "node": "node-%d" % i, "node_address": EP_ADDRS[i],
               "address": EP_ADDRS[i], "port": PORT, "tags": ["protocol=http"],
               "tagged_addresses": {"consul-virtual": {"Address": API_VIP, "Port": 80}}}
        out.update(kw)
        return out

    agent.ctl(op="set_service", name="api", instances=[
        inst(0, tags=["protocol=http", "shunt-meshed"]),
        inst(1, meta={"shunt-identity": "spiffe://cluster.local/ns/shop/sa/api"}),
        inst(2, connect_native=True, namespace="team-a"),
    ])

    def api_eps():
        for svc in d.json("/endpoints")["services"]:
            if svc["name"] == "api":
                return {e["address"]: e for e in svc["endpoints"]}
        return {}

    eps = sl.wait_until(lambda: (lambda e: e if len(e) == 3 else None)(api_eps()), 10,
                        what="api's three instances")
    assert eps[EP_ADDRS[0]]["identity"] == "spiffe://cluster.local/ns/default/dc/dc1/svc/api"
    assert eps[EP_ADDRS[1]]["identity"] == "spiffe://cluster.local/ns/shop/sa/api"
    assert eps[EP_ADDRS[2]]["identity"] == "spiffe://cluster.local/ns/team-a/dc/dc1/svc/api"
    assert all(e["meshed"] and e["outbound"] == "mtls" for e in eps.values()), eps

    # One instance only, not meshed, and strict by its Meta: refused with
    # the reason (and plaintext in permissive, the daemon's mode).
    agent.ctl(op="set_service", name="api", instances=[inst(0, meta={"shunt-mtls-mode": "strict"})])
    wait_routed(d, lambda js: any(s["name"] == "api" and len(s["endpoints"]) == 1 and
                                  s["endpoints"][0]["outbound"] == "refused"
                                  for s in js["services"]), "api refused")
    e = api_eps()[EP_ADDRS[0]]
    assert not e["meshed"] and e["identity"] == "" and e["mtls"] == "strict"
    status, hdrs, _ = topo.app.http(API_VIP, 80, "GET", "/")
    assert status == 503 and "not meshed" in hdrs.get("X-Shunt-Reason", ""), (status, hdrs)
    agent.ctl(op="set_service", name="api", instances=[inst(0)])
    wait_routed(d, lambda js: any(s["name"] == "api" and
                                  s["endpoints"][0]["outbound"] == "plaintext"
                                  for s in js["services"]), "api plaintext")
    status, _, body = topo.app.http(API_VIP, 80, "GET", "/")
    assert status == 200 and json.loads(body)["server"] == "ep0"
    agent.ctl(op="delete_service", name="api")
