# SPDX-License-Identifier: Apache-2.0
"""The chart in node mode (nodeAgent.enabled) and node-side capture for
sidecar pods (sidecar.captureFrom=node), rendered by real helm and checked
against the Kubernetes OpenAPI schemas (k8s_validate.mjs); pods patched by
the real webhook code (build/inject_review).

- The DaemonSet: exactly the capabilities values.yaml states and justifies,
  not privileged, exactly the stated mounts and volumes, host PID and
  network namespaces, NODE_NAME from the downward API, mode node, its own
  projected token with audience shunt-ca where shuntd reads it, probes on
  the admin API, the rolling update, resources from the values; every
  environment variable it sets is one shuntd reads.
- Node-mode namespaces: the webhook adds no sidecar, only the meshed label
  the agent's Pods watch selects; other namespaces keep their sidecars.
- captureFrom=node: the injected pod has no init container and no
  capability, and passes Pod Security "baseline" (the default injection
  does not: its init container adds NET_ADMIN); the settings annotation
  holds what the init container's environment would have.
- Values that cannot work are refused with one line."""

import json
import os
import re

import pytest
import yaml

import k8schart as kc
import shuntlib as sl
from test_chart import bare_pod, env_of, load_fixture, pod_from, shunt_containers

CAPS = {"BPF", "PERFMON", "NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE"}
MOUNTS = {  # mountPath -> (volume, readOnly)
    "/sys/fs/bpf": ("bpffs", False),
    "/sys/fs/cgroup": ("cgroup", True),
    "/var/run/secrets/shunt": ("shunt-token", True),
    "/var/run/shunt/bundle": ("bundle", True),
    "/run": ("run", False),
}
NODE = {"nodeAgent": {"enabled": True}, "meshNamespaces": ["demo", "shop"]}
MIXED = {"nodeAgent": {"enabled": True, "namespaces": ["shop"]}, "sidecar": {"captureFrom": "node"}}
SIDECAR_ONLY = {"nodeAgent": {"enabled": True, "namespaces": []},
                "sidecar": {"captureFrom": "node", "nativeSidecar": False}}


@pytest.fixture(scope="module")
def rendered():
    return kc.render_cases({"node": NODE, "mixed": MIXED, "sidecar-only": SIDECAR_ONLY,
                            "plain": {}})


def daemonset(objs):
    return kc.one(objs, "DaemonSet", "shunt-node")


def config_env_names():
    """Every environment variable shuntd reads (its configuration reference)."""
    with open(os.path.join(sl.SOURCE, "docs", "configuration.md")) as f:
        return set(re.findall(r"^- environment: `([A-Z0-9_]+)`", f.read(), re.M))


def test_schemas_and_lint(rendered):
    objects = [o for objs in rendered.values() for o in objs]
    assert kc.validate(objects) == {}
    for values in (NODE, MIXED, SIDECAR_ONLY):
        vf = os.path.join(sl.tmpdir(), "values-node.yaml")
        with open(vf, "w") as f:
            yaml.safe_dump(values, f)
        assert "0 chart(s) failed" in kc.helm("lint", "--strict", kc.CHART, "-f", vf).stdout
    assert not kc.find(rendered["plain"], "DaemonSet")


