# SPDX-License-Identifier: Apache-2.0
"""mTLS policy and bad input on inbound 15001, two pods with shuntd:
mtls.allow (per-port allow-list of source SPIFFE IDs, also changed by a
reload), expired and not-yet-valid client certificates, garbage on the
handshake, a ClientHello dripped too slowly, and a file source whose key is
broken while the daemon runs (the current certificate keeps serving, the
reload retries with backoff and recovers). A private key never shows up in
a log or the admin output."""

import datetime
import json
import os
import re
import signal
import socket
import ssl
import time

import pytest

import mtls_pki as pki
import shuntlib as sl
from shuntlib import Topology as T

VIP_WEB, VIP_ECHO = "10.96.0.30", "10.96.0.31"
WEB_ID = pki.spiffe("web")
TESTER_ID = pki.spiffe("tester")
CLIENT_ID = pki.spiffe("client")  # pod A's identity


def registry():
    def svc(name, vip, port):
        return sl.service(
            name, vip, port, [T.REMOTE4], "TCP", port_name="p", service_port=port, identity=WEB_ID
        )

    return {"services": [svc("web", VIP_WEB, 8080), svc("echo", VIP_ECHO, 7000)]}


def b_config(allow):
    return {"mtls": {"mode": "strict", "handshake_timeout": "1s", "allow": allow}}


@pytest.fixture(scope="module")
def mesh():
    topo = T()
    procs, daemons = [], []
    try:
        topo.route_vips()
        procs.append(topo.remote.spawn_peer("http", "web", ["%s:8080" % T.REMOTE4]))
        procs.append(topo.remote.spawn_peer("echo", "echo", ["%s:7000" % T.REMOTE4]))
        tmp = sl.tmpdir()
        ca_dir = os.path.join(tmp, "ca")
        reg = sl.registry_file(registry(), tmp)
        a, b = sl.start_mtls_pair(
            topo,
            daemons,
            ca_dir,
            a_flags={"service-discovery.file.path": reg, "exclude-outbound-ports": "15001"},
            b_config=b_config({"8080": [TESTER_ID]}),
        )
        ca = pki.CA.load(ca_dir)
        yield topo, a, b, tmp, ca
    finally:
        sl.teardown(topo, daemons, procs)


audit_lines = sl.audit_lines
client_files = pki.client_files


def test_allow_list(mesh):
    topo, a, b, tmp, ca = mesh
    certs = b.json("/certs")
    assert certs["policy"]["allow"] == [{"port": 8080, "id": TESTER_ID}], certs["policy"]
    r = sl.shuntctl(topo.remote, "certs")
    assert r.returncode == 0 and "port 8080: " + TESTER_ID in r.stdout, r.stdout + r.stderr
    r = sl.shuntctl(topo.app, "certs")
    assert "any identity of the trust domain" in r.stdout, r.stdout

    ok, _ = client_files(tmp, ca, "tester", TESTER_ID)
    r = pki.s_client(topo.app, T.REMOTE4, ok)
    assert "HTTP/1.1 200" in r.stdout, r.stdout + r.stderr

    # A valid mesh certificate whose identity is not on the list.
    stranger_id = pki.spiffe("stranger", ns="other")
    bad, serial = client_files(tmp, ca, "stranger", stranger_id)
    r = pki.s_client(topo.app, T.REMOTE4, bad)
    assert "HTTP/1.1 200" not in r.stdout
    sl.wait_until(lambda: audit_lines(b, "not_allowed"), 5, what="not_allowed audit line")
    line = audit_lines(b, "not_allowed")[-1]
    assert 'identity="%s"' % stranger_id in line, line
    assert "serial=%s" % serial in line, line
    assert "peer=%s:" % T.APP4 in line, line
    assert "port 8080" in line, line

    # Pod A's own identity is not on the list for 8080 either; port 7000 has
    # no rule, so any identity of the trust domain may use it.
    r = topo.app.curl(["-s", "-m", "5", "http://%s:8080/x" % VIP_WEB])
    assert r.returncode != 0 or "HTTP" not in r.stdout
    sl.wait_until(
        lambda: any('identity="%s"' % CLIENT_ID in l for l in audit_lines(b, "not_allowed")),
        5,
        what="A refused by the allow-list",
    )
    s = topo.app.connect(VIP_ECHO, 7000)
    try:
        assert sl.echo(s, b"port 7000 has no list\n") == b"port 7000 has no list\n"
    finally:
        s.close()

    # A reload adds A's identity: new handshakes see it at once.
    b.write_config(b_config({"8080": [TESTER_ID, CLIENT_ID]}))
    b.signal(signal.SIGHUP)
    sl.wait_until(lambda: len(b.json("/certs")["policy"]["allow"]) == 2, 10, what="reloaded list")
    r = topo.app.curl(["-s", "-m", "5", "http://%s:8080/x" % VIP_WEB])
    assert r.returncode == 0 and json.loads(r.stdout)["server"] == "web", r.stdout + r.stderr
    # "*" covers every port: only the tester may reach 7000 now.
    b.write_config(b_config({"8080": [TESTER_ID, CLIENT_ID], "*": [TESTER_ID]}))
    b.signal(signal.SIGHUP)
    sl.wait_until(lambda: len(b.json("/certs")["policy"]["allow"]) == 3, 10, what="reloaded list")
    assert "port *: " + TESTER_ID in sl.shuntctl(topo.remote, "certs").stdout
    n = len(audit_lines(b, "not_allowed"))
    try:
        # A's side of the handshake may fail before connect() returns here.
        s = topo.app.connect(VIP_ECHO, 7000)
        try:
            s.sendall(b"x\n")
            s.settimeout(5)
            assert s.recv(10) == b""
        finally:
            s.close()
    except (ConnectionResetError, BrokenPipeError):
        pass
    sl.wait_until(lambda: len(audit_lines(b, "not_allowed")) > n, 5, what="refused on 7000")
    # Back to the module's list.
    b.write_config(b_config({"8080": [TESTER_ID]}))
    b.signal(signal.SIGHUP)
    sl.wait_until(lambda: len(b.json("/certs")["policy"]["allow"]) == 1, 10, what="reloaded list")


