#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Side-by-side benchmarks: shunt against the direct path, HAProxy and nginx.
#
#   bench/run.sh [--quick] [--scenario NAME[,NAME]] [--contenders a,b] [--reps N]
#                [--build DIR] [--out DIR] [--profile] [--tls]
#
# --tls also runs bench/tls_bench.sh (certificate issuance and full TLS 1.3
# client-certificate handshakes into shuntd's inbound side next to HAProxy)
# after the scenarios, into the same OUT, and links its report.
#
# Writes OUT/<timestamp>.json (raw values per repetition), OUT/<timestamp>.md
# (tables: median, spread, ratio to direct and to the best peer) and
# OUT/<timestamp>-*.png (gnuplot charts). OUT defaults to bench/results.
#
# Needs root (network namespaces, iptables). Creates two namespaces
# (shunt-b-<pid>-cli, shunt-b-<pid>-srv) joined by a veth pair; everything it
# starts runs inside them and is stopped on exit (trap), also on Ctrl-C.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT="$HERE/results"
BUILD="${SHUNT_BUILD:-}"
PASS=()
TLS=
BUILD_ARG=
usage() {
	sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
	echo "scenarios: rr-64 rr-4k bulk-1 bulk-8 http-keepalive http-close conn-setup idle-10k mtls-handshake mtls-keepalive"
	echo "           cost-rr cost-http cost-conn (counted, not timed; only when named: instructions"
	echo "           under callgrind and system calls under strace per request)"
	echo "contenders: direct shunt-iptables shunt-ebpf shunt-splice shunt-relay shunt-http haproxy-tcp haproxy-http nginx-stream nginx-http shunt-mtls haproxy-mtls"
}
while [ $# -gt 0 ]; do
	case "$1" in
	--quick | --profile) PASS+=("$1") ;;
	--tls) TLS=1 ;;
	--scenario | --contenders | --reps)
		[ $# -ge 2 ] || { echo "run.sh: $1 needs a value" >&2; exit 2; }
		PASS+=("$1" "$2")
		shift
		;;
	--build)
		[ $# -ge 2 ] || { echo "run.sh: --build needs a directory" >&2; exit 2; }
		BUILD=$2
		BUILD_ARG=$2
		shift
		;;
	--out)
		[ $# -ge 2 ] || { echo "run.sh: --out needs a directory" >&2; exit 2; }
		OUT=$2
		shift
		;;
	-h | --help)
		usage
		exit 0
		;;
	*)
		echo "run.sh: unknown argument '$1'" >&2
		usage >&2
		exit 2
		;;
	esac
	shift
done

if [ "$(id -u)" -ne 0 ]; then
	echo "run.sh: needs root (network namespaces, iptables)" >&2
	exit 1
fi
missing=()
for cmd in ip iptables cc python3 haproxy nginx wrk iperf3 curl ss gnuplot; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "run.sh: missing commands: ${missing[*]} (scripts/bootstrap.sh installs them)" >&2
	exit 1
fi

# A release build of shuntd: the one given, or bench's own (RelWithDebInfo,
# no sanitizers: a sanitized daemon would measure the sanitizer).
if [ -z "$BUILD" ]; then
	BUILD="$ROOT/build-bench"
	if [ ! -x "$BUILD/shuntd" ] || [ -n "$(find "$ROOT/userspace" "$ROOT/CMakeLists.txt" -newer "$BUILD/shuntd" -print -quit)" ]; then
		echo "run.sh: building shuntd in $BUILD" >&2
		cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHUNT_SANITIZE=OFF >/dev/null
		cmake --build "$BUILD" -j2 --target shuntd >/dev/null
	fi
	if [ -n "$TLS" ] && [ ! -x "$BUILD/tls_bench" ]; then
		cmake --build "$BUILD" -j2 --target tls_bench >/dev/null
	fi
fi
if [ -n "$TLS" ] && [ ! -x "$BUILD/tls_bench" ]; then
	echo "run.sh: --tls needs $BUILD/tls_bench (cmake --build $BUILD --target tls_bench)" >&2
	exit 1
