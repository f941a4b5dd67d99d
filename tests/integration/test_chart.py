# SPDX-License-Identifier: Apache-2.0
"""The Helm chart and the sidecar-injection webhook, checked for real.

helm (3.17) lints and renders charts/shunt for a matrix of values; every
rendered object, and every pod the webhook patches, is validated against the
Kubernetes OpenAPI schemas (kubernetes-models' validators plus unknown-field
checks). The webhook is the real userspace/inject code (build/inject_review):
AdmissionReviews like the API server's, for pods made from real Deployment
manifests; its JSONPatches are applied with python3-jsonpatch."""

import base64
import copy
import json
import os
import subprocess
import uuid

import pytest
import yaml

import k8schart as kc
import shuntlib as sl

FIXTURES = os.path.join(sl.SOURCE, "tests", "fixtures", "k8s")

MATRIX = {
    "sidecar-iptables": {},
    "sidecar-ebpf": {"sidecar": {"capture": "ebpf"}},
    "sidecar-auto-classic": {"sidecar": {"capture": "auto", "nativeSidecar": False}},
    "node-mode": {"nodeAgent": {"enabled": True}, "meshNamespaces": ["demo", "shop"]},
    "node-mode-no-metrics": {"nodeAgent": {"enabled": True}, "metrics": {"enabled": False}},
    "trust-domain": {
        "trustDomain": "prod.example.org",
        "ca": {"replicas": 3, "lifetime": "12h"},
        "sidecar": {"mtlsMode": "strict", "excludeOutboundCIDRs": ["169.254.169.254/32"],
                    "excludeInboundPorts": [9100], "logLevel": "debug"},
    },
    "no-webhook": {"webhook": {"enabled": False}, "tests": {"enabled": False}},
}
SIDECAR_CASES = ["sidecar-iptables", "sidecar-ebpf", "sidecar-auto-classic", "trust-domain"]
SCRAPE = {"prometheus.io/scrape": "true", "prometheus.io/port": "15020",
          "prometheus.io/path": "/metrics"}


@pytest.fixture(scope="module")
def rendered():
    return kc.render_cases(MATRIX)


def load_fixture(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return yaml.safe_load(f)


def pod_from(dep, suffix="7c9d5b6f4d"):
    """The Pod the ReplicaSet controller creates for dep, defaulted as the
    API server's decoding leaves it when mutating webhooks see it."""
    t = copy.deepcopy(dep["spec"]["template"])
    meta = t.setdefault("metadata", {})
    meta["generateName"] = "%s-%s-" % (dep["metadata"]["name"], suffix)
    meta["namespace"] = dep["metadata"]["namespace"]
    meta.setdefault("labels", {})["pod-template-hash"] = suffix
    meta["ownerReferences"] = [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                "name": "%s-%s" % (dep["metadata"]["name"], suffix),
                                "uid": str(uuid.uuid4()), "controller": True,
                                "blockOwnerDeletion": True}]
    spec = t["spec"]
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("terminationGracePeriodSeconds", 30)
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("serviceAccountName", "default")
    for c in spec.get("initContainers", []) + spec["containers"]:
        c.setdefault("terminationMessagePath", "/dev/termination-log")
        c.setdefault("terminationMessagePolicy", "File")
        c.setdefault("imagePullPolicy", "IfNotPresent")
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}


def bare_pod(**meta):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": dict({"name": "solo", "namespace": "demo"}, **meta),
            "spec": {"containers": [{"name": "app", "image": "busybox:1.36"}]}}


def env_of(c):
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def shunt_containers(spec):
    inits = {c["name"]: c for c in spec.get("initContainers", [])}
    conts = {c["name"]: c for c in spec["containers"]}
    return inits.get("shunt-init"), inits.get("shunt-proxy") or conts.get("shunt-proxy")


# ---- the chart ------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(MATRIX))
def test_lint(rendered, case):
    vf = os.path.join(sl.tmpdir(), "values-%s.yaml" % case)
    with open(vf, "w") as f:
        yaml.safe_dump(MATRIX[case], f)
    p = kc.helm("lint", "--strict", kc.CHART, "-f", vf, "--namespace", "shunt-system")
    assert "0 chart(s) failed" in p.stdout


def test_every_rendered_object_passes_the_schemas(rendered):
    objects, where = [], []
    for case, objs in sorted(rendered.items()):
        for o in objs:
            objects.append(o)
            where.append("%s: %s %s" % (case, o["kind"], o["metadata"]["name"]))
    bad = kc.validate(objects)
    assert not bad, "\n".join("%s: %s" % (where[i], e) for i, e in bad.items())
    assert len(objects) > 60


def test_objects_rendered_per_case(rendered):
    for case, objs in rendered.items():
        kinds = sorted({o["kind"] for o in objs})
        assert kc.one(objs, "Deployment", "shunt-ca")
        assert kc.one(objs, "Service", "shunt-ca")["spec"]["ports"][0]["port"] == 15012
        assert kc.one(objs, "Secret", "shunt-ca-root")["type"] == "kubernetes.io/tls"
        assert bool(kc.find(objs, "DaemonSet")) == case.startswith("node-mode"), (case, kinds)
        hooks = kc.find(objs, "MutatingWebhookConfiguration")
        assert len(hooks) == (0 if case == "no-webhook" else 1), case
        cms = {o["metadata"]["namespace"] for o in kc.find(objs, "ConfigMap", "shunt-ca-bundle")}
        want = {"shunt-system"} | set(MATRIX[case].get("meshNamespaces", []))
        assert cms == want, case
        for o in objs:
            if o["kind"] == "CustomResourceDefinition":
                continue  # charts/shunt/crds/ (see Authorization)
            if o["kind"] not in ("ClusterRole", "ClusterRoleBinding",
                                 "MutatingWebhookConfiguration"):
                assert o["metadata"].get("namespace"), o["metadata"]["name"]
            assert o["metadata"]["labels"]["app.kubernetes.io/part-of"] == "shunt"


def test_ca_deployment_is_restricted_and_wired(rendered):
    for case, objs in rendered.items():
        dep = kc.one(objs, "Deployment", "shunt-ca")
        spec = dep["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        assert kc.restricted_violations(spec, c) == [], case
        args = c["args"]
        flag = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}
        td = MATRIX[case].get("trustDomain", "cluster.local")
        assert flag["--trust-domain"] == td
        assert flag["--audience"] == "shunt-ca"
        node_mode = MATRIX[case].get("nodeAgent", {}).get("enabled", False)
        assert flag["--node-agent-sa"] == ("shunt-system/shunt-node" if node_mode else "")
        assert flag["--listen"] == "0.0.0.0:15012"
        assert ("--inject-config" in flag) == (case != "no-webhook")
        replicas = MATRIX[case].get("ca", {}).get("replicas", 1)
        assert dep["spec"]["replicas"] == replicas
        pdbs = kc.find(objs, "PodDisruptionBudget", "shunt-ca")
        assert len(pdbs) == (1 if replicas > 1 else 0)
        for pdb in pdbs:
            assert pdb["spec"]["selector"]["matchLabels"].items() <= \
                dep["spec"]["template"]["metadata"]["labels"].items()
        vols = {v["name"]: v for v in spec["volumes"]}
        assert vols["root"]["secret"]["secretName"] == "shunt-ca-root"
        mounts = {m["mountPath"] for m in c["volumeMounts"]}
        assert os.path.dirname(flag["--ca-key"]) in mounts
        assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
        assert spec["serviceAccountName"] == "shunt-ca"
        cfg = json.loads(kc.one(objs, "ConfigMap", "shunt-inject")["data"]["config.json"])
        assert cfg["trust_domain"] == td
        assert cfg["ca_address"] == "https://shunt-ca.shunt-system.svc:15012"


def test_rbac_is_minimal(rendered):
    for case, objs in rendered.items():
        roles = {r["metadata"]["name"]: r for r in kc.find(objs, "ClusterRole")}
        assert set(roles) == {"shunt-ca-shunt-system", "shunt-sidecar-shunt-system"}
        node_mode = MATRIX[case].get("nodeAgent", {}).get("enabled", False)
        assert roles["shunt-ca-shunt-system"]["rules"] == [
            {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"],
             "verbs": ["create"]}] + ([{"apiGroups": [""], "resources": ["pods"],
                                        "verbs": ["get", "list"]}] if node_mode else [])
        got = {(g, r, tuple(rule["verbs"])) for rule in roles["shunt-sidecar-shunt-system"]["rules"]
               for g in rule["apiGroups"] for r in rule["resources"]}
        ro = ("get", "list", "watch")
        assert got == {("", "services", ro), ("", "pods", ro), ("", "namespaces", ro),
                       ("discovery.k8s.io", "endpointslices", ro),
                       ("shunt.io", "authorizationpolicies", ro),
                       ("gateway.networking.k8s.io", "httproutes", ro),
                       ("gateway.networking.k8s.io", "grpcroutes", ro)}
        for o in objs:
            assert o["kind"] not in ("Role", "RoleBinding") or o["metadata"]["name"].startswith("shunt")
            text = json.dumps(o)
            assert "cluster-admin" not in text
            for rule in o.get("rules", []):
                assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
        binding = kc.one(objs, "ClusterRoleBinding", "shunt-sidecar-shunt-system")
        groups = [s["name"] for s in binding["subjects"] if s["kind"] == "Group"]
        ns = MATRIX[case].get("meshNamespaces")
        assert groups == (["system:serviceaccounts:%s" % n for n in ns] if ns
                          else ["system:serviceaccounts"])


