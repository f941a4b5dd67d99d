# SPDX-License-Identifier: Apache-2.0
"""DNS discovery (service_discovery.type dns) against a real DNS server,
dnsmasq, in the remote pod: A and AAAA records (from a hosts file rewritten
and re-read on SIGHUP) and SRV records (lowest priority only, weights),
traffic through the services' virtual IPs to the discovered endpoints, TTLs
honoured within min_ttl and max_ttl (dnsmasq restarted with another
local-ttl), NXDOMAIN and a server that stops answering (SIGSTOP) handled as
an outage: the last endpoints stay, stale, and serve; recovery afterwards.
Then DNS as the fallback of the file registry while that one is broken."""

import collections
import json
import os
import signal
import socket
import struct

import pytest

import shuntlib as sl
from shuntlib import Topology as T

DNS_IP = T.REMOTE4
WEB_VIP, API_VIP = "10.96.0.10", "10.96.0.11"
WEB_PORT, API_PORT = 8081, 8082
EXTRA4 = sl.EXTRA4
WEB_ADDRS = [T.REMOTE4, T.REMOTE4B, T.REMOTE6B]  # A, A, AAAA
MIN_TTL_S, MAX_TTL_S = 1, 8


class Dnsmasq:
    """dnsmasq serving mesh.test from a hosts file (A, AAAA: rewritten and
    re-read on SIGHUP) and srv-host lines (SRV: changed by a restart, as
    is the TTL, local-ttl)."""

    def __init__(self, pod):
        sl.require_tool("dnsmasq", "dnsmasq-base")
        self.pod = pod
        self.dir = sl.tmpdir()
        self.hosts = os.path.join(self.dir, "hosts")
        self.conf = os.path.join(self.dir, "dnsmasq.conf")
        self.proc = None
        self.ttl = 2
        self.write_hosts(web=True)

    def write_hosts(self, web=True, web_addrs=WEB_ADDRS):
        lines = ["%s ep-a.mesh.test" % T.REMOTE4, "%s ep-b.mesh.test" % EXTRA4,
                 "%s ep-c.mesh.test" % T.REMOTE4B]
        if web:
            lines += ["%s web.mesh.test" % a for a in web_addrs]
        tmp = self.hosts + ".tmp"
        with open(tmp, "w") as f:
            f.write("\n".join(lines) + "\n")
        os.rename(tmp, self.hosts)

    def start(self, ttl=None):
        if ttl is not None:
            self.ttl = ttl
        with open(self.conf, "w") as f:
            f.write("\n".join([
                "port=53", "listen-address=%s" % DNS_IP, "bind-interfaces",
                "no-resolv", "no-hosts", "local=/mesh.test/", "user=root", "pid-file=",
                "addn-hosts=%s" % self.hosts, "local-ttl=%d" % self.ttl,
                # priority 0: ep-a (weight 10), ep-b (weight 20); priority 10: ep-c
                "srv-host=_http._tcp.api.mesh.test,ep-a.mesh.test,%d,0,10" % API_PORT,
                "srv-host=_http._tcp.api.mesh.test,ep-b.mesh.test,%d,0,20" % API_PORT,
                "srv-host=_http._tcp.api.mesh.test,ep-c.mesh.test,%d,10,10" % API_PORT,
            ]) + "\n")
        self.proc = self.pod.spawn(
            ["dnsmasq", "-k", "--conf-file=" + self.conf, "--log-facility=-"], "dnsmasq")
        sl.wait_until(lambda: query(self.pod, "ep-a.mesh.test", 1)[0] == 0, 10,
                      what="dnsmasq answering")

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None

    def hup(self):
        self.proc.signal(signal.SIGHUP)


def query(pod, name, qtype, timeout=0.5):
    """One DNS query over UDP from pod: (rcode, answer count), (None, 0) on
    no answer."""
    def ask():
        q = struct.pack(">HHHHHH", 0x5157, 0x0100, 1, 0, 0, 0)
        q += b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"
        q += struct.pack(">HH", qtype, 1)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(timeout)
        try:
            s.sendto(q, (DNS_IP, 53))
            r = s.recv(4096)
            return r[3] & 0xF, struct.unpack(">H", r[6:8])[0]
        except OSError:
            return None, 0
        finally:
            s.close()
    return pod.in_ns(ask)


def services_config(with_api=True):
    web = {
        "name": "web", "namespace": "default", "addresses": [WEB_VIP],
        "ports": [{"name": "http", "port": 80, "target_port": WEB_PORT, "protocol": "HTTP"}],
        "dns": {"name": "web.mesh.test", "type": "A+AAAA", "zone": "z1"},
    }
    api = {
        "name": "api", "namespace": "default", "addresses": [API_VIP],
        "ports": [{"name": "http", "port": 80, "protocol": "HTTP"}],
        "dns": {"name": "_http._tcp.api.mesh.test", "type": "SRV"},
    }
    return [web, api] if with_api else [web]


