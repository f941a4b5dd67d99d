# SPDX-License-Identifier: Apache-2.0
"""Node-side capture for sidecar pods (chart value sidecar.captureFrom=node,
Pod Security "baseline"): the pod has a shunt-proxy container and the
shunt.io/node-capture annotation the webhook writes, and no init container.
The node agent (shuntd, mode node, the stand-in API server, the pods'
real cgroups and network namespaces: test_node_pods.py's harness) enters
the pod's network namespace and installs the capture there.

Checked with iptables-save inside the pod's namespace: the rules are
exactly those `shuntd init` installs from the same settings in another
namespace; the application's connection is redirected to the proxy's
outbound port with its original destination, the proxy's uid is not;
GET /pods reports the capture; the node agent's exit leaves it installed and
its restart replaces it in place (no duplicate); the pod's deletion
removes it; a bad annotation is reported failed and installs nothing; pods
that are not sidecar pods with the annotation are left alone."""

import json
import socket
import struct

import pytest

import k8schart as kc
import shuntlib as sl
from test_node_pods import KubePod, by_name, make, node  # noqa: F401 (node: the fixture)

# What the webhook writes for a pod with the chart's values below (checked
# in test_installed_as_shuntd_init_installs against the real webhook).
SETTINGS = {"SHUNT_REDIRECT": "iptables", "SHUNT_PROXY_UID": "1337",
            "SHUNT_ADMIN_METRICS_PORT": "15020", "SHUNT_EXCLUDE_INBOUND_PORTS": "9100",
            "SHUNT_EXCLUDE_OUTBOUND_CIDRS": "10.96.0.0/12"}
CHART_VALUES = {"nodeAgent": {"enabled": True, "namespaces": []}, "sidecar": {"captureFrom": "node",
                                                            "excludeInboundPorts": [9100]}}
POD_ANNOTATIONS = {"shunt.io/exclude-outbound-cidrs": "10.96.0.0/12"}
SO_ORIGINAL_DST = 80
POD_ADDR = "10.250.0.2"
DEST = "10.250.0.99"  # on the pod's veth subnet, answered by nobody


class SidecarPod(KubePod):
    """A pod the webhook injected with captureFrom=node."""

    def __init__(self, *a, sidecar=True, settings=None, **kw):
        super().__init__(*a, **kw)
        self.sidecar, self.settings = sidecar, settings

    def obj(self):
        o = super().obj()
        if self.sidecar:
            o["spec"]["initContainers"] = [{"name": "shunt-proxy", "restartPolicy": "Always"}]
        if self.settings is not None:
            text = self.settings if isinstance(self.settings, str) else json.dumps(self.settings)
            o["metadata"]["annotations"] = {"shunt.io/node-capture": text}
        return o


def make_sidecar(node_fx, name, ip, **kw):
    env, d, root, pods = node_fx
    p = SidecarPod(root, name, "systemd", "Burstable", ip, "sa-sc", **kw)
    pods.append(p)
    p.start()
    env.apply("pods", "ADDED", p.obj())
    return p


def capture_state(env, d, name):
    p = by_name(env, d).get(name)
    return (p or {}).get("sidecar_capture")


def wait_state(env, d, name, state):
    return sl.wait_until(lambda: (lambda s: s if s and s["state"] == state else None)(
        capture_state(env, d, name)), 60, interval=0.2, what="%s: sidecar capture %s" % (name, state))


def rules(netns, v6=False):
    """The nat table as iptables-save prints it, without the volatile lines
    (comments with dates, counters)."""
    out = []
    for line in netns.iptables_save(v6=v6).splitlines():
        if line.startswith("#"):
            continue
        if line.startswith(":"):
            line = line.split(" [")[0]
        out.append(line)
    return out


def ours(lines):
    return [ln for ln in lines if "SIDECAR_PROXY" in ln]


