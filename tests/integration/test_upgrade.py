# SPDX-License-Identifier: Apache-2.0
"""Zero-downtime upgrade: `shuntd --takeover` takes the running shuntd's
listening sockets (SCM_RIGHTS over upgrade.socket) and its capture (iptables
rules, or the pinned eBPF programs and maps) while clients keep connecting;
the old one drains and exits 0 without removing the capture.

Clients are real processes in the pods' network namespaces: a bounded load
loop of connect + HTTP request + close, outbound through the capture and
inbound from the remote pod. Failure paths: nothing to take over, a socket
owned by another uid, a new shuntd killed in the middle of the handover, a
configuration whose listeners differ. The naive restart (stop, then start)
is measured with the same load loop, which shows the loop sees refusals.

The eBPF test takes the BPF pins of test_ebpf's fixtures; run the module
under the BPF lock: flock /tmp/shunt-bpf.lock ctest -R integration.test_upgrade"""

import json
import os
import signal
import socket
import sys

import pytest

import shuntlib as sl
from shuntlib import Topology as T
from ebpflib import CGROUP, PINS, InCgroup, cgroup, cgroup_argv, ebpf_args, mounts  # noqa: F401

# connect + GET + read to EOF, in threads, until a stop file appears or the
# bounds (seconds, requests) are reached; one JSON line of outcomes at exit.
LOAD = r"""
import errno, json, os, socket, sys, threading, time
host, port, stop, progress = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
threads, max_s, max_n = int(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
fam = socket.AF_INET6 if ":" in host else socket.AF_INET
req = b"GET /load HTTP/1.1\r\nHost: load\r\nConnection: close\r\n\r\n"
lock = threading.Lock()
out = {"ok": 0, "refused": 0, "reset": 0, "timeout": 0, "bad_reply": 0, "other": []}
deadline = time.monotonic() + max_s

def count(k):
    with lock:
        out[k] += 1
        return out["ok"], sum(v for v in out.values() if isinstance(v, int))

def one():
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(10)
    try:
        s.connect((host, port))
        s.sendall(req)
        got = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            got += b
        if not got.startswith(b"HTTP/1.1 200"):
            return count("bad_reply")
        return count("ok")
    except ConnectionRefusedError:
        return count("refused")
    except ConnectionResetError:
        return count("reset")
    except socket.timeout:
        return count("timeout")
    except OSError as e:
        with lock:
            out["other"].append(errno.errorcode.get(e.errno, str(e)))
        return 0, 0
    finally:
        s.close()

def loop():
    while not os.path.exists(stop) and time.monotonic() < deadline:
        with lock:
            if sum(v for v in out.values() if isinstance(v, int)) >= max_n:
                return
        ok, attempts = one()
        if attempts % 10 == 0:
            with open(progress + ".%d" % threading.get_ident(), "w") as f:
                f.write(json.dumps({"ok": ok, "all": attempts}))
            os.replace(progress + ".%d" % threading.get_ident(), progress)

ts = [threading.Thread(target=loop) for _ in range(threads)]
for t in ts:
    t.start()
for t in ts:
    t.join()
print(json.dumps(out))
"""

LOAD_SECONDS = 90  # bounds of one load loop; a test stops it sooner
LOAD_MAX = 60000


class Load:
    """A load loop in a pod: start, progress, stop -> outcome counts."""

    def __init__(self, pod, host, port, name, threads=3, argv_wrap=None):
        d = sl.tmpdir()
        self.stop_path = os.path.join(d, "stop")
        self.progress_path = os.path.join(d, "progress")
        argv = [sys.executable, "-c", LOAD, host, str(port), self.stop_path, self.progress_path,
                str(threads), str(LOAD_SECONDS), str(LOAD_MAX)]
        self.proc = pod.spawn(argv_wrap(argv) if argv_wrap else argv, name)

    def done(self, key):
        try:
            with open(self.progress_path) as f:
                return json.load(f)[key]
        except (OSError, ValueError):
            return 0

    def wait_progress(self, more, key="ok", timeout=20):
        """more requests answered (key "all": attempted)."""
        start = self.done(key)
        sl.wait_until(lambda: self.done(key) >= start + more, timeout,
                      what="%d more %s requests (%s)" % (more, key, self.proc.read_stderr()[-300:]))

    def stop(self):
        open(self.stop_path, "w").close()

    def finish(self):
        self.stop()
        rc = self.proc.wait(30)
        assert rc == 0, (rc, self.proc.read_stderr())
        return json.loads(self.proc.read_stdout().strip().splitlines()[-1])


