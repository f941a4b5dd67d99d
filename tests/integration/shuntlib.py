# SPDX-License-Identifier: Apache-2.0
"""Harness for shunt's integration tests: pods as network namespaces.

A pod is a network namespace (named "shunt-t-<pid>-<n>-<role>") with lo up.
Pods are joined by veth pairs carrying IPv4 (10.77.0.0/24) and IPv6
(fd77::/64, nodad) addresses. Processes run inside a pod with
`ip netns exec`; sockets for in-test clients are created directly in the
pod's namespace by a helper thread that has called setns(2), so a test can
hold connections open while it looks at shuntd's admin API.

Everything created here is registered and removed by cleanup_all(), which
runs from the fixtures' finalizers, at interpreter exit and on SIGTERM/SIGINT.
A run killed with SIGKILL leaves namespaces behind; sweep_stale() removes
those of runs whose pid no longer exists.
"""

import atexit
import concurrent.futures
import ctypes
import http.client
import json
import os
import re
import resource
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PEERS = os.path.join(HERE, "peers.py")
SOURCE = os.environ.get("SHUNT_SOURCE") or os.path.abspath(os.path.join(HERE, "..", ".."))
BUILD = os.environ.get("SHUNT_BUILD") or os.path.join(SOURCE, "build")
SHUNTD = os.path.join(BUILD, "shuntd")
SHUNTCTL = os.path.join(BUILD, "shuntctl")

NS_PREFIX = "shunt-t-"
RUN_PREFIX = "%s%d-" % (NS_PREFIX, os.getpid())
CLONE_NEWNET = 0x40000000

# Shuntd in tests does not exempt root's traffic (the tests' clients run as
# root): only its SO_MARK keeps it out of its own capture. 4242 is an uid
# nothing here runs as.
TEST_PROXY_UID = "4242"
MARK = 0x539

_libc = ctypes.CDLL(None, use_errno=True)
_lock = threading.Lock()
_live_procs = []  # Proc
_live_pods = []  # Pod
_tmpdirs = []
_daemons = []  # Shuntd, most recent last (for failure reports)
_counter = [0]


class HarnessError(Exception):
    pass


# ---------------------------------------------------------------- waiting


def wait_until(pred, timeout, interval=0.05, what="condition"):
    """Polls pred() until it returns a truthy value; returns it. Raises
    HarnessError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - remembered for the message
            last_exc = e
        if time.monotonic() >= deadline:
            msg = "timed out after %.1f s waiting for %s" % (timeout, what)
            if last_exc is not None:
                msg += " (last error: %r)" % (last_exc,)
            raise HarnessError(msg)
        time.sleep(interval)


# ---------------------------------------------------------------- missing prerequisites
#
# No silent skips: a test whose tool, module, kernel feature or privilege is
# missing fails with one line naming it, unless the environment variable
# SHUNT_ALLOW_SKIP (names separated by commas or spaces, e.g.
# SHUNT_ALLOW_SKIP=tcpdump,userns) allows that skip. scripts/test.sh and CI
# leave it unset. conftest.py turns every other skip into a failure.

ALLOW_SKIP_VAR = "SHUNT_ALLOW_SKIP"
_allowed_skip_messages = set()


def allowed_skips():
    return {w for w in re.split(r"[,\s]+", os.environ.get(ALLOW_SKIP_VAR, "")) if w}


def missing(name, reason, allowed_here=None):
    """The prerequisite `name` is missing for `reason`: fails the test, or
    skips it when SHUNT_ALLOW_SKIP names it. allowed_here: why this one
    environment allows the skip without the variable (documented cases
    only; the reason then says so)."""
    if name in allowed_skips() or allowed_here:
        msg = "%s missing, skip allowed (%s): %s" % (
            name, allowed_here or "%s=%s" % (ALLOW_SKIP_VAR, name), reason)
        _allowed_skip_messages.add(msg)
        pytest.skip(msg)
    pytest.fail("%s (set %s=%s to skip instead)" % (reason, ALLOW_SKIP_VAR, name), pytrace=False)


def skip_allowed(message):
    """Whether a skip's message is one that missing() allowed."""
    return message.removeprefix("Skipped: ") in _allowed_skip_messages


def require_tool(tool, package=None):
    """The path of `tool`; missing() when it is not installed."""
    path = shutil.which(tool)
    if path is None:
        missing(tool, "%s is not installed (Debian package %s; scripts/bootstrap.sh installs it)"
                % (tool, package or tool))
    return path


def in_chroot():
    """Whether this process runs chrooted, as the kernel sees it: its root
    is not the root of its mount namespace. Seen from here: the mount on
    "/" in its mountinfo (paths there are relative to each process's root)
    is not the one pid 1 has on "/" (/proc/1/root itself may be unreadable,
    as on this CI machine). The kernel refuses user namespaces to a
    chrooted process (EPERM)."""
    def root_mount(pid):  # the id of the last mount on "/" as that process sees it
        with open("/proc/%s/mountinfo" % pid) as f:
            ids = [line.split()[0] for line in f if line.split()[4] == "/"]
        return ids[-1] if ids else None

    try:
        return root_mount("self") != root_mount(1)
    except OSError:
        return False


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(max(n, soft), hard)
    if want > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return want