def metric_is(d, name, value):
    """The metric has that value (read again while the admin API is slow to
    answer on a loaded machine)."""
    sl.wait_until(lambda: d.metric(name) == value, 30, interval=0.2,
                  what="%s == %s" % (name, value))


def delete(node_fx, p):
    env, d, root, pods = node_fx
    env.apply("pods", "DELETED", p.obj())
    sl.wait_until(lambda: p.name not in by_name(env, d), 30, what="%s gone" % p.name)
    p.stop()
    pods.remove(p)


def webhook_settings():
    """The shunt.io/node-capture annotation the chart's webhook writes."""
    objs = kc.render_cases({"c": CHART_VALUES})["c"]
    pod = {"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": "sc1", "namespace": "shop", "annotations": POD_ANNOTATIONS},
           "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]}}
    out, _, _ = kc.inject_pod(kc.inject_config(objs), pod, namespace="shop")
    return out["metadata"]["annotations"]["shunt.io/node-capture"]


def test_installed_as_shuntd_init_installs(node):
    env, d, root, pods = node
    text = webhook_settings()  # the pod as injected, end to end
    assert json.loads(text) == SETTINGS
    p = make_sidecar(node, "sc1", "10.244.1.51", settings=text)
    st = wait_state(env, d, "sc1", "installed")
    assert st["mode"] == "iptables" and st["inbound_port"] == 15001
    assert st["outbound_port"] == 15002 and st["skipped_uid"] == 1337
    got = by_name(env, d)["sc1"]
    assert got["sidecar"] is True and got["node_capture"] is True
    assert any("sc1: sidecar capture installed from the node in netns %d" % p.netns_ino
               in ln.get("msg", "") for ln in d.log_lines())

    # The reference: `shuntd init` with the same settings in a namespace of its own.
    ref = sl.Pod("ref-init")
    try:
        r = ref.run([sl.SHUNTD, "init"], env=dict(SETTINGS, PATH="/usr/sbin:/usr/bin:/sbin:/bin"),
                    check=False)
        assert r.returncode == 0, r.stderr
        for v6 in (False, True):
            want = ours(rules(ref, v6))
            assert want, "shuntd init installed no %s rules" % ("ip6tables" if v6 else "iptables")
            assert ours(rules(p.netns, v6)) == want
    finally:
        ref.delete()
    text = "\n".join(ours(rules(p.netns)))
    assert "--uid-owner 1337" in text and "--to-ports 15002" in text and "--to-ports 15001" in text
    assert "--dport 9100" in text and "10.96.0.0/12" in text and "--dport 15020" in text
    metric_is(d, "shunt_node_sidecar_captures", 1)


def orig_dst_server(netns, port):
    """A stand-in for the proxy's outbound listener: answers each connection
    with the original destination the capture recorded."""

    class Srv(sl.ThreadedServer):
        def serve(self, conn, n):
            raw = conn.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
            port_, addr = struct.unpack("!2xH4s8x", raw)
            conn.sendall(("%s:%d\n" % (socket.inet_ntoa(addr), port_)).encode())

    return Srv(netns, "0.0.0.0", port)


def packets(netns, needle):
    """Packets counted by the OUTBOUND rule containing needle."""
    text = netns.run(["iptables-save", "-c", "-t", "nat"]).stdout
    (line,) = [ln for ln in text.splitlines() if "-A SIDECAR_PROXY_OUTBOUND" in ln and needle in ln]
    return int(line[1:].split(":")[0])