def wait_loads(loads, more, key="ok"):
    for l in loads:
        l.wait_progress(more, key)


def finish_loads(loads, more):
    """Each loop answers `more` more requests, then stops: their outcomes."""
    wait_loads(loads, more)
    return [l.finish() for l in loads]


def assert_clean(result, what):
    bad = {k: v for k, v in result.items() if k != "ok" and v}
    assert not bad and result["ok"] > 0, "%s: %s" % (what, result)


def upgrade_args(sock, **kw):
    return sl.shuntd_args(drain_timeout="20s", **{"upgrade.socket": sock}, **kw)


def wait_log(d, text, timeout=30):
    return sl.wait_until(
        lambda: next((l for l in d.log_lines() if text in l.get("msg", "")), None),
        timeout, what="%r in the log of %s\n%s" % (text, d.pod.name, d.log_tail(30)))


def takeover(pod, args, name="shuntd-new", wrap=()):
    """Starts `shuntd --takeover` (its /ready is not used: until the old one
    commits the admin socket is shared and either may answer)."""
    return sl.Shuntd(pod, list(args) + ["--takeover"], name=name, wrap=wrap)


def rules_present(pod):
    return "SIDECAR_PROXY_OUTBOUND" in pod.iptables_save() and \
        "SIDECAR_PROXY_INBOUND" in pod.iptables_save()


@pytest.fixture
def env(fresh_topo):
    """Remote echo and HTTP peers, an HTTP server in the app pod for inbound
    traffic, and a socket path of the test's own."""
    procs = {}
    app = None
    try:
        sl.spawn_remote_peers(fresh_topo, procs, ["echo", "http"])
        app = fresh_topo.app.spawn_peer("http", "app-http", ["0.0.0.0:9080", "[::]:9080"])
        yield fresh_topo, os.path.join(sl.tmpdir(), "run", "upgrade.sock")
    finally:
        if app:
            app.stop()
        for p in procs.values():
            p.stop()


def start_loads(topo, wrap=None):
    return [
        Load(topo.app, T.REMOTE4, 8080, "load-out", argv_wrap=wrap),
        Load(topo.remote, T.APP4, 9080, "load-in"),
    ]


def test_takeover_iptables_zero_refused(env, start_shuntd):
    topo, sock = env
    old = start_shuntd(topo.app, upgrade_args(sock, workers="2"))
    assert oct(os.stat(sock).st_mode & 0o777) == "0o600"
    loads = start_loads(topo)
    new = None
    try:
        wait_loads(loads, 50)
        # A long-lived connection through the old shuntd, open across the upgrade.
        lived = topo.app.connect(T.REMOTE4, 7000)
        assert sl.echo(lived, b"before") == b"before"
        # More workers than the old one: the extra one binds its own sockets.
        new = takeover(topo.app, upgrade_args(sock, workers="3"))
        wait_log(new, "takeover from pid %d complete" % old.proc.pid)
        wait_log(old, "handover to pid")
        wait_loads(loads, 100)
        # The old one drains: the long-lived connection still carries data.
        payload = bytes(range(256)) * 8192
        assert sl.echo(lived, payload, timeout=20) == payload
        assert old.alive()
        lived.close()
        assert old.wait(15) == 0, old.log_tail()
        assert rules_present(topo.app)  # left to the new one
        results = finish_loads(loads, 100)
    finally:
        for l in loads:
            l.stop()
        if new is not None and sys.exc_info()[0] is not None:
            new.stop()
    assert_clean(results[0], "outbound")
    assert_clean(results[1], "inbound")
    msgs = [l.get("msg", "") for l in old.log_lines()]
    assert any("capture left in place: shuntd pid %d owns it" % new.proc.pid in m for m in msgs)
    assert not any("iptables capture removed" in m for m in msgs), msgs[-20:]

    st = new.json("/status")
    assert st["pid"] == new.proc.pid
    assert st["upgrade"]["taken_over_from"] == old.proc.pid
    assert st["upgrade"]["adopted_capture"] == "iptables"
    assert st["rules"]["installed"] is True
    out = sl.shuntctl(topo.app, "status").stdout
    assert "took over from pid %d (10 listeners, capture iptables)" % old.proc.pid in out, out
    # 2 workers x {inbound, outbound} x {IPv4, IPv6} + admin + metrics
    assert new.metric("shunt_upgrade_adopted_listeners") == 10
    assert new.metric("shunt_upgrade_adopted_capture", mode="iptables") == 1
    # The read-only metrics listener was handed over too: the new one answers.
    status, _, body = topo.app.http("127.0.0.1", 15020, "GET", "/metrics")
    assert status == 200 and b"shunt_upgrade_adopted_listeners 10" in body, body[:300]
    assert new.metric("shunt_connections_accepted_total", direction="outbound") > 0
    assert new.metric("shunt_connections_accepted_total", direction="inbound") > 0
    # The new one serves the upgrade socket in turn: a second upgrade, to a
    # single worker that keeps all 3 x 4 sockets open.
    load = Load(topo.app, T.REMOTE4, 8080, "load-out-2")
    newer = None
    try:
        load.wait_progress(50)
        newer = takeover(topo.app, upgrade_args(sock, workers="1"), name="shuntd-newer")
        wait_log(newer, "takeover from pid %d complete" % new.proc.pid)
        assert new.wait(15) == 0, new.log_tail()
        load.wait_progress(100)
        assert_clean(load.finish(), "outbound, second upgrade")
        assert newer.metric("shunt_upgrade_adopted_listeners") == 14
        # Its own normal stop removes what it adopted.
        assert newer.stop() == 0, newer.log_tail()
    finally:
        load.stop()
        for d in (new, newer):
            if d is not None:
                d.stop()
    assert not rules_present(topo.app)
    assert not os.path.exists(sock)


