# SPDX-License-Identifier: Apache-2.0
"""An injected pod, run as a kubelet would run it: the webhook's patched pod
spec (the chart's inject config, a real Deployment's pod) decides what runs.

The pod is the app network namespace; in order, as the native-sidecar form
orders them: `shunt-init` (its command, environment, uid/gid and exactly
the capabilities of its securityContext), then `shunt-proxy` (its command,
args and environment, as its runAsUser with no capability and no new
privileges) until its startup probe passes, then the application. shunt-ca
runs as the chart's Deployment runs it (generated root, its args) in the
remote pod with the Kubernetes API stand-in. The application's outbound
request and a remote client's inbound request are captured and relayed, the
proxy holds no capability, its certificate comes from shunt-ca for the pod's
service account. What only a cluster has is substituted, and nothing else:
the CA's DNS name, the projected token (a stand-in token), the API server
(a kubeconfig for a stand-in)."""

import errno
import json
import os
import re
import shutil
import sys

import pytest

import k8schart as kc
import shuntlib as sl
from shuntca import KubeApi, ShuntCA
from shuntlib import Topology as T
from test_chart import load_fixture, pod_from
from ebpflib import BPFFS, CGROOT, cgroup_argv, mounts, remove_pins  # noqa: F401
from test_init_capture import kill_cgroup

NS = "shunt-system"
APP_PORT = 8080  # deploy-web's containerPort
POD_UID = "0b1d2c3e-7a6f-4e5d-9c8b-%012d" % os.getpid()


def setpriv(sc, argv):
    """argv as a container with securityContext sc runs it."""
    caps = [c.lower() for c in (sc.get("capabilities") or {}).get("add", [])]
    assert (sc.get("capabilities") or {}).get("drop") == ["ALL"]
    want = ",".join(["-all"] + ["+" + c for c in caps])
    out = ["setpriv", "--reuid", str(sc["runAsUser"]), "--regid", str(sc["runAsGroup"]),
           "--clear-groups", "--inh-caps=" + want, "--bounding-set=" + want]
    if sc.get("allowPrivilegeEscalation") is False:
        out.append("--no-new-privs")
    return out + argv


def expand(env, field_refs):
    """A container's env as the kubelet computes it: fieldRef values, and
    $(VAR) references to variables defined before."""
    out = {}
    for e in env:
        if "valueFrom" in e:
            out[e["name"]] = field_refs[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            out[e["name"]] = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)",
                                    lambda m: out.get(m.group(1), m.group(0)), e["value"])
    return out


def capabilities(pid):
    with open("/proc/%d/status" % pid) as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {k: int(fields[k].strip(), 16) for k in ("CapEff", "CapPrm", "CapBnd")}, \
        fields["Uid"].split()[0]


@pytest.fixture(scope="module")
def cluster(topo, remote_peers):
    """shunt-ca from the rendered chart, and the API stand-ins."""
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv is not installed (Debian package util-linux)")
    try:
        kc.tools()
    except kc.ToolError as e:
        pytest.fail(str(e), pytrace=False)
    objs = kc.render({"trustDomain": "pods.test"}, namespace=NS)
    d, args = kc.shunt_ca_argv(objs, NS)
    args += ["--server-san", T.REMOTE4]
    ca_api = ca = disc_api = None
    try:
        ca_api = KubeApi(topo.remote)
        ca = ShuntCA(topo.remote, ca_api, args=args)
        disc_api = KubeApi(topo.app, port=16490, ctl_port=16491)
        yield {"objs": objs, "dir": d, "ca_api": ca_api, "ca": ca,
               "disc_api": disc_api}
    finally:
        try:
            if ca is not None:
                assert ca.stop() == 0, ca.proc.read_stderr()[-3000:]
        finally:
            for a in (ca_api, disc_api):
                if a is not None:
                    a.stop()


