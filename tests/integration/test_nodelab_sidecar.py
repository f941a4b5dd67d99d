# SPDX-License-Identifier: Apache-2.0
"""The node lab (nodelab.py) with sidecars: one shuntd per meshed pod, as
shunt runs today, in each pod's network namespace with its own capture and
the identity of its pod's service account from shunt-ca. The baseline that
node mode (test_node_mesh.py) must match, and the sidecar half of
bench/node_bench.sh.

    node-a: frontend-0 (shop/frontend)  web-0 (shop/web)  ledger-0 (billing/ledger)
    node-b: batch-0 (shop/batch)        web-1 (shop/web)  ledger-1 (billing/ledger)

- each sidecar holds its pod's SPIFFE ID, issued by shunt-ca (audit lines of
  the sidecar and of the CA);
- frontend-0 (node-a) to shop/web and batch-0 (node-b) to billing/ledger:
  byte-exact echoes balanced over both nodes' endpoints, so within a node and
  across nodes; the receiving sidecars' handshake lines name the caller's
  exact identity;
- between the nodes the wire carries only TLS records;
- openssl s_client against a pod's inbound port sees that pod's certificate;
- shuntd in node mode finds the lab's pods as a kubelet leaves them;
- the lab leaves no namespace, cgroup, mount or pin behind."""

import json
import os

import pytest

import nodelab
import shuntlib as sl
from nodelab import ECHO_PORT, HTTP_PORT
from test_k8s_mesh import streams, tls_records_only
from test_node_pods import cgroup2_root


@pytest.fixture(scope="module")
def lab():
    sl.require_tool("openssl")
    sl.require_tool("tcpdump")
    with nodelab.Lab() as lab:
        lab.start_sidecars()
        try:
            yield lab
        finally:
            lab.stop_sidecars()


def netns_names():
    """This run's network namespaces (other runs may share the machine)."""
    return {line.split()[0] for line in sl.run(["ip", "netns", "list"]).stdout.splitlines()
            if line.startswith(sl.RUN_PREFIX)}


def handshakes(d, way):
    """The peers d's handshake lines name, for way (inbound or outbound)."""
    out = set()
    for line in d.log_text().splitlines():
        key = '%s TLS handshake done: peer ' % way
        if key in line:
            out.add(line.split(key, 1)[1].split(" ", 1)[0])
    return out


def test_each_sidecar_holds_its_pods_identity(lab):
    for p in lab.meshed_pods():
        assert p.sidecar.json("/certs")["identity"] == p.identity
        sl.wait_until(lambda p=p: "certificate issued by shunt-ca" in p.sidecar.log_text()
                      and p.identity in p.sidecar.log_text(), 5,
                      what="the issuance audit line of " + p.name)
    issued = {a.get("identity") for a in lab.cp.ca.audits() if a.get("result") == "issued"}
    assert {p.identity for p in lab.meshed_pods()} <= issued, lab.cp.ca.audits()


@pytest.mark.parametrize("client,ns,svc", [("frontend-0", "shop", "web"),
                                           ("batch-0", "billing", "ledger")])
def test_byte_exact_within_and_across_nodes(lab, client, ns, svc):
    src = lab.pods[client]
    vip = lab.vip(ns, svc)
    # balanced over the service's pods on both nodes (round robin)
    r = lab.client(client, "http", vip, HTTP_PORT, "--requests", "20")
    assert r["ok"] == 20 and not r["errors"], r
    servers = {p.name for p in lab.pods.values() if p.app == svc}
    assert set(r["servers"]) == servers and min(r["servers"].values()) >= 5, r
    # byte-exact echoes, 16 connections of 256 KiB
    r = lab.client(client, "echo", vip, ECHO_PORT, "--conns", "16", "--size", str(256 << 10))
    assert (r["ok"], r["bad"]) == (16, 0), r
    assert r["bytes"] == 16 * (256 << 10)
    # the receiving sidecars, on both nodes, saw the caller's exact identity
    for p in lab.pods.values():
        if p.app == svc:
            sl.wait_until(lambda p=p: src.identity in handshakes(p.sidecar, "inbound"), 5,
                          what="%s's handshake with %s" % (p.name, src.identity))
    assert {p.identity for p in lab.pods.values() if p.app == svc} <= \
        handshakes(src.sidecar, "outbound")


