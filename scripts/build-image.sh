#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Builds the container image `shunt` from Debian packages only, with no base
# image: the root filesystem holds the binaries of the build directory
# (shuntd, shuntctl, shunt-ca when built), the shared libraries they and the
# init's tools (iptables-nft, ip) load, taken from the installed versions'
# .deb files (local apt cache, else `apt-get download`) with dpkg-deb, the
# xtables extensions, each package's copyright file, and the users root and
# shunt (1337). buildah turns it into an OCI (or docker) image archive.
#
#   scripts/build-image.sh [--build DIR] [--out FILE] [--format oci|docker]
#                          [--with-ca | --without-ca] [--rootfs DIR] [--tag NAME:VERSION]
#
# --rootfs DIR keeps the root filesystem there (tests inspect it); by default
# it is removed with the rest of the work directory. Prints the image size.
# Downloaded .deb files stay in $SHUNT_DEB_CACHE (/var/cache/shunt/debs).
set -euo pipefail
cd "$(dirname "$0")/.."

BUILD=build
OUT=
FORMAT=oci
CA=auto
ROOTFS_KEEP=
TAG=
ARCH_TRIPLET=x86_64-linux-gnu

die() {
	echo "build-image: $*" >&2
	exit 1
}

while [ $# -gt 0 ]; do
	case "$1" in
	--build) BUILD=$2; shift 2 ;;
	--out) OUT=$2; shift 2 ;;
	--format) FORMAT=$2; shift 2 ;;
	--with-ca) CA=yes; shift ;;
	--without-ca) CA=no; shift ;;
	--rootfs) ROOTFS_KEEP=$2; shift 2 ;;
	--tag) TAG=$2; shift 2 ;;
	-h | --help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) die "unknown argument $1 (see --help)" ;;
	esac
done
case "$FORMAT" in oci | docker) ;; *) die "--format $FORMAT: want oci or docker" ;; esac
[ "$(id -u)" -eq 0 ] || die "run as root (the root filesystem holds files owned by root and by 1337)"
for tool in dpkg-deb dpkg-query apt-get ldd strip buildah; do
	command -v "$tool" >/dev/null || die "$tool is not installed (scripts/bootstrap.sh installs it)"
done

[ -x "$BUILD/shuntd" ] && [ -x "$BUILD/shuntctl" ] ||
	die "$BUILD/shuntd and $BUILD/shuntctl not found: build first (cmake --build $BUILD)"
BINS=("$BUILD/shuntd" "$BUILD/shuntctl")
if [ -x "$BUILD/shunt-ca" ] && [ "$CA" != no ]; then
	BINS+=("$BUILD/shunt-ca")
elif [ "$CA" = yes ]; then
	die "--with-ca: $BUILD/shunt-ca not found (build the shunt-ca target first)"
fi
VERSION=$("$BUILD/shuntd" --version | awk '{print $2}')
TAG=${TAG:-shunt:$VERSION}
OUT=${OUT:-$BUILD/shunt-$VERSION-$FORMAT.tar}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/shunt-image.XXXXXX")
PROC_MOUNTED=
cleanup() {
	[ -z "$PROC_MOUNTED" ] || umount "$PROC_MOUNTED" || umount -l "$PROC_MOUNTED"
	rm -rf "$WORK"
}
trap cleanup EXIT
STAGE=$WORK/stage
ROOT=${ROOTFS_KEEP:-$WORK/rootfs}
# The .deb files of the installed versions, kept between runs and builds.
DEBS=${SHUNT_DEB_CACHE:-/var/cache/shunt/debs}
mkdir -p "$STAGE" "$DEBS"
rm -rf "$ROOT"
mkdir -p "$ROOT"