def _openssl_text(pem):
    p = subprocess.run(["openssl", "x509", "-noout", "-text"], input=pem.encode(),
                       capture_output=True, timeout=10)
    assert p.returncode == 0, p.stderr
    return p.stdout.decode()


def test_webhook_configuration(rendered):
    objs = rendered["sidecar-iptables"]
    (hook,) = kc.one(objs, "MutatingWebhookConfiguration")["webhooks"]
    assert hook["admissionReviewVersions"] == ["v1"]
    assert hook["sideEffects"] == "None"
    assert hook["failurePolicy"] == "Fail"
    assert hook["timeoutSeconds"] == 10
    assert hook["reinvocationPolicy"] == "Never"
    svc = hook["clientConfig"]["service"]
    assert svc == {"name": "shunt-ca", "namespace": "shunt-system", "path": "/v1/inject",
                   "port": 15012}
    assert hook["rules"] == [{"operations": ["CREATE"], "apiGroups": [""], "apiVersions": ["v1"],
                              "resources": ["pods"], "scope": "Namespaced"}]
    exprs = hook["namespaceSelector"]["matchExpressions"]
    assert {"key": "shunt.io/inject", "operator": "In", "values": ["enabled"]} in exprs
    notin = [e for e in exprs if e["key"] == "kubernetes.io/metadata.name"][0]
    assert notin["operator"] == "NotIn" and {"shunt-system", "kube-system"} <= set(notin["values"])
    assert hook["objectSelector"]["matchExpressions"] == [
        {"key": "shunt.io/inject", "operator": "NotIn", "values": ["false"]}]
    # The API server verifies shunt-ca's serving certificate (issued by the
    # root) with caBundle: the root, the same PEM sidecars trust.
    ca_bundle = base64.b64decode(hook["clientConfig"]["caBundle"]).decode()
    cm = kc.one(objs, "ConfigMap", "shunt-ca-bundle", "shunt-system")["data"]["ca.crt"]
    root = base64.b64decode(kc.one(objs, "Secret", "shunt-ca-root")["data"]["tls.crt"]).decode()
    assert ca_bundle.strip() == cm.strip() == root.strip()
    text = _openssl_text(root)
    assert "CA:TRUE" in text and "Certificate Sign" in text
    key = base64.b64decode(kc.one(objs, "Secret", "shunt-ca-root")["data"]["tls.key"]).decode()
    assert "PRIVATE KEY" in key
    # failurePolicy can be Ignore; anything else is refused by the schema.
    objs = kc.render({"webhook": {"failurePolicy": "Ignore", "timeoutSeconds": 5}})
    (hook,) = kc.one(objs, "MutatingWebhookConfiguration")["webhooks"]
    assert hook["failurePolicy"] == "Ignore" and hook["timeoutSeconds"] == 5


def test_each_render_generates_its_own_root(rendered):
    a = kc.one(rendered["sidecar-iptables"], "Secret", "shunt-ca-root")["data"]["tls.crt"]
    b = kc.one(rendered["sidecar-ebpf"], "Secret", "shunt-ca-root")["data"]["tls.crt"]
    assert a != b
    td = _openssl_text(base64.b64decode(
        kc.one(rendered["trust-domain"], "Secret", "shunt-ca-root")["data"]["tls.crt"]).decode())
    assert "prod.example.org" in td


def test_existing_root_secret():
    pem = base64.b64decode(kc.one(kc.render(), "Secret", "shunt-ca-root")["data"]["tls.crt"]).decode()
    objs = kc.render({"ca": {"existingSecret": "my-root", "trustBundle": pem}})
    assert not kc.find(objs, "Secret")
    dep = kc.one(objs, "Deployment", "shunt-ca")
    vols = {v["name"]: v for v in dep["spec"]["template"]["spec"]["volumes"]}
    assert vols["root"]["secret"]["secretName"] == "my-root"
    assert kc.one(objs, "ConfigMap", "shunt-ca-bundle")["data"]["ca.crt"].strip() == pem.strip()
    assert kc.validate(objs) == {}
    err = kc.render_error({"ca": {"existingSecret": "my-root"}})
    assert "set ca.trustBundle" in err


