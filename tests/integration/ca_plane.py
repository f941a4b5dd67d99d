"""The control plane of the shunt-ca tests: a pod "cp" joined to the test's
pods, running the Kubernetes API stand-in (k8s_standin.py: TokenReview, and
POST /token to mint projected service-account tokens) and a real shunt-ca
that reviews tokens with it. Every joined pod reaches the CA at CA_IP (an
address on cp's loopback, routed over each pod's link)."""

import base64
import json
import os
import subprocess
import sys

import shuntlib as sl

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "k8s_standin.py")
SHUNT_CA = os.path.join(sl.BUILD, "shunt-ca")
CA_IP = "10.78.255.1"
CA_PORT = 15012
CA_ADDRESS = "https://%s:%d" % (CA_IP, CA_PORT)
API = ("127.0.0.1", 16443)
CTL = ("127.0.0.1", 16444)
API_TOKEN = "shunt-ca-reviewer-token"


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True, timeout=30)


class ControlPlane:
    def __init__(self, pods, lifetime="1h"):
        if not os.access(SHUNT_CA, os.X_OK):
            raise sl.HarnessError("shunt-ca not found at %s (set SHUNT_BUILD)" % SHUNT_CA)
        self.dir = sl.tmpdir()
        os.chmod(self.dir, 0o755)
        self.lifetime = lifetime
        self.pod = sl.Pod("cp")
        self.procs = []
        self.standin = self.ca = None
        self.pod.ip("link", "set", "lo", "up")
        self.pod.ip("addr", "add", CA_IP + "/32", "dev", "lo")
        for i, p in enumerate(pods):
            sl.link(p, self.pod, "10.78.%d.1" % i, "10.78.%d.2" % i, "fd78:%d::1" % i,
                    "fd78:%d::2" % i)
            p.ip("route", "add", CA_IP, "via", "10.78.%d.2" % i)
        self._standin_certs()
        self.start_standin()
        self.start_ca()

    # -- the Kubernetes API stand-in
    def _standin_certs(self):
        p = self.path
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", p("k8s-ca.key"), "-out", p("k8s-ca.pem"), "-days", "1", "-subj",
                "/CN=k8s-test-ca")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", p("api.key"), "-out", p("api.csr"), "-subj", "/CN=kube-apiserver")
        with open(p("ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:kubernetes.default.svc\n")
        openssl("x509", "-req", "-in", p("api.csr"), "-CA", p("k8s-ca.pem"), "-CAkey",
                p("k8s-ca.key"), "-CAcreateserial", "-out", p("api.pem"), "-days", "1",
                "-extfile", p("ext"))
        with open(p("k8s-ca.pem"), "rb") as f:
            ca = base64.b64encode(f.read()).decode()
        with open(p("reviewer-token"), "w") as f:
            f.write(API_TOKEN)
        kc = {
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "standin", "cluster": {
                "server": "https://%s:%d" % API, "certificate-authority-data": ca}}],
            "users": [{"name": "ca", "user": {"tokenFile": p("reviewer-token")}}],
            "contexts": [{"name": "test", "context": {"cluster": "standin", "user": "ca"}}],
        }  # fmt: skip
        sl.write_json(p("kubeconfig.json"), kc)

    def path(self, name):
        return os.path.join(self.dir, name)

    def start_standin(self):
        argv = [sys.executable, STANDIN, "--listen", "%s:%d" % API, "--control", "%s:%d" % CTL,
                "--cert", self.path("api.pem"), "--key", self.path("api.key"),
                "--token", API_TOKEN, "--state", self.path("state.json")]  # fmt: skip
        self.standin = self.pod.spawn_ready(argv, "k8s-standin", what="stand-in")
        self.procs.append(self.standin)

    def ctl(self, method, path, body=None):
        status, _, data = self.pod.http(CTL[0], CTL[1], method, path,
                                        body=json.dumps(body) if body is not None else None)
        assert status == 200, (path, status, data)
        return json.loads(data)

    def token(self, ns, sa, audience="shunt-ca", expires_in=3600, pod=None):
        return self.ctl("POST", "/token", {
            "namespace": ns, "service_account": sa, "audience": [audience] if isinstance(audience, str) else audience,
            "expires_in": expires_in, "pod": pod or sa + "-7d9f8"})["token"]  # fmt: skip

    def write_token(self, path, ns, sa, **kw):
        """Writes a token the way the kubelet rotates one: a new file renamed
        over the old."""
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.token(ns, sa, **kw))
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)

    # -- shunt-ca
    def start_ca(self):
        argv = [SHUNT_CA, "--listen", "0.0.0.0:%d" % CA_PORT, "--ca-dir", self.path("ca"),
                "--kubeconfig", self.path("kubeconfig.json"), "--lifetime", self.lifetime,
                "--server-san", CA_IP, "--namespace", "shunt-system"]  # fmt: skip
        self.ca = self.pod.spawn(argv, "shunt-ca")
        self.procs.append(self.ca)
        sl.wait_until(self.ready, 20, what="shunt-ca ready")

    def ready(self):
        if not self.ca.alive():
            raise sl.HarnessError("shunt-ca exited:\n%s" % self.ca.read_stderr()[-3000:])
        if not os.path.exists(self.path("ca/ca.pem")):
            return False
        r = self.pod.run(["curl", "-sf", "-m", "2", "--cacert", self.path("ca/ca.pem"),
                          CA_ADDRESS + "/ready"], check=False)  # fmt: skip
        return r.returncode == 0

    def stop_ca(self):
        self.ca.stop()
        self.procs.remove(self.ca)
        self.ca = None

    def bundle(self, path):
        """The trust bundle as sidecars mount it (the shunt-ca-bundle ConfigMap)."""
        r = self.pod.run(["curl", "-sf", "-m", "5", "--cacert", self.path("ca/ca.pem"),
                          CA_ADDRESS + "/v1/bundle"])  # fmt: skip
        assert "BEGIN CERTIFICATE" in r.stdout, r.stdout
        with open(path, "w") as f:
            f.write(r.stdout)
        os.chmod(path, 0o644)
        return path

    def ca_log(self):
        return self.ca.read_stderr() if self.ca else ""

    def close(self):
        for p in self.procs:
            p.stop()
        self.pod.delete()
