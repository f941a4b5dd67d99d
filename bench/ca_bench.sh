#!/bin/bash
# SPDX-License-Identifier: Apache-2.0
# shunt-ca benchmark: certificates issued per second (ECDSA P-256 CSRs)
#  - signing alone: build/ca_bench sign (CSR parse, checks, signature check,
#    signing, PEM), in process;
#  - end to end: build/ca_bench https against shunt-ca over HTTPS, a new TLS
#    1.3 connection per certificate, each request's token checked with
#    TokenReview at the Kubernetes API stand-in (tests/integration/
#    k8s_standin.py, Python: its TokenReview round trip is part of the cost);
#  - sidecar start to first certificate: build/shuntd with the ca source
#    (mtls.ca_address) started N_START times; the time from its exec to its
#    "certificate installed" log line (config, key, CSR, HTTPS, TokenReview,
#    signing, TLS contexts).
#
#   bench/ca_bench.sh [--quick] [--build DIR] [--out DIR]
#
# Everything runs in one network namespace on 127.0.0.1. Each part runs
# ROUNDS times; the report takes the median. Writes bench/results/ca-<UTC
# time>.json and .md (or --out DIR). Needs root. Not run by ctest. KEEP=1
# keeps the temporary directory (logs).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
BUILD=$ROOT/build
OUT=$HERE/results
ROUNDS=3
SECONDS_EACH=10
CONNS=16
N_SIGN=5000
N_START=10
while [ $# -gt 0 ]; do
	case "$1" in
	--quick) ROUNDS=1 SECONDS_EACH=3 N_SIGN=1000 N_START=3 ;;
	--build) BUILD=$2; shift ;;
	--out) OUT=$2; shift ;;
	*) echo "usage: $0 [--quick] [--build DIR] [--out DIR]" >&2; exit 2 ;;
	esac
	shift
done
[ "$(id -u)" = 0 ] || { echo "ca_bench.sh: needs root (network namespace)" >&2; exit 2; }
for b in "$BUILD/shunt-ca" "$BUILD/ca_bench" "$BUILD/shuntd"; do
	[ -x "$b" ] || { echo "ca_bench.sh: $b missing: build first" >&2; exit 2; }
done
for t in openssl curl python3; do
	command -v $t >/dev/null || { echo "ca_bench.sh: $t missing (scripts/bootstrap.sh)" >&2; exit 2; }
done

NS=shunt-cab-$$
TMP=$(mktemp -d /tmp/shunt-cab.XXXXXX)
PIDS=()
cleanup() {
	for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
	for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
	ip netns del "$NS" 2>/dev/null || true
	if [ -n "${KEEP:-}" ]; then echo "kept $TMP" >&2; else rm -rf "$TMP"; fi
}
trap cleanup EXIT INT TERM
ip netns add "$NS"
ip -n "$NS" link set lo up
ip netns exec "$NS" sysctl -qw net.ipv4.ip_local_port_range="1024 65000"
ip netns exec "$NS" sysctl -qw net.ipv4.tcp_tw_reuse=1
inns() { ip netns exec "$NS" "$@"; }

API=16480
CTL=16481
CA=15012
cat >"$TMP/kubeconfig.json" <<EOF
{"apiVersion": "v1", "kind": "Config", "current-context": "b",
 "clusters": [{"name": "s", "cluster": {"server": "http://127.0.0.1:$API"}}],
 "users": [{"name": "u", "user": {"token": "bench-caller"}}],
 "contexts": [{"name": "b", "context": {"cluster": "s", "user": "u"}}]}
EOF
# (started with ip netns exec itself, not the inns function: $! must be the
# process, not a subshell, for the cleanup to stop it)
ip netns exec "$NS" python3 "$ROOT/tests/integration/k8s_standin.py" --listen 127.0.0.1:$API \
	--control 127.0.0.1:$CTL --token bench-caller >"$TMP/standin.out" 2>&1 &
PIDS+=($!)
ip netns exec "$NS" "$BUILD/shunt-ca" --listen 127.0.0.1:$CA --ca-dir "$TMP/ca" --kubeconfig "$TMP/kubeconfig.json" \
	--server-san 127.0.0.1 --rate 1000000 --burst 4096 --workers $CONNS --queue 256 \
	>"$TMP/shunt-ca.out" 2>"$TMP/shunt-ca.log" &
PIDS+=($!)
for _ in $(seq 1 100); do
	inns curl -sk -o "$TMP/bundle.pem" https://127.0.0.1:$CA/v1/bundle 2>/dev/null && \
		inns curl -s -o /dev/null http://127.0.0.1:$CTL/tokenreview 2>/dev/null && break
	sleep 0.1
done
[ -s "$TMP/bundle.pem" ] || { echo "ca_bench.sh: shunt-ca did not start" >&2; tail -5 "$TMP/shunt-ca.log" >&2; exit 1; }
inns curl -sf -X POST http://127.0.0.1:$CTL/token \
	-d '{"namespace":"bench","service_account":"client","audience":"shunt-ca","expires_in":3600}' |
	python3 -c 'import json,sys; print(json.load(sys.stdin)["token"])' >"$TMP/token"
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$TMP/w.key" \
	-out "$TMP/w.csr" -subj /CN=client \
	-addext "subjectAltName=URI:spiffe://cluster.local/ns/bench/sa/client" 2>/dev/null

