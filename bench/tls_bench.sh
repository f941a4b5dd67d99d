#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# mTLS benchmark: certificate issuance by the built-in CA, and full TLS 1.3
# handshakes per second (client certificates, ECDSA P-256 everywhere) into
# shuntd's inbound side next to HAProxy terminating TLS, in the same run.
#
#   bench/tls_bench.sh [--quick] [--build DIR] [--out DIR]
#
# Two network namespaces joined by a veth pair: the client (build/tls_bench
# handshake) in one; in the other the application (tls_bench serve, one byte
# answer), shuntd (strict mTLS, iptables capture: the client connects to the
# application port and PREROUTING brings it to 15001) and HAProxy (TLS on its
# own port, "verify required" against the same CA, forwarding to the same
# application). Both proxies get 2 threads, no access logs. Each side runs
# ROUNDS times alternately, SECONDS each; the report takes the median.
#
# Writes bench/results/tls-<UTC time>.json and .md (or --out DIR). Needs
# root. Not run by ctest. KEEP=1 keeps the temporary directory (logs, PKI).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
ROOT=$(dirname "$HERE")
BUILD=$ROOT/build
OUT=$HERE/results
ROUNDS=3
SECONDS_EACH=10
CONNS=32
N_ECDSA=1000
N_RSA=100
while [ $# -gt 0 ]; do
	case "$1" in
	--quick) ROUNDS=1 SECONDS_EACH=3 N_ECDSA=1000 N_RSA=10 ;;
	--build) BUILD=$2; shift ;;
	--out) OUT=$2; shift ;;
	*) echo "usage: $0 [--quick] [--build DIR] [--out DIR]" >&2; exit 2 ;;
	esac
	shift
done
[ "$(id -u)" = 0 ] || { echo "tls_bench.sh: needs root (network namespaces)" >&2; exit 2; }
for b in "$BUILD/shuntd" "$BUILD/tls_bench"; do
	[ -x "$b" ] || { echo "tls_bench.sh: $b missing: build first" >&2; exit 2; }
done
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
command -v haproxy >/dev/null || { echo "tls_bench.sh: haproxy missing" >&2; exit 2; }

