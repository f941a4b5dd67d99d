#!/usr/bin/python3
# SPDX-License-Identifier: Apache-2.0
"""Driver of bench/soak.sh: a long run of mixed traffic through two shuntds
(client pod: iptables capture, file registry, originates mTLS; server pod:
inbound capture, strict mTLS) with endpoint churn, certificate rotation every
minute and SIGHUP reloads. Samples each shuntd's RSS, descriptors, CPU and
active connections every 10 s and reports whether they stay flat and whether
any generator saw an error.

    soak.py run --minutes M --out DIR --shuntd PATH --rr PATH --work DIR
    soak.py grpc-load --target H:P --seconds S --rate R --out FILE   (internal)
    soak.py tcp-load  --target H:P --seconds S --rate R --out FILE   (internal)

Reuses bench.py's Proc, wait_until, shunt_metric and /proc readers. The
namespaces (shunt-s-<pid>-cli, 10.81.0.1; shunt-s-<pid>-srv, 10.81.0.2 and
10.81.0.3) are created here and removed in a finally block, also on
SIGTERM/SIGINT; every process runs in them, in its own session.
"""

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench  # noqa: E402

CLI_IP, SRV_IP, SRV_IP2 = "10.81.0.1", "10.81.0.2", "10.81.0.3"
PORT_H1, PORT_H2, PORT_GRPC, PORT_TCP = 8080, 8082, 9090, 7001
SERVER_ID = "spiffe://cluster.local/ns/default/sa/soak-server"
SAMPLE_S, CHURN_S, RELOAD_S, ROUND_S = 10, 20, 45, 30
# Flat: last quarter's median against the first quarter's.
RSS_TOL_PCT, RSS_TOL_MB, FD_TOL, CPU_TOL_X, CPU_TOL_S = 10, 4.0, 32, 1.5, 2.0
# Load (kept moderate: the machine is shared): requests per second.
H1_CLIENTS, H1_RPS = 4, 20  # h2load --h1, per client
H2_CLIENTS, H2_STREAMS, H2_RPS = 2, 4, 20  # h2load h2c (prior knowledge)
GRPC_RATE, TCP_RATE = 20, 20  # unary calls/s; connect + echo + close/s


def log(msg):
    sys.stderr.write("soak: %s\n" % msg)
    sys.stderr.flush()


# ---------------------------------------------------------------- generators


def paced(seconds, rate, one):
    """Calls one() rate times a second for seconds; returns (ok, errors, detail)."""
    ok = err = 0
    detail = {}
    start = time.monotonic()
    n_max = int(seconds * rate) + 1
    for i in range(n_max):
        due = start + i / rate
        now = time.monotonic()
        if now - start >= seconds:
            break
        if due > now:
            time.sleep(due - now)
        try:
            one()
            ok += 1
        except Exception as e:  # noqa: BLE001 - every failure is counted by kind
            err += 1
            k = type(e).__name__ + ": " + str(e)[:120]
            detail[k] = detail.get(k, 0) + 1
    return ok, err, detail


def grpc_load(a):
    sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests", "integration"))
    import grpcpeer

    ch = grpcpeer.channel(a.target)
    call = ch.unary_unary("/%s/Unary" % grpcpeer.SERVICE, request_serializer=grpcpeer.identity,
                          response_deserializer=grpcpeer.identity)
    payload = os.urandom(256)

    def one():
        r = grpcpeer.parse_reply(call(payload, timeout=5))
        if r["len"] != len(payload):
            raise ValueError("request arrived altered")

    ok, err, detail = paced(a.seconds, a.rate, one)
    ch.close()
    with open(a.out, "w") as f:
        json.dump({"ok": ok, "errors": err, "detail": detail}, f)


def tcp_load(a):
    host, port = a.target.rsplit(":", 1)
    msg = os.urandom(64)

    def one():
        with socket.create_connection((host, int(port)), timeout=5) as s:
            s.sendall(msg)
            got = b""
            while len(got) < len(msg):
                b = s.recv(len(msg) - len(got))
                if not b:
                    raise ConnectionError("closed after %d of %d bytes" % (len(got), len(msg)))
                got += b
            if got != msg:
                raise ValueError("echo altered")

    ok, err, detail = paced(a.seconds, a.rate, one)
    with open(a.out, "w") as f:
        json.dump({"ok": ok, "errors": err, "detail": detail}, f)


