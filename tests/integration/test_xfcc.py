# SPDX-License-Identifier: Apache-2.0
"""Inbound HTTP through the request engines and X-Forwarded-Client-Cert
(issue 14, D11): two pods with shuntd and certificates from an external CA
(so the test knows each side's certificate), an HTTP/1.1 backend and an
HTTP/2 + gRPC backend in the server pod that answer with every request
field they received. Through the mesh the application sees exactly one
XFCC, By= its own identity, Hash= the SHA-256 of the client sidecar's
certificate, URI= the client's identity; a forged one never arrives; each
mtls.forward_client_cert mode does what the README says (checked with a
mesh client of our own, openssl s_client, that sends its own XFCC); plaintext
in permissive mode never gets one. Bodies, keep-alive, pipelining and many
HTTP/2 streams keep working now that inbound HTTP is proxied per request."""

import hashlib
import json
import os
import re
import signal

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

import mtls_pki as pki
import shuntlib as sl
import sidecar_pair
from shuntlib import Topology as T
from sidecar_pair import H1_PORT, H2_PORT

VIP_WEB, VIP_H2, VIP_GRPC = "10.96.0.40", "10.96.0.41", "10.96.0.42"
WEB_ID = pki.spiffe("web")
CLIENT_ID = pki.spiffe("client")
TESTER_ID = pki.spiffe("tester")
FORGED = "By=spiffe://cluster.local/ns/default/sa/web;URI=spiffe://cluster.local/ns/kube-system/sa/admin"
BIG = 3 * 1024 * 1024 + 7

GRPC_CLIENT = r"""
import json, sys
import grpc
ch = grpc.insecure_channel(sys.argv[1], options=[("grpc.enable_http_proxy", 0)])
call = ch.unary_unary("/shunt.Test/Meta", request_serializer=lambda b: b,
                      response_deserializer=lambda b: b)
out = []
for n in (10, 200000):
    reply = call(b"x" * n, timeout=10,
                 metadata=[("x-forwarded-client-cert", sys.argv[2])])
    out.append(json.loads(reply))
print(json.dumps(out))
"""


def cert_hash(pem_path):
    with open(pem_path, "rb") as f:
        cert = x509.load_pem_x509_certificate(f.read())
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def registry():
    def svc(name, vip, port, proto):
        return sl.service(
            name, vip, port, [T.REMOTE4], proto, port_name="p", service_port=port, identity=WEB_ID
        )

    return {
        "services": [
            svc("web", VIP_WEB, H1_PORT, None),  # sniffed
            svc("web2", VIP_H2, H2_PORT, "HTTP2"),
            svc("rpc", VIP_GRPC, H2_PORT, "GRPC"),
        ]
    }


def mode_config(mode):
    return {"mtls": {"forward_client_cert": mode}}


@pytest.fixture(scope="module")
def mesh():
    with sidecar_pair.mesh(("web", "web2")) as m:
        tmp = m.tmp
        ca = pki.CA()
        os.makedirs(os.path.join(tmp, "ca"))
        pki.write_bundle(os.path.join(tmp, "ca", "ca.pem"), ca)
        bundle = os.path.join(tmp, "ca", "ca.pem")
        files = {}
        for name, uri in (("a", CLIENT_ID), ("b", WEB_ID)):
            pem, key, _, _ = ca.issue_files(tmp, name, uri)
            files[name] = {
                "mtls.certificate-file": pem,
                "mtls.private-key-file": key,
                "mtls.ca-bundle": bundle,
            }
        a, b = m.start(
            registry(),
            a_flags=files["a"],
            b_flags=files["b"],
            b_config=mode_config("sanitize_set"),
            built_in_ca=False,
        )
        tester, _ = pki.client_files(tmp, ca, "tester", TESTER_ID)
        hashes = {"a": cert_hash(files["a"]["mtls.certificate-file"]),
                  "tester": cert_hash(tester[1])}  # fmt: skip
        yield m.topo, a, b, tester, hashes


def xfcc_of(fields):
    return [v for k, v in fields if k.lower() == "x-forwarded-client-cert"]


def ours(hash_hex, uri):
    return "By=%s;Hash=%s;URI=%s" % (WEB_ID, hash_hex, uri)


def set_mode(b, mode):
    n = b.metric("shunt_config_reloads_total", default=0.0)
    b.write_config(mode_config(mode))
    b.signal(signal.SIGHUP)
    b.wait_metric("shunt_config_reloads_total", lambda v: v > n, timeout=10)


def h1_json(r):
    assert r.returncode == 0, r.stdout + r.stderr
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def direct(topo, tester, data):
    """Our own mesh client (the tester's certificate) straight to B's
    application port: what B gives the application for what it sent."""
    r = pki.s_client(topo.app, T.REMOTE4, tester, sni_port=H1_PORT, data=data)
    return [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]


def req(path, extra="", last=True):
    return "GET %s HTTP/1.1\r\nHost: web\r\n%s%s\r\n" % (
        path, extra, "Connection: close\r\n" if last else "")  # fmt: skip


