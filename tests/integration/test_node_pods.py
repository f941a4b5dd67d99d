# SPDX-License-Identifier: Apache-2.0
"""Node mode, the pod table (README "Node mode (in progress)"): shuntd with
mode node and NODE_NAME=node-a watches the stand-in API server's Pods
(fieldSelector spec.nodeName, labelSelector shunt.io/meshed=true) and
resolves each of this node's meshed pods to its real cgroup v2 directory
(kubelet's layouts, systemd and cgroupfs drivers, made under the cgroup v2
mount found in /proc/self/mountinfo) and its real network namespace (a
netns per pod with a sleep in the pod's container cgroup).

Checked through `shuntctl pods`: exactly this node's meshed pods with their
netns inode, cgroup, IPs and service account; pods on node-b and unmeshed
pods absent; a pod created later appears, a deleted one disappears and its
netns fd is closed (/proc/<shuntd>/fd); an IP change; the label removed; a
pod whose cgroup appears after the pod resolves then; a recreated sandbox
(new netns) replaces the held one; node.max_pods sheds,
logs and counts. Every cgroup, netns and process is removed at the end."""

import errno
import json
import os
import subprocess
import uuid

import pytest

import shuntlib as sl
from test_k8s import Env, WATCH_TIMEOUT_S

NODE, OTHER = "node-a", "node-b"
MAX_PODS = 4
# `ip netns exec` gives shuntd a mount namespace with a fresh /sys (no
# cgroup mounts): the cgroup v2 hierarchy is mounted there, as the chart's
# DaemonSet mounts the host's /sys/fs/cgroup, for shuntd to find in its
# /proc/self/mountinfo. Other runs on this machine mount the hierarchy under
# /run for a while (nodelab.py): shuntd takes the first cgroup v2 mount it
# finds, so those are unmounted first (in its namespace only, a slave of the
# host's), lest it take one that goes away under it.
MOUNT_CGROUP2 = ("sh", "-c",
                 "awk '/ - cgroup2 / {print $5}' /proc/self/mountinfo | "
                 'while read -r m; do umount -l "$m"; done; '
                 'mount -t cgroup2 cgroup2 /sys/fs/cgroup && exec "$@"', "sh")


def cgroup2_root():
    """The cgroup v2 mount, as shuntd finds it (never a fixed path): the
    hierarchy's root, at a path that still reaches it (a mount covered by
    another, as stacked `mount --rbind`s of /sys leave, is passed over)."""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            pre, _, post = line.partition(" - ")
            _, _, dev, root, mnt = pre.split()[:5]
            if post.split()[0] != "cgroup2" or root != "/":
                continue
            maj, mino = (int(x) for x in dev.split(":"))
            try:
                if os.stat(mnt).st_dev == os.makedev(maj, mino):
                    return mnt
            except OSError:
                pass
    sl.missing("cgroup2", "no cgroup v2 hierarchy mounted (/proc/self/mountinfo)")


class NodeTopo:
    """The node: one netns where the stand-in and shuntd run."""

    def __init__(self):
        self.app = sl.Pod("node")

    def delete(self):
        self.app.delete()


class KubePod:
    """A pod as kubelet and a runtime leave it on the node: a cgroup in
    kubelet's layout with a container cgroup below, a netns, a process in
    both."""

    LAYOUT = {
        ("systemd", "Burstable"): "kubepods.slice/kubepods-burstable.slice/"
                                  "kubepods-burstable-pod{u}.slice",
        ("systemd", "Guaranteed"): "kubepods.slice/kubepods-pod{u}.slice",
        ("cgroupfs", "BestEffort"): "kubepods/besteffort/pod{uid}",
        ("cgroupfs", "Guaranteed"): "kubepods/pod{uid}",
    }

    def __init__(self, root, name, driver, qos, ip, sa, node=NODE, meshed=True):
        self.root, self.name, self.qos, self.ip, self.sa = root, name, qos, ip, sa
        self.node, self.meshed = node, meshed
        self.uid = str(uuid.uuid4())
        self.rel = self.LAYOUT[(driver, qos)].format(u=self.uid.replace("-", "_"), uid=self.uid)
        self.made = []  # cgroup directories made, deepest last
        self.netns = None
        self.proc = None

    def obj(self):
        labels = {"app": self.name}
        if self.meshed:
            labels["shunt.io/meshed"] = "true"
        return {"metadata": {"name": self.name, "namespace": "shop", "uid": self.uid,
                             "labels": labels},
                "spec": {"nodeName": self.node, "serviceAccountName": self.sa,
                         "containers": [{"name": "app"}]},
                "status": {"phase": "Running", "qosClass": self.qos, "podIP": self.ip,
                           "podIPs": [{"ip": self.ip}]}}

    def start(self):
        """The sandbox: cgroups, netns, a process in both."""
        path = self.root
        for part in (self.rel + "/cri-containerd-app.scope").split("/"):
            path = os.path.join(path, part)
            if not os.path.isdir(path):
                os.mkdir(path)
                self.made.append(path)
        self.netns = sl.Pod(self.name)
        self.proc = self.netns.spawn(["sleep", "300"], self.name + "-sleep")
        with open(os.path.join(path, "cgroup.procs"), "w") as f:
            f.write(str(self.proc.pid))
        sl.wait_until(lambda: os.readlink("/proc/%d/exe" % self.proc.pid).endswith("/sleep"),
                      5, what="sleep running in " + self.name)
        return self

    def new_sandbox(self):
        """The sandbox recreated (the runtime restarted it): the process
        killed, its netns removed, a new netns and process in the same
        container cgroup."""
        self.proc.stop(timeout=5)
        self.netns.delete()
        self.netns = sl.Pod(self.name + "-2")
        self.proc = self.netns.spawn(["sleep", "300"], self.name + "-sleep-2")
        with open(os.path.join(self.made[-1], "cgroup.procs"), "w") as f:
            f.write(str(self.proc.pid))

    @property
    def netns_ino(self):
        return os.stat("/run/netns/" + self.netns.name).st_ino

    def stop(self):
        if self.proc:
            self.proc.stop(timeout=5)
        if self.netns:
            self.netns.delete()
        for d in reversed(self.made):
            sl.wait_until(lambda: rmdir(d), 5, what="cgroup %s removed" % d)


def rmdir(d):
    """True once d is gone or holds another pod's cgroups (a shared parent,
    removed by the pod that made it); False while it is busy (EBUSY: the
    killed process is still leaving it)."""
    try:
        os.rmdir(d)
    except FileNotFoundError:
        pass
    except OSError as e:
        if e.errno == errno.EBUSY:
            # a cgroup with child cgroups is busy too: another pod's (of
            # another test running at the same time), removed by its maker
            return any(os.path.isdir(os.path.join(d, n)) for n in os.listdir(d))
        if e.errno != errno.ENOTEMPTY:
            raise
    return True


@pytest.fixture(scope="module")
def node():
    root = cgroup2_root()
    env = Env(NodeTopo())
    pods, daemons, procs = [], [], []
    try:
        env.make_certs()
        env.token = "standin-token-node"
        token_file = os.path.join(env.dir, "token")
        with open(token_file, "w") as f:
            f.write(env.token + "\n")
        kubeconfig = env.write_kubeconfig(token_file)
        env.start_standin()
        procs.append(env.standin)
        d = sl.Shuntd(env.topo.app, sl.shuntd_args(**{
            "redirect": "off",
            "mode": "node",
            "node.max-pods": str(MAX_PODS),
            "service-discovery.type": "kubernetes",
            "service-discovery.kubernetes.kubeconfig-path": kubeconfig,
            "mtls.ca-dir": os.path.join(env.dir, "ca"),
        }), name="shuntd-node", env={"NODE_NAME": NODE,
                                     "SHUNT_K8S_WATCH_TIMEOUT": str(WATCH_TIMEOUT_S)},
            wrap=MOUNT_CGROUP2)
        daemons.append(d)
        d.wait_ready()
        yield env, d, root, pods
    finally:
        try:
            sl.teardown(None, daemons, procs)
        finally:
            for p in reversed(pods):
                p.stop()
            env.topo.delete()


