# SPDX-License-Identifier: Apache-2.0
"""Golden-signal metrics checked by a real Prometheus server (Debian's
`prometheus`): it scrapes two sidecars (A, the client's, outbound; B, the
server's, inbound, over mutual TLS) while wrk (HTTP/1.1), h2load (HTTP/2) and
a grpcio client (grpcpeer.py) run through them. PromQL over its HTTP API --
totals and rate by source and destination, success rate, histogram_quantile
over the buckets -- must agree with what the clients measured themselves:

  - request counts: exact (h2load, gRPC), wrk's count plus at most its
    connections (requests cut off when its run ends);
  - success rate: within 0.01 of the client's;
  - rate by source and destination: within 30 % of wrk's requests/s;
  - latency: histogram_quantile interpolates inside a bucket, so it is
    accurate to the bucket: within a factor 2.5 (the widest ratio between
    adjacent default bounds) of the client's percentile, or 5 ms (a Python
    client's own overhead on a busy machine).

`promtool check metrics` must accept both sidecars' /metrics, and 10,000
requests with distinct paths and response codes must not grow the series
past metrics.max_series (the rest go to "other", counted). Prometheus runs in
the client pod on 127.0.0.1 with a temporary configuration and storage, and
is always stopped."""

import json
import os
import re
import sys
import time
import urllib.parse

import pytest

import mtls_pki as pki
import shuntlib as sl
import sidecar_pair
from shuntlib import Topology as T
from sidecar_pair import ECHO_PORT, GRPCPEER, H1_PORT, H2_PORT, RPC_PORT

VIP_WEB, VIP_H2, VIP_RPC, VIP_ECHO = "10.96.0.40", "10.96.0.41", "10.96.0.42", "10.96.0.43"
PROM = "127.0.0.1:9090"
SCRAPE_S = 1
# A client in Python on a busy 2-core machine adds milliseconds of its own.
ABS_MS = 5
MAX_SERIES = 64
WEB_ID = pki.spiffe("web")

WRK_SCRIPT = """
local n = 0
request = function()
  n = n + 1
  if n % 10 == 0 then return wrk.format("GET", "/status/500") end
  if n % 10 == 5 then return wrk.format("GET", "/slow/200") end
  return wrk.format("GET", "/")
end
"""

# A path and a status of their own per request (statuses 200..599 cycle);
# stopped a little past 10,000 so that, with 8 connections in flight, at
# least 10,000 complete (wrk itself still waits out -d).
WRK_DISTINCT = """
local n = 0
request = function()
  n = n + 1
  if n > 10000 then return wrk.format("GET", "/") end
  if n % 2 == 0 then return wrk.format("GET", "/status/" .. (200 + n % 400)) end
  return wrk.format("GET", "/distinct/" .. n)
end
response = function(status, headers, body)
  if n > 10016 then wrk.thread:stop() end
end
"""


def registry():
    def svc(name, vip, port, proto):
        return sl.service(
            name, vip, port, [T.REMOTE4], proto, port_name="p", service_port=80, identity=WEB_ID
        )

    return {
        "services": [
            svc("web", VIP_WEB, H1_PORT, "HTTP"),
            svc("web2", VIP_H2, H2_PORT, "HTTP2"),
            svc("rpc", VIP_RPC, RPC_PORT, "GRPC"),
            svc("echo", VIP_ECHO, ECHO_PORT, "TCP"),
        ]
    }


