# SPDX-License-Identifier: Apache-2.0
"""Kubernetes discovery against a stand-in API server (k8s_standin.py, HTTPS
with a throwaway CA, bearer token) in the app pod: Services and
EndpointSlices listed then watched; scaling, terminating endpoints, bad
JSON, 410 Gone (as an event and as a status; endpoints kept during the
relist), watches resumed from bookmarks while the stand-in compacts its
history by age, a Service leaving the label selector (DELETED), RBAC 403,
a silent stream, a killed and restarted API server, a rotated token. Real
traffic goes through the service's clusterIP to http peers in the remote
pod."""

import base64
import collections
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import shuntlib as sl
from shuntlib import Topology as T

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "k8s_standin.py")
VIP = "10.96.0.20"
PORT = 8081
EXTRA = ["10.77.0.4", "10.77.0.5", "10.77.0.6"]
EPS = [T.REMOTE4, T.REMOTE4B] + EXTRA  # ep0..ep4
API = ("127.0.0.1", 16443)
CTL = ("127.0.0.1", 16444)
WATCH_TIMEOUT_S = 2  # shuntd asks for 2 s watches: a stream silent for 4 s is dead


def service_obj(name="web", labels=None, ns="default", vip=VIP):
    return {
        "metadata": {"name": name, "namespace": ns, "labels": labels or {"app": name}},
        "spec": {
            "type": "ClusterIP",
            "clusterIP": vip,
            "clusterIPs": [vip],
            "ports": [{"name": "http", "port": 80, "targetPort": "web", "protocol": "TCP",
                       "appProtocol": "http"}],
        },
    }


def slice_obj(addrs, terminating=(), not_ready=(), name="web-abcde", zone="zone-a", svc="web",
              ns="default"):
    eps = []
    for a in addrs:
        term = a in terminating
        eps.append({
            "addresses": [a],
            "conditions": {"ready": not term and a not in not_ready, "serving": a not in not_ready,
                           "terminating": term},
            "zone": zone,
            "targetRef": {"kind": "Pod", "name": "pod-" + a.replace(".", "-")},
        })
    return {
        "metadata": {"name": name, "namespace": ns,
                     "labels": {"kubernetes.io/service-name": svc,
                                "endpointslice.kubernetes.io/managed-by": "standin"}},
        "addressType": "IPv4",
        "endpoints": eps,
        "ports": [{"name": "http", "port": PORT, "protocol": "TCP"}],
    }


def openssl(*args):
    subprocess.run(["openssl"] + list(args), check=True, capture_output=True, timeout=30)


