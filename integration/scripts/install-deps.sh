#!/usr/bin/env bash
# Install everything trenv's builds and integration tests need. Idempotent:
# each step is skipped when its result is already there and works.
#
#   integration/scripts/install-deps.sh
#
# Installs
#   - Debian 12 packages (runc, CNI plugins, iptables, busybox-static, CRIU's
#     build dependencies, protobuf-compiler, ...), only if some are missing;
#   - containerd 2.x  (Debian sid's containerd .deb, dpkg -x) in $TRENV_CACHE/containerd-2
#   - containerd 1.7  (Debian trixie's containerd .deb, dpkg -x) in $TRENV_CACHE/containerd-1.7
#   - CRIU >= 4.1     (built from trixie's criu source package) in $TRENV_CACHE/criu/criu,
#                     symlinked as /usr/local/sbin/criu
# Everything non-Debian-12 comes through apt with private configs (lib.sh), so
# the system's apt sources are not changed.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

[[ $(id -u) -eq 0 ]] || die "must run as root"

CRIU_MIN_VERSION=4.1
CRIU_SUITE="${TRENV_CRIU_SUITE:-trixie}"
CRIU_DIR="$TRENV_CACHE/criu"
CRIU_LINK=/usr/local/sbin/criu
# CRIU caches what it probed of the kernel ("kerndat", 23-31 ms per run) in
# RUNDIR/criu.kdat, and only when RUNDIR is a tmpfs (so that the cache dies with a
# reboot); Debian's /run is not always one. trenv's CRIU keeps it in a tmpfs of its
# own, mounted by setup.sh (docs/benchmarks.md, "Templates", has the measurement).
CRIU_RUNDIR=/run/trenv/criu
# CRIU links GnuTLS (TLS for its page server) and libnftables (the nftables network lock)
# when their headers are installed: 14 more shared objects whose loading and constructors
# cost every CRIU run ~2 ms of exec, and a restore ~5 ms in all (its forks copy all those
# mappings). trenv uses neither (no page server; network locks are iptables, CRIU's
# default, or skipped), so both are left out: NO_GNUTLS is CRIU's own switch, and a
# pkg-config that does not know libnftables hides it (criu-glue/patches/README.md).
CRIU_PKG_CONFIG="$CRIU_DIR/pkg-config-without-nftables"
CRIU_MAKE_FLAGS=("RUNDIR=$CRIU_RUNDIR" NO_GNUTLS=1 "PKG_CONFIG=$CRIU_PKG_CONFIG")
# trenv's patches to CRIU, applied in name order (criu-glue/patches/README.md says
# what each saves); their checksums are part of the build's identity.
CRIU_PATCHES_DIR="$TRENV_REPO/criu-glue/patches"

