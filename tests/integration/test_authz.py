# SPDX-License-Identifier: Apache-2.0
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
import sys

import pytest

import mtls_pki as pki
import shuntlib as sl
from shuntlib import Topology as T
from test_k8s import STANDIN, Env

API, CTL = ("127.0.0.1", 16445), ("127.0.0.1", 16446)

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


class Kube(Env):
    """The Kubernetes API stand-in in B's pod (B watches its policies)."""

    def start_standin(self):
        argv = [sys.executable, STANDIN, "--listen", "%s:%d" % API, "--control", "%s:%d" % CTL,
                "--cert", os.path.join(self.dir, "srv.pem"), "--key",
                os.path.join(self.dir, "srv.key"), "--token", self.token]
        self.standin = self.topo.remote.spawn_ready(argv, "k8s-standin", what="stand-in")

    def ctl(self, method, path, body=None):
        status, _, data = self.topo.remote.http(CTL[0], CTL[1], method, path,
                                                body=json.dumps(body) if body is not None else None)
        assert status == 200, (path, status, data)
        return json.loads(data)

    def kubeconfig(self):
        path = self.write_kubeconfig(self.token_file)
        with open(path) as f:
            kc = json.load(f)
        kc["clusters"][0]["cluster"]["server"] = "https://%s:%d" % API
        with open(path, "w") as f:
            json.dump(kc, f)
        return path


def policy_obj(name, spec, ns="default"):
    return {"metadata": {"name": name, "namespace": ns}, "spec": spec}


@pytest.fixture(scope="module")
def mesh():
    topo = T()
    procs, daemons = [], []
    kube = Kube(topo)
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
        kube.make_certs()
        kube.token = "authz-token"
        kube.token_file = os.path.join(kube.dir, "token")
        with open(kube.token_file, "w") as f:
            f.write(kube.token + "\n")
        kube.start_standin()
        procs.append(kube.standin)
        labels = os.path.join(tmp, "labels")
        with open(labels, "w") as f:
            f.write('app="web"\npod-template-hash="5d8f7b"\nnote="a \\"quoted\\" value"\n')
        a, b = sl.start_mtls_pair(
            topo, daemons, ca_dir,
            a_flags={"service-discovery.file.path": reg, "exclude-outbound-ports": "15001"},
            b_flags={"service-discovery.type": "kubernetes",
                     "service-discovery.kubernetes.kubeconfig-path": kube.kubeconfig(),
                     "authorization.pod-labels-file": labels},
            b_config=b_config())
        ca = pki.CA.load(ca_dir)
        b.kube = kube
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


def kube_state(b):
    return b.json("/authz")["kubernetes"]


