# SPDX-License-Identifier: Apache-2.0
"""Automatic mTLS from Kubernetes discovery: the identity of each endpoint
comes from its Pod (EndpointSlice targetRef -> Pod -> serviceAccountName),
whether it is meshed from the pod label shunt.io/meshed, its mode from the
shunt.io/mtls-mode annotations (Pod > Service > Namespace > mtls.mode).

Three pods: "app" (the client, shuntd-a with kubernetes discovery against
the stand-in API server, k8s_standin.py), "remote" (endpoint web-x,
shuntd-b with service account sa-x) and "remote2" (endpoint web-y,
shuntd-c with service account sa-y), all sharing one built-in CA (ca_dir).
The handshake lines and counters of the three daemons say which
connections were mutual TLS and with which identity."""

import json
import os

import pytest

import shuntlib as sl
from shuntlib import Topology as T
from test_k8s import Env, WATCH_TIMEOUT_S
from test_mtls import tcp_payloads

NS = "shop"
VIP = "10.96.0.30"
X_ADDR, Y_ADDR = T.REMOTE4, "10.78.0.2"
TD = "cluster.local"


def spiffe(sa):
    return "spiffe://%s/ns/%s/sa/%s" % (TD, NS, sa)


def namespace_obj(mode=None):
    md = {"name": NS}
    if mode:
        md["annotations"] = {"shunt.io/mtls-mode": mode}
    return {"metadata": md}


def service_obj(mode=None, name="web", vip=VIP):
    md = {"name": name, "namespace": NS}
    if mode:
        md["annotations"] = {"shunt.io/mtls-mode": mode}
    return {
        "metadata": md,
        "spec": {"clusterIP": vip, "clusterIPs": [vip],
                 "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP",
                            "appProtocol": "http"}]},
    }


RAW_VIP = "10.96.0.31"
# Service web-id: web-x and web-y again, for the identity mismatch test
# alone. Its failed handshakes open web-y's circuit breaker and eject it
# (both per service): on web that would keep the strict test's requests
# off web-y for 30 s.
ID_VIP = "10.96.0.32"


def raw_service_obj():
    """Service raw: no appProtocol (sniffed), only web-y behind it."""
    return {
        "metadata": {"name": "raw", "namespace": NS},
        "spec": {"clusterIP": RAW_VIP, "clusterIPs": [RAW_VIP],
                 "ports": [{"name": "tcp", "port": 81, "targetPort": 8080, "protocol": "TCP"}]},
    }


def raw_slice_obj():
    return {
        "metadata": {"name": "raw-1", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": "raw"}},
        "addressType": "IPv4",
        "ports": [{"name": "tcp", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [Y_ADDR], "conditions": {"ready": True},
                       "targetRef": {"kind": "Pod", "namespace": NS, "name": "web-y"}}],
    }


def slice_obj(service="web"):
    return {
        "metadata": {"name": service + "-1", "namespace": NS,
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [X_ADDR], "conditions": {"ready": True},
             "targetRef": {"kind": "Pod", "namespace": NS, "name": "web-x"}},
            {"addresses": [Y_ADDR], "conditions": {"ready": True},
             "targetRef": {"kind": "Pod", "namespace": NS, "name": "web-y"}},
        ],
    }


