# SPDX-License-Identifier: Apache-2.0
"""Certificate and CA rotation under traffic, two pods with shuntd each:

- workload certificates of a 15 s lifetime renew (every 10 s) while one
  connection streams data through both sidecars for a minute: every byte arrives in
  order, nothing is reset, new handshakes present the new serials, and each
  rotation is audited (old and new serial, not-after);
- CA rotation with overlap, the way an external CA does it (a Kubernetes
  Secret mount: tls.crt, tls.key, ca.crt swapped atomically): the bundle
  holds the old and the new root while peers move over, and peers with
  certificates from either CA connect;
- the same overlap with two built-in CAs, each sidecar trusting the other's
  root through mtls.ca_bundle."""

import hashlib
import os
import random
import re
import time

import pytest

import mtls_pki as pki
import shuntlib as sl
import sidecar_pair
from shuntlib import Topology as T

VIP_WEB, VIP_ECHO = "10.96.0.40", "10.96.0.41"
WEB_ID, CLIENT_ID, TESTER_ID = pki.spiffe("web"), pki.spiffe("client"), pki.spiffe("tester")

STREAM_S = 60
LIFETIME_S = 15


def registry():
    def svc(name, vip, port):
        return sl.service(
            name, vip, port, [T.REMOTE4], "TCP", port_name="p", service_port=port, identity=WEB_ID
        )

    return {"services": [svc("web", VIP_WEB, 8080), svc("echo", VIP_ECHO, 7000)]}


class Mesh(sidecar_pair.Mesh):
    """Two pods, the web and echo servers in the remote one, and a
    registry for pod A. start() takes each daemon's flags."""

    def __init__(self):
        super().__init__(("web-peer", "echo"))

    def start(self, a_flags, b_flags):
        a_flags = dict(a_flags, **{"exclude-outbound-ports": "15001"})
        return super().start(registry(), a_flags=a_flags, b_flags=b_flags, built_in_ca=False)


@pytest.fixture
def mesh():
    m = Mesh()
    try:
        yield m
    finally:
        m.close()


def msgs(d):
    return [l.get("msg", "") for l in d.log_lines()]


ROTATED = re.compile(
    r"audit: certificate rotated: identity=(\S+) old_serial=([0-9a-f]+) new_serial=([0-9a-f]+) "
    r"not_before=(\S+) not_after=(\S+);"
)


def rotations(d):
    return [m.groups() for m in map(ROTATED.search, msgs(d)) if m]


def failures(d):
    m = d.metrics()
    return {k: v for k, v in m.items() if k[0] == "shunt_tls_handshake_failures_total" and v}


def test_rotation_while_streaming(mesh):
    ca_dir = os.path.join(mesh.tmp, "ca")
    flags = {"mtls.ca-dir": ca_dir, "mtls.cert-rotation": "%ds" % LIFETIME_S}
    a, b = mesh.start(flags, flags)
    ca = pki.CA.load(ca_dir)
    tpem, tkey, _, _ = ca.issue_files(mesh.tmp, "tester", TESTER_ID)
    ca_pem = os.path.join(ca_dir, "ca.pem")
    first_a, first_b = a.json("/certs")["current"]["serial"], b.json("/certs")["current"]["serial"]

    rnd = random.Random(4)
    sent, got = hashlib.sha256(), hashlib.sha256()
    n_sent = n_got = 0
    served = []  # (serial a new handshake got, B's serials around it)
    s = mesh.topo.app.connect(VIP_ECHO, 7000)
    try:
        start = time.monotonic()
        next_probe = start
        while time.monotonic() - start < STREAM_S:
            chunk = rnd.randbytes(rnd.randrange(1, 16384))
            s.sendall(chunk)
            back = sl.recv_exact(s, len(chunk), timeout=20)
            sent.update(chunk)
            got.update(back)
            n_sent += len(chunk)
            n_got += len(back)
            if time.monotonic() >= next_probe:
                next_probe += 10
                before = b.json("/certs")["current"]["serial"]
                serial = pki.served_serial(mesh.topo.app, T.REMOTE4, ca_pem, tpem, tkey)
                after = b.json("/certs")["current"]["serial"]
                served.append((serial, before, after))
                assert mesh.curl_ok(VIP_WEB, "/during")
            time.sleep(0.02)
        # The stream's end: a half-close goes through and the echo server
        # closes its side: a clean end, no reset.
        s.shutdown(1)
        assert sl.recv_all(s, timeout=10) == b""
    finally:
        s.close()
    assert n_sent == n_got and n_sent > 0
    assert sent.hexdigest() == got.hexdigest(), "bytes lost or reordered"

    # The certificates rotated on both sides, several times.
    ra, rb = rotations(a), rotations(b)
    for d, r, first in ((a, ra, first_a), (b, rb, first_b)):
        # 60 s at one rotation per 10 s; at least 4 whatever the scheduling.
        assert len(r) >= 4, (d.pod.name, r)
        assert r[0][1] == first
        for prev, nxt in zip(r, r[1:]):
            assert prev[2] == nxt[1], "serials do not chain: %r %r" % (prev, nxt)
            assert nxt[4] > prev[4], "not_after did not move on"
        # /certs may show a rotation a moment before its audit line.
        sl.wait_until(
            lambda: d.json("/certs")["current"]["serial"] in [x[2] for x in rotations(d)],
            5,
            what="/certs agrees with the audit lines",
        )
    assert ra[0][0] == CLIENT_ID and rb[0][0] == WEB_ID

    # New handshakes presented B's current serial of the moment, and these
    # were several different serials over the minute.
    for serial, before, after in served:
        assert serial in (before, after), (serial, before, after)
    assert len({x[0] for x in served}) >= 3, served

    # One connection, ended cleanly; no handshake failed on either side.
    def stream_lines():
        return [l for l in a.access_lines("tcp") if l["destination"] == "%s:7000" % VIP_ECHO]

    sl.wait_until(stream_lines, 5, what="the stream's access line")
    lines = stream_lines()
    assert len(lines) == 1 and lines[0]["end"] == "done", lines
    assert (lines[0]["bytes_received"], lines[0]["bytes_sent"]) == (n_sent, n_got), lines[0]
    assert not failures(a) and not failures(b), (failures(a), failures(b))