@pytest.mark.parametrize("values,expect", [
    ({"sidecar": {"capture": "ebf"}}, "sidecar.capture"),
    ({"ca": {"replicas": 0}}, "ca.replicas"),
    ({"ca": {"bogus": 1}}, "bogus"),
    ({"sidecar": {"excludeOutboundCIDRs": ["10.0.0.0"]}}, "excludeOutboundCIDRs"),
    ({"sidecar": {"excludeInboundPorts": [70000]}}, "excludeInboundPorts"),
    ({"sidecar": {"resources": {"limits": {"memory": "lots"}}}}, "memory"),
    ({"trustDomain": "Bad Domain"}, "trustDomain"),
    ({"webhook": {"failurePolicy": "Retry"}}, "failurePolicy"),
    ({"meshNamespaces": ["Demo"]}, "meshNamespaces"),
    ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
    ({"sidecar": {"mtlsMode": "STRICT"}}, "mtlsMode"),
    ({"metrics": {"port": 0}}, "metrics.port"),
    ({"metrics": {"scrapeAnnotations": "yes"}}, "scrapeAnnotations"),
])
def test_values_schema_refuses(values, expect):
    assert expect in kc.render_error(values)


def test_kubernetes_versions():
    """Native sidecars need 1.29; the classic form installs from 1.26."""
    err = kc.render_error_args({}, "--kube-version", "1.28.4")
    assert "sidecar.nativeSidecar needs Kubernetes 1.29 or later (this cluster: v1.28.4)" in err
    objs = kc.render({"sidecar": {"nativeSidecar": False}}, extra=("--kube-version", "1.28.4"))
    assert json.loads(kc.one(objs, "ConfigMap", "shunt-inject")["data"]["config.json"])[
        "native_sidecar"] is False
    assert "chart requires kubeVersion" in kc.render_error_args(
        {"sidecar": {"nativeSidecar": False}}, "--kube-version", "1.25.0")
    assert kc.render({}, extra=("--kube-version", "1.29.0"))


def test_helm_test_hook(rendered):
    """helm test: a shuntd as a meshed pod's (native sidecar, certificate
    from shunt-ca, Kubernetes discovery, no capture), then shuntctl check;
    the whole pod passes Pod Security "restricted"."""
    for case in ("sidecar-iptables", "trust-domain"):
        objs = rendered[case]
        pod = kc.one(objs, "Pod", "shunt-test-connectivity")
        sa = kc.one(objs, "ServiceAccount", "shunt-test")
        for o in (pod, sa):
            assert o["metadata"]["annotations"]["helm.sh/hook"] == "test"
        spec = pod["spec"]
        assert spec["serviceAccountName"] == "shunt-test" and spec["restartPolicy"] == "Never"
        (proxy,) = spec["initContainers"]
        (check,) = spec["containers"]
        for c in (proxy, check):
            assert kc.restricted_violations(spec, c) == [], c["name"]
        assert proxy["restartPolicy"] == "Always"
        assert proxy["startupProbe"]["exec"]["command"] == ["/usr/bin/shuntctl", "ready"]
        env = env_of(proxy)
        assert env["SHUNT_CA_ADDRESS"] == "https://shunt-ca.shunt-system.svc:15012"
        assert env["TRUST_DOMAIN"] == MATRIX[case].get("trustDomain", "cluster.local")
        assert env["SHUNT_REDIRECT"] == "off"
        assert check["command"] == ["/usr/bin/shuntctl", "check"]
        vols = {v["name"]: v for v in spec["volumes"]}
        assert vols["token"]["projected"]["sources"][0]["serviceAccountToken"]["audience"] == "shunt-ca"
        # Its service account may read what sidecars read.
        binding = kc.one(objs, "ClusterRoleBinding", "shunt-sidecar-shunt-system")
        assert {"kind": "ServiceAccount", "name": "shunt-test",
                "namespace": "shunt-system"} in binding["subjects"]
    assert not kc.find(rendered["no-webhook"], "Pod")