_any_user = {}


def any_user(path):
    """A copy of the program at path that every uid can execute, for a test
    that runs it as another user (uid 1337, nginx's nobody): a checkout under
    /root (mode 0700), as in CI and on a fresh machine, lets no other user in.
    Programs outside the build directory are returned as they are."""
    if not os.path.abspath(path).startswith(os.path.abspath(BUILD) + os.sep):
        return path
    if path not in _any_user:
        d = tmpdir()
        os.chmod(d, 0o755)
        dst = os.path.join(d, os.path.basename(path))
        shutil.copy(path, dst)
        os.chmod(dst, 0o755)
        _any_user[path] = dst
    return _any_user[path]


def tmpdir():
    d = tempfile.mkdtemp(prefix=RUN_PREFIX)
    _tmpdirs.append(d)
    return d


# ---------------------------------------------------------------- processes


class Proc:
    """A process started inside a pod; its stdout/stderr go to files."""

    def __init__(self, pod, argv, name, env=None, stdout_pipe=False):
        self.pod = pod
        self.name = name
        self.argv = list(argv)
        d = tmpdir()
        self.out_path = os.path.join(d, name + ".out")
        self.err_path = os.path.join(d, name + ".err")
        self._out = open(self.out_path, "wb")
        self._err = open(self.err_path, "wb")
        full = ["ip", "netns", "exec", pod.name] + self.argv
        self.popen = subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else self._out,
            stderr=self._err,
            env=env,
            start_new_session=True,
        )
        with _lock:
            _live_procs.append(self)

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.popen.pid, sig)

    def wait(self, timeout):
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=None, timeout=10.0):
        """Signals the process, waits up to timeout, then SIGKILLs it.
        Returns the exit status (negative for a signal)."""
        if sig is None:
            sig = signal.SIGTERM
        if self.alive():
            try:
                os.kill(self.popen.pid, sig)
            except ProcessLookupError:
                pass
            if self.wait(timeout) is None:
                try:
                    os.kill(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=10)
        self._close()
        return self.popen.returncode

    def _close(self):
        with _lock:
            if self in _live_procs:
                _live_procs.remove(self)
        for f in (self._out, self._err):
            try:
                f.close()
            except OSError:
                pass
        if self.popen.stdout:
            self.popen.stdout.close()

    def read_stderr(self):
        with open(self.err_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def read_stdout(self):
        with open(self.out_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def readline(self, timeout):
        """One line from a piped stdout, or None on timeout/EOF."""
        sel = selectors.DefaultSelector()
        sel.register(self.popen.stdout, selectors.EVENT_READ)
        try:
            if not sel.select(timeout):
                return None
        finally:
            sel.close()
        line = self.popen.stdout.readline()
        return line.decode("utf-8", "replace") if line else None


def run(argv, timeout=30, check=True, **kw):
    """subprocess.run in the host namespace with captured text output."""
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        raise HarnessError(
            "%s exited %d: %s%s" % (" ".join(argv), p.returncode, p.stdout, p.stderr)
        )
    return p


# ---------------------------------------------------------------- pods


def _setns_initializer(path):
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, "setns(%s): %s" % (path, os.strerror(e)))
    finally:
        os.close(fd)


class Pod:
    """One network namespace standing for a pod."""

    def __init__(self, role):
        with _lock:
            _counter[0] += 1
            n = _counter[0]
        self.role = role
        self.name = "%s%d-%s" % (RUN_PREFIX, n, role)
        self.v4 = []
        self.v6 = []
        self._exec = None
        run(["ip", "netns", "add", self.name])
        with _lock:
            _live_pods.append(self)
        self.ip("link", "set", "lo", "up")

    # -- commands in the pod
    def ip(self, *args):
        return run(["ip", "-n", self.name] + list(args))

    def run(self, argv, timeout=30, check=True, **kw):
        return run(["ip", "netns", "exec", self.name] + list(argv), timeout=timeout, check=check, **kw)

    def spawn(self, argv, name, env=None, stdout_pipe=False):
        return Proc(self, argv, name, env=env, stdout_pipe=stdout_pipe)

    def curl(self, args, timeout=20):
        """curl in the pod; returns CompletedProcess (never raises on status)."""
        return self.run(
            ["curl", "-sS", "--max-time", str(timeout)] + list(args), timeout=timeout + 5, check=False
        )

    def sysctl(self, key, value):
        self.run(["sysctl", "-qw", "%s=%s" % (key, value)])

    # -- sockets in the pod
    def _executor(self):
        if self._exec is None:
            self._exec = concurrent.futures.ThreadPoolExecutor(
                max_workers=1,
                initializer=_setns_initializer,
                initargs=("/run/netns/" + self.name,),
            )
        return self._exec

    def in_ns(self, fn, *args):
        """Runs fn(*args) on a thread inside this pod's network namespace."""
        return self._executor().submit(fn, *args).result()

    def sockets(self, n, family=socket.AF_INET):
        return self.in_ns(lambda: [socket.socket(family, socket.SOCK_STREAM) for _ in range(n)])

    def socket(self, family=socket.AF_INET, type_=socket.SOCK_STREAM):  # noqa: A003
        return self.in_ns(socket.socket, family, type_)

    def connect(self, host, port, timeout=5.0):
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        s = self.socket(fam)
        s.settimeout(timeout)
        try:
            s.connect((host, port))
        except BaseException:
            s.close()
            raise
        return s

    def http(self, host, port, method, path, body=None, timeout=5.0, headers=None):
        """One HTTP/1.1 request from inside the pod: (status, headers, body bytes)."""
        s = self.connect(host, port, timeout)
        conn = http.client.HTTPConnection(host, port, timeout=timeout)
        conn.sock = s
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            return resp.status, dict(resp.getheaders()), data
        finally:
            conn.close()

    def spawn_ready(self, argv, name, timeout=10.0, what=None):
        """Starts a server that prints a line beginning with READY once it
        listens (peers.py, httpbackend.py, grpcpeer.py, the stand-ins) and
        waits up to timeout for that line."""
        p = self.spawn(argv, name, stdout_pipe=True)
        line = p.readline(timeout)
        if not line or not line.startswith("READY"):
            p.stop()
            raise HarnessError(
                "%s did not start: %r; stderr: %s" % (what or name, line, p.read_stderr())
            )
        return p

    def spawn_peer(self, kind, name, listen, extra=(), timeout=10.0):
        """Starts a peers.py server and waits for its READY line."""
        argv = [sys.executable, PEERS, kind, "--name", name, "--lifetime", "600"]
        for spec in listen if isinstance(listen, (list, tuple)) else [listen]:
            argv += ["--listen", spec]
        argv += list(extra)
        return self.spawn_ready(
            argv, "peer-" + name, timeout, what="peer %s (%s)" % (name, kind)
        )

    def iptables_save(self, v6=False):
        return self.run(["ip6tables-save" if v6 else "iptables-save", "-t", "nat"]).stdout

    def delete(self, kill_others=True):
        """kill_others=False leaves alone the processes the harness did not
        start here that are in the namespace now (a node agent's thread
        that entered it, as a runtime removing a sandbox would)."""
        # Processes first (a netns lives on while a process is in it).
        for p in list(_live_procs):
            if p.pod is self:
                p.stop(signal.SIGKILL, timeout=5)
        r = subprocess.run(
            ["ip", "netns", "pids", self.name], capture_output=True, text=True, timeout=10
        )
        for pid in r.stdout.split() if kill_others else ():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        if self._exec is not None:
            self._exec.shutdown(wait=True)
            self._exec = None
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, timeout=10)
        with _lock:
            if self in _live_pods:
                _live_pods.remove(self)


