# SPDX-License-Identifier: Apache-2.0
"""HTTP/2 streams answered by shuntd itself (a service with no endpoint):
each is counted, but the log gets at most a line a second per worker, as
for HTTP/1.1: a dead service under load must not flood the log."""

import pytest

import shuntlib as sl
from shuntlib import Topology as T

VIP = "10.96.7.20"
STREAMS = 300


@pytest.fixture(scope="module")
def env():
    topo = T()
    daemon = None
    try:
        topo.route_vips()
        reg = {"services": [sl.service("empty", VIP, 8098, [], protocol="HTTP2")]}
        daemon = sl.Shuntd(
            topo.app,
            sl.shuntd_args(
                **{"service-discovery.file.path": sl.registry_file(reg), "log-level": "info"}
            ),
        ).wait_ready()
        yield topo, daemon
    finally:
        sl.teardown(topo, [daemon])


def test_local_answers_do_not_flood_the_log(env):
    topo, d = env
    before = d.metric("shunt_http2_local_responses_total", status="503", default=0)
    r = topo.app.run(
        ["h2load", "-n", str(STREAMS), "-c", "1", "-m", "10", "http://%s:80/" % VIP],
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    d.wait_metric(
        "shunt_http2_local_responses_total", lambda v: v >= before + STREAMS, timeout=10, status="503"
    )
    lines = [l for l in d.log_lines() if "answered locally" in l.get("msg", "")]
    # At most a line a second per worker: far fewer than the streams.
    assert 1 <= len(lines) < STREAMS // 10, len(lines)
