# SPDX-License-Identifier: Apache-2.0
"""nodelab: two Kubernetes "nodes" with three "pods" each, for node mode
(issue 16) and its comparison with sidecars (bench/node_bench.sh).

    with Lab() as lab:                 # everything below exists
        lab.start_sidecars()           # one shuntd per meshed pod, or
        lab.start_node_agents()        # one shuntd per node (mode node)
        r = lab.client("frontend-0", "echo", lab.vip("shop", "web"), 7000, "--conns", "8")

Layout (IPv4):

    node-a  10.100.0.1  ==veth==  node-b  10.100.0.2     (network namespaces)
      |  pods 10.244.1.0/24          |  pods 10.244.2.0/24
      |  frontend-0 web-0 ledger-0   |  batch-0 web-1 ledger-1
      +-- cp (ca_plane.ControlPlane: the API stand-in and shunt-ca at CA_IP)

- A node is a network namespace with forwarding on, a route to the other
  node's pod range and to the control plane.
- A pod is a network namespace joined to its node by a veth pair as CNI's
  ptp plugin does it (pod eth0 10.244.N.X/32, default route via the gateway
  10.244.N.1 that every host-side veth of the node carries; a /32 route per
  pod on the node), plus a cgroup v2 directory in kubelet's layout (node-a:
  systemd driver, node-b: cgroupfs driver; the pod's QoS class; see
  userspace/node/pods.c node_cgroup_candidates) with one child per
  container ("app", and "proxy" for a sidecar), plus a process living in
  both: the pause process and the applications (peers.py http on 8080 and
  echo on 7000; the echo server is replaceable, e.g. by bench's rr).
- The cgroup v2 hierarchy and a bpffs are mounted under /run for this run
  (`ip netns exec` hides the host's /sys): every process of the lab,
  shuntd in node mode included, finds the hierarchy there.
- The API stand-in holds the pods (spec.nodeName, serviceAccountName, label
  shunt.io/meshed=true, status.podIPs, qosClass), the node agents' pods
  (shunt-system/shunt-node-<node>, host network), the Services shop/web and
  billing/ledger (ports http 80->8080 and echo 7000->7000) and their
  EndpointSlices, rewritten whenever a pod comes or goes.
- shunt-ca issues every certificate: sidecars ask for their own identity
  (projected token of the pod's account), node agents for their pods'
  (delegated issuance with the agent pod's bound token).

Everything is removed by close() (the context manager's exit), in reverse
order of creation, also when building failed half-way; shuntlib's guards
remove the namespaces and processes if the interpreter dies first."""

import json
import os
import signal
import subprocess
import sys
import uuid

import ca_plane
import shuntca
import shuntlib as sl
from ebpflib import cgroup_argv, remove_pins
from test_node_pods import rmdir as rmdir_cgroup

HERE = os.path.dirname(os.path.abspath(__file__))
LABCLIENT = os.path.join(HERE, "labclient.py")
TD = "cluster.local"
AGENT_NS, AGENT_SA = "shunt-system", "shunt-node"
HTTP_PORT, ECHO_PORT = 8080, 7000
# Service ports: the same numbers as the pods' (port == targetPort keeps the
# capture's view simple: a connect to the VIP or to a pod is the same port).
SERVICES = {("shop", "web"): "10.96.0.10", ("billing", "ledger"): "10.96.0.11"}
NODES = {"node-a": (1, "systemd"), "node-b": (2, "cgroupfs")}
# name, namespace, service account, node, service (None: a client), QoS class
PODS = (
    ("frontend-0", "shop", "frontend", "node-a", None, "Burstable"),
    ("web-0", "shop", "web", "node-a", "web", "Guaranteed"),
    ("ledger-0", "billing", "ledger", "node-a", "ledger", "BestEffort"),
    ("batch-0", "shop", "batch", "node-b", None, "Burstable"),
    ("web-1", "shop", "web", "node-b", "web", "BestEffort"),
    ("ledger-1", "billing", "ledger", "node-b", "ledger", "Guaranteed"),
)
_veths = [0]


def spiffe(ns, sa):
    return "spiffe://%s/ns/%s/sa/%s" % (TD, ns, sa)


