# SPDX-License-Identifier: Apache-2.0
"""Trust-domain federation (issue 21 item 3): two pods, two trust domains,
two CAs. shuntd A (cluster.local, CA A) federates other.example with B's
root as a PEM file; shuntd B (other.example, CA B) federates cluster.local
with A's root in the SPIFFE bundle format. A reaches B's web service over
mTLS, each side verifying the other against the bundle of the peer's own
trust domain. Certificates crafted with openssl and presented by
openssl s_client: a SPIFFE ID of one domain signed by the other domain's CA
is refused (wrong_domain_chain), a domain neither ours nor federated is
refused, B's policy names identities of A's domain. B's federated bundle
is rotated to a new root (A refused: untrusted_ca), a broken version is
refused while the last good one stays, and the overlap of both roots
brings A back."""

import base64
import json
import os
import subprocess

import pytest

import mtls_pki as pki
import shuntlib as sl
from shuntlib import Topology as T
from test_mtls import issue as openssl_issue

TD_A, TD_B = "cluster.local", "other.example"
VIP_WEB = "10.96.0.60"
CLIENT_ID = pki.spiffe("client", td=TD_A)  # A's own identity
WEB_ID = pki.spiffe("web", td=TD_B)  # B's
TESTER_A = pki.spiffe("tester", td=TD_A)


def spiffe_bundle(*cas):
    """A SPIFFE trust bundle (JWK set): one x509-svid key per root."""
    from cryptography.hazmat.primitives import serialization

    keys = [
        {
            "use": "x509-svid",
            "kty": "EC",
            "crv": "P-256",
            "x5c": [base64.b64encode(c.cert.public_bytes(serialization.Encoding.DER)).decode()],
        }
        for c in cas
    ]
    return json.dumps({"spiffe_sequence": 1, "spiffe_refresh_hint": 60, "keys": keys}).encode()


def write_ca_dir(d, ca):
    os.makedirs(d, mode=0o700, exist_ok=True)
    pki._write(os.path.join(d, "ca.pem"), ca.pem, 0o644)
    pki._write(os.path.join(d, "ca-key.pem"), pki.key_pem(ca.key))


def issue(tmp, name, ca_dir, uri):
    """A client certificate made by the real openssl with the CA in ca_dir."""
    return openssl_issue(tmp, name, os.path.join(ca_dir, "ca.pem"),
                         os.path.join(ca_dir, "ca-key.pem"), uri)  # fmt: skip


@pytest.fixture(scope="module")
def fed():
    topo = T()
    procs, daemons = [], []
    try:
        topo.route_vips()
        procs.append(topo.remote.spawn_peer("http", "web", ["%s:8080" % T.REMOTE4]))
        tmp = sl.tmpdir()
        ca_a, ca_b = pki.CA("root A"), pki.CA("root B")
        dir_a, dir_b = os.path.join(tmp, "ca-a"), os.path.join(tmp, "ca-b")
        write_ca_dir(dir_a, ca_a)
        write_ca_dir(dir_b, ca_b)
        b_bundle_of_a = os.path.join(tmp, "bundle-cluster.local.json")  # B's view of A
        a_bundle_of_b = os.path.join(tmp, "bundle-other.example.pem")  # A's view of B
        pki._write(b_bundle_of_a, spiffe_bundle(ca_a), 0o644)
        pki.write_bundle(a_bundle_of_b, ca_b)
        reg = sl.registry_file(
            {
                "services": [
                    sl.service("web", VIP_WEB, 8080, [T.REMOTE4], "HTTP", port_name="http",
                               service_port=8080, identity=WEB_ID),
                ]
            },
            tmp,
        )  # fmt: skip
        a = sl.Shuntd(
            topo.app,
            sl.shuntd_args(**{"mtls.ca-dir": dir_a, "mtls.service-name": "client",
                              "service-discovery.file.path": reg,
                              "exclude-outbound-ports": "15001"}),
            config={"mtls": {"trust_domain": TD_A,
                             "federation": [{"trust_domain": TD_B, "bundle_file": a_bundle_of_b}]}},
            name="shuntd-a",
        )  # fmt: skip
        daemons.append(a)
        a.wait_ready()
        policy = {
            "name": "web",
            "ports": [8080],
            # {"namespace": "default"} is B's own default namespace only:
            # it does not admit cluster.local/ns/default/... (stranger-a).
            "allow": [{"identity": CLIENT_ID}, {"identity": TESTER_A}, {"namespace": "default"}],
        }
        b = sl.Shuntd(
            topo.remote,
            sl.shuntd_args(**{"mtls.ca-dir": dir_b, "mtls.service-name": "web"}),
            config={"mtls": {"trust_domain": TD_B,
                             "federation": [{"trust_domain": TD_A, "bundle_file": b_bundle_of_a}]},
                    "authorization": {"policies": [policy]}},
            name="shuntd-b",
        )  # fmt: skip
        daemons.append(b)
        b.wait_ready()
        yield topo, a, b, tmp, ca_a, dir_a, dir_b, b_bundle_of_a
    finally:
        sl.teardown(topo, daemons, procs)


