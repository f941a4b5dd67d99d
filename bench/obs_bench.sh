#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Observability overhead (issue 18): HTTP/1.1 requests/s and p99 through two
# sidecars (client shuntd -> mTLS -> server shuntd -> nginx) with each
# observability feature on, and all of them, reported as ratios to the
# baseline "off" (every feature off), with the direct path (no shuntd) for
# scale. Each feature is on on both sidecars:
#
#   direct      wrk straight to nginx, no shuntd
#   off         metrics.requests off, access_log.enabled off, tracing off, no tap
#   metrics     metrics.requests on (request metrics and their histogram)
#   tracing     tracing on, sampling 1: a span per request on each side,
#               exported to a collector in each namespace (nginx answering
#               200 {} on 127.0.0.1:4318)
#   tracing-unsampled  tracing on, sampling 0: headers read and rewritten, no span
#   access-log  access_log.enabled on: one JSON access line per request
#   tap         a tap attached (GET /tap filtering on a path no request has:
#               every request is copied to the ring, none shown)
#   all         metrics, tracing sampled and the access log together
#
#   bench/obs_bench.sh [--quick] [--rounds N] [--seconds S] [--modes LIST]
#                      [--build DIR] [--out DIR]
#
# Two network namespaces joined by a veth pair: wrk (keep-alive, 16
# connections, 2 threads, --latency) in the client one, whose shuntd
# (iptables capture, file registry: the service "web" at a virtual IP, port
# declared HTTP, strict mTLS) proxies request by request to the server one's
# shuntd (inbound capture, strict mTLS), which hands them to nginx serving a
# 128-byte file. Both shuntds: 2 workers, the same built-in CA. Each mode
# runs ROUNDS times (the modes interleaved), SECONDS each after a 1 s warm-up
# on fresh shuntds; the report takes the median.
#
# --quick: 1 round of 3 s (--rounds, --seconds: other counts). Writes OUT/obs-<UTC time>.{json,md} (OUT:
# bench/results) and prints the table. Needs root; removes its namespaces,
# processes and files on exit, Ctrl-C or SIGTERM. KEEP=1 keeps the temporary
# directory (logs).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"
ROOT=$(dirname "$HERE")
BUILD=${SHUNT_BUILD:-$ROOT/build}
OUT=$HERE/results
ROUNDS=3
SECONDS_EACH=10
ALL_MODES="direct,off,metrics,tracing,tracing-unsampled,access-log,tap,all"
MODES=$ALL_MODES
usage() { sed -n '2,40p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
	case "$1" in
	--quick) ROUNDS=1 SECONDS_EACH=3 ;;
	--modes | --build | --out | --rounds | --seconds)
		[ $# -ge 2 ] || { echo "obs_bench.sh: $1 needs a value" >&2; exit 2; }
		case "$1" in
		--modes) MODES=$2 ;;
		--rounds) ROUNDS=$2 ;;
		--seconds) SECONDS_EACH=$2 ;;
		--build) BUILD=$2 ;;
		--out) OUT=$2 ;;
		esac
		shift
		;;
	-h | --help) usage; exit 0 ;;
	*) echo "obs_bench.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
	esac
	shift
done
for m in ${MODES//,/ }; do
	[[ ",$ALL_MODES," == *",$m,"* ]] || { echo "obs_bench.sh: unknown mode '$m' (${ALL_MODES//,/, })" >&2; exit 2; }
done
[[ ",$MODES," == *",off,"* ]] || { echo "obs_bench.sh: --modes must include off (the baseline)" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ && "$SECONDS_EACH" =~ ^[1-9][0-9]*$ ]] ||
	{ echo "obs_bench.sh: --rounds and --seconds take a positive integer" >&2; exit 2; }