TAG=$$
CLI=shunt-tlsb-c$TAG
SRV=shunt-tlsb-s$TAG
TMP=$(mktemp -d /tmp/shunt-tlsb.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	ip netns del "$CLI" 2>/dev/null || true
	ip netns del "$SRV" 2>/dev/null || true
	if [ -n "${KEEP:-}" ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT INT TERM

APP_PORT=8080
HAP_PORT=9443
CIP=10.98.0.1
SIP=10.98.0.2
bench_netns_pair "$CLI" "$SRV" $CIP $SIP tb-srv tb-cli

echo "== certificate issuance (built-in CA)" >&2
ISSUE_EC=$("$BUILD/tls_bench" issue "$N_ECDSA" ecdsa-p256)
ISSUE_RSA=$("$BUILD/tls_bench" issue "$N_RSA" rsa-2048)
echo "$ISSUE_EC" >&2
echo "$ISSUE_RSA" >&2

# One mesh CA: shuntd's server certificate, HAProxy's and the client's.
"$BUILD/tls_bench" pki "$TMP"
cat "$TMP/server.pem" "$TMP/server-key.pem" >"$TMP/haproxy.pem"
chmod 600 "$TMP/haproxy.pem"

ip netns exec "$SRV" "$BUILD/tls_bench" serve 0.0.0.0 $APP_PORT >"$TMP/app.out" 2>&1 &
APP_PID=$!
PIDS+=($APP_PID)

cat >"$TMP/haproxy.cfg" <<EOF
global
	nbthread 2
	maxconn 5000
defaults
	mode tcp
	timeout connect 5s
	timeout client 30s
	timeout server 30s
frontend tls
	bind $SIP:$HAP_PORT ssl crt $TMP/haproxy.pem ca-file $TMP/ca/ca.pem verify required ssl-min-ver TLSv1.3 no-tls-tickets
	default_backend app
backend app
	server app 127.0.0.1:$APP_PORT
EOF

bench_wait_port tls_bench.sh "$SRV" 127.0.0.1 $APP_PORT

ip netns exec "$SRV" "$BUILD/shuntd" --redirect iptables --workers 2 --log-level warn \
	--mtls.mode strict --mtls.ca-dir "$TMP/ca" --mtls.service-name web \
	--exclude-inbound-ports "22,$HAP_PORT" --exclude-outbound-ports "$APP_PORT" \
	2>"$TMP/shuntd.log" &
PIDS+=($!)
for _ in $(seq 1 100); do
	ip netns exec "$SRV" curl -sf http://127.0.0.1:15003/ready >/dev/null 2>&1 && break
	sleep 0.1
done
ip netns exec "$SRV" curl -sf http://127.0.0.1:15003/ready >/dev/null ||
	{ echo "tls_bench.sh: shuntd not ready" >&2; tail -5 "$TMP/shuntd.log" >&2; exit 1; }

ip netns exec "$SRV" haproxy -f "$TMP/haproxy.cfg" -db >"$TMP/haproxy.log" 2>&1 &
PIDS+=($!)
bench_wait_port tls_bench.sh "$SRV" $SIP $HAP_PORT

# One round against one proxy; sets RESULT (one JSON line). A round without
# a single completed handshake is a broken setup, not a result of 0/s: stop
# with one line saying what happened. Not in a subshell: it waits for the app.
run() { # name port
	local out rc=0
	out=$(ip netns exec "$CLI" "$BUILD/tls_bench" handshake $SIP "$2" "port-$APP_PORT.cluster.local" \
		"$TMP" $CONNS $SECONDS_EACH) || rc=$?
	if ! kill -0 "$APP_PID" 2>/dev/null; then
		local app_rc=0
		wait "$APP_PID" || app_rc=$?
		echo "tls_bench.sh: round $r ($1): the application (tls_bench serve) exited, status $app_rc" >&2
		exit 1
	fi
	if [ "$rc" -ne 0 ]; then
		echo "tls_bench.sh: round $r ($1): failed (tls_bench handshake exit $rc, 0 handshakes counts as failure)" >&2
		exit 1
	fi
	RESULT=$out
}
SHUNT_RUNS=()
HAP_RUNS=()
for r in $(seq 1 $ROUNDS); do
	echo "== round $r: shuntd inbound" >&2
	run shuntd $APP_PORT
	SHUNT_RUNS+=("$RESULT")
	echo "${SHUNT_RUNS[-1]}" >&2
	echo "== round $r: haproxy" >&2
	run haproxy $HAP_PORT
	HAP_RUNS+=("$RESULT")
	echo "${HAP_RUNS[-1]}" >&2
done
METRICS=$(ip netns exec "$SRV" curl -s http://127.0.0.1:15003/metrics)
HS_COUNT=$(awk '/^shunt_tls_handshakes_total\{direction="inbound"\}/ {print $2}' <<<"$METRICS")
# How shuntd's connections ended and why handshakes failed (non-zero only).
ENDS=$(awk '/^(shunt_connections_closed_total|shunt_tls_handshake_failures_total)\{/ && $2 != "0" {printf "%s%s=%s", sep, $1, $2; sep=" "}' <<<"$METRICS")

mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 - "$OUT/tls-$STAMP" "$COMMIT" "$ROUNDS" "$SECONDS_EACH" "$CONNS" "$HS_COUNT" "$ENDS" \
	"$ISSUE_EC" "$ISSUE_RSA" "${#SHUNT_RUNS[@]}" "${SHUNT_RUNS[@]}" "${HAP_RUNS[@]}" <<'PY'
import json, statistics, sys, platform, os
out, commit, rounds, secs, conns, hs, ends = sys.argv[1:8]
ec, rsa = json.loads(sys.argv[8]), json.loads(sys.argv[9])
n = int(sys.argv[10])
runs = [json.loads(x) for x in sys.argv[11:]]
shunt, hap = runs[:n], runs[n:]
def med(rs, key, sub=None):
    v = [r[key][sub] if sub else r[key] for r in rs]
    return statistics.median(v)
res = {
    "what": "full TLS 1.3 handshakes with client certificates (ECDSA P-256), one byte answered by the app, then close; built-in CA issuance",
    "commit": commit, "kernel": platform.release(), "cpus": os.cpu_count(),
    "rounds": int(rounds), "seconds_each": int(secs), "concurrent_handshakes": int(conns),
    "issuance": [ec, rsa],
    "handshakes": {
        "shuntd_inbound": {"runs": shunt, "median_per_s": med(shunt, "per_s"),
                           "median_p50_us": med(shunt, "latency_us", "p50"),
                           "median_p99_us": med(shunt, "latency_us", "p99")},
        "haproxy": {"runs": hap, "median_per_s": med(hap, "per_s"),
                    "median_p50_us": med(hap, "latency_us", "p50"),
                    "median_p99_us": med(hap, "latency_us", "p99")},
    },
    "shuntd_inbound_handshakes_counted": float(hs or 0),
    "shuntd_ends": dict(x.rsplit("=", 1) for x in ends.split()),
}
s, h = res["handshakes"]["shuntd_inbound"], res["handshakes"]["haproxy"]
res["ratio_shuntd_to_haproxy"] = round(s["median_per_s"] / h["median_per_s"], 3) if h["median_per_s"] else None
json.dump(res, open(out + ".json", "w"), indent=1)
errs = sum(r["errors"] for r in shunt), sum(r["errors"] for r in hap)
md = [
    "# mTLS benchmark %s (commit %s, %d CPUs, kernel %s)" % (os.path.basename(out), commit, res["cpus"], res["kernel"]),
    "",
    "Certificate issuance by the built-in CA (key generation included):",
    "",
    "| key type | certificates | total | per certificate: mean | p50 | p99 |",
    "|---|---|---|---|---|---|",
]
for x in (ec, rsa):
    md.append("| %s | %d | %.2f s | %.0f µs | %.0f µs | %.0f µs |" % (
        x["key_type"], x["certificates"], x["total_s"], x["per_cert_us"]["mean"],
        x["per_cert_us"]["p50"], x["per_cert_us"]["p99"]))
md += [
    "",
    "Full TLS 1.3 handshakes with client certificates (ECDSA P-256 keys on all sides), %d at a time, "
    "each answered with one byte by the application behind the proxy; median of %s rounds of %s s:" % (int(conns), rounds, secs),
    "",
    "| terminator | handshakes/s | ratio | latency p50 | p99 | errors |",
    "|---|---|---|---|---|---|",
    "| shuntd inbound (strict, iptables capture) | %.0f | %.2f× | %.0f µs | %.0f µs | %d |" % (
        s["median_per_s"], res["ratio_shuntd_to_haproxy"] or 0, s["median_p50_us"], s["median_p99_us"], errs[0]),
    "| HAProxy 2.6 (OpenSSL, verify required) | %.0f | 1.00× | %.0f µs | %.0f µs | %d |" % (
        h["median_per_s"], h["median_p50_us"], h["median_p99_us"], errs[1]),
    "",
    "The client (BoringSSL, bench/tls_bench.c) shares the machine's CPUs with the proxy.",
    "shuntd's counters after the run (they include the connections each round cuts off "
    "when its time is up; `client_reset`: the client closes without reading the "
    "close_notify): " + ", ".join("%s %s" % (k, v) for k, v in res["shuntd_ends"].items()),
]
open(out + ".md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
print("results: %s.json %s.md" % (out, out), file=sys.stderr)
PY
