# SPDX-License-Identifier: Apache-2.0
"""The two-sidecar mesh of the request-level and certificate tests
(test_access_log, test_tracing, test_golden_metrics, test_xfcc,
test_mtls_rotation, test_ca_source): a Topology with the services' virtual
addresses routed, backends in the remote pod, and two shuntd over mutual
TLS -- A in the app pod (the client's, outbound, with the file registry)
and B in the remote pod (the server's, inbound) -- as
shuntlib.start_mtls_pair starts them.

    with sidecar_pair.mesh(("web", "web2")) as m:
        m.procs.append(...)                      # more processes to stop
        a, b = m.start(registry, b_flags=...)    # the two sidecars
        yield m.topo, a, b

Everything started (backends, m.procs, daemons, the topology) is stopped
and removed when the block ends (Mesh.close), whatever happened."""

import contextlib
import json
import os
import sys

import httpbackend
import shuntlib as sl
from shuntlib import Topology as T

GRPCPEER = os.path.join(sl.HERE, "grpcpeer.py")
H2ECHO = os.path.join(sl.HERE, "h2echo.py")
H1_PORT, H2_PORT, RPC_PORT, ECHO_PORT = 8080, 8082, 50051, 7000

# name -> how it starts in a pod: each backend on T.REMOTE4, named as its
# service (HTTP/1.1 httpbackend.py, HTTP/2 h2echo.py, grpcio, TCP echo);
# "web-peer" is a "web" of peers.py's http kind (one of the two at a time).
BACKENDS = {
    "web": lambda pod: httpbackend.spawn(pod, ["%s:%d=web" % (T.REMOTE4, H1_PORT)]),
    "web-peer": lambda pod: pod.spawn_peer("http", "web", ["%s:%d" % (T.REMOTE4, H1_PORT)]),
    "web2": lambda pod: pod.spawn_ready(
        [H2ECHO, "--name", "web2", "--listen", "%s:%d" % (T.REMOTE4, H2_PORT)], "h2echo"),
    "rpc": lambda pod: pod.spawn_ready(
        [sys.executable, GRPCPEER, "server", "--name", "rpc", "--listen",
         "%s:%d" % (T.REMOTE4, RPC_PORT)], "grpc-rpc", 20),
    "echo": lambda pod: pod.spawn_peer("echo", "echo", ["%s:%d" % (T.REMOTE4, ECHO_PORT)]),
}  # fmt: skip


class Mesh:
    """topo with the named BACKENDS started (in that order) in the remote
    pod, any other process to stop in procs, the daemons that started, and
    a temporary directory (tmp) for the registry and CA. close() ends it."""

    def __init__(self, backends=()):
        self.topo = T()
        self.procs = []
        self.daemons = []
        self.tmp = None
        try:
            self.tmp = sl.tmpdir()
            self.topo.route_vips()
            for name in backends:
                self.procs.append(BACKENDS[name](self.topo.remote))
        except BaseException:
            self.close()
            raise

    def close(self):
        """Its daemons stop_checked, its procs stopped, the topology
        deleted (shuntlib.teardown)."""
        sl.teardown(self.topo, self.daemons, self.procs)

    def start(self, registry, a_flags=None, b_flags=None, b_config=None, built_in_ca=True):
        """Writes registry ({"services": [...]}) as A's file registry and
        starts A then B (shuntlib.start_mtls_pair, b_config B's config
        file). built_in_ca: both use the built-in CA in tmp/ca; without it,
        the flags name each side's certificate files. Returns (a, b)."""
        reg = sl.registry_file(registry, self.tmp)
        return sl.start_mtls_pair(
            self.topo,
            self.daemons,
            os.path.join(self.tmp, "ca") if built_in_ca else None,
            a_flags=dict({"service-discovery.file.path": reg}, **(a_flags or {})),
            b_flags=b_flags,
            b_config=b_config,
        )

    def curl_ok(self, vip, path="/r"):
        """Whether curl in the app pod gets the web backend's answer for path
        on vip:H1_PORT."""
        r = self.topo.app.curl(["-s", "-m", "5", "http://%s:%d%s" % (vip, H1_PORT, path)])
        return r.returncode == 0 and json.loads(r.stdout or "{}").get("server") == "web"


@contextlib.contextmanager
def mesh(backends):
    """A Mesh(backends), closed at the end of the block."""
    m = Mesh(backends)
    try:
        yield m
    finally:
        m.close()
