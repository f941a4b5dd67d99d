# SPDX-License-Identifier: Apache-2.0
"""shunt-ca's delegated issuance (issue 16, node mode): a node agent
(service account shunt-system/shunt-node, shunt-ca's default --node-agent-sa)
asks with its own pod-bound token for the certificate of a pod's identity,
and gets it only while a Pending or Running pod of that service account is
scheduled on the agent's node. A real shunt-ca process against the
Kubernetes API stand-in (pods on two nodes, pod-bound tokens, TokenReview),
CSRs from `openssl req`, HTTPS clients curl and Python's ssl in a pod:

- the agent on node-a gets web/frontend (a pod there), also by pod name and
  uid, and a Pending pod's identity; curl's answer verifies against
  /v1/bundle with exactly the one SAN; the audit line names agent, node, pod;
- refused (403 with a reason, audited): a pod on the other node (whose agent
  does get it), an account with no pod on the node, a pod not yet scheduled,
  a token of a workload that is not a node agent (for another identity or
  its own), an agent token not bound to a pod;
- clusters before Kubernetes 1.30 (no node in the token): the node comes from
  the agent's own pod; a token bound to an agent pod that was deleted, or
  replaced by one of the same name, is refused while the API server's token
  cache still authenticates it (and by TokenReview itself afterwards);
- the API server failing or slow on pods: 503 kube_api_unavailable with
  Retry-After, never 403 and never a certificate; the API server down: 503;
- the bounds of the path apply: a body over --max-body, the rate per agent and
  identity; the self-issuance path is unchanged."""

import json
import os
import re
import subprocess

import pytest

import shuntlib as sl
from shuntca import KubeApi, ShuntCA, ca_env, make_csr, openssl

TD = "cluster.local"
AGENT_NS, AGENT_SA = "shunt-system", "shunt-node"


def spiffe(ns, sa):
    return "spiffe://%s/ns/%s/sa/%s" % (TD, ns, sa)


def pod_obj(ns, name, sa, node, phase="Running"):
    spec = {"serviceAccountName": sa, "containers": [{"name": "app", "image": "app:1"}]}
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "namespace": ns, "labels": {"app": sa}},
            "spec": spec, "status": {"phase": phase}}


def apply(api, obj, etype="ADDED"):
    api.ctl("POST", "/apply", {"kind": "pods", "type": etype, "object": obj})


def bound_token(api, ns, sa, pod):
    """A projected token bound to pod (as the kubelet gets one), audience shunt-ca."""
    return api.ctl("POST", "/token", {"namespace": ns, "service_account": sa, "pod": pod,
                                      "bound": True, "audience": "shunt-ca"})["token"]


def stored_uid(api, ns, name):
    status, _, data = api.pod.http("127.0.0.1", api.port, "GET",
                                   "/api/v1/namespaces/%s/pods/%s" % (ns, name),
                                   headers={"Authorization": "Bearer shunt-ca-caller-token"})
    assert status == 200, data
    return json.loads(data)["metadata"]["uid"]


def delegated(ca, token, ns, sa, pod=None, pod_uid=None, csr=None):
    """POST /v1/certificates for ns/sa on the token's behalf: (status, headers, body)."""
    target = {"namespace": ns, "service_account": sa}
    if pod:
        target["pod"] = pod
    if pod_uid:
        target["pod_uid"] = pod_uid
    if csr is None:
        _, csr = make_csr()
    return ca.certificate(token, None, body=json.dumps({"csr": csr, "for": target}))


def audit_for(ca, **want):
    """The first audit line with every field of want (waits: it follows the answer)."""
    found = []

    def look():
        found[:] = [a for a in ca.audits() if all(a.get(k) == v for k, v in want.items())]
        return bool(found)
    sl.wait_until(look, 5.0, what="audit line %s" % want)
    return found[0]


def refused(ca, status, body, code, reason, identity, **fields):
    assert (status, body.get("error")) == (code, reason), body
    assert body["message"] and "\n" not in body["message"]
    a = audit_for(ca, reason=reason, identity=identity, **fields)
    assert a["result"] == "refused" and a["status"] == str(code) and a["serial"] == ""
    return a