def test_naive_restart_refuses(env, start_shuntd):
    """The control: stop the old one, start a new one. The same load loop
    counts refused connects (or the test would prove nothing above)."""
    topo, sock = env
    old = start_shuntd(topo.app, upgrade_args(sock))
    loads = start_loads(topo)
    try:
        wait_loads(loads, 50)
        # An open connection keeps the old one draining, as in production.
        lived = topo.app.connect(T.REMOTE4, 7000)
        old.signal(signal.SIGTERM)
        wait_log(old, "no new connections; draining")
        wait_loads(loads, 30, key="all")
        lived.close()
        assert old.wait(15) == 0
        start_shuntd(topo.app, upgrade_args(sock))
        results = finish_loads(loads, 50)
    finally:
        for l in loads:
            l.stop()
    lost = sum(r["refused"] + r["reset"] + r["timeout"] + len(r["other"]) for r in results)
    assert lost > 0, results


def test_takeover_without_a_running_shuntd(env):
    topo, sock = env
    d = takeover(topo.app, upgrade_args(sock))
    assert d.wait(20) == 1, d.log_tail()
    errors = [l["msg"] for l in d.log_lines() if l.get("level") == "error"]
    assert len(errors) == 1, errors
    assert "takeover failed: upgrade.socket %s" % sock in errors[0]
    assert "start without --takeover" in errors[0]
    assert not rules_present(topo.app)


def test_socket_of_another_uid_refused(env):
    topo, sock = env
    os.makedirs(os.path.dirname(sock), exist_ok=True)
    planted = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        planted.bind(sock)
        planted.listen(1)
        os.chown(sock, 65534, 65534)
        d = takeover(topo.app, upgrade_args(sock))
        assert d.wait(20) == 1, d.log_tail()
        errors = [l["msg"] for l in d.log_lines() if l.get("level") == "error"]
        assert len(errors) == 1 and "owned by uid 65534" in errors[0], errors
        assert "refused" in errors[0]
        planted.settimeout(0.2)
        with pytest.raises(socket.timeout):
            planted.accept()  # it never even connected
    finally:
        planted.close()
        os.unlink(sock)


def test_bad_peers_on_the_upgrade_socket(env, start_shuntd):
    """Garbage on the upgrade socket is dropped; a connection that holds it
    makes a takeover meanwhile refused (one handover at a time), bounded by
    the hello timeout; the old one serves throughout."""
    topo, sock = env
    old = start_shuntd(topo.app, upgrade_args(sock))
    junk = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    junk.connect(sock)
    junk.send(b"not a handover message")
    wait_log(old, "left before HELLO: malformed message")
    junk.close()
    holder = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        holder.connect(sock)  # and sends nothing; accepted before the next (FIFO)
        d = takeover(topo.app, upgrade_args(sock), name="shuntd-refused")
        assert d.wait(20) == 1, d.log_tail()
        errors = [l["msg"] for l in d.log_lines() if l.get("level") == "error"]
        assert len(errors) == 1 and "a handover is already in progress" in errors[0], errors
        # The holder is dropped after the hello timeout (5 s).
        holder.settimeout(15)
        assert holder.recv(64) == b""
    finally:
        holder.close()
    assert old.metric("shunt_upgrade_handovers_total", result="refused") == 1
    assert old.json("/status")["ready"] is True
    assert rules_present(topo.app)


