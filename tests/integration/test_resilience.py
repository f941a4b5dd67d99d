# SPDX-License-Identifier: Apache-2.0
"""Resilience with real backends: three HTTP servers in the remote pod behind
one service with two ports: 80 declared HTTP (the HTTP/1.1 engine picks an
endpoint per request) and 81 declared TCP (the relay picks one per
connection); the client opens a new connection per request on both. One backend is
killed under load: its circuit breaker opens (seen in /endpoints, metrics and
shuntctl), requests move to the other two, and connect retries hide every
failure from the client. The backend comes back: the breaker goes half-open,
its probes succeed and it closes. Also: the operator's forced open, and the
per-service connection limit.

Short thresholds and times (configured below) keep each test to seconds."""

import collections
import concurrent.futures
import json
import os
import signal
import subprocess
import threading
import time

import pytest

import shuntlib as sl
from shuntlib import Topology as T

VIP = "10.96.0.20"
EP_ADDRS = sl.EP_ADDRS  # the third one added to the remote pod below
PORT = 8081
SERVICE = "default/web"

BREAKER_FLAGS = {
    "circuit-breaker.consecutive-failures": "3",
    "circuit-breaker.open-timeout": "1500ms",
    "circuit-breaker.jitter-percent": "10",
    "circuit-breaker.half-open-probes": "3",
    "circuit-breaker.success-threshold": "3",
    "outlier-detection.consecutive-failures": "5",
    "outlier-detection.base-ejection-time": "500ms",
    "outlier-detection.max-ejection-time": "1s",
    "retries.max-retries": "2",
    "retries.backoff-base": "5ms",
    "retries.backoff-max": "20ms",
}


def registry():
    return {
        "services": [
            {
                "name": "web",
                "namespace": "default",
                "addresses": [VIP],
                "ports": [
                    {"name": "http", "port": 80, "target_port": PORT, "protocol": "HTTP"},
                    {"name": "tcp", "port": 81, "target_port": PORT, "protocol": "TCP"},
                ],
                # Discovery's own passive ejection off: this test is about the
                # proxy's breaker and outlier detection.
                "health_check": {"passive_failures": 0},
                "endpoints": [{"address": a, "port": PORT} for a in EP_ADDRS],
            }
        ]
    }


def start_backend(topo, i):
    return topo.remote.spawn_peer("http", "ep%d" % i, ["%s:%d" % (EP_ADDRS[i], PORT)])


@pytest.fixture(scope="module")
def env():
    topo = T()
    procs = []
    daemon = None
    try:
        topo.add_remote4()
        topo.route_vips()
        for i in range(len(EP_ADDRS)):
            procs.append(start_backend(topo, i))
        path = sl.registry_file(registry())
        daemon = sl.Shuntd(
            topo.app, sl.shuntd_args(**{"service-discovery.file.path": path}, **BREAKER_FLAGS)
        ).wait_ready()
        yield topo, daemon, procs
    finally:
        sl.teardown(topo, [daemon], procs)


def ep_resilience(d, addr, port=80):
    """The proxy's view of one endpoint of the service (for one service
    port) in /endpoints."""
    eps = d.json("/endpoints?service=" + SERVICE)
    for svc in eps["services"]:
        for ep in svc["endpoints"]:
            if ep["address"] == addr:
                return [r for r in ep["resilience"] if r["port"] == port][0]
    raise AssertionError("endpoint %s not in /endpoints" % addr)


def served_by(topo, n, port=80):
    counts = collections.Counter()
    for _ in range(n):
        status, _, body = topo.app.http(VIP, port, "GET", "/", timeout=5)
        assert status == 200
        counts[json.loads(body)["server"]] += 1
    return counts