def link(a, b, a_v4, b_v4, a_v6, b_v6, extra_b_v4=(), extra_b_v6=(), prefix4=24, prefix6=64):
    """Joins pods a and b with a veth pair named eth-<peer role> on each side."""
    an = ("e-" + b.role)[:15]
    bn = ("e-" + a.role)[:15]
    a.ip("link", "add", an, "type", "veth", "peer", "name", bn, "netns", b.name)
    for pod, dev, v4s, v6s in ((a, an, [a_v4], [a_v6]), (b, bn, [b_v4] + list(extra_b_v4), [b_v6] + list(extra_b_v6))):
        pod.sysctl("net.ipv6.conf.all.disable_ipv6", 0)
        for addr in v4s:
            pod.ip("addr", "add", "%s/%d" % (addr, prefix4), "dev", dev)
            pod.v4.append(addr)
        for addr in v6s:
            pod.ip("-6", "addr", "add", "%s/%d" % (addr, prefix6), "dev", dev, "nodad")
            pod.v6.append(addr)
        pod.ip("link", "set", dev, "up")


class Topology:
    """Pod "app" (10.77.0.1, fd77::1) and pod "remote" (10.77.0.2 and .3,
    fd77::2 and ::3) joined by one veth pair."""

    APP4, REMOTE4, REMOTE4B = "10.77.0.1", "10.77.0.2", "10.77.0.3"
    APP6, REMOTE6, REMOTE6B = "fd77::1", "fd77::2", "fd77::3"

    def __init__(self):
        self.app = Pod("app")
        self.remote = Pod("remote")
        link(
            self.app,
            self.remote,
            self.APP4,
            self.REMOTE4,
            self.APP6,
            self.REMOTE6,
            extra_b_v4=[self.REMOTE4B],
            extra_b_v6=[self.REMOTE6B],
        )
        # Addresses are usable at once (nodad); wait for carrier on both ends.
        for pod in (self.app, self.remote):
            wait_until(
                lambda p=pod: all(
                    l.get("operstate") == "UP"
                    for l in json.loads(p.ip("-j", "link", "show", "type", "veth").stdout)
                ),
                10,
                what="veth up in " + pod.name,
            )

    def add_remote4(self, *addrs):
        """More IPv4 addresses on the remote pod's end of the veth (EXTRA4
        when none are given): room for a third endpoint and more."""
        for a in addrs or (EXTRA4,):
            self.remote.ip("addr", "add", a + "/24", "dev", "e-app")

    def route_vips(self, v6=False):
        """Services' virtual addresses route out of the app pod like any
        remote address; the capture redirects them before they leave."""
        self.app.ip("route", "add", VIP_NET4, "dev", "e-remote")
        if v6:
            self.app.ip("-6", "route", "add", VIP_NET6, "dev", "e-remote")

    def delete(self):
        self.app.delete()
        self.remote.delete()


