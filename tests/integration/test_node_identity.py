# SPDX-License-Identifier: Apache-2.0
"""Node mode, the pods' identities (issue 16, item 3; docs/discovery.md, Node
mode): shuntd with mode node on node-a holds one certificate per
namespace/service account of its READY meshed pods, obtained from a real
shunt-ca by delegated issuance (the node agent's own pod-bound token,
"for": the pod's namespace and service account), through the Kubernetes API
stand-in that both the CA and shuntd's Pods watch read. Pods are real: a
cgroup in kubelet's layout and a network namespace with a process each
(test_node_pods.KubePod).

- pods of two service accounts -> one certificate each, with the right
  SPIFFE ID (/certs, whose chain `openssl verify` checks against the CA's
  bundle, with exactly that URI SAN; the CA's audit names the agent, node-a
  and the pod, the serial is the one /certs shows); `shuntctl certs` lists
  them;
- a second pod of an account fetches nothing new (no CA request);
- the last pod of an account leaves -> dropped once node.identity_drain is
  over, not before;
- shunt-ca down -> the new identity holds no certificate (its pods' connections
  are refused), its requests are retried with backoff and counted, logged
  once for the episode; the CA back -> the certificate arrives;
- a meshed pod on node-b never gets an identity here (and nothing is asked
  for it);
- with a short lifetime from the CA, an identity is renewed (a new serial,
  the old one draining)."""

import json
import os
import re
import subprocess

import pytest

import ca_plane
import shuntca
import shuntlib as sl
from test_node_pods import MOUNT_CGROUP2, NODE, OTHER, KubePod, cgroup2_root

TD = "cluster.local"
AGENT_NS, AGENT_SA, AGENT_POD = "shunt-system", "shunt-node", "shunt-node-a"
DRAIN_S = 3
API_PORT = 16480


def spiffe(sa, ns="shop"):
    return "spiffe://%s/ns/%s/sa/%s" % (TD, ns, sa)


class Node:
    def __init__(self):
        self.root = cgroup2_root()
        self.pod = sl.Pod("nodeid")
        self.pods, self.daemons = [], []
        self.cp = None
        try:
            self.cp = ca_plane.ControlPlane([self.pod], api_listen="0.0.0.0")
            self.dir = sl.tmpdir()
            # the agent's own pod (not meshed) and its pod-bound token, audience shunt-ca
            self.apply("ADDED", {
                "metadata": {"name": AGENT_POD, "namespace": AGENT_NS},
                "spec": {"nodeName": NODE, "serviceAccountName": AGENT_SA,
                         "containers": [{"name": "shuntd"}]},
                "status": {"phase": "Running"}})
            token = self.cp.api.ctl("POST", "/token", {
                "namespace": AGENT_NS, "service_account": AGENT_SA, "pod": AGENT_POD,
                "bound": True, "audience": "shunt-ca"})["token"]
            self.token = os.path.join(self.dir, "token")
            with open(self.token, "w") as f:
                f.write(token)
            self.bundle = self.cp.bundle(os.path.join(self.dir, "bundle.pem"))
            kubeconfig = os.path.join(self.dir, "kubeconfig.json")
            with open(kubeconfig, "w") as f:
                json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "n",
                           "clusters": [{"name": "s", "cluster": {
                               "server": "http://%s:%d" % (ca_plane.CA_IP, API_PORT)}}],
                           "users": [{"name": "u", "user": {"token": shuntca.CALLER_TOKEN}}],
                           "contexts": [{"name": "n", "context": {"cluster": "s",
                                                                 "user": "u"}}]}, f)
            self.d = sl.Shuntd(self.pod, sl.shuntd_args(**{
                "redirect": "off",
                "mode": "node",
                "node.identity-drain": "%ds" % DRAIN_S,
                "service-discovery.type": "kubernetes",
                "service-discovery.kubernetes.kubeconfig-path": kubeconfig,
                "mtls.ca-address": ca_plane.CA_ADDRESS,
                "mtls.ca-bundle": self.bundle,
                "mtls.ca-token-file": self.token,
            }), name="shuntd-nodeid", env={"NODE_NAME": NODE}, wrap=MOUNT_CGROUP2)
            self.daemons.append(self.d)
            self.d.wait_ready()
        except BaseException:
            self.close()
            raise

    def apply(self, etype, obj):
        self.cp.api.ctl("POST", "/apply", {"kind": "pods", "type": etype, "object": obj})

    def add(self, name, sa, ip, node=NODE, start=True):
        p = KubePod(self.root, name, "cgroupfs", "BestEffort", ip, sa, node=node)
        self.pods.append(p)
        if start:
            p.start()
        self.apply("ADDED", p.obj())
        return p

    def remove(self, p):
        self.apply("DELETED", p.obj())

    def close(self):
        try:
            sl.teardown(None, self.daemons, ())
        finally:
            try:
                for p in reversed(self.pods):
                    p.stop()
            finally:
                if self.cp:
                    self.cp.close()
                self.pod.delete()

    # -- what shuntd says
    def identities(self):
        return {i["spiffe_id"]: i for i in self.d.json("/certs")["node_identities"]["identities"]}

    def identity(self, sa, state="ready", pods=None):
        def ok():
            i = self.identities().get(spiffe(sa))
            return i if i and i["state"] == state and (pods is None or i["pods"] == pods) \
                else None
        try:
            return sl.wait_until(ok, 20, interval=0.1,
                                 what="identity %s %s (pods %s)" % (spiffe(sa), state, pods))
        except sl.HarnessError as e:
            raise sl.HarnessError("%s; identity now %s; pods %s" % (
                e, json.dumps(self.identities().get(spiffe(sa)))[:1500],
                json.dumps(self.d.json("/pods").get("pods"))[:3000])) from None

    def issued(self, sa):
        """The CA's audits of certificates issued for sa's identity."""
        return [a for a in self.cp.ca.audits()
                if a.get("identity") == spiffe(sa) and a.get("result") == "issued"]