class Prometheus:
    """A real Prometheus server in pod, scraping targets {pod label: addr}."""

    def __init__(self, pod, targets, tmp):
        sl.require_tool("prometheus", "prometheus")
        cfg = os.path.join(tmp, "prometheus.yml")
        with open(cfg, "w") as f:
            f.write(
                "global:\n  scrape_interval: %ds\n  scrape_timeout: %ds\n"
                "scrape_configs:\n  - job_name: shunt\n    static_configs:\n" % (SCRAPE_S, SCRAPE_S)
            )
            for name, addr in targets.items():
                f.write("      - targets: ['%s']\n        labels: {pod: '%s'}\n" % (addr, name))
        self.pod = pod
        self.proc = pod.spawn(
            [
                "prometheus",
                "--config.file=" + cfg,
                "--storage.tsdb.path=" + os.path.join(tmp, "tsdb"),
                "--web.listen-address=" + PROM,
                "--log.level=warn",
            ],
            "prometheus",
        )
        sl.wait_until(self.ready, 30, what="prometheus ready")

    def ready(self):
        if not self.proc.alive():
            raise sl.HarnessError("prometheus exited: " + self.proc.read_stderr()[-2000:])
        r = self.pod.run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}",
                          "http://%s/-/ready" % PROM], check=False)  # fmt: skip
        return r.stdout.strip() == "200"

    def query(self, q, at=None):
        """Instant query: [(labels, value)]."""
        args = ["curl", "-s", "-G", "http://%s/api/v1/query" % PROM,
                "--data-urlencode", "query=" + q]  # fmt: skip
        if at is not None:
            args += ["--data-urlencode", "time=%.3f" % at]
        r = self.pod.run(args, check=False)
        out = json.loads(r.stdout)
        assert out["status"] == "success", (q, out)
        return [(s["metric"], float(s["value"][1])) for s in out["data"]["result"]]

    def scalar(self, q, at=None):
        res = self.query(q, at)
        assert len(res) == 1, (q, res)
        return res[0][1]

    def targets_up(self):
        return all(v == 1 for _, v in self.query("up")) and len(self.query("up")) == 2

    def stop(self):
        self.proc.stop()


@pytest.fixture(scope="module")
def mesh():
    with sidecar_pair.mesh(("web", "web2", "rpc", "echo")) as m:
        a, b = m.start(
            registry(),
            a_flags={"metrics.max-series": str(MAX_SERIES), "log-level": "info"},
            b_flags={"metrics.max-series": str(MAX_SERIES), "log-level": "info"},
        )
        prom = Prometheus(m.topo.app, {"a": "127.0.0.1:15020", "b": "%s:15020" % T.REMOTE4}, m.tmp)
        m.procs.append(prom)
        sl.wait_until(prom.targets_up, 20, what="both sidecars scraped")
        yield m.topo, a, b, prom


def settle(prom, daemons, q_of):
    """Waits until Prometheus has scraped what each daemon serves now:
    q_of(pod) is a PromQL sum, compared with the same sum over /metrics
    (read again each time: requests cut off at a client's end still end)."""
    for name, d, selector in daemons:

        def caught_up():
            want = sum(v for labels, v in d_samples(d, "shunt_requests_total") if selector(labels))
            return (prom.query(q_of(name)) or [({}, -1)])[0][1] == want

        sl.wait_until(caught_up, 10 * SCRAPE_S, what="prometheus caught up with " + name)


def d_samples(d, name):
    out = []
    for line in d.metrics_text().splitlines():
        if line.startswith(name + "{"):
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', line[: line.rindex("}")]))
            out.append((labels, float(line.rsplit(" ", 1)[1])))
    return out