# Services' virtual addresses (Topology.route_vips), and the three endpoint
# addresses most request-level tests spread over (EXTRA4 needs add_remote4).
VIP_NET4, VIP_NET6 = "10.96.0.0/16", "fd96::/64"
EXTRA4 = "10.77.0.4"
EP_ADDRS = [Topology.REMOTE4, Topology.REMOTE4B, EXTRA4]


# name -> (kind, listen specs); servers in the remote pod.
REMOTE_PEERS = {
    "echo": ("echo", ["%s:7000" % Topology.REMOTE4, "[%s]:7000" % Topology.REMOTE6]),
    "http": ("http", ["%s:8080" % Topology.REMOTE4, "[%s]:8080" % Topology.REMOTE6]),
    "greet": ("greet", ["%s:2525" % Topology.REMOTE4, "[%s]:2525" % Topology.REMOTE6]),
    "halfclose": ("halfclose", ["%s:7100" % Topology.REMOTE4, "[%s]:7100" % Topology.REMOTE6]),
    "reset": ("reset", ["%s:7200" % Topology.REMOTE4, "[%s]:7200" % Topology.REMOTE6]),
    "addr-a": ("addr", ["%s:7001" % Topology.REMOTE4, "[%s]:7001" % Topology.REMOTE6]),
    "addr-b": ("addr", ["%s:7001" % Topology.REMOTE4B, "[%s]:7001" % Topology.REMOTE6B]),
    "addr-c": ("addr", ["%s:7002" % Topology.REMOTE4, "[%s]:7002" % Topology.REMOTE6]),
}


def spawn_remote_peers(topo, procs, names=None):
    """Starts REMOTE_PEERS (or the named subset) in topo.remote, adding each
    to procs as it starts (so the caller can stop what did start)."""
    for name in names or REMOTE_PEERS:
        kind, listen = REMOTE_PEERS[name]
        procs[name] = topo.remote.spawn_peer(kind, name, listen)
    return procs


def spawn_nginx(pod, d, conf, addr, port, name="nginx"):
    """nginx (Debian's) in pod with the configuration text conf, written as
    d/nginx.conf (its error log d/error.log); returns its Proc once
    addr:port accepts (10 s at most; else stopped, and HarnessError)."""
    path = os.path.join(d, "nginx.conf")
    with open(path, "w") as f:
        f.write(conf)
    p = pod.spawn(
        ["nginx", "-e", os.path.join(d, "error.log"), "-c", path, "-g", "daemon off;"], name
    )

    def up():
        if not p.alive():
            raise HarnessError("%s exited: %s" % (name, p.read_stderr()))
        pod.connect(addr, port, timeout=1).close()
        return True

    try:
        wait_until(up, 10, what="%s listening" % name)
    except BaseException:
        p.stop()
        raise
    return p


# ---------------------------------------------------------------- registry


def service(name, vip, port, addrs, protocol=None, port_name="http", service_port=80, **extra):
    """One service of the file registry: vip (one address or a list) on
    service_port, forwarded to port on each of addrs; protocol declared when
    given (else sniffed). extra keys (identity, load_balancing, ...) are
    added as they are."""
    p = {"name": port_name, "port": service_port, "target_port": port}
    if protocol:
        p["protocol"] = protocol
    svc = {
        "name": name,
        "namespace": "default",
        "addresses": list(vip) if isinstance(vip, (list, tuple)) else [vip],
        "ports": [p],
        "endpoints": [{"address": a, "port": port} for a in addrs],
    }
    svc.update(extra)
    return svc


def write_json(path, obj):
    """Writes obj as JSON by rename, so a watcher never reads half a file."""
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f)
    os.rename(tmp, path)