@pytest.fixture(scope="module")
def node():
    n = Node()
    try:
        yield n
    finally:
        n.close()


def test_one_certificate_per_account(node):
    web1 = node.add("web-1", "web", "10.244.1.31")
    db1 = node.add("db-1", "db", "10.244.1.32")
    for sa, p in (("web", web1), ("db", db1)):
        i = node.identity(sa, pods=1)
        assert (i["namespace"], i["service_account"]) == ("shop", sa)
        store = i["store"]
        assert store["identity"] == spiffe(sa) and store["source"] == "ca"
        cur = store["current"]
        assert cur["identity"] == spiffe(sa) and cur["expires_in_s"] > 0
        assert store["last_issuance"]["requested"] == spiffe(sa)
        # the chain shuntd holds verifies against shunt-ca's bundle and names
        # exactly the pod's identity
        leaf = os.path.join(node.dir, sa + ".pem")
        with open(leaf, "w") as f:
            f.write(i["certificate_chain"])
        v = subprocess.run(["openssl", "verify", "-CAfile", node.bundle, leaf],
                           capture_output=True, text=True, timeout=30)
        assert v.returncode == 0, v.stdout + v.stderr
        text = shuntca.openssl("x509", "-noout", "-text", "-in", leaf)
        sans = re.search(r"Subject Alternative Name:.*?\n\s*(.*)\n", text).group(1).strip()
        assert sans == "URI:" + spiffe(sa), text
        # the CA issued exactly that certificate, to the node agent, for a pod of node-a
        audits = sl.wait_until(lambda: node.issued(sa), 5, what="CA audit for " + sa)
        assert len(audits) == 1, audits
        a = audits[0]
        assert a["serial"].lower().lstrip("0") == cur["serial"].lower().lstrip("0"), (a, cur)
        assert (a["agent"], a["node"], a["pod"]) == ("%s/%s" % (AGENT_NS, AGENT_SA), NODE,
                                                     p.name)
    text = sl.shuntctl(node.pod, "certs")
    assert text.returncode == 0, text.stderr
    assert "node identities: 2 held" in text.stdout, text.stdout
    for sa in ("web", "db"):
        line = next(ln for ln in text.stdout.splitlines() if spiffe(sa) in ln)
        assert " ready " in line and line.split()[1] == "1", line
    m = node.d.metrics_text()
    p = subprocess.run(["promtool", "check", "metrics"], input=m, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    assert 'shunt_node_identities{state="ready"} 2\n' in m
    assert 'shunt_node_identity_cert_expiry_seconds{namespace="shop",service_account="web"}' in m


def test_second_pod_of_an_account_fetches_nothing(node):
    node.identity("web", pods=1)
    before = node.d.metric("shunt_node_identity_certificates_total")
    node.add("web-2", "web", "10.244.1.33")
    i = node.identity("web", pods=2)
    assert len(node.issued("web")) == 1
    assert node.d.metric("shunt_node_identity_certificates_total") == before
    assert i["store"]["ca_requests"] == 1


def test_last_pod_leaves_then_dropped_after_the_drain(node):
    webs = [p for p in node.pods if p.sa == "web"]
    assert len(webs) == 2
    node.remove(webs[0])
    node.identity("web", pods=1)
    node.remove(webs[1])
    i = node.identity("web", state="draining", pods=0)
    assert i["store"]["current"]["identity"] == spiffe("web")  # kept through the drain
    assert 0 < i["drop_in_ms"] <= DRAIN_S * 1000
    sl.wait_until(lambda: spiffe("web") not in node.identities(), DRAIN_S + 10, interval=0.2,
                  what="web's identity dropped")
    assert node.d.metric("shunt_node_identity_dropped_total") == 1
    assert any("identity %s dropped" % spiffe("web") in ln.get("msg", "")
               for ln in node.d.log_lines())
    assert spiffe("db") in node.identities()  # the other account is untouched


def test_pod_on_another_node_gets_nothing(node):
    before = len(node.cp.ca.audits())
    node.add("cart-b", "cart", "10.244.2.31", node=OTHER, start=False)
    # a pod of node-a applied after it: once it is held, node-b's was seen too
    node.add("db-2", "db", "10.244.1.34")
    node.identity("db", pods=2)
    assert spiffe("cart") not in node.identities()
    assert not [a for a in node.cp.ca.audits()[before:] if a.get("identity") == spiffe("cart")]


def test_ca_down_held_back_then_issued(node):
    ca = node.cp.ca
    assert ca.stop() == 0
    try:
        failures0 = node.d.metric("shunt_node_identity_fetch_failures_total")
        node.add("cache-1", "cache", "10.244.1.35")
        i = node.identity("cache", state="retrying", pods=1)
        # no certificate: its connections are refused
        assert i["store"]["current"] is None and i["certificate_chain"] is None
        assert "unreachable" in i["store"]["rotation"]["last_error"]
        # retried with backoff, counted
        node.d.wait_metric("shunt_node_identity_fetch_failures_total",
                           lambda v: v >= failures0 + 3, timeout=15)
        assert node.d.metric("shunt_node_identities", state="retrying") == 1
        errors = [ln for ln in node.d.log_lines()
                  if "first certificate for %s failed" % spiffe("cache") in ln.get("msg", "")
                  and ln.get("level") == "error"]
        assert len(errors) == 1, errors  # once for the episode
    finally:
        ca.start()
    node.identity("cache", pods=1)
    assert any("certificate for %s obtained after" % spiffe("cache") in ln.get("msg", "")
               for ln in node.d.log_lines())
    assert len(node.issued("cache")) == 1


def test_rotated_as_the_store_does(node):
    """With a short lifetime from the CA, an identity is renewed when a third
    of it is left: a new serial, asked for again on the pod's behalf."""
    ca = node.cp.ca
    assert ca.stop() == 0
    k = ca.argv.index("--lifetime")
    ca.argv[k + 1] = "15s"  # renewed after 10 s
    ca.start()
    node.add("rot-1", "rot", "10.244.1.36")
    first = node.identity("rot", pods=1)["store"]["current"]["serial"]

    def renewed():
        i = node.identities()[spiffe("rot")]
        cur = i["store"]["current"]
        return i if cur["serial"] != first and i["state"] == "ready" else None

    i = sl.wait_until(renewed, 30, interval=0.2, what="rot's certificate renewed")
    assert i["store"]["rotation"]["rotations"] >= 1
    assert i["store"]["previous"]["serial"] == first  # the old one drains
    assert len(node.issued("rot")) >= 2
