# SPDX-License-Identifier: Apache-2.0
"""The read-only metrics listener (admin.metrics_address, port 15020) and the
version every binary and /metrics report.

A scraper in another pod (curl, promtool) reaches 15020 on the app pod's
address while shuntd captures the pod's inbound traffic in strict mTLS mode:
were 15020 captured, the plaintext scrape would be redirected to the inbound
listener and refused. The listener answers GET /metrics and nothing else,
whatever the request, and holds a bounded number of connections."""

import os
import re
import socket
import subprocess

import pytest

import shuntlib as sl
from shuntlib import Topology as T

METRICS = 15020
CONN_LIMIT = 64  # ADMIN_MAX_CONNS


def project_version():
    with open(os.path.join(sl.SOURCE, "CMakeLists.txt")) as f:
        return re.search(r"project\(shunt VERSION (\d+\.\d+\.\d+)", f.read()).group(1)


def url(host, path="/metrics", port=METRICS):
    return "http://%s:%d%s" % ("[%s]" % host if ":" in host else host, port, path)


def scrape(pod, host, path="/metrics", extra=()):
    """(status, headers text, body) of one request by curl in pod."""
    r = pod.curl(["-g", "-D", "-", "-o", "-"] + list(extra) + [url(host, path)], timeout=10)
    assert r.returncode == 0, r.stderr
    # (the output is read as text: CRLF has become LF)
    head, _, body = r.stdout.replace("\r\n", "\n").partition("\n\n")
    return int(head.split()[1]), head, body


def exchange(pod, raw):
    """Sends raw bytes to the app pod's metrics port from pod; all it answers."""
    s = pod.connect(T.APP4, METRICS)
    try:
        s.sendall(raw)
        return sl.recv_all(s, timeout=10)
    finally:
        s.close()


def promtool_ok(text):
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr + "\n" + text


def inbound_accepted(d):
    return d.metric("shunt_connections_accepted_total", default=0.0, direction="inbound")


@pytest.fixture(scope="module")
def strict(topo):
    """shuntd in the app pod: iptables capture (inbound too), strict mTLS,
    the metrics listener at its default 0.0.0.0:15020."""
    d = sl.Shuntd(topo.app, sl.shuntd_args(**{"mtls.mode": "strict", "mtls.handshake-timeout": "1s"}))
    try:
        d.wait_ready()
        yield d
    finally:
        sl.stop_checked([d])


def test_scrape_from_another_pod_while_inbound_is_captured(topo, strict):
    d = strict
    before = inbound_accepted(d)
    status, head, body = scrape(topo.remote, T.APP4)
    assert status == 200, head
    assert "Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
    assert len(body) > 1000, body
    promtool_ok(body)
    m = sl.parse_metrics(body)
    assert m[("shunt_ready", ())] == 1
    (info,) = [k for k in m if k[0] == "shunt_build_info"]
    assert m[info] == 1
    labels = dict(info[1])
    assert labels["version"] == project_version() and labels["tls"] == "boringssl", labels
    # Straight to the listener: shuntd's inbound side saw nothing.
    assert inbound_accepted(d) == before
    for v6 in (False, True):
        rules = topo.app.iptables_save(v6=v6)
        assert "-A SIDECAR_PROXY_INBOUND -p tcp -m tcp --dport %d" % METRICS in rules, rules
    # Capture is on: a plaintext connection to another port of the pod is
    # redirected to the inbound listener and refused there (strict).
    s = topo.remote.connect(T.APP4, 8080)
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        s.settimeout(5)
        try:
            got = s.recv(100)
        except OSError:
            got = b""
        assert got == b""
    finally:
        s.close()
    sl.wait_until(lambda: inbound_accepted(d) > before, 5, what="the plaintext connection captured")
    # The admin port keeps /metrics, on localhost only.
    status, admin_body = d.get("/metrics")
    assert status == 200 and b"shunt_build_info{" in admin_body
    with pytest.raises(OSError):
        topo.remote.connect(T.APP4, 15003, timeout=2).close()


