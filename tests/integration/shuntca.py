# SPDX-License-Identifier: Apache-2.0
"""Harness for tests that need shunt-ca: the Kubernetes API stand-in (with
TokenReview and POST /token), a kubeconfig for it, shunt-ca processes in a
pod, and a client that sends real `openssl req` CSRs over HTTPS.

    api = KubeApi(pod)                      # stand-in on 127.0.0.1 in pod
    ca = ShuntCA(pod, api, ca_dir=...)      # waits for /healthz
    tok = api.token("web", "frontend")      # audience shunt-ca
    key, csr = make_csr()                   # openssl req, ECDSA P-256
    status, hdrs, body = ca.certificate(tok, csr)

or, for a module's fixture, all three at once:

    with ca_env("ca", args=[...], prepare=lambda api: ...) as (pod, api, ca):
"""

import contextlib
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time

import shuntlib as sl

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "k8s_standin.py")
SHUNT_CA = os.path.join(sl.BUILD, "shunt-ca")
CALLER_TOKEN = "shunt-ca-caller-token"  # shunt-ca's own credentials at the API


def openssl(*args, input=None):  # noqa: A002
    r = subprocess.run(["openssl"] + list(args), capture_output=True, timeout=30, input=input)
    if r.returncode != 0:
        raise sl.HarnessError("openssl %s: %s" % (" ".join(args), r.stderr.decode()))
    return r.stdout.decode()


def make_csr(d=None, key="ec", san=None, ca=False, name="w"):
    """A key and a PEM CSR made by `openssl req`. key: "ec" (P-256), "ec384",
    "rsa" (2048) or "rsa1024"; san: an openssl subjectAltName value to request;
    ca: ask for basicConstraints CA:TRUE. Returns (key path, CSR PEM)."""
    d = d or sl.tmpdir()
    kp, cp = os.path.join(d, name + ".key"), os.path.join(d, name + ".csr")
    kargs = {"ec": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"],
             "ec384": ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-384"],
             "rsa": ["-newkey", "rsa:2048"],
             "rsa1024": ["-newkey", "rsa:1024"]}[key]
    argv = ["req", "-new", "-nodes"] + kargs + ["-keyout", kp, "-out", cp, "-subj", "/CN=" + name]
    if san:
        argv += ["-addext", "subjectAltName=" + san]
    if ca:
        argv += ["-addext", "basicConstraints=critical,CA:TRUE"]
    openssl(*argv)
    with open(cp) as f:
        return kp, f.read()


class KubeApi:
    """k8s_standin.py in pod, plain HTTP on 127.0.0.1 (the CA reaches it
    through a kubeconfig with a bearer token of its own); listen="0.0.0.0"
    when sidecars in other pods use it for discovery too."""

    def __init__(self, pod, port=16480, ctl_port=16481, listen="127.0.0.1"):
        self.pod = pod
        self.port, self.ctl_port = port, ctl_port
        self.dir = sl.tmpdir()
        argv = [sys.executable, STANDIN, "--listen", "%s:%d" % (listen, port),
                "--control", "127.0.0.1:%d" % ctl_port, "--token", CALLER_TOKEN]
        self.proc = pod.spawn_ready(argv, "k8s-standin-ca", what="k8s stand-in")
        self.kubeconfig = os.path.join(self.dir, "kubeconfig.json")
        with open(self.kubeconfig, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "ca",
                       "clusters": [{"name": "standin", "cluster": {
                           "server": "http://127.0.0.1:%d" % port}}],
                       "users": [{"name": "shunt-ca", "user": {"token": CALLER_TOKEN}}],
                       "contexts": [{"name": "ca", "context": {"cluster": "standin",
                                                              "user": "shunt-ca"}}]}, f)

    def ctl(self, method, path, body=None):
        status, _, data = self.pod.http("127.0.0.1", self.ctl_port, method, path,
                                        body=json.dumps(body) if body is not None else None)
        if status != 200:
            raise sl.HarnessError("stand-in %s %s: %d %r" % (method, path, status, data))
        return json.loads(data)

    def token(self, ns, sa, audience="shunt-ca", expires_in=3600, pod=None):
        body = {"namespace": ns, "service_account": sa, "audience": audience,
                "expires_in": expires_in}
        if pod:
            body["pod"] = pod
        return self.ctl("POST", "/token", body)["token"]

    def tokenreview(self, **switches):
        """fail_status, delay_s, bad_json, delete_service_account, ..."""
        return self.ctl("POST", "/tokenreview", switches)

    def stop(self):
        self.proc.stop()


