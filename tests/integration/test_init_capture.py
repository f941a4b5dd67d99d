# SPDX-License-Identifier: Apache-2.0
"""Capture installed by an init container: this harness plays the kubelet.

A pod is a network namespace plus a cgroup (with one child cgroup per
container, as the kubelet makes them). In that pod, in order:

1. `shuntd init` with only NET_ADMIN and NET_RAW (and BPF and PERFMON in eBPF
   mode), as uid 0 and group 1337, every other capability dropped from its
   bounding set (setpriv, util-linux) - the init container;
2. shuntd as uid 1337 with no capability at all and `--capture init` - the
   proxy container (a native sidecar: ready before the application starts);
3. the application: an HTTP server and a curl client, as root.

Then: the application's outbound request and a remote client's inbound
request are captured and relayed, in iptables mode and in eBPF mode; the
proxy's CapEff, CapPrm and CapBnd are 0; its own upstream connections are
not captured again (the uid rule or the programs' uid check counts them, and
shuntd accepted exactly one connection per request). Also: pins the proxy
cannot open, redirect auto falling back to iptables, the init without its
capabilities, the proxy under the wrong uid, and shutdown (preStop
`shuntctl wait-idle`, then SIGTERM and drain with a request in flight).

eBPF mode uses test_ebpf.py's cgroup2 and bpffs mounts under /run (`ip netns
exec` hides the host's /sys); mounts, pins and cgroups are removed at the
end, also on failure."""

import json
import os
import shutil
import threading
import time
import sys

import pytest

import shuntlib as sl
from shuntlib import Topology as T
from ebpflib import BPFFS, CGROOT, bpf_counters, cgroup_argv, mounts, remove_pins  # noqa: F401

PROXY_UID = 1337
APP_PORT = 9090
REMOTE_HTTP = "http://%s:8080/" % T.REMOTE4
# The node's hierarchy as the kubelet lays it out (systemd driver), under a
# directory of this run's; shuntd init finds the pod's cgroup by its uid.
NODE_CG = CGROOT + "/shunt-t-%d-node" % os.getpid()
POD_UID = "5e0c4a7b-%04x-4d2e-9f10-3a5b7c9d1e2f" % (os.getpid() & 0xFFFF)
POD_CG = NODE_CG + "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod%s.slice" % (
    POD_UID.replace("-", "_"))
PINS = BPFFS + "/pod"
INIT_CAPS = {"iptables": ["net_admin", "net_raw"], "ebpf": ["net_admin", "net_raw", "bpf", "perfmon"]}


def need(tool, package):
    if shutil.which(tool) is None:
        pytest.fail("%s is not installed (Debian package %s; scripts/bootstrap.sh)" % (tool, package))


def as_init(caps, argv):
    """The init container: uid 0, group 1337, only caps (bounding set too)."""
    c = ",".join("+" + x for x in caps)
    return ["setpriv", "--regid", str(PROXY_UID), "--clear-groups", "--inh-caps=-all," + c,
            "--bounding-set=-all," + c] + list(argv)


def as_proxy(argv):
    """The proxy container: uid/gid 1337, no capability, no way to gain one."""
    return ["setpriv", "--reuid", str(PROXY_UID), "--regid", str(PROXY_UID), "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs",
            sl.any_user(argv[0])] + list(argv[1:])


class Container:
    """A pod wrapper whose spawns run in a cgroup and under a privilege
    wrapper: what sl.Shuntd needs to start the proxy container."""

    def __init__(self, pod, cgroup, wrap):
        self._pod, self._cgroup, self._wrap = pod, cgroup, wrap

    def spawn(self, argv, name, env=None, stdout_pipe=False):
        return self._pod.spawn(cgroup_argv(self._cgroup, self._wrap(argv)), name, env=env,
                               stdout_pipe=stdout_pipe)

    def __getattr__(self, name):
        return getattr(self._pod, name)


def capabilities(pid):
    with open("/proc/%d/status" % pid) as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    return {k: int(fields[k].strip(), 16) for k in ("CapEff", "CapPrm", "CapBnd")} | {
        "Uid": fields["Uid"].split()}


