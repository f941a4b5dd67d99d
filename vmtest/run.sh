#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# vmtest/run.sh: runs shunt's kernel-facing tests on Debian's 6.1 cloud kernel.
#
# Boots the kernel under qemu with TCG (no KVM needed) and an initramfs built
# here from the host's own binaries (same libc: every executable is copied with
# the shared libraries ldd names), busybox-static for the shell tools and the
# 6.1 kernel's netfilter/veth/sched modules. The guest mounts proc, sys,
# devtmpfs, bpffs (/sys/fs/bpf) and cgroup2 (/sys/fs/cgroup, as on a pure
# cgroup v2 host), brings lo up, runs each test, prints one marker line per
# result, and powers off. This script reads the markers and exits 0 only when
# every test passed: a cmocka test must pass as many cases as it announced,
# so a skipped case fails the run unless SHUNT_ALLOW_SKIP allowed it (see
# tests/unit/require.h; the variable is passed into the guest).
#
#   vmtest/run.sh [--build DIR] [--kernel PATH] [--timeout SEC] [--add PATH]... [TEST ...]
#
# TEST is an executable in the build directory (test_iptables), a path to one,
# or kernel.features (bpftool's probe of the guest kernel, checked against what
# shunt's BPF programs use). Default: every test_bpfcap* in the build directory
# (test_bpfcap_splice among them: the in-kernel splice on 6.1), or
# test_iptables test_sniff test_config when there are none; kernel.features
# always runs first.
#
# Exit status: 0 all passed; 1 a test failed; 2 the guest did not finish
# (timeout, panic); 3 bad usage or missing prerequisites.
# The serial console log is kept in <build>/vmtest/console.log.
set -euo pipefail

prog=vmtest
repo=$(cd "$(dirname "$0")/.." && pwd)
build=$repo/build
kernel=
timeout_s=900
tests=()
extra=()

die() { # status message
	echo "$prog: $2" >&2
	exit "$1"
}

usage() {
	sed -n '/^#   vmtest/,/^# The serial/p' "$0" | sed 's/^# \{0,1\}//'
	exit "${1:-3}"
}

while [ $# -gt 0 ]; do
	case "$1" in
	--build) [ $# -ge 2 ] || usage; build=$2; shift 2 ;;
	--kernel) [ $# -ge 2 ] || usage; kernel=$2; shift 2 ;;
	--timeout) [ $# -ge 2 ] || usage; timeout_s=$2; shift 2 ;;
	--add) [ $# -ge 2 ] || usage; extra+=("$2"); shift 2 ;;
	-h | --help) usage 0 ;;
	--) shift; tests+=("$@"); break ;;
	-*) echo "$prog: unknown option $1" >&2; usage ;;
	*) tests+=("$1"); shift ;;
	esac
done
case "$timeout_s" in
'' | *[!0-9]*) die 3 "--timeout $timeout_s: must be a whole number of seconds" ;;
esac
if [ "$timeout_s" -lt 30 ] || [ "$timeout_s" -gt 7200 ]; then
	die 3 "--timeout $timeout_s: must be between 30 and 7200 seconds"
fi
[ -d "$build" ] || die 3 "--build $build: no such directory (build first: cmake -S . -B build && cmake --build build)"
build=$(cd "$build" && pwd)

# ---- packages -----------------------------------------------------------------
# qemu-system-x86: the emulator; busybox-static: the guest's shell tools; kmod:
# modprobe/depmod for the guest's modules; cpio: the initramfs archive;
# linux-image-cloud-amd64: the 6.1 kernel and its modules. Its postinst runs
# depmod, links /vmlinuz and /initrd.img and runs /etc/kernel/postinst.d; with
# no boot loader installed (a container) nothing else changes. The kernel
# package needs some initramfs generator: tiny-initramfs is the small one (the
# default, initramfs-tools, pulls udev and a systemd upgrade) and is only added
# when no generator is installed, so an existing one is never replaced.
installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
need=(qemu-system-x86 busybox-static kmod cpio bpftool iproute2 iptables)
[ -n "$kernel" ] || need+=(linux-image-cloud-amd64)
missing=()
for p in "${need[@]}"; do installed "$p" || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
	[ "$(id -u)" -eq 0 ] || die 3 "missing packages (${missing[*]}); run as root to install them"
	if [[ " ${missing[*]} " == *" linux-image-cloud-amd64 "* ]] &&
		! installed initramfs-tools && ! installed dracut && ! installed tiny-initramfs; then
		missing+=(tiny-initramfs)
	fi
	echo "$prog: installing ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# ---- kernel -------------------------------------------------------------------