def files_flags(mount):
    return {
        "mtls.certificate-file": mount.path("tls.crt"),
        "mtls.private-key-file": mount.path("tls.key"),
        "mtls.ca-bundle": mount.path("ca.crt"),
    }


def wait_serial(d, serial, what):
    sl.wait_until(lambda: d.json("/certs")["current"]["serial"] == serial, 10, what=what)


def wait_bundle(d, n, what):
    sl.wait_until(lambda: len(d.json("/certs")["trust_bundle"]) == n, 10, what=what)


def s_client_ok(mesh, cert, key, ca_pem):
    r = pki.s_client(mesh.topo.app, T.REMOTE4, ["-cert", cert, "-key", key, "-CAfile", ca_pem])
    return "HTTP/1.1 200" in r.stdout


def test_ca_rotation_files(mesh):
    """External CA rotation through Secret mounts: old root -> old + new ->
    new only, while a connection stays open."""
    old, new = pki.CA("old root"), pki.CA("new root")
    ma, mb = pki.SecretMount(os.path.join(mesh.tmp, "a")), pki.SecretMount(
        os.path.join(mesh.tmp, "b")
    )
    a_cert, a_key, a_serial = old.issue(CLIENT_ID)
    b_cert, b_key, b_serial = old.issue(WEB_ID, dns="web.default.svc.cluster.local")
    ma.publish(a_cert, a_key, old.pem)
    mb.publish(b_cert, b_key, old.pem)
    a, b = mesh.start(files_flags(ma), files_flags(mb))
    assert b.json("/certs")["source"] == "files"
    assert mesh.curl_ok(VIP_WEB)
    long_lived = mesh.topo.app.connect(VIP_ECHO, 7000)
    try:
        assert sl.echo(long_lived, b"old CA\n") == b"old CA\n"
        old_pem, old_key, _, _ = old.issue_files(mesh.tmp, "t-old", TESTER_ID)
        new_pem, new_key, _, _ = new.issue_files(mesh.tmp, "t-new", TESTER_ID)
        both = os.path.join(mesh.tmp, "both.pem")
        pki.write_bundle(both, old, new)
        n_untrusted = len([m for m in msgs(b) if "reason=untrusted_ca" in m])
        assert not s_client_ok(mesh, new_pem, new_key, both)  # B does not trust it yet
        sl.wait_until(
            lambda: len([m for m in msgs(b) if "reason=untrusted_ca" in m]) > n_untrusted,
            5,
            what="new-CA client refused before the overlap",
        )

        # 1. Overlap: every sidecar trusts both roots.
        ma.publish(a_cert, a_key, old.pem + new.pem)
        mb.publish(b_cert, b_key, old.pem + new.pem)
        wait_bundle(a, 2, "A trusts both")
        wait_bundle(b, 2, "B trusts both")
        # 2. B moves to the new CA; A still has the old one.
        b_cert2, b_key2, b_serial2 = new.issue(WEB_ID, dns="web.default.svc.cluster.local")
        mb.publish(b_cert2, b_key2, old.pem + new.pem)
        wait_serial(b, b_serial2, "B on the new CA")
        assert mesh.curl_ok(VIP_WEB, "/overlap")  # old-CA client -> new-CA server
        assert s_client_ok(mesh, old_pem, old_key, both)
        assert s_client_ok(mesh, new_pem, new_key, both)
        assert sl.echo(long_lived, b"overlap\n") == b"overlap\n"
        # 3. A moves too, then the old root leaves both bundles.
        a_cert2, a_key2, a_serial2 = new.issue(CLIENT_ID)
        ma.publish(a_cert2, a_key2, old.pem + new.pem)
        wait_serial(a, a_serial2, "A on the new CA")
        assert mesh.curl_ok(VIP_WEB, "/both-new")
        ma.publish(a_cert2, a_key2, new.pem)
        mb.publish(b_cert2, b_key2, new.pem)
        wait_bundle(a, 1, "A trusts the new root only")
        wait_bundle(b, 1, "B trusts the new root only")
        assert mesh.curl_ok(VIP_WEB, "/after")
        assert s_client_ok(mesh, new_pem, new_key, both)
        n_untrusted = len([m for m in msgs(b) if "reason=untrusted_ca" in m])
        assert not s_client_ok(mesh, old_pem, old_key, both)
        sl.wait_until(
            lambda: len([m for m in msgs(b) if "reason=untrusted_ca" in m]) > n_untrusted,
            5,
            what="old-CA client refused after the overlap",
        )
        # The connection opened under the old CA lives on.
        assert sl.echo(long_lived, b"still here\n") == b"still here\n"
    finally:
        long_lived.close()
    # Each swap was audited with both serials.
    ra, rb = rotations(a), rotations(b)
    assert any(r[1] == a_serial and r[2] == a_serial2 for r in ra), ra
    assert any(r[1] == b_serial and r[2] == b_serial2 for r in rb), rb


