# SPDX-License-Identifier: Apache-2.0
"""Mutual TLS on the data path: two pods, each with shuntd (iptables capture),
sharing one built-in CA. The app pod's registry lists the remote pod's service
with its SPIFFE identity, so shuntd originates TLS 1.3 to it; the remote
shuntd terminates it on 15001 and forwards plaintext to the application."""

import hashlib
import json
import os
import socket
import ssl
import time

import pytest

import mtls_pki as pki
import shuntlib as sl
from shuntlib import Topology as T

TD = pki.TD
WEB_ID = pki.spiffe("web")
VIP_WEB, VIP_ECHO, VIP_HC = "10.96.0.20", "10.96.0.21", "10.96.0.22"


def registry(web_identity=WEB_ID):
    def svc(name, vip, port, identity):
        return sl.service(
            name, vip, port, [T.REMOTE4], "TCP", port_name="p", service_port=port, identity=identity
        )

    return {
        "services": [
            svc("web", VIP_WEB, 8080, web_identity),
            svc("echo", VIP_ECHO, 7000, WEB_ID),
            svc("halfclose", VIP_HC, 7100, WEB_ID),
        ]
    }


# Short-lived certificates: each daemon renews every 6 s (a third of 9 s
# left) while the tests run.
LIFETIME_S = 9


def mtls_args(ca_dir, name, **extra):
    flags = {
        "mtls.ca-dir": ca_dir,
        "mtls.service-name": name,
        "mtls.cert-rotation": "%ds" % LIFETIME_S,
    }
    flags.update(extra)
    return sl.shuntd_args(**flags)


def issue(tmp, name, ca_pem, ca_key, uri, san=None):
    """A client certificate signed by the given CA (openssl, not shuntd)."""
    key, csr, pem, ext = (os.path.join(tmp, name + s) for s in ("-key.pem", ".csr", ".pem", ".ext"))
    with open(ext, "w") as f:
        f.write(
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName=%s\n"
            % (san or "URI:" + uri)
        )
    pki.openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
    pki.openssl("req", "-new", "-key", key, "-out", csr, "-subj", "/CN=" + name)
    pki.openssl(
        "x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-CAcreateserial",
        "-out", pem, "-days", "1", "-extfile", ext,
    )  # fmt: skip
    return pem, key


@pytest.fixture(scope="module")
def mesh():
    topo = T()
    procs, daemons = [], []
    try:
        topo.route_vips()
        procs.append(topo.remote.spawn_peer("http", "web", ["%s:8080" % T.REMOTE4]))
        procs.append(topo.remote.spawn_peer("echo", "echo", ["%s:7000" % T.REMOTE4]))
        procs.append(topo.remote.spawn_peer("halfclose", "hc", ["%s:7100" % T.REMOTE4]))
        tmp = sl.tmpdir()
        ca_dir = os.path.join(tmp, "ca")
        reg = sl.registry_file(registry(), tmp)
        rotation = {"mtls.cert-rotation": "%ds" % LIFETIME_S}
        # 15001 not captured in A: the s_client test addresses B's inbound
        # port directly (A's shuntd would take it for a loop).
        a, b = sl.start_mtls_pair(
            topo,
            daemons,
            ca_dir,
            a_flags={
                **rotation,
                "service-discovery.file.path": reg,
                "exclude-outbound-ports": "15001",
            },
            b_flags=rotation,
        )
        yield topo, a, b, tmp, ca_dir
    finally:
        sl.teardown(topo, daemons, procs)


def tcp_payloads(pcap):
    """TCP payloads of an Ethernet pcap (IPv4), in capture order."""
    return [p for _, _, p in sl.pcap_tcp_segments(pcap) if p]


def test_http_through_mtls(mesh):
    topo, a, b, tmp, _ = mesh
    pcap = os.path.join(tmp, "wire.pcap")
    dump = sl.tcpdump(topo.remote, "e-app", pcap, "tcp port 8080")
    try:
        r = topo.app.curl(["-s", "http://%s:8080/hello" % VIP_WEB])
        assert r.returncode == 0, r.stderr
        body = json.loads(r.stdout)
        assert body["server"] == "web"
        assert body["method"] == "GET"
        sl.pcap_sync(topo.remote, "e-app", pcap)
    finally:
        dump.stop()
    payloads = tcp_payloads(pcap)
    assert payloads, "nothing captured: %d bytes; %s; curl to %s" % (os.path.getsize(pcap), dump.read_stderr(), r.stdout)
    wire = b"".join(payloads)
    assert b"GET /hello" not in wire and b"HTTP/1.1" not in wire, "plaintext on the wire"
    # Every segment that starts a record is a TLS record: handshake (0x16)
    # or application data (0x17), version bytes 0x03 0x03.
    assert payloads[0][:2] == b"\x16\x03", payloads[0][:8]
    assert any(p[:3] == b"\x17\x03\x03" for p in payloads)

    # Both sides counted a handshake; B's access line saw an inbound connection.
    ma, mb = a.metrics_text(), b.metrics_text()
    assert "shunt_tls_handshakes_total" in ma, ma
    ok_out = [
        l for l in ma.splitlines() if l.startswith("shunt_tls_handshakes_total") and "outbound" in l
    ]
    assert ok_out and float(ok_out[0].split()[-1]) >= 1, ok_out
    ok_in = [
        l for l in mb.splitlines() if l.startswith("shunt_tls_handshakes_total") and "inbound" in l
    ]
    assert ok_in and float(ok_in[0].split()[-1]) >= 1, ok_in