class Env:
    def __init__(self, topo=None, api=API, ctl=CTL):
        """api, ctl: the stand-in's API and control addresses (test_clusters
        runs two)."""
        self.api, self.ctl_at = api, ctl
        self.topo = topo or T()
        self.procs = []
        self.standin = None
        self.daemon = None
        self.dir = sl.tmpdir()
        os.chmod(self.dir, 0o755)

    def make_certs(self):
        d = self.dir
        p = lambda n: os.path.join(d, n)  # noqa: E731
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", p("ca.key"), "-out", p("ca.pem"), "-days", "1", "-subj", "/CN=k8s-test-ca")
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", p("srv.key"), "-out", p("srv.csr"), "-subj", "/CN=kube-apiserver")
        with open(p("ext"), "w") as f:
            f.write("subjectAltName=IP:127.0.0.1,DNS:kubernetes.default.svc\n")
        openssl("x509", "-req", "-in", p("srv.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
                "-CAcreateserial", "-out", p("srv.pem"), "-days", "1", "-extfile", p("ext"))

    def write_kubeconfig(self, token_file):
        with open(os.path.join(self.dir, "ca.pem"), "rb") as f:
            ca = base64.b64encode(f.read()).decode()
        kc = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "test",
            "clusters": [{"name": "standin", "cluster": {
                "server": "https://%s:%d" % self.api, "certificate-authority-data": ca}}],
            "users": [{"name": "mesh", "user": {"tokenFile": token_file}}],
            "contexts": [{"name": "test", "context": {"cluster": "standin", "user": "mesh"}}],
        }
        path = os.path.join(self.dir, "kubeconfig.json")
        with open(path, "w") as f:
            json.dump(kc, f)
        return path

    def make_client_cert(self):
        p = lambda n: os.path.join(self.dir, n)  # noqa: E731
        openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", p("client.key"), "-out", p("client.csr"), "-subj",
                "/O=system:masters/CN=shunt")
        with open(p("cext"), "w") as f:
            f.write("extendedKeyUsage=clientAuth\n")
        openssl("x509", "-req", "-in", p("client.csr"), "-CA", p("ca.pem"), "-CAkey", p("ca.key"),
                "-CAcreateserial", "-out", p("client.pem"), "-days", "1", "-extfile", p("cext"))

    def start_standin(self, client_ca=False, max_page=0):
        argv = [sys.executable, STANDIN, "--listen", "%s:%d" % self.api, "--control",
                "%s:%d" % self.ctl_at,
                "--cert", os.path.join(self.dir, "srv.pem"), "--key", os.path.join(self.dir, "srv.key"),
                "--token", self.token, "--state", os.path.join(self.dir, "state.json")]
        if client_ca:
            argv += ["--client-ca", os.path.join(self.dir, "ca.pem")]
        if max_page:
            argv += ["--max-page", str(max_page)]
        self.standin = self.topo.app.spawn_ready(argv, "k8s-standin", what="stand-in")

    def ctl(self, method, path, body=None):
        status, _, data = self.topo.app.http(self.ctl_at[0], self.ctl_at[1], method, path,
                                             body=json.dumps(body) if body is not None else None)
        assert status == 200, (path, status, data)
        return json.loads(data)

    def apply(self, kind, etype, obj):
        return self.ctl("POST", "/apply", {"kind": kind, "type": etype, "object": obj})

    def stats(self):
        return self.ctl("GET", "/stats")

    def token_kubeconfig(self, token):
        """Certificates, the bearer token in a file, and a kubeconfig naming
        both: its path."""
        self.make_certs()
        self.token = token
        self.token_file = os.path.join(self.dir, "token")
        with open(self.token_file, "w") as f:
            f.write(token + "\n")
        os.chmod(self.token_file, 0o644)
        return self.write_kubeconfig(self.token_file)

    def close(self):
        """Stops everything (shuntd first)."""
        self.rc = self.daemon.stop() if self.daemon else 0
        if self.standin:
            self.standin.stop()
        for p in self.procs:
            p.stop()
        self.topo.delete()

    def check_clean_exit(self):
        """After close: shuntd exited cleanly (curl handles, memfds and the
        cache freed: no leak report in the ASan build)."""
        if self.daemon:
            assert self.rc == 0, self.daemon.log_tail()
            assert "Sanitizer" not in self.daemon.log_text()


@pytest.fixture(scope="module")
def env():
    e = Env()
    try:
        e.topo.add_remote4(*EXTRA)
        e.topo.route_vips()
        for i, a in enumerate(EPS):
            e.procs.append(e.topo.remote.spawn_peer("http", "ep%d" % i, ["%s:%d" % (a, PORT)]))
        kubeconfig = e.token_kubeconfig("standin-token-1")
        e.start_standin()
        e.apply("services", "ADDED", service_obj())
        e.apply("services", "ADDED", service_obj("other", labels={"app": "other", "mesh": "off"}))
        e.apply("endpointslices", "ADDED", slice_obj(EPS[:3]))
        e.daemon = sl.Shuntd(
            e.topo.app,
            sl.shuntd_args(**{
                "service-discovery.type": "kubernetes",
                "service-discovery.kubernetes.kubeconfig-path": kubeconfig,
                "service-discovery.kubernetes.label-selector": "mesh!=off",
            }),
            env={"SHUNT_K8S_WATCH_TIMEOUT": str(WATCH_TIMEOUT_S)},
        ).wait_ready()
        # every test starts synced, whichever runs first
        sl.wait_until(lambda: addrs(e.daemon) == sorted(EPS[:3]), 20, what="first sync")
        yield e
    finally:
        e.close()
    e.check_clean_exit()


def web(d):
    for s in d.json("/endpoints")["services"]:
        if s["name"] == "web":
            return s
    return None


def addrs(d, health=None):
    s = web(d)
    if not s:
        return None
    return sorted(ep["address"] for ep in s["endpoints"] if health is None or ep["health"] == health)


