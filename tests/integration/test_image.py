# SPDX-License-Identifier: Apache-2.0
"""The container image: scripts/build-image.sh builds it from this build's
binaries and Debian packages (about 15 s once the .deb files are in
<build>/image-debs, a minute or two on a fresh machine), then:

- every binary, tool and xtables module loads inside the root filesystem
  with the image's own loader, and shuntd runs there;
- user 1337, entrypoint /usr/bin/shuntd, owners and modes as built (read from
  the archive's layer, not from the directory);
- the archive is loadable (`podman load` into a throwaway store; `podman run`
  cannot run here: the sandbox refuses crun's setrlimit);
- the size is reported;
- the image works as the pod's two containers: `shuntd init` from the image
  installs the chains with the image's iptables-nft, and shuntd from the
  image runs as uid 1337 with --capture init (chroot into the root
  filesystem inside a network namespace)."""

import io
import json
import os
import re
import shutil
import subprocess
import tarfile

import pytest

import shuntlib as sl

SCRIPT = os.path.join(sl.SOURCE, "scripts", "build-image.sh")


def need(tool, package):
    if shutil.which(tool) is None:
        pytest.fail("%s is not installed (Debian package %s; scripts/bootstrap.sh)" % (tool, package))


@pytest.fixture(scope="module")
def image():
    for tool, pkg in (("buildah", "buildah"), ("skopeo", "skopeo"), ("podman", "podman")):
        need(tool, pkg)
    d = sl.tmpdir()
    os.chmod(d, 0o755)
    out, rootfs = os.path.join(d, "shunt.tar"), os.path.join(d, "rootfs")
    r = subprocess.run([SCRIPT, "--build", sl.BUILD, "--out", out, "--rootfs", rootfs],
                       capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr
    proc = os.path.join(rootfs, "proc")  # as a runtime mounts it
    sl.run(["mount", "-t", "proc", "proc", proc])
    try:
        yield {"archive": out, "rootfs": rootfs, "report": r.stdout.strip().splitlines()[-1]}
    finally:
        if subprocess.run(["umount", proc], timeout=30).returncode != 0:
            sl.run(["umount", "-l", proc])
        shutil.rmtree(rootfs)


def elf_files(root):
    for sub in ("usr/bin", "usr/sbin", "usr/lib"):
        for dirpath, _, names in os.walk(os.path.join(root, sub)):
            for n in names:
                p = os.path.join(dirpath, n)
                if os.path.islink(p) or not os.path.isfile(p):
                    continue
                with open(p, "rb") as f:
                    if f.read(4) == b"\x7fELF":
                        yield "/" + os.path.relpath(p, root)


def test_everything_loads_inside(image):
    root = image["rootfs"]
    files = list(elf_files(root))
    assert "/usr/bin/shuntd" in files and "/usr/bin/shuntctl" in files
    assert "/usr/sbin/xtables-nft-multi" in files and "/usr/bin/ip" in files
    # libcurl is loaded at first use, not linked (userspace/core/curl.c): it
    # is in the image under its soname, where the loader looks.
    assert "/usr/lib/x86_64-linux-gnu/libcurl-gnutls.so.4" in files, files
    for f in files:
        if f.endswith("ld-linux-x86-64.so.2"):
            continue
        r = subprocess.run(["chroot", root, "/usr/lib64/ld-linux-x86-64.so.2", "--list", f],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0 and "not found" not in r.stdout, (f, r.stdout, r.stderr)
    r = subprocess.run(["chroot", root, "/usr/bin/shuntd", "--version"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("shuntd "), r
    if os.path.exists(os.path.join(sl.BUILD, "shunt-ca")):
        assert "/usr/bin/shunt-ca" in files
    # Only what packages shipped: each library's package left its copyright.
    docs = os.listdir(os.path.join(root, "usr/share/doc"))
    assert {"libc6", "libbpf1", "iptables", "android-libboringssl", "libcurl3-gnutls"} <= set(docs), docs


def oci_layer(archive):
    """The single layer of the OCI archive, as a TarFile."""
    with tarfile.open(archive) as t:
        index = json.load(t.extractfile("index.json"))
        digest = index["manifests"][0]["digest"].split(":")[1]
        manifest = json.load(t.extractfile("blobs/sha256/" + digest))
        layers = manifest["layers"]
        assert len(layers) == 1, layers
        blob = t.extractfile("blobs/sha256/" + layers[0]["digest"].split(":")[1]).read()
    return tarfile.open(fileobj=io.BytesIO(blob))


def test_user_entrypoint_owners(image):
    cfg = json.loads(sl.run(["skopeo", "inspect", "--config",
                             "oci-archive:" + image["archive"]]).stdout)["config"]
    assert cfg["User"] == "1337:1337" and cfg["Entrypoint"] == ["/usr/bin/shuntd"], cfg
    assert "Cmd" not in cfg or not cfg["Cmd"], cfg
    layer = oci_layer(image["archive"])
    m = {re.sub(r"^\./", "", i.name).rstrip("/"): i for i in layer.getmembers()}
    ca = m["var/lib/shunt/ca"]
    assert (ca.uid, ca.gid, ca.mode & 0o7777) == (1337, 1337, 0o700)
    shuntd = m["usr/bin/shuntd"]
    assert (shuntd.uid, shuntd.gid) == (0, 0) and shuntd.mode & 0o111
    assert m["tmp"].mode & 0o7777 == 0o1777
    assert m["lib"].issym() and m["lib"].linkname == "usr/lib"
    passwd = layer.extractfile("./etc/passwd" if "./etc/passwd" in layer.getnames()
                               else "etc/passwd").read().decode()
    assert "shunt:x:1337:1337:" in passwd


def test_size_reported(image):
    m = re.search(r"archive ([\d.]+) MiB \(layer gzip-compressed\), root filesystem ([\d.]+) MiB",
                  image["report"])
    assert m, image["report"]
    compressed, rootfs = float(m.group(1)), float(m.group(2))
    assert 0 < compressed < 40 and compressed < rootfs < 100, image["report"]
    assert abs(os.path.getsize(image["archive"]) / 2**20 - compressed) < 0.2


def test_podman_loads_the_archive(image):
    d = sl.tmpdir()
    p = ["podman", "--root", os.path.join(d, "root"), "--runroot", os.path.join(d, "run"),
         "--storage-driver", "vfs"]
    try:
        r = sl.run(p + ["load", "-i", image["archive"]], timeout=120)
        name = re.search(r"Loaded image: (\S+)", r.stdout + r.stderr).group(1)
        info = json.loads(sl.run(p + ["image", "inspect", name]).stdout)[0]
        assert info["Config"]["User"] == "1337:1337", info["Config"]
    finally:
        subprocess.run(p + ["rmi", "-a", "-f"], capture_output=True, timeout=60)
        shutil.rmtree(d, ignore_errors=True)


def test_image_as_init_and_proxy(image):
    """The pod's two containers from the image: init as root, proxy as 1337."""
    root = image["rootfs"]
    pod = sl.Pod("img")
    proxy = None
    try:
        r = pod.run(["chroot", root, "/usr/bin/shuntd", "init", "--redirect", "iptables"],
                    check=False)
        assert r.returncode == 0, r.stderr
        rules = pod.iptables_save()
        assert "-m owner --uid-owner 1337" in rules and "REDIRECT --to-ports 15002" in rules, rules
        proxy = pod.spawn(["chroot", "--userspec=1337:1337", root, "/usr/bin/shuntd",
                           "--capture", "init", "--redirect", "iptables", "--workers", "1"],
                          "image-proxy")

        def ready():
            assert proxy.alive(), proxy.read_stderr()
            try:
                return pod.http("127.0.0.1", 15003, "GET", "/ready")[0] == 200
            except OSError:
                return False

        sl.wait_until(ready, 20, what="shuntd from the image ready")
        st = json.loads(pod.http("127.0.0.1", 15003, "GET", "/status")[2])
        assert st["capture"] == "init" and st["redirect_mode"] == "iptables", st
        # The built-in CA wrote its state as 1337 into the image's directory.
        certs = json.loads(pod.http("127.0.0.1", 15003, "GET", "/certs")[2])
        assert certs["mode"] == "permissive" and certs["identity"], certs
    finally:
        if proxy is not None:
            proxy.stop()
        pod.delete()