def table(env, d):
    r = sl.shuntctl(env.topo.app, "--json", "pods")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def by_name(env, d):
    return {p["name"]: p for p in table(env, d)["pods"]}


def netns_fds(d):
    """The network namespaces shuntd holds open, by inode."""
    out = set()
    fd_dir = "/proc/%d/fd" % d.proc.pid
    for fd in os.listdir(fd_dir):
        try:
            link = os.readlink(os.path.join(fd_dir, fd))
        except OSError:
            continue
        if link.startswith("net:["):
            out.add(int(link[5:-1]))
    return out


def ready(env, d, pod):
    def ok():
        p = by_name(env, d).get(pod.name)
        return p if p and p["state"] == "ready" else None

    return sl.wait_until(ok, 10, interval=0.1, what="pod %s ready" % pod.name)


def make(node_fx, name, driver, qos, ip, sa="sa-x", started=True, **kw):
    env, d, root, pods = node_fx
    p = KubePod(root, name, driver, qos, ip, sa, **kw)
    pods.append(p)
    if started:
        p.start()
    return p


def test_this_nodes_meshed_pods(node):
    env, d, root, pods = node
    a1 = make(node, "a1", "systemd", "Burstable", "10.244.1.11", sa="sa-one")
    a2 = make(node, "a2", "cgroupfs", "Guaranteed", "10.244.1.12", sa="sa-two")
    plain = make(node, "plain", "cgroupfs", "BestEffort", "10.244.1.13", meshed=False)
    b1 = make(node, "b1", "systemd", "Guaranteed", "10.244.2.11", node=OTHER, started=False)
    for p in (a1, a2, plain, b1):
        env.apply("pods", "ADDED", p.obj())
    for p in (a1, a2):
        got = ready(env, d, p)
        assert got["netns_inode"] == p.netns_ino
        assert got["cgroup"] == p.rel
        assert got["ips"] == [p.ip]
        assert got["service_account"] == p.sa
        assert got["uid"] == p.uid
    assert set(by_name(env, d)) == {"a1", "a2"}  # not node-b's, not the unmeshed one
    assert {a1.netns_ino, a2.netns_ino} <= netns_fds(d)
    text = sl.shuntctl(env.topo.app, "pods")
    assert text.returncode == 0, text.stderr
    assert "shop/a1" in text.stdout and "sa-one" in text.stdout and a1.rel in text.stdout
    assert str(a2.netns_ino) in text.stdout and "shop/b1" not in text.stdout

    # the pod's IP changes
    a1.ip = "10.244.1.21"
    env.apply("pods", "MODIFIED", a1.obj())
    sl.wait_until(lambda: by_name(env, d)["a1"]["ips"] == ["10.244.1.21"], 10,
                  what="the new IP of a1")
    assert table(env, d)["counters"]["ips_changed"] >= 1


def test_created_later_then_deleted(node):
    env, d, root, pods = node
    a4 = make(node, "a4", "systemd", "Guaranteed", "10.244.1.14")
    env.apply("pods", "ADDED", a4.obj())
    assert ready(env, d, a4)["netns_inode"] == a4.netns_ino
    assert a4.netns_ino in netns_fds(d)
    # deleted while its process still lives: leaves, and its fd is closed
    env.apply("pods", "DELETED", a4.obj())
    sl.wait_until(lambda: "a4" not in by_name(env, d), 10, what="a4 gone")
    sl.wait_until(lambda: a4.netns_ino not in netns_fds(d), 5, what="a4's netns fd closed")
    assert a4.proc.alive()


def test_label_removed_leaves(node):
    env, d, root, pods = node
    a2 = next(p for p in pods if p.name == "a2")
    ino = a2.netns_ino
    assert ino in netns_fds(d)
    a2.meshed = False
    env.apply("pods", "MODIFIED", a2.obj())
    sl.wait_until(lambda: "a2" not in by_name(env, d), 10, what="a2 out of the mesh")
    sl.wait_until(lambda: ino not in netns_fds(d), 5, what="a2's netns fd closed")


def test_cgroup_appears_late(node):
    env, d, root, pods = node
    a5 = make(node, "a5", "cgroupfs", "BestEffort", "10.244.1.15", started=False)
    env.apply("pods", "ADDED", a5.obj())
    p = sl.wait_until(lambda: by_name(env, d).get("a5"), 10, what="a5 listed")
    assert p["state"] == "pending" and p["error"] == "no cgroup yet"
    a5.start()
    got = ready(env, d, a5)
    assert got["netns_inode"] == a5.netns_ino and got["cgroup"] == a5.rel
    assert table(env, d)["counters"]["retries"] >= 1


def test_new_sandbox_taken(node):
    """A ready pod whose sandbox is recreated: the new namespace replaces
    the held one (looked at every 5 s), the old descriptor is closed."""
    env, d, root, pods = node
    a1 = next(p for p in pods if p.name == "a1")
    old = a1.netns_ino
    assert by_name(env, d)["a1"]["netns_inode"] == old
    a1.new_sandbox()
    new = a1.netns_ino
    assert new != old
    sl.wait_until(lambda: by_name(env, d)["a1"]["netns_inode"] == new, 12, interval=0.2,
                  what="a1's new netns taken")
    assert table(env, d)["counters"]["netns_changed"] >= 1
    fds = netns_fds(d)
    assert new in fds and old not in fds


def test_max_pods_sheds(node):
    env, d, root, pods = node
    before = table(env, d)
    room = MAX_PODS - before["pods_held"]
    extra = [make(node, "s%d" % i, "cgroupfs", "BestEffort", "10.244.1.%d" % (30 + i),
                  started=False) for i in range(room + 1)]
    for p in extra:
        env.apply("pods", "ADDED", p.obj())
    after = sl.wait_until(lambda: (lambda t: t if t["counters"]["shed"] > before["counters"]["shed"]
                                   else None)(table(env, d)), 10, what="a pod shed")
    assert after["pods_held"] == MAX_PODS
    assert any("node.max_pods (%d) pods held" % MAX_PODS in ln.get("msg", "")
               for ln in d.log_lines())
    text = sl.shuntctl(env.topo.app, "pods").stdout
    assert "shed 1 (max_pods reached)" in text
    metrics = d.metrics_text()
    p = subprocess.run(["promtool", "check", "metrics"], input=metrics, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "shunt_node_pods_shed_total 1\n" in metrics
    assert 'shunt_node_pods{state="ready"} ' in metrics


@pytest.mark.parametrize("flags,env,why", [
    (["--service-discovery.type", "file"], {"NODE_NAME": NODE},
     "mode node needs service_discovery.type kubernetes"),
    (["--service-discovery.type", "kubernetes",
      "--service-discovery.kubernetes.kubeconfig-path", "KUBECONFIG"], {},
     "node.name (NODE_NAME) is empty"),
])
def test_bad_node_config_refused(node, flags, env, why):
    """Node mode without what it needs: shuntd exits 1 with one clear line."""
    kenv, d, root, pods = node
    kubeconfig = os.path.join(kenv.dir, "kubeconfig.json")
    pod = sl.Pod("badnode")
    try:
        argv = [sl.SHUNTD] + sl.shuntd_args(**{"redirect": "off", "mode": "node",
                                                "mtls.ca-dir": os.path.join(kenv.dir, "ca2")})
        argv += [kubeconfig if f == "KUBECONFIG" else f for f in flags]
        e = {k: v for k, v in os.environ.items() if k != "NODE_NAME"}
        e.update(env)
        r = pod.run(argv, timeout=30, check=False, env=e)
        assert r.returncode == 1, r.stderr
        assert why in r.stderr
    finally:
        pod.delete()
