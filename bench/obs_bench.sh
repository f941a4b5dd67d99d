#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# Observability overhead (issue 18): HTTP/1.1 requests/s and p99 through two
# sidecars (client shuntd -> mTLS -> server shuntd -> nginx) with the
# observability features in each configuration, reported as ratios to the
# baseline "metrics" (request metrics are always on in shuntd), with the
# direct path (no shuntd) for scale:
#
#   direct      wrk straight to nginx, no shuntd
#   metrics     both shuntds, access_log.enabled off, no tap
#   access-log  access_log.enabled on: one JSON access line per request on both sides
#   tap         a tap attached on both sides (GET /tap filtering on a path no
#               request has: every request is copied to the ring, none shown)
#
#   bench/obs_bench.sh [--quick] [--modes LIST] [--build DIR] [--out DIR]
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
# --quick: 1 round of 3 s. Writes OUT/obs-<UTC time>.{json,md} (OUT:
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
MODES="direct,metrics,access-log,tap"
usage() { sed -n '2,31p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
	case "$1" in
	--quick) ROUNDS=1 SECONDS_EACH=3 ;;
	--modes | --build | --out)
		[ $# -ge 2 ] || { echo "obs_bench.sh: $1 needs a value" >&2; exit 2; }
		case "$1" in
		--modes) MODES=$2 ;;
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
	case "$m" in
	direct | metrics | access-log | tap) ;;
	*) echo "obs_bench.sh: unknown mode '$m' (direct, metrics, access-log, tap)" >&2; exit 2 ;;
	esac
done
[[ ",$MODES," == *",metrics,"* ]] || { echo "obs_bench.sh: --modes must include metrics (the baseline)" >&2; exit 2; }
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
	local level=warn alog=off
	[ "$1" = access-log ] && alog=on
	local common=(--redirect iptables --workers 2 --log-level "$level" --access-log.enabled "$alog"
		--proxy-uid $SHUNTD_UID
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

# One round of one mode: sets RESULT to "requests_per_s p99_ms errors".
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
	# requests) and, with a tap, what its rings dropped.
	local proxied=0 dropped=0
	if [ "$1" != direct ]; then
		local m
		m=$(ip netns exec "$CLI" curl -s http://127.0.0.1:15003/metrics)
		proxied=$(awk '/^shunt_requests_total\{/ && /direction="outbound"/ {n+=$NF} END {printf "%d", n}' <<<"$m")
		dropped=$(awk '/^shunt_tap_dropped_total\{reason="ring"\}/ {printf "%d", $NF}' <<<"$m")
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
	RESULT="$rps $p99 $errs $proxied ${dropped:-0}"
}

RUNS=()
for r in $(seq 1 $ROUNDS); do
	for m in ${MODES//,/ }; do
		echo "== round $r: $m" >&2
		run "$m"
		echo "   requests/s, p99 ms, errors, proxied by the client shuntd, tap ring drops: $RESULT" >&2
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
    m, rps, p99, errs, proxied, dropped = line.split()
    runs[m].append({"requests_per_s": float(rps), "p99_ms": float(p99), "errors": int(errs),
                    "proxied": int(proxied), "tap_ring_dropped": int(dropped)})
res = {"what": "HTTP/1.1 keep-alive, 128-byte responses, wrk -t2 -c16, through two shuntds "
               "(strict mTLS, request-level proxying on both sides)",
       "commit": commit, "kernel": platform.release(), "cpus": os.cpu_count(),
       "rounds": int(rounds), "seconds_each": int(secs), "baseline": "metrics", "modes": {}}
for m in modes:
    r = runs[m]
    res["modes"][m] = {"runs": r, "median_requests_per_s": statistics.median(x["requests_per_s"] for x in r),
                       "median_p99_ms": statistics.median(x["p99_ms"] for x in r),
                       "errors": sum(x["errors"] for x in r),
                       "tap_ring_dropped": sum(x["tap_ring_dropped"] for x in r)}
base = res["modes"]["metrics"]
for m in modes:
    x = res["modes"][m]
    x["requests_per_s_ratio"] = round(x["median_requests_per_s"] / base["median_requests_per_s"], 3)
    x["p99_ratio"] = round(x["median_p99_ms"] / base["median_p99_ms"], 3) if base["median_p99_ms"] else None
json.dump(res, open(out + ".json", "w"), indent=1)
md = ["# Observability overhead %s (commit %s, %d CPUs, kernel %s)" % (
          os.path.basename(out), commit, res["cpus"], res["kernel"]), "",
      res["what"] + "; median of %s rounds of %s s. Ratios to `metrics` (request metrics are "
      "always on in shuntd; `direct` is nginx without shuntd, for scale)." % (rounds, secs), "",
      "| mode | requests/s | ratio | p99 | ratio | errors | tap ring drops |",
      "|---|---|---|---|---|---|---|"]
for m in modes:
    x = res["modes"][m]
    md.append("| %s | %.0f | %.2f | %.2f ms | %.2f | %d | %d |" % (
        m, x["median_requests_per_s"], x["requests_per_s_ratio"], x["median_p99_ms"],
        x["p99_ratio"] or 0, x["errors"], x["tap_ring_dropped"]))
open(out + ".md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
print("\nwritten: %s.json, %s.md" % (out, out))
PY