def test_daemonset_privileges_are_the_stated_ones(rendered):
    ds = daemonset(rendered["node"])
    spec = ds["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert "initContainers" not in spec
    sc = c["securityContext"]
    assert set(sc["capabilities"]["add"]) == CAPS and len(sc["capabilities"]["add"]) == len(CAPS)
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["privileged"] is False and sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["hostPID"] is True and spec["hostNetwork"] is True
    assert not spec.get("hostIPC")
    assert spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    # Every capability and host namespace is named, with its reason, in
    # values.yaml (nodeAgent) and docs/kubernetes.md.
    with open(os.path.join(kc.CHART, "values.yaml")) as f:
        values_text = f.read()
    with open(os.path.join(sl.SOURCE, "docs", "kubernetes.md")) as f:
        doc = f.read()
    for name in sorted(CAPS) + ["hostPID", "hostNetwork"]:
        assert re.search(r"^#\s+%s\s+\S" % name, values_text, re.M), name
        assert "`%s`" % name in doc, name

    # Exactly these mounts, from exactly these volumes.
    mounts = {m["mountPath"]: (m["name"], m.get("readOnly", False)) for m in c["volumeMounts"]}
    assert mounts == MOUNTS
    vols = {v["name"]: v for v in spec["volumes"]}
    assert set(vols) == {v for v, _ in MOUNTS.values()}
    hostpaths = {v["hostPath"]["path"]: v["hostPath"]["type"] for v in vols.values() if "hostPath" in v}
    assert hostpaths == {"/sys/fs/bpf": "Directory", "/sys/fs/cgroup": "Directory"}
    (tok,) = vols["shunt-token"]["projected"]["sources"]
    assert tok["serviceAccountToken"]["audience"] == "shunt-ca"
    assert tok["serviceAccountToken"]["path"] == "token"
    assert vols["bundle"]["configMap"]["name"] == "shunt-ca-bundle"
    assert vols["run"]["emptyDir"]["medium"] == "Memory"


def test_daemonset_wiring(rendered):
    ds = daemonset(rendered["node"])
    spec = ds["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    env = env_of(c)
    assert env["SHUNT_MODE"] == "node"
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    assert env["SERVICE_DISCOVERY_TYPE"] == "kubernetes" and env["KUBERNETES_NAMESPACE"] == "*"
    assert env["SHUNT_CA_ADDRESS"] == "https://shunt-ca.shunt-system.svc:15012"
    token = env["SHUNT_CA_TOKEN_FILE"]
    assert os.path.dirname(token) == "/var/run/secrets/shunt" and os.path.basename(token) == "token"
    assert os.path.dirname(env["CA_BUNDLE_PATH"]) == "/var/run/shunt/bundle"
    assert env["SHUNT_BPF_PIN_ROOT"].startswith("/sys/fs/bpf/")
    assert env["SHUNT_REDIRECT"] == "ebpf"
    # Nothing shuntd would not read (a typo would be ignored silently by the kubelet).
    assert set(env) <= config_env_names(), set(env) - config_env_names()
    # The agent's account is the one shunt-ca delegates identities to.
    assert spec["serviceAccountName"] == "shunt-node"
    args = kc.one(rendered["node"], "Deployment", "shunt-ca")["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert args[args.index("--node-agent-sa") + 1] == "shunt-system/shunt-node"
    # Probes on the admin API of the node's loopback; metrics on the node.
    for probe, path in (("readinessProbe", "/ready"), ("livenessProbe", "/health")):
        assert c[probe]["httpGet"] == {"host": "127.0.0.1", "port": 15003, "path": path}
    assert c["ports"] == [{"name": "shunt-metrics", "containerPort": 15020, "protocol": "TCP"}]
    # Upgrades: one node at a time, old agent out before the new one in.
    assert ds["spec"]["updateStrategy"] == {"type": "RollingUpdate",
                                            "rollingUpdate": {"maxUnavailable": 1, "maxSurge": 0}}
    assert spec["terminationGracePeriodSeconds"] == 40
    assert spec["priorityClassName"] == "system-node-critical"
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"memory": "512Mi"}}
    assert spec["tolerations"] == [{"operator": "Exists"}]
    assert ds["spec"]["selector"]["matchLabels"].items() <= \
        ds["spec"]["template"]["metadata"]["labels"].items()
    # Values reach it.
    objs = kc.render({"nodeAgent": {"enabled": True, "maxUnavailable": "25%", "capture": "iptables",
                                    "terminationGracePeriodSeconds": 90,
                                    "tokenExpirationSeconds": 7200,
                                    "resources": {"limits": {"memory": "1Gi"}}},
                      "metrics": {"enabled": False}})
    ds = daemonset(objs)
    spec = ds["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert ds["spec"]["updateStrategy"]["rollingUpdate"]["maxUnavailable"] == "25%"
    assert spec["terminationGracePeriodSeconds"] == 90
    assert env_of(c)["SHUNT_REDIRECT"] == "iptables"
    assert env_of(c)["SHUNT_ADMIN_METRICS_ADDRESS"] == "off" and "ports" not in c
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"memory": "1Gi"}}  # merged with the defaults
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["shunt-token"]["projected"]["sources"][0]["serviceAccountToken"][
        "expirationSeconds"] == 7200
    assert kc.validate(objs) == {}


