# SPDX-License-Identifier: Apache-2.0
"""shuntctl check: every check on this machine against a running shuntd in a
pod (green), then one thing broken at a time, each time the right line
failing with its advice and the exit status saying so:

- the kernel refusing bpf() (a user namespace), and a user without CAP_BPF;
- connection tracking unusable in the pod (a raw-table NOTRACK rule: the
  connections it matches are not tracked, so REDIRECT and SO_ORIGINAL_DST
  stop working, as in a pod whose operator exempted loopback from conntrack);
- an expired certificate (file source, certificate from mtls_pki);
- the admin API unreachable;
- a stale registry (the file registry turned invalid);
- the eBPF capture's pins gone (a link unpinned under the pin root).

- shunt-ca gone while shuntd gets its certificates from it (the ca check);
- in the `--capture init` layout (shuntd init, then the proxy as uid 1337):
  green with a proxy holding no capability, failing with one that kept
  NET_ADMIN."""

import datetime
import json
import os
import re
import shutil
import sys

import pytest

import mtls_pki as pki
import shuntca
import shuntlib as sl
from ebpflib import CGROUP, PINS, InCgroup, cgroup, ebpf_args, mounts  # noqa: F401
from test_init_capture import PROXY_UID, as_init, as_proxy

HOST = ["kernel-bpf", "kernel-btf", "cgroup-v2", "iptables", "conntrack", "capabilities"]
DAEMON = ["admin", "shuntd-capabilities", "capture", "certificate", "ca", "discovery"]
LINE = re.compile(r"^(PASS|WARN|FAIL) ([a-z0-9-]+): (.*)$")


def parse(out):
    """{name: (status, rest of the line)} from the text output; every line
    but the summary must be a check line."""
    lines = out.strip().splitlines()
    assert re.match(r"^\d+ checks: \d+ passed, \d+ warnings, \d+ failed", lines[-1]), out
    res = {}
    for line in lines[:-1]:
        m = LINE.match(line)
        assert m, "not a check line: %r" % line
        res[m.group(2)] = (m.group(1), m.group(3))
    return res


def check(pod, *args):
    r = sl.shuntctl(pod, "check", *args)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return r.returncode, parse(r.stdout), r.stdout


def host_check(*prefix, args=("--pre",)):
    """shuntctl check run on the host, behind a command that restricts it."""
    if not os.access(sl.SHUNTCTL, os.X_OK):
        raise sl.HarnessError("shuntctl not found at %s" % sl.SHUNTCTL)
    r = sl.run(list(prefix) + [sl.SHUNTCTL, "check"] + list(args), check=False)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return r.returncode, parse(r.stdout), r.stdout


def need(tool):
    path = shutil.which(tool)
    assert path, "%s is needed by this test (Debian: util-linux)" % tool
    return path


@pytest.fixture(scope="module")
def app():
    """A pod with shuntd (iptables capture, a file registry)."""
    pod = sl.Pod("app")
    d = None
    try:
        reg = sl.registry_file(
            {"services": [sl.service("web", "10.96.0.10", 8080, ["10.77.0.2"])]}
        )
        d = sl.Shuntd(pod, sl.shuntd_args(**{"service-discovery.file.path": reg}))
        d.registry = reg
        d.wait_ready()
        yield pod, d
    finally:
        try:
            sl.stop_checked([d] if d else [])
        finally:
            pod.delete()


def test_green(app):
    pod, d = app
    rc, res, out = check(pod)
    assert rc == 0, out
    assert list(res) == HOST + DAEMON, out
    assert "FAIL" not in [s for s, _ in res.values()], out
    for name in ("kernel-bpf", "kernel-btf", "iptables", "conntrack", "capabilities", "admin",
                 "shuntd-capabilities", "capture", "certificate", "ca", "discovery"):
        assert res[name][0] == "PASS", out
    assert "SO_ORIGINAL_DST answers in this network namespace" in res["conntrack"][1]
    assert "pid %d," % d.json("/status")["pid"] in res["admin"][1]
    assert "SIDECAR_PROXY_INBOUND" in res["capture"][1]
    assert d.json("/certs")["current"]["serial"] in res["certificate"][1]
    assert "1 source in sync (file %s" % d.registry in res["discovery"][1], out
    assert "1 services" in res["discovery"][1]
    # `ip netns exec` hides the host's cgroup2 mount: with --redirect
    # iptables that is a warning that says it does not matter now.
    if res["cgroup-v2"][0] == "WARN":
        assert "not needed now: shuntd runs with --redirect iptables" in res["cgroup-v2"][1]

    # --json: the same results; --strict: warnings fail.
    r = sl.shuntctl(pod, "check", "--json")
    j = json.loads(r.stdout)
    assert [(c["name"], c["status"].upper()) for c in j["checks"]] == [
        (n, s) for n, (s, _) in res.items()
    ]
    assert j["ok"] is True and j["fail"] == 0 and r.returncode == 0
    warned = any(s == "WARN" for s, _ in res.values())
    r = sl.shuntctl(pod, "check", "--strict")
    assert r.returncode == (1 if warned else 0), r.stdout


