"""Inbound authorization policies, two pods with shuntd sharing the built-in
CA: B (web on 8080, echo on 7000, http on 9090) in permissive mode with
authorization.policies in its config file. Allowed identities pass (A's
own mesh traffic, a namespace rule), a denied service account and an
identity outside the allow rules are refused with their audit reason
(openssl s_client with certificates of other identities), plaintext to a
protected port is refused in permissive mode (issue 14 D3), SIGHUP applies
new policies (mtls.allow too) to new connections without dropping open
ones, bad policies stop start-up with one line and exit 2."""

import json
import os
import signal
import subprocess

import pytest

import mtls_pki as pki
import shuntlib as sl
from shuntlib import Topology as T

VIP_WEB = "10.96.0.40"
WEB_ID = pki.spiffe("web")
CLIENT_ID = pki.spiffe("client")  # pod A's identity
SHOP_ID = pki.spiffe("cart", ns="shop")
INTRUDER_ID = pki.spiffe("intruder", ns="shop")
STRANGER_ID = pki.spiffe("stranger", ns="other")

WEB_POLICY = {
    "name": "web",
    "ports": [8080],
    "deny": [{"service_account": "intruder"}],
    "allow": [{"namespace": "default", "service_account": "client"}, {"namespace": "shop"}],
}


def b_config(policies=(WEB_POLICY,), allow=None):
    c = {"mtls": {"mode": "permissive", "handshake_timeout": "1s"},
         "authorization": {"policies": list(policies)}}
    if allow:
        c["mtls"]["allow"] = allow
    return c


@pytest.fixture(scope="module")
def mesh():
    topo = T()
    procs, daemons = [], []
    try:
        topo.route_vips()
        procs.append(topo.remote.spawn_peer("http", "web", ["%s:8080" % T.REMOTE4]))
        procs.append(topo.remote.spawn_peer("echo", "echo", ["%s:7000" % T.REMOTE4]))
        procs.append(topo.remote.spawn_peer("http", "other", ["%s:9090" % T.REMOTE4]))
        tmp = sl.tmpdir()
        ca_dir = os.path.join(tmp, "ca")
        reg = sl.registry_file({"services": [sl.service(
            "web", VIP_WEB, 8080, [T.REMOTE4], "TCP", port_name="p", service_port=80,
            identity=WEB_ID)]}, tmp)
        a, b = sl.start_mtls_pair(
            topo, daemons, ca_dir,
            a_flags={"service-discovery.file.path": reg, "exclude-outbound-ports": "15001"},
            b_config=b_config())
        ca = pki.CA.load(ca_dir)
        yield topo, a, b, tmp, ca
    finally:
        sl.teardown(topo, daemons, procs)


audits = sl.audit_lines
certs = pki.client_files


def plaintext_refused(topo, port):
    """A plaintext request from pod A straight to B's address (A relays it as
    it is): True when B closes without answering."""
    try:
        s = topo.app.connect(T.REMOTE4, port)
    except (ConnectionResetError, ConnectionRefusedError):
        return True
    try:
        s.sendall(b"GET /plain HTTP/1.0\r\n\r\nhello\n")
        s.settimeout(5)
        return s.recv(100) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    finally:
        s.close()


def test_startup_says_which_ports_are_protected(mesh):
    topo, a, b, tmp, ca = mesh
    msgs = [l.get("msg", "") for l in b.log_lines()]
    assert any("protected ports: 8080" in m and "1 from the file" in m for m in msgs), msgs
    az = b.json("/authz")
    assert az["protected_ports"] == "8080" and az["sources"]["file"] == 1, az
    assert az["policies"][0]["name"] == "file/web" and az["policies"][0]["ports"] == [8080], az
    assert az["policies"][0]["deny"] == [{"service_account": "intruder"}], az
    r = sl.shuntctl(topo.remote, "authz")
    assert r.returncode == 0, r.stderr
    assert "protected ports: 8080" in r.stdout and "file/web" in r.stdout, r.stdout
    assert "ns=default sa=client; ns=shop" in r.stdout and "sa=intruder" in r.stdout, r.stdout
    r = sl.shuntctl(topo.remote, "certs")
    assert "authorization: 1 policies (see shuntctl authz)" in r.stdout, r.stdout
    # A has none.
    assert "no policy" in sl.shuntctl(topo.app, "authz").stdout


def test_allowed_identities_pass(mesh):
    topo, a, b, tmp, ca = mesh
    # A's own mesh traffic (default/client) through the VIP: mTLS, allowed.
    r = topo.app.curl(["-s", "-m", "5", "http://%s/x" % VIP_WEB])
    assert r.returncode == 0 and json.loads(r.stdout)["server"] == "web", r.stdout + r.stderr
    # Any service account of namespace shop.
    args, _ = certs(tmp, ca, "cart", SHOP_ID)
    r = pki.s_client(topo.app, T.REMOTE4, args)
    assert "HTTP/1.1 200" in r.stdout, r.stdout + r.stderr
    # 9090 and 7000 have no policy: any identity of the trust domain, and plaintext.
    args, _ = certs(tmp, ca, "stranger", STRANGER_ID)
    r = pki.s_client(topo.app, T.REMOTE4, args, sni_port=9090)
    assert "HTTP/1.1 200" in r.stdout, r.stdout + r.stderr
    s = topo.app.connect(T.REMOTE4, 7000)
    try:
        assert sl.echo(s, b"plain\n") == b"plain\n"
    finally:
        s.close()
    assert b.metric("shunt_authz_decisions_total", decision="allowed") >= 2