def test_bulk_and_half_close(mesh):
    """4 MiB through both TLS hops, then a half-close: the server sees every
    byte and the FIN (close_notify, then FIN, on the wire), and its answer
    still comes back."""
    topo, a, b, tmp, _ = mesh
    data = os.urandom(4 << 20)
    s = topo.app.connect(VIP_HC, 7100)
    try:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        reply = sl.recv_all(s, timeout=20)
    finally:
        s.close()
    assert reply == ("%d %s\n" % (len(data), hashlib.sha256(data).hexdigest())).encode()


def test_wrong_identity_refused(mesh):
    """The registry expects another identity for the service: A refuses B."""
    topo, a, b, tmp, _ = mesh
    reg = os.path.join(tmp, "registry.json")
    sl.write_json(reg, registry(pki.spiffe("other")))
    try:
        def refused():
            r = topo.app.curl(["-s", "-m", "5", "http://%s:8080/x" % VIP_WEB])
            return r.returncode != 0
        sl.wait_until(refused, 10, interval=0.3, what="the wrong identity refused")
        sl.wait_until(lambda: "reason=wrong_identity" in a.log_text(), 5, what="audit line")
    finally:
        sl.write_json(reg, registry())
        sl.wait_until(
            lambda: topo.app.curl(["-s", "-m", "5", "http://%s:8080/x" % VIP_WEB]).returncode == 0,
            10,
            interval=0.3,
            what="the right identity back",
        )


def test_s_client(mesh):
    topo, a, b, tmp, ca_dir = mesh
    ca_pem, ca_key = os.path.join(ca_dir, "ca.pem"), os.path.join(ca_dir, "ca-key.pem")
    pem, key = issue(tmp, "tester", ca_pem, ca_key, "spiffe://%s/ns/default/sa/tester" % TD)
    r = pki.s_client(
        topo.app, T.REMOTE4, ["-cert", pem, "-key", key, "-CAfile", ca_pem, "-verify_return_error"]
    )
    assert "HTTP/1.1 200" in r.stdout, r.stdout + r.stderr
    # Addressed to B's inbound port itself: the SNI name says where to go.
    r = pki.s_client(
        topo.app,
        T.REMOTE4,
        ["-cert", pem, "-key", key, "-CAfile", ca_pem, "-verify_return_error"],
        port=15001,
    )
    assert "HTTP/1.1 200" in r.stdout, r.stdout + r.stderr
    # Plaintext to the inbound port itself is a loop: refused.
    s = topo.app.connect(T.REMOTE4, 15001)
    try:
        s.sendall(b"GET / HTTP/1.0\r\n\r\n")
        s.settimeout(10)
        try:
            assert s.recv(100) == b""
        except ConnectionResetError:
            pass
    finally:
        s.close()
    sl.wait_until(lambda: "to shuntd's own port" in b.log_text(), 5, what="loop refusal logged")

    # No client certificate: refused, and B's audit line says why.
    r = pki.s_client(topo.app, T.REMOTE4, ["-CAfile", ca_pem])
    assert "HTTP/1.1 200" not in r.stdout
    sl.wait_until(lambda: "reason=no_certificate" in b.log_text(), 5, what="no_certificate audit")

    # A certificate from another CA.
    other = os.path.join(tmp, "other")
    os.makedirs(other, exist_ok=True)
    o_key, o_pem = os.path.join(other, "ca-key.pem"), os.path.join(other, "ca.pem")
    pki.openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", o_key)
    pki.openssl(
        "req", "-x509", "-new", "-key", o_key, "-out", o_pem, "-days", "2", "-subj", "/CN=other",
        "-addext", "basicConstraints=critical,CA:TRUE",
    )  # fmt: skip
    pem2, key2 = issue(other, "intruder", o_pem, o_key, "spiffe://%s/ns/default/sa/x" % TD)
    r = pki.s_client(topo.app, T.REMOTE4, ["-cert", pem2, "-key", key2])
    assert "HTTP/1.1 200" not in r.stdout
    sl.wait_until(lambda: "reason=untrusted_ca" in b.log_text(), 5, what="untrusted_ca audit")

    # The mesh CA, but another trust domain; and no SPIFFE URI at all.
    for name, uri, san, reason in (
        ("foreign", "spiffe://other.org/ns/default/sa/x", None, "wrong_trust_domain"),
        ("nouri", None, "DNS:web.default.svc.cluster.local", "no_spiffe_id"),
    ):
        pem3, key3 = issue(tmp, name, ca_pem, ca_key, uri, san=san)
        r = pki.s_client(topo.app, T.REMOTE4, ["-cert", pem3, "-key", key3, "-CAfile", ca_pem])
        assert "HTTP/1.1 200" not in r.stdout
        sl.wait_until(lambda: "reason=" + reason in b.log_text(), 5, what=reason + " audit")


