# SPDX-License-Identifier: Apache-2.0
"""Smoke test of the benchmark harness (bench/run.sh), so it cannot rot.

Runs the quick mode on one scenario (rr-64) for the direct path and shunt
with iptables and eBPF capture, and on mtls-keepalive for the two sidecar
pairs, one repetition each, into a temporary output directory,
and checks the JSON, the Markdown report, the charts, and that the run left
no namespace or process behind. No timing is asserted: only that every
number is there and that shuntd did relay the traffic (it spent CPU on it).
"""

import json
import os
import signal
import subprocess
import tempfile

import pytest

import shuntlib as sl

RUN_SH = os.path.join(sl.SOURCE, "bench", "run.sh")
OBS_SH = os.path.join(sl.SOURCE, "bench", "obs_bench.sh")


def bench(args, timeout=150, script=RUN_SH):
    out = tempfile.mkdtemp(prefix=sl.RUN_PREFIX + "bench-")
    sl._tmpdirs.append(out)
    p = subprocess.Popen(
        ["bash", script, "--build", sl.BUILD, "--out", out] + list(args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # run.sh's trap removes its namespaces and processes on SIGTERM.
        os.killpg(p.pid, signal.SIGTERM)
        try:
            p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.communicate(timeout=10)
        pytest.fail("%s %s did not finish in %d s" % (script, " ".join(args), timeout))
    return p.returncode, stdout, stderr, out, p.pid


def leftovers(pid):
    names = sl.run(["ip", "netns", "list"]).stdout
    left = [l.split()[0] for l in names.splitlines() if l.startswith("shunt-b-%d-" % pid)]
    left += [d for d in ("/run/shunt-b-%d-cg" % pid, "/run/shunt-b-%d-bpf" % pid) if os.path.exists(d)]
    return left


def test_quick_one_scenario():
    if not os.access(sl.SHUNTD, os.X_OK):
        pytest.fail("shuntd not built at %s" % sl.SHUNTD)
    rc, stdout, stderr, out, pid = bench(
        ["--quick", "--scenario", "rr-64", "--contenders", "direct,shunt-iptables,shunt-ebpf", "--reps", "1"]
    )
    assert rc == 0, "run.sh failed (%d):\n%s\n%s" % (rc, stdout[-2000:], stderr[-3000:])
    assert leftovers(pid) == [], "namespaces or cgroup mounts left behind"

    jsons = [f for f in os.listdir(out) if f.endswith(".json")]
    assert len(jsons) == 1, os.listdir(out)
    stamp = jsons[0][: -len(".json")]
    with open(os.path.join(out, jsons[0])) as f:
        r = json.load(f)
    assert r["failures"] == [], r["failures"]
    assert r["quick"] is True and r["params"]["reps"] == 1
    assert r["machine"]["nproc"] >= 1 and r["machine"]["kernel"]
    assert list(r["scenarios"]) == ["rr-64"]
    res = r["results"]["rr-64"]
    # Every contender asked for ran: bench.py drops one it cannot run (shunt-ebpf
    # on a build or kernel without eBPF capture) into "skipped", which fails here.
    assert r["skipped"] == [], r["skipped"]
    assert sorted(res) == sorted(["direct", "shunt-iptables", "shunt-ebpf"]), list(res)
    for c in ("direct", "shunt-iptables", "shunt-ebpf"):
        for k in ("p50_us", "p99_us", "p999_us"):
            vals = res[c][k]
            assert len(vals) == 1 and vals[0] > 0, (c, k, vals)
        assert res[c]["p50_us"][0] <= res[c]["p99_us"][0] <= res[c]["p999_us"][0], res[c]
    # shuntd was started and relayed the round trips: it used CPU for them.
    for c in ("shunt-iptables", "shunt-ebpf"):
        assert res[c]["cpu_us_per_rt"][0] > 0, res[c]
    assert r["results"]["resources"]["shunt-iptables"]["rss_idle_mb"][0] > 0

    with open(os.path.join(out, stamp + ".md")) as f:
        md = f.read()
    assert "## rr-64" in md
    assert "| shunt-iptables |" in md and "| shunt-ebpf |" in md and "| direct |" in md
    assert "×direct" in md
    pngs = [f for f in os.listdir(out) if f.startswith(stamp) and f.endswith(".png")]
    assert pngs, os.listdir(out)
    for png in pngs:
        with open(os.path.join(out, png), "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n", png
        assert "(%s)" % png in md, png


def test_quick_mtls_pair():
    """shunt to shunt over mTLS against the HAProxy pair, one repetition of
    the keep-alive scenario: both relay requests, and shuntd's handshake
    counter shows the traffic went through mutual TLS."""
    if not os.access(sl.SHUNTD, os.X_OK):
        pytest.fail("shuntd not built at %s" % sl.SHUNTD)
    rc, stdout, stderr, out, pid = bench(
        ["--quick", "--scenario", "mtls-keepalive", "--contenders", "shunt-mtls,haproxy-mtls",
         "--reps", "1"]
    )
    assert rc == 0, "run.sh failed (%d):\n%s\n%s" % (rc, stdout[-2000:], stderr[-3000:])
    assert leftovers(pid) == [], "namespaces or cgroup mounts left behind"
    jsons = [f for f in os.listdir(out) if f.endswith(".json")]
    with open(os.path.join(out, jsons[0])) as f:
        r = json.load(f)
    assert r["failures"] == [] and r["skipped"] == [], (r["failures"], r["skipped"])
    res = r["results"]["mtls-keepalive"]
    for c in ("shunt-mtls", "haproxy-mtls"):
        assert res[c]["req_s"][0] > 0 and res[c]["errors"][0] == 0, res[c]
        assert res[c]["cpu_s_per_100k"][0] > 0, res[c]
    # wrk's 16 connections each needed one handshake between the sidecars.
    assert res["shunt-mtls"]["tls_handshakes"][0] >= 16, res["shunt-mtls"]
    md = open(os.path.join(out, jsons[0][: -len(".json")] + ".md")).read()
    assert "| shunt-mtls |" in md and "## Summary" in md


def test_unknown_scenario_is_refused():
    rc, stdout, stderr, _, pid = bench(["--quick", "--scenario", "no-such-scenario"], timeout=60)
    assert rc != 0
    assert "no-such-scenario" in stderr
    assert leftovers(pid) == []


def test_obs_bench_quick():
    """bench/obs_bench.sh --quick on the baseline (every feature off) and
    tracing sampled: both modes ran through the two sidecars (the script
    fails when the client shuntd proxied fewer requests than wrk made, or
    a sampled mode exported no span), the report has the ratios, and
    nothing is left behind (the collectors included)."""
    rc, stdout, stderr, out, pid = bench(["--quick", "--modes", "off,tracing"], timeout=120,
                                         script=OBS_SH)  # fmt: skip
    assert rc == 0, "obs_bench.sh failed (%d):\n%s\n%s" % (rc, stdout[-2000:], stderr[-3000:])
    names = sl.run(["ip", "netns", "list"]).stdout
    assert "shunt-obsb-c%d" % pid not in names and "shunt-obsb-s%d" % pid not in names, names
    jsons = [f for f in os.listdir(out) if f.startswith("obs-") and f.endswith(".json")]
    assert len(jsons) == 1, os.listdir(out)
    with open(os.path.join(out, jsons[0])) as f:
        r = json.load(f)
    assert list(r["modes"]) == ["off", "tracing"] and r["baseline"] == "off"
    for m, x in r["modes"].items():
        assert x["median_requests_per_s"] > 0 and x["errors"] == 0, (m, x)
        assert x["runs"][0]["proxied"] > 0, (m, x)
    assert r["modes"]["off"]["requests_per_s_ratio"] == 1.0
    assert r["modes"]["off"]["spans_exported"] == 0
    assert r["modes"]["tracing"]["requests_per_s_ratio"] > 0
    # Both sides export a span per request (sampling 1), none dropped here.
    assert r["modes"]["tracing"]["spans_exported"] >= r["modes"]["tracing"]["runs"][0]["proxied"]
    md = open(os.path.join(out, jsons[0][: -len(".json")] + ".md")).read()
    assert "| tracing |" in md and "| off |" in md


def test_obs_bench_refuses_unknown_mode():
    rc, _, stderr, _, _ = bench(["--quick", "--modes", "off,tracing-sampled"], timeout=30,
                                script=OBS_SH)  # fmt: skip
    assert rc == 2 and "unknown mode 'tracing-sampled'" in stderr, stderr
