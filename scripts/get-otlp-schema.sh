#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Fetches once, from the npm registry, and caches the OTLP protobuf schema
# as code: @opentelemetry/otlp-transformer's generated protobufjs root
# (build/src/generated/root.js, from the opentelemetry-proto .proto files),
# which tests/integration/otlp_check.js loads to check the tracing tests'
# OTLP/HTTP JSON payloads. Prints the cache directory (DIR/node_modules).
# What is fetched is pinned by scripts/otlp-schema/package-lock.json: `npm ci`
# checks every tarball against its sha512 there. Needs node and npm
# (scripts/bootstrap.sh: Debian's nodejs and npm).
# The cache: $SHUNT_OTLP_SCHEMA_DIR, else ~/.cache/shunt-otlp-schema.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/npm-cache.sh
. "$here/npm-cache.sh"
lock=$here/otlp-schema/package-lock.json
dir=${SHUNT_OTLP_SCHEMA_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/shunt-otlp-schema}
root=node_modules/@opentelemetry/otlp-transformer/build/src/generated/root.js
for tool in npm node flock sha256sum; do
	command -v "$tool" >/dev/null 2>&1 || { echo "get-otlp-schema: $tool not found; run scripts/bootstrap.sh" >&2; exit 1; }
done
stamp=$(sha256sum "$lock" | cut -d' ' -f1)
cached() { [ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$stamp" ] && [ -f "$dir/$root" ]; }
if ! cached; then
	npm_cache_begin get-otlp-schema "$dir"
fi
if cached; then
	echo "$dir"
	exit 0
fi
cp "$here/otlp-schema/package.json" "$lock" "$NPM_CACHE_TMP/"
npm_cache_ci get-otlp-schema
node -e 'require(process.argv[1]).opentelemetry.proto.collector.trace.v1.ExportTraceServiceRequest.fromObject({})' \
	"$NPM_CACHE_TMP/$root" || { echo "get-otlp-schema: the fetched schema does not load in node $(node --version)" >&2; exit 1; }
npm_cache_commit "$dir" "$stamp"
echo "$dir"