[ "$(id -u)" = 0 ] || { echo "obs_bench.sh: needs root (network namespaces, iptables)" >&2; exit 2; }
missing=()
for cmd in ip iptables nginx wrk curl python3; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
[ ${#missing[@]} -eq 0 ] || { echo "obs_bench.sh: missing: ${missing[*]} (scripts/bootstrap.sh installs them)" >&2; exit 2; }
[ -x "$BUILD/shuntd" ] || { echo "obs_bench.sh: $BUILD/shuntd missing: build first (or --build DIR)" >&2; exit 2; }
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

TAG=$$
CLI=shunt-obsb-c$TAG
SRV=shunt-obsb-s$TAG
CIP=10.99.0.1
SIP=10.99.0.2
VIP=10.96.99.1
APP_PORT=8080
SHUNTD_UID=4242 # nothing runs as it: wrk (root) is captured, shuntd is not
TMP=$(mktemp -d /tmp/shunt-obsb.XXXXXX)
chmod 755 "$TMP"
PIDS=()
SHUNTD_PIDS=()
cleanup() {
	for p in "${SHUNTD_PIDS[@]}" "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${SHUNTD_PIDS[@]}" "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	ip netns del "$CLI" 2>/dev/null || true
	ip netns del "$SRV" 2>/dev/null || true
	if [ -n "${KEEP:-}" ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bench_netns_pair "$CLI" "$SRV" $CIP $SIP ob-srv ob-cli
ip -n "$CLI" route add 10.96.99.0/24 dev ob-srv


# nginx: the origin of bench/run.sh, a 128-byte file.
mkdir -p "$TMP/www"
head -c 128 /dev/zero | tr '\0' x >"$TMP/www/128.bin"
sed -e "s|@WORK@|$TMP|g" -e "s|@SERVER@|$SIP|g" "$HERE/nginx-origin.conf" >"$TMP/nginx.conf"
ip netns exec "$SRV" nginx -c "$TMP/nginx.conf" >"$TMP/nginx.out" 2>&1 &
PIDS+=($!)
bench_wait_port obs_bench.sh "$SRV" $SIP $APP_PORT

# The trace collectors: one per namespace on 127.0.0.1:4318 (shuntd's
# default tracing.endpoint), an nginx that reads each OTLP/HTTP export and
# answers 200 {} (an empty ExportTraceServiceResponse).
for ns in "$CLI" "$SRV"; do
	ip -n "$ns" link set lo up
	cat >"$TMP/otlp-$ns.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/otlp-$ns.pid;
error_log $TMP/otlp-$ns.err error;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $TMP/otlp-$ns-body;
    client_max_body_size 64m;
    client_body_buffer_size 4m;
    server {
        listen 127.0.0.1:4318;
        location = /v1/traces { default_type application/json; return 200 '{}'; }
    }
}
EOF
	ip netns exec "$ns" nginx -c "$TMP/otlp-$ns.conf" >"$TMP/otlp-$ns.out" 2>&1 &
	PIDS+=($!)
	bench_wait_port obs_bench.sh "$ns" 127.0.0.1 4318
done

cat >"$TMP/registry.json" <<EOF
{"services": [{"name": "web", "namespace": "default", "addresses": ["$VIP"],
  "ports": [{"name": "http", "port": 80, "target_port": $APP_PORT, "protocol": "HTTP"}],
  "identity": "spiffe://cluster.local/ns/default/sa/web", "mtls": "strict",
  "endpoints": [{"address": "$SIP", "port": $APP_PORT}]}]}
EOF
chmod 644 "$TMP/registry.json"

shuntd_ready() { # ns log
	for _ in $(seq 1 100); do
		ip netns exec "$1" curl -sf http://127.0.0.1:15003/ready >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	echo "obs_bench.sh: shuntd in $1 not ready" >&2
	tail -5 "$2" >&2
	exit 1
}

# Both shuntds with the mode's flags; the client side creates the CA first.
start_shuntds() { # mode
	local metrics=off alog=off tracing=(--tracing.enabled off)
	case "$1" in
	metrics) metrics=on ;;
	access-log) alog=on ;;
	tracing) tracing=(--tracing.enabled on --tracing.sampling 1) ;;
	tracing-unsampled) tracing=(--tracing.enabled on --tracing.sampling 0) ;;
	all) metrics=on alog=on tracing=(--tracing.enabled on --tracing.sampling 1) ;;
	esac
	local common=(--redirect iptables --workers 2 --log-level warn --access-log.enabled "$alog"
		--metrics.requests "$metrics" "${tracing[@]}" --proxy-uid "$SHUNTD_UID"
		--drain-timeout 1s --mtls.ca-dir "$TMP/ca" --mtls.key-type ecdsa-p256)
	ip netns exec "$CLI" "$BUILD/shuntd" "${common[@]}" --mtls.service-name client \
		--service-discovery.file.path "$TMP/registry.json" >"$TMP/client-$1.log" 2>&1 &
	SHUNTD_PIDS+=($!)
	shuntd_ready "$CLI" "$TMP/client-$1.log"
	ip netns exec "$SRV" "$BUILD/shuntd" "${common[@]}" --mtls.service-name web --mtls.mode strict \
		>"$TMP/server-$1.log" 2>&1 &
	SHUNTD_PIDS+=($!)
	shuntd_ready "$SRV" "$TMP/server-$1.log"
	if [ "$1" = tap ]; then
		for ns in "$CLI" "$SRV"; do
			ip netns exec "$ns" curl -sN "http://127.0.0.1:15003/tap?path=/no-request-has-this&seconds=600" \
				>"$TMP/tap-$ns.out" 2>&1 &
			SHUNTD_PIDS+=($!)
			for _ in $(seq 1 100); do
				grep -q '"tap"' "$TMP/tap-$ns.out" 2>/dev/null && break
				sleep 0.1
			done
			grep -q '"tap"' "$TMP/tap-$ns.out" || { echo "obs_bench.sh: the tap did not attach in $ns:" >&2; cat "$TMP/tap-$ns.out" >&2; exit 1; }
		done
	fi
}

