#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""Turns a bench/run.sh result (OUT/<stamp>.json) into OUT/<stamp>.md and
OUT/<stamp>-<scenario>-<metric>.png (gnuplot).

Every value is the median of the repetitions, with the spread (min-max). The
ratio columns divide the median by direct's median and by the best peer's
median (best of HAProxy and nginx, in either mode, for that metric in the same
run): for "higher is better" metrics a ratio above 1 is better, for "lower is
better" ones a ratio below 1 is better.

usage: report.py RESULT.json [--no-charts]
"""

import json
import os
import statistics
import subprocess
import sys
import tempfile

PEERS = ("haproxy-tcp", "haproxy-http", "nginx-stream", "nginx-http", "haproxy-mtls")
ORDER = ["direct", "shunt-iptables", "shunt-ebpf", "shunt-splice", "shunt-relay", "shunt-http", "haproxy-tcp", "haproxy-http",
         "nginx-stream", "nginx-http", "shunt-mtls", "haproxy-mtls"]
SCENARIO_ORDER = ["rr-64", "rr-4k", "bulk-1", "bulk-8", "http-keepalive", "http-close",
                  "conn-setup", "idle-10k", "mtls-handshake", "mtls-keepalive", "cost-rr",
                  "cost-http", "cost-conn", "resources"]
CHARTS = {
    "rr-64": ["p50_us", "p99_us"],
    "rr-4k": ["p50_us"],
    "bulk-1": ["gbit_s"],
    "bulk-8": ["gbit_s"],
    "http-keepalive": ["req_s", "cpu_s_per_100k"],
    "http-close": ["conn_s"],
    "conn-setup": ["setup_p50_us"],
    "idle-10k": ["rss_10k_mb"],
    "mtls-handshake": ["conn_s"],
    "mtls-keepalive": ["req_s"],
    "resources": ["rss_idle_mb"],
}


def fmt(v):
    if v is None:
        return "—"
    a = abs(v)
    if a >= 1000:
        return "{:,.0f}".format(v)
    if a >= 100:
        return "%.0f" % v
    if a >= 10:
        return "%.1f" % v
    if a >= 1:
        return "%.2f" % v
    return "%.3f" % v


def ratio(v, ref):
    if v is None or ref is None or ref == 0:
        return "—"
    return "%.2f×" % (v / ref)


def summarize(vals):
    vals = [v for v in vals if v is not None]
    if not vals:
        return None
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals)}


def peers_of(contender):
    """The peers a contender is compared with: a sidecar pair (shunt-mtls)
    with the HAProxy pair, everything else with the single proxies."""
    if contender and contender.endswith("-mtls"):
        return ("haproxy-mtls",)
    return tuple(p for p in PEERS if not p.endswith("-mtls"))


def best_peer(stats, metric, better, contender=None):
    peers = peers_of(contender) if contender else PEERS
    cands = [(c, s[metric]["median"]) for c, s in stats.items() if c in peers and metric in s]
    if not cands:
        return None, None
    pick = max if better == "higher" else min
    return pick(cands, key=lambda x: x[1])


def chart(path, title, unit, rows):
    """rows: [(contender, median, min, max)] -> PNG bar chart with spread."""
    with tempfile.TemporaryDirectory() as d:
        dat = os.path.join(d, "data")
        with open(dat, "w") as f:
            for name, med, lo, hi in rows:
                f.write('"%s" %g %g %g\n' % (name, med, lo, hi))
        gp = os.path.join(d, "plot.gp")
        with open(gp, "w") as f:
            f.write(
                "set terminal pngcairo size 800,420 noenhanced font 'sans,10'\n"
                "set output '%s'\n"
                "set title '%s'\n"
                "set ylabel '%s'\n"
                "set yrange [0:*]\n"
                "set style data histogram\n"
                "set style histogram errorbars gap 1 lw 1\n"
                "set style fill solid 0.6 border -1\n"
                "set boxwidth 0.8\n"
                "set grid ytics\n"
                "set key off\n"
                "set xtics rotate by -20\n"
                "plot '%s' using 2:3:4:xtic(1) lc rgb '#3b75af'\n"
                % (path, title.replace("'", ""), unit.replace("'", ""), dat)
            )
        r = subprocess.run(["gnuplot", gp], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            # pngcairo may be missing (gnuplot-nox has it; other builds may not)
            with open(gp) as f:
                text = f.read().replace("pngcairo size 800,420 noenhanced font 'sans,10'",
                                        "png size 800,420")
            with open(gp, "w") as f:
                f.write(text)
            r = subprocess.run(["gnuplot", gp], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError("gnuplot failed for %s: %s" % (path, r.stderr[-400:]))


# The metric each scenario is judged by in the headline table.
HEADLINE = [
    ("rr-64", "p50_us"), ("rr-64", "p99_us"), ("rr-4k", "p50_us"), ("bulk-1", "gbit_s"),
    ("bulk-8", "gbit_s"), ("http-keepalive", "req_s"), ("http-keepalive", "cpu_s_per_100k"),
    ("http-close", "conn_s"), ("http-close", "cpu_s_per_100k"), ("conn-setup", "setup_p50_us"),
    ("idle-10k", "rss_10k_mb"), ("mtls-handshake", "conn_s"), ("mtls-handshake", "cpu_s_per_100k"),
    ("mtls-keepalive", "req_s"), ("mtls-keepalive", "cpu_s_per_100k"),
    ("cost-rr", "instr_per_req"), ("cost-rr", "syscalls_per_req"),
    ("cost-http", "instr_per_req"), ("cost-http", "syscalls_per_req"),
    ("cost-conn", "instr_per_req"), ("cost-conn", "syscalls_per_req"), ("resources", "rss_idle_mb"),
]
SHUNTS = ("shunt-iptables", "shunt-ebpf", "shunt-http", "shunt-mtls")


def headline(R, scen):
    """One row per (scenario, metric): each shunt contender's median as a
    ratio to the best peer's median (and the peer), then direct's."""
    metrics = R["metrics"]
    rows = []
    for s, k in HEADLINE:
        if s not in scen:
            continue
        data = R["results"][s]
        stats = {c: {m: summarize(vs) for m, vs in d.items()} for c, d in data.items()}
        stats = {c: {m: x for m, x in d.items() if x} for c, d in stats.items()}
        unit, better = metrics.get(k, ["", "lower"])
        cells, bests = [], []
        for c in SHUNTS:
            x = stats.get(c, {}).get(k)
            bp, bpv = best_peer(stats, k, better, c)
            cells.append("%s (%s)" % (fmt(x["median"]), ratio(x["median"], bpv)) if x else "—")
            if x and bp and "%s %s" % (bp, fmt(bpv)) not in bests:
                bests.append("%s %s" % (bp, fmt(bpv)))
        if all(c == "—" for c in cells):
            continue
        d = stats.get("direct", {}).get(k)
        rows.append("| %s | %s (%s, %s) | %s | %s | %s |" % (
            s, k, unit, better, " | ".join(cells), "; ".join(bests) or "—",
            fmt(d["median"]) if d else "—"))
    if not rows:
        return []
    return ["## Summary", "",
            "Medians; in brackets the ratio to the best peer's median (HAProxy or nginx in "
            "either mode, whichever did best on that metric in this run; for shunt-mtls, a "
            "pair of sidecars, the HAProxy pair).", "",
            "| scenario | metric | shunt-iptables | shunt-ebpf | shunt-http | shunt-mtls | best peer "
            "| direct |",
            "|---|---|---:|---:|---:|---:|---|---:|"] + rows + [""]


TCP_SHOWN = ("TcpExtTCPSynRetrans", "TcpExtListenOverflows", "TcpExtListenDrops",
             "TcpExtTWRecycled", "TcpOutRsts")


def tcp_section(R, scen):
    """Median per contender of the TCP counters (client pod, deltas over the
    scenario) that show dropped or retried connection attempts."""
    tcp = R.get("tcp") or {}
    L = []
    for s in scen:
        if s not in tcp or s in ("rr-64", "rr-4k", "bulk-1", "bulk-8", "idle-10k"):
            continue
        rows = []
        for c in [c for c in ORDER if c in tcp[s]]:
            reps = tcp[s][c]
            vals = [statistics.median([r["client_pod"].get(k, 0) for r in reps]) for k in TCP_SHOWN]
            tw = statistics.median([r.get("client_pod_states_after", {}).get("TIME-WAIT", 0)
                                    for r in reps])
            opens = statistics.median([r["client_pod"].get("TcpActiveOpens", 0) for r in reps])
            rows.append("| %s | %s | %s | %s |" % (c, fmt(opens), " | ".join(fmt(v) if v else "0"
                                                                          for v in vals), fmt(tw)))
        if rows:
            L += ["**%s**" % s, "",
                  "| contender | active opens | SYN retransmits | listen overflows | listen drops "
                  "| TIME-WAIT reused by connect | RSTs sent | TIME-WAIT after |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"] + rows + [""]
    if not L:
        return []
    return ["## TCP counters", "",
            "Client pod, median over the repetitions of each counter's change during the "
            "scenario (`/proc/net/netstat`, `/proc/net/snmp`: TcpExtTCPSynRetrans, "
            "TcpExtListenOverflows, TcpExtListenDrops, TcpExtTWRecycled, TcpOutRsts), and the "
            "TIME-WAIT sockets left in the pod afterwards (`ss`). wrk does not count the "
            "connect in its latency: a retried SYN shows here, not there.", ""] + L


def main(argv):
    if not argv or argv[0].startswith("-"):
        sys.stderr.write(__doc__)
        return 2
    src = argv[0]
    charts = "--no-charts" not in argv
    with open(src) as f:
        R = json.load(f)
    out_dir = os.path.dirname(os.path.abspath(src))
    stamp = R["timestamp"]
    metrics = R["metrics"]
    m = R["machine"]
    v = R["versions"]
    L = []
    L.append("# shunt benchmarks — %s" % stamp)
    L.append("")
    L.append("Command: `%s`%s" % (R.get("command") or "bench/run.sh",
                                  " (quick mode)" if R.get("quick") else ""))
    L.append("")
    L.append("Machine: %s vCPU, %s, kernel %s; load average %s at start, %s at end." % (
        m["nproc"], m["model"], m["kernel"], " ".join(m["loadavg_start"]),
        " ".join(m.get("loadavg_end", ["?"]))))
    L.append("")
    b = v.get("shuntd_build", {})
    L.append("Versions: %s (build %s, sanitizers %s%s); %s; %s; %s; %s." % (
        v["shuntd"], b.get("CMAKE_BUILD_TYPE", "?"), b.get("SHUNT_SANITIZE", "?"),
        ", binary built %s, tree at %s" % (v["shuntd_built"], v["source_head"])
        if "shuntd_built" in v else "",
        v["haproxy"], v["nginx"], v["wrk"], v["iperf3"]))
    L.append("")
    p = R["params"]
    L.append("Repetitions: %d per contender and scenario (median reported, spread = min–max); "
             "request-response %d round trips, bulk %d s, wrk %d s, sequential connections %d, "
             "idle connections %d." % (p["reps"], p["rr_count"], p["bulk_s"], p["http_s"],
                                        p["conn_count"], p["idle_conns"]))
    L.append("")
    L.append("Topology: " + " ".join(R["topology"].split()))
    L.append("")
    for n in R.get("notes", []):
        L.append("- " + n)
    L.append("- Ratios: median ÷ direct's median (×direct) and ÷ the best peer's median "
             "(×best peer; peers are HAProxy and nginx in either mode; shunt-mtls, a pair of "
             "sidecars, is compared with the HAProxy pair). Higher-is-better "
             "metrics: above 1 is better; lower-is-better metrics: below 1 is better.")
    for s in R.get("skipped", []):
        what = s.get("contender") or s.get("scenario")
        L.append("- **Skipped %s**: %s" % (what, s["reason"]))
    for fl in R.get("failures", []):
        L.append("- **Failed** %s / %s (rep %s): %s" % (
            fl.get("scenario", "start"), fl.get("contender"), fl.get("rep"),
            fl["error"].splitlines()[0][:300] if fl["error"] else ""))
    if R.get("interrupted"):
        L.append("- **Interrupted**: results are partial.")
    L.append("")

    scen = [s for s in SCENARIO_ORDER if s in R["results"]]
    L += headline(R, scen)
    for s in scen:
        data = R["results"][s]
        stats = {c: {k: summarize(vs) for k, vs in d.items()} for c, d in data.items()}
        stats = {c: {k: x for k, x in d.items() if x} for c, d in stats.items()}
        if s == "conn-setup" and "direct" in stats and "setup_p50_us" in stats["direct"]:
            base = stats["direct"]["setup_p50_us"]["median"]
            for c, d in stats.items():
                if "setup_p50_us" in d:
                    x = d["setup_p50_us"]
                    d["added_setup_us"] = {"median": x["median"] - base, "min": x["min"] - base,
                                           "max": x["max"] - base, "n": x["n"]}
            metrics = dict(metrics, added_setup_us=["µs", "lower"])
        title = R["scenarios"].get(s) or ("resources: RSS of the proxy just after start, idle"
                                          if s == "resources" else s)
        L.append("## %s" % s)
        L.append("")
        L.append(title + ".")
        L.append("")
        names = [c for c in ORDER if c in stats]
        mnames = []
        for c in names:
            for k in stats[c]:
                if k not in mnames:
                    mnames.append(k)
        mnames.sort(key=lambda k: list(metrics).index(k) if k in metrics else 99)
        for k in mnames:
            if k == "errors" and all(stats[c].get(k, {}).get("max", 0) == 0 for c in names):
                continue
            unit, better = metrics.get(k, ["", "lower"])
            bps = []
            for probe in ("direct", "shunt-mtls"):
                bp, _ = best_peer(stats, k, better, probe)
                if bp and bp not in bps:
                    bps.append(bp)
            dv = stats.get("direct", {}).get(k, {}).get("median")
            L.append("**%s** (%s, %s is better)%s" % (
                k, unit, better, "; best peer: %s" % ", ".join(bps) if bps else ""))
            L.append("")
            L.append("| contender | median | spread (min–max) | ×direct | ×best peer |")
            L.append("|---|---:|---:|---:|---:|")
            rows = []
            for c in names:
                x = stats[c].get(k)
                if not x:
                    continue
                L.append("| %s | %s | %s–%s | %s | %s |" % (
                    c, fmt(x["median"]), fmt(x["min"]), fmt(x["max"]),
                    ratio(x["median"], dv), ratio(x["median"], best_peer(stats, k, better, c)[1])))
                rows.append((c, x["median"], x["min"], x["max"]))
            L.append("")
            if charts and k in CHARTS.get(s, []) and rows:
                png = "%s-%s-%s.png" % (stamp, s, k)
                chart(os.path.join(out_dir, png), "%s: %s (median, min-max)" % (s, k), unit, rows)
                L.append("![%s %s](%s)" % (s, k, png))
                L.append("")
    L += tcp_section(R, scen)
    for prof in R.get("profiles", []):
        L.append("Profile: `%s`" % os.path.basename(prof))
        L.append("")
    md = os.path.join(out_dir, stamp + ".md")
    with open(md, "w") as f:
        f.write("\n".join(L).rstrip() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
