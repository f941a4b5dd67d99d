# SPDX-License-Identifier: Apache-2.0
"""The mesh end to end, as a user who labels two namespaces into it gets it
(issue 12): a control-plane pod with the Kubernetes API stand-in and a real
shunt-ca; three meshed pods in two namespaces with different service
accounts, each with shuntd using Kubernetes discovery and certificates from
shunt-ca (the "ca" source, identity from its projected token); one pod
without a sidecar.

    app    10.77.0.1   shop/frontend   client, shuntd-a
    remote 10.77.0.2   shop/web        service shop/web,      shuntd-b
    r2     10.79.0.2   billing/ledger  service billing/ledger, shuntd-c
    plain  10.79.1.2   shop/legacy     service shop/legacy,   no sidecar

- Traffic between meshed pods is TLS 1.3 on the wire (the capture holds
  only TLS records), each side sees the other's exact SPIFFE ID (handshake
  lines on both sides, openssl s_client against the inbound ports, the CA's
  audit lines);
- the unmeshed pod is reached in plaintext in permissive mode and refused,
  with the reason, once its Service says strict;
- no file of any sidecar holds a private key, let alone the CA's."""

import json
import os
import struct

import pytest

import ca_plane
import shuntca
import shuntlib as sl
from shuntlib import Topology as T

TD = "cluster.local"
VIP_WEB, VIP_LEDGER, VIP_LEGACY = "10.96.0.50", "10.96.0.51", "10.96.0.52"
R2_ADDR, PLAIN_ADDR = "10.79.0.2", "10.79.1.2"


def sid(ns, sa):
    return "spiffe://%s/ns/%s/sa/%s" % (TD, ns, sa)


FRONTEND, WEB, LEDGER = sid("shop", "frontend"), sid("shop", "web"), sid("billing", "ledger")


def namespace_obj(name):
    return {"metadata": {"name": name, "labels": {"shunt.io/inject": "enabled"}}}


def service_obj(ns, name, vip, mode=None):
    md = {"name": name, "namespace": ns}
    if mode:
        md["annotations"] = {"shunt.io/mtls-mode": mode}
    return {"metadata": md, "spec": {"clusterIP": vip, "clusterIPs": [vip], "ports": [
        {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP",
         "appProtocol": "http"}]}}  # fmt: skip


def slice_obj(ns, svc, pod, addr):
    return {
        "metadata": {"name": svc + "-1", "namespace": ns,
                     "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [addr], "conditions": {"ready": True},
                       "targetRef": {"kind": "Pod", "namespace": ns, "name": pod}}],
    }  # fmt: skip


def pod_obj(ns, name, sa, ip, meshed=True):
    labels = {"app": name.rsplit("-", 1)[0]}
    if meshed:
        labels["shunt.io/meshed"] = "true"
    return {"metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"serviceAccountName": sa, "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}  # fmt: skip


