# SPDX-License-Identifier: Apache-2.0
"""Lifecycle: SIGTERM drain and rule removal, restart after kill -9,
SIGHUP reload (bad file keeps the old config, good file applies)."""

import json
import re
import signal
import time

import shuntlib as sl
from shuntlib import Topology as T


def duration_ms(v):
    """"30s", "1m30s", "250ms", or a number of milliseconds -> ms."""
    if isinstance(v, (int, float)):
        return int(v)
    units = {"ms": 1, "s": 1000, "m": 60000, "h": 3600000, "us": 0.001}
    total = 0.0
    for num, unit in re.findall(r"([0-9.]+)(ms|us|s|m|h)", v):
        total += float(num) * units[unit]
    return int(round(total))


def both_counts(pod):
    return sl.iptables_counts(pod.iptables_save()), sl.iptables_counts(pod.iptables_save(v6=True))


def assert_installed_once(pod):
    for fam, c in zip(("ipv4", "ipv6"), both_counts(pod)):
        assert c["SIDECAR_PROXY_INBOUND:decl"] == 1, (fam, c)
        assert c["SIDECAR_PROXY_OUTBOUND:decl"] == 1, (fam, c)
        assert c["PREROUTING->INBOUND"] == 1, (fam, c)
        assert c["OUTPUT->OUTBOUND"] == 1, (fam, c)
        assert c["SIDECAR_PROXY_INBOUND:jumps"] == 1, (fam, c)
        assert c["SIDECAR_PROXY_OUTBOUND:jumps"] == 1, (fam, c)


def assert_no_rules(pod):
    for fam, v6 in (("ipv4", False), ("ipv6", True)):
        text = pod.iptables_save(v6=v6)
        assert "SIDECAR_PROXY" not in text, (fam, text)


def outbound_echo(topo, host=T.REMOTE4, msg=b"hello"):
    s = topo.app.connect(host, 7000)
    try:
        return sl.echo(s, msg)
    finally:
        s.close()


def test_sigterm_removes_rules_and_exits_zero(fresh_topo, start_shuntd):
    topo = fresh_topo
    sl.spawn_remote_peers(topo, {}, ["echo"])
    d = start_shuntd(topo.app)
    assert_installed_once(topo.app)
    assert outbound_echo(topo) == b"hello"
    assert d.metric("shunt_connections_accepted_total", direction="outbound") == 1
    # libcurl (and GnuTLS, LDAP, Kerberos with it) is loaded only by what
    # needs it (core/curl.c): a sidecar on the file registry never maps it.
    libs = {p for p in d.mapped_files() if "/lib" in p}
    assert any("libssl" in p for p in libs), sorted(libs)
    assert not [p for p in libs if "libcurl" in p or "gnutls" in p], sorted(libs)

    d.signal(signal.SIGTERM)
    rc = d.wait(15)
    assert rc == 0, (rc, d.log_tail())
    assert_no_rules(topo.app)
    # Traffic flows directly again (nothing left to redirect it anywhere).
    assert outbound_echo(topo, T.REMOTE6) == b"hello"
    lines = d.log_lines()
    assert all("_raw" not in l for l in lines), [l for l in lines if "_raw" in l][:5]


def test_sigterm_drains_open_connection(fresh_topo, start_shuntd):
    """After SIGTERM an open connection keeps working until it closes;
    then shuntd exits 0 promptly, well before drain_timeout."""
    topo = fresh_topo
    sl.spawn_remote_peers(topo, {}, ["echo"])
    d = start_shuntd(topo.app, sl.shuntd_args(drain_timeout="20s"))
    s = topo.app.connect(T.REMOTE4, 7000)
    try:
        assert sl.echo(s, b"before") == b"before"
        d.signal(signal.SIGTERM)
        # /ready says not ready while draining: the admin API stays up.
        sl.wait_until(lambda: d.get("/ready")[0] == 503, 5, what="/ready 503 while draining")
        assert json.loads(d.get("/ready")[1])["reason"] == "draining"
        assert d.alive()
        assert sl.echo(s, b"during drain") == b"during drain"
    finally:
        s.close()
    t0 = time.monotonic()
    rc = d.wait(15)
    assert rc == 0, (rc, d.log_tail())
    assert time.monotonic() - t0 < 10
    assert_no_rules(topo.app)


def test_drain_timeout_bounds_shutdown(fresh_topo, start_shuntd):
    """A connection that never closes holds shutdown for drain_timeout only."""
    topo = fresh_topo
    sl.spawn_remote_peers(topo, {}, ["echo"])
    d = start_shuntd(topo.app, sl.shuntd_args(drain_timeout="1s"))
    s = topo.app.connect(T.REMOTE4, 7000)
    try:
        assert sl.echo(s, b"x") == b"x"
        t0 = time.monotonic()
        d.signal(signal.SIGTERM)
        rc = d.wait(15)
        took = time.monotonic() - t0
        assert rc == 0, (rc, d.log_tail())
        assert 0.5 <= took < 8, took
        # The client sees its connection closed.
        s.settimeout(5)
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass
    finally:
        s.close()
    assert_no_rules(topo.app)