def test_kubernetes_policy_applies_without_restart(mesh):
    topo, a, b, tmp, ca = mesh
    kube = b.kube
    sl.wait_until(lambda: kube_state(b)["listed"], 10, what="policies listed")
    st = kube_state(b)
    assert st["namespace"] == "default" and st["objects"] == [], st
    assert st["labels"] == {"app": "web", "pod-template-hash": "5d8f7b", "note": 'a "quoted" value'}
    tester = pki.spiffe("tester")
    t_args, _ = certs(tmp, ca, "tester", tester)
    s_args, _ = certs(tmp, ca, "stranger", STRANGER_ID)
    shop_args, _ = certs(tmp, ca, "cart", SHOP_ID)

    def reaches(args, port=9090):
        return "HTTP/1.1 200" in pki.s_client(topo.app, T.REMOTE4, args, sni_port=port).stdout

    assert reaches(t_args) and reaches(s_args) and not plaintext_refused(topo, 9090)

    # Added: deny the tester's service account on 9090 (selector matches our labels).
    spec = {"selector": {"matchLabels": {"app": "web"}}, "ports": [9090],
            "deny": [{"service_account": "tester"}]}
    kube.apply("authorizationpolicies", "ADDED", policy_obj("no-tester", spec))
    sl.wait_until(lambda: b.json("/authz")["sources"]["kubernetes"] == 1, 10, what="k8s policy")
    assert not reaches(t_args)
    line = [l for l in sl.audit_lines(b, "denied_by_policy") if tester in l][-1]
    assert "port=9090" in line and "kubernetes/no-tester" in line, line
    assert reaches(s_args)  # only deny rules: others pass
    assert plaintext_refused(topo, 9090)  # but no identity cannot be checked against them
    assert any("port=9090" in l and "kubernetes/no-tester" in l
               for l in sl.audit_lines(b, "no_identity"))
    msgs = [l.get("msg", "") for l in b.log_lines()]
    assert any("1 from Kubernetes" in m and "protected ports: 8080, 9090" in m for m in msgs)

    # Modified: only namespace shop may reach 9090.
    spec = {"selector": {"matchLabels": {"app": "web"}}, "ports": [9090],
            "allow": [{"namespace": "shop"}]}
    kube.apply("authorizationpolicies", "MODIFIED", policy_obj("no-tester", spec))
    sl.wait_until(lambda: b.json("/authz")["policies"][-1]["allow"] == [{"namespace": "shop"}],
                  10, what="modified policy")
    assert not reaches(s_args) and reaches(shop_args)
    assert any(STRANGER_ID in l and "port=9090" in l for l in sl.audit_lines(b, "not_allowed"))

    # Merged with the file's: a Kubernetes deny on 8080 wins over the file's allow.
    kube.apply("authorizationpolicies", "ADDED", policy_obj("no-shop-on-web", {
        "ports": [8080], "deny": [{"namespace": "shop"}]}))
    # Another workload's policy (selector not ours) is listed but does not apply.
    kube.apply("authorizationpolicies", "ADDED", policy_obj("other-app", {
        "selector": {"matchLabels": {"app": "other"}}, "ports": ["*"],
        "deny": [{"namespace": "default"}]}))
    # Another namespace's policy is not ours to see.
    kube.apply("authorizationpolicies", "ADDED", policy_obj("elsewhere", {
        "ports": ["*"], "deny": [{"namespace": "default"}]}, ns="shop"))
    sl.wait_until(lambda: len(kube_state(b)["objects"]) == 3, 10, what="3 objects")
    objs = {o["name"]: o for o in kube_state(b)["objects"]}
    assert objs["other-app"]["applies"] is False and "does not match" in objs["other-app"]["why"]
    assert objs["no-shop-on-web"]["applies"] is True
    assert b.json("/authz")["sources"]["kubernetes"] == 2
    assert "HTTP/1.1 200" not in pki.s_client(topo.app, T.REMOTE4, shop_args).stdout
    r = topo.app.curl(["-s", "-m", "5", "http://%s/x" % VIP_WEB])  # A (default/client) still in
    assert r.returncode == 0 and json.loads(r.stdout)["server"] == "web", r.stdout + r.stderr
    r = sl.shuntctl(topo.remote, "authz")
    assert "kubernetes/no-shop-on-web" in r.stdout and "file 1, kubernetes 2" in r.stdout, r.stdout

    # Deleted: 9090 and 8080 as the file alone says again.
    for name in ("no-tester", "no-shop-on-web", "other-app"):
        kube.apply("authorizationpolicies", "DELETED", policy_obj(name, {}))
    sl.wait_until(lambda: b.json("/authz")["sources"]["kubernetes"] == 0, 10, what="deleted")
    assert reaches(s_args) and not plaintext_refused(topo, 9090)
    assert "HTTP/1.1 200" in pki.s_client(topo.app, T.REMOTE4, shop_args).stdout


def test_kubernetes_relist_after_gone(mesh):
    """410 Gone: the policies are listed again and stay in force meanwhile."""
    topo, a, b, tmp, ca = mesh
    kube = b.kube
    spec = {"ports": [9090], "deny": [{"namespace": "other"}]}
    kube.apply("authorizationpolicies", "ADDED", policy_obj("gone-test", spec))
    sl.wait_until(lambda: b.json("/authz")["sources"]["kubernetes"] == 1, 10, what="policy")
    before = kube.stats()["list"]["authorizationpolicies"]
    kube.ctl("POST", "/inject", {"gone_event": True})
    sl.wait_until(lambda: kube.stats()["list"]["authorizationpolicies"] > before, 15,
                  what="relist")
    assert b.json("/authz")["sources"]["kubernetes"] == 1
    s_args, _ = certs(tmp, ca, "stranger", STRANGER_ID)
    assert "HTTP/1.1 200" not in pki.s_client(topo.app, T.REMOTE4, s_args, sni_port=9090).stdout
    kube.apply("authorizationpolicies", "DELETED", policy_obj("gone-test", {}))
    sl.wait_until(lambda: b.json("/authz")["sources"]["kubernetes"] == 0, 10, what="deleted")