def k8s_state(d):
    """The backend's own state from /debug/cache."""
    text = json.dumps(d.json("/debug/cache"))
    cache = d.json("/debug/cache")

    def find(o):
        if isinstance(o, dict):
            if o.get("type") == "kubernetes" and isinstance(o.get("state"), dict):
                return o["state"]
            for v in o.values():
                r = find(v)
                if r:
                    return r
        elif isinstance(o, list):
            for v in o:
                r = find(v)
                if r:
                    return r
        return None

    st = find(cache)
    assert st, text
    return st


def served_by(e, n):
    counts = collections.Counter()
    for _ in range(n):
        status, _, body = e.topo.app.http(VIP, 80, "GET", "/")
        assert status == 200
        counts[json.loads(body)["server"]] += 1
    return counts


def served_set(e, n):
    """Which endpoints answered n requests; empty while the route is not in
    place yet (the proxy takes a new snapshot on its own tick)."""
    try:
        return set(served_by(e, n))
    except OSError:
        return set()


def names(idx):
    return {"ep%d" % i for i in idx}


def scale(e, idx, **kw):
    e.apply("endpointslices", "MODIFIED", slice_obj([EPS[i] for i in idx], **kw))
    t0 = time.monotonic()
    want = sorted(EPS[i] for i in idx)
    sl.wait_until(lambda: addrs(e.daemon) == want, 10, what="endpoints %s" % want)
    lat = time.monotonic() - t0
    # the proxy takes a new snapshot as its route table on its own tick
    healthy = {"ep%d" % i for i in idx if EPS[i] not in kw.get("terminating", ())
               and EPS[i] not in kw.get("not_ready", ())}
    sl.wait_until(lambda: served_set(e, 3 * len(healthy)) == healthy, 10,
                  what="traffic on %s" % sorted(healthy))
    return lat


def test_initial_sync_and_mapping(env):
    d = env.daemon
    sl.wait_until(lambda: addrs(d) == sorted(EPS[:3]), 10, what="first sync")
    s = web(d)
    assert s["addresses"] == [VIP]
    assert s["ports"][0]["port"] == 80 and s["ports"][0]["target_port"] == PORT
    assert s["ports"][0]["protocol"] == "http1"
    assert all(ep["zone"] == "zone-a" and ep["health"] == "healthy" for ep in s["endpoints"])
    # the label selector leaves "other" out
    assert [x["name"] for x in d.json("/endpoints")["services"]] == ["web"]
    st = k8s_state(d)
    assert st["credentials"] == "kubeconfig" and st["services"]["objects"] == 1
    stats = env.stats()
    assert stats["list"]["services"] >= 1 and stats["list"]["endpointslices"] >= 1
    sl.wait_until(lambda: served_set(env, 9) == names([0, 1, 2]), 10,
                  what="traffic through the clusterIP")
    # the Kubernetes backend loaded libcurl at first use (core/curl.c)
    assert any("libcurl-gnutls.so" in p for p in d.mapped_files())


def test_scale_3_5_2(env):
    lat = [scale(env, range(5))]
    assert served_by(env, 20).keys() == names(range(5))
    lat.append(scale(env, [3, 4]))
    assert served_by(env, 10).keys() == names([3, 4])
    lat.append(scale(env, range(3)))
    print("scale propagation seconds:", ["%.3f" % x for x in lat])


def test_slice_deleted_takes_its_endpoints(env):
    """A second EndpointSlice of the service adds its endpoints; when it is
    DELETED they leave the routes (a delete taken as an update would keep
    them serving)."""
    extra = slice_obj(EPS[3:], name="web-fghij")
    env.apply("endpointslices", "ADDED", extra)
    sl.wait_until(lambda: addrs(env.daemon) == sorted(EPS), 10, what="two slices' endpoints")
    sl.wait_until(lambda: served_set(env, 15) == names(range(5)), 10, what="traffic on five")
    env.apply("endpointslices", "DELETED", extra)
    sl.wait_until(lambda: addrs(env.daemon) == sorted(EPS[:3]), 10, what="the slice's endpoints gone")
    sl.wait_until(lambda: served_set(env, 9) == names(range(3)), 10, what="traffic on three")


