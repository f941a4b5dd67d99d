#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Driver of bench/run.sh: runs the scenarios for each contender and writes
the raw results (one value per repetition) as JSON.

run.sh creates the two network namespaces, compiles rr.c and removes
everything on exit; this script starts and stops the processes (each in its
own session, all stopped in a finally block and on SIGTERM/SIGINT) and runs
the load generators with bounded timeouts.

Topology: pod "client" (10.78.0.1) and pod "server" (10.78.0.2) joined by a
veth pair. The load generators (rr, iperf3, wrk) run in the client pod, the
servers (rr echo, iperf3 -s, nginx origin) in the server pod. Every proxy runs
in the client pod, as a sidecar would: HAProxy and nginx are addressed
explicitly (127.0.0.1:<port>), shuntd captures the client's connections to
10.78.0.2 transparently (iptables, like in a pod).
"""

import argparse
import json
import os
import platform
import re
import shutil
import resource
import signal
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = "10.78.0.2"
PORT_RR, PORT_BULK, PORT_HTTP = 7001, 5201, 8080
PROXY_RR, PROXY_BULK, PROXY_HTTP_TCP, PROXY_HTTP_HTTP = 27001, 25201, 28080, 28081
HTTP_PATH = "/128.bin"
MAXCONN = [10000]  # per proxy, set from RLIMIT_NOFILE in main()
SHUNTD_UID = "4242"  # an uid nothing runs as: the load generators (root) are captured

# name -> kind; "l4" contenders run every scenario, "http" ones only HTTP ones.
CONTENDERS = {
    "direct": "l4",
    "shunt-iptables": "l4",
    "shunt-ebpf": "l4",
    "shunt-splice": "l4",
    "shunt-relay": "l4",
    "shunt-http": "http",
    "haproxy-tcp": "l4",
    "haproxy-http": "http",
    "nginx-stream": "l4",
    "nginx-http": "http",
    "shunt-mtls": "mtls",
    "haproxy-mtls": "mtls",
}
# shuntd contenders that are another mode with settings of their own:
# shunt-splice is eBPF capture without the sk_msg shortcut, so the relay's two
# sockets are spliced in the kernel (tcp_splice auto, off by default; docs/architecture.md "Splice"); shunt-relay is iptables capture with tcp_splice off, every byte
# through shuntd's userspace relay as before the splice existed.
SHUNT_VARIANTS = {
    "shunt-splice": ("ebpf", ["--bpf-shortcut", "off", "--tcp-splice", "auto"]),
    "shunt-relay": ("iptables", ["--tcp-splice", "off"]),
}
PEERS = ("haproxy-tcp", "haproxy-http", "nginx-stream", "nginx-http", "haproxy-mtls")
MTLS_CONN, MTLS_CONN_HTTP, MTLS_HTTP = 29001, 29002, 29080  # client pod, haproxy-mtls
MTLS_SERVER_PORTS = (29443, 29444, 29445)  # server pod, haproxy-mtls

# name -> (kinds it applies to, description)
SCENARIOS = {
    "rr-64": ("l4", "request-response over one connection, 64 B each way"),
    "rr-4k": ("l4", "request-response over one connection, 4 KiB each way"),
    "bulk-1": ("l4", "bulk throughput, 1 connection (iperf3)"),
    "bulk-8": ("l4", "bulk throughput, 8 connections (iperf3 -P 8)"),
    "conn-setup": ("l4", "new connection per request, sequential: connect + 64 B round trip + close"),
    "idle-10k": ("l4", "RSS of the proxy idle and holding 10,000 idle connections"),
    "http-keepalive": ("http", "HTTP/1.1 keep-alive, wrk -t1 -c16, 128-byte file"),
    "http-close": ("http", "HTTP/1.1 new connection per request (Connection: close), wrk -t1 -c16"),
    "mtls-handshake": ("mtls", "mTLS pod to pod, a full handshake per connection: wrk -t1 -c16 "
                       "with Connection: close (conn_s = handshakes/s) and sequential "
                       "connect + 64 B round trip (setup time); direct is plaintext"),
    "mtls-keepalive": ("mtls", "mTLS pod to pod, HTTP/1.1 keep-alive over reused mTLS "
                       "connections, wrk -t1 -c16; direct is plaintext"),
    # Counted, not timed (only when named): the proxy's own work per request,
    # which a machine shared with other work does not change.
    "cost-rr": ("l4", "cost per 64 B round trip over one connection (rr ping): user-space "
                "instructions of the proxy (valgrind --tool=callgrind) and its system calls "
                "(strace -c -f, attached for the measured round trips only)"),
    "cost-http": ("http", "cost per HTTP/1.1 keep-alive request (h2load --h1 -c16, 128-byte "
                  "file): instructions (callgrind) and system calls (strace -c -f)"),
    "cost-conn": ("l4", "cost per new connection (rr conn: connect, 64 B round trip, close): "
                  "instructions (callgrind) and system calls (strace -c -f)"),
}
QUICK_SCENARIOS = ["rr-64", "bulk-1", "http-keepalive", "http-close"]
COST_SCENARIOS = ("cost-rr", "cost-http", "cost-conn")

# metric name -> (unit, "higher"|"lower" is better)
METRICS = {
    "p50_us": ("µs", "lower"),
    "p99_us": ("µs", "lower"),
    "p999_us": ("µs", "lower"),
    "gbit_s": ("Gbit/s", "higher"),
    "req_s": ("req/s", "higher"),
    "conn_s": ("conn/s", "higher"),
    "p50_ms": ("ms", "lower"),
    "p99_ms": ("ms", "lower"),
    "p999_ms": ("ms", "lower"),
    "max_ms": ("ms", "lower"),
    "mean_ms": ("ms", "lower"),
    "setup_p50_us": ("µs", "lower"),
    "setup_p99_us": ("µs", "lower"),
    "cpu_s_per_100k": ("CPU s / 100k req", "lower"),
    "cpu_us_per_rt": ("CPU µs / round trip", "lower"),
    "rss_idle_mb": ("MB", "lower"),
    "pss_idle_mb": ("MB", "lower"),
    "rss_10k_mb": ("MB", "lower"),
    "kib_per_conn": ("KiB / conn", "lower"),
    "errors": ("count", "lower"),
    "tls_handshakes_per_conn": ("handshakes / connection", "lower"),
    "tls_handshakes": ("count", "lower"),
    "instr_per_req": ("user-space instructions / request", "lower"),
    "syscalls_per_req": ("system calls / request", "lower"),
}

MTLS_NOTE = (
    "shuntd in this build cannot originate mutual TLS (no --mtls.mode, "
    "--mtls.ca-dir and --service-discovery.file.path flags), so shunt-to-shunt "
    "mTLS is not measured; the mtls scenarios run for haproxy-mtls and direct."
)
MTLS_SERVICE = "bench-server"  # the server pod's identity: .../ns/default/sa/bench-server


def shunt_mtls_supported(shuntd):
    """Whether shuntd can run the shunt-mtls contender: a shuntd in the client
    pod originating mTLS for captured connections to a registry service with
    an identity, and a shuntd in the server pod terminating it (inbound
    capture), both with certificates from one built-in CA. Needs the mTLS
    and file-registry flags."""
    try:
        h = subprocess.run([shuntd, "--help"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return False
    return all(f in h for f in ("--mtls.mode", "--mtls.ca-dir", "--mtls.service-name",
                                "--service-discovery.file.path"))


def write_http_registry(env):
    """shunt-http's file registry: the HTTP origin in the server pod as a
    service whose port is declared HTTP, so shuntd proxies it request by
    request (HTTP/1.1 engine, idle upstream connections reused), as HAProxy
    and nginx do in HTTP mode. No identity: plaintext, like theirs."""
    path = os.path.join(env.work, "http-registry.json")
    reg = {"services": [{
        "name": "bench-origin", "namespace": "default", "addresses": [SERVER],
        "ports": [{"name": "http", "port": PORT_HTTP, "target_port": PORT_HTTP,
                   "protocol": "HTTP"}],
        "endpoints": [{"address": SERVER, "port": PORT_HTTP}],
    }]}
    with open(path, "w") as f:
        json.dump(reg, f)
    return path


def write_mtls_registry(env):
    """The client pod's file registry: the server pod (10.78.0.2) as one
    service with the rr echo and the HTTP origin ports, reached over mTLS and
    expected to present the bench-server identity. Both ports are declared
    TCP: shunt relays them at L4 over TLS, like the HAProxy pair's tcp-mode
    frontends (no HTTP parsing on either side)."""
    path = os.path.join(env.work, "mtls-registry.json")
    reg = {"services": [{
        "name": MTLS_SERVICE, "namespace": "default", "addresses": [SERVER],
        "ports": [{"name": "rr", "port": PORT_RR, "target_port": PORT_RR, "protocol": "TCP"},
                  {"name": "http", "port": PORT_HTTP, "target_port": PORT_HTTP,
                   "protocol": "TCP"}],
        "identity": "spiffe://cluster.local/ns/default/sa/%s" % MTLS_SERVICE,
        "mtls": "strict",
        "endpoints": [{"address": SERVER, "port": PORT_RR}, {"address": SERVER, "port": PORT_HTTP}],
    }]}
    with open(path, "w") as f:
        json.dump(reg, f)
    return path


def shunt_metric(ns, name, labels=""):
    """Sum of the samples of a Prometheus counter on shuntd's admin port in
    namespace ns whose labels contain labels."""
    r = subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "--noproxy", "*", "--max-time", "5",
                        "http://127.0.0.1:15003/metrics"], capture_output=True, text=True, timeout=15)
    total = 0.0
    for line in r.stdout.splitlines():
        if line.startswith(name) and (line[len(name):len(name) + 1] in (" ", "{")) and labels in line:
            total += float(line.rsplit(None, 1)[1])
    return total


# Anything that loads BPF programs or touches the shared BPF state runs under
# this lock (the project's rule; test_ebpf and vmtest take it too). The
# shunt-ebpf contender holds it from its start to its stop, not for the whole
# run; a caller that already holds it (flock ... bench/run.sh) sets
# SHUNT_BPF_LOCK_HELD=1.
BPF_LOCK = "/tmp/shunt-bpf.lock"
BPF_LOCK_WAIT_S = 900


class BpfLock:
    def __init__(self):
        self.fd = None

    def acquire(self):
        if os.environ.get("SHUNT_BPF_LOCK_HELD") == "1":
            return
        import fcntl

        self.fd = os.open(BPF_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        deadline = time.monotonic() + BPF_LOCK_WAIT_S
        logged = False
        while True:
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() > deadline:
                    os.close(self.fd)
                    self.fd = None
                    raise BenchError("%s held by someone else for %d s" % (BPF_LOCK, BPF_LOCK_WAIT_S))
                if not logged:
                    log("waiting for %s (someone else is using BPF)" % BPF_LOCK)
                    logged = True
                time.sleep(0.5)

    def release(self):
        if self.fd is not None:
            os.close(self.fd)  # closing the only descriptor releases the lock
            self.fd = None


_procs = []  # live Proc objects
# (client namespace, cgroup path): every process started in the client pod
# runs in the pod's cgroup, where eBPF capture attaches (set in main()).
POD_CGROUP = [None, None]


def in_pod(ns, argv):
    """argv run in namespace ns; in the client pod, inside its cgroup (a shell
    writes its pid into cgroup.procs and execs argv, so the pid stays)."""
    if ns is None:
        return list(argv)
    if ns == POD_CGROUP[0] and POD_CGROUP[1]:
        argv = ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', POD_CGROUP[1]] + list(argv)
    return ["ip", "netns", "exec", ns] + list(argv)


class BenchError(Exception):
    pass


def log(msg):
    sys.stderr.write("bench: %s\n" % msg)
    sys.stderr.flush()


class Proc:
    """A long-running process in a namespace, in its own session."""

    def __init__(self, ns, argv, name, workdir, stdout_pipe=False, stdin_pipe=False):
        self.name = name
        self.err_path = os.path.join(workdir, name + ".err")
        self._err = open(self.err_path, "wb")
        self.popen = subprocess.Popen(
            in_pod(ns, argv),
            stdin=subprocess.PIPE if stdin_pipe else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else subprocess.DEVNULL,
            stderr=self._err,
            start_new_session=True,
        )
        _procs.append(self)

    @property
    def pid(self):
        return self.popen.pid

    def alive(self):
        return self.popen.poll() is None

    def stderr_tail(self, n=20):
        try:
            with open(self.err_path, "rb") as f:
                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout=10.0):
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.popen.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.popen.wait(timeout=10)
        for f in (self.popen.stdin, self.popen.stdout):
            if f:
                try:
                    f.close()
                except OSError:
                    pass
        self._err.close()
        if self in _procs:
            _procs.remove(self)


def stop_all():
    for p in list(reversed(_procs)):
        try:
            p.stop(timeout=5)
        except Exception as e:  # noqa: BLE001 - best effort at exit
            log("stopping %s: %r" % (p.name, e))


def run(ns, argv, timeout):
    """Runs a command in a namespace; returns stdout. Raises on failure."""
    full = in_pod(ns, argv)
    try:
        p = subprocess.run(full, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise BenchError("%s: timed out after %ds" % (" ".join(argv), timeout)) from None
    if p.returncode != 0:
        raise BenchError(
            "%s exited %d: %s" % (" ".join(argv), p.returncode, (p.stderr or p.stdout)[-600:])
        )
    return p.stdout


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise BenchError("timed out after %.0f s waiting for %s" % (timeout, what))


def listening(ns, port):
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "ss", "-Hltn", "sport = :%d" % port],
        capture_output=True, text=True, timeout=10,
    ).stdout
    return bool(out.strip())


def render(template, out_path, work):
    with open(os.path.join(HERE, template)) as f:
        text = f.read()
    text = text.replace("@SERVER@", SERVER).replace("@WORK@", work)
    text = text.replace("@MAXCONN@", str(MAXCONN[0]))
    with open(out_path, "w") as f:
        f.write(text)
    return out_path


# ---------------------------------------------------------------- /proc


def session_pids(sid):
    """Pids of every process in session sid (a proxy and its workers)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(")") + 2:].split()
        # fields[0] is state (field 3); session is field 6 -> fields[3]
        if int(fields[3]) == sid:
            pids.append(int(d))
    return pids