def pod_obj(name, sa, ip, meshed=True, mode=None):
    labels = {"app": "web"}
    if meshed:
        labels["shunt.io/meshed"] = "true"
    md = {"name": name, "namespace": NS, "labels": labels}
    if mode:
        md["annotations"] = {"shunt.io/mtls-mode": mode}
    return {"metadata": md, "spec": {"serviceAccountName": sa, "containers": [{"name": "app"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}}


@pytest.fixture(scope="module")
def mesh():
    env = Env()
    topo = env.topo
    daemons, procs = [], []
    try:
        topo.route_vips()
        r2 = sl.Pod("remote2")
        topo.remote2 = r2
        sl.link(topo.app, r2, "10.78.0.1", Y_ADDR, "fd78::1", "fd78::2")
        procs.append(topo.remote.spawn_peer("http", "ep-x", ["%s:8080" % X_ADDR]))
        procs.append(r2.spawn_peer("http", "ep-y", ["%s:8080" % Y_ADDR]))
        env.make_certs()
        env.token = "standin-token-id"
        token_file = os.path.join(env.dir, "token")
        with open(token_file, "w") as f:
            f.write(env.token + "\n")
        kubeconfig = env.write_kubeconfig(token_file)
        env.start_standin()
        procs.append(env.standin)
        env.apply("namespaces", "ADDED", namespace_obj())
        env.apply("services", "ADDED", service_obj())
        env.apply("endpointslices", "ADDED", slice_obj())
        env.apply("services", "ADDED", raw_service_obj())
        env.apply("endpointslices", "ADDED", raw_slice_obj())
        env.apply("services", "ADDED", service_obj(name="web-id", vip=ID_VIP))
        env.apply("endpointslices", "ADDED", slice_obj("web-id"))
        env.apply("pods", "ADDED", pod_obj("web-x", "sa-x", X_ADDR))
        env.apply("pods", "ADDED", pod_obj("web-y", "sa-y", Y_ADDR))
        ca_dir = os.path.join(env.dir, "ca")
        common = {"mtls.ca-dir": ca_dir, "mtls.namespace": NS, "mtls.mode": "permissive"}
        a = sl.Shuntd(topo.app, sl.shuntd_args(**common, **{
            "mtls.service-name": "client",
            "service-discovery.type": "kubernetes",
            "service-discovery.kubernetes.kubeconfig-path": kubeconfig,
            "service-discovery.kubernetes.namespace": NS,
        }), name="shuntd-a", env={"SHUNT_K8S_WATCH_TIMEOUT": str(WATCH_TIMEOUT_S)})
        daemons.append(a)
        a.wait_ready()
        for pod, name, sa in ((topo.remote, "shuntd-b", "sa-x"), (r2, "shuntd-c", "sa-y")):
            d = sl.Shuntd(pod, sl.shuntd_args(**common, **{
                "mtls.service-name": name, "mtls.service-account": sa}), name=name)
            daemons.append(d)
            d.wait_ready()
        yield env, a, daemons[1], daemons[2]
    finally:
        try:
            sl.teardown(None, daemons, procs)
        finally:
            if getattr(topo, "remote2", None):
                topo.remote2.delete()
            topo.delete()


def endpoints(d, service="web"):
    """address -> endpoint object of service shop/<service> in d's /endpoints."""
    for s in d.json("/endpoints")["services"]:
        if s["name"] == service and s["namespace"] == NS:
            return {e["address"]: e for e in s["endpoints"]}
    return {}


def wait_endpoint(d, addr, service="web", **want):
    """Waits until /endpoints shows addr with want in shop/<service>, and the
    proxy routes by that registry version (it takes new snapshots on its own
    tick)."""
    def ok():
        js = d.json("/endpoints")
        for s in js["services"]:
            if s["name"] == service and s["namespace"] == NS:
                for e in s["endpoints"]:
                    if e["address"] == addr and all(e.get(k) == v for k, v in want.items()):
                        return js["version"], e
        return None

    version, e = sl.wait_until(ok, 10, interval=0.1, what="endpoint %s %s" % (addr, want))
    prefix = "routing by registry version "
    sl.wait_until(lambda: any(ln.get("msg", "").startswith(prefix) and
                              int(ln["msg"][len(prefix):]) >= version for ln in d.log_lines()),
                  10, what="the proxy routing by version %d" % version)
    return e


def requests(env, n, vip=VIP):
    """n GETs through the service at vip: {server: count}, and the refusals
    (status, X-Shunt-Reason)."""
    served, refused = {}, []
    for _ in range(n):
        status, hdrs, body = env.topo.app.http(vip, 80, "GET", "/")
        if status == 200:
            name = json.loads(body)["server"]
            served[name] = served.get(name, 0) + 1
        else:
            refused.append((status, hdrs.get("X-Shunt-Reason", "")))
    return served, refused


def routed(env):
    try:
        return env.topo.app.http(VIP, 80, "GET", "/")[0] == 200
    except OSError:
        return False


def on_the_wire(env, fn):
    """Runs fn() while tcpdump records port 8080 on web-y's side of its link;
    returns what fn returned and the TCP payloads seen."""
    pcap = os.path.join(env.dir, "y.pcap")
    dump = sl.tcpdump(env.topo.remote2, "e-app", pcap, "tcp port 8080")
    try:
        out = fn()
        sl.pcap_sync(env.topo.remote2, "e-app", pcap)
    finally:
        dump.stop()
    return out, tcp_payloads(pcap)


def tls_in(d):
    return d.metric("shunt_tls_handshakes_total", default=0.0, direction="inbound")


def test_meshed_endpoints_each_verified_as_their_own(mesh):
    env, a, b, c = mesh
    ex = wait_endpoint(a, X_ADDR, meshed=True, outbound="mtls")
    ey = wait_endpoint(a, Y_ADDR, meshed=True, outbound="mtls")
    assert ex["identity"] == spiffe("sa-x") and ey["identity"] == spiffe("sa-y")
    assert ex["mtls"] == "default"  # no annotation anywhere: mtls.mode (permissive)
    # The proxy takes the registry's snapshot as its route table on its own tick.
    sl.wait_until(lambda: routed(env), 5, what="the service routed")
    # Connections pooled by earlier requests (of this test or others) would
    # carry these without a handshake: http.upstream_idle_timeout closes them.
    a.wait_metric("shunt_upstream_idle_connections", lambda v: v == 0, timeout=15)
    bx, cy = tls_in(b), tls_in(c)
    (served, refused), wire = on_the_wire(env, lambda: requests(env, 8))
    # Only TLS records reach web-y (application data; the handshakes may
    # have happened on pooled connections before).
    assert wire and b"GET /" not in b"".join(wire), wire[:1]
    assert any(p[:3] == b"\x17\x03\x03" for p in wire), wire[:1]
    assert not refused and served.get("ep-x", 0) >= 2 and served.get("ep-y", 0) >= 2, served
    # Each endpoint's own identity required and seen, on A's side and theirs.
    log = a.log_text()
    assert "outbound TLS handshake done: peer %s" % spiffe("sa-x") in log
    assert "outbound TLS handshake done: peer %s" % spiffe("sa-y") in log
    for d in (b, c):
        sl.wait_until(lambda d=d: "inbound TLS handshake done: peer %s" % spiffe("client")
                      in d.log_text(), 5, what="inbound handshake in " + d.proc.name)
    assert tls_in(b) > bx and tls_in(c) > cy
    # shuntctl shows the identity, meshed and the mode per endpoint.
    out = sl.shuntctl(env.topo.app, "endpoints").stdout
    assert spiffe("sa-x") in out and spiffe("sa-y") in out, out


def test_unmeshed_pod_plaintext_in_permissive(mesh):
    env, a, b, c = mesh
    # The label goes: the selector watch sees the pod DELETED.
    env.apply("pods", "MODIFIED", pod_obj("web-y", "sa-y", Y_ADDR, meshed=False))
    e = wait_endpoint(a, Y_ADDR, meshed=False, outbound="plaintext")
    assert e["identity"] == ""
    wait_endpoint(a, X_ADDR, meshed=True, outbound="mtls")
    cy = tls_in(c)
    sl.wait_until(
        lambda: (lambda r: r if r[0].get("ep-y") and not r[1] else None)(requests(env, 6)), 10,
        what="plaintext requests served by ep-y")
    (served, refused), wire = on_the_wire(env, lambda: requests(env, 6))
    assert served.get("ep-y") and not refused, (served, refused)
    # Served by web-y without a handshake in its sidecar: plaintext.
    assert tls_in(c) == cy
    assert b"GET / HTTP/1.1" in b"".join(wire)
    env.apply("pods", "MODIFIED", pod_obj("web-y", "sa-y", Y_ADDR))
    wait_endpoint(a, Y_ADDR, meshed=True, outbound="mtls")


def test_strict_refuses_unmeshed_with_reason(mesh):
    env, a, b, c = mesh
    before = a.metric("shunt_connections_closed_total", default=0.0, reason="mtls_required")
    env.apply("namespaces", "MODIFIED", namespace_obj("strict"))
    env.apply("pods", "MODIFIED", pod_obj("web-y", "sa-y", Y_ADDR, meshed=False))
    e = wait_endpoint(a, Y_ADDR, meshed=False, outbound="refused")
    assert e["mtls"] == "strict"
    # The meshed endpoint keeps working over mTLS.
    assert wait_endpoint(a, X_ADDR, outbound="mtls")["mtls"] == "strict"
    # The proxy takes the new snapshot as its route table on its own tick.
    sl.wait_until(lambda: requests(env, 4)[1], 5, what="a refusal")
    served, refused = requests(env, 6)
    assert "ep-y" not in served and served.get("ep-x"), served
    assert refused, "no request landed on the unmeshed endpoint"
    for status, reason in refused:
        assert status == 503 and "not meshed" in reason and "strict" in reason, (status, reason)
    assert a.metric("shunt_connections_closed_total", default=0.0,
                    reason="mtls_required") >= before + len(refused)
    # Each worker logs one warning a second (the rest are counted in a
    # "left out" line): warnings of an earlier test may still hold that
    # second, so refusals go on until one is logged.
    def refusal_logged():
        if "is not meshed and its mTLS mode is strict" in a.log_text():
            return True
        requests(env, 2)  # round robin: one more refusal
        return False

    sl.wait_until(refusal_logged, 5, interval=0.2, what="the refusal's warning line")
    # Sniffed ports: plain TCP bytes are refused (closed, nothing relayed);
    # an HTTP request gets its 503 from the HTTP engine.
    refused_before = a.metric("shunt_connections_closed_total", default=0.0,
                              reason="mtls_required")
    s = env.topo.app.connect(RAW_VIP, 81)
    try:
        s.sendall(b"hello, not http\r\n")
        try:
            got = sl.recv_all(s, timeout=5)
        except ConnectionResetError:
            got = b""
        assert got == b"", got
    finally:
        s.close()
    a.wait_metric("shunt_connections_closed_total", lambda v: v > refused_before,
                  reason="mtls_required")
    status, hdrs, _ = env.topo.app.http(RAW_VIP, 81, "GET", "/")
    assert status == 503 and "not meshed" in hdrs.get("X-Shunt-Reason", ""), (status, hdrs)
    # The Service's annotation is more specific than the Namespace's.
    env.apply("services", "MODIFIED", service_obj("permissive"))
    wait_endpoint(a, Y_ADDR, meshed=False, outbound="plaintext", mtls="permissive")
    served, refused = sl.wait_until(
        lambda: (lambda r: r if r[0].get("ep-y") and not r[1] else None)(requests(env, 6)), 10,
        what="ep-y reached again")
    env.apply("services", "MODIFIED", service_obj())
    env.apply("namespaces", "MODIFIED", namespace_obj())
    env.apply("pods", "MODIFIED", pod_obj("web-y", "sa-y", Y_ADDR))
    wait_endpoint(a, Y_ADDR, meshed=True, outbound="mtls", mtls="default")


def test_identity_mismatch_refused(mesh):
    env, a, b, c = mesh
    # The pod says service account sa-z; its sidecar presents sa-y.
    env.apply("pods", "MODIFIED", pod_obj("web-y", "sa-z", Y_ADDR))
    wait_endpoint(a, Y_ADDR, "web-id", identity=spiffe("sa-z"), outbound="mtls")
    fails = a.metric("shunt_tls_handshake_failures_total", default=0.0, direction="outbound",
                     reason="wrong_identity")
    sl.wait_until(lambda: "ep-y" not in requests(env, 4, ID_VIP)[0], 5, what="route table update")

    def refused_once_more():
        served, _ = requests(env, 2, ID_VIP)
        assert "ep-y" not in served, served  # never reached: retried on web-x or refused
        return a.metric("shunt_tls_handshake_failures_total", default=0.0,
                        direction="outbound", reason="wrong_identity") > fails

    try:
        sl.wait_until(refused_once_more, 10, interval=0.1, what="a wrong_identity refusal")
    except sl.HarnessError:
        raise AssertionError("no refusal counted; web-y now: %s"
                             % endpoints(a, "web-id").get(Y_ADDR))
    audit = 'reason=wrong_identity detail="expected %s" identity="%s"' % (spiffe("sa-z"),
                                                                           spiffe("sa-y"))
    sl.wait_until(lambda: any(audit in ln.get("msg", "") for ln in a.log_lines()), 5,
                  what="the audit line")
    env.apply("pods", "MODIFIED", pod_obj("web-y", "sa-y", Y_ADDR))
    wait_endpoint(a, Y_ADDR, identity=spiffe("sa-y"))
    wait_endpoint(a, Y_ADDR, "web-id", identity=spiffe("sa-y"))