def test_audit_lines_cannot_be_forged(mesh):
    """A peer chooses the identity it presents: written into the audit line,
    a URI SAN with quotes and spaces must not add fields of its own (issue
    14, D8). The "audit" object of the line holds every field exactly; the
    msg escapes them. A TLS 1.2 client refused for its version keeps its
    address in the line."""
    topo, a, b, tmp, ca = mesh
    forged = ('spiffe://cluster.local/ns/default/sa/x" reason=accepted '
              'identity="' + TESTER_ID)
    args, serial = client_files(tmp, ca, "forger", forged)
    r = pki.s_client(topo.app, T.REMOTE4, args)
    assert "HTTP/1.1 200" not in r.stdout

    def forged_lines():
        return [l for l in b.log_lines() if l.get("audit", {}).get("serial") == serial]

    sl.wait_until(forged_lines, 5, what="the forger's audit line")
    line = forged_lines()[-1]
    assert line["audit"]["identity"] == forged, line
    assert line["audit"]["reason"] != "accepted", line
    assert line["msg"].count(" reason=") == 1 and "reason=accepted" not in line["msg"], line
    assert line["msg"].count(" identity=") == 1, line

    before = len(audit_lines(b, "protocol_version"))
    r = topo.app.run(["openssl", "s_client", "-connect", "%s:8080" % T.REMOTE4, "-servername",
                      "port-8080." + pki.TD, "-tls1_2", "-quiet"] + args,
                     timeout=20, check=False, input="")
    sl.wait_until(lambda: len(audit_lines(b, "protocol_version")) > before, 5,
                  what="protocol_version audit line")
    line = audit_lines(b, "protocol_version")[-1]
    assert "peer=%s:" % T.APP4 in line, line


def test_strict_connects_to_the_application_only_after_authentication(mesh):
    """Strict mode: a client that has not finished a mesh handshake holds no
    connection to the application and cannot tell an open port from a
    closed one (issue 14, D9). Before, shuntd connected to the application
    at accept: one application connection per unauthenticated client for up
    to the handshake timeout, and a closed port answered with a reset."""
    topo, a, b, tmp, ca = mesh

    def app_conns():
        out = topo.remote.run(["ss", "-Htn", "state", "established", "( sport = :7000 )"]).stdout
        return len(out.splitlines())

    base = app_conns()
    opened, closed = topo.app.connect(T.REMOTE4, 7000), topo.app.connect(T.REMOTE4, 7999)
    try:
        for s in (opened, closed):
            s.sendall(b"\x16\x03\x01\x00\x40")  # the start of a ClientHello, no more
        time.sleep(0.5)  # well within mtls.handshake_timeout (1 s)
        assert app_conns() == base
        for s in (opened, closed):
            s.setblocking(False)
            with pytest.raises(BlockingIOError):
                s.recv(1)  # still open, nothing said: the closed port looks the same
    finally:
        opened.close()
        closed.close()
    # An authenticated client does reach the application.
    ok, _ = client_files(tmp, ca, "tester-d9", TESTER_ID)
    r = pki.s_client(topo.app, T.REMOTE4, ok)
    assert "HTTP/1.1 200" in r.stdout, r.stdout + r.stderr