def test_ca_rotation_builtin(mesh):
    """Two built-in CAs (an old one in A's state directory, a new one in
    B's): with each other's root in mtls.ca_bundle, they connect; without
    it, they do not. The bundle file is watched: no restart."""
    old, new = pki.CA("old root"), pki.CA("new root")
    dirs = []
    for name, ca in (("ca-old", old), ("ca-new", new)):
        d = os.path.join(mesh.tmp, name)
        os.makedirs(d, mode=0o700)
        pki._write(os.path.join(d, "ca.pem"), ca.pem, 0o644)
        pki._write(os.path.join(d, "ca-key.pem"), pki.key_pem(ca.key))
        dirs.append(d)
    extra_a, extra_b = os.path.join(mesh.tmp, "extra-a.pem"), os.path.join(mesh.tmp, "extra-b.pem")
    pki.write_bundle(extra_a, old)
    pki.write_bundle(extra_b, new)
    a, b = mesh.start(
        {"mtls.ca-dir": dirs[0], "mtls.ca-bundle": extra_a},
        {"mtls.ca-dir": dirs[1], "mtls.ca-bundle": extra_b},
    )
    # Without overlap, A does not trust B's new root.
    assert not mesh.curl_ok(VIP_WEB, "/no-overlap")
    sl.wait_until(
        lambda: any("outbound" in m and "reason=untrusted_ca" in m for m in msgs(a)),
        5,
        what="A refuses the new root",
    )
    pki.write_bundle(extra_a, old, new)
    pki.write_bundle(extra_b, new, old)
    wait_bundle(a, 3, "A's bundle: its CA and the file's two")
    wait_bundle(b, 3, "B's bundle: its CA and the file's two")
    sl.wait_until(
        lambda: mesh.curl_ok(VIP_WEB, "/overlap"), 10, interval=0.3, what="overlap works"
    )
    subjects = {c["subject"] for c in b.json("/certs")["trust_bundle"]}
    assert any("old root" in s for s in subjects) and any("new root" in s for s in subjects)
    # Clients from either CA reach B.
    both = os.path.join(mesh.tmp, "both.pem")
    pki.write_bundle(both, old, new)
    for ca, name in ((old, "c-old"), (new, "c-new")):
        pem, key, _, _ = ca.issue_files(mesh.tmp, name, TESTER_ID)
        assert s_client_ok(mesh, pem, key, both), name