def kill_cgroup(cg):
    procs = os.path.join(cg, "cgroup.procs")
    if not os.path.exists(procs):
        return
    for pid in open(procs).read().split():
        try:
            os.kill(int(pid), 9)
        except ProcessLookupError:
            pass
    sl.wait_until(lambda: not open(procs).read().strip(), 5, what="cgroup %s empty" % cg)
    os.rmdir(cg)


@pytest.fixture
def pod_cgroup(mounts):
    """The pod's cgroup with a child per container, as the kubelet makes them."""
    cgs = {name: os.path.join(POD_CG, name) for name in ("init", "proxy", "app")}
    os.makedirs(POD_CG)
    for cg in cgs.values():
        os.mkdir(cg)
    try:
        yield cgs
    finally:
        try:
            for cg in cgs.values():
                kill_cgroup(cg)
            d = POD_CG
            while d != CGROOT:
                os.rmdir(d)
                d = os.path.dirname(d)
        finally:
            remove_pins(PINS)


@pytest.fixture
def files():
    """State the proxy (uid 1337) writes: the built-in CA's directory."""
    d = sl.tmpdir()
    os.chmod(d, 0o755)
    ca = os.path.join(d, "ca")
    os.mkdir(ca, 0o700)
    os.chown(ca, PROXY_UID, PROXY_UID)
    return ca


def start_pod(topo, cgs, mode, ca_dir, after_init=None, caps=None):
    """Init, then proxy (ready), then the application's server."""
    flags = sl.shuntd_args(redirect=mode, proxy_uid=None, capture="init", workers="1",
                           exclude_outbound_ports="5432") + ["--mtls.ca-dir", ca_dir]
    if mode != "iptables":
        # As the injected pod says it: the pod's uid, the node's cgroup2 root.
        flags += ["--redirect-cgroup", "pod", "--pod-uid", POD_UID, "--cgroup-root", NODE_CG,
                  "--bpf-pin-root", PINS]
    # Twice: a pod whose init containers run again finds its own capture.
    for _ in range(2):
        r = topo.app.run(cgroup_argv(cgs["init"], as_init(caps or INIT_CAPS[mode],
                                                          [sl.SHUNTD, "init"] + flags)),
                         check=False)
        assert r.returncode == 0, r.stderr
    start_pod.init_log = r.stderr
    if mode != "auto":
        rules = topo.app.iptables_save()
        assert rules.count("-j SIDECAR_PROXY_INBOUND") == 1, rules
    assert "capture installed for a proxy running as uid 1337" in r.stderr
    if after_init:
        after_init()
    proxy = sl.Shuntd(Container(topo.app, cgs["proxy"], as_proxy), flags, name="proxy")
    proxy.wait_ready()
    app = Container(topo.app, cgs["app"], lambda a: a).spawn_peer(
        "http", "app", "%s:%d" % (T.APP4, APP_PORT))
    return proxy, app


def accepted(d):
    return d.json("/status")["connections"]["accepted"]


def check_pod(topo, proxy, cgs, n=3):
    """n outbound and n inbound requests, each one connection through shuntd."""
    caps = capabilities(proxy.proc.pid)
    assert caps["Uid"] == [str(PROXY_UID)] * 4, caps
    assert (caps["CapEff"], caps["CapPrm"], caps["CapBnd"]) == (0, 0, 0), caps
    st = proxy.json("/status")
    assert st["capture"] == "init" and st["ready"] is True, st

    before = accepted(proxy)
    for i in range(n):
        r = topo.app.run(cgroup_argv(cgs["app"], ["curl", "-sS", "--noproxy", "*", "--max-time",
                                                 "10", REMOTE_HTTP + "out%d" % i]), check=False)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["path"] == "/out%d" % i
    # Outbound: one accepted connection per request, none of shuntd's own.
    assert accepted(proxy) - before == n, proxy.log_tail()

    before = accepted(proxy)
    for i in range(n):
        r = topo.remote.curl(["http://%s:%d/in%d" % (T.APP4, APP_PORT, i)])
        assert r.returncode == 0, r.stderr
        reply = json.loads(r.stdout)
        assert reply["server"] == "app" and reply["path"] == "/in%d" % i
    assert accepted(proxy) - before == n, proxy.log_tail()
    return st


def test_init_without_capabilities_fails(topo):
    r = topo.app.run(as_proxy([sl.SHUNTD, "init", "--redirect", "iptables"]), check=False)
    assert r.returncode == 1
    lines = [l for l in r.stderr.splitlines() if '"level":"error"' in l]
    assert len(lines) == 1 and "CAP_NET_ADMIN" in lines[0], r.stderr
    assert "SIDECAR_PROXY" not in topo.app.iptables_save()


