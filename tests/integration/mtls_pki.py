# SPDX-License-Identifier: Apache-2.0
"""A small external CA for the mTLS tests (python3-cryptography, not shuntd):
roots and SPIFFE leaf certificates with any validity, written as PEM files,
plus the openssl s_client helpers the tests share."""

import datetime
import ipaddress
import os
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TD = "cluster.local"


def spiffe(sa, ns="default", td=TD):
    return "spiffe://%s/ns/%s/sa/%s" % (td, ns, sa)


def serial_hex(n):
    """As shuntd prints serials: lower-case hex of whole bytes."""
    h = "%x" % n
    return "0" + h if len(h) % 2 else h


def _now():
    return datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)


def _write(path, data, mode=0o600):
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.rename(tmp, path)


def key_pem(key):
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert):
    return cert.public_bytes(serialization.Encoding.PEM)


def key_lines(pem):
    """The base64 lines of a PEM key: none of them may ever be printed."""
    if isinstance(pem, bytes):
        pem = pem.decode()
    return [l for l in pem.splitlines() if l and not l.startswith("-----")]


class CA:
    """A root CA held in memory; load() takes shuntd's built-in CA files.
    Made without a subjectKeyIdentifier, as some tools make roots: shuntd
    must verify with it and, as its built-in CA, issue from it."""

    def __init__(self, name="ext root", key=None, cert=None):
        if cert is None:
            key = ec.generate_private_key(ec.SECP256R1())
            subj = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
            cert = (
                x509.CertificateBuilder()
                .subject_name(subj)
                .issuer_name(subj)
                .public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(_now() - datetime.timedelta(hours=1))
                .not_valid_after(_now() + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(
                    x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                    critical=True,
                )
                .sign(key, hashes.SHA256())
            )
        self.key, self.cert = key, cert

    @classmethod
    def load(cls, ca_dir):
        with open(os.path.join(ca_dir, "ca.pem"), "rb") as f:
            cert = x509.load_pem_x509_certificate(f.read())
        with open(os.path.join(ca_dir, "ca-key.pem"), "rb") as f:
            key = serialization.load_pem_private_key(f.read(), None)
        return cls(key=key, cert=cert)

    @property
    def pem(self):
        return cert_pem(self.cert)

    def issue(self, uri=None, dns=None, not_before=None, not_after=None, ip=None):
        """(cert PEM, key PEM, serial hex) of a leaf for uri (a SPIFFE ID),
        dns and ip (an IP address SAN, as a server reached by address has)."""
        key = ec.generate_private_key(ec.SECP256R1())
        nb = not_before or _now() - datetime.timedelta(minutes=1)
        na = not_after or _now() + datetime.timedelta(hours=1)
        sans = []
        if uri:
            sans.append(x509.UniformResourceIdentifier(uri))
        if dns:
            sans.append(x509.DNSName(dns))
        if ip:
            sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
        b = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "leaf")]))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(nb)
            .not_valid_after(na)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, False, False, False, False),
                critical=True,
            )
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
        )
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        return cert_pem(cert), key_pem(key), serial_hex(cert.serial_number)

    def issue_files(self, directory, name, uri, **kw):
        """Writes <name>.pem and <name>-key.pem (0600); returns (pem path,
        key path, serial hex, key PEM)."""
        cert, key, serial = self.issue(uri, **kw)
        pem, kp = os.path.join(directory, name + ".pem"), os.path.join(directory, name + "-key.pem")
        _write(pem, cert, 0o644)
        _write(kp, key)
        return pem, kp, serial, key


def client_files(tmp, ca, name, uri, **kw):
    """s_client arguments (-cert, -key, -CAfile <tmp>/ca/ca.pem) for a client
    certificate of uri issued by ca into tmp, and its serial."""
    pem, key, serial, _ = ca.issue_files(tmp, name, uri, **kw)
    return ["-cert", pem, "-key", key, "-CAfile", os.path.join(tmp, "ca", "ca.pem")], serial


def write_bundle(path, *cas):
    _write(path, b"".join(c.pem for c in cas), 0o644)


class SecretMount:
    """A directory laid out like a Kubernetes Secret volume: tls.crt, tls.key
    and ca.crt are symlinks through ..data to a versioned directory, and an
    update swaps ..data atomically (the kubelet's atomic writer)."""

    def __init__(self, directory):
        self.dir = directory
        self.version = 0
        os.makedirs(directory, exist_ok=True)

    def path(self, name):
        return os.path.join(self.dir, name)

    def publish(self, cert, key, bundle):
        self.version += 1
        vdir = os.path.join(self.dir, "..v%d" % self.version)
        os.makedirs(vdir)
        _write(os.path.join(vdir, "tls.crt"), cert, 0o644)
        _write(os.path.join(vdir, "tls.key"), key)
        _write(os.path.join(vdir, "ca.crt"), bundle, 0o644)
        tmp = os.path.join(self.dir, "..data_tmp")
        os.symlink(os.path.basename(vdir), tmp)
        os.rename(tmp, os.path.join(self.dir, "..data"))
        for n in ("tls.crt", "tls.key", "ca.crt"):
            p = os.path.join(self.dir, n)
            if not os.path.islink(p):
                os.symlink(os.path.join("..data", n), p)


def s_client(pod, host, args, sni_port=8080, port=None, data="GET /s HTTP/1.0\r\n\r\n"):
    argv = [
        "openssl", "s_client", "-connect", "%s:%d" % (host, port or sni_port), "-servername",
        "port-%d.%s" % (sni_port, TD), "-tls1_3", "-ign_eof", "-quiet",
    ] + list(args)  # fmt: skip
    return pod.run(argv, timeout=20, check=False, input=data)


def served_serial(pod, host, ca_pem, cert, key, sni_port=8080):
    """Serial (serial_hex) of the certificate a new handshake to host presents."""
    argv = [
        "openssl", "s_client", "-connect", "%s:%d" % (host, sni_port), "-servername",
        "port-%d.%s" % (sni_port, TD), "-tls1_3", "-CAfile", ca_pem, "-cert", cert,
        "-key", key, "-showcerts",
    ]  # fmt: skip
    out = pod.run(argv, timeout=20, check=False, input="").stdout
    i = out.find("-----BEGIN CERTIFICATE-----")
    assert i >= 0, out
    pem = out[i : out.find("-----END CERTIFICATE-----", i) + 25]
    c = x509.load_pem_x509_certificate(pem.encode())
    return serial_hex(c.serial_number)


def openssl(*args, **kw):
    p = subprocess.run(["openssl"] + list(args), capture_output=True, text=True, timeout=30, **kw)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout
