# SPDX-License-Identifier: Apache-2.0
"""HTTP/2 header blocks of every size cross shuntd whole: a request and a
response with more fields than h2proxy keeps on its stack (32) take the
allocated path, a small block the stack; nginx (h2c) behind, curl in
front."""

import os

import pytest

import shuntlib as sl
from shuntlib import Topology as T

VIP = "10.96.7.40"
PORT = 8095
MANY = 40

NGINX_CONF = """
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 64; }}
http {{
    log_format q '$request_method $status q0=$http_x_q0 qlast=$http_x_q{last}';
    access_log {dir}/access.log q;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen {addr}:{port} http2;
        location = /many {{
{adds}
            return 200 "many\\n";
        }}
        location = /few {{ return 200 "few\\n"; }}
    }}
}}
"""


@pytest.fixture(scope="module")
def env():
    topo = T()
    daemon = None
    nginx = None
    try:
        topo.route_vips()
        d = sl.tmpdir()
        os.chmod(d, 0o755)
        adds = "\n".join('            add_header X-R%d "v%d";' % (i, i) for i in range(MANY))
        conf = NGINX_CONF.format(dir=d, addr=T.REMOTE4, port=PORT, adds=adds, last=MANY - 1)
        nginx = sl.spawn_nginx(topo.remote, d, conf, T.REMOTE4, PORT)
        reg = {"services": [sl.service("hdrs", VIP, PORT, [T.REMOTE4], protocol="HTTP2")]}
        daemon = sl.Shuntd(
            topo.app,
            sl.shuntd_args(
                **{"service-discovery.file.path": sl.registry_file(reg), "log-level": "info"}
            ),
        ).wait_ready()
        yield topo, daemon, os.path.join(d, "access.log")
    finally:
        sl.teardown(topo, [daemon], [nginx] if nginx else [])


def test_many_and_few_header_fields(env):
    topo, d, access = env
    hdrs = []
    for i in range(MANY):
        hdrs += ["-H", "X-Q%d: q%d" % (i, i)]
    r = topo.app.curl(
        ["--http2-prior-knowledge", "-i"] + hdrs + ["http://%s:80/many" % VIP], timeout=20
    )
    assert r.stdout.startswith("HTTP/2 200"), r.stdout + r.stderr
    for i in range(MANY):
        assert "x-r%d: v%d" % (i, i) in r.stdout.lower(), r.stdout
    r = topo.app.curl(["--http2-prior-knowledge", "-i", "http://%s:80/few" % VIP], timeout=20)
    assert r.stdout.startswith("HTTP/2 200") and "few" in r.stdout, r.stdout + r.stderr

    def logged():
        with open(access) as f:
            return f.read()

    sl.wait_until(lambda: "qlast=q%d" % (MANY - 1) in logged(), 5, what="nginx access line")
    assert "q0=q0 qlast=q%d" % (MANY - 1) in logged(), logged()