def test_denied_and_not_allowed_are_audited(mesh):
    topo, a, b, tmp, ca = mesh
    before = b.metric("shunt_authz_decisions_total", decision="denied_by_policy")
    args, serial = certs(tmp, ca, "intruder", INTRUDER_ID)
    r = pki.s_client(topo.app, T.REMOTE4, args)
    assert "HTTP/1.1 200" not in r.stdout
    sl.wait_until(lambda: audits(b, "denied_by_policy"), 5, what="denied_by_policy audit line")
    line = audits(b, "denied_by_policy")[-1]
    assert 'identity="%s"' % INTRUDER_ID in line and "serial=%s" % serial in line, line
    assert "peer=%s:" % T.APP4 in line and "port=8080" in line and "file/web" in line, line
    assert b.metric("shunt_authz_decisions_total", decision="denied_by_policy") == before + 1
    assert b.metric("shunt_tls_handshake_failures_total", direction="inbound",
                    reason="denied_by_policy") >= 1

    args, _ = certs(tmp, ca, "stranger", STRANGER_ID)
    r = pki.s_client(topo.app, T.REMOTE4, args)
    assert "HTTP/1.1 200" not in r.stdout
    sl.wait_until(lambda: any(STRANGER_ID in l for l in audits(b, "not_allowed")), 5,
                  what="not_allowed audit line")
    line = [l for l in audits(b, "not_allowed") if STRANGER_ID in l][-1]
    assert "port=8080" in line and "no allow rule matches (policy file/web)" in line, line


def test_plaintext_refused_on_protected_port(mesh):
    """Issue 14 D3: in permissive mode plaintext carried no identity past the
    allow rules. A port with rules refuses it; a port without lets it by."""
    topo, a, b, tmp, ca = mesh
    assert plaintext_refused(topo, 8080)
    sl.wait_until(lambda: audits(b, "no_identity"), 5, what="no_identity audit line")
    line = audits(b, "no_identity")[-1]
    assert "peer=%s:" % T.APP4 in line and "port=8080" in line and 'identity=""' in line, line
    assert "plaintext" in line and "file/web" in line, line
    assert b.metric("shunt_authz_decisions_total", decision="no_identity") >= 1
    assert not plaintext_refused(topo, 7000)


def test_reload_applies_to_new_connections(mesh):
    topo, a, b, tmp, ca = mesh
    # A plaintext connection to 7000 open across the reload.
    held = topo.app.connect(T.REMOTE4, 7000)
    try:
        assert sl.echo(held, b"before\n") == b"before\n"
        # mtls.allow protects 7000 now: it becomes an allow rule (D3 as filed).
        tester = pki.spiffe("tester")
        b.write_config(b_config(allow={"7000": [tester], "9090": [tester]}))
        b.signal(signal.SIGHUP)
        sl.wait_until(lambda: b.json("/authz")["protected_ports"] == "7000, 9090, 8080", 10,
                      what="reloaded policies")
        assert plaintext_refused(topo, 7000)
        sl.wait_until(lambda: any("port=7000" in l for l in audits(b, "no_identity")), 5,
                      what="7000 refused")
        args, _ = certs(tmp, ca, "tester", tester)
        r = pki.s_client(topo.app, T.REMOTE4, args, sni_port=9090)
        assert "HTTP/1.1 200" in r.stdout, r.stdout + r.stderr
        args, _ = certs(tmp, ca, "stranger", STRANGER_ID)
        r = pki.s_client(topo.app, T.REMOTE4, args, sni_port=9090)
        assert "HTTP/1.1 200" not in r.stdout, r.stdout
        assert b.json("/certs")["policy"]["allow"] == [{"port": 7000, "id": tester},
                                                       {"port": 9090, "id": tester}]
        # The connection opened before is still served.
        assert sl.echo(held, b"after\n") == b"after\n"
    finally:
        held.close()

    # A bad policy is refused with one line; the running policies stay.
    bad = b_config(policies=[dict(WEB_POLICY, ports=[8080, "http"])])
    b.write_config(bad)
    b.signal(signal.SIGHUP)
    sl.wait_until(lambda: any("reload rejected" in l.get("msg", "") and
                              "authorization.policies" in l.get("msg", "")
                              for l in b.log_lines()), 10, what="rejected reload")
    assert b.json("/authz")["protected_ports"] == "7000, 9090, 8080"
    b.write_config(b_config())
    b.signal(signal.SIGHUP)
    sl.wait_until(lambda: b.json("/authz")["protected_ports"] == "8080", 10, what="back")


@pytest.mark.parametrize("policies,want", [
    ([{"name": "x", "ports": [8080]}], "policy file/x: no rule"),
    ([{"name": "x", "ports": [8080], "allow": [{"namespce": "a"}]}],
     "allow[0]: unknown key \"namespce\""),
    ({"name": "x"}, "expected a JSON array"),
    ([{"name": "p%d" % i, "ports": [80], "allow": [{"namespace": "a"}]} for i in range(129)],
     "129 policies, at most 128"),
])
def test_bad_policies_stop_startup(policies, want):
    d = sl.tmpdir()
    path = os.path.join(d, "bad.json")
    with open(path, "w") as f:
        json.dump({"authorization": {"policies": policies}}, f)
    p = subprocess.run([sl.SHUNTD, "--config", path], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config: authorization.policies: "), lines
    assert want in lines[0], lines