@pytest.mark.parametrize(
    "name,offset,reason",
    [
        # Beyond the 5 minute clock-skew allowance either way.
        ("expired", (-3 * 3600, -600), "expired"),
        ("future", (600, 3600), "not_yet_valid"),
    ],
)
def test_validity_refused(mesh, name, offset, reason):
    topo, a, b, tmp, ca = mesh
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    args, serial = client_files(
        tmp,
        ca,
        name,
        TESTER_ID,
        not_before=now + datetime.timedelta(seconds=offset[0]),
        not_after=now + datetime.timedelta(seconds=offset[1]),
    )
    r = pki.s_client(topo.app, T.REMOTE4, args)
    assert "HTTP/1.1 200" not in r.stdout
    sl.wait_until(
        lambda: any("serial=" + serial in l for l in audit_lines(b, reason)),
        5,
        what=reason + " audit line",
    )
    line = [l for l in audit_lines(b, reason) if "serial=" + serial in l][-1]
    assert 'identity="%s"' % TESTER_ID in line, line


def test_expired_within_skew_accepted(mesh):
    """Expired two minutes ago: inside the 5 minute allowance."""
    topo, a, b, tmp, ca = mesh
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)
    args, _ = client_files(
        tmp,
        ca,
        "justexpired",
        TESTER_ID,
        not_before=now - datetime.timedelta(hours=1),
        not_after=now - datetime.timedelta(seconds=120),
    )
    r = pki.s_client(topo.app, T.REMOTE4, args)
    assert "HTTP/1.1 200" in r.stdout, r.stdout + r.stderr


def client_hello():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname="port-8080.%s" % pki.TD)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def send_and_drain(topo, data, per_byte_s=0.0, port=8080, limit_s=10):
    """Sends data to B's port (byte by byte when per_byte_s) and reads until
    B ends the connection. True when B closed or reset it."""
    s = topo.app.connect(T.REMOTE4, port)
    try:
        s.settimeout(limit_s)
        try:
            if per_byte_s:
                deadline = time.monotonic() + limit_s
                for i in range(len(data)):
                    if time.monotonic() > deadline:
                        return False
                    s.send(data[i : i + 1])
                    time.sleep(per_byte_s)
            else:
                s.sendall(data)
            while s.recv(4096):
                pass
            return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False
    finally:
        s.close()