def test_node_agent_daemonset(rendered):
    ds = kc.one(rendered["node-mode"], "DaemonSet", "shunt-node")
    spec = ds["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    caps = c["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"]
    # exactly the stated ones (test_chart_node.py checks each is justified)
    assert set(caps["add"]) == {"NET_ADMIN", "NET_RAW", "BPF", "PERFMON", "SYS_ADMIN", "SYS_PTRACE"}
    assert not c["securityContext"].get("privileged")
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    # The metrics listener on the node's addresses (hostNetwork), announced.
    assert c["ports"] == [{"name": "shunt-metrics", "containerPort": 15020, "protocol": "TCP"}]
    assert env_of(c)["SHUNT_ADMIN_METRICS_PORT"] == "15020"
    assert ds["spec"]["template"]["metadata"]["annotations"] == SCRAPE
    ds = kc.one(rendered["node-mode-no-metrics"], "DaemonSet", "shunt-node")
    (c,) = ds["spec"]["template"]["spec"]["containers"]
    assert "ports" not in c and "annotations" not in ds["spec"]["template"]["metadata"]
    assert env_of(c)["SHUNT_ADMIN_METRICS_ADDRESS"] == "off"


# ---- the webhook ------------------------------------------------------------------------


@pytest.mark.parametrize("case", SIDECAR_CASES)
@pytest.mark.parametrize("fixture", ["deploy-web.yaml", "deploy-worker.yaml"])
def test_inject_real_deployments(rendered, case, fixture):
    cfgfile = kc.inject_config(rendered[case])
    cfg = json.load(open(cfgfile))
    dep = load_fixture(fixture)
    pod = pod_from(dep)
    out, resp, note = kc.inject_pod(cfgfile, pod)
    assert note.startswith("injected demo/%s-" % dep["metadata"]["name"]), note
    assert "warnings" not in resp

    # The patched pod, and the Deployment with the patched pod template,
    # are valid objects.
    dep2 = copy.deepcopy(dep)
    dep2["spec"]["template"] = {"metadata": {k: v for k, v in out["metadata"].items()
                                             if k in ("labels", "annotations")},
                                "spec": out["spec"]}
    assert kc.validate([out, dep2]) == {}
    assert dep2["spec"]["selector"]["matchLabels"].items() <= dep2["spec"]["template"]["metadata"]["labels"].items()

    spec = out["spec"]
    assert out["metadata"]["labels"]["shunt.io/meshed"] == "true"
    for k, v in pod["metadata"]["labels"].items():
        assert out["metadata"]["labels"][k] == v
    init, proxy = shunt_containers(spec)
    native = cfg["native_sidecar"]
    own_inits = [c["name"] for c in pod["spec"].get("initContainers", [])]
    own = [c["name"] for c in pod["spec"]["containers"]]
    if native:
        assert [c["name"] for c in spec["initContainers"]] == ["shunt-init", "shunt-proxy"] + own_inits
        assert [c["name"] for c in spec["containers"]] == own
        assert proxy["restartPolicy"] == "Always"
        assert proxy["startupProbe"]["exec"]["command"] == ["/usr/bin/shuntctl", "ready"]
        assert "lifecycle" not in proxy
    else:
        assert [c["name"] for c in spec["initContainers"]] == own_inits + ["shunt-init"]
        assert [c["name"] for c in spec["containers"]] == ["shunt-proxy"] + own
        assert "restartPolicy" not in proxy
        assert proxy["lifecycle"]["postStart"]["exec"]["command"][:2] == ["/usr/bin/shuntctl", "ready"]
    # The application's containers are untouched.
    for c in pod["spec"]["containers"] + pod["spec"].get("initContainers", []):
        assert c in spec["containers"] + spec["initContainers"]

    # Init: shuntd init, exactly the capabilities capture needs.
    assert init["command"] == ["/usr/bin/shuntd"] and init["args"] == ["init"]
    caps = init["securityContext"]["capabilities"]
    want = {"NET_ADMIN", "NET_RAW"} | ({"BPF", "PERFMON"} if cfg["capture"] != "iptables" else set())
    assert set(caps["add"]) == want and caps["drop"] == ["ALL"]
    assert init["securityContext"]["allowPrivilegeEscalation"] is False
    assert not init["securityContext"].get("privileged")

    # Proxy: uid 1337, capture init, no capability: Pod Security "restricted".
    assert proxy["args"] == ["--capture", "init"]
    assert proxy["securityContext"]["runAsUser"] == 1337
    assert kc.restricted_violations(spec, proxy, volumes=False) == []
    assert "add" not in proxy["securityContext"]["capabilities"]
    env = env_of(proxy)
    assert env["SHUNT_CA_ADDRESS"] == "https://shunt-ca.shunt-system.svc:15012"
    assert env["CA_BUNDLE_PATH"] == "/var/run/shunt/bundle/ca.crt"
    assert env["SHUNT_REDIRECT"] == cfg["capture"]
    assert env["SHUNT_PROXY_UID"] == "1337"
    assert env["TRUST_DOMAIN"] == cfg["trust_domain"]
    assert env["SHUNT_LOG_LEVEL"] == cfg["log_level"]
    # The read-only metrics listener: declared on the proxy, left alone by
    # the capture the init container installs (same setting), announced to
    # Prometheus unless the pod has prometheus.io/ annotations of its own.
    assert proxy["ports"] == [{"name": "shunt-metrics", "containerPort": 15020, "protocol": "TCP"}]
    assert env["SHUNT_ADMIN_METRICS_PORT"] == "15020"
    own_ann = pod["metadata"].get("annotations", {})
    if any(k.startswith("prometheus.io/") for k in own_ann):
        assert out["metadata"]["annotations"] == own_ann
    else:
        assert out["metadata"]["annotations"] == dict(own_ann, **SCRAPE)
    init_env = env_of(init)
    if cfg["capture"] != "iptables":
        # shuntd init finds the pod's cgroup by its uid in the node's tree.
        assert init_env.pop("SHUNT_REDIRECT_CGROUP") == "pod"
        assert init_env.pop("SHUNT_CGROUP_ROOT") == "/host/sys/fs/cgroup"
    assert init_env == env
    assert init["securityContext"]["runAsGroup"] == 1337  # shares the eBPF pins
    if cfg["mtls_mode"]:
        assert env["MTLS_MODE"] == cfg["mtls_mode"]
    else:
        assert "MTLS_MODE" not in env
    if cfg["exclude_outbound_cidrs"]:
        assert env["SHUNT_EXCLUDE_OUTBOUND_CIDRS"] == ",".join(cfg["exclude_outbound_cidrs"])
    if cfg["capture"] != "iptables":
        assert env["SHUNT_BPF_PIN_ROOT"] == "/sys/fs/bpf/shunt/$(SHUNT_POD_UID)"
        assert env["SHUNT_POD_UID"] == {"fieldRef": {"fieldPath": "metadata.uid"}}
    assert proxy["resources"] == cfg["proxy_resources"]
    assert init["resources"] == cfg["init_resources"]

    # Volumes: the projected token (audience shunt-ca) and the bundle.
    vols = {v["name"]: v for v in spec["volumes"]}
    for v in pod["spec"].get("volumes", []):
        assert vols[v["name"]] == v
    (tok,) = vols["shunt-token"]["projected"]["sources"]
    assert tok["serviceAccountToken"]["audience"] == "shunt-ca"
    assert tok["serviceAccountToken"]["path"] == "token"
    assert vols["shunt-ca-bundle"]["configMap"]["name"] == "shunt-ca-bundle"
    assert vols["shunt-ca-bundle"]["configMap"]["items"] == [{"key": "ca.crt", "path": "ca.crt"}]
    mounts = {m["mountPath"]: m for m in proxy["volumeMounts"]}
    assert mounts["/var/run/secrets/shunt"]["name"] == "shunt-token"
    assert mounts["/var/run/shunt/bundle"]["name"] == "shunt-ca-bundle"
    assert mounts["/var/run/secrets/kubernetes.io/serviceaccount"]["name"] == "shunt-kube-api"
    hostpaths = [v for v in spec["volumes"] if "hostPath" in v]
    assert [v["hostPath"]["path"] for v in hostpaths] == (
        ["/sys/fs/bpf", "/sys/fs/cgroup"] if cfg["capture"] != "iptables" else [])
    if cfg["capture"] != "iptables":
        # The proxy reads the pinned maps; only the init container sees the
        # node's cgroups, read-only.
        assert mounts["/sys/fs/bpf"]["readOnly"] is True
        imounts = {m["mountPath"]: m for m in init["volumeMounts"]}
        assert imounts["/host/sys/fs/cgroup"]["readOnly"] is True
        assert "readOnly" not in imounts["/sys/fs/bpf"]

    # Idempotent: the injected pod is left as it is.
    again, resp2, note2 = kc.inject_pod(cfgfile, out)
    assert "patch" not in resp2 and again == out
    assert "already injected" in note2


def test_inject_pod_without_labels_or_volumes(rendered):
    cfg = kc.inject_config(rendered["sidecar-iptables"])
    pod = bare_pod()
    out, resp, note = kc.inject_pod(cfg, pod)
    assert out["metadata"]["labels"] == {"shunt.io/meshed": "true"}
    assert [c["name"] for c in out["spec"]["initContainers"]] == ["shunt-init", "shunt-proxy"]
    assert {"shunt-token", "shunt-ca-bundle", "shunt-kube-api"} <= {v["name"] for v in out["spec"]["volumes"]}
    assert kc.validate([out]) == {}
    # A label the pod already has with another value is set to "true".
    out, _, _ = kc.inject_pod(cfg, bare_pod(labels={"shunt.io/meshed": "false", "a/b~c": "x"}))
    assert out["metadata"]["labels"] == {"shunt.io/meshed": "true", "a/b~c": "x"}


def test_metrics_values_reach_the_webhook():
    objs = kc.render({"metrics": {"port": 9464, "scrapeAnnotations": False}})
    cfgfile = kc.inject_config(objs)
    assert json.load(open(cfgfile))["metrics_port"] == 9464
    out, resp, _ = kc.inject_pod(cfgfile, bare_pod())
    _, proxy = shunt_containers(out["spec"])
    assert proxy["ports"][0]["containerPort"] == 9464
    assert env_of(proxy)["SHUNT_ADMIN_METRICS_PORT"] == "9464"
    assert "annotations" not in out["metadata"]
    assert kc.validate([out]) == {}
    cfgfile = kc.inject_config(kc.render({"metrics": {"enabled": False}}))
    out, resp, _ = kc.inject_pod(cfgfile, bare_pod())
    init, proxy = shunt_containers(out["spec"])
    assert "ports" not in proxy and "annotations" not in out["metadata"]
    assert env_of(proxy)["SHUNT_ADMIN_METRICS_ADDRESS"] == "off" == env_of(init)["SHUNT_ADMIN_METRICS_ADDRESS"]
    # An application container on the port: injected, with a warning.
    pod = bare_pod()
    pod["spec"]["containers"][0]["ports"] = [{"containerPort": 15020}]
    out, resp, _ = kc.inject_pod(kc.inject_config(kc.render({})), pod)
    assert resp["warnings"] == ["shunt: container app declares port 15020, which the proxy's "
                                "metrics listener takes"]


def test_per_pod_annotations(rendered):
    cfg = kc.inject_config(rendered["trust-domain"])
    pod = bare_pod(annotations={
        "shunt.io/exclude-inbound-ports": "8081, 9090",
        "shunt.io/exclude-outbound-ports": "5432",
        "shunt.io/exclude-outbound-cidrs": "10.96.0.0/12,fd00::/8",
        "shunt.io/mtls-mode": "permissive",
        "shunt.io/log-level": "warn",
        "shunt.io/proxy-cpu-request": "200m",
        "shunt.io/proxy-memory-limit": "1Gi",
        "shunt.io/proxy-cpu-limit": "2",
        "shunt.io/future-knob": "1",
    })
    out, resp, _ = kc.inject_pod(cfg, pod)
    init, proxy = shunt_containers(out["spec"])
    env = env_of(proxy)
    # The chart's exclusions first, then the pod's.
    assert env["SHUNT_EXCLUDE_INBOUND_PORTS"] == "9100,8081,9090"
    assert env["SHUNT_EXCLUDE_OUTBOUND_PORTS"] == "5432"
    assert env["SHUNT_EXCLUDE_OUTBOUND_CIDRS"] == "169.254.169.254/32,10.96.0.0/12,fd00::/8"
    assert env["MTLS_MODE"] == "permissive"
    assert env["SHUNT_LOG_LEVEL"] == "warn"
    assert env_of(init) == env
    assert proxy["resources"] == {"requests": {"cpu": "200m", "memory": "64Mi"},
                                  "limits": {"memory": "1Gi", "cpu": "2"}}
    assert resp["warnings"] == ["shunt: annotation shunt.io/future-knob is not one shunt reads (ignored)"]
    assert kc.validate([out]) == {}


@pytest.mark.parametrize("key,value,reason", [
    ("shunt.io/exclude-inbound-ports", "8081,http", "'http' is not a port 1..65535"),
    ("shunt.io/exclude-outbound-ports", "0", "'0' is not a port"),
    ("shunt.io/exclude-outbound-cidrs", "10.0.0.0/33", "not a CIDR"),
    ("shunt.io/exclude-outbound-cidrs", "example.com/8", "not a CIDR"),
    ("shunt.io/mtls-mode", "STRICT", "'STRICT' is not one of strict, permissive, disabled"),
    ("shunt.io/log-level", "trace", "is not one of debug, info, warn, error"),
    ("shunt.io/proxy-memory-limit", "1GB", "not a quantity"),
    ("shunt.io/exclude-inbound-ports", ",".join(str(p) for p in range(1000, 1040)),
     "more than 32 entries"),
])
def test_bad_annotation_refuses_the_pod(rendered, key, value, reason):
    cfg = kc.inject_config(rendered["sidecar-iptables"])
    resp, note = kc.review(cfg, kc.admission_review(bare_pod(annotations={key: value})))
    assert resp["allowed"] is False and "patch" not in resp
    st = resp["status"]
    assert st["code"] == 400 and st["reason"] == "BadRequest" and st["status"] == "Failure"
    assert key in st["message"] and reason in st["message"], st["message"]
    assert note.startswith("refused demo/solo")


def test_opt_out_and_pods_left_alone(rendered):
    cfg = kc.inject_config(rendered["sidecar-iptables"])
    cases = [
        (bare_pod(annotations={"shunt.io/inject": "false"}), "shunt.io/inject: \"false\""),
        (bare_pod(labels={"shunt.io/inject": "false"}), "shunt.io/inject: \"false\""),
    ]
    hostnet = bare_pod()
    hostnet["spec"]["hostNetwork"] = True
    cases.append((hostnet, "hostNetwork"))
    for pod, why in cases:
        resp, note = kc.review(cfg, kc.admission_review(pod))
        assert resp["allowed"] is True and "patch" not in resp, note
        assert why in note
    resp, _ = kc.review(cfg, kc.admission_review(hostnet))
    assert resp["warnings"] == ["shunt: pod uses hostNetwork: no sidecar injected"]
    # "true" or any other value is no opt-out.
    out, resp, _ = kc.inject_pod(cfg, bare_pod(annotations={"shunt.io/inject": "true"}))
    assert "patch" in resp
    # Only Pod CREATE is mutated.
    resp, note = kc.review(cfg, kc.admission_review(bare_pod(), operation="UPDATE"))
    assert resp == {"uid": resp["uid"], "allowed": True} and "UPDATE" in note
    svc = {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "x"}, "spec": {}}
    resp, note = kc.review(cfg, kc.admission_review(
        svc, kind={"group": "", "version": "v1", "kind": "Service"}))
    assert resp == {"uid": resp["uid"], "allowed": True} and "not a core v1 Pod" in note