class Cluster:
    def __init__(self):
        self.topo = T()
        self.daemons, self.procs, self.extra = [], [], []
        self.cp = None
        self.tmp = sl.tmpdir()
        os.chmod(self.tmp, 0o755)
        topo = self.topo
        topo.route_vips()
        self.r2, self.plain = sl.Pod("r2"), sl.Pod("plain")
        self.extra += [self.r2, self.plain]
        sl.link(topo.app, self.r2, "10.79.0.1", R2_ADDR, "fd79::1", "fd79::2")
        sl.link(topo.app, self.plain, "10.79.1.1", PLAIN_ADDR, "fd79:1::1", "fd79:1::2")
        self.procs.append(topo.remote.spawn_peer("http", "web", ["%s:8080" % T.REMOTE4]))
        self.procs.append(self.r2.spawn_peer("http", "ledger", ["%s:8080" % R2_ADDR]))
        self.procs.append(self.plain.spawn_peer("http", "legacy", ["%s:8080" % PLAIN_ADDR]))
        self.cp = ca_plane.ControlPlane([topo.app, topo.remote, self.r2, self.plain],
                                        api_listen="0.0.0.0")  # fmt: skip
        api = self.cp.api
        for ns in ("shop", "billing"):
            self.apply("namespaces", namespace_obj(ns))
        for ns, svc, pod, addr, vip in (("shop", "web", "web-0", T.REMOTE4, VIP_WEB),
                                        ("billing", "ledger", "ledger-0", R2_ADDR, VIP_LEDGER),
                                        ("shop", "legacy", "legacy-0", PLAIN_ADDR, VIP_LEGACY)):
            self.apply("services", service_obj(ns, svc, vip))
            self.apply("endpointslices", slice_obj(ns, svc, pod, addr))
        self.apply("pods", pod_obj("shop", "frontend-0", "frontend", T.APP4))
        self.apply("pods", pod_obj("shop", "web-0", "web", T.REMOTE4))
        self.apply("pods", pod_obj("billing", "ledger-0", "ledger", R2_ADDR))
        self.apply("pods", pod_obj("shop", "legacy-0", "legacy", PLAIN_ADDR, meshed=False))
        # The sidecars' view of the API: the stand-in over the network.
        kubeconfig = self.path("kube/kubeconfig.json")
        sl.write_json(kubeconfig, {
            "apiVersion": "v1", "kind": "Config", "current-context": "mesh",
            "clusters": [{"name": "standin", "cluster": {
                "server": "http://%s:%d" % (ca_plane.CA_IP, api.port)}}],
            "users": [{"name": "sidecar", "user": {"token": shuntca.CALLER_TOKEN}}],
            "contexts": [{"name": "mesh", "context": {"cluster": "standin", "user": "sidecar"}}]})  # fmt: skip
        self.bundle = self.cp.bundle(self.path("bundle/ca.crt"))
        self.sidecars = {}
        for pod, name, ns, sa in ((topo.remote, "shuntd-b", "shop", "web"),
                                  (self.r2, "shuntd-c", "billing", "ledger"),
                                  (topo.app, "shuntd-a", "shop", "frontend")):
            token = self.path(name + "/token")
            self.cp.write_token(token, ns, sa, pod=sa + "-0")
            flags = {
                "mtls.ca-address": ca_plane.CA_ADDRESS, "mtls.ca-bundle": self.bundle,
                "mtls.ca-token-file": token, "mtls.mode": "permissive",
                "service-discovery.type": "kubernetes",
                "service-discovery.kubernetes.kubeconfig-path": kubeconfig,
                "service-discovery.kubernetes.namespace": "*",
            }  # fmt: skip
            if pod is topo.app:  # openssl s_client to the others' inbound ports
                flags["exclude-outbound-ports"] = "15001"
            d = sl.Shuntd(pod, sl.shuntd_args(**flags), name=name)
            self.daemons.append(d)
            d.wait_ready()
            self.sidecars[name] = d
        self.a, self.b, self.c = (self.sidecars[n] for n in ("shuntd-a", "shuntd-b", "shuntd-c"))

    def path(self, name):
        p = os.path.join(self.tmp, name)
        os.makedirs(os.path.dirname(p), mode=0o755, exist_ok=True)
        return p

    def apply(self, kind, obj, etype="ADDED"):
        return self.cp.api.ctl("POST", "/apply", {"kind": kind, "type": etype, "object": obj})

    def close(self):
        try:
            sl.teardown(None, self.daemons, self.procs)
        finally:
            try:
                if self.cp:
                    self.cp.close()
            finally:
                for p in self.extra:
                    p.delete()
                self.topo.delete()


@pytest.fixture(scope="module")
def cluster():
    c = Cluster()
    try:
        yield c
    finally:
        c.close()


def endpoint(d, ns, svc, addr):
    for s in d.json("/endpoints")["services"]:
        if s["name"] == svc and s["namespace"] == ns:
            for e in s["endpoints"]:
                if e["address"] == addr:
                    return e
    return None


