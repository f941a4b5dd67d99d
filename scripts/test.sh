#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs what is missing, builds, and runs every test:
#   1. an AddressSanitizer + UndefinedBehaviorSanitizer build runs the unit,
#      fuzz and integration tests;
#   2. a clang libFuzzer build fuzzes every target of tests/fuzz (the HTTP/1.1
#      parser, the sniffer, shunt-ca's parsers, authorization policies, the
#      injection webhook) for a bounded time, two at a time;
#   3. the release build runs everything again but the control-plane
#      integration tests (discovery, shunt-ca, chart, docs, node pod table:
#      their logic does not depend on the optimiser and the stricter ASan run
#      covers them), with vmtest, last, so the output ends with ctest's
#      summary line. Integration tests run two at a time (ctest -j2; those
#      that measure run alone, tests/CMakeLists.txt SHUNT_SOLO_TESTS). That
#      keeps the whole run under 30 minutes on 2 cores.
# Integration tests need root (CI runs as root): they create and remove their
# own network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh

jobs=$(nproc)
# No silent skips: a test that misses a tool, module, kernel feature or
# privilege fails naming it. SHUNT_ALLOW_SKIP=name,... turns the named ones
# into skips for a developer's partial run (tests/unit/require.h,
# tests/integration/shuntlib.py); the full run and CI allow none.
unset SHUNT_ALLOW_SKIP

echo "== ASan+UBSan build"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSHUNT_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs" >/dev/null
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd build-asan && ctest --output-on-failure -j"$jobs" -L 'unit|fuzz')
(cd build-asan && ctest --output-on-failure -j2 -L integration)

echo "== libFuzzer (clang, ASan+UBSan): every fuzz target, 40 s each, $jobs at a time"
fuzz_targets=$(cd tests/fuzz && ls fuzz_*.c | sed 's/\.c$//')
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DSHUNT_SANITIZE=ON \
	-DSHUNT_LIBFUZZER=ON -DSHUNT_FUZZ_SECONDS=40 >/dev/null
# shellcheck disable=SC2086 # one target per word
cmake --build build-fuzz -j"$jobs" --target $fuzz_targets >/dev/null
(cd build-fuzz && ctest --output-on-failure -j"$jobs" -L libfuzzer)

echo "== release build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs" >/dev/null
cd build
asan_only='^integration\.test_(consul|clusters|dns|consul_tls|k8s|k8s_identity|k8s_mesh|k8s_routes|ca|ca_source|ca_node|chart|chart_ca|chart_node|chart_monitoring|reload_cli|node_pods|node_identity|node_sidecar_capture|nodelab_sidecar|node_mesh|docs|check)$'
ctest --output-on-failure -j2 -E "$asan_only"
