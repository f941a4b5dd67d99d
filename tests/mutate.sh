#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Mutation run: proof that the suite fails when a feature breaks.
#
# Each tests/mutations/*.patch is one deliberate breakage of the product code
# (a small git diff) with a header naming what it breaks and the tests that
# must catch it. The script copies the working tree (tracked and untracked
# files, no build directories) to a scratch directory, builds it once
# (release, -j2), then for each mutation: applies it, rebuilds, runs each
# of its tests (all of them: a named test that misses the mutation is worth
# knowing even when another catches it), reverts it. A mutation that no longer
# applies, or that does not compile, is an error, never a pass; so is a
# named test that fails on the unmutated tree (--baseline checks that).
#
# Not part of scripts/test.sh: a run takes tens of minutes. Root, like the
# integration tests it runs.
#
#   tests/mutate.sh                      every mutation, its named tests
#   tests/mutate.sh --only 'breaker|hash' mutations whose file name matches (ERE)
#   tests/mutate.sh --first              stop at the first test that catches it
#   tests/mutate.sh --full               the whole ctest suite per mutation
#   tests/mutate.sh --baseline           first run every named test unmutated
#   tests/mutate.sh --report FILE        the Markdown table (default: stdout)
#   tests/mutate.sh --keep               leave the scratch copy for a look
#
# Exit status: 0 when every mutation was caught, 1 when one survived, 2 on
# an error (a mutation that does not apply or build, a failing baseline).
set -uo pipefail
# One group, parsed whole before it runs: editing this file during a run
# (bash reads a script as it goes) cannot change or break that run.
{

src=$(cd "$(dirname "$0")/.." && pwd)
only="" first=0 full=0 baseline=0 report="" keep=0
while [ $# -gt 0 ]; do
	case "$1" in
	--only) only="$2"; shift 2 ;;
	--first) first=1; shift ;;
	--full) full=1; shift ;;
	--baseline) baseline=1; shift ;;
	--report) report="$2"; shift 2 ;;
	--keep) keep=1; shift ;;
	*) echo "mutate.sh: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
	esac
done
[ "$(id -u)" = 0 ] || { echo "mutate.sh: the integration tests need root" >&2; exit 2; }

patches=()
for p in "$src"/tests/mutations/*.patch; do
	[[ "$(basename "$p")" =~ $only ]] && patches+=("$p")
done
[ ${#patches[@]} -gt 0 ] || { echo "mutate.sh: no mutation matches '$only'" >&2; exit 2; }

work=$(mktemp -d /tmp/shunt-mutate.XXXXXX)
tree=$work/tree build=$work/tree/build logs=$work/logs
mkdir -p "$tree" "$logs"
# shellcheck disable=SC2317 # called by the trap
cleanup() {
	if [ "$keep" = 1 ]; then
		echo "mutate.sh: scratch copy and logs kept in $work" >&2
	else
		rm -rf "$work"
	fi
}
trap cleanup EXIT

say() { printf '%s mutate: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

# The working tree as it is (uncommitted test changes included).
git -C "$src" ls-files -z -co --exclude-standard | (cd "$src" && tar --null -T - -cf -) |
	tar -xf - -C "$tree"
say "building the unmutated copy in $build"
if ! cmake -S "$tree" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >"$logs/configure.log" 2>&1 ||
	! cmake --build "$build" -j2 >"$logs/build-base.log" 2>&1; then
	say "the unmutated tree does not build: $logs/build-base.log"
	keep=1
	exit 2
fi

field() { sed -n "s/^$1: //p" "$2" | head -1; }

# One test: unit.NAME (a ctest) or FILE.py[::node] (pytest, in
# tests/integration). Returns its exit status; 124 is a timeout.
run_test() {
	local t=$1 log=$2
	case "$t" in
	unit.* | fuzz.*)
		(cd "$build" && timeout -k 10 300 ctest --no-tests=error --output-on-failure -R "^${t//./\\.}\$") >"$log" 2>&1
		;;
	*.py*)
		local lock=()
		case "$t" in *ebpf* | test_bench_smoke*) lock=(flock /tmp/shunt-bpf.lock) ;; esac
		(cd "$tree/tests/integration" &&
			SHUNT_BUILD="$build" SHUNT_SOURCE="$tree" timeout -k 20 900 "${lock[@]}" \
				pytest-3 -q -x -p no:cacheprovider "$t") >"$log" 2>&1
		;;
	*) echo "unknown test '$t'" >"$log"; return 2 ;;
	esac
}

# Whole suite: the names of the tests that failed, or nothing.
run_full() {
	local log=$1
	(cd "$build" && flock /tmp/shunt-bpf.lock ctest -j2 -L 'unit|fuzz|integration') >"$log" 2>&1
	sed -n 's/^[[:space:]]*[0-9]* - \([^ ]*\) (.*/\1/p' "$log" | tr '\n' ' '
}