@pytest.fixture(scope="module")
def env():
    def pods(api):
        for p in (pod_obj(AGENT_NS, "shunt-node-a", AGENT_SA, "node-a"),
                  pod_obj(AGENT_NS, "shunt-node-b", AGENT_SA, "node-b"),
                  pod_obj("web", "frontend-a1", "frontend", "node-a"),
                  pod_obj("web", "frontend-a0", "frontend", "node-a", phase="Succeeded"),
                  pod_obj("web", "cache-a1", "cache", "node-a", phase="Pending"),
                  pod_obj("web", "backend-b1", "backend", "node-b"),
                  pod_obj("web", "batch-a1", "batch", "node-a"),
                  pod_obj("web", "worker-x", "worker", None, phase="Pending")):
            apply(api, p)

    # the default --node-agent-sa: shunt-system/shunt-node
    with ca_env("canode", args=["--tokenreview-timeout", "1s"], prepare=pods) as (pod, api, ca):
        agents = {n: bound_token(api, AGENT_NS, AGENT_SA, "shunt-node-" + n) for n in "ab"}
        yield pod, api, ca, agents


def test_agent_gets_the_identity_of_a_pod_on_its_node(env):
    pod, api, ca, agents = env
    d = sl.tmpdir()
    # curl as the client: a real HTTPS client that verifies the serving certificate
    key, csr = make_csr(d)
    body_path = os.path.join(d, "req.json")
    with open(body_path, "w") as f:
        json.dump({"csr": csr, "for": {"namespace": "web", "service_account": "frontend"}}, f)
    r = pod.curl(["--cacert", ca.bundle, "-H", "Authorization: Bearer " + agents["a"],
                  "-H", "Content-Type: application/json", "--data-binary", "@" + body_path,
                  "-w", "\n%{http_code}", "https://127.0.0.1:%d/v1/certificates" % ca.port])
    assert r.returncode == 0, r.stderr
    text, code = r.stdout.rsplit("\n", 1)
    assert code == "200", text
    body = json.loads(text)
    want = spiffe("web", "frontend")
    assert body["spiffe_id"] == want
    assert (body["node"], body["pod"]) == ("node-a", "frontend-a1")
    leaf = os.path.join(d, "leaf.pem")
    with open(leaf, "w") as f:
        f.write(body["certificate_chain"])
    v = subprocess.run(["openssl", "verify", "-CAfile", ca.bundle, leaf], capture_output=True,
                       text=True, timeout=30)
    assert v.returncode == 0, v.stdout + v.stderr
    text = openssl("x509", "-noout", "-text", "-in", leaf)
    sans = re.search(r"Subject Alternative Name:.*?\n\s*(.*)\n", text).group(1).strip()
    assert sans == "URI:" + want, text
    assert "CA:FALSE" in text
    # the certificate is for the CSR's key (the agent keeps the key for the pod)
    assert openssl("x509", "-noout", "-pubkey", "-in", leaf) == \
        openssl("pkey", "-pubout", "-in", key)
    a = audit_for(ca, result="issued", identity=want, serial=body["serial"])
    assert (a["agent"], a["node"], a["pod"]) == ("shunt-system/shunt-node", "node-a",
                                                 "frontend-a1")
    # by pod name, and by name and uid
    status, _, body = delegated(ca, agents["a"], "web", "frontend", pod="frontend-a1")
    assert status == 200 and body["pod"] == "frontend-a1", body
    uid = stored_uid(api, "web", "frontend-a1")
    status, _, body = delegated(ca, agents["a"], "web", "frontend", pod="frontend-a1",
                                pod_uid=uid)
    assert status == 200, body
    # a Pending pod already scheduled on the node needs its certificate to start
    status, _, body = delegated(ca, agents["a"], "web", "cache")
    assert status == 200 and body["spiffe_id"] == spiffe("web", "cache"), body


def test_refused_for_a_pod_on_another_node(env):
    pod, api, ca, agents = env
    me = spiffe("web", "backend")
    status, _, body = delegated(ca, agents["a"], "web", "backend")
    a = refused(ca, status, body, 403, "identity_not_on_node", me, node="node-a")
    assert "web/backend" in a["message"] and "node-a" in a["message"]
    assert a["agent"] == "shunt-system/shunt-node" and a["pod"] == ""
    # naming the pod does not help
    status, _, body = delegated(ca, agents["a"], "web", "backend", pod="backend-b1")
    assert (status, body["error"]) == (403, "identity_not_on_node"), body
    assert "not scheduled on the agent's node" in body["message"]
    # nor a pod of one account for the identity of another
    status, _, body = delegated(ca, agents["a"], "web", "backend", pod="frontend-a1")
    assert (status, body["error"]) == (403, "identity_not_on_node"), body
    # the agent of node-b is entitled
    status, _, body = delegated(ca, agents["b"], "web", "backend")
    assert status == 200 and (body["node"], body["pod"]) == ("node-b", "backend-b1"), body


@pytest.mark.parametrize("case", ["no_pod", "only_ended", "unscheduled", "named_uid_stale",
                                  "no_such_pod"])
