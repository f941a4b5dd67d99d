# SPDX-License-Identifier: Apache-2.0
"""Fixtures for shunt's integration tests (see shuntlib.py for the harness).

Every fixture that creates something removes it in a finally block, so a
failing test leaves no namespace, rule or process behind. A skipped test
counts as failed unless shuntlib.missing() allowed the skip (the
SHUNT_ALLOW_SKIP variable): a machine without a tool never reports
"passed" for checks it did not make."""

import os

import pytest

import shuntlib as sl
from shuntlib import Topology as T


def pytest_configure(config):
    if os.geteuid() != 0:
        raise pytest.UsageError("shunt integration tests create network namespaces: run as root")
    sl.install_guards()
    sl.sweep_stale()
    sl.raise_nofile(16384)


def pytest_unconfigure(config):
    sl.cleanup_all()


def _unallowed_skip(rep):
    """The message of a skip that shuntlib.missing() did not allow (a bare
    pytest.skip, a skip mark, importorskip), or None."""
    if not rep.skipped or hasattr(rep, "wasxfail"):
        return None
    lr = rep.longrepr
    msg = lr[2] if isinstance(lr, tuple) and len(lr) == 3 else str(lr)
    return None if sl.skip_allowed(msg) else msg


def _fail_skip(rep, msg):
    rep.outcome = "failed"
    rep.longrepr = ("a skip counts as a failure unless %s allows it (shuntlib.missing): %s"
                    % (sl.ALLOW_SKIP_VAR, msg))


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    rep = outcome.get_result()
    msg = _unallowed_skip(rep)
    if msg is not None:
        _fail_skip(rep, msg)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    msg = _unallowed_skip(rep)
    if msg is not None:
        _fail_skip(rep, msg)
    if rep.failed and rep.when in ("setup", "call"):
        for d in sl.recent_daemons():
            try:
                rep.sections.append(("shuntd log " + d.pod.name, d.log_tail(80)))
            except OSError:
                pass


@pytest.fixture(scope="module")
def topo():
    t = T()
    try:
        yield t
    finally:
        t.delete()


@pytest.fixture(scope="module")
def remote_peers(topo):
    """The servers of shuntlib.REMOTE_PEERS, running in the remote pod."""
    procs = {}
    try:
        sl.spawn_remote_peers(topo, procs)
        yield procs
    finally:
        for p in procs.values():
            p.stop()


@pytest.fixture
def fresh_topo():
    """A topology of its own, for a test that runs a differently configured
    shuntd (the module's shared one would hold the app pod's ports)."""
    t = T()
    try:
        yield t
    finally:
        t.delete()


@pytest.fixture
def start_shuntd():
    """Factory: start_shuntd(pod, args=None, config=None, ready=True) -> Shuntd.
    Every daemon it started is stopped at teardown."""
    started = []

    def start(pod, args=None, config=None, ready=True, env=None):
        d = sl.Shuntd(pod, sl.shuntd_args() if args is None else args, config=config, env=env)
        started.append(d)
        if ready:
            d.wait_ready()
        return d

    try:
        yield start
    finally:
        sl.stop_checked(started, exited_ok=True)


@pytest.fixture(scope="module")
def shuntd(topo, remote_peers):
    """One shuntd with iptables capture in the app pod, shared by a module."""
    d = sl.Shuntd(topo.app, sl.shuntd_args())
    try:
        d.wait_ready()
        yield d
    finally:
        sl.stop_checked([d])
