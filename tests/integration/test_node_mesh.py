# SPDX-License-Identifier: Apache-2.0
"""Node mode end to end (issue 16): ONE shuntd per node (`mode: node`, in
the node's network namespace, as the chart's DaemonSet runs it) serves every
meshed pod of its node, each pod speaking mTLS with its own SPIFFE identity
from shunt-ca's delegated issuance. The node lab (nodelab.py):

    node-a: frontend-0 (shop/frontend)  web-0 (shop/web)  ledger-0 (billing/ledger)
    node-b: batch-0 (shop/batch)        web-1 (shop/web)  ledger-1 (billing/ledger)

- no shuntd runs in any pod; frontend-0 to shop/web and batch-0 to
  billing/ledger (each Service has a pod on each node) are captured,
  balanced over both nodes, byte-exact; the receiving node's handshake lines
  name the calling pod's identity, the caller's name the destination pod's;
  shunt-ca issued each pod's identity to its node's agent only; the wire
  between the nodes carries only TLS records; `openssl s_client` against a
  pod's inbound port sees that pod's certificate;
- a pod created (a new identity) and deleted while traffic flows on the
  others: its traffic uses its identity, the others' loses nothing, its node
  lets it go;
- a pod leaving the mesh (label removed): its node stops capturing it, the
  others keep going; back in, captured again;
- node shuntd restarted under load: the load's errors stay within the
  restart, traffic resumes, the pods are served again with their identities
  and each pod's cgroup holds the capture once;
- node shuntd stopped (SIGTERM): a connection through it finishes while it
  drains; while it drains and after it exited, its pods stay captured (pins,
  programs on their cgroups, rules) and fail closed: a pod's connect is
  refused and a plaintext listener on the node sees nothing, a plaintext
  connect into a pod from outside is refused; a pod deleted meanwhile has
  its pins removed by the next agent, which adopts the others in place;
- a pod flooding connections while another pod of the same node measures
  its request latency (printed): no request of the quiet pod fails and its
  p99 stays within an explicit bound.

MESH_MODE=sidecar runs the same steps on sidecars (one shuntd per pod), the
baseline node mode must match; the node-only checks are then left out."""

import json
import os
import signal
import sys

import pytest

import nodelab
import shuntlib as sl
from nodelab import ECHO_PORT, HTTP_PORT, spiffe
from test_k8s_mesh import streams, tls_records_only

MODE = os.environ.get("MESH_MODE", "node")
if MODE not in ("node", "sidecar"):
    raise ValueError("MESH_MODE: node or sidecar, not %r" % MODE)
NODE = MODE == "node"
# The quiet pod's latency under a neighbour's flood: p50 at most this many
# times its p50 alone plus a floor, p99 likewise (floors for this shared
# 2-vCPU machine, where the flood's own handshakes take CPU from everyone).
FLOOD_P50_FACTOR, FLOOD_P50_FLOOR_MS = 5.0, 2.0
FLOOD_P99_FACTOR, FLOOD_P99_FLOOR_MS = 10.0, 250.0
DRAIN_S = 3  # node.identity_drain: an identity is dropped this long after its last pod
AGENT_DRAIN_S = 8  # the agents' drain_timeout


@pytest.fixture(scope="module")
def lab():
    sl.require_tool("openssl")
    sl.require_tool("tcpdump")
    sl.require_tool("bpftool")
    with nodelab.Lab() as lab:
        if NODE:
            # a drain long enough for a connection to finish through a stopping agent
            lab.start_node_agents(extra={"node.identity-drain": "%ds" % DRAIN_S,
                                         "drain-timeout": "%ds" % AGENT_DRAIN_S})
        else:
            lab.start_sidecars(redirect="ebpf")
        try:
            yield lab
        finally:
            sl.stop_checked(lab.daemons())
            for n in lab.nodes.values():
                n.agent = None
            for p in lab.pods.values():
                p.sidecar = None


def handshakes(d, way):
    out = set()
    key = "%s TLS handshake done: peer " % way
    for line in d.log_text().splitlines():
        if key in line:
            out.add(line.split(key, 1)[1].split(" ", 1)[0])
    return out


def served_by(lab, pod):
    """The shuntd that serves pod (its node's agent, or its sidecar)."""
    p = lab.pods[pod]
    return p.node.agent if NODE else p.sidecar