status=0
if [ "$baseline" = 1 ]; then
	mapfile -t all < <(for p in "${patches[@]}"; do field Tests "$p" | tr ' ' '\n'; done | sort -u)
	for t in "${all[@]}"; do
		[ -n "$t" ] || continue
		say "baseline: $t"
		if ! run_test "$t" "$logs/baseline-${t//[:\/]/_}.log"; then
			say "BASELINE FAILS: $t fails on the unmutated tree ($logs/baseline-${t//[:\/]/_}.log)"
			keep=1 status=2
		fi
	done
	[ "$status" = 0 ] || exit 2
fi

rows=()
for p in "${patches[@]}"; do
	name=$(basename "$p" .patch)
	what=$(field Mutation "$p")
	tests=$(field Tests "$p")
	result=""
	if ! (cd "$tree" && git apply --check "$p" 2>"$logs/$name.apply.log"); then
		result="ERROR: does not apply ($(head -1 "$logs/$name.apply.log"))"
		status=2
	else
		(cd "$tree" && git apply "$p")
		say "$name: building"
		if ! cmake --build "$build" -j2 >"$logs/$name.build.log" 2>&1; then
			result="ERROR: does not build (logs/$name.build.log)"
			status=2
		elif [ "$full" = 1 ]; then
			say "$name: whole suite"
			failed=$(run_full "$logs/$name.full.log")
			result=${failed:+caught by $failed}
		else
			caught="" missed=""
			for t in $tests; do
				say "$name: $t"
				run_test "$t" "$logs/$name.${t//[:\/]/_}.log"
				case $? in
				0) missed+=" $t" ;;
				124 | 137) caught+=" $t (timed out)," ;;
				*) caught+=" $t," ;;
				esac
				[ "$first" = 1 ] && [ -n "$caught" ] && break
			done
			if [ -n "$caught" ]; then
				result="caught by${caught%,}"
				[ -n "$missed" ] && result+="; not by$missed"
			fi
		fi
		(cd "$tree" && git apply -R "$p")
	fi
	if [ -z "$result" ]; then
		result="SURVIVED"
		[ "$status" = 0 ] && status=1
	fi
	say "$name: $result"
	rows+=("| $name | $what | ${tests// /, } | $result |")
done
# The last mutation's revert is rebuilt so a --keep copy is the real tree.
cmake --build "$build" -j2 >"$logs/build-final.log" 2>&1

{
	echo "Mutation run of $(git -C "$src" rev-parse --short HEAD)$(git -C "$src" diff --quiet HEAD || echo ' + uncommitted changes'), $(date -u '+%Y-%m-%d %H:%M UTC')$([ "$full" = 1 ] && echo ', whole suite per mutation')"
	echo
	echo "| mutation | what it breaks | tests expected to catch it | result |"
	echo "|---|---|---|---|"
	printf '%s\n' "${rows[@]}"
} >"${report:-/dev/stdout}"
[ "$status" = 0 ] || keep=1
exit "$status"
}