def test_http1_through_the_mesh(mesh):
    """curl through A (outbound engine, mTLS) to B (inbound engine): each
    request of a keep-alive connection carries exactly one XFCC, B's
    own; the client's forged one is gone; a large body keeps its bytes."""
    topo, a, b, tester, hashes = mesh
    want = ours(hashes["a"], CLIENT_ID)
    url = "http://%s:%d/" % (VIP_WEB, H1_PORT)
    r = topo.app.curl(["-H", "X-Forwarded-Client-Cert: " + FORGED, url, url, url])
    out = h1_json(r)
    assert len(out) == 3, r.stdout
    for o in out:
        assert xfcc_of(o["fields"]) == [want], o
    big = os.path.join(sl.tmpdir(), "big.bin")
    with open(big, "wb") as f:
        f.write(os.urandom(BIG))
    r = topo.app.curl(["--data-binary", "@" + big, url + "post"])
    (o,) = h1_json(r)
    assert o["body_len"] == BIG and xfcc_of(o["fields"]) == [want], o
    # A large response through B's engine and its TLS client side.
    r = topo.app.curl(["-o", "/dev/null", "-w", "%{size_download}", url + "bytes/%d" % BIG])
    assert r.returncode == 0 and r.stdout == str(BIG), r.stdout + r.stderr
    # B proxied them request by request (its access lines say so).
    sl.wait_until(lambda: any(l["direction"] == "inbound" and l["protocol"] == "http1"
                              for l in b.access_lines("http")), 10, what="B's inbound http1 access lines")


def test_http1_pipelined_on_mesh_tls(mesh):
    """Three pipelined requests in one TLS connection to B's inbound
    engine: three answers in order, each with the client's identity."""
    topo, a, b, tester, hashes = mesh
    data = req("/p1", last=False) + req("/p2", last=False) + req("/p3")
    out = direct(topo, tester, data)
    assert [o["path"] for o in out] == ["/p1", "/p2", "/p3"], out
    for o in out:
        assert xfcc_of(o["fields"]) == [ours(hashes["tester"], TESTER_ID)], o


def test_http1_trailer_carries_no_identity(mesh):
    """An XFCC in a chunked request's trailer is refused (400) before
    anything reaches the application, like the other authorizing fields."""
    topo, a, b, tester, hashes = mesh
    data = ("POST /t HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
            "4\r\nbody\r\n0\r\nX-Forwarded-Client-Cert: " + FORGED + "\r\n\r\n")  # fmt: skip
    r = pki.s_client(topo.app, T.REMOTE4, tester, sni_port=H1_PORT, data=data)
    assert r.stdout.startswith("HTTP/1.1 400"), r.stdout + r.stderr
    assert "trailer" in r.stdout, r.stdout


def test_http2_through_the_mesh(mesh):
    """nghttp: 40 concurrent streams on one connection; curl with HTTP/2
    prior knowledge: a 3 MB body; each with exactly one XFCC."""
    topo, a, b, tester, hashes = mesh
    want = ours(hashes["a"], CLIENT_ID)
    url = "http://%s:%d/s" % (VIP_H2, H2_PORT)
    r = topo.app.run(["nghttp", "-m", "40", "-H", "x-forwarded-client-cert: " + FORGED, url],
                     timeout=30, check=False)  # fmt: skip
    out = h1_json(r)
    assert len(out) == 40, r.stdout + r.stderr
    for o in out:
        assert xfcc_of(o["headers"]) == [want], o
    big = os.path.join(sl.tmpdir(), "big2.bin")
    data = os.urandom(BIG)
    with open(big, "wb") as f:
        f.write(data)
    r = topo.app.curl(["--http2-prior-knowledge", "--data-binary", "@" + big, url + "big"])
    (o,) = h1_json(r)
    assert o["body_len"] == BIG and o["sha256"] == hashlib.sha256(data).hexdigest(), o
    assert xfcc_of(o["headers"]) == [want], o
    # Large responses on concurrent streams, paced by the windows end to end.
    r = topo.app.run(["nghttp", "-n", "-s", "-m", "4", url.replace("/s", "/bytes/%d" % BIG)],
                     timeout=60, check=False)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    # nghttp -s: one line per stream "id end start process code size path".
    assert len(re.findall(r"^\s*\d+\s+\S+\s+\S+\s+\S+\s+200\s+3M\s+/bytes/", r.stdout, re.M)) == 4, r.stdout
    r = topo.app.curl(["--http2-prior-knowledge", "-o", "/dev/null", "-w", "%{size_download}",
                       url.replace("/s", "/bytes/%d" % BIG)])  # fmt: skip
    assert r.returncode == 0 and r.stdout == str(BIG), r.stdout + r.stderr


