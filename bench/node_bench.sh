#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Node mode against sidecars for the same pods (issue 16), in one run, on the
# node lab of tests/integration/nodelab.py: two nodes (network namespaces),
# three pods each (a network namespace and a cgroup in kubelet's layout), the
# Kubernetes API stand-in and shunt-ca; strict mTLS with each pod's identity.
# First one shuntd per meshed pod (eBPF capture on the pod's cgroup), then one
# shuntd per node (mode node). Measures request latency p50/p99 (rr ping, 64 B),
# connections per second (rr conn, an mTLS handshake each), memory per pod
# (PSS and RSS of the shuntds divided by the meshed pods) and shuntd CPU.
#
#   bench/node_bench.sh [--quick] [--modes sidecar,node] [--reps N] [--build DIR] [--out DIR]
#
# --quick: 1 repetition, 500 round trips, 100 connections per client (~1 min).
# Writes OUT/node-<timestamp>.{md,json} (OUT defaults to bench/results) and
# prints the report; exits 1 when a mode could not run (the report says why).
# Needs root; everything it creates (namespaces, cgroups, mounts, pins,
# processes) is removed on exit, Ctrl-C or SIGTERM.
set -euo pipefail

ARGS="$*"
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT="$HERE/results"
BUILD="${SHUNT_BUILD:-}"
PASS=()
usage() { sed -n '2,18p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
	case "$1" in
	--quick) PASS+=(--reps 1 --count 500 --conns 100) ;;
	--modes | --reps)
		[ $# -ge 2 ] || { echo "node_bench.sh: $1 needs a value" >&2; exit 2; }
		PASS+=("$1" "$2")
		shift
		;;
	--build | --out)
		[ $# -ge 2 ] || { echo "node_bench.sh: $1 needs a value" >&2; exit 2; }
		case "$1" in
		--build) BUILD=$2 ;;
		--out) OUT=$2 ;;
		esac
		shift
		;;
	-h | --help) usage; exit 0 ;;
	*) echo "node_bench.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
	esac
	shift
done
if [ "$(id -u)" -ne 0 ]; then
	echo "node_bench.sh: needs root (network namespaces, cgroups, eBPF)" >&2
	exit 1
fi
missing=()
for cmd in ip iptables cc openssl bpftool; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
/usr/bin/python3 -c 'import pytest' 2>/dev/null || missing+=(python3-pytest)
if [ ${#missing[@]} -gt 0 ]; then
	echo "node_bench.sh: missing: ${missing[*]} (scripts/bootstrap.sh installs them)" >&2
	exit 1
fi
if [ -z "$BUILD" ]; then
	BUILD="$ROOT/build-bench"
	if [ ! -x "$BUILD/shuntd" ] || [ -n "$(find "$ROOT/userspace" "$ROOT/CMakeLists.txt" -newer "$BUILD/shuntd" -print -quit)" ]; then
		echo "node_bench.sh: building shuntd and shunt-ca in $BUILD" >&2
		cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHUNT_SANITIZE=OFF >/dev/null
		cmake --build "$BUILD" -j2 --target shuntd shunt-ca >/dev/null
	fi
fi
for bin in shuntd shunt-ca; do
	[ -x "$BUILD/$bin" ] || { echo "node_bench.sh: no $bin at $BUILD/$bin" >&2; exit 1; }
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

WORK=$(mktemp -d "/tmp/shunt-n-$$-XXXXXX")
chmod 755 "$WORK"
trap 'rm -rf -- "$WORK"' EXIT
cc -O2 -std=gnu11 -Wall -Wextra -Werror -o "$WORK/rr" "$HERE/rr.c"
# node_bench.py removes the lab itself (context manager, also on SIGTERM and
# Ctrl-C through shuntlib's guards); this shell only removes the work directory.
SHUNT_BUILD="$BUILD" SHUNT_SOURCE="$ROOT" /usr/bin/python3 "$HERE/node_bench.py" \
	--rr "$WORK/rr" --out "$OUT" --command "bench/node_bench.sh${ARGS:+ $ARGS}" ${PASS[@]+"${PASS[@]}"}
