#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Node mode against sidecars on the same pods (issue 16), in one run: the
node lab of tests/integration/nodelab.py (two nodes, three pods each, the
Kubernetes API stand-in, shunt-ca, strict mTLS everywhere), first with one
shuntd per meshed pod (sidecars, eBPF capture on each pod's cgroup), then
with one shuntd per node (mode node). The same pods, services, clients and
servers (bench/rr) for both; bench/node_bench.sh is the entry point.

Per mode and repetition:
- request latency: `rr ping` (64 B request-response on one connection,
  COUNT round trips after a warm-up) from frontend-0 (node-a) to shop/web
  (web-0 on node-a, web-1 on node-b: one connection lands on one of them,
  the repetitions alternate) and from batch-0 (node-b) to billing/ledger;
- connections per second: `rr conn` (connect, one 64 B round trip, close:
  an mTLS handshake each) from both clients at once, summed;
- memory: RSS and PSS (/proc/PID/smaps_rollup) of every shuntd of the mode,
  summed and divided by the meshed pods, idle (after start) and after load;
- CPU: the shuntds' user+system time over the run, per 1,000 round trips
  and connections.

Writes OUT/node-<timestamp>.json (every value) and .md (medians, ratio node
to sidecar), and prints the Markdown. A mode that cannot run (shuntd does
not start, a client fails) is reported with its reason and the exit status
is 1."""

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))

import nodelab  # noqa: E402
import shuntlib as sl  # noqa: E402

CLIENTS = (("frontend-0", "shop", "web"), ("batch-0", "billing", "ledger"))
CLK_TCK = os.sysconf("SC_CLK_TCK")


def smaps(pid):
    out = {}
    with open("/proc/%d/smaps_rollup" % pid) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 2 and parts[0] in ("Rss:", "Pss:"):
                out[parts[0][:-1].lower()] = int(parts[1]) * 1024
    return out


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def memory(daemons, pods):
    rss = sum(smaps(d.proc.pid)["rss"] for d in daemons)
    pss = sum(smaps(d.proc.pid)["pss"] for d in daemons)
    return {"processes": len(daemons), "pods": pods, "rss_total": rss, "pss_total": pss,
            "rss_per_pod": rss / pods, "pss_per_pod": pss / pods}


def rr(lab, pod, *args, timeout=300):
    r = lab.pods[pod].run([lab.rr] + [str(a) for a in args], timeout=timeout)
    if r.returncode != 0:
        raise sl.HarnessError("rr %s in %s: %s" % (" ".join(map(str, args)), pod,
                                                    r.stderr.strip()[-500:]))
    return json.loads(r.stdout)


def run_mode(lab, mode, a):
    if mode == "sidecar":
        daemons = list(lab.start_sidecars(redirect="ebpf", workers=1, log_level="warn").values())
    else:
        daemons = list(lab.start_node_agents(redirect="ebpf", workers=2,
                                             log_level="warn").values())
    res = {"mode": mode, "ping": [], "conn": []}
    try:
        pods = len(lab.meshed_pods())
        res["memory_idle"] = memory(daemons, pods)
        cpu0 = sum(cpu_s(d.proc.pid) for d in daemons)
        # warm-up: every client reaches every endpoint once
        for pod, ns, svc in CLIENTS:
            for _ in range(2):
                rr(lab, pod, "ping", lab.vip(ns, svc), nodelab.ECHO_PORT, 64, 10, 0)
        rounds = conns = 0
        for rep in range(a.reps):
            for pod, ns, svc in CLIENTS:
                p = rr(lab, pod, "ping", lab.vip(ns, svc), nodelab.ECHO_PORT, 64, a.count,
                       a.count // 10)
                p.update({"rep": rep, "client": pod})
                res["ping"].append(p)
                rounds += a.count + a.count // 10
            procs = [lab.pods[pod].spawn([lab.rr, "conn", lab.vip(ns, svc),
                                          str(nodelab.ECHO_PORT), "64", str(a.conns)], "rr-conn-%s-%d" % (pod, rep))
                     for pod, ns, svc in CLIENTS]
            got = []
            for proc in procs:
                rc = proc.wait(300)
                out, err = proc.read_stdout(), proc.read_stderr()
                proc.stop()
                if rc != 0:
                    raise sl.HarnessError("rr conn in %s exited %s: %s" % (proc.name, rc, err))
                got.append(json.loads(out))
            res["conn"].append({"rep": rep, "conn_per_s": sum(g["conn_per_s"] for g in got),
                                "runs": got})
            conns += a.conns * len(CLIENTS)
        res["cpu_s"] = sum(cpu_s(d.proc.pid) for d in daemons) - cpu0
        res["cpu_ms_per_1k"] = 1000.0 * res["cpu_s"] / ((rounds + conns) / 1000.0)
        res["memory_loaded"] = memory(daemons, pods)
        return res
    finally:
        # a shuntd that does not stop cleanly (exit status, sanitizer report)
        # fails the mode, with what was measured kept
        try:
            if mode == "sidecar":
                lab.stop_sidecars()
            else:
                lab.stop_node_agents()
        except (AssertionError, sl.HarnessError) as e:
            res["stop_error"] = str(e).splitlines()[0][:300]


def reason(e):
    """One line for a mode that failed: the harness's first line, and the
    last error a shuntd logged when its log is quoted."""
    text = str(e)
    out = text.splitlines()[0][:300] if text else type(e).__name__
    errs = [ln for ln in text.splitlines() if '"level":"error"' in ln]
    if errs:
        try:
            out += " - shuntd: " + json.loads(errs[-1])["msg"]
        except ValueError:
            out += " - " + errs[-1][:300]
    return out


def summary(res):
    ping = res["ping"]
    return {
        "p50_us": statistics.median(p["rtt"]["p50_us"] for p in ping),
        "p99_us": statistics.median(p["rtt"]["p99_us"] for p in ping),
        "conn_per_s": statistics.median(c["conn_per_s"] for c in res["conn"]),
        "rss_per_pod_idle": res["memory_idle"]["rss_per_pod"],
        "pss_per_pod_idle": res["memory_idle"]["pss_per_pod"],
        "rss_per_pod_loaded": res["memory_loaded"]["rss_per_pod"],
        "pss_per_pod_loaded": res["memory_loaded"]["pss_per_pod"],
        "cpu_ms_per_1k": res["cpu_ms_per_1k"],
    }


ROWS = (("request latency p50 (64 B, µs)", "p50_us", "%.1f", "lower"),
        ("request latency p99 (64 B, µs)", "p99_us", "%.1f", "lower"),
        ("connections per second (2 clients, mTLS each)", "conn_per_s", "%.0f", "higher"),
        ("memory per pod, PSS idle (KiB)", "pss_per_pod_idle", "%.0f", "lower"),
        ("memory per pod, RSS idle (KiB)", "rss_per_pod_idle", "%.0f", "lower"),
        ("memory per pod, PSS after load (KiB)", "pss_per_pod_loaded", "%.0f", "lower"),
        ("memory per pod, RSS after load (KiB)", "rss_per_pod_loaded", "%.0f", "lower"),
        ("shuntd CPU per 1,000 round trips + connections (ms)", "cpu_ms_per_1k", "%.1f",
         "lower"))


def markdown(doc):
    lines = ["# Node mode against sidecars (%s)" % doc["time"], "",
             "`%s` at %s; %d meshed pods on 2 nodes; %d repetitions; rr ping %d round trips, "
             "rr conn %d connections per client and repetition; medians over repetitions "
             "(and both clients for latency)." % (doc["command"], doc["commit"], doc["pods"],
                                                  doc["reps"], doc["count"], doc["conns"]), "",
             "| metric | sidecar | node | node / sidecar |", "|---|---|---|---|"]
    s, n = doc["summary"].get("sidecar"), doc["summary"].get("node")
    for label, key, fmt, _ in ROWS:
        def cell(x):
            if x is None:
                return "—"
            v = x[key] / 1024.0 if "per_pod" in key else x[key]
            return fmt % v
        ratio = "%.2f×" % (n[key] / s[key]) if s and n and s[key] else "—"
        lines.append("| %s | %s | %s | %s |" % (label, cell(s), cell(n), ratio))
    for mode, why in doc["failed"].items():
        lines += ["", "**%s mode did not run:** %s" % (mode, why)]
    return "\n".join(lines) + "\n"


def main():
    p = argparse.ArgumentParser(description="node mode against sidecars on the node lab")
    p.add_argument("--rr", required=True, help="bench/rr built")
    p.add_argument("--out", required=True)
    p.add_argument("--modes", default="sidecar,node")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--count", type=int, default=2000, help="rr ping round trips")
    p.add_argument("--conns", type=int, default=300, help="rr conn connections per client")
    p.add_argument("--command", default="bench/node_bench.sh")
    a = p.parse_args()
    modes = [m for m in a.modes.split(",") if m]
    if not modes or any(m not in ("sidecar", "node") for m in modes):
        p.error("--modes: sidecar and/or node")
    for name, lo, hi in (("reps", 1, 10), ("count", 10, 100000), ("conns", 10, 20000)):
        if not lo <= getattr(a, name) <= hi:
            p.error("--%s: expected %d..%d" % (name, lo, hi))
    sl.install_guards()
    sl.sweep_stale()
    commit = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "?"
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    doc = {"time": stamp, "commit": commit, "command": a.command, "reps": a.reps,
           "count": a.count, "conns": a.conns, "results": {}, "summary": {}, "failed": {}}
    rrbin = os.path.abspath(a.rr)

    def echo(pod):
        return [rrbin, "server", "0.0.0.0", str(nodelab.ECHO_PORT)]

    try:
        with nodelab.Lab(echo_argv=echo) as lab:
            lab.rr = rrbin
            doc["pods"] = len(lab.meshed_pods())
            for mode in modes:
                t0 = time.monotonic()
                try:
                    res = run_mode(lab, mode, a)
                except (sl.HarnessError, OSError, subprocess.TimeoutExpired, AssertionError,
                        ValueError, KeyError) as e:
                    doc["failed"][mode] = reason(e)
                    print("node_bench: %s mode failed: %s" % (mode, e), file=sys.stderr)
                    continue
                res["seconds"] = time.monotonic() - t0
                doc["results"][mode] = res
                doc["summary"][mode] = summary(res)
                if "stop_error" in res:
                    doc["failed"][mode] = "measured, but shuntd did not stop cleanly: " + \
                        res["stop_error"]
    finally:
        sl.cleanup_all()
    os.makedirs(a.out, exist_ok=True)
    base = os.path.join(a.out, "node-" + stamp)
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=1)
    md = markdown(doc)
    with open(base + ".md", "w") as f:
        f.write(md)
    print(md)
    print("node_bench: wrote %s.{json,md}" % base, file=sys.stderr)
    return 1 if doc["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
