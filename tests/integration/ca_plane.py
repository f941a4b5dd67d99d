# SPDX-License-Identifier: Apache-2.0
"""The control plane of the sidecar tests that take certificates from
shunt-ca: a pod "cp" joined to the test's pods, running the Kubernetes API
stand-in and a real shunt-ca (shuntca.py's KubeApi and ShuntCA). Every
joined pod reaches the CA at CA_ADDRESS (an address on cp's loopback, routed
over each pod's link), which its serving certificate names."""

import os

import shuntca
import shuntlib as sl

CA_IP = "10.88.255.1"
CA_PORT = 15012
CA_ADDRESS = "https://%s:%d" % (CA_IP, CA_PORT)


class ControlPlane:
    def __init__(self, pods, lifetime="1h", api_listen="127.0.0.1"):
        """api_listen: where the API stand-in listens in cp (0.0.0.0 when the
        sidecars use it for discovery too, at CA_IP)."""
        self.pod = sl.Pod("cp")
        self.api = self.ca = None
        try:
            self.pod.ip("link", "set", "lo", "up")
            self.pod.ip("addr", "add", CA_IP + "/32", "dev", "lo")
            for i, p in enumerate(pods):
                sl.link(p, self.pod, "10.88.%d.1" % i, "10.88.%d.2" % i, "fd88:%d::1" % i,
                        "fd88:%d::2" % i)  # fmt: skip
                p.ip("route", "add", CA_IP, "via", "10.88.%d.2" % i)
            self.api = shuntca.KubeApi(self.pod, listen=api_listen)
            args = ["--listen", "0.0.0.0:%d" % CA_PORT, "--server-san", "IP:" + CA_IP,
                    "--lifetime", lifetime]  # fmt: skip
            self.ca = shuntca.ShuntCA(self.pod, self.api, port=CA_PORT, args=args)
        except BaseException:
            self.close()
            raise

    def bundle(self, path):
        """The trust bundle as sidecars mount it (the shunt-ca-bundle ConfigMap)."""
        with open(path, "w") as f:
            f.write(self.ca.bundle_pem)
        os.chmod(path, 0o644)
        return path

    def write_token(self, path, ns, sa, **kw):
        """A projected token written the way the kubelet rotates one: a new
        file renamed over the old."""
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.api.token(ns, sa, **kw))
        os.chmod(tmp, 0o644)
        os.rename(tmp, path)

    def close(self):
        try:
            if self.ca and self.ca.proc:
                self.ca.stop()
            if self.api:
                self.api.stop()
        finally:
            self.pod.delete()


def private_key_files(paths):
    """The files among paths (and below those that are directories) whose
    content holds a PEM private key."""
    found = []
    for path in paths:
        files = [path] if os.path.isfile(path) else [
            os.path.join(root, n) for root, _, ns in os.walk(path) for n in ns]  # fmt: skip
        for p in files:
            try:
                with open(p, "rb") as f:
                    if b"PRIVATE KEY" in f.read():
                        found.append(p)
            except OSError:
                pass
    return found


def open_files(d):
    """The regular files shuntd d has open."""
    pid = d.proc.pid
    out = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            t = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if t.startswith("/") and os.path.isfile(t) and not t.startswith(("/proc/", "/dev/")):
            out.add(t)
    return out