def test_malformed_reviews(rendered):
    cfg = kc.inject_config(rendered["sidecar-iptables"])
    good = kc.admission_review(bare_pod())

    def raw(body):
        return kc.review_raw(cfg, body if isinstance(body, bytes) else json.dumps(body).encode())

    for body, msg in [
        (b"", "not JSON"),
        (b"{\"apiVersion\": ", "not JSON"),
        (b"[1,2]", "expected AdmissionReview"),
        (dict(good, apiVersion="admission.k8s.io/v1beta1"), "only admission.k8s.io/v1 is served"),
        (dict(good, kind="Pod"), "expected AdmissionReview"),
        ({k: v for k, v in good.items() if k != "request"}, "no request object"),
        (dict(good, request=dict(good["request"], uid="")), "request.uid"),
        (dict(good, request=dict(good["request"], uid=7)), "request.uid"),
    ]:
        status, resp, note = raw(body)
        assert status == 400, (body, resp)
        assert resp["error"] == "bad_request" and msg in resp["message"], (body, resp)
        assert note.startswith("bad request")

    # A review with a uid but a pod that is not one: refused, with the reason.
    for obj, msg in [
        (None, "request.object is not a Pod object"),
        ({"metadata": {"name": "x"}}, "spec.containers is missing or empty"),
        ({"metadata": {"name": "x"}, "spec": {"containers": []}}, "spec.containers is missing"),
        ({"metadata": {"name": "x"}, "spec": {"containers": [{"name": "a"}],
                                             "initContainers": {}}}, "spec.initContainers"),
        ({"metadata": {"name": "x", "labels": []}, "spec": {"containers": [{"name": "a"}]}},
         "metadata.labels"),
        ({"metadata": {"annotations": {"shunt.io/mtls-mode": 3}},
          "spec": {"containers": [{"name": "a"}]}}, "not a string"),
    ]:
        rev = copy.deepcopy(good)
        rev["request"]["object"] = obj
        resp, note = kc.review(cfg, rev)
        assert resp["allowed"] is False and resp["status"]["code"] == 400
        assert msg in resp["status"]["message"], resp


def test_request_size_is_bounded(rendered):
    cfg = kc.inject_config(rendered["sidecar-iptables"])
    limit = 2 * 1024 * 1024
    pod = bare_pod(annotations={"note": ""})
    base = len(json.dumps(kc.admission_review(pod)).encode())
    pod["metadata"]["annotations"]["note"] = "x" * (limit - base)
    rev = kc.admission_review(pod)
    body = json.dumps(rev).encode()
    assert len(body) == limit
    status, resp, note = kc.review_raw(cfg, body)
    assert status == 200 and "patch" in resp["response"], note
    status, resp, note = kc.review_raw(cfg, body + b" ")
    assert status == 413 and resp["error"] == "too_large"
    assert "%d bytes" % (limit + 1) in resp["message"]