def serving(lab, node):
    """node's agent serves each meshed pod of its node: a pod is ready in its
    table before the setup thread has captured it."""
    lab.wait_captured({node: lab.nodes[node].agent})


def pods_table(lab, node):
    r = sl.shuntctl(lab.nodes[node].netns, "--json", "pods")
    assert r.returncode == 0, r.stderr
    return {p["name"]: p for p in json.loads(r.stdout)["pods"]}


def node_identities(lab, node):
    """{SPIFFE ID: entry} of the identities node's agent holds (/certs)."""
    ids = lab.nodes[node].agent.json("/certs")["node_identities"]["identities"]
    return {i["spiffe_id"]: i for i in ids}


def echo_ok(lab, client, ns, svc, conns=8, size=64 << 10):
    r = lab.client(client, "echo", lab.vip(ns, svc), ECHO_PORT, "--conns", conns, "--size", size)
    assert (r["ok"], r["bad"], r["bytes"]) == (conns, 0, conns * size), r
    return r


def balanced(lab, client, ns, svc, n=20):
    r = lab.client(client, "http", lab.vip(ns, svc), HTTP_PORT, "--requests", n)
    assert r["ok"] == n and not r["errors"], r
    want = {p.name for p in lab.pods.values() if p.app == svc and p.ns == ns}
    assert set(r["servers"]) == want, r
    assert min(r["servers"].values()) >= n // len(want) // 2, r
    return r["servers"]


def load(lab, client, ns, svc, seconds, per_conn=20, name=None):
    return lab.spawn_client(client, "load", lab.vip(ns, svc), ECHO_PORT, "--seconds", seconds,
                            "--size", 512, "--per-conn", per_conn, name=name)


def test_one_shuntd_per_node_and_none_in_pods(lab):
    for p in lab.pods.values():
        r = sl.run(["ip", "netns", "pids", p.netns.name])
        exes = {os.path.basename(os.readlink("/proc/%s/exe" % pid)) for pid in r.stdout.split()
                if os.path.exists("/proc/%s" % pid)}
        assert ("shuntd" in exes) == (not NODE), (p.name, exes)
    if NODE:
        for node in lab.nodes:
            table = pods_table(lab, node)
            want = {p.name for p in lab.meshed_pods() if p.node.name == node}
            assert set(table) == want, table
            for name in want:
                assert table[name]["state"] == "ready", table[name]
                assert table[name]["service_account"] == lab.pods[name].sa
                c = captured(lab, name)
                assert (c["capture"], c["identity"], c["error"]) == ("ebpf", "ready", None), c


@pytest.mark.parametrize("client,ns,svc", [("frontend-0", "shop", "web"),
                                           ("batch-0", "billing", "ledger")])
def test_captured_balanced_byte_exact_with_each_pods_identity(lab, client, ns, svc):
    src = lab.pods[client]
    balanced(lab, client, ns, svc)
    echo_ok(lab, client, ns, svc, conns=16, size=256 << 10)
    for p in lab.meshed_pods():
        if p.app == svc:
            d = served_by(lab, p.name)
            sl.wait_until(lambda d=d: src.identity in handshakes(d, "inbound"), 5,
                          what="%s's inbound handshake with %s" % (p.name, src.identity))
    dests = {p.identity for p in lab.meshed_pods() if p.app == svc}
    assert dests <= handshakes(served_by(lab, client), "outbound")


def test_identities_issued_per_pod_to_its_node(lab):
    audits = [a for a in lab.cp.ca.audits() if a.get("result") == "issued"]
    for p in lab.meshed_pods():
        if NODE:
            assert any(a["identity"] == p.identity and a.get("node") == p.node.name
                       and a.get("agent") == "%s/%s" % (nodelab.AGENT_NS, nodelab.AGENT_SA)
                       for a in audits), (p.name, audits)
        else:
            assert p.identity in {a["identity"] for a in audits}
    if NODE:
        # an agent asks for, and holds, exactly its pods' identities, each
        # with a certificate and its count of pods
        for node in lab.nodes:
            mine = {}
            for p in lab.meshed_pods():
                if p.node.name == node:
                    mine[p.identity] = mine.get(p.identity, 0) + 1
            got = {a["identity"] for a in audits if a.get("node") == node}
            assert got <= set(mine), (node, got - set(mine))
            held = node_identities(lab, node)
            assert set(held) == set(mine), (node, held)
            for sid, i in held.items():
                assert i["state"] == "ready" and i["pods"] == mine[sid], i
                assert i["store"]["current"]["identity"] == sid, i