class ShuntCA:
    """One shunt-ca process in pod, listening on 127.0.0.1:port with the
    serving certificate for IP 127.0.0.1."""

    def __init__(self, pod, api, port=15012, ca_dir=None, args=(), name="shunt-ca"):
        if not os.access(SHUNT_CA, os.X_OK):
            raise sl.HarnessError("%s is missing: build it first" % SHUNT_CA)
        self.pod, self.api, self.port, self.name = pod, api, port, name
        self.ca_dir = ca_dir or os.path.join(sl.tmpdir(), "ca")
        self.argv = [SHUNT_CA, "--listen", "127.0.0.1:%d" % port, "--kubeconfig", api.kubeconfig,
                     "--server-san", "127.0.0.1"] + list(args)
        if not any(a in ("--ca-cert", "--ca-dir") for a in args):
            self.argv += ["--ca-dir", self.ca_dir]
        self.proc = None
        self.start()

    def start(self, timeout=15.0):
        self.proc = self.pod.spawn(self.argv, self.name)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.proc.alive():
                raise sl.HarnessError("%s exited: %s" % (self.name, self.proc.read_stderr()))
            try:
                self.bundle_pem = self.get_insecure("/v1/bundle")
                self.bundle = os.path.join(sl.tmpdir(), "bundle.pem")
                with open(self.bundle, "w") as f:
                    f.write(self.bundle_pem)
                return
            except OSError:
                time.sleep(0.05)
        raise sl.HarnessError("%s did not answer within %ss: %s" % (
            self.name, timeout, self.proc.read_stderr()))

    def stop(self):
        """SIGTERM; the exit status (0 for a clean stop)."""
        return self.proc.stop(signal.SIGTERM, timeout=10)

    def log_lines(self):
        out = []
        for line in self.proc.read_stderr().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                pass
        return out

    def audits(self):
        """The audit records of certificate requests (their "audit" objects)."""
        return [line["audit"] for line in self.log_lines()
                if isinstance(line.get("audit"), dict) and line["audit"].get("event") == "certificate"]

    # -- clients (in the pod's network namespace)
    def tls(self, verify=True, timeout=10.0):
        ctx = ssl.create_default_context(cafile=self.bundle) if verify else \
            ssl._create_unverified_context()  # noqa: S323 (the first fetch of the bundle)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        s = self.pod.connect("127.0.0.1", self.port, timeout)
        return ctx.wrap_socket(s, server_hostname="127.0.0.1")

    def request(self, method, path, body=None, headers=None, verify=True, timeout=10.0):
        import http.client
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, timeout=timeout)
        conn.sock = self.tls(verify, timeout)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()

    def get_insecure(self, path):
        status, _, data = self.request("GET", path, verify=False)
        if status != 200:
            raise OSError("GET %s: %d" % (path, status))
        return data.decode()

    def certificate(self, token, csr_pem, body=None):
        """POST /v1/certificates: (status, headers, parsed JSON or raw bytes)."""
        headers = {"Content-Type": "application/json"}
        if token is not None:
            headers["Authorization"] = "Bearer " + token
        if body is None:
            body = json.dumps({"csr": csr_pem})
        status, hdrs, data = self.request("POST", "/v1/certificates", body=body, headers=headers)
        try:
            return status, hdrs, json.loads(data)
        except ValueError:
            return status, hdrs, data


@contextlib.contextmanager
def ca_env(name, args=(), prepare=None):
    """A pod with the API stand-in and shunt-ca in it, yielded as (pod, api,
    ca); prepare(api), when given, runs before shunt-ca starts. At the end
    shunt-ca must stop with status 0 (its stderr is the message if not), and
    the stand-in and the pod are removed in any case."""
    pod = sl.Pod(name)
    api = ca = None
    try:
        api = KubeApi(pod)
        if prepare is not None:
            prepare(api)
        ca = ShuntCA(pod, api, args=list(args))
        yield pod, api, ca
    finally:
        try:
            if ca is not None:
                assert ca.stop() == 0, ca.proc.read_stderr()[-3000:]
        finally:
            if api is not None:
                api.stop()
            pod.delete()


def raw_socket(pod, port, timeout=5.0):
    """A connected TCP socket to 127.0.0.1:port in pod (for slow clients)."""
    s = pod.socket(socket.AF_INET)
    s.settimeout(timeout)
    s.connect(("127.0.0.1", port))
    return s