WATCHED = ("services", "endpointslices", "pods", "namespaces")


def test_bookmarks_and_rewatch(env):
    """Watches are asked for 2 s: the server ends them and shuntd watches
    again, from the resourceVersion of the last bookmark. The stand-in
    compacts events older than 2 s and another object changes, one none of
    shuntd's watches sees: a watch resumed from the last event it saw would
    now be too old (410, a relist); from the bookmark's it is not."""
    d = env.daemon
    # not relying on an earlier test: every resource is listed and watched
    sl.wait_until(lambda: all(env.stats()["watch"][k] for k in WATCHED), 20,
                  what="the first watches")
    bookmarks = k8s_state(d)["services"]["bookmarks"]
    env.ctl("POST", "/inject", {"history_s": 2})
    try:
        before = env.stats()
        # "other" carries mesh=off: outside the services selector, no slice
        rv = env.apply("services", "MODIFIED",
                       service_obj("other", labels={"app": "other", "mesh": "off", "v": "2"}))["rv"]
        sl.wait_until(lambda: env.stats()["floor"] >= rv, 10, what="the change compacted")
        compacted = env.stats()
        sl.wait_until(lambda: all(env.stats()["watch"][k] > compacted["watch"][k]
                                  for k in WATCHED), 10, what="every resource watched again")
        after = env.stats()
    finally:
        env.ctl("POST", "/inject", {"history_s": 0})
    assert after["list"] == before["list"], "relisted: a watch resumed from a compacted version"
    assert (after["gone_event"], after["gone_status"]) == (before["gone_event"],
                                                           before["gone_status"])
    assert all(after["watch_from"][k] >= rv for k in WATCHED), after["watch_from"]
    assert k8s_state(d)["services"]["bookmarks"] > bookmarks


def test_terminating_endpoint_drains(env):
    d = env.daemon
    env.apply("endpointslices", "MODIFIED",
              slice_obj(EPS[:3], terminating=[EPS[2]], not_ready=[EPS[1]]))
    sl.wait_until(lambda: addrs(d, "draining") == [EPS[2]], 10, what="ep2 draining")
    assert addrs(d, "unhealthy") == [EPS[1]]
    sl.wait_until(lambda: served_set(env, 4) == names([0]), 10, what="traffic on ep0 only")
    assert served_by(env, 10).keys() == names([0])
    scale(env, range(3))
    sl.wait_until(lambda: addrs(d, "healthy") == sorted(EPS[:3]), 10, what="all healthy again")


def test_bad_json_event_skipped(env):
    d = env.daemon
    bad = k8s_state(d)["endpointslices"]["bad_events"]
    failures = k8s_state(d)["endpointslices"]["failures"]
    # a malformed line, then a good event right behind it on the same stream
    env.ctl("POST", "/inject", {"bad_json": "endpointslices", "then_apply": {
        "kind": "endpointslices", "type": "MODIFIED", "object": slice_obj(EPS[:2])}})
    sl.wait_until(lambda: addrs(d) == sorted(EPS[:2]), 10, what="the event after the bad one")
    st = k8s_state(d)
    assert st["endpointslices"]["bad_events"] == bad + 1
    assert st["endpointslices"]["failures"] == failures  # no reconnect for it
    assert [l for l in d.log_lines() if "event skipped" in l.get("msg", "")]
    scale(env, range(3))


def test_gone_event_relists(env):
    """410 as an ERROR event: every resource is listed again. While the
    (slow) lists run, the endpoints stay as they were, not stale, and carry
    traffic: the new list replaces the old one only once complete."""
    d = env.daemon
    before = env.stats()
    env.ctl("POST", "/inject", {"list_delay_s": 2})
    try:
        env.ctl("POST", "/inject", {"gone_event": True})
        sl.wait_until(lambda: env.stats()["lists_in_flight"] > 0, 10, what="a relist under way")
        assert addrs(d) == sorted(EPS[:3]) and not web(d)["stale"]
        assert served_by(env, 6).keys() <= names([0, 1, 2])
    finally:
        env.ctl("POST", "/inject", {"list_delay_s": 0})
    sl.wait_until(
        lambda: all(env.stats()["list"][k] > before["list"][k] for k in WATCHED),
        10, what="every resource relisted")
    assert env.stats()["gone_event"] > before["gone_event"]
    assert addrs(d) == sorted(EPS[:3])
    scale(env, [1, 2])
    scale(env, range(3))