def wait_endpoint(d, ns, svc, addr, **want):
    def ok():
        e = endpoint(d, ns, svc, addr)
        return e if e and all(e.get(k) == v for k, v in want.items()) else None

    return sl.wait_until(ok, 15, interval=0.1, what="%s/%s %s %s" % (ns, svc, addr, want))


def get(c, vip):
    try:
        status, hdrs, body = c.topo.app.http(vip, 80, "GET", "/mesh")
    except OSError as e:
        return None, {}, str(e)
    return status, hdrs, body


def tls_records_only(stream):
    """Walks stream as TLS records; the number of records, or an assertion
    naming the offset where something else starts."""
    off, n = 0, 0
    while off < len(stream):
        assert off + 5 <= len(stream), "a truncated record header at %d" % off
        ctype, ver, length = stream[off], stream[off + 1 : off + 3], struct.unpack(
            "!H", stream[off + 3 : off + 5])[0]  # fmt: skip
        assert ctype in (0x14, 0x15, 0x16, 0x17), "not a TLS record at %d: %r" % (
            off, stream[off : off + 16])  # fmt: skip
        assert ver in (b"\x03\x01", b"\x03\x03") and length <= 16384 + 256, stream[off : off + 5]
        off += 5 + length
        n += 1
    return n


def streams(pcap):
    """TCP payload per direction ((src, sport) -> bytes) of an Ethernet pcap."""
    out = {}
    for src, sport, payload in sl.pcap_tcp_segments(pcap):
        out[(src, sport)] = out.get((src, sport), b"") + payload
    return out


def sidecar_files(c, d):
    """What a sidecar was given (token, bundle, kubeconfig directories), the
    built-in CA directory it could have used, and every file it has open."""
    paths = [c.path(d.proc.name + "/x")[:-2], c.path("bundle/x")[:-2], c.path("kube/x")[:-2]]
    paths.append(d.argv[d.argv.index("--mtls.ca-dir") + 1])
    return paths + sorted(ca_plane.open_files(d))


def served_identity(c, pod_host, cert, key):
    argv = ["openssl", "s_client", "-connect", "%s:15001" % pod_host, "-servername",
            "port-8080.%s" % TD, "-tls1_3", "-showcerts", "-verify_return_error", "-CAfile",
            c.bundle, "-cert", cert, "-key", key]  # fmt: skip
    r = c.topo.app.run(argv, timeout=20, check=False, input="")
    out = sl.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"], check=False,
                 input=r.stdout[r.stdout.find("-----BEGIN CERTIFICATE-----"):]).stdout
    return r, out