def registry_file(reg, d=None):
    """Writes a file registry ({"services": [...]}) as registry.json in
    directory d (a new temporary one by default); returns its path."""
    path = os.path.join(d or tmpdir(), "registry.json")
    write_json(path, reg)
    return path


# ---------------------------------------------------------------- shuntd


def parse_metrics(text):
    """Prometheus text -> {(name, ((label, value), ...)): float}."""
    out = {}
    lab_re = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(\s+\S+)?$", line)
        if not m:
            raise HarnessError("unparsable metrics line: %r" % line)
        labels = tuple(sorted(lab_re.findall(m.group(2) or "")))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def hostport(v):
    """Normalizes an address as shuntd may print it ("1.2.3.4:80",
    "[fd77::2]:80", or {"address"|"ip"|"host", "port"}) to (host, port)."""
    if isinstance(v, dict):
        host = v.get("address") or v.get("ip") or v.get("host")
        return host, int(v["port"])
    if isinstance(v, (list, tuple)):
        return v[0], int(v[1])
    s = str(v)
    if s.startswith("["):
        host, _, port = s[1:].partition("]:")
        return host, int(port)
    host, _, port = s.rpartition(":")
    return host, int(port)


class Shuntd:
    """One shuntd inside a pod, with its stderr (JSON logs) in a file."""

    def __init__(self, pod, args=(), config=None, name="shuntd", env=None, wrap=()):
        """wrap: a command shuntd runs under, e.g. ("prlimit", "--nofile=256:256", "--")."""
        if not os.access(SHUNTD, os.X_OK):
            raise HarnessError("shuntd not found at %s (set SHUNT_BUILD)" % SHUNTD)
        self.pod = pod
        self.config_path = None
        argv = list(wrap) + [SHUNTD]
        if config is not None:
            self.config_path = os.path.join(tmpdir(), "shunt.json")
            self.write_config(config)
            argv += ["--config", self.config_path]
        argv += list(args)
        # The built-in CA keeps its state in mtls.ca_dir (/var/lib/shunt/ca by
        # default): tests keep theirs in a temporary directory.
        if not any(str(a).startswith("--mtls.ca-dir") for a in argv):
            argv += ["--mtls.ca-dir", os.path.join(tmpdir(), "ca")]
        self.argv = argv
        e = dict(os.environ)
        if env:
            e.update(env)
        self._spawn = (name, e)
        self.proc = pod.spawn(argv, name, env=e)
        with _lock:
            _daemons.append(self)
            del _daemons[:-3]
        self.admin = ("127.0.0.1", 15003)

    def write_config(self, config):
        tmp = self.config_path + ".tmp"
        with open(tmp, "w") as f:
            if isinstance(config, str):
                f.write(config)
            else:
                json.dump(config, f)
        os.rename(tmp, self.config_path)

    # -- lifecycle
    def alive(self):
        return self.proc.alive()

    def restart(self):
        """After stop(): the same command again, ready. A test that replaced
        a module's daemon for a while gives it back, so no later test depends
        on running before that one."""
        self.proc = self.pod.spawn(self.argv, self._spawn[0], env=self._spawn[1])
        return self.wait_ready()

    def wait_ready(self, timeout=20.0):
        def ready():
            if not self.proc.alive():
                raise HarnessError(
                    "shuntd exited with %s before ready:\n%s"
                    % (self.proc.popen.returncode, self.log_tail())
                )
            try:
                return self.get("/ready")[0] == 200
            except OSError:
                return False

        try:
            wait_until(ready, timeout, interval=0.05, what="shuntd /ready in " + self.pod.name)
        except HarnessError as e:
            raise HarnessError("%s\n%s" % (e, self.log_tail())) from None
        return self

    def signal(self, sig):
        self.proc.signal(sig)

    def wait(self, timeout):
        return self.proc.wait(timeout)

    def stop(self, timeout=15.0):
        return self.proc.stop(signal.SIGTERM, timeout)

    def mapped_files(self):
        """The files mapped into the running process (/proc/PID/maps)."""
        with open("/proc/%d/maps" % self.proc.pid) as f:
            return {line.split(None, 5)[5].strip() for line in f if len(line.split(None, 5)) == 6}

    # -- admin
    def get(self, path, timeout=5.0):
        status, _, body = self.pod.http(self.admin[0], self.admin[1], "GET", path, timeout=timeout)
        return status, body

    def admin_token(self):
        """The bearer token shuntd wrote to admin.token_file ("" when it
        wrote none: admin.mutations off)."""
        if self.config_value("admin.mutations")[0] != "token":
            return ""
        with open(self.config_value("admin.token_file")[0]) as f:
            return f.read().strip()

    def post(self, path, body, timeout=5.0, token=None):
        """POST to the admin API with the daemon's token (token= another)."""
        token = self.admin_token() if token is None else token
        headers = {"Authorization": "Bearer " + token} if token else {}
        status, _, data = self.pod.http(
            self.admin[0], self.admin[1], "POST", path, body=body, timeout=timeout, headers=headers
        )
        return status, data

    def json(self, path):
        status, body = self.get(path)
        if status != 200:
            raise HarnessError("GET %s -> %d: %r" % (path, status, body[:300]))
        return json.loads(body)

    def metrics_text(self):
        status, body = self.get("/metrics")
        if status != 200:
            raise HarnessError("GET /metrics -> %d" % status)
        return body.decode()

    def metrics(self):
        return parse_metrics(self.metrics_text())

    def metric(self, name, default=None, **labels):
        m = self.metrics()
        key = (name, tuple(sorted(labels.items())))
        if key in m:
            return m[key]
        if default is not None:
            return default
        raise KeyError("metric %s%r not in /metrics" % (name, labels))

    def wait_metric(self, name, pred, timeout=5, **labels):
        """Polls metric name{labels} (0 when absent) until pred(value) holds;
        returns the value. Workers count an event just after acting on it,
        so a counter may lag the log line or the socket close by a moment."""
        def check():
            v = self.metric(name, default=0.0, **labels)
            return (v,) if pred(v) else None

        return wait_until(check, timeout, what="%s%r" % (name, labels))[0]

    def connections(self):
        return self.json("/connections")["connections"]

    def config_value(self, key):
        """Effective value of a dotted key from /config, accepting a flat
        {"a.b": {"value"}} or nested {"a": {"b": {"value"}}} dump."""
        cfg = self.json("/config")
        if key in cfg:
            node = cfg[key]
        else:
            node = cfg
            for part in key.split("."):
                node = node[part]
        if isinstance(node, dict) and "value" in node:
            return node["value"], node.get("source")
        return node, None

    # -- logs
    def log_text(self):
        return self.proc.read_stderr()

    def log_lines(self):
        """Parsed JSON log lines; a line that is not JSON is {"_raw": line}."""
        out = []
        for line in self.log_text().splitlines():
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                out.append(obj if isinstance(obj, dict) else {"_raw": line})
            except ValueError:
                out.append({"_raw": line})
        return out

    def access_lines(self, type=None):
        """Parsed access log lines (access_log.destination stdout, the
        default: one JSON object per line, docs/observability.md), of one
        type ("http", "tcp") or all. A line that is not JSON fails the
        caller: every access line must parse."""
        out = []
        for line in self.proc.read_stdout().splitlines():
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise HarnessError("access line is not JSON: %r" % line) from None
            if type is None or obj.get("type") == type:
                out.append(obj)
        return out

    def log_tail(self, n=60):
        lines = self.log_text().splitlines()
        return "--- shuntd log (%s, last %d of %d lines) ---\n%s" % (
            self.pod.name,
            min(n, len(lines)),
            len(lines),
            "\n".join(lines[-n:]),
        )