class Load:
    """Requests on new connections, one after another, from a thread; every
    request's start, end and failure (if any) is kept."""

    def __init__(self, topo, port):
        self.topo = topo
        self.port = port
        self.stop = threading.Event()
        self.ok = collections.Counter()
        self.failed = []  # (start, end, error)
        self.log = []  # (end, server)
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        deadline = time.monotonic() + 60  # bounded even if stop is never set
        while not self.stop.is_set() and time.monotonic() < deadline:
            start = time.monotonic()
            try:
                status, _, body = self.topo.app.http(VIP, self.port, "GET", "/", timeout=5)
                if status != 200:
                    self.failed.append((start, time.monotonic(), "status %d" % status))
                    continue
                server = json.loads(body)["server"]
                self.ok[server] += 1
                self.log.append((time.monotonic(), server))
            except (OSError, ValueError) as e:
                self.failed.append((start, time.monotonic(), repr(e)))
            time.sleep(0.005)

    def errors_except_during(self, t0, t1):
        """Failures of requests not in flight between t0 and t1 (a request
        on a backend's connection when it dies loses its reply: no proxy can
        retry bytes already sent on a plain TCP relay)."""
        return [f for f in self.failed if not (f[0] <= t1 and f[1] >= t0)]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(15)


HALF_OPEN_PROBES = int(BREAKER_FLAGS["circuit-breaker.half-open-probes"])
SYN_TAG = "shunt-test-syns"


def count_syns(pod, addr, port, op="-I"):
    """An iptables rule in pod (no target: it only counts) for the SYNs of
    new connections to addr:port: what the proxy really attempts, whatever it
    says in its metrics. op -D removes it."""
    pod.run(["iptables", "-w", op, "INPUT", "-p", "tcp", "--syn", "-d", addr, "--dport",
             str(port), "-m", "comment", "--comment", SYN_TAG])


def syns(pod):
    out = pod.run(["iptables", "-w", "-nvxL", "INPUT"]).stdout
    return [int(l.split()[0]) for l in out.splitlines() if SYN_TAG in l][0]


def assert_open_breaker_holds_back(d, pod, addr, vport):
    """While the breaker is open no connection attempt reaches the endpoint
    (flat until open_until); after it, each half-open period lets at most
    half_open_probes through. Retries would hide either failure from the
    client, so the SYNs on the wire are counted."""
    got = {}

    def fresh_open():
        got["r"] = ep_resilience(d, addr, vport)
        return got["r"]["breaker"] == "open" and got["r"]["half_open_in_ms"] >= 500

    sl.wait_until(fresh_open, 10, what="an open period with 500 ms left")
    n0, opens0 = syns(pod), got["r"]["breaker_opens"]
    half_open_at = time.monotonic() + got["r"]["half_open_in_ms"] / 1000.0
    while time.monotonic() < half_open_at - 0.1:
        assert syns(pod) == n0, "a connection attempt to %s while its breaker is open" % addr
        time.sleep(0.05)  # sampling the counter; nothing to wait for
    sl.wait_until(lambda: syns(pod) > n0, 5, what="half-open probes after open_until")
    # Two more open periods at most (1.5 s each): every period ends with at
    # most half_open_probes attempts before the breaker opens again.
    t_end = time.monotonic() + 2.0
    sl.wait_until(lambda: time.monotonic() >= t_end, 3, what="2 s of half-open cycles")
    n1, opens1 = syns(pod), ep_resilience(d, addr, vport)["breaker_opens"]
    periods = opens1 - opens0 + 1
    assert 0 < n1 - n0 <= HALF_OPEN_PROBES * periods, (n0, n1, opens0, opens1)


def promtool_check(text):
    r = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    # promtool exits 0 when clean, 3 for lint warnings only; anything else is an error.
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.parametrize("vport", [80, 81], ids=["http-per-request", "tcp-per-connection"])
def test_kill_one_backend_under_load(env, vport):
    topo, d, procs = env
    dead = EP_ADDRS[2]
    svc = "%s:%d" % (SERVICE, vport)
    label = {"service": svc, "endpoint": "%s:%d" % (dead, PORT)}
    assert set(served_by(topo, 9, vport)) == {"ep0", "ep1", "ep2"}
    assert ep_resilience(d, dead, vport)["breaker"] == "closed"
    retries0 = d.metric("shunt_retries_total", default=0, service=svc)
    opened0 = d.metric("shunt_circuit_breaker_opened_total", default=0, **label)

    count_syns(topo.remote, dead, PORT)
    try:
        kill_under_load(topo, d, procs, vport, dead, svc, label, retries0, opened0)
    finally:
        count_syns(topo.remote, dead, PORT, "-D")