def test_sigint_removes_rules(fresh_topo, start_shuntd):
    topo = fresh_topo
    d = start_shuntd(topo.app, sl.shuntd_args(drain_timeout="0s"))
    assert_installed_once(topo.app)
    d.signal(signal.SIGINT)
    assert d.wait(15) == 0, d.log_tail()
    assert_no_rules(topo.app)


def test_kill9_then_restart_replaces_stale_chains(fresh_topo, start_shuntd):
    topo = fresh_topo
    sl.spawn_remote_peers(topo, {}, ["echo"])
    d1 = start_shuntd(topo.app)
    assert_installed_once(topo.app)
    d1.signal(signal.SIGKILL)
    assert d1.wait(10) == -signal.SIGKILL
    # The crash left the chains behind: the restart has something to replace.
    c4, c6 = both_counts(topo.app)
    assert c4["OUTPUT->OUTBOUND"] == 1 and c6["OUTPUT->OUTBOUND"] == 1, (c4, c6)

    d2 = start_shuntd(topo.app)
    assert_installed_once(topo.app)
    for host in (T.REMOTE4, T.REMOTE6):
        assert outbound_echo(topo, host, b"after restart") == b"after restart"
    assert d2.metric("shunt_connections_accepted_total", direction="outbound") == 2

    # A second crash and restart still leaves exactly one set.
    d2.signal(signal.SIGKILL)
    d2.wait(10)
    d3 = start_shuntd(topo.app)
    assert_installed_once(topo.app)
    assert outbound_echo(topo) == b"hello"
    d3.signal(signal.SIGTERM)
    assert d3.wait(15) == 0
    assert_no_rules(topo.app)


BASE_CONFIG = {
    "redirect": "iptables",
    "workers": 2,
    "log_level": "info",
    "proxy_uid": int(sl.TEST_PROXY_UID),
    "drain_timeout": "2s",
    "timeouts": {"connect": "5s", "idle_timeout": "60s"},
}


def test_sighup_bad_file_keeps_serving_good_file_applies(fresh_topo, start_shuntd):
    topo = fresh_topo
    sl.spawn_remote_peers(topo, {}, ["echo"])
    d = start_shuntd(topo.app, args=[], config=BASE_CONFIG)
    assert d.config_value("log_level") == ("info", "file")
    assert duration_ms(d.config_value("timeouts.idle_timeout")[0]) == 60000

    s = topo.app.connect(T.REMOTE4, 7000)
    try:
        assert sl.echo(s, b"one") == b"one"

        # 1. A malformed file: rejected, logged, old config keeps running.
        d.write_config('{"log_level": "debug", "timeouts": {')
        n_lines = len(d.log_lines())
        d.signal(signal.SIGHUP)
        err = sl.wait_until(
            lambda: [
                l for l in d.log_lines()[n_lines:] if l.get("level") in ("error", "warn", "warning")
            ],
            5,
            what="an error line about the bad config",
        )
        assert any("config" in (l.get("msg", "") + l.get("component", "")) for l in err), err
        assert d.alive()
        assert d.config_value("log_level")[0] == "info"
        assert sl.echo(s, b"two") == b"two"  # existing connection survives
        assert outbound_echo(topo) == b"hello"  # new connections work
        assert d.get("/ready")[0] == 200

        # 2. A valid file with a bad value: also rejected.
        bad = dict(BASE_CONFIG, timeouts={"idle_timeout": "-5s"})
        d.write_config(json.dumps(bad))
        n_lines = len(d.log_lines())
        d.signal(signal.SIGHUP)
        sl.wait_until(
            lambda: [l for l in d.log_lines()[n_lines:] if "idle_timeout" in l.get("msg", "")],
            5,
            what="an error naming timeouts.idle_timeout",
        )
        assert duration_ms(d.config_value("timeouts.idle_timeout")[0]) == 60000
        assert sl.echo(s, b"three") == b"three"

        # 3. A good file: applied, the connection still survives.
        good = dict(BASE_CONFIG, log_level="debug", timeouts={"connect": "3s", "idle_timeout": "30s"})
        d.write_config(json.dumps(good))
        d.signal(signal.SIGHUP)
        sl.wait_until(
            lambda: d.config_value("log_level")[0] == "debug", 5, what="log_level debug applied"
        )
        assert duration_ms(d.config_value("timeouts.idle_timeout")[0]) == 30000
        assert duration_ms(d.config_value("timeouts.connect")[0]) == 3000
        assert d.config_value("timeouts.connect")[1] == "file"
        assert sl.echo(s, b"four") == b"four"
        # The new log level is live: a new connection logs at debug.
        n_lines = len(d.log_lines())
        assert outbound_echo(topo) == b"hello"
        sl.wait_until(
            lambda: [l for l in d.log_lines()[n_lines:] if l.get("level") == "debug"],
            5,
            what="debug log lines after reload",
        )
        assert d.metric("shunt_config_reloads_total", default=0.0) >= 1
    finally:
        s.close()
    assert d.alive()
    assert_installed_once(topo.app)