def test_traffic_captured(node):
    env, d, root, pods = node
    p = next(x for x in pods if x.name == "sc1")
    # The pod's interface (a CNI's veth; both ends here: nothing leaves the
    # pod's namespace), and a destination routed through it.
    p.netns.ip("link", "add", "eth0", "type", "veth", "peer", "name", "eth0p")
    p.netns.ip("addr", "add", POD_ADDR + "/24", "dev", "eth0")
    p.netns.ip("link", "set", "eth0", "up")
    p.netns.ip("link", "set", "eth0p", "up")
    srv = orig_dst_server(p.netns, 15002)
    try:
        # The application (root): redirected, original destination kept.
        s = p.netns.connect(DEST, 80)
        try:
            assert sl.recv_line(s).strip() == ("%s:80" % DEST).encode()
        finally:
            s.close()
        # The proxy's uid: not captured (its SYN goes out eth0, unanswered).
        redirected = packets(p.netns, "--to-ports 15002")
        skipped = packets(p.netns, "--uid-owner 1337")
        r = p.netns.run(["setpriv", "--reuid", "1337", "--regid", "1337", "--clear-groups",
                         "/usr/bin/curl", "-sS", "--max-time", "1", "http://%s/" % DEST],
                        check=False)
        assert r.returncode in (7, 28), (r.returncode, r.stderr)  # refused or timed out
        assert packets(p.netns, "--uid-owner 1337") == skipped + 1
        assert packets(p.netns, "--to-ports 15002") == redirected
    finally:
        srv.close()


def test_agent_exit_keeps_capture_and_restart_replaces_it(node):
    env, d, root, pods = node
    p = next(x for x in pods if x.name == "sc1")
    before = ours(rules(p.netns))
    assert d.stop() == 0
    assert any("the sidecar capture of 1 pod(s) stays installed" in ln.get("msg", "")
               for ln in d.log_lines())
    assert ours(rules(p.netns)) == before
    d.restart()
    wait_state(env, d, "sc1", "installed")
    assert ours(rules(p.netns)) == before  # replaced in place: no second jump


def test_deleted_pod_capture_removed(node):
    env, d, root, pods = node
    p = next(x for x in pods if x.name == "sc1")
    env.apply("pods", "DELETED", p.obj())
    sl.wait_until(lambda: not ours(rules(p.netns)) and not ours(rules(p.netns, True)), 30,
                  what="sc1's capture removed")
    assert "sc1" not in by_name(env, d)
    p.stop()
    pods.remove(p)
    metric_is(d, "shunt_node_sidecar_captures", 0)


@pytest.mark.parametrize("settings,why", [
    ("{not json", "not a JSON object"),
    ({"SHUNT_CA_ADDRESS": "https://elsewhere"}, "SHUNT_CA_ADDRESS is not a capture setting"),
    ({"SHUNT_REDIRECT": "ebpf"}, "the node installs iptables capture only"),
    ({"SHUNT_EXCLUDE_INBOUND_PORTS": "http"}, "expected a port"),
])
def test_bad_settings_reported(node, settings, why):
    env, d, root, pods = node
    failures = sl.wait_until(lambda: [d.metric("shunt_node_sidecar_capture_failures_total", 0)],
                             30, what="/metrics")[0]
    p = make_sidecar(node, "bad", "10.244.1.52", settings=settings)
    try:
        st = wait_state(env, d, "bad", "failed")
        assert why in st["error"], st
        assert not ours(rules(p.netns))
        metric_is(d, "shunt_node_sidecar_capture_failures_total", failures + 1)
    finally:
        delete(node, p)


def test_other_pods_left_alone(node):
    """A sidecar pod without the annotation (its own init container
    captures) and a node-mode pod (no sidecar; the node's own capture's):
    no sidecar capture."""
    env, d, root, pods = node
    own = make_sidecar(node, "own", "10.244.1.53", settings=None)
    nm = make_sidecar(node, "nodemode", "10.244.1.54", sidecar=False, settings=SETTINGS)
    try:
        for p in (own, nm):
            sl.wait_until(lambda: by_name(env, d).get(p.name, {}).get("state") == "ready", 30,
                          what="%s ready" % p.name)
            assert capture_state(env, d, p.name) is None
            assert not ours(rules(p.netns))
    finally:
        delete(node, own)
        delete(node, nm)