def test_between_nodes_only_tls(lab):
    node_a = lab.nodes["node-a"].netns
    pcap = lab.path("wire/mesh.pcap")
    dump = sl.tcpdump(node_a, "e-node-b", pcap, "tcp and not port 16480")
    try:
        echo_ok(lab, "frontend-0", "shop", "web", conns=4, size=4096)
        balanced(lab, "frontend-0", "shop", "web", n=4)
        sl.pcap_sync(node_a, "e-node-b", pcap)
    finally:
        dump.stop()
    dirs = streams(pcap)
    assert any(data for data in dirs.values()), (dirs.keys(), dump.read_stderr())
    for key, data in dirs.items():
        if data:
            assert tls_records_only(data) > 0, key
            assert b"GET /lab" not in data and b"HTTP/1.1" not in data, key


def test_s_client_sees_each_pods_certificate(lab):
    for p in lab.meshed_pods():
        # from the other node's netns: not a pod, nothing captures the client
        other = next(n for n in lab.nodes.values() if n is not p.node)
        san, r = lab.served_certificate(other.netns, p.name)
        assert "URI:%s" % p.identity in san and "DNS:" not in san, (p.name, san, r.stderr)
        assert "Verify return code: 0" in r.stdout, r.stdout


def test_pod_created_and_deleted_while_traffic_flows(lab):
    bg = [load(lab, "frontend-0", "billing", "ledger", 25, name="bg-frontend"),
          load(lab, "batch-0", "billing", "ledger", 25, name="bg-batch")]
    try:
        # a new pod with a new identity on node-b, and a new endpoint of shop/web
        lab.add_pod("audit-0", "billing", "auditor", "node-b", None, "Burstable")
        lab.add_pod("web-2", "shop", "web", "node-b", "web", "BestEffort")
        lab.wait_mesh(lab.daemons())
        if NODE:
            sl.wait_until(lambda: {"audit-0", "web-2"} <= {
                n for n, p in pods_table(lab, "node-b").items() if p["state"] == "ready"}, 15,
                what="node-b serving audit-0 and web-2")
            serving(lab, "node-b")
        else:
            lab.start_sidecars_for(["audit-0", "web-2"], redirect="ebpf")
        assert balanced(lab, "frontend-0", "shop", "web", n=30)["web-2"] >= 5
        echo_ok(lab, "audit-0", "billing", "ledger", conns=6)
        auditor = spiffe("billing", "auditor")
        for name in ("ledger-0", "ledger-1"):
            d = served_by(lab, name)
            sl.wait_until(lambda d=d: auditor in handshakes(d, "inbound"), 5,
                          what="%s's handshake with %s" % (name, auditor))
        # deleted again while the others' traffic flows
        for name in ("web-2", "audit-0"):
            lab.delete_pod(name)
        lab.wait_mesh(lab.daemons())
        if NODE:
            sl.wait_until(lambda: not {"audit-0", "web-2"} & set(pods_table(lab, "node-b")), 15,
                          what="node-b letting audit-0 and web-2 go")
            # the auditor's certificate is dropped after the drain; web's stays (web-1)
            sl.wait_until(lambda: auditor not in node_identities(lab, "node-b"), DRAIN_S + 15,
                          what="node-b dropping %s" % auditor)
            assert node_identities(lab, "node-b")[spiffe("shop", "web")]["pods"] == 1
        balanced(lab, "frontend-0", "shop", "web")
    finally:
        results = [lab.client_result(p, timeout=60) for p in bg]
    for r in results:
        assert r["errors"] == 0 and r["ok"] > 50, r


