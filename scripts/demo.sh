#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# shunt demo: two pods (network namespaces joined by a veth pair), shuntd in
# each with iptables capture, an unmodified curl in pod A calling an
# unmodified HTTP server in pod B. The request passes A's outbound capture
# and B's inbound capture; shuntctl shows the connection and the rules.
# Everything the demo creates is removed on exit, also on failure or Ctrl-C.
#
#   ./scripts/demo.sh            (as root; installs packages and builds first)
#   SHUNT_DEMO_NOBUILD=1 BUILD=build-x ./scripts/demo.sh   (use an existing build)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=${BUILD:-build}
case "$BUILD" in /*) ;; *) BUILD="$ROOT/$BUILD" ;; esac

if [ "$(id -u)" -ne 0 ]; then
	echo "demo: needs root (network namespaces and iptables)" >&2
	exit 1
fi

bold=$(printf '\033[1m') dim=$(printf '\033[2m') off=$(printf '\033[0m')
[ -t 1 ] || { bold=; dim=; off=; }
heading() { printf '\n%s== %s ==%s\n' "$bold" "$*" "$off"; }
note() { printf '%s%s%s\n' "$dim" "$*" "$off"; }
# Runs a command in a pod, echoing it first.
show() {
	local pod=$1
	shift
	printf '%s[%s]$' "$dim" "$pod"
	printf ' %q' "$@"
	printf '%s\n' "$off"
	ip netns exec "$(ns "$pod")" "$@"
}

# ---- install and build --------------------------------------------------------
if [ -z "${SHUNT_DEMO_NOBUILD:-}" ]; then
	heading "Install packages (scripts/bootstrap.sh)"
	"$ROOT/scripts/bootstrap.sh"
	note "all packages present"
	heading "Build"
	cmake -S "$ROOT" -B "$BUILD" >/dev/null
	cmake --build "$BUILD" -j2 2>&1 | tail -n 1
fi
SHUNTD="$BUILD/shuntd"
SHUNTCTL="$BUILD/shuntctl"
PEERS="$ROOT/tests/integration/peers.py"
for f in "$SHUNTD" "$SHUNTCTL"; do
	[ -x "$f" ] || { echo "demo: $f not built" >&2; exit 1; }
done

# ---- pods ----------------------------------------------------------------------
NS_A="shunt-demo-$$-a"
NS_B="shunt-demo-$$-b"
A4=10.88.0.1 B4=10.88.0.2 A6=fd88::1 B6=fd88::2
ns() { [ "$1" = A ] && echo "$NS_A" || echo "$NS_B"; }
TMP=$(mktemp -d /tmp/shunt-demo.XXXXXX)
PIDS=()

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	set +e
	# shuntd first (SIGTERM: drain, remove rules, exit), then the rest.
	for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
	for _ in $(seq 50); do
		local alive=0
		for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
		[ $alive -eq 0 ] && break
		sleep 0.1
	done
	for pid in "${PIDS[@]}"; do kill -KILL "$pid" 2>/dev/null; done
	for n in "$NS_A" "$NS_B"; do
		ip netns del "$n" 2>/dev/null
	done
	if [ $rc -ne 0 ]; then
		echo "demo: failed (exit $rc); last shuntd log lines:" >&2
		tail -n 15 "$TMP"/shuntd-*.log >&2 2>/dev/null
	fi
	rm -rf "$TMP"
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

heading "Two pods: $NS_A ($A4, $A6) <-veth-> $NS_B ($B4, $B6)"
ip netns add "$NS_A"
ip netns add "$NS_B"
ip -n "$NS_A" link add eth0 type veth peer name eth0 netns "$NS_B"
for side in "A $A4 $A6" "B $B4 $B6"; do
	read -r pod a4 a6 <<<"$side"
	n=$(ns "$pod")
	ip -n "$n" link set lo up
	ip netns exec "$n" sysctl -qw net.ipv6.conf.all.disable_ipv6=0
	ip -n "$n" addr add "$a4/24" dev eth0
	ip -n "$n" -6 addr add "$a6/64" dev eth0 nodad
	ip -n "$n" link set eth0 up
done
ip -n "$NS_A" -br addr show dev eth0
ip -n "$NS_B" -br addr show dev eth0

heading "Pod B: an HTTP server on :8080 (knows nothing about shunt)"
ip netns exec "$NS_B" python3 "$PEERS" http --name pod-b-app --listen 0.0.0.0:8080 \
	--listen "[::]:8080" --lifetime 300 >"$TMP/server.out" 2>"$TMP/server.err" &
PIDS+=($!)

heading "shuntd in each pod (--redirect iptables), one mesh CA"
note "pod A knows service 'reviews' ($B4:8080, identity spiffe://cluster.local/ns/default/sa/reviews)"
note "from a file registry; both pods share the built-in CA in $TMP/ca"
cat >"$TMP/registry.json" <<JSON
{"services": [{"name": "reviews", "namespace": "default", "addresses": ["$B4"],
  "ports": [{"name": "http", "port": 8080, "target_port": 8080, "protocol": "HTTP"}],
  "identity": "spiffe://cluster.local/ns/default/sa/reviews",
  "endpoints": [{"address": "$B4", "port": 8080}]}]}
JSON
wait_ready() { # $1 = A or B
	local p=$1 ok=
	for _ in $(seq 100); do
		if ip netns exec "$(ns "$p")" curl -sf -o /dev/null --max-time 1 http://127.0.0.1:15003/ready; then
			ok=1
			break
		fi
		sleep 0.1
	done
	if [ -z "$ok" ]; then
		echo "demo: shuntd in pod $p did not become ready:" >&2
		tail -n 20 "$TMP/shuntd-$(echo "$p" | tr AB ab).log" >&2
		exit 1
	fi
	note "pod $p: shuntd ready"
}
ip netns exec "$NS_A" "$SHUNTD" --redirect iptables --workers 2 --mtls.ca-dir "$TMP/ca" \
	--mtls.service-name productpage --service-discovery.file.path "$TMP/registry.json" \
	2>"$TMP/shuntd-a.log" &
PIDS+=($!)
wait_ready A # A creates the CA; B then shares it
ip netns exec "$NS_B" "$SHUNTD" --redirect iptables --workers 2 --mtls.ca-dir "$TMP/ca" \
	--mtls.service-name reviews 2>"$TMP/shuntd-b.log" &
PIDS+=($!)
wait_ready B
for _ in $(seq 50); do grep -q READY "$TMP/server.out" && break; sleep 0.1; done

heading "Pod A's app: curl http://$B4:8080/hello (service reviews: mutual TLS between the pods)"
note "A OUTPUT -> A shuntd :15002 -> TLS 1.3 -> $B4:8080 -> B PREROUTING -> B shuntd :15001 -> server"
show A curl -sS --max-time 10 -H 'Host: reviews.demo' "http://$B4:8080/hello"
note "(the server saw Host and path unchanged; peer is pod B's shuntd, which delivered it)"

heading "Same over IPv6: curl http://[$B6]:8080/hello6 (not in the registry: plain passthrough)"
show A curl -sS --max-time 10 -g "http://[$B6]:8080/hello6"

heading "A connection while it is open (a request the server answers after 3 s)"
ip netns exec "$NS_A" curl -sS --max-time 10 -o "$TMP/slow.out" "http://$B4:8080/slow/3000" &
CURL=$!
sleep 1
show A "$SHUNTCTL" conns
show B "$SHUNTCTL" conns
wait "$CURL"
note "slow response: $(cat "$TMP/slow.out")"

for p in A B; do
	heading "shuntctl rules (pod $p)"
	show $p "$SHUNTCTL" rules
done
for p in A B; do
	heading "shuntctl status (pod $p)"
	show $p "$SHUNTCTL" status
done

heading "Certificates: pod B's identity and the handshakes both sides counted"
show B "$SHUNTCTL" certs
for p in A B; do
	note "pod $p: $(ip netns exec "$(ns $p)" curl -s http://127.0.0.1:15003/metrics |
		grep -E '^shunt_tls_handshakes_total' | tr '\n' ' ')"
done

heading "Access logs (one JSON line per HTTP request or TCP connection)"
for p in a b; do
	note "pod ${p^^}:"
	grep '"component":"access"' "$TMP/shuntd-$p.log" || true
done

heading "Tear down"
for pid in "${PIDS[@]:1}"; do kill -TERM "$pid"; done
for pid in "${PIDS[@]:1}"; do
	rc=0
	wait "$pid" || rc=$?
	note "shuntd pid $pid exited $rc"
done
PIDS=("${PIDS[0]}")
for p in A B; do
	left=$(ip netns exec "$(ns $p)" iptables-save -t nat | grep -c SIDECAR_PROXY || true)
	note "pod $p: $left SIDECAR_PROXY rules left after SIGTERM"
done
note "deleting the namespaces; the machine is as it was"