@pytest.fixture
def pod_cgroups(mounts):
    """eBPF mode: the node's cgroup tree (test_ebpf's cgroup2 mount standing
    for /host/sys/fs/cgroup) with the pod's cgroup where the kubelet's
    systemd driver puts a Burstable pod (the uid spelt with '_'), one child
    per container; the node's bpffs (test_ebpf's) with the pin directory's
    parent."""
    slices = os.path.join(CGROOT, "kubepods.slice")
    burst = os.path.join(slices, "kubepods-burstable.slice")
    pod_cg = os.path.join(burst, "kubepods-burstable-pod%s.slice" % POD_UID.replace("-", "_"))
    made = []
    for part in (slices, burst, pod_cg):
        # The kubepods slices are the node's: another test of the same
        # hierarchy (node mode's labs) may hold them too. Only what this
        # fixture made is removed, and only once no one else's cgroup is in it.
        if not os.path.isdir(part):
            os.mkdir(part)
            made.append(part)
    cgs = {n: os.path.join(pod_cg, n) for n in ("init", "proxy", "app")}
    for cg in cgs.values():
        os.mkdir(cg)
    os.mkdir(os.path.join(BPFFS, "shunt"), 0o755)
    try:
        yield cgs
    finally:
        try:
            for cg in cgs.values():
                kill_cgroup(cg)
            for part in reversed(made):
                try:
                    os.rmdir(part)
                except OSError as e:
                    if e.errno != errno.EBUSY or part == pod_cg:
                        raise
        finally:
            remove_pins(os.path.join(BPFFS, "shunt", POD_UID))
            os.rmdir(os.path.join(BPFFS, "shunt"))


def host_path(path):
    """A path of the node as the harness has it (eBPF: the test mounts)."""
    for node, here in (("/host/sys/fs/cgroup", CGROOT), ("/sys/fs/bpf", BPFFS)):
        if path == node or path.startswith(node + "/"):
            return here + path[len(node):]
    return path