def test_refused_without_a_live_pod_of_that_account_on_the_node(env, case):
    pod, api, ca, agents = env
    kw = {}
    sa = {"no_pod": "nobody", "only_ended": "frontend", "unscheduled": "worker",
          "named_uid_stale": "frontend", "no_such_pod": "frontend"}[case]
    if case == "only_ended":
        kw = {"pod": "frontend-a0"}  # Succeeded: it needs no certificate any more
    elif case == "named_uid_stale":
        kw = {"pod": "frontend-a1", "pod_uid": "00000000-0000-4000-8000-000000000000"}
    elif case == "no_such_pod":
        kw = {"pod": "frontend-zz"}
    status, _, body = delegated(ca, agents["a"], "web", sa, **kw)
    refused(ca, status, body, 403, "identity_not_on_node", spiffe("web", sa),
            message=body.get("message"))


def test_refused_to_a_token_that_is_not_a_node_agent(env):
    pod, api, ca, agents = env
    apply(api, pod_obj("web", "frontend-a2", "frontend", "node-a"))
    tok = bound_token(api, "web", "frontend", "frontend-a2")  # a workload on node-a
    for target in ("backend", "cache", "frontend"):  # others on its node, and itself
        status, _, body = delegated(ca, tok, "web", target)
        a = refused(ca, status, body, 403, "not_node_agent", spiffe("web", target),
                    agent="web/frontend")
        assert "not a node agent" in a["message"]
    # an agent's token that is not bound to a pod (kubectl create token): no node
    plain = api.token(AGENT_NS, AGENT_SA)
    status, _, body = delegated(ca, plain, "web", "frontend")
    refused(ca, status, body, 403, "agent_not_pod_bound", spiffe("web", "frontend"))
    # the target must name a Kubernetes namespace and account: 400 before any review
    for target in ({"namespace": "web"}, {"namespace": "web", "service_account": "a/../b"},
                   {"namespace": "web", "service_account": "x", "node": "node-b"}, "web/x"):
        _, csr = make_csr()
        status, _, body = ca.certificate(agents["a"], None,
                                         body=json.dumps({"csr": csr, "for": target}))
        assert (status, body["error"]) == (400, "bad_request"), (target, body)


def test_self_issuance_unchanged(env):
    pod, api, ca, agents = env
    # a workload's own identity, as a sidecar asks for it (bound token or not)
    for tok in (api.token("web", "frontend"), bound_token(api, "web", "frontend", "frontend-a1")):
        _, csr = make_csr()
        status, _, body = ca.certificate(tok, csr)
        assert status == 200 and body["spiffe_id"] == spiffe("web", "frontend"), body
        assert "node" not in body and "pod" not in body
    # the agent without "for" gets its own identity, like any workload
    _, csr = make_csr()
    status, _, body = ca.certificate(agents["a"], csr)
    assert status == 200 and body["spiffe_id"] == spiffe(AGENT_NS, AGENT_SA), body
    a = audit_for(ca, result="issued", serial=body["serial"])
    assert "agent" not in a and "node" not in a
    # a CSR that asks for another identity than the one delegated is refused as before
    _, csr = make_csr(san="URI:" + spiffe("web", "backend"))
    status, _, body = delegated(ca, agents["a"], "web", "frontend", csr=csr)
    refused(ca, status, body, 400, "csr_mismatch", spiffe("web", "frontend"),
            agent="shunt-system/shunt-node", node="node-a", pod="frontend-a1")


def test_before_kubernetes_1_30_and_a_deleted_agent_pod(env):
    """No node in the token: the CA reads the agent's pod. kube-apiserver
    keeps a token that authenticated in a cache for 10 s, so a token of a
    deleted pod can still pass TokenReview: the CA's uid check catches it."""
    pod, api, ca, agents = env
    api.tokenreview(pod_node_info=False, success_cache_s=300)
    try:
        apply(api, pod_obj(AGENT_NS, "shunt-node-c", AGENT_SA, "node-a"))
        tok = bound_token(api, AGENT_NS, AGENT_SA, "shunt-node-c")
        claims = json.loads(sl_b64(tok.split(".")[1]))
        assert "node" not in claims["kubernetes.io"]
        status, _, body = delegated(ca, tok, "web", "batch")
        assert status == 200 and body["node"] == "node-a", body
        # deleted, and a pod of the same name made again (on the other node)
        apply(api, {"metadata": {"name": "shunt-node-c", "namespace": AGENT_NS}}, "DELETED")
        apply(api, pod_obj(AGENT_NS, "shunt-node-c", AGENT_SA, "node-b"))
        status, _, body = delegated(ca, tok, "web", "batch")
        a = refused(ca, status, body, 403, "agent_pod_gone", spiffe("web", "batch"),
                    agent="shunt-system/shunt-node", node="")
        assert "no longer exists" in a["message"] and "uid" in a["message"]
        # deleted for good
        apply(api, {"metadata": {"name": "shunt-node-c", "namespace": AGENT_NS}}, "DELETED")
        status, _, body = delegated(ca, tok, "web", "batch")
        assert (status, body["error"]) == (403, "agent_pod_gone"), body
        # without the cache the API server refuses the token itself
        api.tokenreview(success_cache_s=0)
        status, _, body = delegated(ca, tok, "web", "batch")
        assert (status, body["error"]) == (401, "token_invalid"), body
    finally:
        api.tokenreview(pod_node_info=True, success_cache_s=0)