@pytest.mark.parametrize("method,path,want", [
    ("POST", "/metrics", 405),
    ("PUT", "/metrics", 405),
    ("DELETE", "/metrics", 405),
    ("GET", "/health", 404),
    ("GET", "/ready", 404),
    ("GET", "/config", 404),
    ("GET", "/connections", 404),
    ("GET", "/metrics/", 404),
    ("POST", "/admin/log-level", 404),
    ("POST", "/admin/endpoints", 404),
    ("POST", "/admin/circuit-breaker", 404),
])
def test_only_get_metrics(topo, strict, method, path, want):
    # Even with the admin token, nothing on this port changes shuntd.
    extra = ["-X", method, "-H", "Authorization: Bearer " + strict.admin_token()]
    if method != "GET":
        extra += ["--data-binary", "error"]  # were it routed, the log level would change
    status, head, body = scrape(topo.remote, T.APP4, path, extra)
    assert status == want, head + body
    if want == 405:
        assert "Allow: GET, HEAD" in head
    assert strict.config_value("log_level")[0] == "debug"  # shuntd_args' level, unchanged
    assert strict.json("/status")["ready"] is True


def test_head(topo, strict):
    got = exchange(topo.remote, b"HEAD /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, sep, body = got.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ") and sep and body == b"", got[:300]
    assert int(re.search(rb"Content-Length: (\d+)", head).group(1)) > 1000