@pytest.mark.parametrize("mode", ["iptables", "ebpf"])
def test_injected_pod_runs(topo, cluster, mode, request):
    d = cluster["dir"]
    binary = kc.image_binaries()
    cgs = request.getfixturevalue("pod_cgroups") if mode == "ebpf" else None

    def in_cg(name, argv):
        return cgroup_argv(cgs[name], argv) if cgs else argv

    cfg = os.path.join(d, "inject.json")
    if mode != "iptables":
        cfg = kc.inject_config(kc.render({"trustDomain": "pods.test",
                                          "sidecar": {"capture": mode}}, namespace=NS))
    dep = load_fixture("deploy-web.yaml")
    pod, resp, note = kc.inject_pod(cfg, pod_from(dep))
    spec = pod["spec"]
    names = [c["name"] for c in spec["initContainers"]]
    assert names == ["shunt-init", "shunt-proxy"], names
    init, proxy = spec["initContainers"]
    refs = {"metadata.uid": POD_UID, "metadata.namespace": "demo",
            "metadata.name": pod["metadata"]["generateName"] + "x1y2z"}

    def env_of(c):
        env = {k: host_path(v) for k, v in expand(c["env"], refs).items()}
        env["PATH"] = os.environ["PATH"]
        return env

    # 1. The init container: installs capture, exits 0.
    ienv = env_of(init)
    if mode == "ebpf":
        assert ienv["SHUNT_REDIRECT_CGROUP"] == "pod" and ienv["SHUNT_POD_UID"] == POD_UID
        assert ienv["SHUNT_CGROUP_ROOT"] == CGROOT
        assert ienv["SHUNT_BPF_PIN_ROOT"] == os.path.join(BPFFS, "shunt", POD_UID)
    r = topo.app.run(in_cg("init", setpriv(init["securityContext"],
                                           binary(init["command"]) + init["args"])),
                     check=False, env=ienv, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "capture installed for a proxy running as uid 1337" in r.stderr, r.stderr
    if mode == "ebpf":
        assert "redirect_cgroup pod: " + os.path.dirname(cgs["init"]) in r.stderr, r.stderr

    # 2. The proxy: the kubelet mounts the projected token for the pod's
    # service account (audience from the volume) and the bundle.
    tok = [v for v in spec["volumes"] if v["name"] == "shunt-token"][0]
    sat = tok["projected"]["sources"][0]["serviceAccountToken"]
    token = cluster["ca_api"].token("demo", spec["serviceAccountName"], audience=sat["audience"],
                                    expires_in=sat["expirationSeconds"])
    tokfile = os.path.join(d, "token-web")
    with open(tokfile, "w") as f:
        f.write(token)
    os.chmod(tokfile, 0o644)
    kubeconfig = os.path.join(d, "kubeconfig-app.json")
    shutil.copy(cluster["disc_api"].kubeconfig, kubeconfig)
    os.chmod(kubeconfig, 0o644)
    penv = env_of(proxy)
    assert penv["SHUNT_CA_ADDRESS"] == "https://shunt-ca.%s.svc:15012" % NS
    penv.update({"SHUNT_CA_ADDRESS": "https://%s:15012" % T.REMOTE4,
                 "CA_BUNDLE_PATH": os.path.join(d, "bundle.pem"),
                 "SHUNT_CA_TOKEN_FILE": tokfile,
                 "KUBECONFIG_PATH": kubeconfig})
    argv = in_cg("proxy", setpriv(proxy["securityContext"], binary(proxy["command"]) + proxy["args"]))
    p = topo.app.spawn(argv, "shunt-proxy", env=penv)
    try:
        probe = setpriv(proxy["securityContext"], binary(proxy["startupProbe"]["exec"]["command"]))

        def started():
            if not p.alive():
                raise sl.HarnessError("shunt-proxy exited: %s" % p.read_stderr()[-3000:])
            return topo.app.run(probe, check=False).returncode == 0

        sl.wait_until(started, 30, interval=0.2, what="the proxy's startup probe")
        caps, puid = capabilities(p.pid)
        assert caps == {"CapEff": 0, "CapPrm": 0, "CapBnd": 0} and puid == "1337", (caps, puid)

        # 3. The application: a server on its containerPort and a client.
        app = topo.app.spawn(in_cg("app", [sys.executable, sl.PEERS, "http", "--name", "web",
                                           "--lifetime", "600", "--listen",
                                           "%s:%d" % (T.APP4, APP_PORT)]), "web",
                             stdout_pipe=True)
        try:
            assert (app.readline(10) or "").startswith("READY")
            out = topo.app.run(in_cg("app", ["curl", "-sS", "--max-time", "10", "-o", "/dev/null",
                                             "-w", "%{http_code}",
                                             "http://%s:8080/out" % T.REMOTE4]), check=False)
            assert out.stdout == "200", out.stdout + out.stderr
            inb = topo.remote.curl(["-o", "/dev/null", "-w", "%{http_code}",
                                    "http://%s:%d/in" % (T.APP4, APP_PORT)])
            assert inb.stdout == "200", inb.stdout + inb.stderr
        finally:
            app.stop()
        status, _, body = topo.app.http("127.0.0.1", 15003, "GET", "/metrics")
        assert status == 200
        m = sl.parse_metrics(body.decode())
        accepted = {dict(labels).get("direction"): v for (name, labels), v in m.items()
                    if name == "shunt_connections_accepted_total"}
        assert accepted.get("outbound", 0) >= 1 and accepted.get("inbound", 0) >= 1, accepted
        # A scraper in another pod reaches the port the proxy declares: the
        # capture shunt-init installed leaves it alone.
        (mport,) = [x["containerPort"] for x in proxy["ports"] if x["name"] == "shunt-metrics"]
        scraped = topo.remote.curl(["http://%s:%d/metrics" % (T.APP4, mport)])
        assert scraped.returncode == 0 and "shunt_build_info{" in scraped.stdout, scraped.stderr
        status, _, st = topo.app.http("127.0.0.1", 15003, "GET", "/status")
        assert json.loads(st)["redirect_mode"] == mode, st
        status, _, certs = topo.app.http("127.0.0.1", 15003, "GET", "/certs")
        certs = json.loads(certs)
        assert "spiffe://pods.test/ns/demo/sa/web" in json.dumps(certs), certs
        assert certs.get("source") == "ca", certs
    finally:
        assert p.stop() == 0, p.read_stderr()[-3000:]