def dns_config(**extra):
    c = {"servers": DNS_IP, "min_ttl": "%ds" % MIN_TTL_S, "max_ttl": "%ds" % MAX_TTL_S,
         "timeout": "300ms", "attempts": 2, "services": services_config()}
    c.update(extra)
    return c


@pytest.fixture(scope="module")
def env():
    topo = T()
    procs = []
    dns = None
    daemon = None
    try:
        topo.add_remote4()
        topo.route_vips()
        for i, a in enumerate(WEB_ADDRS):
            host = "[%s]" % a if ":" in a else a
            procs.append(topo.remote.spawn_peer("http", "w%d" % i, ["%s:%d" % (host, WEB_PORT)]))
        for i, a in enumerate([T.REMOTE4, EXTRA4, T.REMOTE4B]):
            procs.append(topo.remote.spawn_peer("http", "a%d" % i, ["%s:%d" % (a, API_PORT)]))
        dns = Dnsmasq(topo.remote)
        dns.start()
        daemon = sl.Shuntd(
            topo.app, sl.shuntd_args(**{
                # its own upgrade socket: not the default path other daemons share
                "upgrade.socket": os.path.join(sl.tmpdir(), "upgrade.sock")}),
            config={"service_discovery": {"type": "dns", "dns": dns_config()}},
        )
        daemon.wait_ready()
        yield topo, daemon, dns
    finally:
        try:
            sl.stop_checked([daemon] if daemon else [])
        finally:
            if dns:
                dns.stop()
            for p in procs:
                p.stop()
            topo.delete()


def svc(d, name):
    for s in d.json("/endpoints")["services"]:
        if s["name"] == name:
            return s
    return None


def eps(d, name):
    s = svc(d, name)
    return {(e["address"], e["port"]): e for e in s["endpoints"]} if s else {}


def dns_state(d):
    return d.json("/debug/cache")["backend"]["state"]


def name_state(d, service):
    return {n["service"]: n for n in dns_state(d)["names"]}["default/" + service]


def wait_routed(d, pred, what, timeout=15):
    """Waits until pred(daemon) holds and the proxy routes by that registry
    version or a later one."""
    v = sl.wait_until(lambda: d.json("/endpoints")["version"] if pred(d) else None,
                      timeout, what=what)
    prefix = "routing by registry version "
    sl.wait_until(
        lambda: any(l.get("msg", "").startswith(prefix) and int(l["msg"][len(prefix):]) >= v
                    for l in d.log_lines()),
        10, what="the proxy routing by version %d" % v)


def served_by(topo, vip, n):
    counts = collections.Counter()
    for _ in range(n):
        status, _, body = topo.app.http(vip, 80, "GET", "/")
        assert status == 200, (status, body)
        counts[json.loads(body)["server"]] += 1
    return counts


def web_complete(d):
    e = eps(d, "web")
    return sorted(e) == sorted((a, WEB_PORT) for a in WEB_ADDRS) and not svc(d, "web")["stale"]


def test_a_and_aaaa_records_and_traffic(env):
    topo, d, dns = env
    wait_routed(d, web_complete, "web's 2 A and 1 AAAA records as endpoints")
    s = svc(d, "web")
    assert WEB_VIP in s["addresses"]
    assert s["ports"][0]["port"] == 80 and s["ports"][0]["target_port"] == WEB_PORT
    for e in s["endpoints"]:
        assert e["source"] == "dns" and e["zone"] == "z1" and not e["stale"], e
    st = name_state(d, "web")
    assert st["type"] == "A+AAAA" and st["resolved"] and st["ttl_s"] == 2, st
    counts = served_by(topo, WEB_VIP, 30)
    assert sorted(counts) == ["w0", "w1", "w2"], counts


def test_srv_records_lowest_priority_with_weights(env):
    topo, d, dns = env
    wait_routed(d, lambda d: len(eps(d, "api")) == 2, "api's SRV records as endpoints")
    e = eps(d, "api")
    # ep-c (priority 10) is left out while priority 0 has records
    assert sorted(e) == sorted([(T.REMOTE4, API_PORT), (EXTRA4, API_PORT)]), e
    assert e[(T.REMOTE4, API_PORT)]["weight"] == 10 and e[(EXTRA4, API_PORT)]["weight"] == 20
    s = svc(d, "api")
    assert s["ports"][0]["port"] == 80 and s["ports"][0]["target_port"] == API_PORT, s["ports"]
    counts = served_by(topo, API_VIP, 20)
    assert sorted(counts) == ["a0", "a1"], counts


