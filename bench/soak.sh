#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Soak: mixed HTTP/1.1, HTTP/2 (h2c), gRPC and TCP traffic through two
# shuntds over mTLS for --minutes, with endpoint churn every 20 s, certificate
# rotation every minute and SIGHUP reloads every 45 s; RSS, descriptors, CPU
# and active connections of both shuntds sampled every 10 s.
#
#   bench/soak.sh --minutes N [--build DIR] [--out DIR]
#
# Writes OUT/soak-<timestamp>.{md,json} (OUT defaults to bench/results) and
# prints the report; exits 1 with one line if a generator saw an error, a
# shuntd's memory, descriptors or CPU grew beyond the stated tolerance, or a
# shuntd did not rotate. Needs root (network namespaces, iptables); creates
# shunt-s-<pid>-cli and shunt-s-<pid>-srv and removes them (and everything it
# started) on exit, Ctrl-C or SIGTERM.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
OUT="$HERE/results"
BUILD="${SHUNT_BUILD:-}"
MINUTES=
usage() { sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; }
while [ $# -gt 0 ]; do
	case "$1" in
	--minutes | --build | --out)
		[ $# -ge 2 ] || { echo "soak.sh: $1 needs a value" >&2; exit 2; }
		case "$1" in
		--minutes) MINUTES=$2 ;;
		--build) BUILD=$2 ;;
		--out) OUT=$2 ;;
		esac
		shift
		;;
	-h | --help) usage; exit 0 ;;
	*) echo "soak.sh: unknown argument '$1'" >&2; usage >&2; exit 2 ;;
	esac
	shift
done
case "$MINUTES" in
'' | *[!0-9]*) echo "soak.sh: --minutes N (a whole number of minutes) is required" >&2; exit 2 ;;
esac
if [ "$(id -u)" -ne 0 ]; then
	echo "soak.sh: needs root (network namespaces, iptables)" >&2
	exit 1
fi
missing=()
for cmd in ip iptables cc nginx h2load curl ss; do
	command -v "$cmd" >/dev/null 2>&1 || missing+=("$cmd")
done
/usr/bin/python3 -c 'import grpc' 2>/dev/null || missing+=(python3-grpcio)
if [ ${#missing[@]} -gt 0 ]; then
	echo "soak.sh: missing: ${missing[*]} (scripts/bootstrap.sh installs them)" >&2
	exit 1
fi
if [ -z "$BUILD" ]; then
	BUILD="$ROOT/build-bench"
	if [ ! -x "$BUILD/shuntd" ] || [ -n "$(find "$ROOT/userspace" "$ROOT/CMakeLists.txt" -newer "$BUILD/shuntd" -print -quit)" ]; then
		echo "soak.sh: building shuntd in $BUILD" >&2
		cmake -S "$ROOT" -B "$BUILD" -DCMAKE_BUILD_TYPE=RelWithDebInfo -DSHUNT_SANITIZE=OFF >/dev/null
		cmake --build "$BUILD" -j2 --target shuntd >/dev/null
	fi
fi
[ -x "$BUILD/shuntd" ] || { echo "soak.sh: no shuntd at $BUILD/shuntd" >&2; exit 1; }
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

WORK=$(mktemp -d "/tmp/shunt-s-$$-XXXXXX")
chmod 755 "$WORK"
trap 'rm -rf -- "$WORK"' EXIT
cc -O2 -std=gnu11 -Wall -Wextra -Werror -o "$WORK/rr" "$HERE/rr.c"
# soak.py removes its namespaces and processes itself (finally block, also
# on SIGTERM and Ctrl-C); this shell only removes the work directory.
/usr/bin/python3 "$HERE/soak.py" run --minutes "$MINUTES" --out "$OUT" --work "$WORK" \
	--shuntd "$BUILD/shuntd" --rr "$WORK/rr" --command "bench/soak.sh --minutes $MINUTES"