def test_selector_exit_is_deleted(env):
    """A Service relabelled out of the label selector arrives as DELETED
    (carrying its old labels, which still match): shuntd drops it; back in,
    it arrives as ADDED."""
    d = env.daemon
    env.apply("services", "MODIFIED", service_obj(labels={"app": "web", "mesh": "off"}))
    sl.wait_until(lambda: web(d) is None, 10, what="web gone with its selector exit")
    env.apply("services", "MODIFIED", service_obj())
    sl.wait_until(lambda: addrs(d) == sorted(EPS[:3]), 10, what="web back (ADDED)")
    sl.wait_until(lambda: served_set(env, 9) == names([0, 1, 2]), 10, what="traffic again")


def test_forbidden_logged_counted_backed_off(env):
    """RBAC takes list/watch on EndpointSlices away: 403 with the
    authorizer's Status. shuntd keeps the last endpoints (stale), backs off,
    says so in one clear line per resource (not one per retry), and counts
    it (/debug/cache and shunt_discovery_access_denied_total)."""
    d = env.daemon

    def denied_metric():
        return d.metric("shunt_discovery_access_denied_total", source="kubernetes",
                        type="kubernetes")

    metric = denied_metric()
    denied = k8s_state(d)["endpointslices"]["denied"]
    env.ctl("POST", "/inject", {"forbid": ["endpointslices"]})
    try:
        # the open watch ends (timeoutSeconds); watching again is refused
        sl.wait_until(lambda: k8s_state(d)["endpointslices"]["denied"] >= denied + 3, 30,
                      what="three refusals")
        assert web(d)["stale"] and addrs(d, "healthy") == sorted(EPS[:3])
        st = k8s_state(d)["endpointslices"]
        assert "forbidden" in st["last_error"] and st["backoff_ms"] >= 4000, st
        assert denied_metric() >= metric + 3
        lines = [l["msg"] for l in d.log_lines() if "forbidden: the credentials" in l.get("msg", "")]
        assert len(lines) == 1, lines
        assert "permission to watch endpointslices" in lines[0], lines[0]
        assert 'cannot watch resource "endpointslices" in API group "discovery.k8s.io"' in \
            lines[0], lines[0]
    finally:
        env.ctl("POST", "/inject", {"forbid": []})
    sl.wait_until(lambda: not web(d)["stale"], 40, what="synced once allowed again")
    scale(env, [0, 3])
    scale(env, range(3))


def test_gone_status_relists(env):
    before = env.stats()
    env.ctl("POST", "/inject", {"gone_status": True})
    sl.wait_until(
        lambda: all(env.stats()["list"][k] > before["list"][k] for k in before["list"]),
        10, what="both resources relisted after HTTP 410")
    assert env.stats()["gone_status"] > before["gone_status"]
    assert k8s_state(env.daemon)["services"]["gone"] >= 1
    scale(env, [0, 2])
    scale(env, range(3))


def test_silent_stream_reconnects(env):
    d = env.daemon
    silent = k8s_state(d)["endpointslices"]["silent"]
    env.ctl("POST", "/inject", {"silence": True})
    sl.wait_until(lambda: k8s_state(d)["endpointslices"]["silent"] > silent, 15,
                  what="silent stream detected")
    assert [l for l in d.log_lines() if "silent" in l.get("msg", "")]
    scale(env, [0, 1])
    scale(env, range(3))


def test_oversized_event_relists(env):
    """An event line over the 16 MiB bound cuts the stream; watching again
    from the same resourceVersion would bring it back, so shuntd lists again
    (the list, under its own 256 MiB bound, carries the object)."""
    d = env.daemon
    before = env.stats()["list"]["services"]
    env.ctl("POST", "/inject", {"huge": {"kind": "services", "object": service_obj()}})
    sl.wait_until(lambda: env.stats()["list"]["services"] > before, 20, what="a relist")
    assert "larger than" in (k8s_state(d)["services"]["last_error"] or "")
    sl.wait_until(lambda: not web(d)["stale"], 20, what="in sync again")
    env.apply("services", "MODIFIED", service_obj())  # back to a small object
    scale(env, [0, 1])
    scale(env, range(3))