def remove_pin_tree(root):
    """remove_pins for a pin root with directories (node mode pins each
    pod's programs under pods/<uid>/): left only by a shuntd that died."""
    if not os.path.isdir(root):
        return
    for sub in os.listdir(root):
        if os.path.isdir(os.path.join(root, sub)):
            remove_pin_tree(os.path.join(root, sub))
    remove_pins(root)


class Node:
    """One node: a network namespace, its pod range and cgroup driver."""

    def __init__(self, name):
        self.name = name
        self.index, self.driver = NODES[name]
        self.ip = "10.100.0.%d" % self.index
        self.cidr = "10.244.%d.0/24" % self.index
        self.gateway = "10.244.%d.1" % self.index
        self.netns = sl.Pod(name)
        self.agent = None  # Shuntd in node mode
        self.hosts = 10  # the last pod address's host part handed out
        for key in ("net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter",
                    "net.ipv4.conf.default.rp_filter"):
            self.netns.sysctl(key, 1 if key.endswith("forward") else 0)


class LabPod:
    """A pod of the lab: identity, addresses, cgroup, network namespace."""

    LAYOUT = {
        ("systemd", "Guaranteed"): "kubepods.slice/kubepods-pod{u}.slice",
        ("systemd", "Burstable"): "kubepods.slice/kubepods-burstable.slice/"
                                  "kubepods-burstable-pod{u}.slice",
        ("systemd", "BestEffort"): "kubepods.slice/kubepods-besteffort.slice/"
                                   "kubepods-besteffort-pod{u}.slice",
        ("cgroupfs", "Guaranteed"): "kubepods/pod{uid}",
        ("cgroupfs", "Burstable"): "kubepods/burstable/pod{uid}",
        ("cgroupfs", "BestEffort"): "kubepods/besteffort/pod{uid}",
    }

    def __init__(self, lab, name, ns, sa, node, app, qos, host):
        self.lab, self.name, self.ns, self.sa, self.app, self.qos = lab, name, ns, sa, app, qos
        self.node = node
        self.ip = "10.244.%d.%d" % (node.index, host)
        self.uid = str(uuid.uuid4())
        self.meshed = True
        self.rel = self.LAYOUT[(node.driver, qos)].format(u=self.uid.replace("-", "_"),
                                                          uid=self.uid)
        self.cgroup = os.path.join(lab.cgroot, self.rel)
        self.netns = None
        self.made = []  # cgroup directories made, parents first
        self.procs = {}  # name -> sl.Proc (applications)
        self.sidecar = None

    @property
    def identity(self):
        return spiffe(self.ns, self.sa)

    def container(self, name):
        """The cgroup of one of the pod's containers (made on first use), as
        kubelet's runtimes name them."""
        leaf = ("cri-containerd-%s.scope" % name) if self.node.driver == "systemd" else name
        path = os.path.join(self.cgroup, leaf)
        self._mkdirs(path)
        return path

    def _mkdirs(self, path):
        parts = os.path.relpath(path, self.lab.cgroot).split("/")
        cur = self.lab.cgroot
        for part in parts:
            cur = os.path.join(cur, part)
            try:
                os.mkdir(cur)
                self.made.append(cur)
            except FileExistsError:
                pass

    def obj(self):
        labels = {"app": self.app or self.name.rsplit("-", 1)[0]}
        if self.meshed:
            labels["shunt.io/meshed"] = "true"
        return {"metadata": {"name": self.name, "namespace": self.ns, "uid": self.uid,
                             "labels": labels},
                "spec": {"nodeName": self.node.name, "serviceAccountName": self.sa,
                         "containers": [{"name": "app", "image": "app:1"}]},
                "status": {"phase": "Running", "qosClass": self.qos, "hostIP": self.node.ip,
                           "podIP": self.ip, "podIPs": [{"ip": self.ip}]}}

    def start(self, echo_argv=None):
        """The sandbox as kubelet and a CNI plugin make it, then the pause
        process and the applications, in the app container's cgroup."""
        node = self.node
        self.netns = sl.Pod(self.name)
        _veths[0] += 1
        host_if = "veth%d" % _veths[0]
        self.host_if = host_if
        self.netns.ip("link", "add", "eth0", "type", "veth", "peer", "name", host_if,
                      "netns", node.netns.name)
        self.netns.ip("addr", "add", self.ip + "/32", "dev", "eth0")
        self.netns.ip("link", "set", "eth0", "up")
        self.netns.ip("route", "add", node.gateway, "dev", "eth0", "scope", "link")
        self.netns.ip("route", "add", "default", "via", node.gateway, "dev", "eth0")
        node.netns.ip("addr", "add", node.gateway + "/32", "dev", host_if)
        node.netns.ip("link", "set", host_if, "up")
        node.netns.ip("route", "add", self.ip + "/32", "dev", host_if, "scope", "link")
        app = self.container("app")
        self.procs["pause"] = self.netns.spawn(cgroup_argv(app, ["sleep", "3600"]),
                                               self.name + "-pause")
        self.procs["http"] = self.netns.spawn_ready(
            cgroup_argv(app, [sys.executable, sl.PEERS, "http", "--name", self.name,
                              "--lifetime", "3600", "--listen", "0.0.0.0:%d" % HTTP_PORT]),
            self.name + "-http", what="http server of " + self.name)
        argv = echo_argv(self) if echo_argv else [
            sys.executable, sl.PEERS, "echo", "--name", self.name, "--lifetime", "3600",
            "--listen", "0.0.0.0:%d" % ECHO_PORT]
        self.procs["echo"] = self.netns.spawn_ready(cgroup_argv(app, argv), self.name + "-echo",
                                                    what="echo server of " + self.name)
        return self

    def spawn(self, argv, name, container="app"):
        """A process of the pod: in its network namespace and container cgroup."""
        return self.netns.spawn(cgroup_argv(self.container(container), argv), name,
                                stdout_pipe=False)

    def run(self, argv, timeout=60, container="app"):
        return self.netns.run(cgroup_argv(self.container(container), argv), timeout=timeout,
                              check=False)

    def kill_cgroup(self):
        """Every process of the pod (its cgroup tree) killed, as a runtime
        stops a sandbox."""
        for d in reversed(self.made):
            try:
                for pid in open(os.path.join(d, "cgroup.procs")).read().split():
                    os.kill(int(pid), signal.SIGKILL)
            except (OSError, ValueError):
                pass

    def stop(self):
        try:
            if self.sidecar is not None:
                self.sidecar.stop()
            for p in self.procs.values():
                p.stop(signal.SIGKILL, timeout=5)
            self.kill_cgroup()
            if self.netns is not None:
                # The pod's processes are gone; a node agent's thread may be
                # in the namespace right now (removing its rules): it is not
                # the pod's to kill.
                self.netns.delete(kill_others=False)
        finally:
            self.kill_cgroup()
            for d in reversed(self.made):
                sl.wait_until(lambda d=d: rmdir_cgroup(d), 10, what="cgroup %s removed" % d)
            self.made = []