def cpu_seconds(sid):
    """utime+stime of every process in the session, in seconds."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in session_pids(sid):
        try:
            with open("/proc/%d/stat" % pid) as f:
                st = f.read()
        except OSError:
            continue
        fields = st[st.rfind(")") + 2:].split()
        total += int(fields[11]) + int(fields[12])  # utime (14), stime (15)
    return total / tck


def _sum_field(sid, path, field):
    kb = 0
    for pid in session_pids(sid):
        try:
            with open(path % pid) as f:
                for line in f:
                    if line.startswith(field):
                        kb += int(line.split()[1])
        except OSError:
            continue
    return kb * 1024 / 1e6


def rss_mb(sid):
    """Sum of VmRSS of every process in the session, in MB (10^6 bytes).
    Counts pages shared between nginx's master and workers once per process."""
    return _sum_field(sid, "/proc/%d/status", "VmRSS:")


def pss_mb(sid):
    """Sum of the proportional set size (shared pages divided among their
    users), in MB: comparable between one-process and multi-process proxies."""
    return _sum_field(sid, "/proc/%d/smaps_rollup", "Pss:")


# TCP counters of a pod, sampled around each scenario: a proxy that drops
# SYNs (accept queue full, a SYN meeting a TIME-WAIT socket it cannot reuse)
# shows up here, not in the load generator's latency (wrk does not count the
# connect in its latency). Values are the deltas over the scenario.
TCP_COUNTERS = (
    "TcpActiveOpens", "TcpPassiveOpens", "TcpAttemptFails", "TcpEstabResets",
    "TcpRetransSegs", "TcpOutRsts", "TcpExtListenOverflows", "TcpExtListenDrops",
    "TcpExtTCPSynRetrans", "TcpExtTW", "TcpExtTWRecycled", "TcpExtTCPTimeWaitOverflow",
    "TcpExtPAWSEstab", "TcpExtTCPReqQFullDrop", "TcpExtTCPBacklogDrop",
    "TcpExtTCPAbortOnData", "TcpExtTCPAbortOnClose",
)