def test_api_server_down_keeps_last_endpoints(env):
    d = env.daemon
    env.standin.stop(signal.SIGKILL)
    env.standin = None
    sl.wait_until(lambda: web(d)["stale"], 10, what="the service stale")
    assert all(ep["stale"] for ep in web(d)["endpoints"])
    assert addrs(d, "healthy") == sorted(EPS[:3])  # last health kept
    assert served_by(env, 9).keys() == names([0, 1, 2])
    # failed reconnects back off: 1 s, 2 s, 4 s ... (the next delay doubles)
    sl.wait_until(lambda: k8s_state(d)["services"]["backoff_ms"] >= 4000, 15,
                  what="backoff doubling")
    assert served_by(env, 3)
    # The registry stays away for one more failed reconnect (the next delay
    # is then 8 s); traffic keeps flowing to the last known endpoints all
    # along (a bounded loop, checked at each turn rather than paced by a sleep).
    deadline = time.monotonic() + 20
    while k8s_state(d)["services"]["backoff_ms"] < 8000:
        assert time.monotonic() < deadline, "backoff never reached 8 s"
        assert served_by(env, 3).keys() <= names([0, 1, 2])
        assert web(d)["stale"]
    env.start_standin()
    sl.wait_until(lambda: not web(d)["stale"], 20, what="resynced after the restart")
    st = k8s_state(d)  # reset on success
    assert st["services"]["backoff_ms"] == st["endpointslices"]["backoff_ms"] == 1000, st
    scale(env, [2, 3, 4])
    assert served_by(env, 9).keys() == names([2, 3, 4])
    scale(env, range(3))


def test_token_rotation(env):
    """The server starts accepting only a new token: shuntd gets 401 and
    goes stale until the token file carries the new token, which it re-reads."""
    d = env.daemon
    env.ctl("POST", "/inject", {"token": "standin-token-2"})
    env.token = "standin-token-2"  # what a restarted stand-in accepts from now on
    sl.wait_until(lambda: env.stats()["unauthorized"] > 0, 15, what="a request with the old token")
    sl.wait_until(lambda: web(d)["stale"], 10, what="stale while refused")
    assert [l for l in d.log_lines() if "refused the credentials" in l.get("msg", "")]
    tmp = env.token_file + ".tmp"
    with open(tmp, "w") as f:
        f.write("standin-token-2\n")
    os.chmod(tmp, 0o644)
    os.rename(tmp, env.token_file)
    sl.wait_until(lambda: not web(d)["stale"], 40, what="recovered with the new token")
    scale(env, [0, 4])
    scale(env, range(3))