def test_pod_cgroup_not_found(topo, pod_cgroup):
    r = topo.app.run(as_init(INIT_CAPS["ebpf"], [
        sl.SHUNTD, "init", "--redirect", "ebpf", "--redirect-cgroup", "pod", "--pod-uid",
        "0000-not-here", "--cgroup-root", NODE_CG, "--bpf-pin-root", PINS]), check=False)
    assert r.returncode == 1
    lines = [l for l in r.stderr.splitlines() if '"level":"error"' in l]
    assert len(lines) == 1 and "no cgroup of pod 0000-not-here under cgroup_root" in lines[0], \
        r.stderr
    assert not os.path.exists(PINS)


def test_proxy_as_wrong_uid_refuses(topo):
    """capture init, shuntd not running as the uid the capture skips: a loop
    would follow, so it does not start."""
    r = topo.app.run([sl.SHUNTD, "--capture", "init", "--redirect", "iptables",
                      "--mtls.mode", "disabled"], check=False, timeout=20)
    assert r.returncode == 1
    assert "runs as uid 0 but the capture skips uid 1337" in r.stderr, r.stderr


def test_iptables(fresh_topo, pod_cgroup, files, http_peer_fresh):
    topo = fresh_topo
    proxy, app = start_pod(topo, pod_cgroup, "iptables", files)
    try:
        st = check_pod(topo, proxy, pod_cgroup)
        assert st["redirect_mode"] == "iptables" and st["rules"]["by"] == "init", st
        # Its upstream connections met the uid rule (a loop would not).
        rules = topo.app.run(["iptables", "-t", "nat", "-L", "SIDECAR_PROXY_OUTBOUND", "-v", "-n",
                              "-x"]).stdout
        own = [l for l in rules.splitlines() if "owner UID match 1337" in l]
        assert own and int(own[0].split()[0]) >= 3, rules
        assert "dpt:5432" in rules  # an exclusion passed to the init
    finally:
        app.stop()
        sl.stop_checked([proxy])
    # The proxy removed nothing: the init's rules outlive it (a restart).
    assert "SIDECAR_PROXY_OUTBOUND" in topo.app.iptables_save()


def test_ebpf(fresh_topo, pod_cgroup, files, http_peer_fresh):
    need("bpftool", "bpftool")
    topo = fresh_topo
    proxy, app = start_pod(topo, pod_cgroup, "ebpf", files)
    try:
        st = check_pod(topo, proxy, pod_cgroup)
        assert st["redirect_mode"] == "ebpf", st
        # The pinned maps, read without privileges, answer /maps.
        maps = proxy.json("/maps")
        assert maps["mode"] == "ebpf" and maps["maps"]["config"]["uid"] == PROXY_UID, maps
        counters = maps["maps"]["counters"]
        assert counters["redirected"] >= 3 and counters["skipped_own"] >= 3, counters
        # Read-only, the proxy deletes nothing: the kernel removed each entry
        # when its connection closed (the proxy's listeners are in the pod).
        sl.wait_until(lambda: all(proxy.json("/maps")["maps"][m]["entries"] == 0
                                  for m in ("orig_by_tuple", "orig_by_cookie")), 5,
                      what="original destinations gone with their connections")
        assert "pinned link reused" in start_pod.init_log  # the second init
        assert "redirect_cgroup pod: " + POD_CG in start_pod.init_log
        links = sl.run(["bpftool", "cgroup", "show", POD_CG]).stdout
        assert links.count("cgroup_inet4_connect") == 1, links
        # The pins: the directory and maps readable by group 1337, links root's.
        mode = {n: os.stat(os.path.join(PINS, n)) for n in os.listdir(PINS)}
        assert oct(os.stat(PINS).st_mode & 0o777) == "0o750" and os.stat(PINS).st_gid == PROXY_UID
        for name, s in mode.items():
            want = 0o600 if name.startswith("link_") else 0o640
            assert s.st_mode & 0o777 == want and s.st_uid == 0, (name, oct(s.st_mode))
    finally:
        app.stop()
        sl.stop_checked([proxy])
    # Still attached: the proxy detached nothing.
    out = sl.run(["bpftool", "cgroup", "show", POD_CG]).stdout
    assert "cgroup_inet4_connect" in out, out