def test_new_killed_mid_handover_old_keeps_serving(env, start_shuntd):
    """The new shuntd dies (SIGKILL, injected by strace at its READY) after
    it received every socket and adopted the rules: the old one serves on,
    loses no connection, keeps the capture, and a later takeover works."""
    sl.require_tool("strace")
    topo, sock = env
    old = start_shuntd(topo.app, upgrade_args(sock))
    loads = start_loads(topo)
    try:
        wait_loads(loads, 50)
        # HELLO is the new shuntd's first sendmsg, READY its second.
        wrap = ["strace", "-f", "-qq", "-o", "/dev/null", "-e", "trace=sendmsg",
                "-e", "inject=sendmsg:signal=SIGKILL:when=2"]
        dying = takeover(topo.app, upgrade_args(sock), name="shuntd-dying", wrap=wrap)
        assert dying.wait(30) is not None
        wait_log(old, "handover to pid")
        failed = wait_log(old, "failed: it closed the connection")
        assert "keeps serving" in failed["msg"]
        assert "adopted the iptables capture" in dying.log_text()
        wait_loads(loads, 100)
        assert rules_present(topo.app)
        assert old.metric("shunt_upgrade_handovers_total", result="failed") == 1
        # A listener whose address changed: refused before anything is adopted.
        moved = takeover(topo.app, upgrade_args(sock, inbound_port="15011"), name="shuntd-moved")
        assert moved.wait(20) == 1, moved.log_tail()
        errors = [l["msg"] for l in moved.log_lines() if l.get("level") == "error"]
        assert len(errors) == 1 and "cannot change in an upgrade" in errors[0], errors
        wait_loads(loads, 50)
        # The old one still answers and owns everything; a real takeover works.
        assert old.json("/status")["upgrade"]["handovers"]["failed"] >= 1
        new = takeover(topo.app, upgrade_args(sock))
        wait_log(new, "takeover from pid %d complete" % old.proc.pid)
        assert old.wait(20) == 0, old.log_tail()
        results = finish_loads(loads, 50)
    finally:
        for l in loads:
            l.stop()
    assert_clean(results[0], "outbound")
    assert_clean(results[1], "inbound")
    assert new.stop() == 0
    assert not rules_present(topo.app)


def test_takeover_ebpf_fewer_workers(topo, cgroup):  # noqa: F811 - fixtures imported above
    """eBPF capture: the new shuntd adopts the pinned links (programs
    replaced in place) and maps; with fewer workers it keeps every socket of
    the old ones open, so nothing queued is lost."""
    sl.require_tool("bpftool")
    procs = {}
    old = new = None
    loads = []
    sock = os.path.join(sl.tmpdir(), "upgrade.sock")
    try:
        sl.spawn_remote_peers(topo, procs, ["echo", "http"])
        pod = InCgroup(topo.app, CGROUP)
        old = sl.Shuntd(pod, ebpf_args(drain_timeout="20s", workers="3",
                                       **{"upgrade.socket": sock}), name="shuntd-old")
        old.wait_ready()
        loads = [Load(topo.app, T.REMOTE4, 8080, "load-out",
                      argv_wrap=lambda a: cgroup_argv(CGROUP, a))]
        loads[0].wait_progress(50)
        new = takeover(pod, ebpf_args(drain_timeout="20s", workers="1",
                                      **{"upgrade.socket": sock}), name="shuntd-new")
        wait_log(new, "takeover from pid %d complete" % old.proc.pid)
        assert any("adopted the ebpf capture of pid %d" % old.proc.pid in l.get("msg", "")
                   for l in new.log_lines())
        loads[0].wait_progress(100)
        assert old.wait(20) == 0, old.log_tail()
        for name in ("link_connect4", "link_sockops", "shunt_orig_by_tuple"):
            assert os.path.exists(os.path.join(PINS, name)), name
        loads[0].wait_progress(100)
        result = loads[0].finish()
        assert_clean(result, "outbound (eBPF)")
        st = new.json("/status")
        assert st["redirect_mode"] == "ebpf"
        assert st["upgrade"]["adopted_capture"] == "ebpf"
        assert new.metric("shunt_upgrade_adopted_capture", mode="ebpf") == 1
        assert new.stop() == 0, new.log_tail()
        new = None
        assert not os.path.exists(os.path.join(PINS, "link_connect4"))
    finally:
        for l in loads:
            l.stop()
        for d in (new, old):
            if d is not None:
                d.stop()
        for p in procs.values():
            p.stop()