class Lab:
    def __init__(self, pods=PODS, echo_argv=None):
        self.cleanups = []  # LIFO
        self.nodes, self.pods = {}, {}
        self.cp = None
        self.slices = set()  # (ns, service) whose EndpointSlice exists
        self.echo_argv = echo_argv
        self.tag = "shunt-t-%d-lab%d" % (os.getpid(), id(self) & 0xFFFF)
        self.cgroot = "/run/%s-cg" % self.tag
        self.bpffs = "/run/%s-bpf" % self.tag
        try:
            self._build(pods)
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # ------------------------------------------------------------ building
    def _mount(self, path, fstype):
        os.mkdir(path)
        self.cleanups.append(lambda: os.rmdir(path))
        sl.run(["mount", "-t", fstype, fstype, path])
        self.cleanups.append(lambda: subprocess.run(["umount", "-l", path], capture_output=True,
                                                    timeout=10))

    def _build(self, pods):
        self._mount(self.cgroot, "cgroup2")
        self._mount(self.bpffs, "bpf")
        self.dir = sl.tmpdir()
        os.chmod(self.dir, 0o755)
        for name in NODES:
            n = Node(name)
            self.nodes[name] = n
            self.cleanups.append(n.netns.delete)
        a, b = self.nodes["node-a"], self.nodes["node-b"]
        sl.link(a.netns, b.netns, a.ip, b.ip, "fd10::1", "fd10::2")
        a.netns.ip("route", "add", b.cidr, "via", b.ip)
        b.netns.ip("route", "add", a.cidr, "via", a.ip)
        # The control plane, one link per node; its answers to pods go back
        # through their node.
        self.cp = ca_plane.ControlPlane([a.netns, b.netns], api_listen="0.0.0.0")
        self.cleanups.append(self.cp.close)
        for i, n in enumerate((a, b)):
            self.cp.pod.ip("route", "add", n.cidr, "via", "10.88.%d.1" % i)
        self.bundle = self.cp.bundle(self.path("bundle/ca.crt"))
        self.kubeconfig = self.path("kube/kubeconfig.json")
        sl.write_json(self.kubeconfig, {
            "apiVersion": "v1", "kind": "Config", "current-context": "lab",
            "clusters": [{"name": "standin", "cluster": {
                "server": "http://%s:%d" % (ca_plane.CA_IP, self.cp.api.port)}}],
            "users": [{"name": "shunt", "user": {"token": shuntca.CALLER_TOKEN}}],
            "contexts": [{"name": "lab", "context": {"cluster": "standin", "user": "shunt"}}]})
        for ns in sorted({p[1] for p in pods} | {AGENT_NS}):
            self.apply("namespaces", {"metadata": {"name": ns}})
        for n in self.nodes.values():
            self.apply("pods", {
                "metadata": {"name": "shunt-node-" + n.name, "namespace": AGENT_NS,
                             "uid": str(uuid.uuid4()), "labels": {"app": "shunt-node"}},
                "spec": {"nodeName": n.name, "serviceAccountName": AGENT_SA,
                         "hostNetwork": True, "containers": [{"name": "shuntd"}]},
                "status": {"phase": "Running", "hostIP": n.ip, "podIP": n.ip,
                           "podIPs": [{"ip": n.ip}]}})
        for (ns, svc), vip in SERVICES.items():
            self.apply("services", {
                "metadata": {"name": svc, "namespace": ns},
                "spec": {"clusterIP": vip, "clusterIPs": [vip], "ports": [
                    {"name": "http", "port": HTTP_PORT, "targetPort": HTTP_PORT,
                     "protocol": "TCP", "appProtocol": "http"},
                    {"name": "echo", "port": ECHO_PORT, "targetPort": ECHO_PORT,
                     "protocol": "TCP"}]}})
        for spec in pods:
            self.add_pod(*spec)

    def path(self, name):
        p = os.path.join(self.dir, name)
        os.makedirs(os.path.dirname(p), mode=0o755, exist_ok=True)
        return p

    def apply(self, kind, obj, etype="ADDED"):
        return self.cp.api.ctl("POST", "/apply", {"kind": kind, "type": etype, "object": obj})

    def sync_slices(self, ns, svc):
        """The EndpointSlice of ns/svc from the lab's pods now: every meshed
        or unmeshed pod of that app, ready."""
        eps = [{"addresses": [p.ip], "conditions": {"ready": True}, "nodeName": p.node.name,
                "targetRef": {"kind": "Pod", "namespace": p.ns, "name": p.name, "uid": p.uid}}
               for p in self.pods.values() if p.ns == ns and p.app == svc]
        self.apply("endpointslices", {
            "metadata": {"name": svc + "-lab", "namespace": ns,
                         "labels": {"kubernetes.io/service-name": svc}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": HTTP_PORT, "protocol": "TCP"},
                      {"name": "echo", "port": ECHO_PORT, "protocol": "TCP"}],
            "endpoints": eps}, "MODIFIED" if (ns, svc) in self.slices else "ADDED")
        self.slices.add((ns, svc))

    # ------------------------------------------------------------ pods
    def add_pod(self, name, ns, sa, node, app=None, qos="BestEffort"):
        """A pod created: its sandbox first (cgroup, netns, applications),
        then the API objects (the kubelet reports podIPs once the sandbox
        runs), then the Service's slice."""
        n = self.nodes[node]
        n.hosts += 1  # never reused: a deleted pod's address stays unused
        p = LabPod(self, name, ns, sa, n, app, qos, n.hosts)
        self.pods[name] = p
        self.cleanups.append(p.stop)
        p.start(self.echo_argv)
        self.apply("pods", p.obj())
        if app:
            self.sync_slices(ns, app)
        return p

    def delete_pod(self, name):
        """A pod deleted as the API server and kubelet do it: out of the
        Service's slice, the Pod object DELETED, then its sandbox removed."""
        p = self.pods.pop(name)
        if p.app:
            self.sync_slices(p.ns, p.app)
        self.apply("pods", p.obj(), "DELETED")
        p.stop()

    def set_meshed(self, name, meshed):
        """The label shunt.io/meshed set or removed (the pod keeps running)."""
        p = self.pods[name]
        p.meshed = meshed
        self.apply("pods", p.obj(), "MODIFIED")

    def vip(self, ns, svc):
        return SERVICES[(ns, svc)]

    def meshed_pods(self):
        return [p for p in self.pods.values() if p.meshed]

    # ------------------------------------------------------------ shuntd
    def _common_flags(self):
        return {
            "mtls.ca-address": ca_plane.CA_ADDRESS, "mtls.ca-bundle": self.bundle,
            "mtls.mode": "strict",
            "service-discovery.type": "kubernetes",
            "service-discovery.kubernetes.kubeconfig-path": self.kubeconfig,
            "service-discovery.kubernetes.namespace": "*",
            # openssl s_client from a pod reaches the others' inbound port
            "exclude-outbound-ports": "15001",
        }

    def expected_endpoints(self):
        """{(ns, service): {pod IP: (outbound, identity)}} now: a meshed pod
        is reached over mTLS with its identity, an unmeshed one in plaintext."""
        out = {key: {} for key in SERVICES}
        for p in self.pods.values():
            if p.app:
                out[(p.ns, p.app)][p.ip] = ("mtls", p.identity) if p.meshed else ("plaintext", "")
        return out

    def wait_mesh(self, daemons, timeout=20):
        """Waits until every daemon's /endpoints holds exactly the pods of
        each Service, each meshed one with its identity and outbound mTLS,
        each unmeshed one in plaintext: a shuntd is ready before its first
        list of the API has arrived, and learns pods as they come and go."""
        want = self.expected_endpoints()

        def seen(d):
            got = {key: {} for key in SERVICES}
            for s in d.json("/endpoints")["services"]:
                key = (s["namespace"], s["name"])
                if key in got:
                    for e in s["endpoints"]:
                        got[key][e["address"]] = (e.get("outbound"), e.get("identity") or "")
            return got

        for d in daemons:
            sl.wait_until(lambda d=d: seen(d) == want, timeout, interval=0.1,
                          what="%s's endpoints to be %s" % (d.proc.name, want))

    def start_sidecars(self, redirect="iptables", workers=1, log_level="debug", extra=None):
        """One shuntd per meshed pod, in the pod's network namespace and its
        "proxy" container cgroup, with its own capture (iptables, or eBPF on
        the pod's cgroup with pins of its own) and the identity of the pod's
        service account from shunt-ca. Returns {pod name: Shuntd}."""
        return self.start_sidecars_for([p.name for p in self.meshed_pods()], redirect, workers,
                                       log_level, extra)

    def start_sidecars_for(self, names, redirect="iptables", workers=1, log_level="debug",
                           extra=None):
        """start_sidecars for the pods named only (a pod added later)."""
        out = {}
        for p in (self.pods[n] for n in names):
            token = self.path("sidecar-%s/token" % p.name)
            self.cp.write_token(token, p.ns, p.sa, pod=p.name)
            flags = self._common_flags()
            flags.update({"mtls.ca-token-file": token, "workers": str(workers),
                          "upgrade.socket": self.path("sidecar-%s/upgrade.sock" % p.name),
                          "log-level": log_level, "redirect": redirect})
            if redirect == "ebpf":
                pins = os.path.join(self.bpffs, p.name)
                flags.update({"redirect-cgroup": p.cgroup, "bpf-pin-root": pins})
                self.cleanups.append(lambda pins=pins: remove_pins(pins))
            flags.update(extra or {})
            d = sl.Shuntd(p.netns, sl.shuntd_args(**flags), name="sidecar-" + p.name,
                          wrap=cgroup_argv(p.container("proxy"), []))
            p.sidecar = d
            out[p.name] = d
        for d in out.values():
            d.wait_ready()
        self.wait_mesh(out.values())
        return out

    def stop_sidecar(self, name):
        """The sidecar of pod name stopped (checked: exit 0, no sanitizer report)."""
        p = self.pods[name]
        d, p.sidecar = p.sidecar, None
        sl.stop_checked([d])

    def stop_sidecars(self):
        daemons = [p.sidecar for p in self.pods.values() if p.sidecar is not None]
        for p in self.pods.values():
            p.sidecar = None
        sl.stop_checked(daemons)

    def agent_token(self, node):
        return self.cp.api.ctl("POST", "/token", {
            "namespace": AGENT_NS, "service_account": AGENT_SA, "pod": "shunt-node-" + node,
            "bound": True, "audience": "shunt-ca", "expires_in": 3600})["token"]

    def start_node_agents(self, redirect="ebpf", workers=2, log_level="debug", extra=None,
                          nodes=None):
        """One shuntd per node in mode node, in the node's network namespace
        (host network, as the chart's DaemonSet), with the agent pod's bound
        token for shunt-ca's delegated issuance. Returns {node: Shuntd}."""
        out = {}
        for name in nodes or self.nodes:
            n = self.nodes[name]
            token = self.path("agent-%s/token" % name)
            with open(token, "w") as f:
                f.write(self.agent_token(name))
            flags = self._common_flags()
            pins = os.path.join(self.bpffs, "node-" + name)
            flags.update({"mode": "node", "node.name": name, "mtls.ca-token-file": token,
                          "upgrade.socket": self.path("agent-%s/upgrade.sock" % name),
                          "workers": str(workers), "log-level": log_level,
                          "redirect": redirect, "bpf-pin-root": pins})
            self.cleanups.append(lambda pins=pins: remove_pin_tree(pins))
            flags.update(extra or {})
            n.agent = sl.Shuntd(n.netns, sl.shuntd_args(**flags), name="shuntd-" + name,
                                env={"NODE_NAME": name}, wrap=self.only_lab_cgroup())
            out[name] = n.agent
        for d in out.values():
            d.wait_ready()
        self.wait_mesh(out.values())
        if redirect != "off":
            self.wait_captured(out)
        return out

    def wait_captured(self, agents, timeout=30):
        """Waits until each agent serves every meshed pod of its node: GET
        /pods lists it under "capture", captured, with its identity's
        certificate (until then its connections are refused: fail closed),
        accepting (once its routes and certificate are there)."""
        for node, d in agents.items():
            want = {p.name for p in self.meshed_pods() if p.node.name == node}

            def served(d=d, want=want):
                got = {p["name"]: p for p in d.json("/pods").get("capture", {}).get("pods", [])}
                return set(got) == want and all(
                    got[n]["capture"] != "failed" and got[n]["identity"] == "ready"
                    and got[n]["accepting"] for n in want)

            sl.wait_until(served, timeout, interval=0.1,
                          what="%s capturing %s with their identities" % (d.proc.name,
                                                                          sorted(want)))

    def only_lab_cgroup(self):
        """A command prefix that leaves the lab's cgroup v2 mount the only one
        its process sees (shuntd in node mode takes the first it finds in
        /proc/self/mountinfo, and other runs on this machine mount their
        own under /run, which come and go). `ip netns exec` gives the
        process a mount namespace of its own that is a slave of the host's:
        what it unmounts stays unmounted there only."""
        script = ("awk -v keep=\"$0\" '/ - cgroup2 / && $5 != keep {print $5}' "
                  "/proc/self/mountinfo | while read -r m; do umount -l \"$m\"; done; "
                  "exec \"$@\"")
        return ("sh", "-c", script, self.cgroot)

    def stop_node_agents(self):
        daemons = [n.agent for n in self.nodes.values() if n.agent is not None]
        for n in self.nodes.values():
            n.agent = None
        sl.stop_checked(daemons)

    def node_daemons(self, node):
        """The shuntds serving node's pods now: its agent, or its pods' sidecars."""
        n = self.nodes[node]
        if n.agent is not None:
            return [n.agent]
        return [p.sidecar for p in self.pods.values() if p.node is n and p.sidecar is not None]

    def daemons(self):
        return [d for n in self.nodes for d in self.node_daemons(n)]

    def restart_node(self, node):
        """Every shuntd of node stopped (SIGTERM: drain, then exit 0) and
        started again with the same command; returns once they are ready
        and know the mesh again."""
        daemons = self.node_daemons(node)
        for d in daemons:
            rc = d.stop()
            if rc != 0:
                raise sl.HarnessError("%s exited %s on SIGTERM:\n%s" % (d.proc.name, rc,
                                                                        d.log_tail()))
        for d in daemons:
            d.restart()
        self.wait_mesh(daemons)
        return daemons

    def tester_cert(self):
        """A mesh client certificate (shop/tester, from shunt-ca): (cert, key) paths."""
        if not hasattr(self, "_tester"):
            d = self.path("tester/x")[:-2]
            key, csr = shuntca.make_csr(d, san="URI:" + spiffe("shop", "tester"))
            status, _, issued = self.cp.ca.certificate(self.cp.api.token("shop", "tester"), csr)
            if status != 200:
                raise sl.HarnessError("shunt-ca refused the tester's CSR: %r" % (issued,))
            cert = os.path.join(d, "tls.crt")
            with open(cert, "w") as f:
                f.write(issued["certificate_chain"])
            self._tester = (cert, key)
        return self._tester

    def served_certificate(self, netns, pod):
        """`openssl s_client` from netns (TLS 1.3, the tester's certificate,
        shunt-ca's bundle) against pod's inbound port: (subjectAltName text
        of the certificate served, s_client's CompletedProcess)."""
        cert, key = self.tester_cert()
        r = netns.run(["openssl", "s_client", "-connect", "%s:15001" % self.pods[pod].ip,
                       "-servername", "port-%d.%s" % (HTTP_PORT, TD), "-tls1_3",
                       "-verify_return_error", "-CAfile", self.bundle, "-cert", cert, "-key", key],
                      timeout=20, check=False, input="")
        pem = r.stdout[r.stdout.find("-----BEGIN CERTIFICATE-----"):]
        san = sl.run(["openssl", "x509", "-noout", "-ext", "subjectAltName"], check=False,
                     input=pem).stdout
        return san, r

    # ------------------------------------------------------------ clients
    def client(self, pod, *args, timeout=120):
        """labclient.py in pod (its netns and app cgroup): the parsed JSON line."""
        r = self.pods[pod].run([sys.executable, LABCLIENT] + [str(a) for a in args],
                               timeout=timeout)
        if r.returncode != 0:
            raise sl.HarnessError("labclient %s in %s exited %d: %s" % (
                " ".join(map(str, args)), pod, r.returncode, r.stderr[-2000:]))
        return json.loads(r.stdout.strip().splitlines()[-1])

    def spawn_client(self, pod, *args, name=None):
        """labclient.py in pod in the background: a Proc; client_result() reads it."""
        return self.pods[pod].spawn([sys.executable, LABCLIENT] + [str(a) for a in args],
                                    name or "client-%s-%s" % (pod, args[0]))

    @staticmethod
    def client_result(proc, timeout=120):
        rc = proc.wait(timeout)
        out, err = proc.read_stdout(), proc.read_stderr()
        proc.stop()
        if rc != 0:
            raise sl.HarnessError("%s exited %s: %s" % (proc.name, rc, err[-2000:]))
        return json.loads(out.strip().splitlines()[-1])

    # ------------------------------------------------------------ teardown
    def close(self):
        """Removes everything, last made first; the first error is raised
        after every step has run."""
        first = None
        for agent in [n.agent for n in self.nodes.values() if n.agent is not None]:
            try:
                agent.stop()
            except Exception as e:  # noqa: BLE001 - the rest still runs
                first = first or e
        while self.cleanups:
            step = self.cleanups.pop()
            try:
                step()
            except Exception as e:  # noqa: BLE001
                first = first or e
        if first is not None:
            raise first