def test_record_changes_follow_the_ttl(env):
    """A hosts-file edit re-read on SIGHUP is seen at the next lookup (TTL 2 s)."""
    topo, d, dns = env
    wait_routed(d, web_complete, "web complete")
    dns.write_hosts(web_addrs=[T.REMOTE4, T.REMOTE6B])
    dns.hup()
    try:
        wait_routed(d, lambda d: sorted(eps(d, "web")) == sorted(
            [(T.REMOTE4, WEB_PORT), (T.REMOTE6B, WEB_PORT)]), "web without 10.77.0.3", timeout=10)
        counts = served_by(topo, WEB_VIP, 20)
        assert "w1" not in counts and sum(counts.values()) == 20, counts
    finally:
        dns.write_hosts()
        dns.hup()
    wait_routed(d, web_complete, "web back to 3", timeout=10)


def test_ttl_bounds(env):
    """The answer's TTL schedules the next lookup, within [min_ttl, max_ttl]."""
    topo, d, dns = env
    try:
        for ttl in (5, 100, 0):
            dns.stop()
            dns.start(ttl=ttl)
            st = sl.wait_until(
                lambda: (lambda s: s if s["ttl_s"] == ttl and not s["in_flight"] else None)(
                    name_state(d, "web")),
                MAX_TTL_S + 10, what="web looked up with TTL %d" % ttl)
            want = min(max(ttl, MIN_TTL_S), MAX_TTL_S) * 1000
            assert 0 <= st["next_in_ms"] <= want, (ttl, st)
            if ttl == 0:
                # the floor: a TTL of 0 is not a busy loop (A+AAAA: 2 queries
                # per lookup, at most one lookup per min_ttl)
                before = name_state(d, "web")["lookups"]
                sl.wait_until(lambda: name_state(d, "web")["lookups"] >= before + 2, 5,
                              what="another lookup")
                after = name_state(d, "web")["lookups"]
                assert after - before <= 4, (before, after)
    finally:
        dns.stop()
        dns.start(ttl=2)
    wait_routed(d, web_complete, "web complete after the restarts")


def test_nxdomain_keeps_the_last_endpoints_stale(env):
    topo, d, dns = env
    wait_routed(d, web_complete, "web complete")
    dns.write_hosts(web=False)
    dns.hup()
    try:
        sl.wait_until(lambda: svc(d, "web")["stale"], 10, what="web stale on NXDOMAIN")
        st = name_state(d, "web")
        assert st["nxdomain"] > 0 and "NXDOMAIN" in (st["last_error"] or ""), st
        assert dns_state(d)["stale"]
        e = eps(d, "web")
        assert sorted(e) == sorted((a, WEB_PORT) for a in WEB_ADDRS), e
        assert all(x["stale"] for x in e.values())
        counts = served_by(topo, WEB_VIP, 30)
        assert sorted(counts) == ["w0", "w1", "w2"], counts
        assert [l for l in d.log_lines() if "NXDOMAIN" in l.get("msg", "")]
    finally:
        dns.write_hosts()
        dns.hup()
    wait_routed(d, web_complete, "web resolved again, not stale", timeout=40)
    assert not dns_state(d)["stale"]


def test_server_stops_answering(env):
    """dnsmasq stopped (SIGSTOP: queries time out): stale, still serving;
    resumed: lookups succeed again and changes are followed."""
    topo, d, dns = env
    wait_routed(d, web_complete, "web complete")
    timeouts = name_state(d, "web")["timeouts"]
    dns.proc.signal(signal.SIGSTOP)
    try:
        sl.wait_until(lambda: svc(d, "web")["stale"] and svc(d, "api")["stale"]
                      and name_state(d, "web")["timeouts"] > timeouts, 15,
                      what="stale, web's lookups timing out, while the server does not answer")
        assert sorted(served_by(topo, WEB_VIP, 20)) == ["w0", "w1", "w2"]
        assert sorted(served_by(topo, API_VIP, 10)) == ["a0", "a1"]
        dns.write_hosts(web_addrs=[T.REMOTE4B])
    finally:
        dns.proc.signal(signal.SIGCONT)
    dns.hup()
    try:
        wait_routed(d, lambda d: sorted(eps(d, "web")) == [(T.REMOTE4B, WEB_PORT)]
                    and not svc(d, "web")["stale"], "the change made while it was stopped",
                    timeout=40)
        assert served_by(topo, WEB_VIP, 10) == {"w1": 10}
    finally:
        dns.write_hosts()
        dns.hup()
    wait_routed(d, web_complete, "web back to 3", timeout=40)


