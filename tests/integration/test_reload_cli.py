# SPDX-License-Identifier: Apache-2.0
"""shuntctl reload and drain against a real shuntd: the file's new value is
applied and reported, a bad file is refused with the running configuration
kept, a drain returns once shuntd has exited cleanly, and a shuntctl that
cannot reach shuntd says so without signalling anything."""

import shuntlib as sl


def test_reload_applies_and_refuses(fresh_topo, start_shuntd):
    pod = fresh_topo.app
    d = start_shuntd(pod, config={"outbound_policy": "allow_any"})
    assert d.config_value("outbound_policy")[0] == "allow_any"

    d.write_config({"outbound_policy": "registry_only"})
    p = sl.shuntctl(pod, "reload")
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert p.stdout.strip() == "reloaded: configuration generation 2"
    assert d.config_value("outbound_policy") == ("registry_only", "file")

    d.write_config('{"outbound_policy": "nowhere"}')
    p = sl.shuntctl(pod, "reload")
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert "reload not applied (generation still 2" in p.stderr
    assert d.alive()
    assert d.config_value("outbound_policy") == ("registry_only", "file")
    assert d.json("/status")["config"]["generation"] == 2


def test_reload_without_a_shuntd(fresh_topo):
    """Nothing answers: exit 1 with the address, no signal sent anywhere."""
    p = sl.shuntctl(fresh_topo.remote, "reload")
    assert p.returncode == 1
    assert "127.0.0.1:15003" in p.stderr and "reload" not in p.stdout


def test_drain_stops_gracefully(fresh_topo, start_shuntd):
    """shuntctl drain returns once shuntd has drained, removed its capture
    and exited 0."""
    pod = fresh_topo.app
    d = start_shuntd(pod)
    assert "SIDECAR_PROXY_OUTBOUND" in pod.iptables_save()
    p = sl.shuntctl(pod, "drain", timeout=30)
    assert p.returncode == 0, (p.stdout, p.stderr)
    assert "drained: shuntd (pid %d) exited" % d.proc.pid in p.stdout
    assert d.wait(5) == 0
    assert "SIDECAR_PROXY" not in pod.iptables_save()
    assert "SIDECAR_PROXY" not in pod.iptables_save(v6=True)