def test_in_cluster_credentials_all_namespaces(fresh_topo, start_shuntd):
    """KUBERNETES_SERVICE_HOST/PORT and a service-account directory (token,
    ca.crt); namespace "*" watches every namespace; lists come in pages of
    one item (limit/continue), and an expired continue token restarts the
    list."""
    e = Env(fresh_topo)
    peer = None
    try:
        e.make_certs()
        sa = os.path.join(e.dir, "serviceaccount")
        os.mkdir(sa)
        with open(os.path.join(e.dir, "ca.pem")) as src, open(os.path.join(sa, "ca.crt"), "w") as dst:
            dst.write(src.read())
        e.token = "in-cluster-token"
        with open(os.path.join(sa, "token"), "w") as f:
            f.write(e.token)
        for n in ("ca.crt", "token"):
            os.chmod(os.path.join(sa, n), 0o644)
        os.chmod(sa, 0o755)
        e.start_standin(max_page=1)
        e.topo.route_vips()
        peer = e.topo.remote.spawn_peer("http", "ep0", ["%s:%d" % (T.REMOTE4, PORT)])
        e.apply("services", "ADDED", service_obj())
        e.apply("services", "ADDED", service_obj("api", ns="team-b", vip="10.96.0.21"))
        e.apply("endpointslices", "ADDED", slice_obj([T.REMOTE4]))
        e.apply("endpointslices", "ADDED",
                slice_obj([T.REMOTE4], name="api-1", svc="api", ns="team-b"))
        d = start_shuntd(
            e.topo.app,
            sl.shuntd_args(**{"service-discovery.type": "kubernetes",
                              "service-discovery.kubernetes.namespace": "*"}),
            env={"KUBERNETES_SERVICE_HOST": API[0], "KUBERNETES_SERVICE_PORT": str(API[1]),
                 "SHUNT_K8S_SERVICEACCOUNT_DIR": sa, "KUBECONFIG_PATH": ""},
        )

        def services():
            return sorted((s["namespace"], s["name"], len(s["endpoints"]))
                          for s in d.json("/endpoints")["services"])

        sl.wait_until(lambda: services() == [("default", "web", 1), ("team-b", "api", 1)], 10,
                      what="both namespaces")
        st = k8s_state(d)
        assert st["credentials"] == "in-cluster" and st["namespace"] == ""

        def reached():  # the proxy takes the new snapshot as its route table on its own tick
            try:
                status, _, body = e.topo.app.http("10.96.0.21", 80, "GET", "/")
            except OSError:
                return False
            return status == 200 and json.loads(body)["server"] == "ep0"

        sl.wait_until(reached, 10, what="team-b/api reached through its clusterIP")
        assert all(st[k]["pages"] >= 2 for k in ("services", "endpointslices")), st
        # relist (410 on the watches), with the continue token of the second page expired
        e.ctl("POST", "/inject", {"expire_continue": True})
        e.ctl("POST", "/inject", {"gone_event": True})
        sl.wait_until(lambda: e.stats()["continue_expired"] == 1, 10, what="an expired continue")
        sl.wait_until(lambda: sum(k8s_state(d)[k]["continue_expired"]
                                  for k in ("services", "endpointslices")) == 1, 10,
                      what="the expired continue seen")
        e.apply("endpointslices", "MODIFIED",
                slice_obj([T.REMOTE4, T.REMOTE4B], name="api-1", svc="api", ns="team-b"))
        sl.wait_until(lambda: services() == [("default", "web", 1), ("team-b", "api", 2)], 10,
                      what="synced after the restarted list")
        assert not any(s["stale"] for s in d.json("/endpoints")["services"])
    finally:
        if e.standin:
            e.standin.stop()
        if peer:
            peer.stop()


def test_kubeconfig_client_certificate(fresh_topo, start_shuntd):
    """A kubeconfig with the CA as a file path (relative to the kubeconfig)
    and a client certificate and key inline (-data): the stand-in accepts
    the certificate, no token is sent. shuntd starts before the API server
    is up and syncs once it is."""
    e = Env(fresh_topo)
    try:
        e.make_certs()
        e.make_client_cert()
        e.token = "unused-token"

        def b64(name):
            with open(os.path.join(e.dir, name), "rb") as f:
                return base64.b64encode(f.read()).decode()

        kc = {
            "current-context": "c",
            "clusters": [{"name": "k", "cluster": {"server": "https://%s:%d" % API,
                                                   "certificate-authority": "ca.pem"}}],
            "users": [{"name": "u", "user": {"client-certificate-data": b64("client.pem"),
                                             "client-key-data": b64("client.key")}}],
            "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
        }
        path = os.path.join(e.dir, "kubeconfig")
        with open(path, "w") as f:
            json.dump(kc, f)
        for n in ("kubeconfig", "ca.pem"):
            os.chmod(os.path.join(e.dir, n), 0o644)
        d = start_shuntd(e.topo.app, sl.shuntd_args(**{
            "service-discovery.type": "kubernetes",
            "service-discovery.kubernetes.kubeconfig-path": path}))
        # the API server is not up yet: shuntd starts anyway and keeps trying
        sl.wait_until(lambda: k8s_state(d)["services"]["failures"] >= 1, 10,
                      what="a failed first list")
        assert d.json("/endpoints")["services"] == []
        e.start_standin(client_ca=True)
        e.apply("services", "ADDED", service_obj())
        e.apply("endpointslices", "ADDED", slice_obj([T.REMOTE4]))
        sl.wait_until(lambda: addrs(d) == [T.REMOTE4], 20, what="synced with a client certificate")
        st = e.stats()
        assert st["client_cert"] >= 2 and st["unauthorized"] == 0
    finally:
        if e.standin:
            e.standin.stop()