def parse_h2load(text):
    """(succeeded, failed + errored + timeout + non-2xx, detail) of an h2load run."""
    ok = bad = 0
    detail = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("requests:"):
            f = dict((k, int(v)) for v, k in
                     (p.strip().split(" ", 1) for p in line[len("requests:"):].split(",")))
            ok = f.get("succeeded", 0)
            for k in ("failed", "errored", "timeout"):
                if f.get(k):
                    detail[k] = f[k]
                    bad += f[k]
        elif line.startswith("status codes:"):
            for p in line[len("status codes:"):].split(","):
                n, code = p.strip().split(" ", 1)
                if code != "2xx" and int(n):
                    detail[code] = int(n)
                    bad += int(n)
    return ok, bad, detail


class Generator:
    """Runs rounds of one load generator (each ROUND_S long, a new process and
    new connections every round) until the deadline; counts results."""

    def __init__(self, name, env, argv_of):
        self.name, self.env, self.argv_of = name, env, argv_of
        self.ok = self.errors = self.rounds = 0
        self.detail = {}
        self.proc = None
        self.out = None
        self.max_rounds = int(env.minutes * 60 / ROUND_S) + 2

    def _collect(self):
        p = self.proc
        p.popen.wait(timeout=ROUND_S + 30)
        rc = p.popen.returncode
        if self.name.startswith("h2load"):
            with open(self.out) as f:
                ok, bad, detail = parse_h2load(f.read())
            if rc != 0 and not bad:
                bad, detail = 1, {"exit %d" % rc: 1}
        else:
            try:
                with open(self.out) as f:
                    r = json.load(f)
                ok, bad, detail = r["ok"], r["errors"], r["detail"]
            except (OSError, ValueError):
                ok, bad, detail = 0, 1, {"exit %d: %s" % (rc, p.stderr_tail(2)): 1}
        p.stop()
        self.ok += ok
        self.errors += bad
        for k, v in detail.items():
            self.detail[k] = self.detail.get(k, 0) + v
        self.proc = None

    def poll(self, deadline):
        """Collects a finished round and starts the next while time is left."""
        if self.proc and not self.proc.alive():
            self._collect()
        left = deadline - time.monotonic()
        if self.proc is None and left > 2 and self.rounds < self.max_rounds:
            secs = int(min(ROUND_S, left))
            self.rounds += 1
            self.out = os.path.join(self.env.work, "%s-%d.out" % (self.name, self.rounds))
            argv = self.argv_of(secs, self.out)
            if self.name.startswith("h2load"):
                argv = ["sh", "-c", 'exec "$@" > "$0"', self.out] + argv
            self.proc = bench.Proc(self.env.cli, argv, "%s-%d" % (self.name, self.rounds),
                                   self.env.work)

    def finish(self):
        if self.proc:
            self._collect()

    def report(self):
        return {"ok": self.ok, "errors": self.errors, "rounds": self.rounds, "detail": self.detail}


# ---------------------------------------------------------------- topology


def sh(argv, timeout=20):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if r.returncode:
        raise bench.BenchError("%s: %s" % (" ".join(argv), (r.stderr or r.stdout).strip()[-300:]))
    return r.stdout


def make_pods(cli, srv):
    sh(["ip", "netns", "add", cli])
    sh(["ip", "netns", "add", srv])
    sh(["ip", "-n", cli, "link", "add", "s-srv", "type", "veth", "peer", "name", "s-cli", "netns", srv])
    sh(["ip", "-n", cli, "addr", "add", CLI_IP + "/24", "dev", "s-srv"])
    sh(["ip", "-n", srv, "addr", "add", SRV_IP + "/24", "dev", "s-cli"])
    sh(["ip", "-n", srv, "addr", "add", SRV_IP2 + "/24", "dev", "s-cli"])
    for ns, dev in ((cli, "s-srv"), (srv, "s-cli")):
        sh(["ip", "-n", ns, "link", "set", "lo", "up"])
        sh(["ip", "-n", ns, "link", "set", dev, "up"])
        sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.ip_local_port_range=32768 60999"])
        sh(["ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv4.tcp_tw_reuse=1"])
    bench.wait_until(lambda: "state UP" in sh(["ip", "-n", cli, "link", "show", "s-srv"]), 10, "veth up")


