# SPDX-License-Identifier: Apache-2.0
"""Sidecar certificates from shunt-ca (the "ca" certificate source), with a
real shunt-ca and the Kubernetes API stand-in (TokenReview, minted projected
tokens) in a control-plane pod, and shuntd in two pods:

- each sidecar's certificate carries exactly its token's identity (seen with
  openssl s_client against the inbound port, using a certificate the CA
  issued to openssl's own CSR), mTLS works between the two sidecars, and no
  file of either sidecar holds a private key; an override that disagrees
  with the token stops start-up with one line;
- renewal with a short lifetime while a connection streams through both
  sidecars; the CA down for longer than a renewal period (nothing dropped,
  new connections still served, /certs shows retrying), then back (renewal
  resumes); a token rotated on disk is what the next request uses."""

import hashlib
import json
import os
import random
import time

import pytest
from cryptography import x509

import ca_plane
import mtls_pki as pki
import shuntca
import shuntlib as sl
import sidecar_pair
from shuntlib import Topology as T

VIP_WEB, VIP_ECHO = "10.96.0.40", "10.96.0.41"
NS = "shop"
CART_ID = "spiffe://cluster.local/ns/shop/sa/cart"
WEB_ID = "spiffe://cluster.local/ns/shop/sa/web"
TESTER_ID = "spiffe://cluster.local/ns/shop/sa/tester"
LIFETIME_S = 18  # renewed every 12 s


def registry():
    def svc(name, vip, port):
        return sl.service(
            name, vip, port, [T.REMOTE4], "TCP", port_name="p", service_port=port, identity=WEB_ID
        )

    return {"services": [svc("web", VIP_WEB, 8080), svc("echo", VIP_ECHO, 7000)]}


class Mesh(sidecar_pair.Mesh):
    def __init__(self, lifetime):
        self.cp = None
        super().__init__(("web-peer", "echo"))
        os.chmod(self.tmp, 0o755)
        self.cp = ca_plane.ControlPlane([self.topo.app, self.topo.remote], lifetime=lifetime)
        self.bundle = self.cp.bundle(self.path("bundle/ca.crt"))
        self.tokens = {"a": self.path("a/token"), "b": self.path("b/token")}
        self.cp.write_token(self.tokens["a"], NS, "cart")
        self.cp.write_token(self.tokens["b"], NS, "web")

    def path(self, name):
        p = os.path.join(self.tmp, name)
        os.makedirs(os.path.dirname(p), mode=0o755, exist_ok=True)
        return p

    def flags(self, side, **extra):
        f = {
            "mtls.ca-address": ca_plane.CA_ADDRESS,
            "mtls.ca-bundle": self.bundle,
            "mtls.ca-token-file": self.tokens[side],
            "mtls.service-name": None,  # not used by the ca source
        }
        f.update(extra)
        return f

    def start(self):
        return super().start(
            registry(),
            a_flags=self.flags("a", **{"exclude-outbound-ports": "15001"}),
            b_flags=self.flags("b"),
            built_in_ca=False,
        )

    def close(self):
        try:
            super().close()
        finally:
            if self.cp:
                self.cp.close()


@pytest.fixture
def mesh_long():
    m = Mesh("1h")
    try:
        yield m
    finally:
        m.close()


@pytest.fixture
def mesh_short():
    m = Mesh("%ds" % LIFETIME_S)
    try:
        yield m
    finally:
        m.close()


def certs(d):
    return d.json("/certs")


def uri_sans(cert):
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    return san.get_values_for_type(x509.UniformResourceIdentifier), san.get_values_for_type(
        x509.DNSName
    )


def ca_issue(mesh, name, spiffe_id, ns, sa):
    """A certificate from shunt-ca for a key and CSR made by openssl (as any
    workload could): returns (cert path, key path)."""
    key, csr = shuntca.make_csr(os.path.dirname(mesh.path(name + "/x")), san="URI:" + spiffe_id,
                                name="tls")  # fmt: skip
    status, _, out = mesh.cp.ca.certificate(mesh.cp.api.token(ns, sa), csr)
    assert status == 200 and out.get("spiffe_id") == spiffe_id, (status, out)
    cert = mesh.path(name + "/tls.crt")
    with open(cert, "w") as f:
        f.write(out["certificate_chain"])
    return cert, key