def test_pod_leaving_the_mesh(lab):
    """ledger-1 loses the label: its node stops capturing it (a plaintext
    client reaches its echo server directly; before, strict mTLS inbound
    refused it), and the others reach it in plaintext as an unmeshed
    endpoint of billing/ledger, with no request lost; back in, it is
    captured and reached over mTLS again."""
    node_b = lab.nodes["node-b"].netns
    ledger1 = lab.pods["ledger-1"]

    def plain_echo():
        try:
            s = node_b.connect(ledger1.ip, ECHO_PORT, timeout=3)
        except OSError:
            return False
        try:
            return sl.echo(s, b"plain bytes\n", timeout=3) == b"plain bytes\n"
        except (OSError, sl.HarnessError):
            return False
        finally:
            s.close()

    assert not plain_echo()  # meshed, strict: plaintext is refused
    bg = load(lab, "frontend-0", "shop", "web", 15, name="bg-web")
    try:
        lab.set_meshed("ledger-1", False)
        if NODE:
            sl.wait_until(lambda: "ledger-1" not in pods_table(lab, "node-b"), 15,
                          what="ledger-1 out of node-b's table")
        else:
            lab.stop_sidecar("ledger-1")
        sl.wait_until(plain_echo, 15, what="ledger-1 no longer captured")
        lab.wait_mesh(lab.daemons())
        r = lab.client("batch-0", "http", lab.vip("billing", "ledger"), HTTP_PORT, "--requests",
                       10)
        assert r["ok"] == 10 and set(r["servers"]) == {"ledger-0", "ledger-1"}, r
        echo_ok(lab, "batch-0", "billing", "ledger")
        lab.set_meshed("ledger-1", True)
        if NODE:
            sl.wait_until(lambda: pods_table(lab, "node-b").get("ledger-1", {}).get("state")
                          == "ready", 15, what="ledger-1 back in node-b's table")
            serving(lab, "node-b")
        else:
            lab.start_sidecars_for(["ledger-1"], redirect="ebpf")
        sl.wait_until(lambda: not plain_echo(), 15, what="ledger-1 captured again")
        lab.wait_mesh(lab.daemons())
        balanced(lab, "batch-0", "billing", "ledger")
    finally:
        r = lab.client_result(bg, timeout=60)
    assert r["errors"] == 0 and r["ok"] > 50, r


def captured(lab, pod):
    """pod's entry in its node agent's GET /pods capture list (node mode)."""
    for p in lab.pods[pod].node.agent.json("/pods")["capture"]["pods"]:
        if p["name"] == pod:
            return p
    return None


def accepted(lab, pod):
    """Connections the shuntd serving pod accepted for it so far."""
    if NODE:
        c = captured(lab, pod)["connections"]
        return c["inbound"] + c["outbound"]
    return served_by(lab, pod).json("/status")["connections"]["accepted"]


def traffic_started(lab, pod, n):
    """Waits until n more connections of pod were accepted (a background
    client is under way)."""
    base = accepted(lab, pod)
    sl.wait_until(lambda: accepted(lab, pod) >= base + n, 15,
                  what="%d connections of %s" % (n, pod))


def cgroup_programs(cgroup):
    """(attach type, program name) of the programs attached to cgroup itself."""
    r = sl.run(["bpftool", "-j", "cgroup", "show", cgroup])
    return sorted((p.get("attach_type"), p.get("name")) for p in json.loads(r.stdout or "[]"))


def test_node_shuntd_restarted_under_load(lab):
    node_a_pods = [p for p in lab.meshed_pods() if p.node.name == "node-a"]
    before = {p.name: cgroup_programs(p.cgroup) for p in node_a_pods}
    bg = [load(lab, "frontend-0", "shop", "web", 20, name="r-frontend"),
          load(lab, "batch-0", "billing", "ledger", 20, name="r-batch")]
    try:
        traffic_started(lab, "frontend-0", 20)
        lab.restart_node("node-a")
        if NODE:
            sl.wait_until(lambda: all(p["state"] == "ready"
                                      for p in pods_table(lab, "node-a").values())
                          and len(pods_table(lab, "node-a")) == len(node_a_pods), 15,
                          what="node-a's pods ready again")
            serving(lab, "node-a")
    finally:
        results = [lab.client_result(p, timeout=60) for p in bg]
    for r in results:
        print("restart under load:", json.dumps(r))
        # errors only around the restart, and traffic resumed after it
        assert r["ok"] > 50 and r["ok_after_last_error"] > 20, r
        assert r["errors"] < r["ok"], r
    # the capture is there once, as before
    assert {p.name: cgroup_programs(p.cgroup) for p in node_a_pods} == before
    for client, ns, svc in (("frontend-0", "shop", "web"), ("batch-0", "billing", "ledger")):
        balanced(lab, client, ns, svc)
        echo_ok(lab, client, ns, svc)


