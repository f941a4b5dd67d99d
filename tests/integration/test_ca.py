# SPDX-License-Identifier: Apache-2.0
"""shunt-ca against the Kubernetes API stand-in (TokenReview): real CSRs from
`openssl req`, HTTPS clients in a pod. A valid token and CSR get a
certificate for exactly the token's identity that `openssl verify` accepts
against /v1/bundle; forged, expired, other-audience and deleted-account
tokens, CSRs asking for another identity, more names or a CA, a 1 MB
request, a burst over the rate limit, TokenReview failing or slow, and
a full server are each refused with their reason, in the answer and in the
audit line, while the CA keeps serving others. The CA restarted with its key
serves the same bundle; two replicas with one key issue interchangeable
certificates."""

import base64
import json
import os
import re
import shutil
import threading
import time

import pytest

import shuntca
import shuntlib as sl
from shuntca import ShuntCA, ca_env, make_csr, openssl

TD = "cluster.local"


@pytest.fixture(scope="module")
def env():
    with ca_env("ca", args=["--tokenreview-timeout", "1s", "--rate", "0.5", "--burst", "2"]) as e:
        yield e


def spiffe(ns, sa):
    return "spiffe://%s/ns/%s/sa/%s" % (TD, ns, sa)


def cert_text(pem):
    return openssl("x509", "-noout", "-text", input=pem.encode())


def verify(bundle_path, pem, d):
    leaf = os.path.join(d, "leaf.pem")
    with open(leaf, "w") as f:
        f.write(pem)
    return subprocess_ok(["openssl", "verify", "-CAfile", bundle_path, leaf])


def subprocess_ok(argv):
    import subprocess
    r = subprocess.run(argv, capture_output=True, timeout=30)
    return r.returncode == 0, (r.stdout + r.stderr).decode()


def audit_for(ca, reason=None, identity=None, serial=None, timeout=5.0):
    """The audit line that matches (waits for it: the line is written after
    the answer)."""
    found = []

    def look():
        for a in ca.audits():
            if reason is not None and a["reason"] != reason:
                continue
            if identity is not None and a["identity"] != identity:
                continue
            if serial is not None and a["serial"] != serial:
                continue
            found.append(a)
            return True
        return False
    sl.wait_until(look, timeout, what="audit line reason=%s identity=%s" % (reason, identity))
    return found[0]


def issue_ok(ca, api, ns, sa, key="ec"):
    _, csr = make_csr(key=key)
    status, _, body = ca.certificate(api.token(ns, sa), csr)
    assert status == 200, body
    return body


def test_issues_exactly_the_token_identity(env):
    pod, api, ca = env
    d = sl.tmpdir()
    for key in ("ec", "rsa"):
        # the CSR's own subject and no SAN: the identity comes from the token alone
        body = issue_ok(ca, api, "web", "frontend-" + key, key=key)
        want = spiffe("web", "frontend-" + key)
        assert body["spiffe_id"] == want
        ok, out = verify(ca.bundle, body["certificate_chain"], d)
        assert ok, out
        assert body["trust_bundle"] == ca.bundle_pem
        text = cert_text(body["certificate_chain"])
        sans = re.search(r"Subject Alternative Name:.*?\n\s*(.*)\n", text).group(1).strip()
        assert sans == "URI:" + want, text
        assert "CA:FALSE" in text
        assert "TLS Web Server Authentication, TLS Web Client Authentication" in text
        assert "Digital Signature" in text and "Certificate Sign" not in text
        serial = re.search(r"Serial Number:\s*\n?\s*([0-9a-f:]+)", text).group(1)
        assert serial.replace(":", "").lstrip("0") == body["serial"]
        assert len(body["serial"]) >= 30  # 127 random bits
        # lifetime: the default 24 h, slightly backdated
        nb = time.mktime(time.strptime(body["not_before"], "%Y-%m-%dT%H:%M:%SZ"))
        na = time.mktime(time.strptime(body["not_after"], "%Y-%m-%dT%H:%M:%SZ"))
        assert na - nb == 24 * 3600 + 60
        a = audit_for(ca, reason="", identity=want, serial=body["serial"])
        assert a["result"] == "issued" and a["status"] == "200"
        assert a["peer"].startswith("127.0.0.1:")
    # the bundle and health endpoints
    status, hdrs, data = ca.request("GET", "/v1/bundle")
    assert status == 200 and hdrs["Content-Type"] == "application/x-pem-file"
    assert data.decode() == ca.bundle_pem
    assert ca.request("GET", "/healthz")[0] == 200
    assert ca.request("GET", "/ready")[0] == 200
    assert ca.request("GET", "/v1/certificates")[0] == 405
    assert ca.request("GET", "/nope")[0] == 404


