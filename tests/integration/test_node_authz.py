# SPDX-License-Identifier: Apache-2.0
"""Node mode, each pod's own authorization policies (issue 16; README, Node
mode; node/policies.h): one node agent (node-a of nodelab) serves pods of
two namespaces, shop (frontend-0, web-0) and billing (ledger-0). Every
inbound connection to a pod is decided by the AuthorizationPolicy objects
of THAT pod's namespace whose selector matches THAT pod's labels, never by
the agent's own namespace's:

- shop/web-only-frontend (selector app=web, port 8080, allow
  shop/frontend): openssl s_client with a shop/tester certificate is refused
  at web-0 (not_allowed: an audit line naming the pod, counted per pod in
  shunt_node_pod_authz_decisions_total) and served by ledger-0 (billing has
  no policy); curl from frontend-0 (captured, mTLS with its own identity)
  reaches both;
- deny-everything policies in the agent's namespace (shunt-system) and in
  default apply to no pod;
- GET /pods and `shuntctl pods` show each pod's set;
- web-0 relabelled -> its set is chosen again (tester admitted); a policy
  added in billing by a watch event -> ledger-0 refuses the tester, and
  admits it again once deleted."""

import json
import subprocess

import pytest

import nodelab
import shuntlib as sl
from nodelab import HTTP_PORT

PODS = (
    ("frontend-0", "shop", "frontend", "node-a", None, "Burstable"),
    ("web-0", "shop", "web", "node-a", "web", "Guaranteed"),
    ("ledger-0", "billing", "ledger", "node-a", "ledger", "BestEffort"),
)
WEB_ONLY_FRONTEND = {"selector": {"matchLabels": {"app": "web"}}, "ports": [HTTP_PORT],
                     "allow": [{"namespace": "shop", "service_account": "frontend"}]}
DENY_ALL = {"ports": ["*"], "deny": [{"trust_domain": nodelab.TD}]}
TESTER = nodelab.spiffe("shop", "tester")


def policy(lab, ns, name, spec, etype="ADDED"):
    lab.apply("authorizationpolicies", {"metadata": {"name": name, "namespace": ns},
                                        "spec": spec}, etype)


@pytest.fixture(scope="module")
def lab():
    sl.require_tool("openssl")
    sl.require_tool("curl")
    sl.require_tool("bpftool")
    sl.require_tool("promtool")
    with nodelab.Lab(pods=PODS) as lab:
        for ns in ("default",):
            lab.apply("namespaces", {"metadata": {"name": ns}})
        policy(lab, "shop", "web-only-frontend", WEB_ONLY_FRONTEND)
        # The agent's own namespace, and the one a shuntd outside a pod
        # takes for its own: neither is a pod's.
        policy(lab, nodelab.AGENT_NS, "agent-deny-all", DENY_ALL)
        policy(lab, "default", "default-deny-all", DENY_ALL)
        lab.start_node_agents(nodes=["node-a"])
        try:
            yield lab
        finally:
            lab.stop_node_agents()


def agent(lab):
    return lab.nodes["node-a"].agent


def s_client_ok(lab, pod):
    """openssl s_client from node-b's namespace (nothing captures it) with
    a shop/tester certificate to pod's inbound port, asking for port 8080:
    True when the application answered."""
    cert, key = lab.tester_cert()
    r = lab.nodes["node-b"].netns.run(
        ["openssl", "s_client", "-connect", "%s:15001" % lab.pods[pod].ip, "-servername",
         "port-%d.%s" % (HTTP_PORT, nodelab.TD), "-tls1_3", "-ign_eof", "-quiet",
         "-CAfile", lab.bundle, "-cert", cert, "-key", key],
        timeout=20, check=False, input="GET /t HTTP/1.0\r\n\r\n")
    return "HTTP/1.1 200" in r.stdout or "HTTP/1.0 200" in r.stdout


def curl_from(lab, src, ns, svc):
    r = lab.pods[src].run(["curl", "-sS", "-m", "10", "-o", "/dev/null", "-w", "%{http_code}",
                           "http://%s:%d/c" % (lab.vip(ns, svc), HTTP_PORT)], timeout=20)
    return r.stdout.strip()


def pod_authz(lab, name):
    pods = {p["name"]: p for p in agent(lab).json("/pods")["pods"]}
    return pods[name].get("authz")


def audits(lab):
    return [m for m in sl.audit_lines(agent(lab), "not_allowed") if TESTER in m] + \
        [m for m in sl.audit_lines(agent(lab), "denied_by_policy") if TESTER in m]


