# SPDX-License-Identifier: Apache-2.0
"""Admin API and shuntctl against a running shuntd with iptables capture."""

import json
import os
import re
import subprocess
import time

import pytest

import shuntlib as sl
from shuntlib import Topology as T

CONN_FIELDS = {
    "id",
    "worker",
    "direction",
    "client",
    "original_dst",
    "upstream",
    "protocol",
    "state",
    "bytes_in",
    "bytes_out",
    "age_ms",
    "sni",
}


@pytest.fixture
def open_conn(topo, shuntd):
    """One echo connection held open through shuntd."""
    s = topo.app.connect(T.REMOTE4, 7000)
    try:
        assert sl.echo(s, b"held open\n") == b"held open\n"
        sl.wait_until(lambda: shuntd.connections(), 5, what="the held connection listed")
        yield s
    finally:
        s.close()


def test_health_and_ready(shuntd):
    assert shuntd.get("/health")[0] == 200
    status, body = shuntd.get("/ready")
    assert status == 200, body
    assert shuntd.get("/no-such-endpoint")[0] == 404


def test_admin_only_on_loopback(topo, shuntd):
    """The admin port listens on 127.0.0.1 only: not reachable from the
    other pod (and port 15003 is not captured either)."""
    with pytest.raises(OSError):
        topo.remote.connect(T.APP4, 15003, timeout=2).close()


def test_metrics_pass_promtool(topo, shuntd):
    # Some traffic first, so the counters have values.
    for host in (T.REMOTE4, T.REMOTE6):
        r = topo.app.curl(["-g", "http://%s:8080/m" % (host if ":" not in host else "[%s]" % host)])
        assert r.returncode == 0, r.stderr
    text = shuntd.metrics_text()
    p = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert p.returncode == 0, p.stdout + p.stderr + "\n" + text
    m = sl.parse_metrics(text)
    names = {k[0] for k in m}
    for fam in (
        "shunt_connections_accepted_total",
        "shunt_connections_active",
        "shunt_bytes_total",
        "shunt_protocol_detected_total",
        "shunt_errors_total",
        "shunt_original_dst_total",
    ):
        assert fam in names, fam
    for d in ("inbound", "outbound"):
        assert ("shunt_connections_accepted_total", (("direction", d),)) in m
        assert ("shunt_connections_active", (("direction", d),)) in m
    for d in ("upstream", "downstream"):
        assert m[("shunt_bytes_total", (("direction", d),))] > 0
    for proto in ("tcp", "http1", "http2", "grpc", "tls"):
        assert ("shunt_protocol_detected_total", (("protocol", proto),)) in m
    for res in ("ok", "not_redirected", "error"):
        assert ("shunt_original_dst_total", (("result", res),)) in m
    assert m[("shunt_protocol_detected_total", (("protocol", "http1"),))] >= 2


def test_connections_json_shape(topo, shuntd, open_conn):
    conns = shuntd.connections()
    assert len(conns) == 1, conns
    c = conns[0]
    assert CONN_FIELDS <= set(c), set(c) ^ CONN_FIELDS
    assert c["direction"] == "outbound"
    assert sl.hostport(c["original_dst"]) == (T.REMOTE4, 7000)
    assert sl.hostport(c["client"]) == tuple(open_conn.getsockname()[:2])
    assert c["bytes_in"] >= 10 and c["bytes_out"] >= 10
    assert c["age_ms"] >= 0
    assert isinstance(c["worker"], int)


def test_status_json_shape(shuntd):
    st = shuntd.json("/status")
    assert st["redirect_mode"] == "iptables"
    assert st["ready"] is True
    assert st["workers"] == 2
    assert st["rules"]["installed"] is True
    assert st["rules"]["ipv6"] is True
    assert isinstance(st["listeners"], list) and st["listeners"]
    assert json.dumps(st["listeners"]).count("15001") >= 1
    assert json.dumps(st["listeners"]).count("15002") >= 1
    for k in ("active", "accepted", "rejected"):
        assert isinstance(st["connections"][k], int)