def tcp_counters(ns):
    """{name: value} from /proc/net/snmp and /proc/net/netstat of namespace ns
    (the names nstat prints)."""
    r = subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp", "/proc/net/netstat"],
                       capture_output=True, text=True, timeout=10)
    out = {}
    lines = r.stdout.splitlines()
    for head, vals in zip(lines[0::2], lines[1::2]):
        hk, hv = head.split(":", 1), vals.split(":", 1)
        if len(hk) != 2 or len(hv) != 2 or hk[0] != hv[0]:
            continue
        prefix = hk[0]
        for k, v in zip(hk[1].split(), hv[1].split()):
            try:
                out[prefix + k] = int(v)
            except ValueError:
                pass
    return out


def tcp_states(ns):
    """Sockets of namespace ns by TCP state (ss), e.g. {"TIME-WAIT": 812}."""
    r = subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htan"], capture_output=True,
                       text=True, timeout=30)
    states = {}
    for line in r.stdout.splitlines():
        st = line.split(None, 1)[0] if line.strip() else ""
        if st:
            states[st] = states.get(st, 0) + 1
    return states


def tcp_delta(before, after):
    return {k: after.get(k, 0) - before.get(k, 0) for k in TCP_COUNTERS
            if after.get(k, 0) - before.get(k, 0)}


# ---------------------------------------------------------------- contenders