def audit_lines(d, reason):
    """The messages of d's audit lines (refused handshakes and connections)
    with reason."""
    msgs = [l.get("msg", "") for l in d.log_lines()]
    return [m for m in msgs if "audit:" in m and "reason=" + reason + " " in m]


def stop_checked(daemons, exited_ok=False):
    """Stops every daemon in turn; a bad exit or a
    sanitizer report in any one's log fails the caller. exited_ok: a daemon
    that had already exited (a test that made it exit checked how) is
    checked for sanitizer reports only."""
    bad = []
    for d in daemons:
        gone = exited_ok and not d.alive()
        rc = d.stop()
        log = d.log_text()
        if (rc not in (0, None) and not gone) or "Sanitizer" in log or "runtime error" in log:
            bad.append("%s exited %s\n%s" % (d.pod.name, rc, d.log_tail(80)))
    assert not bad, "\n".join(bad)


def teardown(topo=None, daemons=(), procs=()):
    """The end of a fixture: stop_checked(daemons) (None entries are daemons
    that never started), then, whatever that found, stops procs and deletes
    topo."""
    try:
        stop_checked([d for d in daemons if d is not None])
    finally:
        for p in procs:
            p.stop()
        if topo is not None:
            topo.delete()


def start_mtls_pair(topo, daemons, ca_dir=None, a_flags=None, b_flags=None, b_config=None):
    """The two sidecars of a mutual TLS test: "shuntd-a" in topo.app (service
    name client), then "shuntd-b" in topo.remote (service name web). With
    ca_dir both use that built-in CA: A starts first and creates it, B loads
    it. a_flags and b_flags add to or override these flags. Each daemon
    joins daemons as soon as it exists, so the caller's stop_checked(daemons)
    stops whatever did start. Returns (a, b)."""
    out = []
    for pod, name, svc, flags, config in (
        (topo.app, "shuntd-a", "client", a_flags, None),
        (topo.remote, "shuntd-b", "web", b_flags, b_config),
    ):
        f = {"mtls.ca-dir": ca_dir} if ca_dir else {}
        f["mtls.service-name"] = svc
        f.update(flags or {})
        d = Shuntd(pod, shuntd_args(**f), config=config, name=name)
        daemons.append(d)
        d.wait_ready()
        out.append(d)
    return tuple(out)