def test_fallback_of_the_file_registry(env):
    """type file with dns.fallback on: the DNS endpoints join while the file
    registry has been broken for fallback_after, and leave once it is good
    again. (A second shuntd without capture, on other ports.)"""
    topo, d, dns = env
    reg_dir = sl.tmpdir()
    reg = {"services": [sl.service("web", WEB_VIP, WEB_PORT, [T.REMOTE4], protocol="HTTP")]}
    path = sl.registry_file(reg, reg_dir)
    fb = sl.Shuntd(
        topo.app,
        sl.shuntd_args(redirect="off", inbound_port="25001", outbound_port="25002",
                       admin_port="25003", **{
                           "admin.metrics-port": "25020", "admin.mutations": None,
                           "admin.token-file": None,
                           "upgrade.socket": os.path.join(reg_dir, "upgrade.sock")}),
        config={"service_discovery": {
            "type": "file", "file": {"path": path},
            "dns": dns_config(fallback="on", fallback_after="1s",
                              services=services_config(with_api=False))}},
        name="shuntd-fallback",
    )
    fb.admin = ("127.0.0.1", 25003)
    try:
        fb.wait_ready()

        def web_eps():
            return {(e["address"], e["source"]) for e in svc(fb, "web")["endpoints"]}

        sl.wait_until(lambda: web_eps() == {(T.REMOTE4, "file")}, 10, what="web from the file")
        assert not fb.json("/debug/cache")["backend"]["dns_fallback"]["fallback_active"]
        with open(path, "w") as f:
            f.write('{"services": [')  # broken: the file source fails
        want = {(a, "dns") for a in WEB_ADDRS}
        sl.wait_until(lambda: web_eps() == want, 15, what="DNS endpoints while the file is broken")
        assert fb.json("/debug/cache")["backend"]["dns_fallback"]["fallback_active"]
        assert [l for l in fb.log_lines() if "service_discovery.dns.fallback" in l.get("msg", "")]
        sl.registry_file(reg, reg_dir)
        sl.wait_until(lambda: web_eps() == {(T.REMOTE4, "file")}, 15,
                      what="DNS endpoints withdrawn once the file is good")
        assert not fb.json("/debug/cache")["backend"]["dns_fallback"]["fallback_active"]
    finally:
        sl.stop_checked([fb])


BAD = [
    ("no-services", {"type": "dns"}, "service_discovery.dns.services"),
    ("bad-name", {"type": "dns", "dns": {"services": [
        {"name": "web", "ports": [{"port": 80}], "dns": {"name": "a..b"}}]}}, "not a DNS name"),
    ("bad-type", {"type": "dns", "dns": {"services": [
        {"name": "web", "ports": [{"port": 80}], "dns": {"name": "a.b", "type": "MX"}}]}},
     "'MX' is not A, AAAA, A+AAAA or SRV"),
    ("srv-target-port", {"type": "dns", "dns": {"services": [
        {"name": "web", "ports": [{"port": 80, "target_port": 8080}],
         "dns": {"name": "_h._tcp.a.b", "type": "SRV"}}]}}, "without target_port"),
    ("endpoints", {"type": "dns", "dns": {"services": [
        {"name": "web", "ports": [{"port": 80}], "endpoints": [{"address": "10.0.0.1"}],
         "dns": {"name": "a.b"}}]}}, "takes its endpoints from DNS"),
    ("unused", {"type": "file", "dns": {"services": [
        {"name": "web", "ports": [{"port": 80}], "dns": {"name": "a.b"}}]}}, "used only with"),
    ("bad-server", {"type": "dns", "dns": {"servers": "not-an-ip", "services": [
        {"name": "web", "ports": [{"port": 80}], "dns": {"name": "a.b"}}]}},
     "service_discovery.dns.servers"),
]


@pytest.mark.parametrize("sd,words", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_dns_config_stops_start_up(sd, words):
    refused(sd, words)


def refused(sd, words):
    """shuntd with {"service_discovery": sd} refuses to start, saying words."""
    pod = sl.Pod("sdcfg")
    try:
        path = os.path.join(sl.tmpdir(), "bad.json")
        with open(path, "w") as f:
            json.dump({"service_discovery": sd}, f)
        p = pod.run([sl.SHUNTD, "--config", path, "--redirect", "off",
                     "--mtls.ca-dir", os.path.join(sl.tmpdir(), "ca")], timeout=20, check=False)
        assert p.returncode != 0, p.stderr
        lines = [l for l in p.stderr.splitlines() if words in l]
        assert lines and "service_discovery" in lines[0], p.stderr[-2000:]
    finally:
        pod.delete()