stop_shuntds() {
	for p in "${SHUNTD_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${SHUNTD_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	SHUNTD_PIDS=()
}

# One round of one mode: sets RESULT to "requests_per_s p99_ms errors
# proxied tap_ring_drops spans_exported spans_dropped".
run() { # mode
	local url="http://$VIP/128.bin"
	if [ "$1" = direct ]; then
		url="http://$SIP:$APP_PORT/128.bin"
	else
		start_shuntds "$1"
	fi
	ip netns exec "$CLI" wrk -t2 -c16 -d1s "$url" >/dev/null
	local out
	out=$(ip netns exec "$CLI" wrk -t2 -c16 -d"${SECONDS_EACH}s" --latency "$url")
	# What the client side's shuntd proxied (it must be all of wrk's
	# requests: shunt_http_requests_total counts whatever metrics.requests
	# says), what a tap's rings dropped, and the spans both sides exported
	# and dropped once the last batch is out (a sampled mode must export).
	local proxied=0 dropped=0 exported=0 sdropped=0
	if [ "$1" != direct ]; then
		local m ns
		m=$(ip netns exec "$CLI" curl -s http://127.0.0.1:15003/metrics)
		proxied=$(awk '/^shunt_http_requests_total\{/ {n+=$NF} END {printf "%d", n}' <<<"$m")
		dropped=$(awk '/^shunt_tap_dropped_total\{reason="ring"\}/ {printf "%d", $NF}' <<<"$m")
		if [ "$1" = tracing ] || [ "$1" = all ]; then
			sleep 2 # tracing.flush_interval (1 s): the last partial batch
		fi
		for ns in "$CLI" "$SRV"; do
			m=$(ip netns exec "$ns" curl -s http://127.0.0.1:15003/metrics)
			exported=$((exported + $(awk '/^shunt_trace_spans_exported_total / {n+=$NF} END {printf "%d", n}' <<<"$m")))
			sdropped=$((sdropped + $(awk '/^shunt_trace_spans_dropped_total\{/ {n+=$NF} END {printf "%d", n}' <<<"$m")))
		done
		stop_shuntds
	fi
	local rps p99 errs
	rps=$(awk '/^Requests\/sec:/ {print $2}' <<<"$out")
	p99=$(awk '$1 == "99%" {v=$2; if (v ~ /us$/) {sub(/us$/, "", v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/, "", v)} else if (v ~ /s$/) {sub(/s$/, "", v); v*=1000}; print v}' <<<"$out")
	errs=$(awk '/Non-2xx or 3xx responses:/ {n+=$NF} /Socket errors:/ {gsub(/,/, ""); n+=$4+$6+$8+$10} END {print n+0}' <<<"$out")
	if [ -z "$rps" ] || [ -z "$p99" ]; then
		echo "obs_bench.sh: $1: wrk gave no result:" >&2
		echo "$out" >&2
		exit 1
	fi
	local total
	total=$(awk '/ requests in / {print $1}' <<<"$out")
	if [ "$1" != direct ] && [ "$proxied" -lt "${total:-0}" ]; then
		echo "obs_bench.sh: $1: the client shuntd proxied $proxied requests, wrk made $total: traffic went around it" >&2
		exit 1
	fi
	if { [ "$1" = tracing ] || [ "$1" = all ]; } && [ "$exported" -eq 0 ]; then
		echo "obs_bench.sh: $1: no span was exported (collector: $TMP/otlp-*.err)" >&2
		exit 1
	fi
	RESULT="$rps $p99 $errs $proxied ${dropped:-0} $exported $sdropped"
}

RUNS=()
for r in $(seq 1 "$ROUNDS"); do
	for m in ${MODES//,/ }; do
		echo "== round $r: $m" >&2
		run "$m"
		echo "   requests/s, p99 ms, errors, proxied by the client shuntd, tap ring drops," \
			"spans exported, spans dropped: $RESULT" >&2
		RUNS+=("$m $RESULT")
	done
done

mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
COMMIT=$(git -C "$ROOT" describe --tags --always --dirty 2>/dev/null || echo unknown)
python3 - "$OUT/obs-$STAMP" "$COMMIT" "$ROUNDS" "$SECONDS_EACH" "$MODES" "${RUNS[@]}" <<'PY'
import json, os, platform, statistics, sys
out, commit, rounds, secs, modes = sys.argv[1:6]
modes = modes.split(",")
runs = {m: [] for m in modes}
for line in sys.argv[6:]:
    m, rps, p99, errs, proxied, dropped, exported, sdropped = line.split()
    runs[m].append({"requests_per_s": float(rps), "p99_ms": float(p99), "errors": int(errs),
                    "proxied": int(proxied), "tap_ring_dropped": int(dropped),
                    "spans_exported": int(exported), "spans_dropped": int(sdropped)})
res = {"what": "HTTP/1.1 keep-alive, 128-byte responses, wrk -t2 -c16, through two shuntds "
               "(strict mTLS, request-level proxying on both sides)",
       "commit": commit, "kernel": platform.release(), "cpus": os.cpu_count(),
       "rounds": int(rounds), "seconds_each": int(secs), "baseline": "off", "modes": {}}
for m in modes:
    r = runs[m]
    res["modes"][m] = {"runs": r, "median_requests_per_s": statistics.median(x["requests_per_s"] for x in r),
                       "median_p99_ms": statistics.median(x["p99_ms"] for x in r),
                       "errors": sum(x["errors"] for x in r),
                       "tap_ring_dropped": sum(x["tap_ring_dropped"] for x in r),
                       "spans_exported": sum(x["spans_exported"] for x in r),
                       "spans_dropped": sum(x["spans_dropped"] for x in r)}
base = res["modes"]["off"]
for m in modes:
    x = res["modes"][m]
    x["requests_per_s_ratio"] = round(x["median_requests_per_s"] / base["median_requests_per_s"], 3)
    x["p99_ratio"] = round(x["median_p99_ms"] / base["median_p99_ms"], 3) if base["median_p99_ms"] else None
json.dump(res, open(out + ".json", "w"), indent=1)
md = ["# Observability overhead %s (commit %s, %d CPUs, kernel %s)" % (
          os.path.basename(out), commit, res["cpus"], res["kernel"]), "",
      res["what"] + "; median of %s rounds of %s s. Ratios to `off` (every observability "
      "feature off; `direct` is nginx without shuntd, for scale). Spans: exported and dropped "
      "by both sides, all rounds." % (rounds, secs), "",
      "| mode | requests/s | ratio | p99 | ratio | errors | tap ring drops | spans exported | spans dropped |",
      "|---|---|---|---|---|---|---|---|---|"]
for m in modes:
    x = res["modes"][m]
    md.append("| %s | %.0f | %.2f | %.2f ms | %.2f | %d | %d | %d | %d |" % (
        m, x["median_requests_per_s"], x["requests_per_s_ratio"], x["median_p99_ms"],
        x["p99_ratio"] or 0, x["errors"], x["tap_ring_dropped"], x["spans_exported"],
        x["spans_dropped"]))
open(out + ".md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
print("\nwritten: %s.json, %s.md" % (out, out))
PY