def test_same_request_limits_as_admin(topo, strict):
    for raw, want in [
        (b"GET /metrics HTTP/1.1\r\n\r\n", 400),  # no Host
        (b"GET /metrics HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 17000 + b"\r\n\r\n", 431),
        (b"GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
    ]:
        got = exchange(topo.remote, raw)
        assert got.startswith(b"HTTP/1.1 %d " % want), got[:200]
    assert scrape(topo.remote, T.APP4)[0] == 200


def test_connections_are_bounded(topo, strict):
    """64 idle connections fill the listener: the next is answered 503 and
    closed; the admin port, a listener of its own, still answers; once they
    go, scrapes are served again."""
    held = []
    try:
        for _ in range(CONN_LIMIT):
            held.append(topo.remote.connect(T.APP4, METRICS))
        # The server accepts in order: by the time it answers this one, the
        # 64 before it are its connections.
        got = exchange(topo.remote, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 503 "), got[:300]
        assert b"too many metrics connections (limit 64)" in got
        assert strict.get("/metrics")[0] == 200
        assert any("metrics connection limit (64) reached" in l.get("msg", "")
                   for l in strict.log_lines())
    finally:
        for s in held:
            s.close()
    sl.wait_until(lambda: scrape(topo.remote, T.APP4)[0] == 200, 10, what="served again")


def test_all_addresses_and_off(fresh_topo, start_shuntd):
    """"::" is every IPv6 and IPv4 address; "off" opens no listener and
    leaves the port to capture like any other."""
    t = fresh_topo
    d = start_shuntd(t.app, sl.shuntd_args(**{"admin.metrics-address": "::"}))
    for host in (T.APP4, T.APP6):
        status, _, body = scrape(t.remote, host)
        assert status == 200 and "shunt_build_info{" in body, host
    d.stop()
    d = start_shuntd(t.app, sl.shuntd_args(**{"admin.metrics-address": "off"}))
    listeners = t.app.run(["ss", "-Htln"]).stdout
    assert ":%d " % METRICS not in listeners, listeners
    assert "--dport %d " % METRICS not in t.app.iptables_save()
    assert d.get("/metrics")[0] == 200
    assert not any("metrics listening" in l.get("msg", "") for l in d.log_lines())


def test_bad_metrics_settings_stop_start_up(fresh_topo):
    pod = fresh_topo.app
    for flags, code, words in [
        ({"admin.metrics-address": "localhost"}, 2,
         ["--admin.metrics-address: localhost", "IPv4 or IPv6 address or off"]),
        ({"admin.metrics-port": "15003"}, 2, ["must differ from admin_port"]),
        ({"admin.metrics-port": "0"}, 2, ["--admin.metrics-port: 0", "expected a port 1..65535"]),
    ]:
        r = pod.run([sl.SHUNTD] + sl.shuntd_args(**flags), timeout=30, check=False)
        assert r.returncode == code, (flags, r.returncode, r.stderr[-2000:])
        lines = [l for l in r.stderr.splitlines() if l.strip()]
        assert len(lines) == 1 and all(w in lines[0] for w in words), (flags, lines)
    # The port taken by something else: one error line naming it, exit 1.
    s = pod.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", METRICS))
        s.listen(1)
        r = pod.run([sl.SHUNTD] + sl.shuntd_args(), timeout=60, check=False)
    finally:
        s.close()
    assert r.returncode == 1, r.stderr[-2000:]
    assert ("cannot start the metrics listener: metrics: cannot bind 0.0.0.0:%d: "
            "Address already in use" % METRICS) in r.stderr


# ---- the version ----------------------------------------------------------------------


def test_every_binary_reports_the_same_version(topo, strict):
    want = project_version()
    commit = None
    if os.path.exists(os.path.join(sl.SOURCE, ".git")):
        commit = subprocess.run(
            ["git", "-C", sl.SOURCE, "describe", "--tags", "--match", "v[0-9]*", "--always",
             "--dirty"], capture_output=True, text=True, check=True).stdout.strip()
    seen = set()
    for prog in ("shuntd", "shuntctl", "shunt-ca"):
        r = subprocess.run([os.path.join(sl.BUILD, prog), "--version"], capture_output=True,
                           text=True, timeout=10)
        assert r.returncode == 0, r
        m = re.fullmatch(r"(\S+) (\S+) \(commit (\S+), boringssl\)\n", r.stdout)
        assert m and m.group(1) == prog and m.group(2) == want, r.stdout
        seen.add(m.group(3))
    (built,) = seen
    if commit is not None:
        # Built from this tree (edits since the build may add or drop -dirty).
        assert built.replace("-dirty", "") == commit.replace("-dirty", ""), (built, commit)
    info = [k for k in strict.metrics() if k[0] == "shunt_build_info"]
    assert dict(info[0][1]) == {"version": want, "commit": built, "tls": "boringssl"}
    assert strict.json("/status")["version"] == want
    with open(os.path.join(sl.SOURCE, "charts", "shunt", "Chart.yaml")) as f:
        chart = f.read()
    assert 'appVersion: "%s"' % want in chart and "\nversion: %s\n" % want in chart


def test_version_header_without_git():
    """A source tree without .git (a release tarball) builds with commit
    "unknown", or with the one the packager gives; a bad one is refused."""
    src = sl.tmpdir()
    with open(os.path.join(src, "CMakeLists.txt"), "w") as f:
        f.write("project(x)\n")
    out = os.path.join(src, "v.h")
    script = os.path.join(sl.SOURCE, "cmake", "version.cmake")

    def gen(*defs):
        return subprocess.run(["cmake", "-DSRC=" + src, "-DOUT=" + out, "-DVERSION=1.2.3"]
                              + list(defs) + ["-P", script], capture_output=True, text=True,
                              timeout=30)

    assert gen().returncode == 0
    text = open(out).read()
    assert '"1.2.3"' in text and 'SHUNT_COMMIT_TEXT "unknown"' in text
    assert gen("-DCOMMIT=1.2.3-2.debian").returncode == 0
    assert 'SHUNT_COMMIT_TEXT "1.2.3-2.debian"' in open(out).read()
    r = gen('-DCOMMIT=x"; evil()')
    assert r.returncode != 0 and "SHUNT_COMMIT" in r.stderr
    assert 'SHUNT_COMMIT_TEXT "1.2.3-2.debian"' in open(out).read()