def test_plaintext_refused_with_mtls_disabled():
    """D3 in every mode: with mtls.mode disabled nothing has an identity, so a
    protected port refuses every connection (said at start); others relay."""
    topo = T()
    procs, daemons = [], []
    try:
        for port in (7000, 7001):
            procs.append(topo.remote.spawn_peer("echo", "echo%d" % port,
                                                ["%s:%d" % (T.REMOTE4, port)]))
        d = sl.Shuntd(topo.remote, sl.shuntd_args(), config={
            "mtls": {"mode": "disabled"},
            "authorization": {"policies": [{"name": "echo", "ports": [7000],
                                            "allow": [{"namespace": "default"}]}]}})
        daemons.append(d)
        d.wait_ready()
        msgs = [l.get("msg", "") for l in d.log_lines()]
        assert any("mtls.mode is disabled" in m and "(7000) is refused" in m for m in msgs), msgs
        assert plaintext_refused(topo, 7000)
        line = sl.audit_lines(d, "no_identity")[-1]
        assert "port=7000" in line and "mTLS disabled for this port" in line, line
        s = topo.app.connect(T.REMOTE4, 7001)
        try:
            assert sl.echo(s, b"open\n") == b"open\n"
        finally:
            s.close()
    finally:
        sl.teardown(topo, daemons, procs)


CRD = os.path.join(sl.SOURCE, "charts", "shunt", "crds", "authorizationpolicies.shunt.io.yaml")


def crd_schema():
    try:
        import jsonschema  # noqa: F401
        import yaml
    except ImportError as e:
        pytest.fail("%s: install python3-yaml and python3-jsonschema (scripts/bootstrap.sh)" % e)
    with open(CRD) as f:
        crd = yaml.safe_load(f)
    return crd


def readme_policy_objects():
    """The AuthorizationPolicy objects of docs/security.md's yaml blocks."""
    import yaml
    with open(os.path.join(sl.SOURCE, "docs", "security.md")) as f:
        text = f.read()
    out = []
    for block in text.split("```yaml")[1:]:
        for doc in yaml.safe_load_all(block.split("```")[0]):
            if isinstance(doc, dict) and doc.get("kind") == "AuthorizationPolicy":
                out.append(doc)
    return out


def test_crd_schema():
    """The CRD serves shunt.io/v1alpha1 AuthorizationPolicy (namespaced); its
    schema takes docs/security.md's example and this file's policies and refuses
    what shuntd would refuse."""
    import jsonschema
    crd = crd_schema()
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1" and crd["kind"] == "CustomResourceDefinition"
    spec = crd["spec"]
    assert crd["metadata"]["name"] == "authorizationpolicies.shunt.io"
    assert spec["group"] == "shunt.io" and spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == "AuthorizationPolicy"
    assert spec["names"]["plural"] == "authorizationpolicies"
    (v,) = spec["versions"]
    assert v["name"] == "v1alpha1" and v["served"] and v["storage"]
    schema = v["schema"]["openAPIV3Schema"]
    check = jsonschema.Draft4Validator(schema)

    def obj(s):
        return {"apiVersion": "shunt.io/v1alpha1", "kind": "AuthorizationPolicy",
                "metadata": {"name": "x", "namespace": "default"}, "spec": s}

    examples = readme_policy_objects()
    assert examples, "docs/security.md shows an AuthorizationPolicy"
    good = examples + [obj({k: v for k, v in WEB_POLICY.items() if k != "name"}), obj({
        "selector": {"matchLabels": {"app": "web"}}, "ports": [9090, "8080", "*"],
        "deny": [{"service_account": "tester"}, {"trust_domain": "partner.org"}],
        "allow": [{"identity": "spiffe://cluster.local/ns/a/sa/b"}]})]
    for o in good:
        errs = list(check.iter_errors(o))
        assert not errs, (o, [e.message for e in errs])
    bad = [
        {"ports": [8080]},                                   # no rule
        {"allow": [{"namespace": "a"}]},                     # no ports
        {"ports": [], "allow": [{"namespace": "a"}]},
        {"ports": [0], "allow": [{"namespace": "a"}]},
        {"ports": ["http"], "allow": [{"namespace": "a"}]},
        {"ports": list(range(1, 34)), "allow": [{"namespace": "a"}]},
        {"ports": [80], "allow": []},
        {"ports": [80], "allow": [{}]},
        {"ports": [80], "deny": [{"namespace": "a/b"}]},
        {"ports": [80], "deny": [{"identity": "http://x"}]},
        {"ports": [80], "deny": [{"namespace": "n%d" % i} for i in range(65)]},
        {"ports": [80], "deny": [{"namespace": "a"}],
         "selector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}},
        {"ports": [80], "deny": [{"namespace": "a"}], "selector": {"matchLabels": {"app": 1}}},
    ]
    for s in bad:
        assert list(check.iter_errors(obj(s))), s
    # The CRD itself against the Kubernetes API's own schemas (kubernetes-models).
    import k8schart as kc
    assert kc.validate([crd]) == {}


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