def get_web(topo):
    return topo.app.curl(["-s", "-m", "5", "http://%s:8080/fed" % VIP_WEB])


def refusals(d, reason):
    return [l for l in d.log_text().splitlines() if "reason=" + reason in l]


def test_cross_domain_mtls(fed):
    topo, a, b, *_ = fed
    r = get_web(topo)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["server"] == "web"
    # Each side verified the other against the bundle of the other's domain.
    assert a.metric("shunt_tls_federation_handshakes_total", trust_domain=TD_B,
                    direction="outbound", result="ok") >= 1  # fmt: skip
    assert b.metric("shunt_tls_federation_handshakes_total", trust_domain=TD_A,
                    direction="inbound", result="ok") >= 1  # fmt: skip
    status, body = b.get("/certs")
    assert status == 200
    certs = json.loads(body)
    assert certs["trust_domain"] == TD_B
    (f,) = certs["federation"]
    assert f["trust_domain"] == TD_A and f["format"] == "spiffe" and len(f["cas"]) == 1, f


def test_wrong_domain_chains_refused(fed):
    """openssl s_client straight to B's inbound port with crafted certs."""
    topo, a, b, tmp, ca_a, dir_a, dir_b, _ = fed
    ca_b_pem = os.path.join(dir_b, "ca.pem")

    def s_client(name, ca_dir, uri):
        pem, key = issue(tmp, name, ca_dir, uri)
        return pki.s_client(
            topo.app, T.REMOTE4,
            ["-cert", pem, "-key", key, "-CAfile", ca_b_pem, "-verify_return_error"],
        )  # fmt: skip

    before = b.metric("shunt_tls_handshake_failures_total", 0, direction="inbound",
                      reason="wrong_domain_chain")  # fmt: skip
    # A's domain, A's CA, named by B's policy: served.
    r = s_client("tester-a", dir_a, TESTER_A)
    assert "HTTP/1.1 200" in r.stdout, r.stdout + r.stderr
    # A's domain signed by B's CA: not accepted as cluster.local.
    r = s_client("claims-a", dir_b, TESTER_A)
    assert "HTTP/1.1 200" not in r.stdout
    # B's own domain signed by A's CA: not accepted as other.example.
    r = s_client("claims-b", dir_a, pki.spiffe("tester", td=TD_B))
    assert "HTTP/1.1 200" not in r.stdout
    sl.wait_until(lambda: len(refusals(b, "wrong_domain_chain")) >= 2, 5, what="audit lines")
    lines = refusals(b, "wrong_domain_chain")
    assert any("names trust domain cluster.local but the chain leads to the bundle of "
               "other.example" in l for l in lines), lines  # fmt: skip
    assert any("names trust domain other.example but the chain leads to the bundle of "
               "cluster.local" in l for l in lines), lines  # fmt: skip
    assert b.metric("shunt_tls_handshake_failures_total", direction="inbound",
                    reason="wrong_domain_chain") == before + 2  # fmt: skip
    # A domain neither B's nor federated (B's own CA signed it).
    r = s_client("third", dir_b, pki.spiffe("tester", td="third.example"))
    assert "HTTP/1.1 200" not in r.stdout
    sl.wait_until(lambda: any("nor federated" in l for l in refusals(b, "wrong_trust_domain")),
                  5, what="wrong_trust_domain audit")  # fmt: skip
    # A's domain and CA, but an identity B's policy does not name (its
    # namespace principal means B's own domain).
    r = s_client("stranger-a", dir_a, pki.spiffe("stranger", td=TD_A))
    assert "HTTP/1.1 200" not in r.stdout
    sl.wait_until(lambda: refusals(b, "not_allowed"), 5, what="not_allowed audit")