def test_between_nodes_only_tls(lab):
    node_a = lab.nodes["node-a"].netns
    pcap = lab.path("wire/nodes.pcap")
    dump = sl.tcpdump(node_a, "e-node-b", pcap, "tcp")
    try:
        r = lab.client("frontend-0", "echo", lab.vip("shop", "web"), ECHO_PORT, "--conns", "4",
                       "--size", "4096")
        assert (r["ok"], r["bad"]) == (4, 0), r
        r = lab.client("frontend-0", "http", lab.vip("shop", "web"), HTTP_PORT,
                       "--requests", "4")
        assert r["ok"] == 4 and "web-1" in r["servers"], r
        sl.pcap_sync(node_a, "e-node-b", pcap)
    finally:
        dump.stop()
    dirs = streams(pcap)
    pods_b = {p.ip for p in lab.pods.values() if p.node.name == "node-b"}
    crossed = {k: v for k, v in dirs.items() if k[0] in pods_b and v}
    assert crossed, (dirs.keys(), dump.read_stderr())
    for key, data in dirs.items():
        if data:
            assert tls_records_only(data) > 0, key
            assert b"GET /lab" not in data and b"HTTP/1.1" not in data, key


def test_s_client_sees_each_pods_certificate(lab):
    src = lab.pods["frontend-0"]
    for p in lab.meshed_pods():
        if p is src:
            continue
        san, r = lab.served_certificate(src.netns, p.name)
        assert "URI:%s" % p.identity in san and "DNS:" not in san, (p.name, san, r.stderr)
        assert "Verify return code: 0" in r.stdout, r.stdout


def test_lab_pods_as_node_mode_sees_them_and_nothing_left_behind():
    """A lab of its own: sidecars with eBPF capture on the pods' cgroups
    relay; then each node's shuntd in node mode (pod table only, no
    capture) finds exactly its node's pods in kubelet's layouts (systemd
    driver on node-a, cgroupfs on node-b), with their network namespaces,
    service accounts and IPs; closed, no namespace, cgroup, mount or pin of
    it remains."""
    before = netns_names()
    with nodelab.Lab(pods=nodelab.PODS[:2] + nodelab.PODS[3:4]) as lab:
        lab.start_sidecars(redirect="ebpf")
        r = lab.client("frontend-0", "echo", lab.vip("shop", "web"), ECHO_PORT, "--conns", "2",
                       "--size", "1024")
        assert r["ok"] == 2, r
        made = [p.rel for p in lab.pods.values()]
        lab.stop_sidecars()
        lab.start_node_agents(redirect="off")
        for name, n in lab.nodes.items():
            want = {p.name: p for p in lab.pods.values() if p.node is n}

            def table(n=n, want=want):
                r = sl.shuntctl(n.netns, "--json", "pods")
                got = {p["name"]: p for p in json.loads(r.stdout)["pods"]}
                return got if set(got) == set(want) and all(
                    p["state"] == "ready" for p in got.values()) else None

            got = sl.wait_until(table, 15, what="%s's pods ready in its table" % name)
            for pod_name, p in want.items():
                row = got[pod_name]
                assert (row["cgroup"], row["service_account"], row["ips"], row["uid"]) == (
                    p.rel, p.sa, [p.ip], p.uid), row
                assert row["netns_inode"] == os.stat("/run/netns/" + p.netns.name).st_ino
        lab.stop_node_agents()
    after = netns_names()
    assert after <= before, after - before
    with open("/proc/self/mountinfo") as f:
        mounts = f.read()
    assert lab.cgroot not in mounts and lab.bpffs not in mounts
    host_cg = cgroup2_root()  # the host's (the lab's own mount is gone)
    for rel in made:
        assert not os.path.exists(os.path.join(host_cg, rel)), rel
    assert not any(p.startswith(lab.tag) for p in os.listdir("/run"))