def decisions(lab, pod, decision):
    return agent(lab).metric("shunt_node_pod_authz_decisions_total", 0, namespace=lab.pods[pod].ns,
                             pod=pod, decision=decision)


def test_each_pod_decided_by_its_own_policies(lab):
    assert pod_authz(lab, "web-0")["policies"] == ["kubernetes/web-only-frontend"]
    assert pod_authz(lab, "web-0")["state"] == "applied"
    assert pod_authz(lab, "ledger-0")["policies"] == []
    assert pod_authz(lab, "frontend-0")["policies"] == []
    before = decisions(lab, "web-0", "not_allowed")
    # a real client with another identity: refused at web-0, served by ledger-0
    assert not s_client_ok(lab, "web-0")
    assert s_client_ok(lab, "ledger-0")
    # the captured client's own identity (shop/frontend) is the one checked
    assert curl_from(lab, "frontend-0", "shop", "web") == "200"
    assert curl_from(lab, "frontend-0", "billing", "ledger") == "200"
    sl.wait_until(lambda: decisions(lab, "web-0", "not_allowed") == before + 1, 10,
                  what="web-0's not_allowed decision counted")
    assert decisions(lab, "web-0", "allowed") >= 1
    assert decisions(lab, "ledger-0", "not_allowed") == 0
    line = sl.wait_until(lambda: audits(lab), 10, what="the refusal's audit line")[-1]
    assert 'pod="shop/web-0"' in line and "port=8080" in line, line
    assert "kubernetes/web-only-frontend" in line, line
    # the daemon's total counts every pod's decisions
    assert agent(lab).metric("shunt_authz_decisions_total", decision="not_allowed") >= 1
    m = agent(lab).metrics_text()
    p = subprocess.run(["promtool", "check", "metrics"], input=m, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "shunt_node_authz_fail_closed_pods 0\n" in m


def test_shown_by_shuntctl_and_authz(lab):
    r = sl.shuntctl(lab.nodes["node-a"].netns, "pods")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("shop/web-0 "))
    assert "policies applied: kubernetes/web-only-frontend" in "\n".join(lines[i:i + 3]), r.stdout
    j = next(k for k, ln in enumerate(lines) if ln.startswith("billing/ledger-0 "))
    assert "policies applied: none" in "\n".join(lines[j:j + 3]), r.stdout
    node = agent(lab).json("/authz")["node"]
    assert node["listed"] and node["kubernetes"], node
    assert {n["namespace"] for n in node["namespaces"]} == {"shop", nodelab.AGENT_NS,
                                                           "default"}, json.dumps(node)


def test_relabelled_pod_and_policy_events(lab):
    web = lab.pods["web-0"]
    obj = web.obj()
    obj["metadata"]["labels"]["app"] = "web-canary"
    lab.apply("pods", obj, "MODIFIED")
    try:
        sl.wait_until(lambda: pod_authz(lab, "web-0")["policies"] == [], 10,
                      what="web-0's set chosen again without the selector's policy")
        assert s_client_ok(lab, "web-0")
    finally:
        lab.apply("pods", web.obj(), "MODIFIED")
    sl.wait_until(lambda: pod_authz(lab, "web-0")["policies"] == ["kubernetes/web-only-frontend"],
                  10, what="web-0's policy back")
    assert not s_client_ok(lab, "web-0")
    # a watch event in billing: only ledger-0 changes
    policy(lab, "billing", "ledger-no-tester",
           {"ports": [HTTP_PORT], "deny": [{"namespace": "shop", "service_account": "tester"}]})
    try:
        sl.wait_until(lambda: pod_authz(lab, "ledger-0")["policies"] ==
                      ["kubernetes/ledger-no-tester"], 10, what="ledger-0's new policy")
        assert not s_client_ok(lab, "ledger-0")
        assert curl_from(lab, "frontend-0", "billing", "ledger") == "200"
        assert decisions(lab, "ledger-0", "denied_by_policy") >= 1
        assert pod_authz(lab, "web-0")["policies"] == ["kubernetes/web-only-frontend"]
    finally:
        policy(lab, "billing", "ledger-no-tester", {}, "DELETED")
    sl.wait_until(lambda: pod_authz(lab, "ledger-0")["policies"] == [], 10,
                  what="ledger-0's policy gone")
    assert s_client_ok(lab, "ledger-0")