fi
SHUNTD="$BUILD/shuntd"
[ -x "$SHUNTD" ] || { echo "run.sh: no shuntd at $SHUNTD" >&2; exit 1; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

# cgroup and bpffs of a run (eBPF capture attaches to the client pod's
# cgroup). `ip netns exec` remounts /sys, hiding the host's cgroup2 and bpffs,
# so both are mounted under /run where every namespace sees them.
remove_cgroup() { # $1 = run pid
	local cg="/run/shunt-b-$1-cg" bpf="/run/shunt-b-$1-bpf" p i
	if [ -d "$cg/shunt-b-$1-app" ]; then
		for p in $(cat "$cg/shunt-b-$1-app/cgroup.procs" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
		for i in $(seq 1 50); do
			[ -z "$(cat "$cg/shunt-b-$1-app/cgroup.procs" 2>/dev/null)" ] && break
			sleep 0.1
		done
		rmdir "$cg/shunt-b-$1-app" 2>/dev/null || true
	fi
	if [ -d "$bpf/shunt" ]; then
		rm -f -- "$bpf"/shunt/* 2>/dev/null || true
		rmdir "$bpf/shunt" 2>/dev/null || true
	fi
	for d in "$cg" "$bpf"; do
		if [ -d "$d" ]; then
			mountpoint -q "$d" && umount -l "$d"
			rmdir "$d" 2>/dev/null || true
		fi
	done
}

# Namespaces and cgroups of earlier runs that were killed with SIGKILL.
for ns in $(ip netns list | awk '{print $1}' | grep '^shunt-b-' || true); do
	pid=${ns#shunt-b-}
	pid=${pid%%-*}
	if ! kill -0 "$pid" 2>/dev/null; then
		for p in $(ip netns pids "$ns" 2>/dev/null); do kill -9 "$p" 2>/dev/null || true; done
		ip netns del "$ns" 2>/dev/null || true
	fi
done
for d in /run/shunt-b-*-cg; do
	[ -d "$d" ] || continue
	pid=${d#/run/shunt-b-}
	pid=${pid%%-*}
	kill -0 "$pid" 2>/dev/null || remove_cgroup "$pid"
done

CLI="shunt-b-$$-cli"
SRV="shunt-b-$$-srv"
WORK=$(mktemp -d "/tmp/shunt-b-$$-XXXXXX")
chmod 755 "$WORK"
cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	for ns in "$CLI" "$SRV"; do
		if ip netns list | grep -q "^$ns\b"; then
			for p in $(ip netns pids "$ns" 2>/dev/null); do kill -TERM "$p" 2>/dev/null || true; done
		fi
	done
	for ns in "$CLI" "$SRV"; do
		if ip netns list | grep -q "^$ns\b"; then
			for i in $(seq 1 20); do
				[ -z "$(ip netns pids "$ns" 2>/dev/null)" ] && break
				sleep 0.1
			done
			for p in $(ip netns pids "$ns" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
			ip netns del "$ns" 2>/dev/null || true
		fi
	done
	remove_cgroup $$
	rm -rf -- "$WORK"
	exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

CGROOT="/run/shunt-b-$$-cg"
BPFFS="/run/shunt-b-$$-bpf"
mkdir "$CGROOT" "$BPFFS"
mount -t cgroup2 cgroup2 "$CGROOT"
mount -t bpf bpf "$BPFFS"
mkdir "$CGROOT/shunt-b-$$-app"

ip netns add "$CLI"
ip netns add "$SRV"
ip -n "$CLI" link add b-srv type veth peer name b-cli netns "$SRV"
ip -n "$CLI" addr add 10.78.0.1/24 dev b-srv
ip -n "$SRV" addr add 10.78.0.2/24 dev b-cli
for ns in "$CLI" "$SRV"; do
	ip -n "$ns" link set lo up
	# Every listening port here is below the ephemeral range: a client
	# socket can never hold a port a proxy is about to bind.
	ip netns exec "$ns" sysctl -qw net.ipv4.ip_local_port_range="32768 60999"
	ip netns exec "$ns" sysctl -qw net.ipv4.tcp_tw_reuse=1
	ip netns exec "$ns" sysctl -qw net.core.somaxconn=8192
	ip netns exec "$ns" sysctl -qw net.ipv4.tcp_max_syn_backlog=8192
done
ip -n "$CLI" link set b-srv up
ip -n "$SRV" link set b-cli up
for i in $(seq 1 100); do
	ip -n "$CLI" link show b-srv | grep -q 'state UP' &&
		ip -n "$SRV" link show b-cli | grep -q 'state UP' && break
	[ "$i" -eq 100 ] && { echo "run.sh: veth did not come up" >&2; exit 1; }
	sleep 0.1
done

# 10,000 idle connections need ~20,000 descriptors in a proxy. Raise the soft
# limit to the hard one; raising the hard limit needs CAP_SYS_RESOURCE, which
# a container may not have: bench.py then holds fewer connections and says so.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cc -O2 -std=gnu11 -Wall -Wextra -Werror -Wshadow -o "$WORK/rr" "$HERE/rr.c"

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
CMDLINE="bench/run.sh${PASS[*]:+ ${PASS[*]}}${TLS:+ --tls}${BUILD_ARG:+ --build $BUILD_ARG}"
python3 "$HERE/bench.py" "${PASS[@]}" --out "$OUT" --stamp "$STAMP" --work "$WORK" \
	--cli "$CLI" --srv "$SRV" --shuntd "$SHUNTD" --rr "$WORK/rr" --command "$CMDLINE" \
	--cgroup "$CGROOT/shunt-b-$$-app" --pins "$BPFFS/shunt"
python3 "$HERE/report.py" "$OUT/$STAMP.json"
if [ -n "$TLS" ]; then
	# tls_bench.sh makes and removes its own namespaces and processes.
	quick=()
	for a in "${PASS[@]}"; do
		if [ "$a" = --quick ]; then quick=(--quick); fi
	done
	before=$(ls "$OUT"/tls-*.md 2>/dev/null | sort | tail -n 1 || true)
	if "$HERE/tls_bench.sh" "${quick[@]}" --build "$BUILD" --out "$OUT"; then
		tls_md=$(ls "$OUT"/tls-*.md 2>/dev/null | sort | tail -n 1 || true)
		if [ -n "$tls_md" ] && [ "$tls_md" != "$before" ]; then
			printf '\n## TLS handshakes and issuance (bench/tls_bench.sh)\n\nRun right after the scenarios above: [%s](%s).\n' \
				"$(basename "$tls_md")" "$(basename "$tls_md")" >>"$OUT/$STAMP.md"
		fi
	else
		echo "run.sh: bench/tls_bench.sh failed (the scenarios' report stands)" >&2
		printf '\n- **Failed**: bench/tls_bench.sh (see the run'"'"'s stderr).\n' >>"$OUT/$STAMP.md"
	fi
fi
echo "run.sh: report $OUT/$STAMP.md"