# A TCP listener that prints a line per connection it accepts (argv: address, port).
PLAIN_LISTENER = """
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2])))
s.listen(64)
print("READY", flush=True)
while True:
    c, a = s.accept()
    print("ACCEPT", a[0], flush=True)
    c.close()
"""
# One connect (argv: address, port): prints "connected" or the errno's name.
CONNECT_ONCE = """
import errno, socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5).close()
    print("connected")
except OSError as e:
    print(errno.errorcode.get(e.errno, str(e)))
"""
PLAIN_PORT = 18099


def connect_once(run, host, port):
    r = run([sys.executable, "-c", CONNECT_ONCE, host, str(port)])
    return r.stdout.strip()


def fails_closed(lab, node):
    """node's pods, with no agent serving them, send nothing in plaintext."""
    n = lab.nodes[node]
    other = next(o for o in lab.nodes.values() if o is not n)
    for p in lab.meshed_pods():
        if p.node is not n:
            continue
        # outbound: captured onto the pod's own (closed) listener, refused
        assert connect_once(p.run, n.ip, PLAIN_PORT) == "ECONNREFUSED", p.name
        assert connect_once(p.run, lab.vip("shop", "web"), ECHO_PORT) == "ECONNREFUSED", p.name
        # inbound: redirected in the pod to its (closed) inbound listener
        assert connect_once(other.netns.run, p.ip, HTTP_PORT) == "ECONNREFUSED", p.name


def node_a_capture(lab):
    """node-a, its meshed pods and the programs attached to each one's cgroup."""
    node = lab.nodes["node-a"]
    mine = [p for p in lab.meshed_pods() if p.node is node]
    programs = {p.name: cgroup_programs(p.cgroup) for p in mine}
    assert all(programs.values()), programs
    return node, mine, programs


def test_node_agent_down_pods_stay_captured_and_fail_closed(lab):
    if not NODE:
        pytest.skip("node mode only: a sidecar's SIGTERM removes its own capture")
    node, mine, programs = node_a_capture(lab)
    agent = node.agent
    # a pod that will be deleted while its agent is away
    gone = lab.add_pod("gone-0", "shop", "web", "node-a")
    lab.wait_captured({"node-a": agent})
    gone_pins = os.path.join(lab.bpffs, "node-node-a", "pods", gone.uid)
    assert os.path.isdir(gone_pins)
    plain = sl.Proc(node.netns, [sys.executable, "-c", PLAIN_LISTENER, node.ip, str(PLAIN_PORT)],
                    "plain-listener", stdout_pipe=True)
    long = load(lab, "frontend-0", "shop", "web", 6, per_conn=10 ** 6, name="long-conn")
    try:
        assert plain.readline(20).strip() == "READY"
        traffic_started(lab, "frontend-0", 1)
        os.kill(agent.proc.popen.pid, signal.SIGTERM)
        sl.wait_until(lambda: "no new connections; draining" in agent.log_text(), 10,
                      what="node-a's agent draining")
        fails_closed(lab, "node-a")  # while it drains
        r = lab.client_result(long, timeout=60)
        long = None
        # the connection made through the old agent finished while it drained
        assert r["errors"] == 0 and r["ok"] > 50, r
        assert agent.proc.wait(30) == 0, agent.log_tail()
        assert "capture left in place" in agent.log_text(), agent.log_tail()
        fails_closed(lab, "node-a")  # no agent at all
        assert {p.name: cgroup_programs(p.cgroup) for p in mine} == programs
        for p in mine:
            assert os.path.isdir(os.path.join(lab.bpffs, "node-node-a", "pods", p.uid)), p.name
        lab.delete_pod("gone-0")
        agent.restart()
        lab.wait_captured({"node-a": agent})
        sl.wait_until(lambda: not os.path.exists(gone_pins), 10, what="gone-0's pins removed")
        assert "pod uid %s is not on this node any more" % gone.uid in agent.log_text()
        for client, ns, svc in (("frontend-0", "shop", "web"), ("batch-0", "billing", "ledger")):
            balanced(lab, client, ns, svc)
        # adopted in place: each cgroup holds the capture once, as before
        assert {p.name: cgroup_programs(p.cgroup) for p in mine} == programs
    finally:
        if long is not None:
            lab.client_result(long, timeout=60)
        plain.stop()
    assert "ACCEPT" not in plain.read_stdout(), plain.read_stdout()


def log_has(d, text):
    return any(text in ln.get("msg", "") for ln in d.log_lines())