def test_meshed_pods_talk_tls13_with_exact_identities(cluster):
    c = cluster
    # Each sidecar's identity is its token's, and the CA audited exactly those.
    for d, want in ((c.a, FRONTEND), (c.b, WEB), (c.c, LEDGER)):
        assert d.json("/certs")["identity"] == want
    issued = {a.get("identity") for a in c.cp.ca.audits() if a.get("result") == "issued"}
    assert {FRONTEND, WEB, LEDGER} <= issued, c.cp.ca.audits()
    # A learnt each endpoint's identity from its pod.
    wait_endpoint(c.a, "shop", "web", T.REMOTE4, meshed=True, identity=WEB, outbound="mtls")
    wait_endpoint(c.a, "billing", "ledger", R2_ADDR, meshed=True, identity=LEDGER,
                  outbound="mtls")  # fmt: skip

    # The capture must see a handshake: connections that earlier requests
    # (another test's) left in A's pool would carry these GETs without one,
    # so http.upstream_idle_timeout closes them first.
    c.a.wait_metric("shunt_upstream_idle_connections", lambda v: v == 0, timeout=15)
    pcap = c.path("wire/web.pcap")
    dump = sl.tcpdump(c.topo.remote, "e-app", pcap, "tcp port 8080")
    try:
        for vip, server in ((VIP_WEB, "web"), (VIP_LEDGER, "ledger")):
            got = sl.wait_until(lambda v=vip: (lambda r: r if r[0] == 200 else None)(get(c, v)),
                                10, what="GET through the mesh to " + server)  # fmt: skip
            assert json.loads(got[2])["server"] == server
        sl.pcap_sync(c.topo.remote, "e-app", pcap)
    finally:
        dump.stop()
    dirs = streams(pcap)
    assert len(dirs) >= 2, (dirs.keys(), dump.read_stderr())
    for key, data in dirs.items():
        assert data, key
        assert tls_records_only(data) > 0
        assert b"GET /mesh" not in data and b"HTTP/1.1" not in data
    # TLS 1.3: a ServerHello's supported_versions says 0x0304.
    assert any(b"\x00\x2b\x00\x02\x03\x04" in data for data in dirs.values())

    # Both sides name the other's exact identity.
    for d, peer, way in ((c.a, WEB, "outbound"), (c.a, LEDGER, "outbound"),
                         (c.b, FRONTEND, "inbound"), (c.c, FRONTEND, "inbound")):  # fmt: skip
        sl.wait_until(lambda d=d, p=peer, w=way: "%s TLS handshake done: peer %s serial" % (w, p)
                      in d.log_text(), 5, what="%s handshake with %s" % (way, peer))  # fmt: skip
    out = sl.shuntctl(c.topo.app, "endpoints").stdout
    assert WEB in out and LEDGER in out, out

    # openssl s_client against each inbound port sees that pod's identity.
    key, csr = shuntca.make_csr(c.path("tester/x")[:-2], san="URI:" + sid("shop", "tester"))
    status, _, issued_to = c.cp.ca.certificate(c.cp.api.token("shop", "tester"), csr)
    assert status == 200, issued_to
    cert = c.path("tester/tls.crt")
    with open(cert, "w") as f:
        f.write(issued_to["certificate_chain"])
    for host, want in ((T.REMOTE4, WEB), (R2_ADDR, LEDGER)):
        r, san = served_identity(c, host, cert, key)
        assert "URI:%s" % want in san and "DNS:" not in san, (san, r.stdout, r.stderr)
        assert "Verify return code: 0" in r.stdout, r.stdout

    # No sidecar file holds a private key (the CA's directory does: the
    # search finds one where there is one).
    for d in (c.a, c.b, c.c):
        paths = sidecar_files(c, d)
        assert ca_plane.private_key_files(paths) == [], paths
    assert ca_plane.private_key_files([c.cp.ca.ca_dir])


def test_unmeshed_pod_plaintext_then_strict(cluster):
    c = cluster
    e = wait_endpoint(c.a, "shop", "legacy", PLAIN_ADDR, meshed=False, outbound="plaintext")
    assert e["identity"] == ""
    tls_before = c.a.metric("shunt_tls_handshakes_total", default=0.0, direction="outbound")
    got = sl.wait_until(lambda: (lambda r: r if r[0] == 200 else None)(get(c, VIP_LEGACY)), 10,
                        what="plaintext GET to the unmeshed pod")  # fmt: skip
    assert json.loads(got[2])["server"] == "legacy"
    assert c.a.metric("shunt_tls_handshakes_total", default=0.0, direction="outbound") == tls_before
    # The Service demands strict: refused with the reason, the mesh unaffected.
    c.apply("services", service_obj("shop", "legacy", VIP_LEGACY, mode="strict"), "MODIFIED")
    wait_endpoint(c.a, "shop", "legacy", PLAIN_ADDR, meshed=False, outbound="refused")
    status, hdrs, _ = sl.wait_until(
        lambda: (lambda r: r if r[0] == 503 else None)(get(c, VIP_LEGACY)), 10,
        what="the strict refusal")  # fmt: skip
    reason = hdrs.get("X-Shunt-Reason", "")
    assert "not meshed" in reason and "strict" in reason, hdrs
    assert get(c, VIP_WEB)[0] == 200