def remove_pods(cli, srv):
    for ns in (cli, srv):
        pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
        for p in pids:
            try:
                os.kill(int(p), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def write_registry(path, second_endpoint):
    """The client pod's registry: four services on the server pod's address,
    each meshed (identity soak-server, strict). With second_endpoint, each
    also has 10.81.0.3 (the same servers, another address): the churn."""
    services = []
    for name, port, proto in (("soak-h1", PORT_H1, "HTTP"), ("soak-h2", PORT_H2, "HTTP2"),
                              ("soak-grpc", PORT_GRPC, "GRPC"), ("soak-tcp", PORT_TCP, "TCP")):
        eps = [{"address": SRV_IP, "port": port}]
        if second_endpoint:
            eps.append({"address": SRV_IP2, "port": port})
        services.append({"name": name, "namespace": "default", "addresses": [SRV_IP],
                         "ports": [{"name": "p", "port": port, "target_port": port, "protocol": proto}],
                         "identity": SERVER_ID, "mtls": "strict", "endpoints": eps})
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump({"services": services}, f)
    os.rename(tmp, path)  # atomic: the registry never reads half a file


NGINX_CONF = """worker_processes 1;
daemon off;
pid @WORK@/nginx.pid;
error_log @WORK@/nginx.err error;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path @WORK@/nginx-body;
    proxy_temp_path @WORK@/nginx-proxy;
    fastcgi_temp_path @WORK@/nginx-fastcgi;
    uwsgi_temp_path @WORK@/nginx-uwsgi;
    scgi_temp_path @WORK@/nginx-scgi;
    keepalive_requests 1000000;
    server { listen 8080; root @WORK@/www; }
    server { listen 8082 http2; root @WORK@/www; }
}
"""


def metrics(ns):
    r = subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "--noproxy", "*", "--max-time", "5",
                        "http://127.0.0.1:15003/metrics"], capture_output=True, text=True, timeout=15)
    return r.stdout


def metric_sum(text, name, labels=""):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name):len(name) + 1] in (" ", "{") and labels in line:
            total += float(line.rsplit(None, 1)[1])
    return total


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


def cert_serial(ns):
    """The serial of the certificate /certs says is current (the first
    "serial" in the document), or "" when unreadable."""
    r = subprocess.run(["ip", "netns", "exec", ns, "curl", "-s", "--noproxy", "*", "--max-time", "5",
                        "http://127.0.0.1:15003/certs"], capture_output=True, text=True, timeout=15)
    try:
        doc = json.loads(r.stdout)
    except ValueError:
        return ""
    todo = [doc]
    for _ in range(1000):
        if not todo:
            break
        d = todo.pop(0)
        if isinstance(d, dict):
            if isinstance(d.get("serial"), str):
                return d["serial"]
            todo.extend(d.values())
        elif isinstance(d, list):
            todo.extend(d)
    return ""


def log_levels(path):
    """Counts of warn and error lines in a shuntd log, with the first few
    distinct messages of each."""
    out = {"warn": 0, "error": 0, "messages": {}}
    with open(path, "rb") as f:
        for raw in f:
            try:
                rec = json.loads(raw)
            except ValueError:
                continue
            lv = rec.get("level")
            if lv in ("warn", "error"):
                out[lv] += 1
                msg = "%s: %s" % (lv, str(rec.get("msg", ""))[:160])
                if msg in out["messages"] or len(out["messages"]) < 8:
                    out["messages"][msg] = out["messages"].get(msg, 0) + 1
    return out


def sample(t0, side, ns, proc):
    m = metrics(ns)
    return {"t": round(time.monotonic() - t0, 1), "side": side,
            "rss_mb": round(bench.rss_mb(proc.pid), 2), "fds": fd_count(proc.pid),
            "cpu_s": round(bench.cpu_seconds(proc.pid), 2),
            "active": int(metric_sum(m, "shunt_connections_active")),
            "rotations": int(metric_sum(m, "shunt_tls_rotations_total")),
            "reloads": int(metric_sum(m, "shunt_config_reloads_total")),
            "serial": cert_serial(ns),
            # Sockets (any state, TIME-WAIT too) to the churned endpoint: the churn is followed.
            "to_churned": len(subprocess.run(["ip", "netns", "exec", ns, "ss", "-Htan", "dst", SRV_IP2],
                                             capture_output=True, text=True, timeout=10).stdout.splitlines())}