def test_node_agent_replaced_by_takeover_under_load(lab):
    if not NODE:
        pytest.skip("node mode only: test_upgrade.py takes a sidecar over")
    node, mine, programs = node_a_capture(lab)
    old = node.agent
    wrap = lab.only_lab_cgroup()
    args = old.argv[len(wrap) + 1:]
    bg = [load(lab, "frontend-0", "shop", "web", 12, name="t-frontend"),
          load(lab, "batch-0", "billing", "ledger", 12, name="t-batch")]
    new = None
    try:
        traffic_started(lab, "frontend-0", 20)
        new = sl.Shuntd(node.netns, args + ["--takeover"], name="shuntd-node-a-new",
                        env={"NODE_NAME": "node-a"}, wrap=wrap)
        sl.wait_until(lambda: log_has(new, "takeover from pid %d complete" % old.proc.pid), 30,
                      what="the takeover of node-a's agent")
        node.agent = new
        # every pod's listeners handed over, in its namespace, and adopted
        assert log_has(new, "and the listeners of %d pods" % len(mine)), new.log_tail()
        lab.wait_captured({"node-a": new})
        for p in mine:
            assert log_has(new, "pod %s/%s captured" % (p.ns, p.name)), p.name
        assert sum(log_has(new, "pod %s/%s captured: outbound by eBPF on its cgroup, inbound "
                                "rules and the taken over agent's listeners" % (p.ns, p.name))
                   for p in mine) == len(mine), new.log_tail(40)
        assert old.proc.wait(30) == 0, old.log_tail()
        assert log_has(old, "capture left in place"), old.log_tail()
    finally:
        results = [lab.client_result(p, timeout=60) for p in bg]
        if new is not None and node.agent is not new:
            new.stop()
    for r in results:
        print("takeover under load:", json.dumps(r))
        # nothing refused or reset: the queued connects wait in the handed
        # over listeners until the new agent accepts them
        assert r["errors"] == 0 and r["ok"] > 50, r
    assert {p.name: cgroup_programs(p.cgroup) for p in mine} == programs
    for client, ns, svc in (("frontend-0", "shop", "web"), ("batch-0", "billing", "ledger")):
        balanced(lab, client, ns, svc)


def test_flooding_pod_does_not_starve_its_neighbour(lab):
    quiet = ("frontend-0", "shop", "web")  # node-a
    alone = lab.client(quiet[0], "load", lab.vip(quiet[1], quiet[2]), ECHO_PORT, "--seconds", 5,
                       "--size", 512, "--per-conn", 50)
    assert alone["errors"] == 0 and alone["ok"] > 50, alone
    # ledger-0, on the same node, opens connections as fast as it can
    flood = lab.spawn_client("ledger-0", "flood", lab.vip("shop", "web"), ECHO_PORT,
                             "--seconds", 12, "--hold", 2000, name="flood")
    try:
        traffic_started(lab, "ledger-0", 300)
        loaded = lab.client(quiet[0], "load", lab.vip(quiet[1], quiet[2]), ECHO_PORT,
                            "--seconds", 8, "--size", 512, "--per-conn", 50)
    finally:
        flooded = lab.client_result(flood, timeout=60)
    bound50 = FLOOD_P50_FACTOR * alone["p50_ms"] + FLOOD_P50_FLOOR_MS
    bound = FLOOD_P99_FACTOR * alone["p99_ms"] + FLOOD_P99_FLOOR_MS
    print("quiet pod alone: p50 %.2f ms p99 %.2f ms (%d round trips); under the flood "
          "(%d connections opened, %d refused): p50 %.2f ms p99 %.2f ms max %.2f ms "
          "(%d round trips); bounds p50 %.1f ms p99 %.1f ms" % (
              alone["p50_ms"], alone["p99_ms"], alone["ok"], flooded["opened"],
              flooded["errors"], loaded["p50_ms"], loaded["p99_ms"], loaded["max_ms"],
              loaded["ok"], bound50, bound))
    if NODE:
        c = captured(lab, "ledger-0")
        print("flooding pod's counters at its node agent:", json.dumps(c["connections"]),
              json.dumps(c["refused"]))
    assert flooded["opened"] > 500, flooded
    assert loaded["errors"] == 0 and loaded["ok"] > 50, loaded
    assert loaded["p50_ms"] <= bound50 and loaded["p99_ms"] <= bound, (alone, loaded, flooded)