def kill_under_load(topo, d, procs, vport, dead, svc, label, retries0, opened0):
    with Load(topo, vport) as load:
        sl.wait_until(lambda: load.ok["ep2"] > 0, 10, what="load reaching ep2")
        killed_at = time.monotonic()
        procs[2].stop(signal.SIGKILL)
        dead_at = time.monotonic()

        # The breaker opens: /endpoints, the metric, the log, shuntctl.
        sl.wait_until(
            lambda: d.metric("shunt_circuit_breaker_opened_total", default=0, **label) > opened0,
            10,
            what="ep2's breaker to open",
        )
        sl.wait_until(
            lambda: ep_resilience(d, dead, vport)["breaker"] in ("open", "half_open"),
            5,
            what="/endpoints to show the breaker open",
        )
        msgs = [l.get("msg", "") for l in d.log_lines() if l.get("component") == "route"]
        who = "circuit breaker of %s:%d (service %s)" % (dead, PORT, svc)
        assert any(who in m and "opened" in m for m in msgs), msgs
        out = sl.shuntctl(topo.app, "endpoints", SERVICE)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines()[0].split()[8:11] == ["BREAKER", "EJECTED_MS", "ACTIVE"]
        row = [l for l in out.stdout.splitlines() if "%s:%d" % (dead, PORT) in l]
        if vport == 80:  # shuntctl shows the first port's breaker
            assert row and row[0].split()[8] in ("open", "half_open"), out.stdout
        assert_open_breaker_holds_back(d, topo.remote, dead, vport)

        # Requests move to the others; connect retries hid the failures.
        served_before = sum(load.ok.values())
        sl.wait_until(
            lambda: sum(load.ok.values()) >= served_before + 60, 20, what="60 more requests"
        )
        assert d.metric("shunt_retries_total", service=svc) > retries0
        promtool_check(d.metrics_text())

        # Back: half-open probes succeed, the breaker closes, ep2 serves again.
        procs[2] = start_backend(topo, 2)
        sl.wait_until(
            lambda: ep_resilience(d, dead, vport)["breaker"] == "closed",
            15,
            what="ep2's breaker to close",
        )
        back = sum(1 for t, s in load.log if s == "ep2" and t > killed_at)
        sl.wait_until(
            lambda: sum(1 for t, s in load.log if s == "ep2" and t > killed_at) > back + 3,
            10,
            what="ep2 serving again",
        )
    assert load.errors_except_during(killed_at, dead_at) == [], load.failed[:5]
    assert len(load.failed) <= 1, load.failed
    msgs = [l.get("msg", "") for l in d.log_lines()]
    assert any(who in m and "half-open" in m for m in msgs)
    assert any(who in m and "closed: probes succeeded" in m for m in msgs)
    assert sum(load.ok.values()) >= 100, load.ok
    states = d.metric("shunt_circuit_breaker_endpoints", service=svc, state="closed")
    assert states == 3


def test_forced_open_by_the_operator(env):
    topo, d, _ = env
    ep = "%s:%d" % (EP_ADDRS[0], PORT)
    status, body = d.post(
        "/admin/circuit-breaker?service=%s&endpoint=%s&state=forced_open" % (SERVICE, ep), ""
    )
    assert status == 200, body
    try:
        assert ep_resilience(d, EP_ADDRS[0])["breaker"] == "forced_open"
        assert ep_resilience(d, EP_ADDRS[0])["available"] is False
        counts = served_by(topo, 20)
        assert "ep0" not in counts and sum(counts.values()) == 20, counts
        assert (
            d.metric(
                "shunt_circuit_breaker_state", service=SERVICE + ":80", endpoint=ep
            )
            == 3
        )
    finally:
        status, body = d.post(
            "/admin/circuit-breaker?service=%s&endpoint=%s&state=closed" % (SERVICE, ep), ""
        )
        assert status == 200, body
    assert ep_resilience(d, EP_ADDRS[0])["breaker"] == "closed"
    assert "ep0" in served_by(topo, 6)
    status, _ = d.post("/admin/circuit-breaker?service=%s&endpoint=nonsense&state=x" % SERVICE, "")
    assert status == 400
    status, _ = d.post(
        "/admin/circuit-breaker?service=%s&endpoint=10.1.2.3:9&state=closed" % SERVICE, ""
    )
    assert status == 404


def test_daemon_exits_clean(env):
    _, d, _ = env
    sl.stop_checked([d])
    d.restart()  # back for whichever test runs next