def set_level(d, level):
    status, body = d.post("/admin/log-level", level.encode())
    return status, json.loads(body)


def test_log_level_at_runtime(topo, shuntd):
    """POST /admin/log-level changes the live level (shown in /status):
    debug lines stop at info and come back at debug."""
    assert set_level(shuntd, "info") == (200, {"log_level": "info"})
    assert shuntd.json("/status")["log_level"] == "info"
    n, na = len(shuntd.log_lines()), len(shuntd.access_lines())
    assert sl.echo(topo.app.connect(T.REMOTE4, 7000), b"q") == b"q"
    sl.wait_until(lambda: len(shuntd.access_lines()) > na, 5, what="access log line")
    assert not [l for l in shuntd.log_lines()[n:] if l.get("level") == "debug"]

    assert set_level(shuntd, "debug") == (200, {"log_level": "debug"})
    assert shuntd.json("/status")["log_level"] == "debug"
    n = len(shuntd.log_lines())
    assert sl.echo(topo.app.connect(T.REMOTE4, 7000), b"q") == b"q"
    sl.wait_until(
        lambda: [l for l in shuntd.log_lines()[n:] if l.get("level") == "debug"],
        5,
        what="debug lines after switching to debug",
    )
    status, body = set_level(shuntd, "loud")
    assert status == 400 and "debug" in body["error"]
    assert shuntd.json("/status")["log_level"] == "debug"


def test_log_lines_are_json(shuntd):
    lines = shuntd.log_lines()
    assert lines
    rfc3339_us = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)$")
    for l in lines:
        assert "_raw" not in l, l
        assert rfc3339_us.match(l["time"]), l
        assert l["level"] in ("debug", "info", "warn", "error"), l
        assert l["component"] and isinstance(l["msg"], str), l
        if "conn" in l:
            assert isinstance(l["conn"], int), l


def ctl(pod, *args):
    p = sl.shuntctl(pod, *args)
    assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
    return p.stdout


def test_shuntctl_status(topo, shuntd):
    text = ctl(topo.app, "status")
    assert "iptables" in text
    assert "15001" in text and "15002" in text
    st = json.loads(ctl(topo.app, "--json", "status"))
    assert st["redirect_mode"] == "iptables" and st["ready"] is True
    assert st["rules"]["installed"] is True


def test_shuntctl_rules(topo, shuntd):
    # Traffic so that some counter moves.
    assert sl.echo(topo.app.connect(T.REMOTE4, 7000), b"count me") == b"count me"
    text = ctl(topo.app, "rules")
    assert "SIDECAR_PROXY_INBOUND" in text and "SIDECAR_PROXY_OUTBOUND" in text
    rules = json.loads(ctl(topo.app, "--json", "rules"))
    for fam in ("ipv4", "ipv6"):
        chains = {r["chain"] for r in rules[fam]}
        assert {"SIDECAR_PROXY_INBOUND", "SIDECAR_PROXY_OUTBOUND"} <= chains, rules[fam]
    redirects = [
        r for r in rules["ipv4"] if r["chain"] == "SIDECAR_PROXY_OUTBOUND" and "15002" in r["rule"]
    ]
    assert redirects, rules["ipv4"]
    assert sum(r["packets"] for r in redirects) >= 1


def test_shuntctl_conns(topo, shuntd, open_conn):
    text = ctl(topo.app, "conns")
    assert "%s:7000" % T.REMOTE4 in text, text
    assert "outbound" in text
    data = json.loads(ctl(topo.app, "--json", "conns"))
    assert [sl.hostport(c["original_dst"]) for c in data["connections"]] == [(T.REMOTE4, 7000)]


