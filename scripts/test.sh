#!/usr/bin/env bash
# Installs what is missing, builds, and runs every test:
#   1. an AddressSanitizer + UndefinedBehaviorSanitizer build runs the unit,
#      fuzz and integration tests;
#   2. a clang libFuzzer build fuzzes the HTTP/1.1 parser and the sniffer for
#      a bounded time;
#   3. the release build runs the whole suite last, so the output ends with
#      ctest's summary line.
# Integration tests need root (CI runs as root): they create and remove their
# own network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/bootstrap.sh

jobs=$(nproc)

echo "== ASan+UBSan build"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DSHUNT_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs" >/dev/null
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
(cd build-asan && ctest --output-on-failure -j"$jobs" -L 'unit|fuzz')
(cd build-asan && ctest --output-on-failure -L integration)

echo "== libFuzzer (clang, ASan+UBSan): the HTTP/1.1 parser and the sniffer, 60 s each"
CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DSHUNT_SANITIZE=ON \
	-DSHUNT_LIBFUZZER=ON >/dev/null
cmake --build build-fuzz -j"$jobs" --target fuzz_http1 fuzz_sniff >/dev/null
(cd build-fuzz && ctest --output-on-failure -L libfuzzer)

echo "== release build"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$jobs" >/dev/null
cd build
ctest --output-on-failure