def sl_b64(s):
    import base64
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


@pytest.mark.parametrize("case", ["pods_500", "pods_forbidden", "pods_slow", "agent_pod_500"])
def test_api_server_failing_is_503_not_403(env, case):
    pod, api, ca, agents = env
    tok = agents["a"]
    if case == "agent_pod_500":  # the agent's pod is looked up (no node in its token)
        api.tokenreview(pod_node_info=False)
        tok = bound_token(api, AGENT_NS, AGENT_SA, "shunt-node-a")
        api.tokenreview(pod_node_info=True)
    switch = {"pods_500": {"pods_fail_status": 500}, "pods_forbidden": {"pods_fail_status": 403},
              "pods_slow": {"pods_delay_s": 3}, "agent_pod_500": {"pods_fail_status": 500}}[case]
    api.tokenreview(**switch)
    try:
        status, hdrs, body = delegated(ca, tok, "web", "frontend")
        refused(ca, status, body, 503, "kube_api_unavailable", spiffe("web", "frontend"))
        assert hdrs.get("Retry-After") == "1"
    finally:
        api.tokenreview(pods_fail_status=0, pods_delay_s=0)
    if case == "pods_forbidden":
        sl.wait_until(lambda: "it needs get and list on pods" in ca.proc.read_stderr(), 5.0,
                      what="the log line naming the missing permission")
    # and back
    status, _, body = delegated(ca, tok, "web", "frontend")
    assert status == 200, body


def test_bounds(env):
    pod, api, ca, agents = env
    # the rate per agent and identity, on a CA with a small one: the burst,
    # then 429 with Retry-After
    slow = ShuntCA(pod, api, port=15013, name="shunt-ca-rate",
                   args=["--rate", "0.05", "--burst", "3"])
    try:
        seen = []
        for _ in range(5):
            status, hdrs, body = delegated(slow, agents["a"], "web", "batch")
            seen.append(status)
            if status == 429:
                break
        assert seen == [200, 200, 200, 429], seen
        assert int(hdrs["Retry-After"]) >= 1
        refused(slow, 429, body, 429, "rate_limited", spiffe("web", "batch"), node="")
        # another identity of the same agent, and the same identity by another
        # agent, are not limited by it
        status, _, body = delegated(slow, agents["a"], "web", "cache")
        assert status == 200, body
        apply(api, pod_obj(AGENT_NS, "shunt-node-a2", AGENT_SA, "node-a"))
        other = bound_token(api, AGENT_NS, AGENT_SA, "shunt-node-a2")
        status, _, body = delegated(slow, other, "web", "batch")
        assert status == 200, body
    finally:
        assert slow.stop() == 0
    # a body over --max-body (64 KiB) is refused unread, as on the self path
    _, csr = make_csr()
    big = json.dumps({"csr": csr, "for": {"namespace": "web", "service_account": "frontend",
                                          "pod": "x" * (70 << 10)}})
    status, _, body = ca.certificate(agents["a"], None, body=big)
    assert (status, body["error"]) == (413, "too_large"), body


def test_api_server_down_is_503():
    pod = sl.Pod("canode-down")
    api = ca = None
    try:
        api = KubeApi(pod)
        apply(api, pod_obj(AGENT_NS, "shunt-node-a", AGENT_SA, "node-a"))
        apply(api, pod_obj("web", "frontend-a1", "frontend", "node-a"))
        ca = ShuntCA(pod, api, args=["--tokenreview-timeout", "1s"])
        tok = bound_token(api, AGENT_NS, AGENT_SA, "shunt-node-a")
        status, _, body = delegated(ca, tok, "web", "frontend")
        assert status == 200, body
        api.stop()
        status, hdrs, body = delegated(ca, tok, "web", "frontend")
        assert (status, body["error"]) == (503, "tokenreview_unavailable"), body
        assert hdrs.get("Retry-After") == "1"
        assert ca.stop() == 0
    finally:
        if ca is not None and ca.proc.alive():
            ca.stop()
        if api is not None:
            api.stop()
        pod.delete()
