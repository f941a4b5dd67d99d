# SPDX-License-Identifier: Apache-2.0
"""The chart's objects run: shunt-ca started as the rendered Deployment
starts it (the chart's generated root Secret, trust bundle and inject
config, its args), against the Kubernetes API stand-in in a pod.

- The API server's view of the webhook: TLS 1.3 to shunt-ca verified with
  the MutatingWebhookConfiguration's caBundle for the name it dials
  (shunt-ca.shunt-system.svc), POST to its service path: the AdmissionReview
  answers are those of the webhook code, byte for byte; bad requests get
  400 and 413.
- `helm test`: the rendered test pod played as a kubelet would (its
  commands and environment, as uid 1337 with no capability): the sidecar
  gets its certificate from shunt-ca with a projected-style token, then
  `shuntctl check` passes. Where the pod would use what only a cluster has,
  the harness substitutes: the CA's DNS name (127.0.0.1, a SAN the harness
  adds), the token file (a stand-in token), the API server (a kubeconfig).
"""

import base64
import http.client
import json
import os
import shutil
import ssl

import pytest
import yaml

import k8schart as kc
import shuntlib as sl
from shuntca import ShuntCA, ca_env
from test_chart import pod_from  # the ReplicaSet controller's pod

FIXTURES = os.path.join(sl.SOURCE, "tests", "fixtures", "k8s")
NS = "shunt-system"


@pytest.fixture(scope="module")
def ca():
    try:
        kc.tools()
    except kc.ToolError as e:
        pytest.fail(str(e), pytrace=False)
    objs = kc.render({"trustDomain": "chart.test"}, namespace=NS)
    d, args = kc.shunt_ca_argv(objs, NS)
    with ca_env("chartca", args=args) as (pod, api, ca):
        yield pod, api, ca, objs, d


def api_server_request(pod, objs, body, port=15012, declared=None):
    """POST body as the API server calls the webhook: TLS verified with the
    configuration's caBundle for <service>.<namespace>.svc, to its path.
    declared: a Content-Length larger than body (only body is sent).
    (status, parsed JSON, TLS version)."""
    (hook,) = kc.one(objs, "MutatingWebhookConfiguration")["webhooks"]
    svc = hook["clientConfig"]["service"]
    assert svc["port"] == port
    ctx = ssl.create_default_context(
        cadata=base64.b64decode(hook["clientConfig"]["caBundle"]).decode())
    s = pod.connect("127.0.0.1", port, 10)
    tls = ctx.wrap_socket(s, server_hostname="%s.%s.svc" % (svc["name"], svc["namespace"]))
    version = tls.version()
    try:
        head = ("POST %s?timeout=10s HTTP/1.1\r\nHost: %s.%s.svc:%d\r\n"
                "Content-Type: application/json\r\nAccept: application/json\r\n"
                "Content-Length: %d\r\n\r\n" % (svc["path"], svc["name"], svc["namespace"],
                                                  port, declared or len(body)))
        tls.sendall(head.encode() + body)
        resp = http.client.HTTPResponse(tls)
        resp.begin()
        return resp.status, json.loads(resp.read()), version
    finally:
        tls.close()


def test_webhook_as_the_api_server_calls_it(ca):
    pod, api, shuntca, objs, d = ca
    cfg = os.path.join(d, "inject.json")
    with open(os.path.join(FIXTURES, "deploy-web.yaml")) as f:
        dep = yaml.safe_load(f)
    review = kc.admission_review(pod_from(dep), namespace="demo")
    body = json.dumps(review).encode()
    status, answer, version = api_server_request(pod, objs, body)
    assert version == "TLSv1.3"
    assert status == 200
    # The same answer as the webhook code gives on its own.
    want_status, want, _ = kc.review_raw(cfg, body)
    assert (status, answer) == (want_status, want)
    resp = answer["response"]
    assert resp["allowed"] and resp["uid"] == review["request"]["uid"]
    ops = kc.patch_of(resp)
    proxy = [op["value"] for op in ops if op["path"] == "/spec/initContainers/0"
             or op["path"] == "/spec/initContainers"]
    assert proxy and "chart.test" in json.dumps(ops)
    assert any(l.get("component") == "inject" and "injected demo/web-" in l.get("msg", "")
               for l in shuntca.log_lines())

    # Not an AdmissionReview: 400 with the reason; over the bound: 413.
    status, answer, _ = api_server_request(pod, objs, b'{"kind": "Pod"}')
    assert status == 400 and answer["error"] == "bad_request", answer
    status, answer, _ = api_server_request(pod, objs, body[:1000], declared=(2 << 20) + 1)
    assert status == 413 and answer["error"] == "too_large", answer


def as_uid_1337(argv):
    """A restricted container: uid/gid 1337, no capability, no new privileges."""
    return ["setpriv", "--reuid", "1337", "--regid", "1337", "--clear-groups",
            "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs"] + argv