def wrk_run(topo, script_text, tmp_name, args, timeout=90):
    path = os.path.join(sl.tmpdir(), tmp_name)
    with open(path, "w") as f:
        f.write(script_text)
    r = topo.app.run(["wrk", "-s", path] + args, timeout=timeout, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    total = int(re.search(r"(\d+) requests in", r.stdout).group(1))
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", r.stdout)
    return r.stdout, total, int(m.group(1)) if m else 0


# The client's own timing of each request (wrk's latency distribution is
# not per request here: with 4 connections at 165 requests/s Little's law
# gives a 24 ms mean, wrk reported 60 ms).
TIMED_CLIENT = r"""
import http.client, json, sys, threading, time
host, n = sys.argv[1], int(sys.argv[2])
lat, lock = [], threading.Lock()
def run():
    c = http.client.HTTPConnection(host, 80, timeout=10)
    for i in range(n):
        t = time.perf_counter()
        c.request("GET", "/slow/150" if i % 10 == 5 else "/slow/20")
        r = c.getresponse()
        r.read()
        with lock:
            lat.append(time.perf_counter() - t)
ts = [threading.Thread(target=run) for _ in range(2)]
[t.start() for t in ts]
[t.join() for t in ts]
print(json.dumps(sorted(lat)))
"""


def percentile_ms(sorted_s, q):
    return sorted_s[min(len(sorted_s) - 1, int(q * len(sorted_s)))] * 1000


def close_enough(prom_s, client_ms, what):
    p = prom_s * 1000
    ok = abs(p - client_ms) <= ABS_MS or (client_ms / 2.5 <= p <= client_ms * 2.5)
    assert ok, "%s: PromQL %.3f ms, client %.3f ms" % (what, p, client_ms)


def test_http1_wrk(mesh):
    topo, a, b, prom = mesh
    sel = '{pod="%s",protocol="http1",destination_service="web"}'
    t0 = time.time()
    out, total, non2xx = wrk_run(
        topo, WRK_SCRIPT, "mix.lua",
        ["-t1", "-c4", "-d8s", "--timeout", "5s", "http://%s/" % VIP_WEB])  # fmt: skip
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    settle(prom, [("a", a, lambda l: l.get("protocol") == "http1"),
                  ("b", b, lambda l: l.get("protocol") == "http1")],
           lambda p: "sum(shunt_requests_total%s)" % (sel % p))  # fmt: skip

    # Totals by source and destination, on both sides.
    for pod, direction, src_service in (("a", "outbound", "client"), ("b", "inbound", "unknown")):
        res = prom.query(
            "sum by (direction, source_workload, source_namespace, source_service, "
            "destination_workload, destination_namespace, destination_service, mtls) "
            "(shunt_requests_total%s)" % (sel % pod))
        assert len(res) == 1, res
        labels, n = res[0]
        assert labels == {
            "direction": direction, "source_workload": "client", "source_namespace": "default",
            "source_service": src_service, "destination_workload": "web",
            "destination_namespace": "default", "destination_service": "web", "mtls": "true",
        }, labels  # fmt: skip
        assert total <= n <= total + 4, (pod, n, total)

    # Rate by source and destination over a window inside the run.
    at = t0 + 7.5
    res = prom.query('sum by (source_workload, destination_service) '
                     '(rate(shunt_requests_total%s[5s]))' % (sel % "b"), at)  # fmt: skip
    assert len(res) == 1 and res[0][0] == {"source_workload": "client",
                                          "destination_service": "web"}, res
    assert 0.7 * rps <= res[0][1] <= 1.3 * rps, (res, rps)

    # Success rate: the 500s are wrk's non-2xx.
    for pod in ("a", "b"):
        ok = prom.scalar('sum(shunt_requests_total{pod="%s",protocol="http1",'
                         'response_code_class="2xx"}) / sum(shunt_requests_total%s)'
                         % (pod, sel % pod))  # fmt: skip
        assert abs(ok - (1 - non2xx / total)) <= 0.01, (pod, ok, non2xx, total)
        codes = {l["response_code"] for l, _ in prom.query(
            "sum by (response_code) (shunt_requests_total%s)" % (sel % pod))}
        assert codes == {"200", "500"}, codes


def test_shuntctl_top(mesh):
    """shuntctl top on both sidecars while wrk runs: the web rows' requests/s
    agree with wrk's rate, the success rate with its share of non-2xx, p50 is
    at most p99; as plain text (not a terminal) it prints one snapshot per
    refresh."""
    topo, a, b, prom = mesh
    script = os.path.join(sl.tmpdir(), "top.lua")
    with open(script, "w") as f:
        f.write(WRK_SCRIPT)
    before = a.metric("shunt_requests_total", default=0)
    wrk = topo.app.spawn(["wrk", "-s", script, "-t1", "-c4", "-d8s", "--timeout", "5s",
                          "http://%s/" % VIP_WEB], "wrk-top")  # fmt: skip
    try:
        sl.wait_until(lambda: sum(v for _, v in d_samples(a, "shunt_requests_total")) > before + 50,
                      10, what="wrk's requests through A")  # fmt: skip
        rows = {}
        for pod, where in (("a", topo.app), ("b", topo.remote)):
            r = sl.shuntctl(where, "top", "--once", "--json", "--interval", "2")
            assert r.returncode == 0, r.stdout + r.stderr
            snap = json.loads(r.stdout)
            assert snap["interval_seconds"] >= 2, snap
            rows[pod] = {(x["direction"], x["service"]): x for x in snap["rows"]}
        text = sl.shuntctl(topo.app, "top", "--count", "2", "--interval", "0.5", "--sort", "p99")
        assert text.returncode == 0, text.stdout + text.stderr
    finally:
        rc = wrk.wait(30)
        if rc is None:
            wrk.stop()
    assert rc == 0, wrk.read_stderr()
    out = open(wrk.out_path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = int(re.search(r"Non-2xx or 3xx responses: (\d+)", out).group(1))
    for pod, key in (("a", ("outbound", "default/web")), ("b", ("inbound", "default/web"))):
        row = rows[pod].get(key)
        assert row, (pod, rows[pod])
        assert 0.5 * rps <= row["requests_per_second"] <= 1.5 * rps, (pod, row, rps)
        # wrk's 500s are one in ten; its window is the whole run, top's 2 s.
        assert abs(row["success_rate"] - (1 - non2xx / total)) <= 0.05, (pod, row, non2xx, total)
        assert 0 < row["p50_seconds"] <= row["p99_seconds"], row
    # Not a terminal: no escape sequences, two snapshots one after the other.
    assert "\033" not in text.stdout, text.stdout
    assert text.stdout.count("sorted by p99") == 2, text.stdout
    assert re.search(r"^outbound\s+default/web\s", text.stdout, re.M), text.stdout



def tap_lines(proc, n_min, timeout=15):
    """The JSON lines a `shuntctl tap --json` process printed, once it
    printed at least n_min."""
    def lines():
        with open(proc.out_path) as f:
            return [json.loads(x) for x in f.read().splitlines() if x.strip()]

    sl.wait_until(lambda: len(lines()) >= n_min, timeout,
                  what="%d tap lines (%s)" % (n_min, proc.read_stderr()[-500:]))  # fmt: skip
    return lines()


def tap_spawn(pod, name, *args):
    return pod.spawn([sl.SHUNTCTL, "tap", "--json"] + list(args), name)


def test_shuntctl_tap(mesh):
    """shuntctl tap streams GET /tap: the requests that match its filter,
    with their fields, on both sides; it ends after --max (or --seconds) with
    a summary line; the fifth tap at once is refused (429), bad parameters
    are 400, and the metrics listener has no /tap."""
    topo, a, b, prom = mesh
    # Requests an earlier test's client left in flight end first.
    sl.wait_until(lambda: sum(v for _, v in d_samples(a, "shunt_endpoint_active")) == 0, 15,
                  what="no request in flight through A")  # fmt: skip
    out_a = tap_spawn(topo.app, "tap-a", "--service", "web", "--path", "/slow", "--max", "3",
                      "--seconds", "20")  # fmt: skip
    out_b = tap_spawn(topo.remote, "tap-b", "--direction", "inbound", "--status", "5xx",
                      "--max", "2", "--seconds", "20")  # fmt: skip
    try:
        assert tap_lines(out_a, 1)[0]["tap"]["path"] == "/slow"
        assert tap_lines(out_b, 1)[0]["tap"]["direction"] == "inbound"
        for path in ("/", "/slow/5", "/status/500", "/slow/6", "/", "/status/503", "/slow/7"):
            topo.app.http(VIP_WEB, 80, "GET", path)
        assert out_a.wait(15) == 0 and out_b.wait(15) == 0
    finally:
        for p in (out_a, out_b):
            if p.alive():
                p.stop()
    la, lb = tap_lines(out_a, 5), tap_lines(out_b, 4)
    # Each worker's ring is in order; two workers' events may interleave
    # (seen once on a fresh machine: /slow/6 before /slow/5): the set counts.
    assert sorted(x["path"] for x in la[1:4]) == ["/slow/5", "/slow/6", "/slow/7"], la
    assert la[4] == {"end": "max", "events": 3, "dropped": 0, "ring_dropped": 0}, la[4]
    ev = la[1]
    assert ev["direction"] == "outbound" and ev["protocol"] == "http1" and ev["method"] == "GET"
    assert ev["status"] == 200 and ev["grpc_status"] is None and ev["duration_ms"] >= 5, ev
    assert ev["authority"] == VIP_WEB and ev["service"] == "default/web", ev
    assert ev["source"] == pki.spiffe("client") and ev["destination"] == WEB_ID, ev
    assert ev["endpoint"] == "%s:%d" % (T.REMOTE4, H1_PORT), ev
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z$", ev["time"]), ev
    assert sorted((x["path"], x["status"]) for x in lb[1:3]) == [("/status/500", 500),
                                                                ("/status/503", 503)], lb  # fmt: skip
    assert lb[1]["direction"] == "inbound" and lb[1]["source"] == pki.spiffe("client"), lb
    assert lb[1]["destination"] == WEB_ID and lb[3]["end"] == "max", lb

    # HTTP/2 streams show their pseudo-headers.
    tap = tap_spawn(topo.app, "tap-h2", "--protocol", "http2", "--max", "2", "--seconds", "20")
    try:
        tap_lines(tap, 1)
        r = topo.app.run(["h2load", "-n", "4", "-c", "1", "http://%s:80/h2path" % VIP_H2],
                         timeout=30, check=False)  # fmt: skip
        assert r.returncode == 0, r.stdout + r.stderr
        assert tap.wait(15) == 0
    finally:
        if tap.alive():
            tap.stop()
    ev = tap_lines(tap, 4)[1]
    assert (ev["protocol"], ev["method"], ev["path"], ev["status"]) == ("http2", "GET", "/h2path",
                                                                         200), ev  # fmt: skip
    assert ev["authority"].startswith(VIP_H2) and ev["service"] == "default/web2", ev

    # At most four taps at once; a client that leaves frees its place.
    taps = [tap_spawn(topo.app, "tap-%d" % i, "--seconds", "30") for i in range(4)]
    try:
        for t in taps:
            tap_lines(t, 1)
        r = sl.shuntctl(topo.app, "tap", "--seconds", "1")
        assert r.returncode == 1 and "429" in r.stderr and "limit" in r.stderr, r.stderr
        assert a.metric("shunt_tap_sessions") == 4
        taps[0].stop()
        a.wait_metric("shunt_tap_sessions", lambda v: v == 3, timeout=5)
        r = sl.shuntctl(topo.app, "tap", "--seconds", "1", "--max", "1")
        assert r.returncode == 0, r.stderr
        assert "tap ended (time): 0 requests shown" in r.stderr, r.stderr
    finally:
        for t in taps:
            if t.alive():
                t.stop()
    a.wait_metric("shunt_tap_sessions", lambda v: v == 0, timeout=5)
    assert a.metric("shunt_tap_sessions_total", result="refused") >= 1
    for q, why in (("?bogus=1", "unknown parameter"), ("?status=6xx", "status"),
                   ("?max=0", "max"), ("?seconds=9999", "seconds")):  # fmt: skip
        st, _, body = topo.app.http("127.0.0.1", 15003, "GET", "/tap" + q)
        assert st == 400 and why in json.loads(body)["error"], (q, st, body)
    st, _, _ = topo.app.http("127.0.0.1", 15020, "GET", "/tap")
    assert st == 404


def test_http1_latency_quantiles(mesh):
    """histogram_quantile over the increase of the buckets during the run.
    The server sleeps 20 ms (nine requests in ten) or 150 ms: the client's
    own overhead stays small against what is measured."""
    topo, a, b, prom = mesh
    t0 = time.time()
    time.sleep(SCRAPE_S * 1.5)  # a scrape before the first request
    r = topo.app.run([sys.executable, "-c", TIMED_CLIENT, VIP_WEB, "200"], timeout=120,
                     check=False)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    lat = json.loads(r.stdout)
    assert len(lat) == 400
    settle(prom, [("a", a, lambda l: l.get("protocol") == "http1"),
                  ("b", b, lambda l: l.get("protocol") == "http1")],
           lambda p: 'sum(shunt_requests_total{pod="%s",protocol="http1"})' % p)  # fmt: skip
    at = time.time()
    window = int(at - t0) + 1
    for pod in ("a", "b"):
        sel = '{pod="%s",protocol="http1"}' % pod
        n = prom.scalar("sum(increase(shunt_request_duration_seconds_count%s[%ds]))"
                        % (sel, window), at)  # fmt: skip
        assert 300 <= n <= 500, (pod, n)  # increase() extrapolates to the window's edges
        for q in (0.5, 0.75, 0.95, 0.99):  # not 0.9: the edge between fast and slow
            v = prom.scalar("histogram_quantile(%g, sum by (le) "
                            "(increase(shunt_request_duration_seconds_bucket%s[%ds])))"
                            % (q, sel, window), at)  # fmt: skip
            close_enough(v, percentile_ms(lat, q), "p%g on %s" % (q * 100, pod))


def test_http2_h2load(mesh):
    topo, a, b, prom = mesh
    sel = '{pod="%s",protocol="http2"}'  # B is destination "web" itself
    before = {p: sum(v for _, v in prom.query("sum(shunt_requests_total%s)" % (sel % p)))
              for p in ("a", "b")}  # fmt: skip
    r = topo.app.run(["h2load", "-n", "600", "-c", "2", "-m", "4", "http://%s:80/" % VIP_H2],
                     timeout=90, check=False)  # fmt: skip
    assert r.returncode == 0 and "600 succeeded" in r.stdout, r.stdout + r.stderr
    m = re.search(r"time for request:\s+\S+\s+\S+\s+([\d.]+)(us|ms|s)", r.stdout)
    mean_ms = float(m.group(1)) * {"us": 0.001, "ms": 1, "s": 1000}[m.group(2)]
    settle(prom, [("a", a, lambda l: l.get("protocol") == "http2"),
                  ("b", b, lambda l: l.get("protocol") == "http2")],
           lambda p: "sum(shunt_requests_total%s)" % (sel % p))  # fmt: skip
    mean = {}
    for p in ("a", "b"):
        n = prom.scalar("sum(shunt_requests_total%s)" % (sel % p))
        assert n - before[p] == 600, (p, n, before[p])
        ok = prom.scalar('sum(shunt_requests_total{pod="%s",protocol="http2",'
                         'response_code="200",mtls="true"})' % p)  # fmt: skip
        assert ok == n, (p, ok, n)
        mean[p] = prom.scalar("sum(shunt_request_duration_seconds_sum%s) / "
                              "sum(shunt_request_duration_seconds_count%s)" % (sel % p, sel % p))
    # A (outbound) times what the client sees, less the client's own work;
    # B (inbound) times a part of each of A's streams: the backend answers
    # at once, so B's share of a loaded machine's milliseconds is small and
    # only the order is certain (sums, not buckets: exact).
    close_enough(mean["a"], mean_ms, "mean on a")
    assert 0 < mean["b"] <= mean["a"], mean


def test_grpc_calls(mesh):
    topo, a, b, prom = mesh
    sel = '{pod="%s",protocol="grpc"}'
    t = time.monotonic()
    r = topo.app.run([sys.executable, GRPCPEER, "client", "--target", "%s:80" % VIP_RPC,
                      "--parallel", "4", "unary", "--n", "200", "--sleep-ms", "40"],
                     timeout=120, check=False)  # fmt: skip
    elapsed = time.monotonic() - t
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads(r.stdout)
    assert res["codes"] == {"OK": 200}, res
    settle(prom, [("a", a, lambda l: l.get("protocol") == "grpc"),
                  ("b", b, lambda l: l.get("protocol") == "grpc")],
           lambda p: "sum(shunt_requests_total%s)" % (sel % p))  # fmt: skip
    for p in ("a", "b"):
        got = {l["grpc_status"]: v for l, v in prom.query(
            "sum by (grpc_status) (shunt_requests_total%s)" % (sel % p))}
        assert got == {"OK": 200}, (p, got)
        # Every call slept 40 ms at the server: the median is in (25, 50] ms
        # and no call took longer than the client's whole run.
        p50 = prom.scalar("histogram_quantile(0.5, sum by (le) "
                          "(shunt_request_duration_seconds_bucket%s))" % (sel % p))
        close_enough(p50, 40, "gRPC p50 on %s" % p)
        mean = prom.scalar("sum(shunt_request_duration_seconds_sum%s) / "
                           "sum(shunt_request_duration_seconds_count%s)" % (sel % p, sel % p))
        assert 0.040 <= mean <= elapsed, (p, mean, elapsed)


def test_tcp_bytes_per_service(mesh):
    """Byte-relayed connections per destination service: bytes show while a
    connection is open, and opened/closed count each connection."""
    topo, a, b, prom = mesh
    payload = os.urandom(100000)
    q = ('sum by (destination_service, destination_workload, mtls) (shunt_tcp_%s_total{pod="a",'
         'direction="outbound",destination_service="echo"})')

    def value(kind):
        return sum(v for _, v in prom.query(q % kind))

    base = {k: value(k) for k in ("connections_opened", "connections_closed", "received_bytes",
                                  "sent_bytes")}  # fmt: skip
    s = topo.app.connect(VIP_ECHO, 80)
    try:
        assert sl.echo(s, payload) == payload
        # Still open: its bytes are there already, its end is not.
        sl.wait_until(lambda: value("sent_bytes") - base["sent_bytes"] == len(payload),
                      10 * SCRAPE_S, what="an open connection's bytes in prometheus")
        assert value("received_bytes") - base["received_bytes"] == len(payload)
        assert value("connections_opened") - base["connections_opened"] == 1
        assert value("connections_closed") == base["connections_closed"]
    finally:
        s.close()
    for _ in range(2):
        s = topo.app.connect(VIP_ECHO, 80)
        try:
            assert sl.echo(s, payload) == payload
        finally:
            s.close()
    sl.wait_until(lambda: value("connections_closed") - base["connections_closed"] == 3,
                  10 * SCRAPE_S, what="three echo connections closed in prometheus")
    labels, _ = prom.query(q % "sent_bytes")[0]
    assert labels == {"destination_service": "echo", "destination_workload": "web",
                      "mtls": "true"}, labels  # fmt: skip
    assert value("sent_bytes") - base["sent_bytes"] == 3 * len(payload)
    assert value("received_bytes") - base["received_bytes"] == 3 * len(payload)
    assert value("connections_opened") - base["connections_opened"] == 3


DASHBOARD = os.path.join(sl.SOURCE, "charts", "shunt", "files", "grafana-dashboard.json")
RULES = os.path.join(sl.SOURCE, "charts", "shunt", "files", "prometheus-rules.yaml")


def test_dashboard_and_alert_queries(mesh):
    """Every query of the Grafana dashboard (its variables set to "All", the
    rate window to 30s) returns data from what Prometheus scraped of the two
    sidecars after a little HTTP/1.1, HTTP/2 and TCP traffic; the variables'
    label_values queries list the services; every alert expression parses
    and evaluates."""
    import yaml

    topo, a, b, prom = mesh

    def settled():
        settle(prom, [("a", a, lambda l: True), ("b", b, lambda l: True)],
               lambda p: 'sum(shunt_requests_total{pod="%s"})' % p)  # fmt: skip

    # Twice: a rate needs the series scraped before the traffic it counts.
    s = topo.app.connect(VIP_ECHO, 80)
    try:
        for n in (1, 20):
            for _ in range(n):
                assert topo.app.http(VIP_WEB, 80, "GET", "/")[0] == 200
            r = topo.app.run(["h2load", "-n", str(n), "-c", "1", "http://%s:80/" % VIP_H2],
                             timeout=30, check=False)  # fmt: skip
            assert r.returncode == 0, r.stdout + r.stderr
            assert sl.echo(s, b"x" * 1000) == b"x" * 1000
            settled()
            time.sleep(2 * SCRAPE_S)  # the TCP bytes too
    finally:
        s.close()
    with open(DASHBOARD) as f:
        dash = json.load(f)
    subst = {"$namespace": ".*", "$service": ".*", "$direction": ".*", "$__rate_interval": "30s"}
    checked = 0
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            q = t["expr"]
            for k, v in subst.items():
                q = q.replace(k, v)
            assert "$" not in q, q
            res = prom.query(q)
            assert res, "dashboard panel %r returns no data: %s" % (panel["title"], q)
            checked += 1
            if panel["title"] in ("Request rate", "Latency p50", "Success rate (not 5xx)"):
                assert any(v > 0 for _, v in res), (panel["title"], res)
    assert checked >= 15, checked
    for var in dash["templating"]["list"]:
        if var["type"] != "query":
            continue
        m = re.match(r"label_values\((.*), (\w+)\)$", var["query"]["query"])
        assert m, var
        sel = m.group(1).replace("$namespace", ".*")
        r = topo.app.run(["curl", "-s", "-G", "http://%s/api/v1/series" % PROM,
                          "--data-urlencode", "match[]=" + sel], check=False)  # fmt: skip
        values = {x.get(m.group(2)) for x in json.loads(r.stdout)["data"]}
        assert "web" in values or "default" in values, (var["name"], values)
    with open(RULES) as f:
        rules = yaml.safe_load(f)
    n = 0
    for g in rules["groups"]:
        for rule in g["rules"]:
            prom.query(rule["expr"])  # asserts status success
            n += 1
    assert n == 11, n


def test_promtool_accepts_the_scrapes(mesh):
    topo, a, b, _ = mesh
    sl.require_tool("promtool", "prometheus")
    for d in (a, b):
        text = d.metrics_text()
        assert "shunt_request_duration_seconds_bucket{" in text
        for fam in ("shunt_build_info", "process_resident_memory_bytes", "process_cpu_seconds_total",
                    "process_open_fds", "process_max_fds", "process_start_time_seconds"):
            assert re.search(r"^%s(\{| )" % fam, text, re.M), fam
        r = sl.run(["promtool", "check", "metrics"], input=text, check=False)
        assert r.returncode == 0, r.stdout + r.stderr


def test_series_bounded(mesh):
    """10,000 requests with distinct paths and 400 distinct statuses: the
    request families keep at most metrics.max_series label sets, the rest
    is one "other" series, and each update that went there is counted.
    Last in the file: it fills the label sets of both daemons."""
    topo, a, b, prom = mesh
    r_over = {d: d.metric("shunt_metrics_series_overflow_total", default=0, group="requests")
              for d in (a, b)}  # fmt: skip
    out, total, _ = wrk_run(
        topo, WRK_DISTINCT, "distinct.lua",
        ["-t1", "-c8", "-d25s", "--timeout", "5s", "http://%s/" % VIP_WEB], timeout=120)  # fmt: skip
    assert total >= 10000, out
    for d in (a, b):
        samples = d_samples(d, "shunt_requests_total")
        assert len(samples) <= MAX_SERIES + 1, len(samples)
        assert d.metric("shunt_metrics_series", group="requests") == MAX_SERIES
        other = [v for l, v in samples if l["response_code"] == "other"]
        over = d.metric("shunt_metrics_series_overflow_total", group="requests") - r_over[d]
        assert other and over > 0 and other[0] >= over, (other, over)
        buckets = len(d_samples(d, "shunt_request_duration_seconds_bucket"))
        assert buckets <= (MAX_SERIES + 1) * 15, buckets
    # What Prometheus holds is bounded the same way.
    sl.wait_until(lambda: prom.query('count(shunt_requests_total{pod="b"})')[0][1] == MAX_SERIES + 1,
                  10 * SCRAPE_S, what="prometheus sees the bounded set")