# What the installed CRIU must have been built with: make flags and patches.
criu_build_id() {
    printf '%s' "${CRIU_MAKE_FLAGS[*]}"
    local p
    for p in "$CRIU_PATCHES_DIR"/*.patch; do
        [[ -f "$p" ]] && printf ' %s' "$(basename "$p"):$(sha256sum "$p" | cut -c1-16)"
    done
    printf '\n'
}

APT_PACKAGES=(
    # runtimes, networking and tools used by the tests
    runc containernetworking-plugins iptables iproute2 busybox-static jq xz-utils fonts-dejavu-core
    debootstrap # the pyfn test image (build-images.sh)
    # toolchain (CRIU, the static pause binary, Rust crates with C parts)
    gcc make libc6-dev pkg-config patch
    # CRIU's build dependencies (from its Debian source package, less the docs)
    # (less libgnutls28-dev and libnftables-dev: trenv builds CRIU without them, see above)
    libprotobuf-dev libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
    python3-protobuf libcap-dev libnl-3-dev libnet1-dev libbsd-dev uuid-dev
)

install_apt_packages() {
    local missing
    mapfile -t missing < <(trenv_pkgs_missing "${APT_PACKAGES[@]}")
    if ((${#missing[@]} == 0)); then
        log "apt packages: all ${#APT_PACKAGES[@]} present"
        return 0
    fi
    log "apt packages missing: ${missing[*]}"
    if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
        log "system apt lists empty: apt-get update"
        apt-get update
    fi
    if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
        log "install failed; apt-get update and retry"
        apt-get update
        apt-get install -y --no-install-recommends "${missing[@]}"
    fi
    mapfile -t missing < <(trenv_pkgs_missing "${APT_PACKAGES[@]}")
    ((${#missing[@]} == 0)) || die "still missing after install: ${missing[*]}"
}

# install_containerd VERSION SUITE: containerd from SUITE's .deb into
# $TRENV_CACHE/containerd-VERSION (binaries in usr/bin). The major.minor of the
# binary must start with VERSION.
install_containerd() {
    local want="$1" suite="$2" dest="$TRENV_CACHE/containerd-$1" deb got
    if got="$(containerd_version "$dest")" && [[ "$got" == "$want".* ]]; then
        log "containerd $want: $got already in $dest"
        return 0
    fi
    deb="$(trenv_apt_download "$suite" containerd "$(trenv_apt_dir "$suite")/debs")"
    log "unpacking $(basename "$deb") into $dest"
    rm -rf "$dest.tmp"
    dpkg -x "$deb" "$dest.tmp"
    got="$(containerd_version "$dest.tmp")" || die "containerd from $deb does not run"
    [[ "$got" == "$want".* ]] || die "containerd from $suite is $got, expected $want.x"
    rm -rf "$dest"
    mv "$dest.tmp" "$dest"
    log "containerd $want: installed $got"
}

# containerd_version PREFIX: print the version of PREFIX/usr/bin/containerd
# (fails if it does not run). `containerd --version` prints
# "containerd github.com/containerd/containerd[/v2] 2.1.9~ds1 <rev>".
containerd_version() {
    local bin="$1/usr/bin/containerd" out
    [[ -x "$bin" && -x "$1/usr/bin/ctr" ]] || return 1
    out="$("$bin" --version 2>/dev/null)" || return 1
    awk '{v = $3; sub(/^v/, "", v); sub(/[~+].*/, "", v); print v}' <<<"$out"
}

criu_version() {
    local out
    out="$("$1" --version 2>/dev/null)" || return 1
    awk '/^Version:/ {print $2}' <<<"$out"
}

install_criu() {
    local ver
    if ver="$(criu_version "$CRIU_DIR/criu")" && version_ge "$ver" "$CRIU_MIN_VERSION" &&
        [[ "$(cat "$CRIU_DIR/build-flags" 2>/dev/null)" == "$(criu_build_id)" ]]; then
        log "criu: $ver already in $CRIU_DIR/criu ($(criu_build_id))"
    else
        build_criu
        ver="$(criu_version "$CRIU_DIR/criu")" || die "built criu does not run"
        version_ge "$ver" "$CRIU_MIN_VERSION" || die "built criu $ver < $CRIU_MIN_VERSION"
        log "criu: built $ver"
    fi
    if [[ "$(readlink "$CRIU_LINK" 2>/dev/null || true)" != "$CRIU_DIR/criu" ]]; then
        log "symlink $CRIU_LINK -> $CRIU_DIR/criu"
        mkdir -p "$(dirname "$CRIU_LINK")"
        ln -sfn "$CRIU_DIR/criu" "$CRIU_LINK"
    fi
    # Log what this kernel supports; warnings (e.g. about optional features)
    # are expected and do not fail the install.
    local out rc=0
    out="$("$CRIU_DIR/criu" check 2>&1)" || rc=$?
    printf '%s\n' "$out" | sed "s/^/[$TRENV_LOG_NAME]   criu check: /" >&2
    ((rc == 0)) || warn "criu check exited $rc (see above)"
}

