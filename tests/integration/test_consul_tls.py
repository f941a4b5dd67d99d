# SPDX-License-Identifier: Apache-2.0
"""Consul over HTTPS: the agent stand-in (consul_standin.py) serves its API
over TLS and requires a client certificate, as an agent with an https port
and verify_incoming does. shuntd reaches it with
service_discovery.consul.ca_file, cert_file and key_file and learns the
catalog; an agent whose certificate another CA signed is refused with one
clear line naming ca_file, and without a client certificate the agent
refuses shuntd: no endpoint is learnt from either."""

import json
import os
import sys

import pytest

import mtls_pki as pki
import shuntlib as sl
from shuntlib import Topology as T

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "consul_standin.py")
API, CTL = 8501, 8601
TOKEN = "tls-token-1"
EP = "10.77.0.2"


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    tmp = str(tmp_path_factory.mktemp("consul-tls"))
    ca, other = pki.CA("consul ca"), pki.CA("someone else")
    pki.write_bundle(os.path.join(tmp, "ca.pem"), ca)
    pki.write_bundle(os.path.join(tmp, "other-ca.pem"), other)
    srv_pem, srv_key, _, _ = ca.issue_files(tmp, "server", None, dns="server.dc1.consul",
                                            ip="127.0.0.1")
    cli_pem, cli_key, _, _ = ca.issue_files(tmp, "client", None, dns="shuntd.dc1.consul")
    topo = T()
    agent = None
    try:
        agent = topo.app.spawn_ready(
            [
                sys.executable, STANDIN,
                "--listen", "127.0.0.1:%d" % API,
                "--control", "127.0.0.1:%d" % CTL,
                "--token", TOKEN,
                "--max-wait", "1",
                "--lifetime", "300",
                "--tls-cert", srv_pem, "--tls-key", srv_key,
                "--tls-client-ca", os.path.join(tmp, "ca.pem"),
            ],
            "consul-standin-tls",
        )
        status, _, body = topo.app.http(
            "127.0.0.1", CTL, "POST", "/control",
            body=json.dumps({
                "op": "set_service", "name": "web",
                "instances": [{"id": "web-0", "node": "node-0", "node_address": EP,
                               "address": EP, "port": 8081, "tags": [], "status": "passing"}],
            }).encode(),
            headers={"Content-Type": "application/json"},
        )
        assert status == 200, body
        files = {"ca": os.path.join(tmp, "ca.pem"), "other": os.path.join(tmp, "other-ca.pem"),
                 "cert": cli_pem, "key": cli_key}
        yield topo, files
    finally:
        if agent:
            agent.stop()
        topo.delete()


def start(topo, **consul):
    flags = {
        "service-discovery.type": "consul",
        "service-discovery.consul.address": "https://127.0.0.1:%d" % API,
        "service-discovery.consul.token": TOKEN,
    }
    flags.update({"service-discovery.consul." + k: v for k, v in consul.items()})
    d = sl.Shuntd(topo.app, sl.shuntd_args(**flags))
    d.wait_ready()
    return d


def web_addrs(d):
    for svc in d.json("/endpoints")["services"]:
        if svc["name"] == "web":
            return [e["address"] for e in svc["endpoints"]]
    return []


def last_error(d):
    return d.json("/debug/cache")["backend"]["state"]["last_error"] or ""


def test_https_with_client_certificate(env):
    topo, f = env
    d = start(topo, ca_file=f["ca"], cert_file=f["cert"], key_file=f["key"])
    try:
        sl.wait_until(lambda: web_addrs(d) == [EP], 15, what="web learnt over https")
        state = d.json("/debug/cache")["backend"]["state"]
        assert state["address"] == "https://127.0.0.1:%d" % API
        assert state["last_error"] is None and not state["stale"]
    finally:
        d.stop()


def test_wrong_ca_is_refused_with_one_line(env):
    topo, f = env
    d = start(topo, ca_file=f["other"], cert_file=f["cert"], key_file=f["key"])
    try:
        want = ("TLS: the agent's certificate is not trusted by "
                "service_discovery.consul.ca_file " + f["other"])
        sl.wait_until(lambda: want in last_error(d), 15, what="the untrusted agent refused")
        lines = [l for l in d.log_lines() if want in l.get("msg", "")]
        assert lines and all("\n" not in l["msg"] for l in lines), lines
        assert web_addrs(d) == []
    finally:
        d.stop()


def test_no_client_certificate_is_refused(env):
    topo, f = env
    d = start(topo, ca_file=f["ca"])
    try:
        want = ("TLS: the agent refused the connection; it may require a client "
                "certificate and service_discovery.consul.cert_file is empty")
        sl.wait_until(lambda: want in last_error(d), 15, what="the agent refusing shuntd")
        assert web_addrs(d) == []
    finally:
        d.stop()