def _token_dir():
    """A directory for a daemon's admin token, writable by a proxy that runs
    as another uid (the capture init layout); the token file itself is 0600."""
    d = tmpdir()
    os.chmod(d, 0o1777)
    return d


def shuntd_args(**flags):
    """Test defaults as flags; keyword overrides (underscores -> dashes),
    None removes a default."""
    base = {
        "redirect": "iptables",
        "workers": "2",
        "log-level": "debug",
        "proxy-uid": TEST_PROXY_UID,
        "drain-timeout": "2s",
        # Tests change endpoints, breakers and the log level through the
        # admin API: with a token file of the daemon's own.
        "admin.mutations": "token",
        "admin.token-file": os.path.join(_token_dir(), "admin-token"),
        # Not the shared /run/shunt/upgrade.sock: tests run two at a time.
        "upgrade.socket": os.path.join(tmpdir(), "upgrade.sock"),
    }
    for k, v in flags.items():
        base[k.replace("_", "-")] = v
    out = []
    for k, v in base.items():
        if v is not None:
            out += ["--" + k, str(v)]
    return out


def shuntctl(pod, *args, timeout=15):
    if not os.access(SHUNTCTL, os.X_OK):
        raise HarnessError("shuntctl not found at %s (set SHUNT_BUILD)" % SHUNTCTL)
    return pod.run([SHUNTCTL] + list(args), timeout=timeout, check=False)


# ---------------------------------------------------------------- sockets


def recv_exact(sock, n, timeout=10.0):
    sock.settimeout(timeout)
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise HarnessError("EOF after %d of %d bytes" % (len(buf), n))
        buf += chunk
    return bytes(buf)


def recv_line(sock, timeout=10.0, limit=65536):
    sock.settimeout(timeout)
    buf = bytearray()
    while not buf.endswith(b"\n"):
        c = sock.recv(1)
        if not c:
            raise HarnessError("EOF before end of line: %r" % bytes(buf))
        buf += c
        if len(buf) > limit:
            raise HarnessError("line too long")
    return bytes(buf)


def recv_all(sock, timeout=10.0):
    sock.settimeout(timeout)
    buf = bytearray()
    while True:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return bytes(buf)
        buf += chunk


def echo(sock, data, timeout=10.0):
    sock.sendall(data)
    return recv_exact(sock, len(data), timeout)


def addr_hello(sock, timeout=10.0):
    """First line of an `addr` peer: {"server", "peer", "local"}."""
    return json.loads(recv_line(sock, timeout))


SYNC_PORT = 9  # UDP discard: what pcap_sync() sends, never answered in a pod


def tcpdump(pod, iface, pcap, bpf_filter, snaplen=0, name="tcpdump"):
    """tcpdump in pod recording iface into pcap: the packets bpf_filter
    matches, plus pcap_sync()'s datagrams. Returns once it listens."""
    dump = pod.spawn(["tcpdump", "-Z", "root", "-i", iface, "-U", "--immediate-mode", "-nn",
                      "-s", str(snaplen), "-w", pcap,
                      "(%s) or (udp dst port %d)" % (bpf_filter, SYNC_PORT)], name)
    try:
        wait_until(lambda: "listening on" in dump.read_stderr(), 10, what="tcpdump listening")
    except BaseException:
        dump.stop()
        raise
    return dump


def pcap_sync(pod, iface, pcap, timeout=10):
    """Waits until tcpdump() has written every packet that crossed iface
    before this call: a datagram sent out of iface now is tapped after
    them, in order, so once it is in pcap so are they. On lo it goes to
    127.0.0.1, elsewhere to the link's broadcast (no ARP needed)."""
    token = b"pcap-sync " + os.urandom(8).hex().encode()
    s = pod.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        if iface == "lo":
            s.sendto(token, ("127.0.0.1", SYNC_PORT))
        else:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, iface.encode())
            s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            s.sendto(token, ("255.255.255.255", SYNC_PORT))
    finally:
        s.close()

    def written():
        with open(pcap, "rb") as f:
            return token in f.read()

    wait_until(written, timeout, what="tcpdump to write out %s" % pcap)


