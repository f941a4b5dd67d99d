# SPDX-License-Identifier: Apache-2.0
"""mTLS control plane: shuntd's certificate store from the built-in CA or from
files, /certs, `shuntctl certs`, the shunt_tls_* metrics, key hygiene."""

import json
import os
import stat
import subprocess

import pytest

import shuntlib as sl

TD = "cluster.local"


def mtls_args(ca_dir, **extra):
    flags = dict(
        mtls_ca_dir=ca_dir,
        mtls_namespace="shop",
        mtls_service_name="web",
        mtls_service_account="web-sa",
    )
    flags.update(extra)
    # mtls_ca_dir -> --mtls.ca-dir
    return sl.shuntd_args(**{k.replace("mtls_", "mtls.", 1): v for k, v in flags.items()})


def key_body(path):
    """The base64 lines of a PEM key: none of them may ever be printed."""
    with open(path) as f:
        return [l for l in f.read().splitlines() if l and not l.startswith("-----")]


def assert_no_key(texts, key_lines):
    for text in texts:
        for line in key_lines:
            assert line not in text, "private key material leaked"


def test_builtin_ca(fresh_topo, start_shuntd):
    ca_dir = os.path.join(sl.tmpdir(), "state", "ca")  # parents created too
    d = start_shuntd(fresh_topo.app, mtls_args(ca_dir))

    # The CA's state: directory 0700, key 0600, certificate readable.
    assert stat.S_IMODE(os.stat(ca_dir).st_mode) == 0o700
    key = os.path.join(ca_dir, "ca-key.pem")
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600
    assert os.path.exists(os.path.join(ca_dir, "ca.pem"))

    certs = d.json("/certs")
    ident = "spiffe://%s/ns/shop/sa/web-sa" % TD
    assert certs["mode"] == "permissive"
    assert certs["identity"] == ident
    assert certs["source"] == "builtin-ca"
    cur = certs["current"]
    assert cur["identity"] == ident
    assert len(cur["serial"]) >= 16
    assert cur["key_type"] == "ecdsa-p256"
    # 24 h default lifetime, renewed when a third is left.
    assert 23 * 3600 < cur["expires_in_s"] <= 24 * 3600
    assert certs["rotation"]["state"] == "ok"
    assert certs["rotation"]["next_rotation"]
    assert len(certs["trust_bundle"]) == 1
    assert certs["policy"]["clock_skew_s"] == 300

    # The issued certificate is the one the CA signed: check with openssl
    # against the CA file (chain, SAN).
    out = subprocess.run(
        ["openssl", "x509", "-in", os.path.join(ca_dir, "ca.pem"), "-noout", "-serial"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.strip().lower().endswith(certs["trust_bundle"][0]["serial"][-8:])

    r = sl.shuntctl(fresh_topo.app, "certs")
    assert r.returncode == 0, r.stderr
    assert ident in r.stdout
    assert cur["serial"] in r.stdout
    assert "builtin-ca" in r.stdout
    assert "rotation:" in r.stdout and "ok" in r.stdout
    assert "TRUST BUNDLE" in r.stdout
    r = sl.shuntctl(fresh_topo.app, "--json", "certs")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["identity"] == ident

    text = d.metrics_text()
    p = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert p.returncode == 0, p.stdout + p.stderr
    names = {k[0] for k in sl.parse_metrics(text)}
    assert any(n.startswith("shunt_tls_") for n in names), sorted(names)

    # A restart reuses the CA (same root serial) and issues a new leaf.
    sl.stop_checked([d])
    d2 = start_shuntd(fresh_topo.app, mtls_args(ca_dir))
    again = d2.json("/certs")
    assert again["trust_bundle"][0]["serial"] == certs["trust_bundle"][0]["serial"]
    assert again["current"]["serial"] != cur["serial"]

    lines = key_body(key)
    assert lines
    assert_no_key(
        [d.log_text(), d2.log_text(), json.dumps(again), d2.get("/config")[1].decode()], lines
    )


def test_disabled(fresh_topo, start_shuntd):
    ca_dir = os.path.join(sl.tmpdir(), "ca")
    d = start_shuntd(fresh_topo.app, mtls_args(ca_dir, mtls_mode="disabled"))
    certs = d.json("/certs")
    assert certs == {"mode": "disabled", "identity": None}
    assert not os.path.exists(ca_dir)
    r = sl.shuntctl(fresh_topo.app, "certs")
    assert r.returncode == 0, r.stderr
    assert "disabled" in r.stdout


def test_readable_ca_key_refused(fresh_topo, start_shuntd):
    ca_dir = os.path.join(sl.tmpdir(), "ca")
    d = start_shuntd(fresh_topo.app, mtls_args(ca_dir))
    sl.stop_checked([d])
    key = os.path.join(ca_dir, "ca-key.pem")
    os.chmod(key, 0o644)
    d = start_shuntd(fresh_topo.app, mtls_args(ca_dir), ready=False)
    assert d.wait(15) == 1
    log = d.log_text()
    assert "ca-key.pem has mode 0644" in log, log
    assert "cannot set up mTLS" in log
    assert_no_key([log], key_body(key))


def openssl(*args):
    p = subprocess.run(["openssl"] + list(args), capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def test_file_source(fresh_topo, start_shuntd):
    """Certificates written by an external CA (openssl here): loaded, shown,
    and a bad set (no SPIFFE URI) refused at start with the reason."""
    tmp = sl.tmpdir()
    ca_key, ca_pem = os.path.join(tmp, "ca-key.pem"), os.path.join(tmp, "ca.pem")
    openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", ca_key)
    openssl(
        "req", "-x509", "-new", "-key", ca_key, "-out", ca_pem, "-days", "2", "-subj",
        "/O=ext/CN=ext root", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
    )  # fmt: skip

    def leaf(name, san):
        key, csr, pem = (os.path.join(tmp, name + s) for s in ("-key.pem", ".csr", ".pem"))
        ext = os.path.join(tmp, name + ".ext")
        with open(ext, "w") as f:
            f.write(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth,clientAuth\n"
            )
            if san:
                f.write("subjectAltName=%s\n" % san)
        openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", key)
        os.chmod(key, 0o600)
        openssl("req", "-new", "-key", key, "-out", csr, "-subj", "/CN=" + name)
        openssl(
            "x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-CAcreateserial",
            "-out", pem, "-days", "1", "-extfile", ext,
        )  # fmt: skip
        return pem, key

    ident = "spiffe://%s/ns/shop/sa/ext" % TD
    pem, key = leaf("good", "URI:" + ident)
    args = mtls_args(
        os.path.join(tmp, "unused"),
        mtls_certificate_file=pem,
        mtls_private_key_file=key,
        mtls_ca_bundle=ca_pem,
    )
    d = start_shuntd(fresh_topo.app, args)
    certs = d.json("/certs")
    assert certs["source"] == "files"
    assert certs["identity"] == ident
    assert certs["trust_bundle"][0]["subject"].find("ext root") >= 0
    assert not os.path.exists(os.path.join(tmp, "unused"))
    assert_no_key([d.log_text(), json.dumps(certs)], key_body(key))
    sl.stop_checked([d])

    bad_pem, bad_key = leaf("nouri", "DNS:web.shop.svc.cluster.local")
    args = mtls_args(
        os.path.join(tmp, "unused"),
        mtls_certificate_file=bad_pem,
        mtls_private_key_file=bad_key,
        mtls_ca_bundle=ca_pem,
    )
    d = start_shuntd(fresh_topo.app, args, ready=False)
    assert d.wait(15) == 1
    log = d.log_text()
    assert "cannot set up mTLS" in log, log
    assert "URI" in log or "SPIFFE" in log, log
    assert_no_key([log], key_body(bad_key))


@pytest.mark.parametrize(
    "flags,needle",
    [
        ({"mtls_namespace": "a/b"}, "mtls.namespace: a/b"),
        ({"mtls_key_type": "ed25519"}, "mtls.key-type: ed25519: allowed: ecdsa-p256, rsa-2048"),
        ({"mtls_certificate_file": "/nonexistent.pem"}, "mtls.private_key_file"),
    ],
)
def test_bad_config(fresh_topo, start_shuntd, flags, needle):
    d = start_shuntd(fresh_topo.app, mtls_args(os.path.join(sl.tmpdir(), "ca"), **flags), ready=False)
    assert d.wait(15) == 2
    assert needle in d.log_text()