class Contender:
    def __init__(self, name, env):
        self.name = name
        self.kind = CONTENDERS[name]
        self.env = env
        self.proc = None  # the proxy in the client pod
        self.procs = []  # every process of the contender (haproxy-mtls: two)
        self.bpf_lock = None  # held while shunt-ebpf runs
        self.wrap = []  # a command the proxy runs under (cost-*: valgrind)

    def target(self, scenario_port, mtls=None):
        """(host, port) the client connects to for a server port; mtls is the
        haproxy-mtls frontend to use instead of a plain proxy's."""
        n = self.name
        if n == "direct" or n.startswith("shunt-"):
            return SERVER, scenario_port
        if n == "haproxy-mtls":
            return "127.0.0.1", mtls
        if scenario_port == PORT_HTTP:
            return "127.0.0.1", PROXY_HTTP_HTTP if self.kind == "http" else PROXY_HTTP_TCP
        return "127.0.0.1", {PORT_RR: PROXY_RR, PORT_BULK: PROXY_BULK}[scenario_port]

    def start(self):
        e = self.env
        n = self.name
        if n == "direct":
            return
        if n in ("shunt-ebpf", "shunt-splice"):
            self.bpf_lock = BpfLock()
            self.bpf_lock.acquire()
        if n == "shunt-mtls":
            self._start_shunt_mtls()
            return
        if n.startswith("shunt-"):
            mode = n.split("-", 1)[1]
            extra = []
            if n in SHUNT_VARIANTS:
                mode, extra = SHUNT_VARIANTS[n][0], list(SHUNT_VARIANTS[n][1])
            if mode == "http":
                mode = "iptables"
                extra = ["--service-discovery.file.path", write_http_registry(e)]
            argv = [
                e.shuntd, "--redirect", mode, "--workers", "2", "--log-level", "warn",
                "--access-log.enabled", "off", "--proxy-uid", SHUNTD_UID, "--drain-timeout", "1s",
                "--mtls.ca-dir", os.path.join(e.work, "ca-" + n),
            ] + extra
            if mode == "ebpf":
                argv += ["--redirect-cgroup", e.cgroup, "--bpf-pin-root", e.pins]
            self.proc = Proc(e.cli, self.wrap + argv, n, e.work)
            self.procs = [self.proc]

            def ready():
                if not self.proc.alive():
                    raise BenchError("shuntd exited: %s" % self.proc.stderr_tail())
                r = subprocess.run(
                    ["ip", "netns", "exec", e.cli, "curl", "-s", "--noproxy", "*", "-o",
                     "/dev/null", "-w", "%{http_code}", "--max-time", "2",
                     "http://127.0.0.1:15003/ready"],
                    capture_output=True, text=True, timeout=10,
                )
                return r.stdout.strip() == "200"

            wait_until(ready, 90 if self.wrap else 20, "shuntd /ready")
            return
        ports = {e.cli: (PROXY_RR, PROXY_BULK, PROXY_HTTP_TCP, PROXY_HTTP_HTTP)}
        if n == "haproxy-mtls":
            make_certs(e)
            srv = render("haproxy-mtls-server.cfg", os.path.join(e.work, "haproxy-mtls-server.cfg"), e.work)
            cli = render("haproxy-mtls-client.cfg", os.path.join(e.work, "haproxy-mtls-client.cfg"), e.work)
            self.procs.append(Proc(e.srv, ["haproxy", "-db", "-f", srv], n + "-server", e.work))
            self.proc = Proc(e.cli, ["haproxy", "-db", "-f", cli], n, e.work)
            ports = {e.cli: (MTLS_CONN, MTLS_CONN_HTTP, MTLS_HTTP), e.srv: MTLS_SERVER_PORTS}
        elif n.startswith("haproxy-"):
            cfg = render("haproxy.cfg", os.path.join(e.work, "haproxy.cfg"), e.work)
            self.proc = Proc(e.cli, self.wrap + ["haproxy", "-db", "-f", cfg], n, e.work)
        elif n.startswith("nginx-"):
            cfg = render("nginx-proxy.conf", os.path.join(e.work, "nginx-proxy.conf"), e.work)
            self.proc = Proc(e.cli, self.wrap + ["nginx", "-c", cfg, "-p", e.work], n, e.work)
        else:
            raise BenchError("no start rule for contender %s" % n)
        self.procs.append(self.proc)

        def up():
            for p in self.procs:
                if not p.alive():
                    raise BenchError("%s exited: %s" % (p.name, p.stderr_tail()))
            return all(listening(ns, p) for ns, ps in ports.items() for p in ps)

        wait_until(up, 90 if self.wrap else 20, "%s listening" % n)
        # nginx workers start after the master binds: wait for them too.
        if n.startswith("nginx-"):
            wait_until(lambda: len(session_pids(self.proc.pid)) >= 3, 60 if self.wrap else 10,
                       "nginx workers")

    def _shuntd_ready(self, ns, proc):
        def ready():
            if not proc.alive():
                raise BenchError("shuntd (%s) exited: %s" % (proc.name, proc.stderr_tail()))
            r = subprocess.run(
                ["ip", "netns", "exec", ns, "curl", "-s", "--noproxy", "*", "-o", "/dev/null",
                 "-w", "%{http_code}", "--max-time", "2", "http://127.0.0.1:15003/ready"],
                capture_output=True, text=True, timeout=10,
            )
            return r.stdout.strip() == "200"

        wait_until(ready, 30, "%s /ready" % proc.name)

    def _start_shunt_mtls(self):
        """Two sidecars, as scripts/demo.sh: shuntd in the client pod captures
        the client's connections (iptables) and originates mTLS to the server
        pod, whose shuntd captures them inbound (PREROUTING to 15001),
        terminates mTLS (strict) and hands plaintext to the local server. One
        built-in CA (ECDSA P-256, TLS 1.3); both with 2 workers."""
        e = self.env
        ca = os.path.join(e.work, "ca-shunt-mtls")
        common = ["--redirect", "iptables", "--workers", "2", "--log-level", "warn",
                  "--access-log.enabled", "off", "--proxy-uid", SHUNTD_UID, "--drain-timeout", "1s", "--mtls.ca-dir", ca,
                  "--mtls.key-type", "ecdsa-p256"]
        cli = Proc(e.cli, [e.shuntd] + common + [
            "--mtls.service-name", "bench-client",
            "--service-discovery.file.path", write_mtls_registry(e)], "shunt-mtls", e.work)
        self.proc = cli
        self.procs = [cli]
        self._shuntd_ready(e.cli, cli)  # the client side creates the CA; the server shares it
        srv = Proc(e.srv, [e.shuntd] + common + [
            "--mtls.service-name", MTLS_SERVICE, "--mtls.mode", "strict"],
            "shunt-mtls-server", e.work)
        self.procs.append(srv)
        self._shuntd_ready(e.srv, srv)

    def tls_handshakes(self):
        """Handshakes the client-side shuntd completed (shunt-mtls), else None."""
        if self.name != "shunt-mtls" or not self.proc:
            return None
        return shunt_metric(self.env.cli, "shunt_tls_handshakes_total", 'direction="outbound"')

    # Resources sum over every process of the contender (both sides for a pair).
    def cpu(self):
        return sum(cpu_seconds(p.pid) for p in self.procs) if self.procs else None

    def rss(self):
        return sum(rss_mb(p.pid) for p in self.procs) if self.procs else None

    def pss(self):
        return sum(pss_mb(p.pid) for p in self.procs) if self.procs else None

    def stop(self):
        for p in reversed(self.procs):
            p.stop(timeout=60 if self.wrap else 10)  # callgrind writes its counts at exit
        self.procs = []
        self.proc = None
        if self.bpf_lock:
            self.bpf_lock.release()
            self.bpf_lock = None


# ---------------------------------------------------------------- scenarios


def rr(env, *args, timeout=120):
    return json.loads(run(env.cli, [env.rr] + [str(a) for a in args], timeout).strip().splitlines()[-1])


def wrk(env, host, port, seconds, close=False):
    argv = [
        "wrk", "-t1", "-c16", "-d%ds" % seconds, "--timeout", "5s",
        "-s", os.path.join(HERE, "wrk-report.lua"),
    ]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append("http://%s:%d%s" % (host, port, HTTP_PATH))
    out = run(env.cli, argv, seconds + 30)
    line = [l for l in out.splitlines() if l.startswith("{")]
    if not line:
        raise BenchError("wrk printed no result: %s" % out[-400:])
    return json.loads(line[-1])


