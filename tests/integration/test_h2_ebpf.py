# SPDX-License-Identifier: Apache-2.0
"""gRPC proxied per stream with eBPF capture: the application's bytes reach
shuntd through the sk_msg shortcut (where a short read does not mean the
socket is drained) and the HTTP/2 engine takes the connection over. The
grpcio client runs in the application's cgroup; three grpcio servers in the
remote pod. Run under the BPF lock:
flock /tmp/shunt-bpf.lock ctest -R integration.test_h2_ebpf"""

import json
import sys

import pytest

import shuntlib as sl
from ebpflib import (  # noqa: F401 - fixtures
    bpf_counters,
    cgroup,
    in_cgroup,
    mounts,
    start_ebpf_shuntd,
)
from test_http1_ebpf import assert_shortcut_carried
from test_grpc import GRPCPEER, grpc_server, service

VIP = "10.96.5.10"  # GRPC declared
VIP_SNIFF = "10.96.5.11"  # sniffed
EP_ADDRS = sl.EP_ADDRS
PORT = 50051


@pytest.fixture(scope="module")
def env(topo, cgroup):  # noqa: F811 - the fixture imported above
    sl.require_tool("bpftool")
    daemons = []
    try:
        topo.add_remote4()
        topo.route_vips()
        for i, a in enumerate(EP_ADDRS):
            grpc_server(topo.remote, "ep%d" % i, a)
        reg = sl.registry_file(
            {
                "services": [
                    service("greeter", VIP, PORT, "GRPC"),
                    service("greeter-sniffed", VIP_SNIFF, PORT),
                ]
            }
        )
        d = start_ebpf_shuntd(
            topo.app, daemons, **{"service-discovery.file.path": reg, "log-level": "info"}
        )
        yield topo, d
    finally:
        sl.stop_checked(daemons)


def client(topo, vip, *args, timeout=120):
    argv = [sys.executable, GRPCPEER, "client", "--target", "%s:80" % vip] + [str(a) for a in args]
    r = in_cgroup(topo.app, argv, timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


@pytest.mark.parametrize("vip", [VIP, VIP_SNIFF])
def test_unary_spread_over_the_shortcut(env, vip):
    topo, d = env
    before = bpf_counters()
    out = client(topo, vip, "unary", "--n", 150, "--size", 3000)
    assert out["codes"] == {"OK": 150}, out
    # One channel; 150 requests of 3000 bytes each way.
    assert_shortcut_carried(before, 1, 150 * 3000)
    assert sorted(out["servers"]) == ["ep0", "ep1", "ep2"], out
    assert all(40 <= n <= 60 for n in out["servers"].values()), out


def test_bidi_large_messages_over_the_shortcut(env):
    """Eight 1 MB messages each way per call, ten calls on one channel: the
    shortcut's bytes and TCP's are read until EAGAIN, nothing is lost."""
    topo, d = env
    before = bpf_counters()
    out = client(topo, VIP, "bidi", "--calls", 10, "--messages", 8, "--size", 1000000)
    assert out["codes"] == {"OK": 10}, out
    # 80 MB each way; flow control sends part of it over TCP while a reader
    # lags: a tenth is a floor the shortcut beats.
    assert_shortcut_carried(before, 1, 16_000_000)
    assert all(len(seen) == 8 and len(set(seen)) == 1 for seen in out["calls"]), out
    assert d.metric("shunt_http2_streams_active") == 0
