# SPDX-License-Identifier: Apache-2.0
"""What the eBPF capture tests share: a cgroup2 hierarchy and a bpffs mounted
under /run (where every network namespace sees them: `ip netns exec` mounts a
fresh /sys), the application's cgroup, the pin root, and ways to start
processes inside the cgroup. Everything is this process's own (named by pid)
and removed at the end, also on failure. Import the fixtures into a test
module (`from ebpflib import cgroup, mounts`) to use them."""

import json
import os
import signal
import subprocess

import pytest

import shuntlib as sl

CGROOT = "/run/shunt-t-%d-cg" % os.getpid()
BPFFS = "/run/shunt-t-%d-bpf" % os.getpid()
# The mount shows the whole cgroup2 hierarchy: the pod cgroup name must be
# unique to this run, or two runs (or a killed one) would collide.
CGROUP = CGROOT + "/shunt-t-%d-app" % os.getpid()
PINS = BPFFS + "/shunt"

def cgroup_argv(cgroup, argv):
    """argv started inside cgroup: a shell writes its pid into cgroup.procs
    and execs argv, so the pid stays the same."""
    return ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && exec "$@"', cgroup] + list(argv)


def in_cgroup(pod, argv, timeout=30):
    """Runs argv in pod's network namespace, inside the app cgroup."""
    return pod.run(cgroup_argv(CGROUP, argv), timeout=timeout, check=False)


def remove_pins(root):
    if not os.path.isdir(root):
        return
    for name in os.listdir(root):  # unlinking the last reference detaches a link
        try:
            os.unlink(os.path.join(root, name))
        except OSError:
            pass
    os.rmdir(root)


def bpf_counters(root=PINS):
    """shunt_counters summed over CPUs, read by bpftool from the pin."""
    r = sl.run(["bpftool", "-j", "map", "dump", "pinned", os.path.join(root, "shunt_counters")])
    total = {}
    for entry in json.loads(r.stdout):
        for cpu in entry["formatted"]["values"]:
            for k, v in cpu["value"].items():
                total[k] = total.get(k, 0) + v
    return total


@pytest.fixture(scope="module")
def mounts():
    made = []
    try:
        for path, fstype in ((CGROOT, "cgroup2"), (BPFFS, "bpf")):
            os.mkdir(path)
            made.append(path)
            sl.run(["mount", "-t", fstype, fstype, path])
            made.append("mount:" + path)
        yield
    finally:
        for m in reversed(made):
            if m.startswith("mount:"):
                subprocess.run(["umount", "-l", m[6:]], capture_output=True, timeout=10)
            else:
                os.rmdir(m)


@pytest.fixture(scope="module")
def cgroup(mounts):
    os.mkdir(CGROUP)
    try:
        yield CGROUP
    finally:
        try:
            with open(os.path.join(CGROUP, "cgroup.procs")) as f:
                for pid in f.read().split():
                    os.kill(int(pid), signal.SIGKILL)
        except OSError:
            pass
        sl.wait_until(lambda: not open(os.path.join(CGROUP, "cgroup.procs")).read().strip(), 5)
        os.rmdir(CGROUP)
        remove_pins(PINS)


@pytest.fixture
def cgroup2(mounts):
    """A second cgroup, for a daemon of a test's own (the module's shuntd holds
    the first)."""
    path = CGROUP + "-2"
    os.mkdir(path)
    try:
        yield path
    finally:
        os.rmdir(path)


def ebpf_args(**kw):
    return sl.shuntd_args(redirect="ebpf", redirect_cgroup=CGROUP, bpf_pin_root=PINS, **kw)


def start_ebpf_shuntd(pod, daemons, **flags):
    """shuntd in pod, inside CGROUP, with ebpf_args(**flags): joins daemons
    as soon as it exists (the caller stop_checks them), then is ready and
    redirecting with eBPF. Returns it."""
    d = sl.Shuntd(InCgroup(pod, CGROUP), ebpf_args(**flags))
    daemons.append(d)
    d.wait_ready()
    assert d.json("/status")["redirect_mode"] == "ebpf"
    return d


class InCgroup:
    """A pod whose spawned processes start inside cgroup (a shell writes its
    pid into cgroup.procs and execs the command, so the pid is the same)."""

    def __init__(self, pod, cgroup):
        self._pod = pod
        self._cgroup = cgroup

    def spawn(self, argv, name, env=None, stdout_pipe=False):
        argv = cgroup_argv(self._cgroup, argv)
        return self._pod.spawn(argv, name, env=env, stdout_pipe=stdout_pipe)

    def __getattr__(self, name):
        return getattr(self._pod, name)