def served_cert(mesh, cert, key):
    """openssl s_client to B's inbound port with a CA-issued client
    certificate: the certificate B presents, and what came back."""
    argv = ["openssl", "s_client", "-connect", "%s:15001" % T.REMOTE4, "-servername",
            "port-8080.cluster.local", "-tls1_3", "-ign_eof", "-showcerts", "-verify_return_error",
            "-CAfile", mesh.bundle, "-cert", cert, "-key", key]  # fmt: skip
    r = mesh.topo.app.run(argv, timeout=20, check=False, input="GET /s HTTP/1.0\r\n\r\n")
    out = r.stdout
    i = out.find("-----BEGIN CERTIFICATE-----")
    assert i >= 0, out + r.stderr
    pem = out[i : out.find("-----END CERTIFICATE-----", i) + 25]
    return x509.load_pem_x509_certificate(pem.encode()), out, r.stderr


def test_identity_from_token(mesh_long):
    mesh = mesh_long
    a, b = mesh.start()
    for d, want in ((a, CART_ID), (b, WEB_ID)):
        c = certs(d)
        assert c["identity"] == want, c
        assert c["source"] == "ca" and c["ca_address"] == ca_plane.CA_ADDRESS, c
        assert c["identity_from"] == "token", c
        li = c["last_issuance"]
        assert li["result"] == "ok" and li["requested"] == want, li
        assert li["last_serial"] == c["current"]["serial"], c
        # The peers' trust is the bundle the CA returned (its root).
        assert len(c["trust_bundle"]) >= 1, c
    assert "ca:" in sl.shuntctl(b.pod, "certs").stdout

    # The certificate on B's inbound port holds exactly B's token identity.
    cert, key = ca_issue(mesh, "tester", TESTER_ID, NS, "tester")
    served, out, err = served_cert(mesh, cert, key)
    uris, dns = uri_sans(served)
    assert uris == [WEB_ID] and dns == [], (uris, dns)
    assert pki.serial_hex(served.serial_number) == certs(b)["current"]["serial"]
    assert "HTTP/1.1 200" in out, out + err
    # Through both sidecars: A presents cart's certificate, B accepts it.
    assert mesh.curl_ok(VIP_WEB, "/through")
    # Each side saw the other's exact identity in its handshake (debug lines).
    for d, peer, way in ((b, CART_ID, "inbound"), (a, WEB_ID, "outbound")):
        sl.wait_until(
            lambda d=d, p=peer, w=way: any(
                m.startswith(w + " TLS handshake done: peer %s serial" % p) for m in msgs(d)
            ),
            5,
            what="%s handshake with %s" % (way, peer),
        )

    # No file of either sidecar holds a private key: its token and bundle
    # directories, the built-in CA directory it was given (never created),
    # whatever it has open.
    paths = [mesh.path("a"), mesh.path("b"), mesh.path("bundle")]
    for d in (a, b):
        ca_dir = d.argv[d.argv.index("--mtls.ca-dir") + 1]
        assert not os.path.exists(ca_dir), ca_dir
        paths += sorted(ca_plane.open_files(d))
    assert ca_plane.private_key_files(paths) == [], paths
    # (the check can fail: the tester's directory does hold one)
    assert ca_plane.private_key_files([mesh.path("tester")]) == [key]

    # An override that disagrees with the token: refused at start, one line.
    r = mesh.cp.pod.run(
        [sl.SHUNTD] + sl.shuntd_args(**mesh.flags("a", **{
            "mtls.service-account": "other", "redirect": "off", "admin-port": "15903",
            "inbound-port": "15901", "outbound-port": "15902", "mtls.ca-dir": mesh.path("c/ca")})),
        timeout=60, check=False)  # fmt: skip
    assert r.returncode == 1, r.stderr[-2000:]
    errors = [json.loads(l)["msg"] for l in r.stderr.splitlines() if '"level":"error"' in l]
    assert any("spiffe://cluster.local/ns/shop/sa/other" in m for m in errors), errors


def msgs(d):
    return [l.get("msg", "") for l in d.log_lines()]


def test_renewal_outage_and_token_rotation(mesh_short):
    mesh = mesh_short
    a, b = mesh.start()
    first = {d: certs(d)["current"]["serial"] for d in (a, b)}
    rnd = random.Random(7)
    sent, got = hashlib.sha256(), hashlib.sha256()
    n_sent = n_got = 0
    s = mesh.topo.app.connect(VIP_ECHO, 7000)

    def pump(seconds, until=None):
        nonlocal n_sent, n_got
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            chunk = rnd.randbytes(rnd.randrange(1, 8192))
            s.sendall(chunk)
            back = sl.recv_exact(s, len(chunk), timeout=20)
            sent.update(chunk)
            got.update(back)
            n_sent += len(chunk)
            n_got += len(back)
            if until and until():
                return True
            time.sleep(0.02)
        return False

    def renewed(since):
        return all(certs(d)["current"]["serial"] != since[d] for d in (a, b))

    try:
        # A renewal on both sides, CA up.
        assert pump(LIFETIME_S, lambda: renewed(first)), "no renewal within the lifetime"
        second = {d: certs(d)["current"]["serial"] for d in (a, b)}
        down_at = time.monotonic()
        mesh.cp.ca.stop()
        # While it is down, A's token is replaced by one for another audience.
        mesh.cp.write_token(mesh.tokens["a"], NS, "cart", audience="someone-else")

        def retrying():
            return all(
                certs(d)["rotation"]["state"] == "retrying"
                and certs(d)["last_issuance"]["result"] == "unreachable"
                for d in (a, b)
            )

        assert pump(LIFETIME_S, retrying), "renewal did not fail while the CA was down"
        assert a.metric("shunt_tls_rotation_retrying") == 1
        # New connections are still served with the current certificates.
        assert mesh.curl_ok(VIP_WEB, "/during-outage")
        # Down for longer than a renewal period (two thirds of the lifetime).
        pump(max(0.0, LIFETIME_S * 2 / 3 + 1 - (time.monotonic() - down_at)))
        assert {d: certs(d)["current"]["serial"] for d in (a, b)} == second
        mesh.cp.ca.start()

        # B's renewal resumes; A's next request carries the rotated token,
        # which the CA refuses for its audience.
        def b_ok_a_refused():
            cb, ca_ = certs(b), certs(a)
            return (
                cb["current"]["serial"] != second[b]
                and cb["rotation"]["state"] != "retrying"
                and ca_["last_issuance"]["result"] == "wrong_audience"
            )

        assert pump(20, b_ok_a_refused), (certs(a)["last_issuance"], certs(b)["rotation"])
        assert certs(a)["last_issuance"]["http_status"] == 401
        assert certs(a)["current"]["serial"] == second[a]
        # A token for shunt-ca again: the next request (at once: the file
        # changed after a failure) uses it.
        mesh.cp.write_token(mesh.tokens["a"], NS, "cart")
        assert pump(
            10, lambda: certs(a)["current"]["serial"] != second[a]
        ), certs(a)["last_issuance"]
        assert certs(a)["identity"] == CART_ID
        assert certs(a)["last_issuance"]["result"] == "ok"
        assert mesh.curl_ok(VIP_WEB, "/after")
        s.shutdown(1)
        assert sl.recv_all(s, timeout=10) == b""
    finally:
        s.close()
    assert n_sent == n_got and n_sent > 0
    assert sent.hexdigest() == got.hexdigest(), "bytes lost or reordered"

    def stream_lines():
        return [l for l in a.access_lines("tcp") if l["destination"] == "%s:7000" % VIP_ECHO]

    sl.wait_until(stream_lines, 5, what="the stream's access line")
    lines = stream_lines()
    assert len(lines) == 1 and lines[0]["end"] == "done", lines
    assert (lines[0]["bytes_received"], lines[0]["bytes_sent"]) == (n_sent, n_got), lines[0]
    fails = [m for m in msgs(a) + msgs(b) if "certificate renewal" in m and "failed" in m]
    assert any("unreachable" in m for m in fails), fails
    assert any("wrong_audience" in m for m in msgs(a) if "failed" in m)