def test_helm_test_pod_passes(ca):
    pod, api, shuntca, objs, d = ca
    if shutil.which("setpriv") is None:
        pytest.fail("setpriv is not installed (Debian package util-linux)")
    tp = kc.one(objs, "Pod", "shunt-test-connectivity")
    spec = tp["spec"]
    (proxy,) = spec["initContainers"]
    (check,) = spec["containers"]
    binary = kc.image_binaries()  # the image's /usr/bin, readable by uid 1337
    # What the kubelet mounts: the projected token (audience shunt-ca, for
    # the pod's service account) and the bundle ConfigMap.
    token_vol = [v for v in spec["volumes"] if v["name"] == "token"][0]
    src = token_vol["projected"]["sources"][0]["serviceAccountToken"]
    token = api.token(NS, spec["serviceAccountName"], audience=src["audience"],
                      expires_in=src["expirationSeconds"])
    with open(os.path.join(d, "token"), "w") as f:
        f.write(token)
    os.chmod(os.path.join(d, "token"), 0o644)
    kubeconfig = os.path.join(d, "kubeconfig.json")
    shutil.copy(api.kubeconfig, kubeconfig)
    os.chmod(kubeconfig, 0o644)

    env = {e["name"]: e["value"] for e in proxy["env"]}
    assert env["SHUNT_CA_ADDRESS"] == "https://shunt-ca.%s.svc:15012" % NS
    env.update({"SHUNT_CA_ADDRESS": "https://127.0.0.1:15012",  # no cluster DNS here
                "CA_BUNDLE_PATH": os.path.join(d, "bundle.pem"),
                "SHUNT_CA_TOKEN_FILE": os.path.join(d, "token"),
                "KUBECONFIG_PATH": kubeconfig,
                "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    sidecar = pod.spawn(as_uid_1337(binary(proxy["command"])), "test-proxy",
                        env=env)
    try:
        probe = binary(proxy["startupProbe"]["exec"]["command"])

        def ready():
            if not sidecar.alive():
                raise sl.HarnessError("the test pod's shuntd exited: %s"
                                      % sidecar.read_stderr()[-3000:])
            return pod.run(as_uid_1337(probe), check=False).returncode == 0

        sl.wait_until(ready, 30, interval=0.2, what="the startup probe (shuntctl ready)")
        cenv = {e["name"]: e["value"] for e in check["env"]}
        cenv.update({"SHUNT_CA_ADDRESS": "https://127.0.0.1:15012",
                     "CA_BUNDLE_PATH": os.path.join(d, "bundle.pem")})
        r = pod.run(as_uid_1337(binary(check["command"])), check=False,
                    env=dict(os.environ, **cenv))
        assert r.returncode == 0, r.stdout + r.stderr
        lines = {l.split(":", 1)[0]: l for l in r.stdout.splitlines() if ":" in l}
        assert lines["PASS ca"], r.stdout
        assert lines["PASS certificate"].find(
            "spiffe://chart.test/ns/%s/sa/shunt-test" % NS) > 0, r.stdout
        assert lines["PASS discovery"], r.stdout
        assert lines["PASS admin"], r.stdout
    finally:
        sidecar.stop()


def test_node_mode_ca_serves_the_daemonset_agent(ca):
    """In node mode the rendered shunt-ca lets the DaemonSet's service account
    obtain the identity of a pod on its node; as rendered without node mode,
    nobody can."""
    from test_ca_node import apply, bound_token, delegated, pod_obj
    pod, api, default_ca, _, _ = ca
    objs = kc.render({"trustDomain": "chart.test", "nodeAgent": {"enabled": True}}, namespace=NS)
    agent_sa = kc.one(objs, "DaemonSet", "shunt-node")["spec"]["template"]["spec"][
        "serviceAccountName"]
    _, args = kc.shunt_ca_argv(objs, NS)
    args = [a if a != "0.0.0.0:15012" else "127.0.0.1:15014" for a in args]
    apply(api, pod_obj(NS, "shunt-node-x1", agent_sa, "node-1"))
    apply(api, pod_obj("demo", "web-1", "web", "node-1"))
    token = bound_token(api, NS, agent_sa, "shunt-node-x1")
    node_ca = ShuntCA(pod, api, port=15014, args=args, name="shunt-ca-node-mode")
    try:
        status, _, body = delegated(node_ca, token, "demo", "web")
        assert status == 200, body
        assert body["spiffe_id"] == "spiffe://chart.test/ns/demo/sa/web"
        assert (body["node"], body["pod"]) == ("node-1", "web-1")
    finally:
        assert node_ca.stop() == 0
    status, _, body = delegated(default_ca, token, "demo", "web")
    assert (status, body["error"]) == (403, "not_node_agent"), body