if [ -z "$kernel" ]; then
	kernel=$(find /boot -maxdepth 1 -name 'vmlinuz-6.1.*-cloud-amd64' 2>/dev/null | sort -V | tail -n 1)
	[ -n "$kernel" ] || die 3 "no /boot/vmlinuz-6.1.*-cloud-amd64 (install linux-image-cloud-amd64)"
fi
[ -r "$kernel" ] || die 3 "--kernel $kernel: not readable"
kver=$(basename "$kernel")
kver=${kver#vmlinuz-}
moddir=/lib/modules/$kver
[ -f "$moddir/modules.dep" ] || die 3 "--kernel $kernel: no modules for $kver in $moddir"

# ---- tests --------------------------------------------------------------------
if [ ${#tests[@]} -eq 0 ]; then
	mapfile -t tests < <(find "$build" -maxdepth 1 -type f -perm -u+x -name 'test_bpfcap*' \
		-printf '%f\n' | sort)
	[ ${#tests[@]} -gt 0 ] || tests=(test_iptables test_sniff test_config)
	tests=(kernel.features "${tests[@]}")
fi
declare -A seen=()
test_lines=()
for t in "${tests[@]}"; do
	if [ "$t" = kernel.features ]; then
		name=$t
		path=-
	else
		case "$t" in
		*/*) path=$t ;;
		*) path=$build/$t ;;
		esac
		if [ ! -f "$path" ] || [ ! -x "$path" ]; then
			die 3 "test $t: $path is not an executable (built?)"
		fi
		path=$(realpath "$path")
		name=$(basename "$path")
	fi
	[ -z "${seen[$name]:-}" ] || die 3 "test $t: listed twice"
	seen[$name]=1
	test_lines+=("$name $path")
done

# ---- initramfs ------------------------------------------------------------------
tmp=$(mktemp -d /tmp/vmtest.XXXXXX)
qemu_pid=
tail_pid=
cleanup() {
	[ -z "$qemu_pid" ] || kill "$qemu_pid" 2>/dev/null || true
	[ -z "$tail_pid" ] || kill "$tail_pid" 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
root=$tmp/root
mkdir -p "$root"/{usr/bin,usr/sbin,usr/lib,usr/lib64,etc/vmtest,proc,sys,dev,tmp,run,root,boot,var/tmp}
ln -s usr/bin "$root/bin"
ln -s usr/sbin "$root/sbin"
ln -s usr/lib "$root/lib"
ln -s usr/lib64 "$root/lib64"

is_elf() { [ "$(head -c 4 "$1" 2>/dev/null)" = $'\177ELF' ]; }

# add_libs FILE: the shared libraries ldd names for FILE.
add_libs() {
	local lib
	while read -r lib; do
		if [ -n "$lib" ]; then add "$lib"; fi
	done < <(ldd "$1" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}')
	if ldd "$1" 2>/dev/null | grep -q 'not found'; then
		die 3 "$1: ldd cannot find: $(ldd "$1" | grep 'not found' | tr -s ' \t\n' ' ')"
	fi
}

# add PATH: copies a host file, symlink chain or directory to the same absolute
# path in the guest, with the shared libraries of every ELF file.
add() {
	local p=$1 t f
	case "$p" in /*) ;; *) p=$(realpath -s "$p") ;; esac
	[ -e "$root$p" ] || [ -L "$root$p" ] && return 0
	mkdir -p "$root$(dirname "$p")"
	if [ -L "$p" ]; then
		t=$(readlink "$p")
		ln -s "$t" "$root$p"
		case "$t" in
		/*) add "$t" ;;
		*) add "$(realpath -ms "$(dirname "$p")/$t")" ;;
		esac
	elif [ -d "$p" ]; then
		cp -a "$p" "$root$p"
		while IFS= read -r -d '' f; do
			if is_elf "$f"; then add_libs "$f"; fi
		done < <(find "$p" -type f -print0)
	elif [ -f "$p" ]; then
		cp -p "$p" "$root$p"
		if is_elf "$p"; then add_libs "$p"; fi
	else
		die 3 "$p: not found on the host"
	fi
	return 0
}

busybox=$(command -v busybox) || die 3 "busybox not found (install busybox-static)"
mkdir -p "$root/usr/lib/vmtest/bin"
cp "$busybox" "$root/usr/lib/vmtest/busybox"
if ! is_elf "$busybox" || ldd "$busybox" >/dev/null 2>&1; then
	die 3 "$busybox is not statically linked (install busybox-static)"
fi
for a in $("$busybox" --list); do
	ln -s ../busybox "$root/usr/lib/vmtest/bin/$a"
done

# Host tools the tests call by name; the rest of the guest's commands are busybox.
for cmd in sh dash ip ss bpftool kmod modprobe insmod depmod \
	iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
	p=$(command -v "$cmd") || die 3 "$cmd not found on the host"
	add "$p"
done
[ -d /usr/lib/x86_64-linux-gnu/xtables ] && add /usr/lib/x86_64-linux-gnu/xtables
for f in passwd group nsswitch.conf hosts protocols services ethertypes; do
	[ -e "/etc/$f" ] && add "/etc/$f"
done
echo "vmtest" >"$root/etc/hostname"
cp "/boot/config-$kver" "$root/boot/" 2>/dev/null || true # bpftool reads the kernel config from here

# The build: tests, daemon, CLI, BPF objects; test fixtures at their source path.
for l in "${test_lines[@]}"; do
	p=${l#* }
	[ "$p" = - ] || add "$p"
done
for f in shuntd shuntctl; do
	[ -x "$build/$f" ] && add "$build/$f"
done
while IFS= read -r -d '' f; do add "$f"; done < <(find "$build" -maxdepth 3 -name '*.bpf.o' -print0)
src=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt" 2>/dev/null || true)
[ -n "$src" ] && [ -d "$src/tests/fixtures" ] && add "$src/tests/fixtures"
for p in "${extra[@]}"; do add "$(realpath -s "$p")"; done

# Kernel modules: netfilter (iptables nat through nft_compat, conntrack),
# sched, veth/dummy/ifb/tun links, socket diag, and whatever they depend on;
# depmod makes them loadable by modprobe in the guest, also when the kernel
# asks for one itself.
gmod=$root$moddir
mkdir -p "$gmod"
cp "$moddir"/modules.order "$moddir"/modules.builtin "$moddir"/modules.builtin.modinfo "$gmod/"
(
	cd "$moddir"
	find kernel/net/netfilter kernel/net/ipv4 kernel/net/ipv6 kernel/net/sched \
		kernel/drivers/net/{veth,dummy,ifb,tun}.ko -name '*.ko' 2>/dev/null
) >"$tmp/mods"
awk -F': ?' 'NR == FNR {want[$1] = 1; print $1; next}
	want[$1] {n = split($2, d, " "); for (i = 1; i <= n; i++) print d[i]}' \
	"$tmp/mods" "$moddir/modules.dep" | sort -u >"$tmp/mods.all"
while read -r m; do
	mkdir -p "$gmod/$(dirname "$m")"
	cp "$moddir/$m" "$gmod/$m"
done <"$tmp/mods.all"
depmod -b "$root" "$kver" 2>"$tmp/depmod.err" || die 3 "depmod for the guest failed: $(cat "$tmp/depmod.err")"
cat >"$root/etc/vmtest/modules" <<'EOF'
veth
dummy
ifb
tun
nf_conntrack
nf_nat
nf_tables
nft_compat
nft_chain_nat
iptable_nat
ip6table_nat
xt_REDIRECT
xt_owner
xt_mark
xt_comment
xt_multiport
xt_addrtype
xt_conntrack
xt_tcpudp
inet_diag
tcp_diag
sch_ingress
cls_bpf
EOF

printf '%s\n' "${test_lines[@]}" >"$root/etc/vmtest/tests"
# Environment for the tests: the sanitizer settings of scripts/test.sh unless
# the caller set its own.
{
	q() { printf "export %s='%s'\n" "$1" "${2//\'/\'\\\'\'}"; }
	q ASAN_OPTIONS "${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}"
	q UBSAN_OPTIONS "${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
	[ -z "${LSAN_OPTIONS:-}" ] || q LSAN_OPTIONS "$LSAN_OPTIONS"
	[ -z "${SHUNT_ALLOW_SKIP:-}" ] || q SHUNT_ALLOW_SKIP "$SHUNT_ALLOW_SKIP"
	q SHUNT_BUILD "$build"
	[ -z "$src" ] || q SHUNT_SOURCE "$src"
} >"$root/etc/vmtest/env"

cat >"$root/init" <<'EOF'
#!/usr/lib/vmtest/busybox sh
# vmtest guest init: set up the mounts, load modules, run the tests, power off.
export PATH=/usr/sbin:/usr/bin:/usr/lib/vmtest/bin
export HOME=/root TMPDIR=/tmp USER=root LOGNAME=root TERM=dumb
umask 022

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/null >/dev/console 2>&1
mkdir -p /dev/pts /dev/shm
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /dev/shm
# /tmp and /run stay on the initramfs (already in memory): a build directory
# under /tmp is in there.
chmod 1777 /tmp /var/tmp
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
hostname vmtest
ip link set lo up

# Markers go to the console and, alone, to the second serial port that the
# host parses.
mark() {
	echo "$*"
	echo "$*" >/dev/ttyS1
}

mark "VMTEST-BOOT kernel=$(uname -r) cpus=$(nproc)"
failed_mods=
for m in $(cat /etc/vmtest/modules); do
	modprobe "$m" || failed_mods="$failed_mods $m"
done

. /etc/vmtest/env

# kernel.features: bpftool's probe of this kernel, printed, and checked
# against what shunt's BPF programs need.
helpers() { # prog_type: the helpers bpftool found for it
	awk -v t="$1" '$0 == "eBPF helpers supported for program type " t ":" {on = 1; next}
		on && /^\t- / {print $2; next} on {on = 0}' /tmp/probe.txt
}
kernel_features() {
	bpftool feature probe kernel >/tmp/probe.txt 2>&1 || { cat /tmp/probe.txt; return 1; }
	echo "== program types"
	grep '^eBPF program_type ' /tmp/probe.txt | sed 's/^eBPF program_type /  /'
	echo "== map types"
	grep '^eBPF map_type ' /tmp/probe.txt | sed 's/^eBPF map_type /  /'
	for t in cgroup_sock_addr sock_ops sk_msg cgroup_sockopt; do
		echo "== helpers for $t: $(helpers $t | tr '\n' ' ')"
	done
	bad=0
	[ -f /sys/kernel/btf/vmlinux ] || { echo "MISSING: /sys/kernel/btf/vmlinux (CO-RE needs BTF)"; bad=1; }
	for t in cgroup_sock_addr sock_ops sk_msg cgroup_sockopt; do
		grep -qx "eBPF program_type $t is available" /tmp/probe.txt ||
			{ echo "MISSING: program type $t"; bad=1; }
	done
	for t in hash lru_hash array percpu_array sockhash; do
		grep -qx "eBPF map_type $t is available" /tmp/probe.txt ||
			{ echo "MISSING: map type $t"; bad=1; }
	done
	for th in cgroup_sock_addr:bpf_get_socket_cookie cgroup_sock_addr:bpf_get_current_uid_gid \
		cgroup_sock_addr:bpf_map_update_elem sock_ops:bpf_sock_hash_update \
		sock_ops:bpf_sock_ops_cb_flags_set sock_ops:bpf_get_socket_cookie \
		sk_msg:bpf_msg_redirect_hash cgroup_sockopt:bpf_map_lookup_elem; do
		helpers "${th%%:*}" | grep -x "${th#*:}" >/dev/null ||
			{ echo "MISSING: helper ${th#*:} for ${th%%:*}"; bad=1; }
	done
	return $bad
}

pass=0
fail=0
if [ -n "$failed_mods" ]; then
	echo "modprobe failed for:$failed_mods"
	mark "VMTEST-RESULT setup.modules FAIL rc=1 skipped=0"
	fail=$((fail + 1))
fi
set -o pipefail
while read -r name path; do
	mark "VMTEST-BEGIN $name"
	mkdir -p "/tmp/vmtest/$name"
	cd "/tmp/vmtest/$name"
	if [ "$path" = - ]; then
		kernel_features >out.log 2>&1
		rc=$?
		cat out.log
	else
		"$path" 2>&1 | tee out.log
		rc=$?
	fi
	cd /
	# cmocka announces its cases ("Running N test(s).") and counts those
	# that passed and were skipped; kernel.features is one case.
	log=/tmp/vmtest/$name/out.log
	count() { sed -n "s/^$1 \([0-9][0-9]*\) test(s).*/\1/p" "$log" | tail -n 1; }
	want=$(count '\[==========\] Running')
	passed=$(count '\[  PASSED  \]')
	skipped=$(count '\[  SKIPPED \]')
	if [ "$path" = - ]; then
		want=1
		passed=$((rc == 0))
	fi
	want=${want:-?} passed=${passed:-0} skipped=${skipped:-0}
	ok=0
	if [ $rc -eq 0 ] && [ "$passed" = "$want" ]; then
		ok=1
	elif [ $rc -eq 0 ] && [ -n "${SHUNT_ALLOW_SKIP:-}" ] && [ "$want" != "?" ] &&
		[ $((passed + skipped)) -eq "$want" ]; then
		ok=1 # every skip was one SHUNT_ALLOW_SKIP allowed (require.h)
	fi
	if [ $ok -eq 1 ]; then
		pass=$((pass + 1))
		mark "VMTEST-RESULT $name PASS rc=0 passed=$passed/$want skipped=$skipped"
	else
		fail=$((fail + 1))
		mark "VMTEST-RESULT $name FAIL rc=$rc passed=$passed/$want skipped=$skipped"
	fi
done </etc/vmtest/tests
mark "VMTEST-DONE passed=$pass failed=$fail"
sync
poweroff -f
echo o >/proc/sysrq-trigger
sleep 10
EOF
chmod 755 "$root/init"

[ "$(id -u)" -ne 0 ] || mknod -m 600 "$root/dev/console" c 5 1
(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --null -o -H newc --quiet) >"$tmp/initramfs.cpio"

# ---- boot -----------------------------------------------------------------------
logdir=$build/vmtest
mkdir -p "$logdir"
log=$logdir/console.log
markers=$tmp/markers
: >"$markers"
echo "$prog: booting $kernel (TCG, timeout ${timeout_s}s), initramfs $(du -m "$tmp/initramfs.cpio" | cut -f1) MiB, tests: ${tests[*]}"
start=$(date +%s)
# stdin from /dev/null: qemu never puts the terminal in raw mode; no network
# device: the guest cannot reach the host's network. qemu runs in the
# background so that a signal to this script stops it at once (cleanup).
timeout -k 10 "$timeout_s" qemu-system-x86_64 \
	-accel tcg -cpu max -m 1G -smp 2 -nographic -no-reboot \
	-monitor none -serial stdio -serial "file:$markers" -nic none \
	-kernel "$kernel" -initrd "$tmp/initramfs.cpio" \
	-append "console=ttyS0 rdinit=/init panic=-1 quiet mitigations=off" \
	</dev/null >"$log" 2>&1 &
qemu_pid=$!
tail -n +1 -f --pid="$qemu_pid" "$log" &
tail_pid=$!
qrc=0
wait "$qemu_pid" || qrc=$?
qemu_pid=
wait "$tail_pid" || true
tail_pid=
elapsed=$(($(date +%s) - start))

# ---- results --------------------------------------------------------------------
tr -d '\r' <"$markers" >"$tmp/markers.txt"
echo
echo "$prog: results on $kver after ${elapsed}s (console log: $log)"
grep '^VMTEST-RESULT ' "$tmp/markers.txt" | awk '{printf "  %-24s %s %s %s %s\n", $2, $3, $4, $5, $6}'
done_line=$(grep '^VMTEST-DONE ' "$tmp/markers.txt" || true)
if [ -z "$done_line" ]; then
	last=$(grep '^VMTEST-BEGIN ' "$tmp/markers.txt" | tail -n 1 | cut -d' ' -f2)
	if [ "$qrc" -eq 124 ] || [ "$qrc" -eq 137 ]; then
		die 2 "FAIL: timed out after ${timeout_s}s${last:+ while running $last}"
	fi
	if ! grep -q '^VMTEST-BOOT ' "$tmp/markers.txt"; then
		die 2 "FAIL: the guest never reached its init (qemu exit $qrc; see $log)"
	fi
	die 2 "FAIL: the guest stopped before finishing${last:+ (last test started: $last)} (qemu exit $qrc; see $log)"
fi
nres=$(grep -c '^VMTEST-RESULT ' "$tmp/markers.txt" || true)
nfail=$(grep -c '^VMTEST-RESULT [^ ]* FAIL' "$tmp/markers.txt" || true)
nwant=${#test_lines[@]}
if [ "$nfail" -gt 0 ]; then
	die 1 "FAIL: $nfail of $nres failed"
fi
if [ "$nres" -ne "$nwant" ]; then
	die 1 "FAIL: $nres results for $nwant tests"
fi
nskip=$(grep '^VMTEST-RESULT ' "$tmp/markers.txt" | sed -n 's/.* skipped=\([0-9]*\).*/\1/p' |
	awk '{n += $1} END {print n + 0}')
if [ "$nskip" -gt 0 ]; then
	echo "$prog: PASS with $nskip skipped cases, allowed by SHUNT_ALLOW_SKIP=${SHUNT_ALLOW_SKIP:-}"
	exit 0
fi
echo "$prog: PASS: all $nres passed on $kver, no case skipped"