def test_pre_runs_host_checks_only(app):
    pod, _ = app
    rc, res, out = check(pod, "--pre")
    assert list(res) == HOST, out
    # Capture is installed in this pod, so conntrack is tested here.
    assert res["conntrack"][0] == "PASS", out
    rc, res, out = host_check()
    assert list(res) == HOST, out
    assert res["kernel-bpf"][0] == "PASS", out
    # Nothing is installed on the host (unless something else put capture
    # there): the self-test ran in a scratch network namespace.
    st, text = res["conntrack"]
    assert st == "PASS", out
    assert text in (
        "SO_ORIGINAL_DST answers behind the nat table (tested in a scratch network namespace: "
        "capture is not installed here)",
        "SO_ORIGINAL_DST answers in this network namespace",
    ), out


# A seccomp filter that makes bpf(2) fail with EPERM (x86_64), then exec:
# what a container runtime's default profile does.
NO_BPF = r"""
import ctypes, os, struct, sys
def ins(code, k, jt=0, jf=0):
    return struct.pack("HBBI", code, jt, jf, k)
ALLOW, EPERM = 0x7fff0000, 0x00050000 | 1
prog = b"".join([ins(0x20, 4), ins(0x15, 0xC000003E, 1, 0), ins(0x06, ALLOW),
                 ins(0x20, 0), ins(0x15, 321, 0, 1), ins(0x06, EPERM), ins(0x06, ALLOW)])
buf = ctypes.create_string_buffer(prog)
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fp = Fprog(len(prog) // 8, ctypes.addressof(buf))
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(38, 1, 0, 0, 0) or libc.prctl(22, 2, ctypes.byref(fp), 0, 0):
    sys.exit("seccomp: " + os.strerror(ctypes.get_errno()))
os.execv(sys.argv[1], sys.argv[1:])
"""


def test_bpf_refused_by_seccomp():
    # The process holds CAP_BPF, but a seccomp profile denies bpf() (a
    # container runtime's default): the load is refused, said with advice.
    rc, res, out = host_check(sys.executable, "-c", NO_BPF)
    assert rc == 1, out
    st, text = res["kernel-bpf"]
    assert st == "FAIL", out
    assert "BPF program load refused: Operation not permitted" in text
    assert "although this process holds CAP_BPF" in text and "seccomp" in text
    assert res["capabilities"][0] == "PASS", out


def test_bpf_refused_in_user_namespace():
    # A user namespace holds every capability, but only for what it owns:
    # the kernel refuses bpf() there, as for a rootless container.
    probe = sl.run([need("unshare"), "--user", "--map-root-user", "true"], check=False)
    if probe.returncode != 0:
        # The kernel refuses CLONE_NEWUSER to a chrooted process (EPERM), as
        # in ../shared/tools/fresh-machine.sh, which cannot pass
        # SHUNT_ALLOW_SKIP: there, and only there, the skip is allowed.
        chroot = sl.in_chroot() and "Operation not permitted" in probe.stderr
        sl.missing("userns", "no user namespace can be created here (%s); "
                   "test_bpf_refused_by_seccomp covers the refusal" % probe.stderr.strip(),
                   allowed_here="the kernel refuses user namespaces in a chroot" if chroot else None)
    rc, res, out = host_check(need("unshare"), "--user", "--map-root-user")
    assert rc == 1, out
    st, text = res["kernel-bpf"]
    assert st == "FAIL", out
    assert "BPF program load refused: Operation not permitted" in text
    assert "user namespace" in text
    assert "install capture from the host's user namespace with CAP_BPF" in text
    assert res["capabilities"][0] == "FAIL", out
    assert "inside a user namespace" in res["capabilities"][1]