def test_connection_limit_per_service(fresh_topo, start_shuntd):
    topo = fresh_topo
    topo.route_vips()
    p = topo.remote.spawn_peer("http", "ep0", ["%s:%d" % (T.REMOTE4, PORT)])
    held = []
    try:
        path = os.path.join(sl.tmpdir(), "registry-limit.json")
        reg = registry()
        reg["services"][0]["endpoints"] = [{"address": T.REMOTE4, "port": PORT}]
        sl.write_json(path, reg)
        conf = {"service_discovery": {"file": {"path": path}}, "limits": {"max_connections": 2}}
        d = start_shuntd(topo.app, sl.shuntd_args(), config=conf)
        # Port 81 (TCP): every client connection is an upstream connection.
        lab = {"service": SERVICE + ":81", "limit": "connections"}
        for _ in range(2):
            held.append(topo.app.connect(VIP, 81))
        sl.wait_until(
            lambda: d.metric("shunt_limit_current", **lab) == 2, 5, what="two connections counted"
        )
        # The third is refused at once (reset), counted and logged.
        with pytest.raises((ConnectionError, OSError)):
            topo.app.http(VIP, 81, "GET", "/", timeout=2)
        sl.wait_until(
            lambda: d.metric("shunt_limit_overflows_total", **lab) == 1, 5, what="overflow counted"
        )
        assert any("limits.max_connections" in l.get("msg", "") for l in d.log_lines())
        res = d.json("/endpoints?service=" + SERVICE)["services"][0]["resilience"]
        svc = [r for r in res if r["port"] == 81][0]
        assert svc["connections"] == 2 and svc["max_connections"] == 2
        assert svc["max_retries"] == 2
        assert svc["timeouts_ms"] == {"connect": 30000, "request": 30000, "idle": 60000}
        assert svc["breakers"] == {"closed": 1, "open": 0, "half_open": 0, "forced_open": 0}
        assert svc["max_ejected"] == 0  # a lone endpoint is never ejected
        held.pop().close()
        sl.wait_until(
            lambda: d.metric("shunt_limit_current", **lab) == 1, 5, what="a connection released"
        )
        status, _, _ = topo.app.http(VIP, 81, "GET", "/", timeout=5)
        assert status == 200
        # A reload raises the limit for new connections (nothing in flight is cut).
        sl.wait_until(
            lambda: d.metric("shunt_limit_current", **lab) == 1, 5, what="the request's release"
        )
        held.append(topo.app.connect(VIP, 81))
        sl.wait_until(
            lambda: d.metric("shunt_limit_current", **lab) == 2, 5, what="two held again"
        )
        conf["limits"]["max_connections"] = 3
        d.write_config(conf)
        d.signal(signal.SIGHUP)
        sl.wait_until(
            lambda: [r for r in d.json("/endpoints?service=" + SERVICE)["services"][0]["resilience"]
                     if r["port"] == 81][0]["max_connections"] == 3,
            5,
            what="the reloaded limit",
        )
        status, _, _ = topo.app.http(VIP, 81, "GET", "/", timeout=5)
        assert status == 200
        assert d.metric("shunt_limit_overflows_total", **lab) == 1
        for s in held:
            s.close()
        sl.stop_checked([d])
    finally:
        for s in held:
            s.close()
        p.stop()


def test_locality_and_retry_leave_the_zone(fresh_topo, start_shuntd):
    """load_balancing.local_zone: only the own zone's endpoint serves while it
    is up. Killed: the connect retry goes to the other zone at once (the
    failed endpoint is excluded, not picked again by the zone preference),
    the breaker opens, and the other zone serves without a client error."""
    topo = fresh_topo
    topo.route_vips()
    addrs = [T.REMOTE4, T.REMOTE4B]
    procs = [topo.remote.spawn_peer("http", "ep%d" % i, ["%s:%d" % (a, PORT)]) for i, a in
             enumerate(addrs)]
    try:
        path = os.path.join(sl.tmpdir(), "registry-zones.json")
        reg = registry()
        reg["services"][0]["endpoints"] = [
            {"address": a, "port": PORT, "zone": z} for a, z in zip(addrs, ["zone-a", "zone-b"])
        ]
        sl.write_json(path, reg)
        d = start_shuntd(
            topo.app,
            sl.shuntd_args(
                **{"service-discovery.file.path": path, "load-balancing.local-zone": "zone-a"},
                **BREAKER_FLAGS,
            ),
        )
        for vport in (80, 81):
            assert served_by(topo, 10, vport) == {"ep0": 10}
        procs[0].stop(signal.SIGKILL)
        for vport in (81, 80):
            assert served_by(topo, 10, vport) == {"ep1": 10}
        sl.wait_until(
            lambda: ep_resilience(d, addrs[0], 81)["breaker"] in ("open", "half_open"),
            5,
            what="zone-a's breaker open",
        )
        assert d.metric("shunt_retries_total", service=SERVICE + ":81") >= 1
        sl.stop_checked([d])
    finally:
        for p in procs:
            p.stop()


