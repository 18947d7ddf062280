#!/usr/bin/env bash
# Build (once, cached) the kernel side of memory templates, kernel-patches/trenv-mmt,
# for the VM test bed's kernel. Run by integration/vm/prepare.sh; can be run alone:
#
#   integration/vm/kmod.sh
#
# The module is built as DKMS would on a Debian host running that kernel: in a build
# root of the kernel's own suite (debootstrap, cached in $TRENV_CACHE/vm/buildroot)
# with its linux-headers package and the compiler it was built with (gcc-14 for
# trixie's 6.12; this host's gcc and glibc are older than the headers' tools need).
# Output: $TRENV_CACHE/vm/kmod/trenv_mmt.ko, rebuilt when the kernel or the module's
# sources change. The build root takes about a minute and 0.9 GB the first time; the
# module a few seconds.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

VM_CACHE="$TRENV_CACHE/vm"
KERNEL_SUITE="${TRENV_VM_KERNEL_SUITE:-trixie}"
SRC="$TRENV_REPO/kernel-patches/trenv-mmt"
ROOT="$VM_CACHE/buildroot"
OUT="$VM_CACHE/kmod"

release="$(cat "$VM_CACHE/kernel/release" 2>/dev/null)" ||
    die "no kernel in $VM_CACHE/kernel: run integration/vm/prepare.sh"
headers="linux-headers-$release"

prepare_buildroot() {
    if [[ -f "$ROOT/.stamp" && "$(cat "$ROOT/.stamp")" == "$headers" ]]; then
        return 0
    fi
    [[ -n "$(trenv_pkgs_missing debootstrap)" ]] && apt-get install -y --no-install-recommends debootstrap >/dev/null
    trenv_apt_update "$KERNEL_SUITE"
    log "making a $KERNEL_SUITE build root with $headers in $ROOT (about a minute, once)"
    rm -rf "$ROOT.tmp"
    debootstrap --variant=minbase --keyring="$(trenv_apt_keyring "$KERNEL_SUITE")" \
        --include="make,libc6-dev,$headers" "$KERNEL_SUITE" "$ROOT.tmp" "$(trenv_mirror_uri)" \
        >"$VM_CACHE/buildroot.log" 2>&1 ||
        die "debootstrap of $KERNEL_SUITE failed: $(tail -n 5 "$VM_CACHE/buildroot.log")"
    rm -rf "$ROOT.tmp"/var/cache/apt/archives/*.deb "$ROOT.tmp"/var/lib/apt/lists/*
    [[ -d "$ROOT.tmp/usr/src/$headers" ]] || die "the build root has no /usr/src/$headers"
    printf '%s\n' "$headers" >"$ROOT.tmp/.stamp"
    rm -rf "$ROOT"
    mv "$ROOT.tmp" "$ROOT"
}

build_module() {
    local key
    key="$headers $(cat "$SRC"/* | sha256sum | awk '{print $1}')"
    if [[ -f "$OUT/trenv_mmt.ko" && "$(cat "$OUT/.key" 2>/dev/null)" == "$key" ]]; then
        return 0
    fi
    log "building trenv_mmt.ko for $release"
    rm -rf "$ROOT/build" "$OUT.tmp"
    mkdir -p "$ROOT/build" "$OUT.tmp"
    cp "$SRC"/* "$ROOT/build/"
    chroot "$ROOT" make -C /build KDIR="/usr/src/$headers" >"$OUT.tmp/build.log" 2>&1 ||
        die "building trenv_mmt.ko failed: $(tail -n 20 "$OUT.tmp/build.log")"
    # A warning is a defect in kernel code: refuse it.
    if grep -E 'warning:|error:' "$OUT.tmp/build.log" >&2; then
        die "building trenv_mmt.ko gave warnings (above)"
    fi
    cp "$ROOT/build/trenv_mmt.ko" "$OUT.tmp/"
    printf '%s\n' "$key" >"$OUT.tmp/.key"
    rm -rf "$OUT" "$ROOT/build"
    mv "$OUT.tmp" "$OUT"
}

prepare_buildroot
build_module
log "trenv_mmt.ko for $release in $OUT"