def test_shuntctl_config(topo, shuntd):
    cfg = json.loads(ctl(topo.app, "--json", "config"))
    assert cfg["redirect"]["value"] == "iptables"
    assert cfg["workers"] == {"value": 2, "source": "flag"}
    assert cfg["inbound_port"] == {"value": 15001, "source": "default"}


def test_shuntctl_ready(topo, shuntd):
    """The sidecar's exec probes: exit 0 once ready; with SECONDS, retried
    once a second, then exit 1 naming the daemon."""
    assert ctl(topo.app, "ready") == "ready\n"
    assert ctl(topo.app, "ready", "5") == "ready\n"
    t0 = time.monotonic()
    p = sl.shuntctl(topo.app, "--admin", "127.0.0.1:1", "ready", "2")
    assert p.returncode == 1 and time.monotonic() - t0 >= 1.0
    assert p.stderr.strip().endswith("shuntctl: shuntd at 127.0.0.1:1 not ready after 2 s"), p.stderr
    assert p.stderr.count("cannot reach") == 1, p.stderr  # only the last attempt speaks
    p = sl.shuntctl(topo.app, "ready", "0")
    assert p.returncode == 2 and "invalid wait '0'" in p.stderr


def test_shuntctl_unreachable_daemon(topo):
    p = sl.shuntctl(topo.app, "--admin", "127.0.0.1:1", "status")
    assert p.returncode == 1
    assert p.stderr.startswith("shuntctl: ") and "127.0.0.1:1" in p.stderr, p.stderr


def test_shuntctl_bad_usage(topo):
    p = sl.shuntctl(topo.app, "frobnicate")
    assert p.returncode == 2
    assert "frobnicate" in p.stderr


def test_admin_mutations_need_the_token(topo, shuntd):
    """Any process in the pod may read the admin API, but only one that can
    read shuntd's token file may change it (issue 14, D10): without the
    token, POST /admin/endpoints and /admin/circuit-breaker are refused with
    401 and change nothing; shuntctl run as another user says so; root's
    shuntctl reads the token file and succeeds."""
    reg = json.dumps({"service": "x", "endpoints": [{"address": "10.9.9.9", "port": 1}]})
    for token in ("", "0" * 64):
        for path in ("/admin/endpoints", "/admin/circuit-breaker?service=x&endpoint=10.9.9.9:1"
                     "&state=forced_open", "/admin/log-level"):
            status, body = shuntd.post(path, reg, token=token)
            assert status == 401 and b"needs Authorization: Bearer" in body, (path, status, body)
    assert "10.9.9.9" not in json.dumps(shuntd.json("/endpoints"))
    token_file = shuntd.config_value("admin.token_file")[0]
    assert oct(os.stat(token_file).st_mode & 0o777) == "0o600"
    # Another user of the pod: can read state, cannot change it.
    other = ["setpriv", "--reuid", "4242", "--regid", "4242", "--clear-groups",
             sl.any_user(sl.SHUNTCTL)]
    r = topo.app.run(other + ["status"], check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    r = topo.app.run(other + ["log-level", "info"], check=False)
    assert r.returncode == 1 and "answered 401" in r.stderr, r.stdout + r.stderr
    r = sl.shuntctl(topo.app, "log-level", "debug")
    assert r.returncode == 0, r.stdout + r.stderr


def test_admin_mutations_off_by_default(fresh_topo, start_shuntd):
    """Started without admin flags, shuntd refuses every change through the
    admin API (403, one line saying which key turns it on) and writes no
    token file; reading is unaffected."""
    d = start_shuntd(fresh_topo.app,
                     args=sl.shuntd_args(**{"admin.mutations": None, "admin.token-file": None}))
    assert d.config_value("admin.mutations") == ("off", "default")
    status, body = d.post("/admin/log-level", "info", token="")
    assert status == 403 and b"admin mutations are off (admin.mutations)" in body, body
    assert not os.path.exists(d.config_value("admin.token_file")[0])
    assert d.get("/status")[0] == 200