# Build CRIU from the upstream tarball (.orig.tar.xz) of $CRIU_SUITE's criu source
# package. Only the .orig.tar.xz is fetched: apt-get source would also fetch the
# .debian.tar.xz, which has been seen to 404 on this mirror, and we need none of
# Debian's packaging. The URI and SHA256 come from the signed Sources index
# (apt-get source --print-uris); apt-helper downloads through the configured
# mirror/proxy and checks the hash.
build_criu() {
    local line uri name hash src="$CRIU_DIR/src" tarball srcdir
    trenv_apt_update "$CRIU_SUITE"
    line="$(trenv_apt "$CRIU_SUITE" source --print-uris criu 2>/dev/null | grep -E "^'[^']*\.orig\.tar\.[a-z0-9]+' " | head -n1)" || true
    if [[ -z "$line" ]]; then
        trenv_apt_update "$CRIU_SUITE" force
        line="$(trenv_apt "$CRIU_SUITE" source --print-uris criu 2>/dev/null | grep -E "^'[^']*\.orig\.tar\.[a-z0-9]+' " | head -n1)" ||
            die "criu source not found in $CRIU_SUITE"
    fi
    uri="$(awk '{print $1}' <<<"$line" | tr -d "'")"
    name="$(awk '{print $2}' <<<"$line")"
    hash="$(awk '{print $4}' <<<"$line")"
    [[ "$hash" == SHA256:* ]] || die "no SHA256 for $name in the Sources index: $line"
    mkdir -p "$src"
    id _apt >/dev/null 2>&1 && chown _apt:root "$src"
    tarball="$src/$name"
    if [[ ! -s "$tarball" ]] || [[ "$(sha256sum "$tarball" | awk '{print $1}')" != "${hash#SHA256:}" ]]; then
        log "downloading $name"
        rm -f "$tarball"
        if ! /usr/lib/apt/apt-helper -c "$(trenv_apt_dir "$CRIU_SUITE")/apt.conf" download-file "$uri" "$tarball" "$hash" >&2; then
            # stale lists can point at a file that has since left the pool
            die "download of $uri failed (try: rm -rf $(trenv_apt_dir "$CRIU_SUITE")/lists and re-run)"
        fi
    fi
    [[ "$(sha256sum "$tarball" | awk '{print $1}')" == "${hash#SHA256:}" ]] || die "$name: SHA256 mismatch"
    rm -rf "$CRIU_DIR/build"
    mkdir -p "$CRIU_DIR/build"
    tar -C "$CRIU_DIR/build" -xf "$tarball"
    srcdir="$(find "$CRIU_DIR/build" -mindepth 1 -maxdepth 1 -type d | head -n1)"
    [[ -f "$srcdir/Makefile" ]] || die "unexpected layout of $name"
    local p
    for p in "$CRIU_PATCHES_DIR"/*.patch; do
        [[ -f "$p" ]] || continue
        log "applying $(basename "$p")"
        patch -s -p1 -d "$srcdir" <"$p" || die "patch $p does not apply to $name"
    done
    cat >"$CRIU_PKG_CONFIG" <<'SCRIPT'
#!/bin/sh
# pkg-config for building CRIU without libnftables (integration/scripts/install-deps.sh)
for arg in "$@"; do
    case "$arg" in libnftables*) exit 1 ;; esac
done
exec pkg-config "$@"
SCRIPT
    chmod 0755 "$CRIU_PKG_CONFIG"
    log "building criu in $srcdir (make -j$(nproc) criu ${CRIU_MAKE_FLAGS[*]})"
    local t0=$SECONDS
    if ! make -C "$srcdir" -j"$(nproc)" criu "${CRIU_MAKE_FLAGS[@]}" >"$CRIU_DIR/build.log" 2>&1; then
        tail -n 40 "$CRIU_DIR/build.log" >&2
        die "criu build failed (log: $CRIU_DIR/build.log)"
    fi
    log "criu built in $((SECONDS - t0)) s"
    install -m 0755 "$srcdir/criu/criu" "$CRIU_DIR/criu.new"
    mv -f "$CRIU_DIR/criu.new" "$CRIU_DIR/criu"
    criu_build_id >"$CRIU_DIR/build-flags"
    rm -rf "$CRIU_DIR/build"
}

summary() {
    log "summary:"
    log "  containerd 2.x : $("$TRENV_CACHE/containerd-2/usr/bin/containerd" --version)"
    log "  containerd 1.7 : $("$TRENV_CACHE/containerd-1.7/usr/bin/containerd" --version)"
    log "  runc           : $(runc --version | head -n1) (Debian $(dpkg-query -W -f='${Version}' runc))"
    log "  criu           : $(criu_version "$CRIU_DIR/criu") ($CRIU_LINK -> $CRIU_DIR/criu)"
    log "  CNI plugins    : Debian $(dpkg-query -W -f='${Version}' containernetworking-plugins) in /usr/lib/cni"
    log "  busybox-static : Debian $(dpkg-query -W -f='${Version}' busybox-static)"
}

main() {
    local t0=$SECONDS
    mkdir -p "$TRENV_CACHE"
    install_apt_packages
    install_containerd 2 "${TRENV_CONTAINERD2_SUITE:-sid}"
    install_containerd 1.7 "${TRENV_CONTAINERD17_SUITE:-trixie}"
    install_criu
    summary
    log "done in $((SECONDS - t0)) s (cache: $TRENV_CACHE)"
}

main "$@"