# ---------------------------------------------------------------- analysis


def quarter(xs, last):
    q = max(1, len(xs) // 4)
    return xs[-q:] if last else xs[:q]


def analyse(samples, minutes):
    out = {}
    failures = []
    for side in ("client", "server"):
        s = [x for x in samples if x["side"] == side]
        if len(s) < 4:
            failures.append("%s: only %d samples" % (side, len(s)))
            continue
        rss0 = statistics.median(x["rss_mb"] for x in quarter(s, False))
        rss1 = statistics.median(x["rss_mb"] for x in quarter(s, True))
        fd0 = statistics.median(x["fds"] for x in quarter(s, False))
        fd1 = statistics.median(x["fds"] for x in quarter(s, True))
        # CPU seconds per minute over the first and the last quarter.
        def rate(q):
            return (q[-1]["cpu_s"] - q[0]["cpu_s"]) * 60 / max(1e-9, q[-1]["t"] - q[0]["t"])
        q0 = s[:max(2, len(s) // 4 + 1)]
        q1 = s[-max(2, len(s) // 4 + 1):]
        cpu0, cpu1 = rate(q0), rate(q1)
        per_min = []
        for i in range(1, len(s)):
            per_min.append(round((s[i]["cpu_s"] - s[i - 1]["cpu_s"]) * 60 / max(1e-9, s[i]["t"] - s[i - 1]["t"]), 2))
        r = {"rss_first_mb": rss0, "rss_last_mb": rss1, "fds_first": fd0, "fds_last": fd1,
             "cpu_s_per_min_first": round(cpu0, 2), "cpu_s_per_min_last": round(cpu1, 2),
             "cpu_s_per_min": per_min, "rotations": s[-1]["rotations"] - s[0]["rotations"],
             "rotations_total": s[-1]["rotations"], "reloads": s[-1]["reloads"],
             "serials_seen": len(set(x["serial"] for x in s if x["serial"]))}
        out[side] = r
        if rss1 > rss0 * (1 + RSS_TOL_PCT / 100.0) + RSS_TOL_MB:
            failures.append("%s shuntd RSS grew %.1f -> %.1f MB" % (side, rss0, rss1))
        if fd1 > fd0 + FD_TOL:
            failures.append("%s shuntd descriptors grew %d -> %d" % (side, fd0, fd1))
        if cpu1 > cpu0 * CPU_TOL_X + CPU_TOL_S:
            failures.append("%s shuntd CPU grew %.2f -> %.2f s/min" % (side, cpu0, cpu1))
        want = int(minutes) - 1  # one renewal a minute, the first at 60 s (the last may fall after the end)
        if r["rotations_total"] < want:
            failures.append("%s shuntd rotated %d times in %s min" % (side, r["rotations_total"], minutes))
    return out, failures


def write_report(path_md, res):
    L = []
    L.append("# Soak: %s minutes, %s\n" % (res["minutes"], res["stamp"]))
    L.append("`%s` on %s (commit %s). Load: h2load HTTP/1.1 %d req/s, h2load h2c %d req/s, "
             "gRPC unary %d/s, TCP connect+echo %d/s, all through both shuntds over mTLS. "
             "Endpoint churn every %d s, SIGHUP of both every %d s, certificate lifetime 90 s "
             "(renewal every 60 s). Load average at start %s, end %s.\n"
             % (res["command"], res["host"], res["commit"], H1_CLIENTS * H1_RPS,
                H2_CLIENTS * H2_RPS, GRPC_RATE, TCP_RATE, CHURN_S, RELOAD_S,
                res["loadavg_start"], res["loadavg_end"]))
    L.append("**Result: %s**\n" % ("PASS" if not res["failures"] else "FAIL: " + "; ".join(res["failures"])))
    L.append("## Generators\n")
    L.append("| generator | ok | errors | rounds | error kinds |")
    L.append("|---|---:|---:|---:|---|")
    for n, g in res["generators"].items():
        L.append("| %s | %d | %d | %d | %s |" % (n, g["ok"], g["errors"], g["rounds"],
                                                  ", ".join("%s: %d" % kv for kv in g["detail"].items()) or "-"))
    L.append("\n## Flatness (median of the first vs the last quarter of samples)\n")
    L.append("Tolerance: RSS +%d%% + %.0f MB, descriptors +%d, CPU %.1f× + %.0f s/min.\n"
             % (RSS_TOL_PCT, RSS_TOL_MB, FD_TOL, CPU_TOL_X, CPU_TOL_S))
    L.append("| shuntd | RSS MB first → last | fds first → last | CPU s/min first → last | rotations | reloads |")
    L.append("|---|---|---|---|---:|---:|")
    for side, r in res["analysis"].items():
        L.append("| %s | %.1f → %.1f | %d → %d | %.2f → %.2f | %d | %d |" % (
            side, r["rss_first_mb"], r["rss_last_mb"], r["fds_first"], r["fds_last"],
            r["cpu_s_per_min_first"], r["cpu_s_per_min_last"], r["rotations_total"], r["reloads"]))
    for side, r in res["analysis"].items():
        L.append("\n%s shuntd CPU, seconds per minute over each sample interval: %s" % (
            side, " ".join("%.2f" % v for v in r["cpu_s_per_min"])))
    L.append("\nEvents: %d registry rewrites (endpoint 10.81.0.3 added/removed), %d SIGHUPs per shuntd. "
             "Rotations: `shunt_tls_rotations_total`; distinct certificate serials `/certs` showed "
             "over the samples: client %d, server %d. Reloads: `shunt_config_reloads_total`.\n"
             % (res["churns"], res["sighups"], res["analysis"].get("client", {}).get("serials_seen", 0),
                res["analysis"].get("server", {}).get("serials_seen", 0)))
    L.append("shuntd logs (`--log-level warn`): " + "; ".join(
        "%s %d warn, %d error%s" % (side, lg["warn"], lg["error"],
                                    (" (" + ", ".join("%s ×%d" % kv for kv in lg["messages"].items()) + ")")
                                    if lg["messages"] else "")
        for side, lg in res["logs"].items()) + ".\n")
    L.append("shuntd counters at the end: " + "; ".join(
        "%s %s" % (side, ", ".join("%s %d" % (k, v) for k, v in c.items()))
        for side, c in res["shuntd_counters"].items()) + ".\n")
    L.append("## Samples (every %d s)\n" % SAMPLE_S)
    L.append("| t s | shuntd | RSS MB | fds | CPU s | active conns | rotations | reloads | sockets to 10.81.0.3 |")
    L.append("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for x in res["samples"]:
        L.append("| %.0f | %s | %.1f | %d | %.2f | %d | %d | %d | %s |" % (
            x["t"], x["side"], x["rss_mb"], x["fds"], x["cpu_s"], x["active"], x["rotations"], x["reloads"],
            x.get("to_churned", "-") if x["side"] == "client" else "-"))
    text = "\n".join(L) + "\n"
    with open(path_md, "w") as f:
        f.write(text)
    return text


# ---------------------------------------------------------------- run


def run(a):
    env = a
    env.cli, env.srv = "shunt-s-%d-cli" % os.getpid(), "shunt-s-%d-srv" % os.getpid()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    res = {"minutes": a.minutes, "stamp": stamp, "command": a.command, "host": os.uname().nodename,
           "commit": subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
                                    capture_output=True, text=True).stdout.strip(),
           "loadavg_start": open("/proc/loadavg").read().split()[0], "failures": []}

    def on_signal(signum, _frame):
        raise KeyboardInterrupt("signal %d" % signum)

    signal.signal(signal.SIGTERM, on_signal)
    gens = []
    try:
        make_pods(env.cli, env.srv)
        www = os.path.join(env.work, "www")
        os.makedirs(www, exist_ok=True)
        with open(os.path.join(www, "index.html"), "w") as f:
            f.write("soak\n" * 50)
        os.chmod(www, 0o755)
        conf = os.path.join(env.work, "nginx.conf")
        with open(conf, "w") as f:
            f.write(NGINX_CONF.replace("@WORK@", env.work))
        P = bench.Proc
        nginx = P(env.srv, ["nginx", "-c", conf, "-p", env.work], "nginx", env.work)
        grpcd = P(env.srv, ["/usr/bin/python3", os.path.join(os.path.dirname(HERE), "tests", "integration",
                                                             "grpcpeer.py"), "server", "--name", "soak",
                            "--listen", "0.0.0.0:%d" % PORT_GRPC, "--lifetime", str(a.minutes * 60 + 300)],
                  "grpc-server", env.work)
        echo = P(env.srv, [a.rr, "server", "0.0.0.0", str(PORT_TCP)], "echo", env.work)
        for p, port in ((nginx, PORT_H1), (nginx, PORT_H2), (grpcd, PORT_GRPC), (echo, PORT_TCP)):
            def up(p=p, port=port):
                if not p.alive():
                    raise bench.BenchError("%s exited: %s" % (p.name, p.stderr_tail()))
                return bench.listening(env.srv, port)
            bench.wait_until(up, 20, "%s on %d" % (p.name, port))

        reg = os.path.join(env.work, "registry.json")
        write_registry(reg, False)
        ca = os.path.join(env.work, "ca")
        common = ["--redirect", "iptables", "--workers", "2", "--log-level", "warn",
                  "--proxy-uid", bench.SHUNTD_UID, "--drain-timeout", "2s", "--mtls.ca-dir", ca,
                  "--mtls.key-type", "ecdsa-p256", "--mtls.cert-rotation", "90s"]
        cli = P(env.cli, [a.shuntd] + common + ["--mtls.service-name", "soak-client",
                                                "--service-discovery.file.path", reg], "shuntd-client", env.work)
        c = bench.Contender("shunt-mtls", env)
        c._shuntd_ready(env.cli, cli)
        srv = P(env.srv, [a.shuntd] + common + ["--mtls.service-name", "soak-server", "--mtls.mode", "strict"],
                "shuntd-server", env.work)
        c._shuntd_ready(env.srv, srv)
        shuntds = (("client", env.cli, cli), ("server", env.srv, srv))

        # One request of each kind before the clock starts: the path works.
        bench.run(env.cli, ["curl", "-sf", "--noproxy", "*", "--max-time", "5", "-o", "/dev/null",
                            "http://%s:%d/" % (SRV_IP, PORT_H1)], 15)
        bench.run(env.cli, ["curl", "-sf", "--noproxy", "*", "--max-time", "5", "--http2-prior-knowledge",
                            "-o", "/dev/null", "http://%s:%d/" % (SRV_IP, PORT_H2)], 15)

        me = os.path.abspath(__file__)
        gens = [
            Generator("h2load-h1", env, lambda s, o: [
                "h2load", "--h1", "-c", str(H1_CLIENTS), "--rps", str(H1_RPS), "-D", str(s),
                "-T", "5", "http://%s:%d/" % (SRV_IP, PORT_H1)]),
            Generator("h2load-h2c", env, lambda s, o: [
                "h2load", "-c", str(H2_CLIENTS), "-m", str(H2_STREAMS), "--rps", str(H2_RPS),
                "-D", str(s), "-T", "5", "http://%s:%d/" % (SRV_IP, PORT_H2)]),
            Generator("grpc-unary", env, lambda s, o: [
                "/usr/bin/python3", me, "grpc-load", "--target", "%s:%d" % (SRV_IP, PORT_GRPC),
                "--seconds", str(s), "--rate", str(GRPC_RATE), "--out", o]),
            Generator("tcp-echo", env, lambda s, o: [
                "/usr/bin/python3", me, "tcp-load", "--target", "%s:%d" % (SRV_IP, PORT_TCP),
                "--seconds", str(s), "--rate", str(TCP_RATE), "--out", o]),
        ]
        samples = []
        t0 = time.monotonic()
        deadline = t0 + a.minutes * 60
        # The first sample once every generator runs; the last before the deadline.
        next_sample, next_churn, next_reload = t0 + 5, t0 + CHURN_S, t0 + RELOAD_S
        churns = sighups = 0
        second = False
        log("running %s min; samples every %d s" % (a.minutes, SAMPLE_S))
        max_ticks = int(a.minutes * 60 / 0.5) + 100
        for _ in range(max_ticks):
            now = time.monotonic()
            if now >= deadline:
                break
            for side, ns, p in shuntds:
                if not p.alive():
                    raise bench.BenchError("shuntd (%s) exited: %s" % (side, p.stderr_tail()))
            for g in gens:
                g.poll(deadline)
            if now >= next_sample:
                for side, ns, p in shuntds:
                    samples.append(sample(t0, side, ns, p))
                x = samples[-2:]
                log("t=%3.0fs client rss %.1f MB fds %d | server rss %.1f MB fds %d | rotations %d/%d"
                    % (x[0]["t"], x[0]["rss_mb"], x[0]["fds"], x[1]["rss_mb"], x[1]["fds"],
                       x[0]["rotations"], x[1]["rotations"]))
                next_sample += SAMPLE_S
            if now >= next_churn:
                second = not second
                write_registry(reg, second)
                churns += 1
                next_churn += CHURN_S
            if now >= next_reload:
                for side, ns, p in shuntds:
                    os.kill(p.pid, signal.SIGHUP)
                sighups += 1
                next_reload += RELOAD_S
            time.sleep(0.5)
        for g in gens:
            g.finish()
        res["loadavg_end"] = open("/proc/loadavg").read().split()[0]
        res["samples"] = samples
        res["churns"], res["sighups"] = churns, sighups
        res["generators"] = {g.name: g.report() for g in gens}
        res["analysis"], res["failures"] = analyse(samples, a.minutes)
        if not any(x.get("to_churned") for x in samples if x["side"] == "client"):
            res["failures"].append("no connection ever went to the churned endpoint %s" % SRV_IP2)
        for g in gens:
            if g.errors:
                res["failures"].append("%s: %d errors" % (g.name, g.errors))
            if not g.ok:
                res["failures"].append("%s: no request succeeded" % g.name)
        res["logs"] = {side: log_levels(p.err_path) for side, ns, p in shuntds}
        for side, lg in res["logs"].items():
            if lg["error"]:
                res["failures"].append("%s shuntd logged %d error lines" % (side, lg["error"]))
        for side, ns, p in shuntds:
            m = metrics(ns)
            cnt = {k: metric_sum(m, k) for k in (
                "shunt_tls_handshakes_total", "shunt_tls_handshake_failures_total",
                "shunt_connections_accepted_total", "shunt_connections_rejected_total")}
            # Errors by reason (labels kept): what shuntd counted while serving.
            for line in m.splitlines():
                if line.startswith(("shunt_errors_total{", "shunt_connections_closed_total{")) \
                        and float(line.rsplit(None, 1)[1]):
                    cnt[line.rsplit(None, 1)[0]] = float(line.rsplit(None, 1)[1])
            res.setdefault("shuntd_counters", {})[side] = cnt
    finally:
        for g in gens:
            if g.proc:
                g.proc.stop()
        bench.stop_all()
        remove_pods(env.cli, env.srv)

    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "soak-%s.json" % stamp), "w") as f:
        json.dump(res, f, indent=1)
    text = write_report(os.path.join(a.out, "soak-%s.md" % stamp), res)
    sys.stdout.write(text)
    sys.stdout.write("soak: report %s\n" % os.path.join(a.out, "soak-%s.md" % stamp))
    if res["failures"]:
        sys.stderr.write("soak: FAIL: %s\n" % "; ".join(res["failures"]))
        return 1
    return 0


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--minutes", type=int, required=True)
    r.add_argument("--out", required=True)
    r.add_argument("--work", required=True)
    r.add_argument("--shuntd", required=True)
    r.add_argument("--rr", required=True)
    r.add_argument("--command", default="bench/soak.sh")
    for name in ("grpc-load", "tcp-load"):
        g = sub.add_parser(name)
        g.add_argument("--target", required=True)
        g.add_argument("--seconds", type=float, required=True)
        g.add_argument("--rate", type=float, required=True)
        g.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.cmd == "grpc-load":
        grpc_load(a)
        return 0
    if a.cmd == "tcp-load":
        tcp_load(a)
        return 0
    if not 1 <= a.minutes <= 24 * 60:
        raise SystemExit("soak: --minutes must be 1..1440, not %d" % a.minutes)
    try:
        return run(a)
    except (bench.BenchError, KeyboardInterrupt) as e:
        sys.stderr.write("soak: FAIL: %s\n" % e)
        return 1


if __name__ == "__main__":
    sys.exit(main())