def test_ebpf_maps_closed(fresh_topo, pod_cgroup, files, http_peer_fresh):
    """Pins the proxy cannot open (as on a kernel before 6.5, which refuses
    bpf() without CAP_BPF): the cgroup/getsockopt program answers
    SO_ORIGINAL_DST, and everything but /maps keeps working."""
    need("bpftool", "bpftool")
    topo = fresh_topo
    proxy, app = start_pod(topo, pod_cgroup, "ebpf", files, lambda: os.chmod(PINS, 0o700))
    try:
        st = check_pod(topo, proxy, pod_cgroup)
        assert st["redirect_mode"] == "ebpf" and "maps not readable" in st["redirect_reason"], st
        assert proxy.json("/maps")["maps"] is None
        # Read by root here: answered by the program, not the proxy's map lookup.
        assert bpf_counters(PINS)["getsockopt_answered"] >= 3
    finally:
        app.stop()
        sl.stop_checked([proxy])


def test_shutdown_outlives_the_application(fresh_topo, pod_cgroup, files, http_peer_fresh):
    """Shutdown as the kubelet does it without native sidecars: the
    application gets SIGTERM while the proxy's preStop (`shuntctl wait-idle`)
    holds the proxy's own SIGTERM back until the application has made no new
    connection for 2 s; then shuntd drains: a request in flight at SIGTERM
    still gets its whole answer, and shuntd exits 0."""
    topo = fresh_topo
    proxy, app = start_pod(topo, pod_cgroup, "iptables", files)
    try:
        t0 = time.monotonic()
        hook = topo.app.spawn(as_proxy([sl.SHUNTCTL, "wait-idle", "20"]), "prestop",
                              stdout_pipe=True)
        for i in range(4):  # the application's last requests, 0.5 s apart
            r = topo.app.run(cgroup_argv(pod_cgroup["app"], ["curl", "-sS", "--max-time", "10",
                                                              REMOTE_HTTP + "last%d" % i]),
                             check=False)
            assert r.returncode == 0, r.stderr
            time.sleep(0.5)
        assert hook.wait(15) == 0, hook.read_stderr()
        waited = time.monotonic() - t0
        assert waited >= 2 + 1.5, waited  # not before the last request plus 2 s
        assert "idle: no new connection for 2 s" in hook.popen.stdout.read().decode()

        slow = {}

        def in_flight():
            slow["r"] = topo.app.run(cgroup_argv(pod_cgroup["app"], [
                "curl", "-sS", "--max-time", "10", REMOTE_HTTP + "slow/1500"]), check=False)

        th = threading.Thread(target=in_flight)
        th.start()
        sl.wait_until(lambda: proxy.json("/status")["connections"]["active"] >= 1, 5,
                      what="the slow request through shuntd")
        proxy.signal(15)
        th.join(15)
        assert slow["r"].returncode == 0 and json.loads(slow["r"].stdout)["path"] == "/slow/1500"
        assert proxy.wait(10) == 0
    finally:
        app.stop()
        sl.stop_checked([proxy])


def test_auto_without_bpf_capabilities(fresh_topo, pod_cgroup, files, http_peer_fresh):
    """redirect auto, the init without BPF and PERFMON: it falls back to
    iptables; the proxy sees no pins, cannot tell the mode, and relays with
    SO_ORIGINAL_DST (conntrack) and shortcut-aware reads."""
    topo = fresh_topo
    proxy, app = start_pod(topo, pod_cgroup, "auto", files, caps=INIT_CAPS["iptables"])
    try:
        assert "using iptables, eBPF capture unavailable: CAP_BPF missing" in start_pod.init_log
        st = check_pod(topo, proxy, pod_cgroup)
        assert st["redirect_mode"] == "unknown" and "maps not readable" in st["redirect_reason"]
        assert "SIDECAR_PROXY_OUTBOUND" in topo.app.iptables_save()
    finally:
        app.stop()
        sl.stop_checked([proxy])


@pytest.fixture
def http_peer_fresh(fresh_topo):
    p = fresh_topo.remote.spawn_peer("http", "remote-http", "%s:8080" % T.REMOTE4)
    yield p
    p.stop()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