# ---- what the image must hold, as paths on this host ------------------------
XTABLES=/usr/lib/$ARCH_TRIPLET/xtables
TOOLS=(/usr/sbin/xtables-nft-multi /usr/bin/ip)
for t in "${TOOLS[@]}"; do [ -x "$t" ] || die "$t missing (install iptables and iproute2)"; done
mapfile -t MODULES < <(ls "$XTABLES"/*.so)
# libcurl is loaded at run time, not linked (userspace/core/curl.c): it and the
# libraries it needs go in like the xtables modules.
# awk reads to the end (no early exit): ldconfig would die of SIGPIPE, and
# pipefail would make that the script's exit (141)
CURL_SO=$(ldconfig -p | awk '$1 == "libcurl-gnutls.so.4" && /x86-64/ && !f {print $NF; f = 1}')
[ -n "$CURL_SO" ] || die "libcurl-gnutls.so.4 missing (install libcurl3-gnutls)"
MODULES+=("$CURL_SO")
mapfile -t LIBS < <(ldd "${BINS[@]}" "${TOOLS[@]}" "${MODULES[@]}" 2>/dev/null |
	awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\/.*ld-linux/ {print $1}' | sort -u)
grep -q "not found" <(ldd "${BINS[@]}" "${TOOLS[@]}" 2>&1) &&
	die "a library of the binaries is not installed here: $(ldd "${BINS[@]}" 2>&1 | grep 'not found' | head -1)"

# dpkg knows a file by the path its package ships (before or after the /usr
# merge): ask for both spellings of every file in one call.
alt_path() {
	case "$1" in /usr/*) echo "${1#/usr}" ;; *) echo "/usr$1" ;; esac
}
declare -A PKG_BY_PATH=() PKG_OF=() SHIPPED=()
FILES=("${LIBS[@]}" "${TOOLS[@]}" "${MODULES[@]}")
queries=()
for f in "${FILES[@]}"; do queries+=("$f" "$(alt_path "$f")"); done
while IFS= read -r line; do
	pkgs=${line%%: /*}
	PKG_BY_PATH[${line#"$pkgs: "}]=${pkgs%%,*}
done < <(dpkg -S "${queries[@]}" 2>/dev/null | grep -v '^diversion' || true)
for f in "${FILES[@]}"; do
	for q in "$f" "$(alt_path "$f")"; do
		if [ -n "${PKG_BY_PATH[$q]:-}" ]; then
			PKG_OF[$f]=${PKG_BY_PATH[$q]}
			SHIPPED[$f]=$q
			break
		fi
	done
	[ -n "${PKG_OF[$f]:-}" ] || die "no Debian package owns $f: the image takes files from packages only"
done
mapfile -t PKGS < <(printf '%s\n' "${PKG_OF[@]}" | sort -u)

# ---- the packages' files -------------------------------------------------------
# The installed versions' .deb files: from apt's cache, else one apt-get
# download for all; a version the mirror no longer has (a newer stable update
# replaced it) is taken at the mirror's version, said in one line.
declare -A DEB=()
want=()
for pkg in "${PKGS[@]}"; do
	name=${pkg%%:*}
	ver=$(dpkg-query -W -f='${Version}' "$pkg")
	arch=$(dpkg-query -W -f='${Architecture}' "$pkg")
	file=${name}_${ver//:/%3a}_${arch}.deb
	DEB[$name]=$DEBS/$file
	if [ ! -f "$DEBS/$file" ] && [ -f "/var/cache/apt/archives/$file" ]; then
		cp "/var/cache/apt/archives/$file" "$DEBS/"
	fi
	if [ ! -f "$DEBS/$file" ]; then
		other=$(ls -t "$DEBS/${name}_"*"_$arch.deb" 2>/dev/null | head -1 || true)
		if [ -n "$other" ]; then
			DEB[$name]=$other # an earlier run fell back to the mirror's version
		else
			want+=("$name:$arch=$ver")
		fi
	fi
done
if [ ${#want[@]} -gt 0 ] && ! (cd "$DEBS" && apt-get download -qq "${want[@]}" >/dev/null 2>&1); then
	for spec in "${want[@]}"; do
		name=${spec%%:*}
		(cd "$DEBS" && apt-get download -qq "$spec" >/dev/null 2>&1) && continue
		(cd "$DEBS" && apt-get download -qq "${spec%%=*}" >/dev/null 2>&1) ||
			die "apt-get download ${spec%%=*} failed (is the mirror in /etc/apt/sources.list.d reachable?)"
		echo "build-image: ${spec%%=*}: installed version ${spec#*=} is gone from the mirror; the mirror's version is used" >&2
	done
fi
for pkg in "${PKGS[@]}"; do
	name=${pkg%%:*}
	[ -f "${DEB[$name]}" ] || DEB[$name]=$(ls -t "$DEBS/${name}_"*.deb | head -1)
	mkdir -p "$STAGE/$name"
	dpkg-deb -x "${DEB[$name]}" "$STAGE/$name"
	if [ -f "$STAGE/$name/usr/share/doc/$name/copyright" ]; then
		install -D -m 0644 "$STAGE/$name/usr/share/doc/$name/copyright" \
			"$ROOT/usr/share/doc/$name/copyright"
	fi
done

# Merged /usr: /bin, /sbin, /lib, /lib64 are links into /usr.
usr_path() {
	case "$1" in
	/usr/*) echo "$1" ;;
	*) echo "/usr$1" ;;
	esac
}
mkdir -p "$ROOT"/usr/{bin,sbin,lib,lib64} "$ROOT"/{etc,tmp,run,proc,sys,dev,var/lib/shunt/ca}
for d in bin sbin lib lib64; do ln -s "usr/$d" "$ROOT/$d"; done

# Each file from its package's data, symlinks resolved inside the package.
for f in "${FILES[@]}"; do
	name=${PKG_OF[$f]%%:*}
	src=$STAGE/$name${SHIPPED[$f]}
	while [ -L "$src" ]; do
		t=$(readlink "$src")
		case "$t" in /*) src=$STAGE/$name$t ;; *) src=$(dirname "$src")/$t ;; esac
	done
	[ -f "$src" ] || die "${SHIPPED[$f]}: not in the data of package $name"
	dst=$ROOT$(usr_path "$f")
	mkdir -p "$(dirname "$dst")"
	cp "$src" "$dst"
done

# The names shuntd runs (iptables-restore ... resolve to the nft backend,
# as Debian's alternatives do).
for t in iptables ip6tables; do
	for s in "" -restore -save; do
		ln -sf xtables-nft-multi "$ROOT/usr/sbin/$t$s"
	done
done
for b in "${BINS[@]}"; do
	strip --strip-debug -o "$ROOT/usr/bin/$(basename "$b")" "$b"
done

cat >"$ROOT/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/usr/sbin/nologin
shunt:x:1337:1337:shunt proxy:/nonexistent:/usr/sbin/nologin
EOF
cat >"$ROOT/etc/group" <<'EOF'
root:x:0:
shunt:x:1337:
EOF
printf 'passwd: files\ngroup: files\nhosts: files dns\n' >"$ROOT/etc/nsswitch.conf"
chmod 1777 "$ROOT/tmp"
chown 1337:1337 "$ROOT/var/lib/shunt/ca"
chmod 0700 "$ROOT/var/lib/shunt/ca"

# Every binary and library loads with what the image holds (its own loader
# lists the dependencies: "not found" or a failure stops the build). /proc
# as a runtime gives it (sanitizer builds read /proc/self/maps).
mount -t proc proc "$ROOT/proc"
PROC_MOUNTED=$ROOT/proc
for f in "${BINS[@]##*/}" "${TOOLS[@]}" "${MODULES[@]}"; do
	case "$f" in /*) p=$(usr_path "$f") ;; *) p=/usr/bin/$f ;; esac
	out=$(chroot "$ROOT" /usr/lib64/ld-linux-x86-64.so.2 --list "$p" 2>&1) && ! grep -q "not found" <<<"$out" ||
		die "$p does not load inside the image: $(grep -m1 'not found' <<<"$out" || echo "$out" | head -1)"
done
chroot "$ROOT" /usr/bin/shuntd --version >/dev/null || die "/usr/bin/shuntd --version fails inside the image"
umount "$PROC_MOUNTED"
PROC_MOUNTED=

# ---- the image -----------------------------------------------------------------
rootfs_kib=$(du -sk "$ROOT" | cut -f1)
tar --numeric-owner -C "$ROOT" -cf "$WORK/rootfs.tar" .
export BUILDAH_ISOLATION=chroot
B=(buildah --root "$WORK/storage" --runroot "$WORK/run" --storage-driver vfs)
ctr=$("${B[@]}" from scratch)
"${B[@]}" add "$ctr" "$WORK/rootfs.tar" / >/dev/null # a tar keeps owners and modes
"${B[@]}" config --user 1337:1337 --entrypoint '["/usr/bin/shuntd"]' --cmd '' \
	--env PATH=/usr/sbin:/usr/bin --workingdir / --port 15001 --port 15002 --port 15003 \
	--label org.opencontainers.image.title=shunt \
	--label org.opencontainers.image.version="$VERSION" \
	--label org.opencontainers.image.description="shunt service-mesh data plane: ${BINS[*]##*/}" \
	"$ctr"
if [ "$FORMAT" = oci ]; then
	"${B[@]}" commit -q --format oci "$ctr" "$TAG" >/dev/null
	rm -f "$OUT"
	"${B[@]}" push -q "$TAG" "oci-archive:$OUT:$TAG"
else
	"${B[@]}" commit -q --format docker "$ctr" "$TAG" >/dev/null
	rm -f "$OUT"
	"${B[@]}" push -q "$TAG" "docker-archive:$OUT:$TAG"
fi
"${B[@]}" rm "$ctr" >/dev/null
"${B[@]}" rmi -a -f >/dev/null 2>&1 || true

archive_kib=$(du -k "$OUT" | cut -f1)
layers=$([ "$FORMAT" = oci ] && echo "layer gzip-compressed" || echo "layer uncompressed")
echo "image $TAG: $OUT ($FORMAT archive), archive $((archive_kib / 1024)).$(((archive_kib % 1024) * 10 / 1024)) MiB ($layers)," \
	"root filesystem $((rootfs_kib / 1024)).$(((rootfs_kib % 1024) * 10 / 1024)) MiB;" \
	"$(printf '%s ' "${BINS[@]##*/}")+ iptables-nft, ip; ${#PKGS[@]} Debian packages; user 1337"