def scenario_rr(env, c, size):
    host, port = c.target(PORT_RR)
    count = env.p["rr_count"]
    cpu0 = c.cpu()
    r = rr(env, "ping", host, port, size, count, count // 10)
    cpu1 = c.cpu()
    out = {k: r["rtt"][k] for k in ("p50_us", "p99_us", "p999_us")}
    if cpu0 is not None:
        out["cpu_us_per_rt"] = (cpu1 - cpu0) * 1e6 / (count + count // 10)
    return out


def scenario_bulk(env, c, streams):
    host, port = c.target(PORT_BULK)
    secs = env.p["bulk_s"]
    out = run(
        env.cli,
        ["iperf3", "-c", host, "-p", str(port), "-t", str(secs), "-P", str(streams), "-J",
         "--connect-timeout", "5000"],
        secs + 30,
    )
    j = json.loads(out)
    if "error" in j:
        raise BenchError("iperf3: %s" % j["error"])
    return {"gbit_s": j["end"]["sum_received"]["bits_per_second"] / 1e9}


def scenario_http(env, c, close, mtls=None):
    host, port = c.target(PORT_HTTP, mtls)
    secs = env.p["http_s"]
    cpu0 = c.cpu()
    r = wrk(env, host, port, secs, close=close)
    cpu1 = c.cpu()
    if r["requests"] == 0:
        raise BenchError("wrk completed no request")
    rate = r["requests"] * 1e6 / r["duration_us"]
    out = {
        ("conn_s" if close else "req_s"): rate,
        "p50_ms": r["p50_us"] / 1000.0,
        "p99_ms": r["p99_us"] / 1000.0,
        "p999_ms": r["p999_us"] / 1000.0,
        "max_ms": r["max_us"] / 1000.0,
        "mean_ms": r["mean_us"] / 1000.0,
        "errors": r["errors"] + r["status_errors"],
    }
    if mtls:
        out["_requests"] = r["requests"]
    if cpu0 is not None:
        out["cpu_s_per_100k"] = (cpu1 - cpu0) * 100000.0 / r["requests"]
    return out


def scenario_conn(env, c, mtls=None):
    host, port = c.target(PORT_RR, mtls)
    r = rr(env, "conn", host, port, 64, env.p["conn_count"])
    return {
        "conn_s": r["conn_per_s"],
        "setup_p50_us": r["setup"]["p50_us"],
        "setup_p99_us": r["setup"]["p99_us"],
    }


def scenario_idle(env, c):
    host, port = c.target(PORT_RR)
    n = env.p["idle_conns"]
    before = c.rss()
    hold = Proc(env.cli, [env.rr, "hold", host, str(port), str(n), "300"], "rr-hold", env.work,
                stdout_pipe=True, stdin_pipe=True)
    try:
        import selectors

        sel = selectors.DefaultSelector()
        sel.register(hold.popen.stdout, selectors.EVENT_READ)
        ready = sel.select(120)
        sel.close()
        line = hold.popen.stdout.readline().decode() if ready else ""
        if not line.startswith("HELD"):
            raise BenchError("rr hold did not hold %d connections: %r %s" % (n, line, hold.stderr_tail()))
        time.sleep(0.5)
        during = c.rss()
    finally:
        hold.stop()
    if before is None:
        return {}
    per_conn_mb = (during - before) / n
    return {
        "rss_idle_mb": before,
        "rss_10k_mb": before + per_conn_mb * 10000,
        "kib_per_conn": per_conn_mb * 1e6 / 1024,
    }


# ---------------------------------------------------------------- cost per request


def cost_load(env, c, name, count):
    """count requests of cost scenario name through contender c."""
    if name == "cost-rr":
        host, port = c.target(PORT_RR)
        rr(env, "ping", host, port, 64, count, 0, timeout=600)
    elif name == "cost-conn":
        host, port = c.target(PORT_RR)
        rr(env, "conn", host, port, 64, count, timeout=600)
    else:
        host, port = c.target(PORT_HTTP)
        out = run(env.cli, ["h2load", "--h1", "-c16", "-n", str(count),
                            "http://%s:%d%s" % (host, port, HTTP_PATH)], 600)
        m = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded", out)
        if not m or int(m.group(1)) != count:
            raise BenchError("h2load: %d requests did not all succeed: %s"
                             % (count, out.strip().splitlines()[-8:]))


def traced(pid):
    """True when every thread of pid has a tracer (strace attached)."""
    try:
        for tid in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/status" % (pid, tid)) as f:
                if re.search(r"^TracerPid:\s+0$", f.read(), re.M):
                    return False
    except OSError:
        return False
    return True


def strace_calls(path):
    """The total number of calls in a `strace -c` summary."""
    with open(path) as f:
        for line in f:
            parts = line.split()
            if parts and parts[-1] == "total":
                return int(parts[3])
    raise BenchError("strace wrote no summary to %s" % path)


def callgrind_total(paths):
    """Instructions executed (Ir) summed over callgrind output files."""
    total = 0
    for path in paths:
        with open(path) as f:
            m = re.search(r"^(?:summary|totals): (\d+)", f.read(), re.M)
        if not m:
            raise BenchError("no instruction total in %s" % path)
        total += int(m.group(1))
    return total


def scenario_cost(env, c, name):
    """System calls: strace attached to every process of the running proxy
    for the measured requests only. Instructions: the proxy started twice
    under callgrind, once with the warm-up and once with the warm-up and the
    measured requests; the difference, per request, leaves start and stop
    out. A proxy's timers tick meanwhile: the runs are seconds apart."""
    n = env.p["cost_n"]
    warm = max(100, n // 10)
    cost_load(env, c, name, warm)
    pids = [pid for p in c.procs for pid in session_pids(p.pid)]
    out = os.path.join(env.work, "strace-%s-%s.txt" % (c.name, name))
    argv = ["strace", "-c", "-f", "-o", out]
    for pid in pids:
        argv += ["-p", str(pid)]
    st = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
    try:
        wait_until(lambda: all(traced(pid) for pid in pids), 20, "strace attached to %s" % c.name)
        cost_load(env, c, name, n)
    finally:
        st.send_signal(signal.SIGINT)  # detaches and writes the summary
        st.wait(timeout=60)
    result = {"syscalls_per_req": strace_calls(out) / n}
    instr = []
    c.stop()
    try:
        for total in (warm, warm + n):
            d = tempfile.mkdtemp(prefix="cg-", dir=env.work)
            os.chmod(d, 0o1777)  # nginx's workers run as nobody and write their own file
            c.wrap = ["valgrind", "--tool=callgrind", "--quiet",
                      "--callgrind-out-file=%s/%%p.out" % d]
            c.start()
            cost_load(env, c, name, total)
            c.stop()
            files = [os.path.join(d, f) for f in os.listdir(d)]
            if not files:
                raise BenchError("callgrind wrote nothing for %s" % c.name)
            instr.append(callgrind_total(files))
            if env.profile and total > warm and c.name.startswith("shunt-"):
                result.setdefault("_profiles", []).append(callgrind_report(env, c, name, files))
    finally:
        c.stop()
        c.wrap = []
        c.start()
    result["instr_per_req"] = (instr[1] - instr[0]) / n
    return result


def callgrind_report(env, c, name, files):
    """--profile with a cost scenario: the functions that executed the most
    instructions in the measured run (warm-up, start and stop included),
    next to the report."""
    path = os.path.join(env.out, "%s-callgrind-%s-%s.txt" % (env.stamp, name, c.name))
    def annotate(*opts):
        out = subprocess.run(["callgrind_annotate", "--threshold=99"] + list(opts) + files,
                             capture_output=True, text=True, timeout=120).stdout
        lines = out.splitlines()
        top = [i for i, l in enumerate(lines) if "PROGRAM TOTALS" in l]
        return "\n".join(lines[top[0]:top[0] + 70] if top else lines[:90]) + "\n"

    with open(path, "w") as f:
        f.write("callgrind, %s through %s: instructions per function, self\n\n" % (name, c.name))
        f.write(annotate("--inclusive=no"))
        f.write("\nand inclusive (the function and what it calls)\n\n")
        f.write(annotate("--inclusive=yes"))
    log("callgrind profile written to %s" % path)
    return path


def run_scenario(env, name, c):
    if name in COST_SCENARIOS:
        return scenario_cost(env, c, name)
    if name == "rr-64":
        return scenario_rr(env, c, 64)
    if name == "rr-4k":
        return scenario_rr(env, c, 4096)
    if name == "bulk-1":
        return scenario_bulk(env, c, 1)
    if name == "bulk-8":
        return scenario_bulk(env, c, 8)
    if name == "http-keepalive":
        return scenario_http(env, c, close=False)
    if name == "http-close":
        return scenario_http(env, c, close=True)
    if name == "conn-setup":
        return scenario_conn(env, c)
    if name == "idle-10k":
        return scenario_idle(env, c)
    if name == "mtls-handshake":
        hs0 = c.tls_handshakes()
        out = scenario_http(env, c, close=True, mtls=MTLS_CONN_HTTP)  # conn_s under load
        if hs0 is not None:
            # Proof that every connection was a full mTLS handshake through
            # both sidecars: handshakes counted by the client-side shuntd.
            out["tls_handshakes_per_conn"] = (c.tls_handshakes() - hs0) / max(1, out.pop("_requests"))
        out.pop("_requests", None)
        seq = scenario_conn(env, c, mtls=MTLS_CONN)
        out["setup_p50_us"] = seq["setup_p50_us"]
        out["setup_p99_us"] = seq["setup_p99_us"]
        return out
    if name == "mtls-keepalive":
        hs0 = c.tls_handshakes()
        out = scenario_http(env, c, close=False, mtls=MTLS_HTTP)
        out.pop("_requests", None)
        if hs0 is not None:
            out["tls_handshakes"] = c.tls_handshakes() - hs0
        return out
    raise BenchError("no runner for scenario %s" % name)


def applies(scenario, contender):
    kind = SCENARIOS[scenario][0]
    ck = CONTENDERS[contender]
    if kind == "mtls":
        return ck == "mtls" or contender == "direct"
    if ck == "mtls":
        return False
    if scenario in COST_SCENARIOS and contender == "direct":
        return False  # no proxy to count
    return kind == "http" or ck == "l4"


# ---------------------------------------------------------------- certificates


def make_certs(env):
    """A bench CA and two ECDSA P-256 leaf certificates with SPIFFE IDs
    (server and client), valid for 2 days, in WORK/tls; HAProxy's crt files
    hold certificate and key together. Made once per run."""
    d = os.path.join(env.work, "tls")
    if os.path.exists(os.path.join(d, "client.pem")):
        return d
    os.makedirs(d, exist_ok=True)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    run(None, ["openssl", "req", "-x509"] + ec + [
        "-keyout", os.path.join(d, "ca.key"), "-out", os.path.join(d, "ca.pem"),
        "-subj", "/CN=shunt bench CA", "-days", "2",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign"], 30)
    for name in ("server", "client"):
        key, csr, crt = (os.path.join(d, name + x) for x in (".key", ".csr", ".crt"))
        ext = os.path.join(d, name + ".ext")
        with open(ext, "w") as f:
            f.write("subjectAltName=URI:spiffe://cluster.local/ns/bench/sa/%s\n"
                    "extendedKeyUsage=serverAuth,clientAuth\n"
                    "keyUsage=critical,digitalSignature\n" % name)
        run(None, ["openssl", "req"] + ec + ["-keyout", key, "-out", csr, "-subj", "/CN=" + name], 30)
        run(None, ["openssl", "x509", "-req", "-in", csr, "-CA", os.path.join(d, "ca.pem"),
                   "-CAkey", os.path.join(d, "ca.key"), "-set_serial",
                   str(int.from_bytes(os.urandom(15), "big")), "-days", "2",
                   "-extfile", ext, "-out", crt], 30)
        with open(os.path.join(d, name + ".pem"), "w") as out:
            for part in (crt, key):
                with open(part) as f:
                    out.write(f.read())
    return d


# ---------------------------------------------------------------- servers


def start_servers(env):
    www = os.path.join(env.work, "www")
    os.makedirs(www, exist_ok=True)
    with open(os.path.join(www, HTTP_PATH.lstrip("/")), "wb") as f:
        f.write(bytes((i * 7) % 256 for i in range(128)))
    rrs = Proc(env.srv, [env.rr, "server", SERVER, str(PORT_RR)], "rr-server", env.work)
    ip = Proc(env.srv, ["iperf3", "-s", "-B", SERVER, "-p", str(PORT_BULK), "--idle-timeout", "60"],
              "iperf3-server", env.work)
    cfg = render("nginx-origin.conf", os.path.join(env.work, "nginx-origin.conf"), env.work)
    ng = Proc(env.srv, ["nginx", "-c", cfg, "-p", env.work], "nginx-origin", env.work)
    for p, port in ((rrs, PORT_RR), (ip, PORT_BULK), (ng, PORT_HTTP)):
        wait_until(lambda p=p, port=port: p.alive() and listening(env.srv, port), 20,
                   "%s on %d" % (p.name, port))
    check_origin(env)
    return [rrs, ip, ng]


def check_origin(env):
    """The origin itself, asked in its own pod with no proxy in the way, must
    answer the scenarios' request with 200 and the file: otherwise every
    contender would count errors that are the environment's, not theirs
    (nginx's workers run as nobody and must be able to read the file)."""
    out = run(env.srv, ["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w",
                        "%{http_code} %{size_download}", "--max-time", "5",
                        "http://%s:%d%s" % (SERVER, PORT_HTTP, HTTP_PATH)], 15).split()
    if out != ["200", "128"]:
        raise BenchError("the origin nginx answers %s directly (status, bytes), not 200 with "
                         "128 bytes: an environment problem, not a proxy's (see %s)"
                         % (" ".join(out) or "nothing", os.path.join(env.work, "nginx-origin.err")))


# ---------------------------------------------------------------- main


def machine():
    model = ""
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    return {
        "nproc": os.cpu_count(),
        "model": model,
        "kernel": platform.release(),
        "loadavg_start": load,
    }


def tool_versions(env):
    def first(argv):
        try:
            p = subprocess.run(argv, capture_output=True, text=True, timeout=10)
            return (p.stdout + p.stderr).strip().splitlines()[0]
        except (OSError, IndexError, subprocess.TimeoutExpired):
            return "unavailable"

    cache = os.path.join(os.path.dirname(env.shuntd), "CMakeCache.txt")
    build = {}
    if os.path.exists(cache):
        with open(cache) as f:
            for line in f:
                m = re.match(r"(CMAKE_BUILD_TYPE|SHUNT_SANITIZE):\w+=(.*)", line)
                if m:
                    build[m.group(1)] = m.group(2).strip()
    src = os.path.dirname(HERE)
    head = subprocess.run(["git", "-C", src, "log", "-1", "--format=%h %cI"],
                          capture_output=True, text=True, timeout=10).stdout.strip()
    built = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(os.stat(env.shuntd).st_mtime))
    return {
        "source_head": head or "unknown",
        "shuntd_built": built,
        "shuntd": first([env.shuntd, "--version"]),
        "shuntd_build": build,
        "haproxy": first(["haproxy", "-v"]),
        "nginx": first(["nginx", "-v"]),
        "wrk": first(["wrk", "-v"]),
        "iperf3": first(["iperf3", "-v"]),
    }


def shuntd_modes(shuntd):
    try:
        h = subprocess.run([shuntd, "--help"], capture_output=True, text=True, timeout=10).stdout
    except OSError:
        return set()
    m = re.search(r"--redirect NAME\s*\n\s*allowed: ([^;\n]+)", h)
    return set(x.strip() for x in m.group(1).split(",")) if m else set()


def profile_start(env, c, scenario):
    data = os.path.join(env.work, "perf-%s.data" % scenario)
    p = subprocess.Popen(
        ["perf", "record", "-g", "-F", "999", "-o", data, "-p", str(c.proc.pid)],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(env.work, "perf.err"), "ab"),
        start_new_session=True,
    )
    time.sleep(0.5)
    return p, data


def profile_stop(env, handle, scenario):
    p, data = handle
    os.killpg(p.pid, signal.SIGINT)
    try:
        p.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)
    def report(sort, limit, children=False, match=None):
        out = subprocess.run(
            ["perf", "report", "-i", data, "--children" if children else "--no-children",
             "--stdio", "--percent-limit", "0.3", "-g", "none", "--sort", sort],
            capture_output=True, text=True, timeout=120,
        ).stdout
        lines = [re.sub(r"(\s+-)+\s*$", "", l) for l in out.splitlines()
                 if l.strip() and not l.startswith("#")]
        if match:
            lines = [l for l in lines if re.search(match, l)]
        return lines[:limit]

    path = os.path.join(env.out, "%s-profile-%s.txt" % (env.stamp, scenario))
    with open(path, "w") as f:
        f.write("perf record -g -F 999 -p <shuntd> during scenario %s\n\n" % scenario)
        f.write("perf report --no-children --sort dso (share of samples by object)\n")
        f.write("\n".join(report("dso", 10)) + "\n\n")
        f.write("perf report --children --sort symbol, syscall entry points only "
                "(inclusive: where the kernel time is spent, by syscall)\n")
        f.write("\n".join(report("symbol", 25, children=True,
                                 match=r"\] (__x64_sys_|__do_sys_|do_syscall_64$|"
                                       r"entry_SYSCALL|syscall_exit|asm_)")) + "\n\n")
        f.write("perf report --no-children --sort dso,symbol (top 60)\n")
        f.write("\n".join(report("dso,symbol", 60)) + "\n")
    log("profile written to %s" % path)
    return path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--scenario", action="append", default=[])
    ap.add_argument("--contenders", default="")
    ap.add_argument("--reps", type=int, default=0)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--out", required=True)
    ap.add_argument("--stamp", required=True)
    ap.add_argument("--work", required=True)
    ap.add_argument("--cli", required=True)
    ap.add_argument("--srv", required=True)
    ap.add_argument("--shuntd", required=True)
    ap.add_argument("--rr", required=True)
    ap.add_argument("--command", default="")
    ap.add_argument("--cgroup", default="")
    ap.add_argument("--pins", default="")
    env = ap.parse_args()
    POD_CGROUP[:] = [env.cli, env.cgroup or None]

    if env.quick:
        env.p = {"reps": 3, "rr_count": 3000, "bulk_s": 1, "http_s": 2, "conn_count": 1000,
                 "idle_conns": 10000, "cost_n": 1000}
    else:
        env.p = {"reps": 3, "rr_count": 20000, "bulk_s": 5, "http_s": 8, "conn_count": 5000,
                 "idle_conns": 10000, "cost_n": 5000}
    if env.reps:
        env.p["reps"] = max(1, min(env.reps, 50))
    # A single-process proxy needs two descriptors per proxied connection.
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    fit = (nofile - 256) // 2
    MAXCONN[0] = min(fit + 64, 60000)
    idle_note = None
    if fit < env.p["idle_conns"]:
        idle_note = (
            "idle-10k holds %d connections, not %d: RLIMIT_NOFILE is %d here and raising it "
            "needs CAP_SYS_RESOURCE; a proxy holds 2 descriptors per connection. rss_10k_mb "
            "is extrapolated to 10,000 from the measured KiB per connection."
            % (fit, env.p["idle_conns"], nofile)
        )
        env.p["idle_conns"] = fit

    scenarios = []
    for s in env.scenario:
        scenarios += [x for x in s.split(",") if x]
    if not scenarios:
        scenarios = QUICK_SCENARIOS if env.quick else [s for s in SCENARIOS
                                                       if s not in COST_SCENARIOS]
    for s in scenarios:
        if s not in SCENARIOS:
            raise SystemExit("bench: unknown scenario %r; known: %s" % (s, ", ".join(SCENARIOS)))
    need = {"valgrind", "strace", "h2load"} if set(scenarios) & set(COST_SCENARIOS) else set()
    missing = sorted(x for x in need if not shutil.which(x))
    if missing:
        raise SystemExit("bench: the cost scenarios need %s (scripts/bootstrap.sh installs them)"
                         % ", ".join(missing))
    contenders = [x for x in env.contenders.split(",") if x] or list(CONTENDERS)
    for c in contenders:
        if c not in CONTENDERS:
            raise SystemExit("bench: unknown contender %r; known: %s" % (c, ", ".join(CONTENDERS)))

    skipped = []
    modes = shuntd_modes(env.shuntd)
    for c in list(contenders):
        mode = SHUNT_VARIANTS[c][0] if c in SHUNT_VARIANTS else c.split("-", 1)[-1]
        if CONTENDERS[c] == "l4" and c.startswith("shunt-") and mode not in modes:
            skipped.append({"contender": c, "reason": "shuntd has no --redirect %s yet (allowed: %s); "
                            "the contender starts shuntd with it as soon as it exists"
                            % (c.split("-", 1)[1], ", ".join(sorted(modes)) or "?")})
            contenders.remove(c)
    if "shunt-mtls" in contenders and not shunt_mtls_supported(env.shuntd):
        contenders.remove("shunt-mtls")
        if any(SCENARIOS[s][0] == "mtls" for s in scenarios):
            skipped.append({"contender": "shunt-mtls", "reason": MTLS_NOTE})

    result = {
        "timestamp": env.stamp,
        "command": env.command,
        "quick": env.quick,
        "params": env.p,
        "machine": machine(),
        "versions": tool_versions(env),
        "topology": __doc__.split("Topology:", 1)[1].strip(),
        "notes": [
            "Every process in the client pod (load generators and proxies) runs in the "
            "pod's cgroup; shunt-ebpf attaches its programs there (cgroup/connect4, "
            "sockops, sk_msg shortcut between the client and shuntd).",
            "shuntd runs with --workers 2 --log-level warn --access-log.enabled off (its "
            "access log is on by default; bench/obs_bench.sh measures what it costs), HAProxy "
            "with nbthread 2 and no log, nginx with worker_processes 2 and access_log off.",
            "The machine may be shared with other work (here: other engineers building and "
            "testing during the run; the load average at start and end is above, and each "
            "scenario's in the JSON under tcp): compare ratios within one run, not absolute "
            "numbers across runs.",
        ] + ([idle_note] if idle_note else []),
        "scenarios": {s: SCENARIOS[s][1] for s in scenarios},
        "contenders": contenders,
        "skipped": skipped,
        "metrics": METRICS,
        "results": {},
        "tcp": {},
        "failures": [],
    }
    res = result["results"]
    profiled = set()

    def sig(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, sig)
    try:
        start_servers(env)
        for rep in range(env.p["reps"]):
            # Rotate the contenders' order each repetition so a slow drift
            # of the shared machine does not always hit the same one.
            k = rep % len(contenders) if contenders else 0
            for cname in contenders[k:] + contenders[:k]:
                # Fixed order (SCENARIOS): the connection churn of http-close
                # leaves TIME-WAIT sockets in the client pod for 60 s, so the
                # sequential conn-setup runs before it; the TCP counters in
                # the report show what churn costs each contender.
                todo = [s for s in SCENARIOS if s in scenarios and applies(s, cname)]
                if not todo:
                    continue
                c = Contender(cname, env)
                log("rep %d/%d: %s: %s" % (rep + 1, env.p["reps"], cname, ", ".join(todo)))
                try:
                    c.start()
                    time.sleep(0.3)
                    if c.proc:
                        r = res.setdefault("resources", {}).setdefault(cname, {})
                        r.setdefault("rss_idle_mb", []).append(c.rss())
                        r.setdefault("pss_idle_mb", []).append(c.pss())
                    for s in todo:
                        prof = None
                        if env.profile and cname.startswith("shunt-") and s not in profiled:
                            prof = profile_start(env, c, s)
                        tcp0 = {ns: tcp_counters(ns) for ns in (env.cli, env.srv)}
                        with open("/proc/loadavg") as f:
                            load0 = float(f.read().split()[0])
                        try:
                            vals = run_scenario(env, s, c)
                        except BenchError as e:
                            log("%s / %s failed: %s" % (s, cname, e))
                            result["failures"].append({"scenario": s, "contender": cname,
                                                       "rep": rep + 1, "error": str(e)})
                            vals = {}
                        finally:
                            if prof:
                                profiled.add(s)
                                result.setdefault("profiles", []).append(profile_stop(env, prof, s))
                        result.setdefault("profiles", []).extend(vals.pop("_profiles", []))
                        for k, v in vals.items():
                            res.setdefault(s, {}).setdefault(cname, {}).setdefault(k, []).append(v)
                        tcp = result["tcp"].setdefault(s, {}).setdefault(cname, [])
                        tcp.append({
                            "loadavg_1m_before": load0,
                            "client_pod": tcp_delta(tcp0[env.cli], tcp_counters(env.cli)),
                            "server_pod": tcp_delta(tcp0[env.srv], tcp_counters(env.srv)),
                            "client_pod_states_after": tcp_states(env.cli),
                        })
                except BenchError as e:
                    log("%s failed to start: %s" % (cname, e))
                    result["failures"].append({"contender": cname, "rep": rep + 1, "error": str(e)})
                finally:
                    c.stop()
    except KeyboardInterrupt:
        log("interrupted; writing partial results")
        result["interrupted"] = True
    finally:
        stop_all()
    with open("/proc/loadavg") as f:
        result["machine"]["loadavg_end"] = f.read().split()[:3]
    path = os.path.join(env.out, env.stamp + ".json")
    with open(path, "w") as f:
        json.dump(result, f, indent=1, sort_keys=False)
    print(path)
    return 1 if result.get("interrupted") else 0


if __name__ == "__main__":
    sys.exit(main())
