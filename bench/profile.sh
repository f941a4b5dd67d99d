#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Profiles shuntd during one benchmark scenario:
#
#   bench/profile.sh SCENARIO [run.sh options, e.g. --quick --build DIR --out DIR]
#
# Runs bench/run.sh --scenario SCENARIO --contenders shunt-iptables --reps 1
# --profile (a later --contenders shunt-ebpf, shunt-http or shunt-mtls picks
# another; for shunt-mtls the client-side shuntd): `perf record -g` attaches
# to shuntd for the length of the scenario
# and the top of `perf report --no-children` is written next to the report as
# OUT/<timestamp>-profile-SCENARIO.txt. Needs perf (Debian: linux-perf).
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
	sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//' >&2
	exit 2
fi
command -v perf >/dev/null 2>&1 || { echo "profile.sh: perf not found (apt-get install linux-perf)" >&2; exit 1; }
scenario=$1
shift
exec "$HERE/run.sh" --scenario "$scenario" --contenders shunt-iptables --reps 1 --profile "$@"
