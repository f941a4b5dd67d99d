# SPDX-License-Identifier: Apache-2.0
"""HTTP/1.1 request-level proxying with eBPF capture: the application's
bytes reach shuntd through the sk_msg shortcut (where a short read does not
mean the socket is drained). curl runs in the application's cgroup; real
HTTP/1.1 backends in the remote pod. Run under the BPF lock:
flock /tmp/shunt-bpf.lock ctest -R integration.test_http1_ebpf"""

import collections
import json
import os

import pytest

import httpbackend
import shuntlib as sl
from ebpflib import (  # noqa: F401 - fixtures
    PINS,
    bpf_counters,
    cgroup,
    in_cgroup,
    mounts,
    start_ebpf_shuntd,
)

VIP = "10.96.4.10"
EP_ADDRS = sl.EP_ADDRS
PORT = 8081


@pytest.fixture(scope="module")
def env(topo, cgroup):  # noqa: F811 - the fixture imported above
    sl.require_tool("bpftool")
    procs, daemons = [], []
    try:
        topo.add_remote4()
        topo.route_vips()
        procs.append(
            httpbackend.spawn(
                topo.remote, ["%s:%d=ep%d" % (a, PORT, i) for i, a in enumerate(EP_ADDRS)]
            )
        )
        reg = sl.registry_file({"services": [sl.service("web", VIP, PORT, EP_ADDRS, "HTTP")]})
        d = start_ebpf_shuntd(
            topo.app, daemons, **{"service-discovery.file.path": reg, "log-level": "info"}
        )
        yield topo, d
    finally:
        sl.teardown(None, daemons, procs)


def curl(topo, args, timeout=30):
    r = in_cgroup(topo.app, ["curl", "-sS", "--max-time", str(timeout)] + args, timeout + 5)
    assert r.returncode == 0, r.stderr
    return r.stdout


def assert_shortcut_carried(before, connections, nbytes):
    """The connections were captured by connect4 and at least nbytes went
    through the sk_msg shortcut (counted by the BPF programs, in either
    direction): without it the same requests would pass over loopback TCP."""
    after = bpf_counters()
    assert after["redirected"] - before["redirected"] >= connections, (before, after)
    assert after["shortcut_bytes"] - before["shortcut_bytes"] >= nbytes, (before, after)


def test_keepalive_spread(env):
    topo, d = env
    before = bpf_counters()
    out = curl(topo, ["-w", "%{num_connects}\\n"] + ["http://%s/r%d" % (VIP, i) for i in range(6)])
    lines = [l for l in out.splitlines() if l.strip()]
    bodies = [json.loads(l) for l in lines if l.startswith("{")]
    assert sum(int(l) for l in lines if not l.startswith("{")) == 1
    assert collections.Counter(b["server"] for b in bodies) == {"ep0": 2, "ep1": 2, "ep2": 2}
    # Six requests and six answers, each well over 50 bytes.
    assert_shortcut_carried(before, 1, 12 * 50)


def test_large_bodies_both_ways(env):
    """A 4 MiB chunked upload and a 20 MB chunked download, whole."""
    topo, d = env
    path = os.path.join(sl.tmpdir(), "upload.bin")
    with open(path, "wb") as f:
        f.write(os.urandom(4 << 20))
    before = bpf_counters()
    out = curl(
        topo,
        ["-H", "Transfer-Encoding: chunked", "--data-binary", "@" + path, "http://%s/up" % VIP],
    )
    assert json.loads(out)["body_len"] == 4 << 20
    out = curl(topo, ["-o", "/dev/null", "-w", "%{size_download}", "http://%s/bytes/20000000" % VIP])
    assert int(out) == 20000000
    # Flow control sends part of the 24 MB over TCP while a reader lags
    # (from a third to two thirds seen): 2 MiB is a floor the shortcut beats.
    assert_shortcut_carried(before, 2, 2 << 20)