def test_rotation_keeps_connections(mesh):
    """A connection opened before a rotation keeps streaming after it (on
    both sides), and a new handshake presents the new serial."""
    topo, a, b, tmp, _ = mesh
    before_a, before_b = a.json("/certs"), b.json("/certs")
    s = topo.app.connect(VIP_ECHO, 7000)
    try:
        i = 0
        deadline = time.monotonic() + 3 * LIFETIME_S
        while time.monotonic() < deadline:
            msg = ("line %d %s\n" % (i, "x" * 2000)).encode()
            assert sl.echo(s, msg) == msg, i
            i += 1
            now_a, now_b = a.json("/certs"), b.json("/certs")
            if (
                now_a["rotation"]["rotations"] > before_a["rotation"]["rotations"]
                and now_b["rotation"]["rotations"] > before_b["rotation"]["rotations"]
                and i > 20
            ):
                break
            time.sleep(0.1)
        assert now_a["current"]["serial"] != before_a["current"]["serial"]
        assert now_b["current"]["serial"] != before_b["current"]["serial"]
        # Still the same connection, still working.
        msg = b"after rotation\n"
        assert sl.echo(s, msg) == msg
    finally:
        s.close()
    # A new connection is served with B's current certificate.
    r = topo.app.curl(["-s", "http://%s:8080/new" % VIP_WEB])
    assert r.returncode == 0, r.stderr
    serial = b.json("/certs")["current"]["serial"]
    ca_pem = os.path.join(mesh[4], "ca.pem")
    out = topo.app.run(
        ["openssl", "s_client", "-connect", "%s:8080" % T.REMOTE4, "-servername",
         "port-8080.%s" % TD, "-tls1_3", "-CAfile", ca_pem, "-showcerts"],
        timeout=20, check=False, input="",
    )  # fmt: skip
    pem = out.stdout[out.stdout.find("-----BEGIN CERTIFICATE-----") :]
    pem = pem[: pem.find("-----END CERTIFICATE-----") + 25]
    got = pki.openssl("x509", "-noout", "-serial", input=pem).strip().split("=")[1].lower().lstrip("0")
    # The serial may have moved on again since: it must be the current or a newer one.
    assert got == serial or got == b.json("/certs")["current"]["serial"], (got, serial)


def test_permissive_plaintext_then_strict(mesh):
    """Permissive: plaintext to B still works. Strict: refused and counted."""
    topo, a, b, tmp, ca_dir = mesh
    # Plaintext straight to B's app port, from A (a destination that is not a
    # mesh service: A relays it as it is).
    s = topo.app.connect(T.REMOTE4, 7000)
    try:
        assert sl.echo(s, b"plain\n") == b"plain\n"
    finally:
        s.close()
    b.stop()
    b2 = sl.Shuntd(
        topo.remote,
        mtls_args(ca_dir, "web", **{"mtls.mode": "strict", "mtls.handshake-timeout": "1s"}),
        name="b-strict",
    )
    try:
        b2.wait_ready()
        s = topo.app.connect(T.REMOTE4, 7000)
        try:
            s.sendall(b"plain\n")
            s.settimeout(5)
            with pytest.raises((ConnectionResetError, socket.timeout, OSError)):
                got = s.recv(100)
                if not got:
                    raise ConnectionResetError("closed")
        finally:
            s.close()
        sl.wait_until(lambda: "mtls.mode is strict" in b2.log_text(), 5, what="refusal logged")
        # The refusal is logged before the connection is freed and counted
        # (conn_free): the counter may lag the log line by a moment.
        key = ("shunt_connections_closed_total", (("reason", "plaintext_refused"),))
        sl.wait_until(
            lambda: sl.parse_metrics(b2.metrics_text()).get(key, 0) >= 1,
            5,
            what="plaintext_refused counted",
        )
        # A truncated ClientHello is refused too; a real ClientHello whose
        # handshake never finishes is ended by the handshake timeout, with an
        # audit line. Neither reaches the application.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, out, server_hostname="port-8080.%s" % TD)
        with pytest.raises(ssl.SSLWantReadError):
            obj.do_handshake()
        hello = out.read()
        for first in (hello[:11], hello):
            s = topo.app.connect(T.REMOTE4, 8080)
            try:
                s.sendall(first)
                s.settimeout(10)  # shuntd ends it well before this
                try:
                    while s.recv(4096):
                        pass
                except ConnectionResetError:
                    pass
            finally:
                s.close()
        sl.wait_until(
            lambda: "reason=handshake_timeout" in b2.log_text(), 10, what="handshake timeout audit"
        )
        # Mesh traffic still flows in strict mode.
        r = topo.app.curl(["-s", "http://%s:8080/strict" % VIP_WEB])
        assert r.returncode == 0 and json.loads(r.stdout)["server"] == "web", r.stderr
    finally:
        sl.stop_checked([b2])
        b.restart()  # the module's B back, for whichever test runs next