def pcap_tcp_segments(pcap):
    """(source address, source port, payload) of every IPv4 TCP segment of an
    Ethernet pcap, in capture order (empty payloads included)."""
    with open(pcap, "rb") as f:
        data = f.read()
    if len(data) < 24:
        return []
    end = "<" if struct.unpack("<I", data[:4])[0] in (0xA1B2C3D4, 0xA1B23C4D) else ">"
    out, off = [], 24
    while off + 16 <= len(data):
        caplen = struct.unpack(end + "I", data[off + 8 : off + 12])[0]
        pkt = data[off + 16 : off + 16 + caplen]
        off += 16 + caplen
        if len(pkt) < 34 or pkt[12:14] != b"\x08\x00" or pkt[14 + 9] != 6:
            continue
        ip = pkt[14:]
        tcp = ip[(ip[0] & 0x0F) * 4 :]
        src = ".".join(map(str, ip[12:16]))
        out.append((src, struct.unpack("!H", tcp[0:2])[0], tcp[(tcp[12] >> 4) * 4 :]))
    return out


def iptables_counts(text):
    """Counts in an iptables-save -t nat dump: chain declarations and jumps."""
    c = {}
    for chain in ("SIDECAR_PROXY_INBOUND", "SIDECAR_PROXY_OUTBOUND"):
        c[chain + ":decl"] = len(re.findall(r"^:%s " % chain, text, re.M))
        c[chain + ":jumps"] = len(re.findall(r"^-A \S+ .*-j %s(\s|$)" % chain, text, re.M))
    c["PREROUTING->INBOUND"] = len(
        re.findall(r"^-A PREROUTING .*-j SIDECAR_PROXY_INBOUND(\s|$)", text, re.M)
    )
    c["OUTPUT->OUTBOUND"] = len(
        re.findall(r"^-A OUTPUT .*-j SIDECAR_PROXY_OUTBOUND(\s|$)", text, re.M)
    )
    return c


# ---------------------------------------------------------------- raw HTTP/2

H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class ThreadedServer:
    """A raw TCP server for tests that need a misbehaving upstream: listens in
    pod at (addr, port) and hands the n-th accepted connection (from 1) to
    self.serve(conn, n), in a thread of its own when threaded, else in the
    accept loop's thread (one connection at a time). The connection is closed
    after serve returns; close() stops the server."""

    def __init__(self, pod, addr, port, backlog=16, threaded=True):
        self.sock = pod.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((addr, port))
        self.sock.listen(backlog)
        self.sock.settimeout(0.2)
        self.threaded = threaded
        self.stop = False
        self.thread = threading.Thread(target=self._accept_loop, daemon=True)
        self.thread.start()

    def serve(self, conn, n):
        raise NotImplementedError

    def _serve_and_close(self, conn, n):
        try:
            self.serve(conn, n)
        except OSError:
            pass
        finally:
            conn.close()

    def _accept_loop(self):
        n = 0
        while not self.stop:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            n += 1
            if self.threaded:
                threading.Thread(target=self._serve_and_close, args=(conn, n), daemon=True).start()
            else:
                self._serve_and_close(conn, n)

    def close(self):
        self.stop = True
        self.sock.close()
        self.thread.join(5)


def h2_frame(ftype, flags, sid, payload=b""):
    """One HTTP/2 frame as bytes (RFC 9113 section 4.1)."""
    return len(payload).to_bytes(3, "big") + bytes([ftype, flags]) + sid.to_bytes(4, "big") + payload


def h2_frames(buf):
    """The whole frames at the start of buf: [(type, flags, stream id,
    payload)]; an incomplete last frame is left out."""
    out = []
    while len(buf) >= 9:
        n = int.from_bytes(buf[:3], "big")
        if len(buf) < 9 + n:
            break
        out.append((buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9 : 9 + n]))
        buf = buf[9 + n :]
    return out


# ---------------------------------------------------------------- cleanup


def recent_daemons():
    with _lock:
        return list(_daemons)


def cleanup_all():
    for p in list(_live_procs):
        try:
            p.stop(signal.SIGKILL, timeout=5)
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass
    for pod in list(_live_pods):
        try:
            pod.delete()
        except Exception:  # noqa: BLE001
            pass
    for d in list(_tmpdirs):
        subprocess.run(["rm", "-rf", "--", d], capture_output=True)
        _tmpdirs.remove(d)


def sweep_stale():
    """Deletes namespaces and temporary directories left by an earlier run
    of this harness that was killed (its pid in the name no longer exists)."""
    r = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        m = re.match(r"^%s(\d+)-" % re.escape(NS_PREFIX), name)
        if not m or int(m.group(1)) == os.getpid():
            continue
        if os.path.exists("/proc/%s" % m.group(1)):
            continue
        pids = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True)
        for pid in pids.stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    tmp = tempfile.gettempdir()
    for entry in os.listdir(tmp):
        m = re.match(r"^%s(\d+)-" % re.escape(NS_PREFIX), entry)
        if m and int(m.group(1)) != os.getpid() and not os.path.exists("/proc/" + m.group(1)):
            subprocess.run(["rm", "-rf", "--", os.path.join(tmp, entry)], capture_output=True)


def _on_signal(signum, frame):
    cleanup_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


_installed = [False]


def install_guards():
    if _installed[0]:
        return
    _installed[0] = True
    atexit.register(cleanup_all)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)