def test_bundle_reload(fed):
    """B's bundle for cluster.local: a new root only (A's certificates
    refused), a broken file (refused, the last one stays), then both roots
    (accepted again). New handshakes (openssl s_client with a certificate of
    A's CA) see each version; A's own pooled connection is not cut."""
    topo, a, b, tmp, ca_a, dir_a, dir_b, bundle = fed
    ca_new = pki.CA("root A2")
    pem, key = issue(tmp, "tester-reload", dir_a, TESTER_A)
    args = ["-cert", pem, "-key", key, "-CAfile", os.path.join(dir_b, "ca.pem")]

    def served():
        return "HTTP/1.1 200" in pki.s_client(topo.app, T.REMOTE4, args).stdout

    def reloads(result):
        return b.metric("shunt_tls_federation_bundle_reloads_total", 0, trust_domain=TD_A,
                        result=result)  # fmt: skip

    assert served()
    ok0, err0 = reloads("ok"), reloads("error")
    untrusted0 = len(refusals(b, "untrusted_ca"))
    try:
        pki._write(bundle, spiffe_bundle(ca_new), 0o644)
        sl.wait_until(lambda: reloads("ok") == ok0 + 1, 10, what="bundle reloaded")
        assert not served()
        sl.wait_until(lambda: len(refusals(b, "untrusted_ca")) > untrusted0, 5,
                      what="untrusted_ca audit")  # fmt: skip
        pki._write(bundle, b'{"keys": 3}', 0o644)
        sl.wait_until(lambda: reloads("error") == err0 + 1, 10, what="broken bundle refused")
        assert "new bundle refused" in b.log_text()
        assert not served()  # the new root only, still
    finally:
        pki._write(bundle, spiffe_bundle(ca_a, ca_new), 0o644)
    sl.wait_until(lambda: reloads("ok") == ok0 + 2, 10, what="overlap bundle reloaded")
    assert served()
    assert get_web(topo).returncode == 0
    f = json.loads(b.get("/certs")[1])["federation"][0]
    assert len(f["cas"]) == 2 and f["last_error"] is None and f["reloads"] == 2, f


@pytest.mark.parametrize("entries,want", [
    ([{"trust_domain": TD_A, "bundle_file": "/x"}], "is our own"),
    ([{"trust_domain": TD_B, "bundle_file": "/nonexistent/b.pem"}], "/nonexistent/b.pem"),
    ([{"trust_domain": TD_B}], "expected {"),
    ({"trust_domain": TD_B}, "expected a JSON array"),
])
def test_bad_federation_config(entries, want):
    """One line naming the key and what is wrong; exit 2."""
    d = sl.tmpdir()
    path = os.path.join(d, "bad.json")
    with open(path, "w") as f:
        json.dump({"mtls": {"ca_dir": os.path.join(d, "ca"), "federation": entries}}, f)
    p = subprocess.run([sl.SHUNTD, "--config", path], capture_output=True, text=True, timeout=30)
    assert p.returncode == 2, p.stdout + p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config: mtls.federation: "), lines
    assert want in lines[0], lines