def test_serves_tls13_only_with_its_service_names(env):
    pod, api, ca = env
    r = pod.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % ca.port, "-tls1_2",
                 "-CAfile", ca.bundle], check=False, input="")
    assert r.returncode != 0
    r = pod.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % ca.port, "-tls1_3",
                 "-CAfile", ca.bundle, "-showcerts"], check=False, input="")
    out = r.stdout
    assert "Verify return code: 0 (ok)" in out, out
    pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", out, re.S).group(0)
    text = cert_text(pem)
    for name in ("DNS:shunt-ca,", "DNS:shunt-ca.shunt-system,", "DNS:shunt-ca.shunt-system.svc,",
                 "DNS:shunt-ca.shunt-system.svc.cluster.local", "IP Address:127.0.0.1"):
        assert name in text, text


@pytest.mark.parametrize("case", ["forged", "expired", "audience", "deleted", "malformed",
                                  "none"])
def test_bad_tokens_refused(env, case):
    pod, api, ca = env
    _, csr = make_csr()
    sa = "tok-" + case
    if case == "forged":
        good = api.token("web", sa)
        head, payload, sig = good.split(".")
        claims = json.loads(b64url_decode(payload))
        claims["kubernetes.io"]["namespace"] = "kube-system"
        claims["sub"] = "system:serviceaccount:kube-system:" + sa
        tok = "%s.%s.%s" % (head, b64url(json.dumps(claims).encode()), sig)
        want = (401, "token_invalid")
    elif case == "expired":
        tok = api.token("web", sa, expires_in=-10)
        want = (401, "token_expired")
    elif case == "audience":
        tok = api.token("web", sa, audience="https://kubernetes.default.svc.cluster.local")
        want = (401, "wrong_audience")
    elif case == "deleted":
        tok = api.token("web", sa)
        api.tokenreview(delete_service_account="web/" + sa)
        want = (401, "token_invalid")
    elif case == "malformed":
        tok = "not-a-jwt"
        want = (401, "token_invalid")
    else:
        tok = None
        want = (401, "no_token")
    status, _, body = ca.certificate(tok, csr)
    assert (status, body["error"]) == want, body
    assert body["message"]
    a = audit_for(ca, reason=want[1])
    assert a["result"] == "refused" and a["status"] == str(want[0]) and a["serial"] == ""
    # the CA keeps serving others
    issue_ok(ca, api, "web", "after-" + case)


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64url(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


@pytest.mark.parametrize("case", ["other_id", "extra_dns", "two_uris", "ca_true", "garbage",
                                  "p384", "rsa1024", "bad_signature", "not_json"])
def test_bad_csrs_refused(env, case):
    pod, api, ca = env
    sa = "csr-" + case.replace("_", "-")
    me = spiffe("web", sa)
    body_override = None
    if case == "other_id":
        _, csr = make_csr(san="URI:" + spiffe("kube-system", "admin"))
        want = "csr_mismatch"
    elif case == "extra_dns":
        _, csr = make_csr(san="URI:%s,DNS:evil.example.com" % me)
        want = "csr_mismatch"
    elif case == "two_uris":
        _, csr = make_csr(san="URI:%s,URI:%s" % (me, spiffe("web", "other")))
        want = "csr_mismatch"
    elif case == "ca_true":
        _, csr = make_csr(ca=True)
        want = "csr_mismatch"
    elif case == "garbage":
        csr = "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        want = "csr_invalid"
    elif case == "p384":
        _, csr = make_csr(key="ec384")
        want = "csr_invalid"
    elif case == "rsa1024":
        _, csr = make_csr(key="rsa1024")
        want = "csr_invalid"
    elif case == "bad_signature":
        d = sl.tmpdir()
        _, csr = make_csr(d)
        openssl("req", "-in", os.path.join(d, "w.csr"), "-outform", "DER", "-out",
                os.path.join(d, "w.der"))
        with open(os.path.join(d, "w.der"), "rb") as f:
            der = bytearray(f.read())
        der[-1] ^= 0x01  # the last byte of the signature's s
        b64 = base64.b64encode(bytes(der)).decode()
        csr = "-----BEGIN CERTIFICATE REQUEST-----\n%s\n-----END CERTIFICATE REQUEST-----\n" % (
            "\n".join(b64[i:i + 64] for i in range(0, len(b64), 64)))
        want = "csr_invalid"
    else:
        csr = None
        body_override = "csr=hello"
        want = "bad_request"
    status, _, body = ca.certificate(api.token("web", sa), csr, body=body_override)
    assert status == 400 and body["error"] == want, body
    a = audit_for(ca, reason=want, identity=me if want != "bad_request" else "")
    assert a["result"] == "refused"
    issue_ok(ca, api, "web", sa)  # the same identity with a good CSR is fine


def test_one_megabyte_request(env):
    pod, api, ca = env
    tok = api.token("web", "big")
    # the head announces 1 MB: the answer comes before a byte of the body is sent
    s = ca.tls()
    s.sendall(("POST /v1/certificates HTTP/1.1\r\nHost: shunt-ca\r\nAuthorization: Bearer %s\r\n"
               "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (tok, 1 << 20))
              .encode())
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        data += chunk
    s.close()
    assert data.startswith(b"HTTP/1.1 413 "), data[:200]
    assert json.loads(data.split(b"\r\n\r\n", 1)[1])["error"] == "too_large"
    # a client that sends it all anyway (curl, no Expect) gets the same answer
    d = sl.tmpdir()
    big = os.path.join(d, "big.json")
    with open(big, "w") as f:
        f.write(json.dumps({"csr": "x" * (1 << 20)}))
    r = pod.curl(["--cacert", ca.bundle, "-H", "Expect:", "-H", "Authorization: Bearer " + tok,
                  "--data-binary", "@" + big, "-o", "-", "-w", "\n%{http_code}",
                  "https://127.0.0.1:%d/v1/certificates" % ca.port])
    assert r.stdout.rstrip().endswith("413"), r
    audit_for(ca, reason="too_large")
    issue_ok(ca, api, "web", "big")


def test_rate_limit_per_identity(env):
    """--rate 0.5 --burst 2: two at once, then one every 2 s (a request would
    have to take 2 s for this test to see no refusal)."""
    pod, api, ca = env
    tok = api.token("web", "hasty")
    _, csr = make_csr()
    codes, retry = [], None
    for _ in range(4):
        status, hdrs, body = ca.certificate(tok, csr)
        codes.append(status)
        if status == 429:
            assert body["error"] == "rate_limited"
            retry = hdrs.get("Retry-After")
    assert codes[:2] == [200] * 2, codes  # the burst
    assert 429 in codes, codes
    assert retry is not None and 1 <= int(retry) <= 2
    audit_for(ca, reason="rate_limited", identity=spiffe("web", "hasty"))
    issue_ok(ca, api, "web", "patient")  # another identity is not limited
    time.sleep(int(retry))  # idles for the Retry-After the CA announced: what is tested
    assert ca.certificate(tok, csr)[0] == 200


def test_tokenreview_unavailable_then_recovers(env):
    pod, api, ca = env
    _, csr = make_csr()
    tok = api.token("web", "tr")
    for switch in ({"fail_status": 500}, {"fail_status": 503}, {"delay_s": 1.5},
                   {"bad_json": True}):
        api.tokenreview(**switch)
        try:
            t0 = time.monotonic()
            status, hdrs, body = ca.certificate(tok, csr)
            assert status == 503 and body["error"] == "tokenreview_unavailable", (switch, body)
            assert hdrs.get("Retry-After") == "1"
            assert time.monotonic() - t0 < 3  # --tokenreview-timeout 1s bounds a slow API
        finally:
            api.tokenreview(fail_status=0, delay_s=0, bad_json=False)
        audit_for(ca, reason="tokenreview_unavailable")
    # the API server down altogether
    api.proc.stop()
    try:
        status, _, body = ca.certificate(tok, csr)
        assert status == 503 and body["error"] == "tokenreview_unavailable"
    finally:
        api.proc = api.pod.spawn_ready(api.proc.argv, "k8s-standin-ca2", what="k8s stand-in")
    # new process, new signing secret: a fresh token
    assert ca.certificate(api.token("web", "tr"), csr)[0] == 200


def test_own_credentials_refused_by_the_api(env):
    """A CA whose own token the API server refuses (401) cannot check tokens:
    503 tokenreview_unavailable, and a log line that says why."""
    pod, api, ca0 = env
    d = sl.tmpdir()
    kc = os.path.join(d, "kubeconfig.json")
    with open(api.kubeconfig) as f:
        conf = json.load(f)
    conf["users"][0]["user"]["token"] = "not-the-caller-token"
    with open(kc, "w") as f:
        json.dump(conf, f)
    bad = ShuntCA(pod, api, port=15016, name="shunt-ca-badcreds", args=["--kubeconfig", kc])
    try:
        _, csr = make_csr()
        status, _, body = bad.certificate(api.token("web", "creds"), csr)
        assert status == 503 and body["error"] == "tokenreview_unavailable", body
        assert any("refused shunt-ca's own credentials" in line.get("msg", "")
                   for line in bad.log_lines())
    finally:
        assert bad.stop() == 0


def test_inject_route_wired_with_inject_config(env):
    """--inject-config adds POST /v1/inject (the webhook's logic lives in
    userspace/inject; here only its wiring into shunt-ca): an AdmissionReview
    for a pod gets its patch, a body that is not one gets 400, and a review
    over 64 KiB (the certificates bound) is still read (the route's own bound)."""
    pod, api, ca0 = env
    d = sl.tmpdir()
    cfg = os.path.join(d, "inject.json")
    with open(cfg, "w") as f:
        json.dump({"image": "shunt:test"}, f)
    w = ShuntCA(pod, api, port=15017, name="shunt-ca-inject", args=["--inject-config", cfg])
    try:
        podobj = {"apiVersion": "v1", "kind": "Pod",
                  "metadata": {"name": "web-1", "namespace": "demo",
                               "annotations": {"big": "x" * 100000}},
                  "spec": {"serviceAccountName": "web",
                           "containers": [{"name": "app", "image": "nginx"}]}}
        kind = {"group": "", "version": "v1", "kind": "Pod"}
        res = {"group": "", "version": "v1", "resource": "pods"}
        review = {"kind": "AdmissionReview", "apiVersion": "admission.k8s.io/v1",
                  "request": {"uid": "0b7a1c2e", "kind": kind, "resource": res,
                              "requestKind": kind, "requestResource": res, "name": "web-1",
                              "namespace": "demo", "operation": "CREATE", "object": podobj}}
        status, _, data = w.request("POST", "/v1/inject", body=json.dumps(review),
                                    headers={"Content-Type": "application/json"})
        assert status == 200, data
        out = json.loads(data)
        assert out["response"]["uid"] == "0b7a1c2e" and out["response"]["allowed"]
        patch = json.loads(base64.b64decode(out["response"]["patch"]))
        assert any("shunt-proxy" in json.dumps(op) for op in patch)
        status, _, data = w.request("POST", "/v1/inject", body="{}",
                                    headers={"Content-Type": "application/json"})
        assert status == 400, data
        assert ca0.request("POST", "/v1/inject", body="{}")[0] == 404  # not without the flag
    finally:
        assert w.stop() == 0


def serving_serial(pod, port, bundle):
    r = pod.run(["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-tls1_3",
                 "-CAfile", bundle], check=False, input="")
    assert "Verify return code: 0 (ok)" in r.stdout, r.stdout
    pem = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----", r.stdout,
                    re.S).group(0)
    return openssl("x509", "-noout", "-serial", input=pem.encode()).strip()


def test_short_lifetime_and_serving_certificate_renewed(env):
    """--lifetime 10s: issued certificates live 10 s (+ the minute of
    backdating), and the serving certificate is renewed when a third of its
    life is left while the CA keeps serving."""
    pod, api, ca0 = env
    short = ShuntCA(pod, api, port=15018, name="shunt-ca-short", args=["--lifetime", "10s"])
    try:
        body = issue_ok(short, api, "web", "short")
        nb = time.mktime(time.strptime(body["not_before"], "%Y-%m-%dT%H:%M:%SZ"))
        na = time.mktime(time.strptime(body["not_after"], "%Y-%m-%dT%H:%M:%SZ"))
        assert na - nb == 70
        first = serving_serial(pod, short.port, short.bundle)
        sl.wait_until(lambda: serving_serial(pod, short.port, short.bundle) != first, 12,
                      interval=0.5, what="a renewed serving certificate")
        issue_ok(short, api, "web", "short-after")
        issued = [line for line in short.log_lines()
                  if line.get("msg", "").startswith("serving certificate ")]
        assert len(issued) >= 2, issued
    finally:
        assert short.stop() == 0


def test_busy_and_slow_clients(env):
    pod, api, ca0 = env
    slow = ShuntCA(pod, api, port=15013, name="shunt-ca-small",
                   args=["--workers", "1", "--queue", "1", "--read-timeout", "1500ms"])
    try:
        # one slow client holds the worker, one waits in the queue: the next is told busy
        # The worker does the TLS handshake: once the first client's is done,
        # the worker holds it, and the second (plain TCP) can only be queued.
        held = [slow.tls()]
        held.append(shuntca.raw_socket(pod, slow.port))
        s = slow.tls()
        data = b""
        while True:  # the busy answer comes without a request
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        assert data.startswith(b"HTTP/1.1 503 "), data
        assert b'"busy"' in data and b"Retry-After: 1" in data
        audit_for(slow, reason="busy")
        # the slow clients are cut off after --read-timeout (counted from their
        # accept, queued or not); then requests are served again
        t0 = time.monotonic()
        for h in held:
            h.settimeout(5)
            assert h.recv(100) == b""
        assert time.monotonic() - t0 < 3.5
        for h in held:
            h.close()
        # a head in time, then a body that never comes: cut off, audited
        s = slow.tls()
        s.sendall(b"POST /v1/certificates HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        s.settimeout(5)
        t0 = time.monotonic()
        assert s.recv(100) == b""
        assert time.monotonic() - t0 < 3.5
        s.close()
        audit_for(slow, reason="timeout")
        assert slow.request("GET", "/healthz")[0] == 200
        issue_ok(slow, api, "web", "after-busy")
    finally:
        assert slow.stop() == 0


def test_restart_with_same_key_and_two_replicas(env):
    pod, api, ca0 = env
    d = sl.tmpdir()
    # a root to rotate to, in the bundle file (overlap): served next to the CA's
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", os.path.join(d, "next.key"), "-out", os.path.join(d, "next.pem"),
            "-days", "2", "-subj", "/O=cluster.local/CN=next root")
    a = ShuntCA(pod, api, port=15014, name="shunt-ca-a",
                args=["--bundle-file", os.path.join(d, "next.pem")])
    try:
        before = a.bundle_pem
        assert before.count("BEGIN CERTIFICATE") == 2
        with open(os.path.join(d, "next.pem")) as f:
            assert f.read().strip() in before
        first = issue_ok(a, api, "web", "restart")
        assert a.stop() == 0
        a.start()
        assert a.bundle_pem == before  # the same key and root after a restart
        ok, out = verify(a.bundle, first["certificate_chain"], d)
        assert ok, out
        # a second replica from the same key files (as from a mounted Secret)
        ca_cert = os.path.join(a.ca_dir, "ca.pem")
        ca_key = os.path.join(a.ca_dir, "ca-key.pem")
        b = ShuntCA(pod, api, port=15015, name="shunt-ca-b",
                    args=["--ca-cert", ca_cert, "--ca-key", ca_key,
                          "--bundle-file", os.path.join(d, "next.pem")])
        try:
            assert b.bundle_pem == before
            certs = []
            errors = []

            def one(replica, i):
                try:
                    certs.append((replica, issue_ok(replica, api, "web", "replica-%d" % i)))
                except AssertionError as e:
                    errors.append(e)
            threads = [threading.Thread(target=one, args=(r, i))
                       for i, r in enumerate([a, b, a, b])]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert not errors, errors
            assert len({c["serial"] for _, c in certs}) == 4
            for replica, c in certs:
                other = b if replica is a else a
                ok, out = verify(other.bundle, c["certificate_chain"], d)
                assert ok, out
        finally:
            assert b.stop() == 0
        # the bundle file is re-read when it changes; a broken or missing one
        # keeps the current bundle
        openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", os.path.join(d, "third.key"), "-out", os.path.join(d, "third.pem"),
                "-days", "2", "-subj", "/O=cluster.local/CN=third root")
        with open(os.path.join(d, "third.pem")) as f:
            third = f.read()
        with open(os.path.join(d, "next.pem"), "a") as f:
            f.write(third)
        bundle = lambda: a.request("GET", "/v1/bundle")[2].decode()  # noqa: E731
        sl.wait_until(lambda: bundle().count("BEGIN CERTIFICATE") == 3, 5, interval=0.2,
                      what="the third root in /v1/bundle")
        three = bundle()
        assert third.strip() in three
        def next_pem_errors():
            return sum("next.pem" in line["msg"] for line in a.log_lines()
                       if line.get("level") == "error")

        # The CA says when it has looked at the broken, then the missing file:
        # the bundle it serves is unchanged after each.
        with open(os.path.join(d, "next.pem"), "w") as f:
            f.write("not a certificate\n")
        sl.wait_until(lambda: next_pem_errors() == 1, 10, what="the broken next.pem refused")
        assert bundle() == three
        os.unlink(os.path.join(d, "next.pem"))
        sl.wait_until(lambda: next_pem_errors() == 2, 10, what="the missing next.pem refused")
        assert bundle() == three
        assert next_pem_errors() == 2  # broken once, missing once
    finally:
        a.stop()
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("argv,env,needle", [
    (["--rate", "abc"], {}, "--rate"),
    ([], {"SHUNT_CA_LIFETIME": "1x"}, "SHUNT_CA_LIFETIME"),
    (["--lifetime", "5s"], {}, "--lifetime 5s"),
    (["--listen", "nope"], {}, "--listen"),
    (["--server-san", "IP:300.1.1.1"], {}, "IP:300.1.1.1"),
    (["--trust-domain", "Bad.Domain"], {}, "--trust-domain"),
    (["--ca-dir", ""], {}, "--ca-dir"),
    (["--kubeconfig", "/nonexistent/kubeconfig"], {}, "/nonexistent/kubeconfig"),
    (["--inject-config", "/nonexistent/inject.json"], {}, "/nonexistent/inject.json"),
])
def test_bad_flags_stop_start_up_with_one_line(argv, env, needle):
    import subprocess
    d = sl.tmpdir()
    kc = os.path.join(d, "kc.json")
    with open(kc, "w") as f:
        json.dump({"current-context": "c", "contexts": [{"name": "c", "context": {
            "cluster": "s", "user": "u"}}], "clusters": [{"name": "s", "cluster": {
                "server": "http://127.0.0.1:1"}}], "users": [{"name": "u", "user": {}}]}, f)
    base = [shuntca.SHUNT_CA, "--ca-dir", os.path.join(d, "ca"), "--kubeconfig", kc,
            "--listen", "127.0.0.1:0"]
    r = subprocess.run(base + argv, capture_output=True, text=True, timeout=20,
                       env=dict(os.environ, **env))
    assert r.returncode in (1, 2), r
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert any(needle in line for line in lines), r.stderr
    assert len([line for line in lines if '"level":"error"' in line or
                line.startswith("shunt-ca:")]) >= 1