def test_node_mode_pods_get_no_sidecar(rendered):
    cfg = kc.inject_config(rendered["node"])
    assert json.load(open(cfg))["node_namespaces"] == ["*"]
    dep = load_fixture("deploy-web.yaml")
    pod = pod_from(dep)
    out, resp, note = kc.inject_pod(cfg, pod, namespace=dep["metadata"]["namespace"])
    assert out["metadata"]["labels"] == dict(pod["metadata"]["labels"], **{"shunt.io/meshed": "true"})
    assert out["spec"] == pod["spec"]
    assert out["metadata"].get("annotations") == pod["metadata"].get("annotations")
    assert "node mode (served by the node agent, no sidecar)" in note
    assert kc.validate([out]) == {}
    # Opt-out still holds.
    resp, note = kc.review(cfg, kc.admission_review(bare_pod(annotations={"shunt.io/inject": "false"})))
    assert "patch" not in resp
    # Without node mode the same pod gets its sidecar.
    out, _, _ = kc.inject_pod(kc.inject_config(rendered["plain"]), pod)
    assert shunt_containers(out["spec"]) != (None, None)
    assert json.load(open(kc.inject_config(rendered["plain"])))["node_namespaces"] == []


def test_mixed_namespaces_and_capture_from_node_is_baseline(rendered):
    cfg = kc.inject_config(rendered["mixed"])
    pod = pod_from(load_fixture("deploy-web.yaml"))
    # shop: node mode.
    out, _, note = kc.inject_pod(cfg, pod, namespace="shop")
    assert out["spec"] == pod["spec"] and out["metadata"]["labels"]["shunt.io/meshed"] == "true"
    # demo: a sidecar, its capture from the node.
    out, resp, note = kc.inject_pod(cfg, pod, namespace="demo")
    assert "iptables capture from the node" in note
    init, proxy = shunt_containers(out["spec"])
    assert init is None and proxy is not None
    assert kc.baseline_violations(out["spec"]) == []
    assert kc.restricted_violations(out["spec"], proxy, volumes=False) == []
    assert kc.validate([out]) == {}
    settings = json.loads(out["metadata"]["annotations"]["shunt.io/node-capture"])
    assert settings == {"SHUNT_REDIRECT": "iptables", "SHUNT_PROXY_UID": "1337",
                        "SHUNT_ADMIN_METRICS_PORT": "15020"}
    env = env_of(proxy)
    for k, v in settings.items():
        assert env[k] == v  # what the proxy (capture init) expects
    assert proxy["args"] == ["--capture", "init"]
    # The same pod injected the default way needs NET_ADMIN: not baseline.
    out, _, _ = kc.inject_pod(kc.inject_config(rendered["plain"]), pod, namespace="demo")
    assert any("NET_ADMIN" in v for v in kc.baseline_violations(out["spec"]))

    # Classic sidecar, node agent only for capture: no init container at all.
    cfg = kc.inject_config(rendered["sidecar-only"])
    pod = bare_pod(annotations={"shunt.io/exclude-inbound-ports": "9100"})
    out, _, _ = kc.inject_pod(cfg, pod)
    assert "initContainers" not in out["spec"]
    assert kc.baseline_violations(out["spec"]) == []
    settings = json.loads(out["metadata"]["annotations"]["shunt.io/node-capture"])
    assert settings["SHUNT_EXCLUDE_INBOUND_PORTS"] == "9100"
    assert kc.validate([out]) == {}


@pytest.mark.parametrize("values,expect", [
    ({"sidecar": {"captureFrom": "node"}}, "sidecar.captureFrom=node needs nodeAgent.enabled=true"),
    ({"sidecar": {"captureFrom": "node", "capture": "ebpf"}, "nodeAgent": {"enabled": True}},
     "sidecar.captureFrom=node installs iptables capture: set sidecar.capture=iptables (not ebpf)"),
    ({"sidecar": {"captureFrom": "kubelet"}}, "captureFrom"),
    ({"nodeAgent": {"enabled": True, "namespaces": ["Shop"]}}, "nodeAgent.namespaces"),
    ({"nodeAgent": {"maxUnavailable": 0}}, "maxUnavailable"),
    ({"nodeAgent": {"tokenExpirationSeconds": 60}}, "tokenExpirationSeconds"),
])
def test_values_refused(values, expect):
    assert expect in kc.render_error(values)
