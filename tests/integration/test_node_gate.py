# SPDX-License-Identifier: Apache-2.0
"""Node mode, the accept gate (docs/discovery.md, Accept gate): a pod set up
from scratch (not taken over) listens at once but accepts only once its
routes (the first discovery sync) and certificate are there; its connects
wait in the backlog until then, for at most node.accept_timeout, and fail
closed past it. The lab of test_node_capture (pods a and b on node-a, b's
echo behind Service b), with the API stand-in forbidding services and
endpointslices from the start, so the pods are listed and captured while
discovery cannot sync:
- a's connect to the Service is queued in a's outbound listener (connected,
  in the listener's accept queue, not accepted, nothing relayed);
- past node.accept_timeout it is reset, counted as a's refused.not_ready
  (GET /pods, metrics), and a fresh connect is reset at once;
- the forbid lifted: the sync opens the gate, a's echo through b comes back
  whole with mTLS."""

import sys
import time

import pytest

import shuntlib as sl
from test_node_capture import NS, SVC_PORT, VIP, ECHO_CLIENT, capture, capture_lab, run_in

ACCEPT_TIMEOUT_S = 6

# Connects, says CONNECTED, then reports what the connection gave.
QUEUED_CLIENT = r"""
import socket, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
s.sendall(b"ping")
print("CONNECTED", flush=True)
s.settimeout(60)
try:
    b = s.recv(16)
    print("data" if b else "eof", flush=True)
except ConnectionResetError:
    print("reset", flush=True)
except OSError as e:
    print("error %r" % e, flush=True)
"""

# One connect: "reset" (at connect or at the first read), "data" or "eof".
FRESH_CLIENT = r"""
import json, socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    s.settimeout(10)
    print(json.dumps("data" if s.recv(16) else "eof"))
except ConnectionResetError:
    print(json.dumps("reset"))
"""


@pytest.fixture(scope="module")
def lab():
    sl.require_tool("ss")
    with capture_lab("nodegate", [("ga", "10.244.1.21", "sa-a"), ("b", "10.244.1.22", "b")],
                     {"node.accept-timeout": "%ds" % ACCEPT_TIMEOUT_S},
                     forbid=("services", "endpointslices")) as (env, d, pods):
        yield env, d, {"a": pods["ga"], "b": pods["b"]}


def accept_queue(pod, port):
    """The connects waiting in pod's listener on port (ss: Recv-Q of a LISTEN socket)."""
    n = 0
    for ln in pod.netns.run(["ss", "-Htln", "sport", "= :%d" % port]).stdout.splitlines():
        n += int(ln.split()[1])
    return n


def test_gate_waits_then_fails_closed_then_opens(lab):
    env, d, pods = lab
    a = pods["a"]
    pa = sl.wait_until(lambda: (lambda p: p if p and p["capture"] == "ebpf" else None)(
        capture(d).get("ga")), 60, interval=0.2, what="pod ga captured")
    if pa["gate"] != "waiting":
        pytest.fail("ga's gate is %s before any discovery sync: %s" % (pa["gate"], pa))
    assert pa["accepting"] is False
    client = sl.Proc(a.netns, a.in_cgroup([sys.executable, "-c", QUEUED_CLIENT, VIP,
                                           str(SVC_PORT)]), "ga-queued", stdout_pipe=True)
    try:
        line = client.readline(20)
        assert line and line.startswith("CONNECTED"), client.read_stderr()
        # queued, not accepted: while the gate waits nothing is relayed
        assert accept_queue(a, 15002) >= 1
        now = capture(d)["ga"]
        assert now["gate"] == "waiting", now
        assert now["connections"]["outbound"] == 0
        # past node.accept_timeout: reset, not relayed (fail closed)
        assert client.readline(ACCEPT_TIMEOUT_S + 40).strip() == "reset"
    finally:
        client.stop()
    now = capture(d)["ga"]
    assert now["gate"] == "refusing", now
    assert now["refused"]["not_ready"] >= 1
    assert now["connections"]["outbound"] == 0
    # a fresh connect is reset at once (no wait in the backlog any more)
    assert run_in(a, FRESH_CLIENT, VIP, SVC_PORT) == "reset"
    metrics = sl.parse_metrics(d.metrics_text())
    assert metrics[("shunt_node_pod_refused_total",
                    (("namespace", NS), ("pod", "ga"), ("reason", "not_ready")))] >= 2
    assert any("pod %s/ga: no routes" % NS in ln.get("msg", "") for ln in d.log_lines())
    # the sync opens the gate
    env.ctl("POST", "/inject", {"forbid": []})
    sl.wait_until(lambda: capture(d)["ga"]["gate"] == "open", 60, interval=0.2,
                  what="ga's gate open after the sync")
    assert capture(d)["ga"]["accepting"] is True
    time.sleep(0.5)  # the pods' proxies take the route table on their next tick
    size = 100000
    r = sl.wait_until(lambda: (lambda x: x if x["same"] else None)(
        run_in(a, ECHO_CLIENT, VIP, SVC_PORT, size)), 15, interval=0.5,
        what="ga's echo through b")
    assert r["sent"] == r["got"] == size