SIGN_RUNS=()
HTTPS_RUNS=()
for r in $(seq 1 $ROUNDS); do
	echo "== round $r: signing alone ($N_SIGN)" >&2
	SIGN_RUNS+=("$("$BUILD/ca_bench" sign $N_SIGN)")
	echo "${SIGN_RUNS[-1]}" >&2
	echo "== round $r: end to end over HTTPS with TokenReview ($CONNS clients, ${SECONDS_EACH}s)" >&2
	HTTPS_RUNS+=("$(inns "$BUILD/ca_bench" https 127.0.0.1 $CA "$TMP/bundle.pem" "$TMP/token" \
		"$TMP/w.csr" $CONNS $SECONDS_EACH)")
	echo "${HTTPS_RUNS[-1]}" >&2
done
echo "== sidecar start to first certificate ($N_START starts of shuntd, ca source)" >&2
START_RUNS=$(python3 - "$BUILD/shuntd" "$NS" "$TMP" "$CA" "$N_START" <<'PY'
import datetime, json, subprocess, sys, time
shuntd, ns, tmp, port, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
argv = ["ip", "netns", "exec", ns, shuntd, "--redirect", "off", "--workers", "1",
        "--inbound-port", "15901", "--outbound-port", "15902", "--admin-port", "15903",
        "--log-level", "info", "--mtls.ca-address", "https://127.0.0.1:" + port,
        "--mtls.ca-bundle", tmp + "/bundle.pem", "--mtls.ca-token-file", tmp + "/token",
        "--mtls.ca-dir", tmp + "/sidecar-ca-unused"]
ms = []
for _ in range(n):
    t0 = time.time()
    p = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    for line in p.stderr:
        if "certificate installed" in line:
            ts = datetime.datetime.strptime(json.loads(line)["time"], "%Y-%m-%dT%H:%M:%S.%fZ")
            ms.append((ts.replace(tzinfo=datetime.timezone.utc).timestamp() - t0) * 1000)
            break
    p.terminate()
    p.wait()
    if len(ms) < _ + 1:
        sys.exit("ca_bench.sh: shuntd got no certificate from shunt-ca")
print(json.dumps({"starts": n, "ms": [round(x, 1) for x in ms]}))
PY
)
echo "$START_RUNS" >&2
TR_STATS=$(inns curl -s http://127.0.0.1:$CTL/tokenreview)

mkdir -p "$OUT"
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
COMMIT=$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)
python3 - "$OUT/ca-$STAMP" "$COMMIT" "$ROUNDS" "$SECONDS_EACH" "$CONNS" "$TR_STATS" \
	"$START_RUNS" "${#SIGN_RUNS[@]}" "${SIGN_RUNS[@]}" "${HTTPS_RUNS[@]}" <<'PY'
import json, os, platform, statistics, sys
out, commit, rounds, secs, conns, tr, start = sys.argv[1:8]
n = int(sys.argv[8])
runs = [json.loads(x) for x in sys.argv[9:]]
start = json.loads(start)
sign, https = runs[:n], runs[n:]
med = lambda rs, f: statistics.median(f(r) for r in rs)  # noqa: E731
res = {
    "what": "shunt-ca certificates per second, ECDSA P-256 CSRs: signing alone, and end to end "
            "(new TLS 1.3 connection, TokenReview at the API stand-in, signing) per certificate",
    "commit": commit, "kernel": platform.release(), "cpus": os.cpu_count(),
    "rounds": int(rounds), "seconds_each": int(secs), "clients": int(conns),
    "sign": {"runs": sign, "median_per_s": med(sign, lambda r: r["per_s"]),
             "median_p50_us": med(sign, lambda r: r["latency_us"]["p50"])},
    "https": {"runs": https, "median_per_s": med(https, lambda r: r["per_s"]),
              "median_p50_ms": med(https, lambda r: r["latency_ms"]["p50"]),
              "median_p99_ms": med(https, lambda r: r["latency_ms"]["p99"])},
    "sidecar_start": dict(start, median_ms=statistics.median(start["ms"]), max_ms=max(start["ms"])),
    "tokenreview_standin": json.loads(tr),
}
with open(out + ".json", "w") as f:
    json.dump(res, f, indent=2)
s, h, st = res["sign"], res["https"], res["sidecar_start"]
md = """# shunt-ca benchmark %s

commit %s, kernel %s, %d CPUs; median of %d rounds.

| part | certificates/s | latency |
|---|---|---|
| signing alone (parse, check, verify, sign, PEM) | %.0f | p50 %.0f us |
| end to end over HTTPS with TokenReview (%d clients, %d s) | %.0f | p50 %.1f ms, p99 %.1f ms |
| sidecar start to first certificate (shuntd, ca source, %d starts) | — | median %.1f ms, max %.1f ms |

The end-to-end figure includes a Python stand-in's TokenReview per
certificate and a full TLS 1.3 handshake per certificate (a sidecar asks
once per rotation, so a connection is not reused).
""" % (os.path.basename(out), commit, res["kernel"], res["cpus"], res["rounds"],
       s["median_per_s"], s["median_p50_us"], res["clients"], res["seconds_each"],
       h["median_per_s"], h["median_p50_ms"], h["median_p99_ms"],
       st["starts"], st["median_ms"], st["max_ms"])
with open(out + ".md", "w") as f:
    f.write(md)
print(md)
print("written: %s.json %s.md" % (out, out))
PY