def test_outlier_ejection_stops_attempts(fresh_topo, start_shuntd):
    """Outlier detection alone (the breaker would need 1000 failures): a dead
    endpoint is ejected after 3 consecutive connect failures, and while it
    is ejected no connection attempt reaches it (SYNs counted in its pod);
    the requests meanwhile all succeed on the other two."""
    topo = fresh_topo
    topo.add_remote4()
    topo.route_vips()
    procs = []
    try:
        for i in range(len(EP_ADDRS)):
            procs.append(start_backend(topo, i))
        flags = dict(BREAKER_FLAGS)
        flags.update({
            "circuit-breaker.consecutive-failures": "1000",
            "outlier-detection.consecutive-failures": "3",
            "outlier-detection.base-ejection-time": "2s",
            "outlier-detection.max-ejection-time": "4s",
        })
        path = sl.registry_file(registry())
        d = start_shuntd(topo.app, sl.shuntd_args(**{"service-discovery.file.path": path}, **flags))
        dead = EP_ADDRS[2]
        procs[2].stop(signal.SIGKILL)
        count_syns(topo.remote, dead, PORT)
        got = {}

        def ejected():
            got["r"] = ep_resilience(d, dead, 81)
            return got["r"]["ejected"] and got["r"]["ejected_for_ms"] >= 1000

        with Load(topo, 81) as load:
            sl.wait_until(ejected, 10, what="ep2 ejected with 1 s left")
            n0, served0 = syns(topo.remote), sum(load.ok.values())
            until = time.monotonic() + got["r"]["ejected_for_ms"] / 1000.0
            while time.monotonic() < until - 0.1:
                assert syns(topo.remote) == n0, "a connection attempt to an ejected endpoint"
                time.sleep(0.05)  # sampling the counter; nothing to wait for
            assert sum(load.ok.values()) >= served0 + 20, load.ok
        assert load.failed == [], load.failed[:5]
        assert set(load.ok) == {"ep0", "ep1"}, load.ok
        assert ep_resilience(d, dead, 81)["breaker"] == "closed"  # ejection alone did it
    finally:
        for p in procs:
            p.stop()


def test_retry_budget_bounds_retries_in_flight(fresh_topo, start_shuntd):
    """retries.budget_min 2 and budget_percent 0, and no endpoint listening:
    of 8 requests at the same time each fails to connect, 2 are retried
    (each holds its budget slot through a 300 ms backoff) and 6 are refused
    a retry and counted; every client gets a 503. Without the budget a storm
    of failures would multiply the load on a struggling service."""
    topo = fresh_topo
    topo.add_remote4()
    topo.route_vips()
    flags = dict(BREAKER_FLAGS)
    flags.update({
        "circuit-breaker.consecutive-failures": "1000",
        "outlier-detection.consecutive-failures": "1000",
        "retries.max-retries": "1",
        "retries.backoff-base": "300ms",
        "retries.backoff-max": "300ms",
        "retries.budget-min": "2",
        "retries.budget-percent": "0",
    })
    path = sl.registry_file(registry())
    d = start_shuntd(topo.app, sl.shuntd_args(**{"service-discovery.file.path": path}, **flags))
    svc = SERVICE + ":80"
    retries0 = d.metric("shunt_retries_total", default=0, service=svc)
    refused0 = d.metric("shunt_retry_budget_exhausted_total", default=0, service=svc)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        got = list(pool.map(lambda _: topo.app.http(VIP, 80, "GET", "/", timeout=10)[0], range(8)))
    assert got == [503] * 8, got
    assert d.metric("shunt_retries_total", service=svc) == retries0 + 2
    assert d.metric("shunt_retry_budget_exhausted_total", service=svc) == refused0 + 6