def test_bpf_without_capability():
    # The installing user lacks CAP_BPF and CAP_SYS_ADMIN: nothing to probe
    # with, which --pre reports as a failure of that user.
    rc, res, out = host_check(
        need("setpriv"), "--inh-caps=-all", "--bounding-set=-bpf,-sys_admin"
    )
    assert rc == 1, out
    st, text = res["kernel-bpf"]
    assert st == "FAIL", out
    assert "not probed" in text and "neither CAP_BPF nor CAP_SYS_ADMIN" in text
    assert "run the check as the user who installs capture" in text
    assert res["capabilities"][0] == "WARN", out
    assert "neither BPF nor SYS_ADMIN" in res["capabilities"][1]
    assert res["iptables"][0] == "PASS", out


def test_unprivileged_view(app):
    # Run as a proxy container would (uid 1337, no capability): what needs
    # privileges warns and says where to run it instead; conntrack is still
    # tested here (shuntd, on loopback, says capture is in this namespace).
    pod, _ = app
    r = pod.run(
        [need("setpriv"), "--reuid", "1337", "--regid", "1337", "--clear-groups", "--inh-caps=-all",
         "--bounding-set=-all", "--no-new-privs", sl.any_user(sl.SHUNTCTL), "check"],
        check=False,
    )  # fmt: skip
    res = parse(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr
    assert res["kernel-bpf"][0] == "WARN" and "run 'shuntctl check --pre' as root" in res["kernel-bpf"][1]
    assert res["iptables"][0] == "WARN" and "needs CAP_NET_ADMIN" in res["iptables"][1]
    assert res["capabilities"] == (
        "WARN",
        "this process (uid 1337) holds none: not NET_ADMIN, NET_RAW; host checks above ran "
        "without them and may say less than the truth: run 'shuntctl check --pre' as root on the "
        "node",
    )
    assert res["conntrack"] == ("PASS", "SO_ORIGINAL_DST answers in this network namespace")
    for name in DAEMON:
        assert res[name][0] == "PASS", r.stdout


def test_no_conntrack(app):
    pod, _ = app
    rule = ["-t", "raw", "-I", "OUTPUT", "-o", "lo", "-j", "CT", "--notrack"]
    pod.run(["iptables"] + rule)
    try:
        rc, res, out = check(pod)
        assert rc == 1, out
        st, text = res["conntrack"]
        assert st == "FAIL", out
        assert "connection tracking does not see connections (SO_ORIGINAL_DST: ENOENT)" in text
        assert "the raw table here has 1 NOTRACK rule" in text
        assert "remove them for captured traffic" in text
        assert [n for n, (s, _) in res.items() if s == "FAIL"] == ["conntrack"], out
    finally:
        pod.run(["iptables"] + ["-D" if a == "-I" else a for a in rule])
    rc, res, out = check(pod)
    assert res["conntrack"][0] == "PASS" and rc == 0, out


def test_stale_registry(app):
    pod, d = app
    with open(d.registry, "w") as f:
        f.write('{"services": [')
    try:
        sl.wait_until(
            lambda: d.json("/debug/cache")["registry"]["stale_endpoints"] > 0, 10,
            what="the registry marked stale",
        )
        rc, res, out = check(pod)
        st, text = res["discovery"]
        assert st == "WARN" and rc == 0, out
        assert "file source %s stale for" % d.registry in text
        assert "check that the registry file exists and is valid JSON" in text
        r = sl.shuntctl(pod, "check", "--strict")
        assert r.returncode == 1, r.stdout
    finally:
        sl.write_json(d.registry, {"services": [sl.service("web", "10.96.0.10", 8080, ["10.77.0.2"])]})
    sl.wait_until(lambda: check(pod)[1]["discovery"][0] == "PASS", 10, what="discovery in sync")


def test_admin_unreachable():
    pod = sl.Pod("bare")
    try:
        rc, res, out = check(pod)
        assert rc == 1, out
        assert list(res) == HOST + ["admin"], out  # nothing asked of a daemon that is not there
        st, text = res["admin"]
        assert st == "FAIL"
        assert text.startswith("cannot reach shuntd admin at 127.0.0.1:15003")
        assert "start shuntd" in text and "--admin HOST:PORT" in text
        rc, res, out = check(pod, "--admin", "127.0.0.1:1")
        assert "cannot reach shuntd admin at 127.0.0.1:1:" in res["admin"][1], out
    finally:
        pod.delete()


def test_expired_certificate():
    # shuntd refuses an expired certificate at start: give it one that
    # expires 4 s later, then ask once before and once after.
    tmp = sl.tmpdir()
    ca = pki.CA()
    bundle = os.path.join(tmp, "ca.pem")
    pki.write_bundle(bundle, ca)
    now = pki._now()
    pem, key, serial, _ = ca.issue_files(
        tmp, "web", pki.spiffe("web"),
        not_before=now - datetime.timedelta(hours=1),
        not_after=now + datetime.timedelta(seconds=4),
    )  # fmt: skip
    pod = sl.Pod("certs")
    d = None
    try:
        d = sl.Shuntd(
            pod,
            sl.shuntd_args(
                **{
                    "mtls.certificate-file": pem,
                    "mtls.private-key-file": key,
                    "mtls.ca-bundle": bundle,
                }
            ),
        )
        d.wait_ready()
        rc, res, out = check(pod, "--cert-warn", "1h")
        st, text = res["certificate"]
        assert st == "WARN", out
        assert "certificate serial %s expires in" % serial in text
        assert "under the 1h00m threshold" in text and "source files" in text
        sl.wait_until(lambda: d.json("/certs")["current"]["expires_in_s"] <= 0, 10,
                      what="the certificate expired")
        rc, res, out = check(pod)
        assert rc == 1, out
        st, text = res["certificate"]
        assert st == "FAIL", out
        assert "certificate serial %s of %s expired at" % (serial, pki.spiffe("web")) in text
        assert "peers refuse an expired certificate" in text
        assert "check that it renews mtls.certificate_file" in text
    finally:
        try:
            sl.stop_checked([d] if d else [])
        finally:
            pod.delete()


def test_ebpf_pins(cgroup):  # noqa: F811 - the fixture imported above
    need("bpftool")
    pod = sl.Pod("ebpf")
    d = None
    try:
        d = sl.Shuntd(InCgroup(pod, CGROUP), ebpf_args(**{"log-level": "info"}))
        d.wait_ready()
        assert d.json("/status")["redirect_mode"] == "ebpf"
        rc, res, out = check(pod)
        assert rc == 0, out
        st, text = res["capture"]
        assert st == "PASS", out
        assert "4 links attached to cgroup id %d, 9 maps pinned under %s" % (
            os.stat(CGROUP).st_ino, PINS) in text
        assert res["cgroup-v2"] == ("PASS", "cgroup v2 at %s (redirect_cgroup)" % CGROUP), out

        # A cleanup of the bpffs removed a link's pin: capture goes on while
        # shuntd holds the link, but not past its restart.
        os.unlink(os.path.join(PINS, "link_sockops"))
        rc, res, out = check(pod)
        assert rc == 1, out
        st, text = res["capture"]
        assert st == "FAIL", out
        assert "eBPF capture: link %s/link_sockops: No such file or directory" % PINS in text
        assert "restart shuntd (capture self) or rerun shuntd init" in text
    finally:
        try:
            sl.stop_checked([d] if d else [])
        finally:
            pod.delete()


class Wrapped:
    """A pod whose spawns run under a privilege wrapper (setpriv)."""

    def __init__(self, pod, wrap):
        self._pod, self._wrap = pod, wrap

    def spawn(self, argv, name, env=None, stdout_pipe=False):
        return self._pod.spawn(self._wrap(argv), name, env=env, stdout_pipe=stdout_pipe)

    def __getattr__(self, name):
        return getattr(self._pod, name)


def as_proxy_with_net_admin(argv):
    """A proxy container that kept NET_ADMIN (what the check must catch)."""
    return ["setpriv", "--reuid", str(PROXY_UID), "--regid", str(PROXY_UID), "--clear-groups",
            "--inh-caps=-all,+net_admin", "--ambient-caps=-all,+net_admin",
            "--bounding-set=-all,+net_admin", sl.any_user(argv[0])] + list(argv[1:])


def test_capture_init():
    need("setpriv")
    d = sl.tmpdir()
    os.chmod(d, 0o755)
    ca_dir = os.path.join(d, "ca")
    os.mkdir(ca_dir, 0o700)
    os.chown(ca_dir, PROXY_UID, PROXY_UID)
    flags = sl.shuntd_args(redirect="iptables", proxy_uid=None, capture="init", workers="1") + [
        "--mtls.ca-dir", ca_dir]
    pod = sl.Pod("init")
    proxy = None
    try:
        r = pod.run(as_init(["net_admin", "net_raw"], [sl.SHUNTD, "init"] + flags), check=False)
        assert r.returncode == 0, r.stderr

        # The layout as it should be: the proxy holds nothing.
        proxy = sl.Shuntd(Wrapped(pod, as_proxy), flags, name="proxy")
        proxy.wait_ready()
        rc, res, out = check(pod)
        assert rc == 0, out
        assert res["shuntd-capabilities"][0] == "PASS", out
        assert "holds no capability (capture init: an init container installed capture)" in (
            res["shuntd-capabilities"][1])
        assert res["capture"][0] == "PASS" and "SIDECAR_PROXY_INBOUND" in res["capture"][1], out
        # From inside the proxy container: nothing to read the nat table
        # with, what shuntd found at start; conntrack tested all the same.
        r = pod.run(as_proxy([sl.SHUNTCTL, "check"]), check=False)
        res = parse(r.stdout)
        assert r.returncode == 0, r.stdout + r.stderr
        assert res["capture"] == ("PASS", "iptables capture installed by shuntd init (shuntd found "
                                          "it at start; reading the nat table again needs "
                                          "NET_ADMIN, which this process lacks)"), r.stdout
        assert res["conntrack"] == ("PASS", "SO_ORIGINAL_DST answers in this network namespace")
        sl.stop_checked([proxy])
        proxy = None

        # A proxy container that kept NET_ADMIN.
        proxy = sl.Shuntd(Wrapped(pod, as_proxy_with_net_admin), flags, name="proxy")
        proxy.wait_ready()
        rc, res, out = check(pod)
        assert rc == 1, out
        st, text = res["shuntd-capabilities"]
        assert st == "FAIL", out
        assert "holds NET_ADMIN although capture is installed by an init container" in text
        assert "drop every capability in the proxy container" in text
        assert [n for n, (s, _) in res.items() if s == "FAIL"] == ["shuntd-capabilities"], out
    finally:
        try:
            sl.stop_checked([proxy] if proxy else [])
        finally:
            pod.delete()  # the init's rules go with the network namespace


def test_ca_reachability():
    pod = sl.Pod("ca")
    api = ca = d = None
    try:
        api = shuntca.KubeApi(pod)
        ca = shuntca.ShuntCA(pod, api)
        token = os.path.join(sl.tmpdir(), "token")
        with open(token, "w") as f:
            f.write(api.token("shop", "web"))
        d = sl.Shuntd(pod, sl.shuntd_args(**{
            "mtls.ca-address": "https://127.0.0.1:%d" % ca.port,
            "mtls.ca-token-file": token,
            "mtls.ca-bundle": ca.bundle,
        }))  # fmt: skip
        d.wait_ready()
        sl.wait_until(lambda: d.json("/certs").get("current"), 10, what="a certificate from shunt-ca")
        rc, res, out = check(pod)
        assert rc == 0, out
        st, text = res["ca"]
        assert st == "PASS", out
        assert text.startswith(
            "https://127.0.0.1:%d/healthz answers 200 over TLS verified with %s; last issuance "
            % (ca.port, ca.bundle)), out
        assert res["certificate"][0] == "PASS" and "source ca" in res["certificate"][1], out
        assert "spiffe://cluster.local/ns/shop/sa/web" in res["certificate"][1]

        # shunt-ca gone: the certificate still serves, renewal cannot happen.
        assert ca.stop() == 0
        rc, res, out = check(pod)
        assert rc == 1, out
        st, text = res["ca"]
        assert st == "FAIL", out
        assert text.startswith("GET https://127.0.0.1:%d/healthz: " % ca.port), out
        assert "certificates cannot be renewed: check mtls.ca_address" in text
        assert res["certificate"][0] == "PASS", out
    finally:
        try:
            sl.stop_checked([d] if d else [])
        finally:
            if ca and ca.proc.alive():
                ca.stop()
            if api:
                api.stop()
            pod.delete()