def test_bad_handshakes(mesh):
    """Random bytes, a TLS record of garbage, a truncated ClientHello, a
    ClientHello followed by garbage, and a handshake dripped one byte every
    0.3 s (never finished within the 1 s handshake timeout): each ends with a
    reason; a mesh connection open meanwhile is not affected."""
    topo, a, b, tmp, ca = mesh
    long_lived = topo.app.connect(VIP_ECHO, 7000)
    try:
        assert sl.echo(long_lived, b"before\n") == b"before\n"
        key = ("shunt_connections_closed_total", (("reason", "plaintext_refused"),))
        refused = sl.parse_metrics(b.metrics_text()).get(key, 0)
        errors, timeouts = len(audit_lines(b, "handshake_error")), len(
            audit_lines(b, "handshake_timeout")
        )

        # Random bytes that are not TLS: plaintext, refused in strict mode.
        junk = b"\x00" + os.urandom(2000)
        assert send_and_drain(topo, junk)
        sl.wait_until(
            lambda: sl.parse_metrics(b.metrics_text()).get(key, 0) > refused,
            5,
            what="random bytes refused as plaintext",
        )
        # A TLS record header with random contents: no ClientHello to the
        # sniffer (plaintext, refused), or, when the random bytes happen to
        # look like one, a failed handshake.
        body = os.urandom(300)
        assert send_and_drain(topo, b"\x16\x03\x01" + len(body).to_bytes(2, "big") + body)
        sl.wait_until(
            lambda: sl.parse_metrics(b.metrics_text()).get(key, 0) > refused + 1
            or len(audit_lines(b, "handshake_error")) > errors,
            5,
            what="random record refused",
        )
        refused = sl.parse_metrics(b.metrics_text()).get(key, 0) - 2
        errors = len(audit_lines(b, "handshake_error"))
        # A real ClientHello, then a record of random bytes where the
        # client's encrypted flight belongs: the handshake fails.
        hello = client_hello()
        s = topo.app.connect(T.REMOTE4, 8080)
        try:
            s.sendall(hello)
            s.settimeout(5)
            assert s.recv(1)  # the server's flight has started
            try:
                s.sendall(b"\x17\x03\x03\x00\x40" + os.urandom(64))
                s.settimeout(10)
                while s.recv(4096):
                    pass
            except (ConnectionResetError, BrokenPipeError):
                pass
        finally:
            s.close()
        sl.wait_until(
            lambda: len(audit_lines(b, "handshake_error")) > errors,
            5,
            what="handshake_error audit line",
        )
        # Half a ClientHello, then silence: refused like plaintext when the
        # sniffer gives up on it (protocol_detection_timeout), or taken for
        # mesh TLS when the half it saw already named the port, and then ended
        # by the handshake timeout.
        timeouts = len(audit_lines(b, "handshake_timeout"))
        assert send_and_drain(topo, hello[: len(hello) // 2])
        sl.wait_until(
            lambda: sl.parse_metrics(b.metrics_text()).get(key, 0) > refused + 2
            or len(audit_lines(b, "handshake_timeout")) > timeouts,
            5,
            what="truncated ClientHello refused",
        )
        timeouts = len(audit_lines(b, "handshake_timeout"))
        # A whole ClientHello, then the client's next record one byte every
        # 0.3 s: the 1 s handshake timeout ends it.
        s = topo.app.connect(T.REMOTE4, 8080)
        ended = False
        try:
            s.sendall(hello)
            s.settimeout(5)
            assert s.recv(1)
            rec = b"\x17\x03\x03\x00\x40" + os.urandom(64)
            for i in range(len(rec)):  # at most 69 * 0.3 s
                try:
                    s.send(rec[i : i + 1])
                except (ConnectionResetError, BrokenPipeError):
                    ended = True
                    break
                if audit_lines(b, "handshake_timeout")[timeouts:]:
                    ended = True
                    break
                time.sleep(0.3)
        finally:
            s.close()
        assert ended
        sl.wait_until(
            lambda: len(audit_lines(b, "handshake_timeout")) > timeouts,
            5,
            what="handshake_timeout audit line (drip)",
        )
        assert len(audit_lines(b, "handshake_error")) == errors + 1
        # Nothing else affected: the open connection and a new one work.
        assert sl.echo(long_lived, b"after\n") == b"after\n"
        s = topo.app.connect(VIP_ECHO, 7000)
        try:
            assert sl.echo(s, b"new\n") == b"new\n"
        finally:
            s.close()
        assert b.alive()
    finally:
        long_lived.close()


def test_silent_client_is_not_plaintext(mesh):
    """In strict mode a client that connects and closes without sending a
    byte (a TCP probe, a client giving up) was refused nothing: it ends as
    done, not as plaintext_refused, and logs no refusal."""
    topo, a, b, tmp, ca = mesh
    key = ("shunt_connections_closed_total", (("reason", "plaintext_refused"),))
    refused = sl.parse_metrics(b.metrics_text()).get(key, 0)
    done = b.metric("shunt_connections_closed_total", default=0.0, reason="done")
    n_lines = len(b.log_lines())
    for _ in range(3):
        s = topo.app.connect(T.REMOTE4, 8080)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(10)
        try:
            assert s.recv(10) == b""
        except ConnectionResetError:
            pass
        s.close()
    b.wait_metric("shunt_connections_closed_total", lambda v: v >= done + 3, reason="done")
    assert sl.parse_metrics(b.metrics_text()).get(key, 0) == refused
    assert not [l for l in b.log_lines()[n_lines:] if "refused" in l.get("msg", "")]


def test_slow_client_hello(mesh):
    """A mesh client that sends its ClientHello after the protocol detection
    timeout (100 ms) is not taken for plaintext in strict mode: it has the
    handshake timeout (1 s here). So is one whose ClientHello arrives in two
    parts 0.4 s apart."""
    topo, a, b, tmp, ca = mesh
    args, _ = client_files(tmp, ca, "slow", TESTER_ID)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(args[1], args[3])
    key = ("shunt_connections_closed_total", (("reason", "plaintext_refused"),))
    refused = sl.parse_metrics(b.metrics_text()).get(key, 0)
    for split in (False, True):
        raw = topo.app.connect(T.REMOTE4, 8080)
        try:
            time.sleep(0.4)  # a client that waits before its ClientHello: what is tested
            if split:
                # The first 3 bytes of the record header, the rest later.
                hello = client_hello()
                raw.sendall(hello[:3])
                time.sleep(0.4)  # the record split in time: what is tested
                raw.sendall(hello[3:])
                raw.settimeout(5)
                assert raw.recv(1), "no ServerHello after a split ClientHello"
                continue
            s = ctx.wrap_socket(raw, server_hostname="port-8080.%s" % pki.TD)
            s.settimeout(10)
            s.sendall(b"GET /slow HTTP/1.0\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            assert b"HTTP/1.1 200" in data, data[:200]
        finally:
            raw.close()
    assert sl.parse_metrics(b.metrics_text()).get(key, 0) == refused


def plain_echo_ok(topo, port):
    """Plaintext from pod A straight to B's address (not a service address:
    A relays it as it is). True when it echoes."""
    try:
        s = topo.app.connect(T.REMOTE4, port)
    except (ConnectionResetError, BrokenPipeError):
        return False
    try:
        s.settimeout(5)
        s.sendall(b"plain\n")
        return s.recv(100) == b"plain\n"
    except (ConnectionResetError, BrokenPipeError, socket.timeout):
        return False
    finally:
        s.close()


def test_registry_mode_per_port(mesh):
    """Inbound honours the registry's "mtls" of the service B's own address
    and port belong to; the daemon's mtls.mode applies to ports no service
    sets a mode for. Changed by the registry, without a restart."""
    topo, a, b, tmp, ca = mesh
    reg = os.path.join(tmp, "b-registry.json")

    def write(modes):
        svcs = []
        for name, port in (("echo", 7000), ("alt", 7001)):
            vip = "10.96.1.%d" % (port - 6990)
            svc = sl.service(
                name, vip, port, [T.REMOTE4], port_name="p", service_port=port, identity=WEB_ID
            )
            if modes.get(name):
                svc["mtls"] = modes[name]
            svcs.append(svc)
        sl.write_json(reg, {"services": svcs})

    write({"echo": "permissive"})
    b.stop()
    peer = topo.remote.spawn_peer("echo", "echo2", ["%s:7001" % T.REMOTE4])
    b2 = sl.Shuntd(
        topo.remote,
        sl.shuntd_args(
            **{
                "mtls.ca-dir": os.path.join(tmp, "ca"),
                "mtls.service-name": "web",
                "service-discovery.file.path": reg,
            }
        ),
        config=b_config({"8080": [TESTER_ID, CLIENT_ID]}),
        name="b-registry",
    )
    try:
        b2.wait_ready()
        # Daemon strict; echo (7000) permissive by the registry, alt (7001)
        # unset: strict.
        assert plain_echo_ok(topo, 7000)
        assert not plain_echo_ok(topo, 7001)
        # Mesh TLS still works on the permissive port.
        s = topo.app.connect(VIP_ECHO, 7000)
        try:
            assert sl.echo(s, b"mesh\n") == b"mesh\n"
        finally:
            s.close()
        # The registry makes 7000 strict and 7001 disabled (relayed as is).
        write({"echo": "strict", "alt": "disabled"})
        sl.wait_until(lambda: not plain_echo_ok(topo, 7000), 10, interval=0.3, what="7000 strict")
        assert plain_echo_ok(topo, 7001)
    finally:
        peer.stop()
        sl.stop_checked([b2])
        b.restart()  # the module's B back, for whichever test runs next


def test_files_source_broken_key_while_running(mesh):
    """B served from files (an external CA's Secret mount). The key turns to
    garbage, then disappears: one-line error, the current certificate keeps
    serving, retries back off; a good new set is picked up."""
    topo, a, b, tmp, ca = mesh
    b.stop()
    mount = pki.SecretMount(os.path.join(tmp, "secret"))
    cert1, key1, serial1 = ca.issue(WEB_ID, dns="web.default.svc.cluster.local")
    mount.publish(cert1, key1, ca.pem)
    b2 = sl.Shuntd(
        topo.remote,
        sl.shuntd_args(
            **{
                "mtls.service-name": "web",
                "mtls.certificate-file": mount.path("tls.crt"),
                "mtls.private-key-file": mount.path("tls.key"),
                "mtls.ca-bundle": mount.path("ca.crt"),
            }
        ),
        config=b_config({"8080": [TESTER_ID, CLIENT_ID]}),
        name="b-files",
    )
    keys = [key1]
    try:
        b2.wait_ready()
        assert b2.json("/certs")["current"]["serial"] == serial1
        tester, _ = client_files(tmp, ca, "tester2", TESTER_ID)
        ca_pem = os.path.join(tmp, "ca", "ca.pem")
        served = lambda: pki.served_serial(topo.app, T.REMOTE4, ca_pem, tester[1], tester[3])

        def mesh_ok():
            r = topo.app.curl(["-s", "-m", "5", "http://%s:8080/f" % VIP_WEB])
            return r.returncode == 0 and json.loads(r.stdout)["server"] == "web"

        assert mesh_ok()

        # Garbage in place of the key (written in place, as a broken writer would).
        real_key = os.path.realpath(mount.path("tls.key"))
        with open(real_key, "wb") as f:
            f.write(b"-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
        sl.wait_until(
            lambda: b2.json("/certs")["rotation"]["state"] == "retrying", 10, what="retrying"
        )
        rot = b2.json("/certs")["rotation"]
        err = rot["last_error"]
        assert "\n" not in err and "tls.key" in err, err
        assert "no valid PEM private key" in err, err
        lines = [l.get("msg", "") for l in b2.log_lines() if "certificate reload" in l.get("msg", "")]
        assert lines and "keeps serving" in lines[-1] and serial1 in lines[-1], lines
        assert "retrying in" in lines[-1], lines[-1]
        assert b2.metric("shunt_tls_rotation_retrying") == 1
        # Still serving the current certificate, to new handshakes too.
        assert served() == serial1
        assert mesh_ok()
        # Retries back off without any further change of the files.
        f0 = rot["failures"]
        sl.wait_until(
            lambda: b2.json("/certs")["rotation"]["failures"] >= f0 + 2,
            15,
            interval=0.3,
            what="two more retries",
        )

        # The key disappears (an unreadable file: root reads any mode, so
        # a missing one stands in for chmod 000).
        os.unlink(real_key)
        sl.wait_until(
            lambda: "No such file" in (b2.json("/certs")["rotation"]["last_error"] or ""),
            15,
            interval=0.3,
            what="missing key reported",
        )
        assert served() == serial1

        # A good new set: picked up, the rotation is audited.
        cert2, key2, serial2 = ca.issue(WEB_ID, dns="web.default.svc.cluster.local")
        keys.append(key2)
        mount.publish(cert2, key2, ca.pem)
        sl.wait_until(
            lambda: b2.json("/certs")["current"]["serial"] == serial2, 10, what="new set loaded"
        )
        certs = b2.json("/certs")
        assert certs["rotation"]["state"] in ("ok", "draining"), certs["rotation"]
        assert certs["rotation"]["last_error"] is None
        assert b2.metric("shunt_tls_rotation_retrying") == 0
        audit = [l.get("msg", "") for l in b2.log_lines()]
        audit = [m for m in audit if "audit: certificate rotated" in m]
        assert audit, b2.log_tail(30)
        assert "old_serial=%s new_serial=%s" % (serial1, serial2) in audit[-1], audit[-1]
        assert re.search(r"not_after=\d{4}-\d\d-\d\dT", audit[-1]), audit[-1]
        assert served() == serial2
        assert mesh_ok()

        # No private key in the logs or the admin output.
        texts = [b2.log_text(), a.log_text(), json.dumps(certs), b2.get("/config")[1].decode()]
        texts.append(b2.metrics_text())
        texts.append(sl.shuntctl(topo.remote, "certs").stdout)
        for k in keys + [pki.key_pem(ca.key)]:
            for line in pki.key_lines(k):
                for t in texts:
                    assert line not in t, "private key material leaked"
    finally:
        sl.stop_checked([b2])
        b.restart()  # the module's B back, for whichever test runs next