def reload_warnings(d, since, key):
    return [l["msg"] for l in d.log_lines()[since:]
            if l.get("msg", "").startswith("reload: %s changes only on restart" % key)]


def test_sighup_keeps_what_changes_only_on_restart(fresh_topo, start_shuntd):
    """Listener ports, workers and the capture they feed are taken at start:
    a reload that changes them keeps the running values everywhere (the
    rules still lead to the port that listens, /config says so) and warns
    once per key. Before, the rules moved to the new port, nothing listened
    there, and every outbound connection of the pod was refused."""
    topo = fresh_topo
    sl.spawn_remote_peers(topo, {}, ["echo"])
    d = start_shuntd(topo.app, args=[], config=BASE_CONFIG)
    assert outbound_echo(topo) == b"hello"
    n = len(d.log_lines())
    d.write_config(json.dumps(dict(BASE_CONFIG, outbound_port=16002, inbound_port=16001,
                                   workers=3, log_level="debug")))
    d.signal(signal.SIGHUP)
    sl.wait_until(lambda: d.config_value("log_level")[0] == "debug", 5, what="reload applied")
    for key in ("outbound_port", "inbound_port", "workers"):
        assert len(reload_warnings(d, n, key)) == 1, (key, d.log_tail())
    assert d.config_value("outbound_port")[0] == 15002
    assert d.config_value("inbound_port")[0] == 15001
    assert "--to-ports 15002" in topo.app.iptables_save()
    assert "16002" not in topo.app.iptables_save()
    assert outbound_echo(topo) == b"hello"
    assert_installed_once(topo.app)


def test_sighup_does_not_relax_mtls_mode(fresh_topo, start_shuntd):
    """strict -> permissive on SIGHUP: mTLS settings are taken at start, so
    plaintext stays refused (before, the reload opened the inbound side to
    plaintext while the log said mTLS settings change only on restart)."""
    topo = fresh_topo
    sl.spawn_remote_peers(topo, {}, ["echo"])
    cfg = dict(BASE_CONFIG, mtls={"mode": "strict"})
    b = start_shuntd(topo.remote, args=sl.shuntd_args(), config=cfg)

    def plaintext_echo():
        try:
            s = topo.app.connect(T.REMOTE4, 7000, timeout=3)
        except OSError:
            return False
        try:
            return sl.echo(s, b"plain", timeout=3) == b"plain"
        except OSError:
            return False
        finally:
            s.close()

    assert not plaintext_echo()
    n = len(b.log_lines())
    b.write_config(json.dumps(dict(cfg, mtls={"mode": "permissive"}, log_level="debug")))
    b.signal(signal.SIGHUP)
    sl.wait_until(lambda: b.config_value("log_level")[0] == "debug", 5, what="reload applied")
    assert len(reload_warnings(b, n, "mtls.mode")) == 1, b.log_tail()
    assert b.config_value("mtls.mode")[0] == "strict"
    assert not plaintext_echo()


def test_capture_rules_put_back_when_removed_or_changed(fresh_topo, start_shuntd):
    """Another tool flushes the nat table, or rewrites one of shuntd's rules:
    within seconds shuntd notices, reinstalls its capture (once, atomically),
    logs it and counts it; outbound traffic is captured again."""
    topo = fresh_topo
    sl.spawn_remote_peers(topo, {}, ["echo"])
    d = start_shuntd(topo.app)
    assert_installed_once(topo.app)
    for n, (what, cmds) in enumerate((
        ("flushed", [["iptables", "-t", "nat", "-F"], ["iptables", "-t", "nat", "-X"]]),
        ("rewritten", [["iptables", "-t", "nat", "-I", "SIDECAR_PROXY_OUTBOUND", "1", "-p", "tcp",
                        "-j", "RETURN"]]),
    ), start=1):
        for c in cmds:
            topo.app.run(c)
        sl.wait_until(lambda: d.metric("shunt_capture_repairs_total") == n, 15,
                      what="capture rules %s, then put back" % what)
        assert_installed_once(topo.app)
        assert "-A SIDECAR_PROXY_OUTBOUND -p tcp -j RETURN" not in topo.app.iptables_save()
        lines = [l["msg"] for l in d.log_lines() if "changed behind shuntd's back" in l.get("msg", "")]
        assert len(lines) == n, lines
        before = d.metric("shunt_connections_accepted_total", direction="outbound")
        assert outbound_echo(topo) == b"hello"
        assert d.metric("shunt_connections_accepted_total", direction="outbound") == before + 1