H2_TRAILERS_CLIENT = r"""
import json, socket, sys
import h2.connection, h2.events
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
c = h2.connection.H2Connection()
c.initiate_connection()
sid = c.get_next_available_stream_id()
c.send_headers(sid, [(":method", "POST"), (":path", "/t"), (":scheme", "http"),
                     (":authority", "web2"), ("te", "trailers")])
c.send_data(sid, b"body")
c.send_headers(sid, [("x-forwarded-client-cert", sys.argv[3]), ("x-trailer", "kept")],
               end_stream=True)
s.sendall(c.data_to_send())
body, done = b"", False
while not done:
    data = s.recv(65536)
    if not data:
        break
    for ev in c.receive_data(data):
        if isinstance(ev, h2.events.DataReceived) and ev.stream_id == sid:
            body += ev.data
            c.acknowledge_received_data(ev.flow_controlled_length, sid)
        elif isinstance(ev, h2.events.StreamEnded) and ev.stream_id == sid:
            done = True
    s.sendall(c.data_to_send())
print(body.decode())
"""


def test_http2_trailers_carry_no_identity(mesh):
    """An XFCC in a request's trailers (python3-h2 as the client) never
    reaches the application; the other trailer fields do."""
    topo, a, b, tester, hashes = mesh
    r = topo.app.run(["/usr/bin/python3", "-c", H2_TRAILERS_CLIENT, VIP_H2, str(H2_PORT), FORGED],
                     timeout=30, check=False)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    o = json.loads(r.stdout)
    assert o["body_len"] == 4 and o["trailers"] == [["x-trailer", "kept"]], o
    assert xfcc_of(o["headers"]) == [ours(hashes["a"], CLIENT_ID)], o


def test_grpc_through_the_mesh(mesh):
    """A grpcio client (metadata with a forged XFCC), a small and a large
    message: the server's handler sees the client sidecar's identity."""
    topo, a, b, tester, hashes = mesh
    r = topo.app.run(["/usr/bin/python3", "-c", GRPC_CLIENT, "%s:%d" % (VIP_GRPC, H2_PORT), FORGED],
                     timeout=30, check=False)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    out = json.loads(r.stdout)
    assert [o["body_len"] for o in out] == [10 + 5, 200000 + 5]  # with gRPC's message prefix
    for o in out:
        assert xfcc_of(o["headers"]) == [ours(hashes["a"], CLIENT_ID)], o


def test_each_mode(mesh):
    """The tester's own XFCC straight to B, under each mode."""
    topo, a, b, tester, hashes = mesh
    mine = ours(hashes["tester"], TESTER_ID)
    data = req("/m", "X-Forwarded-Client-Cert: " + FORGED + "\r\n")
    try:
        for mode, want in (
            ("sanitize", []),
            ("forward_only", [FORGED]),
            ("append_forward", [FORGED + "," + mine]),
            ("sanitize_set", [mine]),
        ):
            set_mode(b, mode)
            (o,) = direct(topo, tester, data)
            assert xfcc_of(o["fields"]) == want, (mode, o)
        set_mode(b, "append_forward")
        # Two fields from the client: both kept, in order, ours last.
        (o,) = direct(topo, tester, req("/m2", "X-Forwarded-Client-Cert: e1\r\n"
                                               "X-Forwarded-Client-Cert: e2\r\n"))  # fmt: skip
        assert xfcc_of(o["fields"]) == ["e1,e2," + mine], o
    finally:
        set_mode(b, "sanitize_set")


def test_outbound_strips_what_the_application_wrote(mesh):
    """forward_only keeps what arrives over mesh TLS: what A's application
    wrote still never arrives, HTTP/1.1 or HTTP/2 (A removes it)."""
    topo, a, b, tester, hashes = mesh
    try:
        set_mode(b, "forward_only")
        r = topo.app.curl(["-H", "X-Forwarded-Client-Cert: " + FORGED,
                           "http://%s:%d/o" % (VIP_WEB, H1_PORT)])  # fmt: skip
        (o,) = h1_json(r)
        assert xfcc_of(o["fields"]) == [], o
        r = topo.app.curl(["--http2-prior-knowledge", "-H", "x-forwarded-client-cert: " + FORGED,
                           "http://%s:%d/o" % (VIP_H2, H2_PORT)])  # fmt: skip
        (o,) = h1_json(r)
        assert xfcc_of(o["headers"]) == [], o
    finally:
        set_mode(b, "sanitize_set")


def test_plaintext_gets_no_identity(mesh):
    """Permissive mode, plaintext to B (A relays traffic to a non-service
    address as it is): nothing verified, so nothing is set and what the
    client sent is removed, in every mode."""
    topo, a, b, tester, hashes = mesh
    try:
        for mode in ("sanitize_set", "forward_only"):
            set_mode(b, mode)
            r = topo.app.curl(["-H", "X-Forwarded-Client-Cert: " + FORGED,
                               "http://%s:%d/plain" % (T.REMOTE4, H1_PORT)])  # fmt: skip
            (o,) = h1_json(r)
            assert xfcc_of(o["fields"]) == [], (mode, o)
            r = topo.app.curl(["--http2-prior-knowledge", "-H",
                               "x-forwarded-client-cert: " + FORGED,
                               "http://%s:%d/plain" % (T.REMOTE4, H2_PORT)])  # fmt: skip
            (o,) = h1_json(r)
            assert xfcc_of(o["headers"]) == [], (mode, o)
    finally:
        set_mode(b, "sanitize_set")
