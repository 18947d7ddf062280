#!/usr/bin/env bash
# Prepare (once, cached) what the VM test bed boots: qemu, a Debian kernel and an
# initramfs. Run by integration/vm/run.sh; can be run alone:
#
#   integration/vm/prepare.sh
#
# Everything lands in $TRENV_CACHE/vm (default /var/cache/trenv/vm):
#   qemu/     Debian's qemu-system-x86 and the libraries this machine lacks, unpacked
#             with dpkg -x (installing qemu-system-x86 conflicts with the machine's
#             preinstalled qemu-utils from bookworm-backports); run with
#             LD_LIBRARY_PATH=qemu/usr/lib/x86_64-linux-gnu
#   kernel/   Debian's stock kernel (linux-image-amd64 of $TRENV_VM_KERNEL_SUITE,
#             default trixie: 6.12, the kernel of current distributions) with its
#             modules and a modules.dep made by depmod
#   initramfs.cpio.gz   busybox, the few modules needed to mount the host's root
#             over virtio-9p, and integration/vm/init
# Each part is rebuilt only when its inputs change (package versions, init script).
# The guest's root filesystem is the host's own (read-only over 9p, with a tmpfs
# overlay), so containerd, CRIU and the trenv binaries in the guest are exactly the
# ones integration/setup.sh installed and built here.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

VM_CACHE="$TRENV_CACHE/vm"
KERNEL_SUITE="${TRENV_VM_KERNEL_SUITE:-trixie}"
# Modules the initramfs loads (with their dependencies, in order) before it can mount
# the root: 9p over virtio and overlayfs. Everything else is loaded by the guest's
# modprobe from kernel/ once the root is up.
INITRAMFS_MODULES=(9pnet_virtio 9p overlay)

mkdir -p "$VM_CACHE"

# Host tools the preparation and the guest need.
need=()
for p in kmod cpio busybox-static e2fsprogs; do
    [[ -z "$(trenv_pkgs_missing "$p")" ]] || need+=("$p")
done
if ((${#need[@]})); then
    log "installing ${need[*]}"
    apt-get install -y --no-install-recommends "${need[@]}" >/dev/null
fi

# qemu-system-x86 of the system's suite, and the (recursive) dependencies that are not
# installed on this machine, unpacked into qemu/.
prepare_qemu() {
    local dir="$VM_CACHE/qemu" ver deps missing debs
    ver="$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')"
    [[ -n "$ver" && "$ver" != "(none)" ]] || die "qemu-system-x86 not in the system's apt lists (apt-get update?)"
    if [[ -f "$dir/.stamp" && "$(cat "$dir/.stamp")" == "$ver" ]]; then
        return 0
    fi
    log "unpacking qemu-system-x86 $ver and its missing dependencies into $dir"
    deps="$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances --no-pre-depends qemu-system-x86 |
        awk '/^[a-z0-9]/ {print $1}' | sort -u)"
    # shellcheck disable=SC2086 # word splitting intended
    missing="$(trenv_pkgs_missing $deps)"
    debs="$VM_CACHE/debs"
    rm -rf "$debs" "$dir.tmp"
    mkdir -p "$debs" "$dir.tmp"
    id _apt >/dev/null 2>&1 && chown _apt:root "$debs"
    # shellcheck disable=SC2086
    (cd "$debs" && apt-get download $missing >&2) || die "downloading qemu's packages failed"
    local d
    for d in "$debs"/*.deb; do
        dpkg -x "$d" "$dir.tmp"
    done
    LD_LIBRARY_PATH="$dir.tmp/usr/lib/x86_64-linux-gnu" "$dir.tmp/usr/bin/qemu-system-x86_64" --version >/dev/null ||
        die "the unpacked qemu does not run (missing library?): $(LD_LIBRARY_PATH="$dir.tmp/usr/lib/x86_64-linux-gnu" ldd "$dir.tmp/usr/bin/qemu-system-x86_64" | grep 'not found' | tr '\n' ' ')"
    rm -rf "$dir" "$debs"
    printf '%s\n' "$ver" >"$dir.tmp/.stamp"
    mv "$dir.tmp" "$dir"
}

# The kernel package linux-image-amd64 of $KERNEL_SUITE points at.
kernel_package() {
    trenv_apt_update "$KERNEL_SUITE"
    trenv_apt_cache "$KERNEL_SUITE" depends linux-image-amd64 |
        awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}

prepare_kernel() {
    local dir="$VM_CACHE/kernel" pkg deb release
    pkg="$(kernel_package)"
    [[ -n "$pkg" ]] || die "no linux-image package found for linux-image-amd64 in $KERNEL_SUITE"
    if [[ -f "$dir/.stamp" && "$(cat "$dir/.stamp")" == "$pkg" ]]; then
        return 0
    fi
    deb="$(trenv_apt_download "$KERNEL_SUITE" "$pkg" "$(trenv_apt_dir "$KERNEL_SUITE")/debs")"
    log "unpacking $pkg into $dir"
    rm -rf "$dir.tmp"
    dpkg -x "$deb" "$dir.tmp"
    release="${pkg#linux-image-}"
    [[ -d "$dir.tmp/usr/lib/modules/$release" ]] || die "$deb has no usr/lib/modules/$release"
    depmod -b "$dir.tmp/usr" "$release"
    printf '%s\n' "$release" >"$dir.tmp/release"
    printf '%s\n' "$pkg" >"$dir.tmp/.stamp"
    rm -rf "$dir"
    mv "$dir.tmp" "$dir"
    rm -f "$deb"
}

prepare_initramfs() {
    local out="$VM_CACHE/initramfs.cpio.gz" release key root m line ko n=0
    release="$(cat "$VM_CACHE/kernel/release")"
    key="$(cat "$VM_CACHE/kernel/.stamp") ${INITRAMFS_MODULES[*]} $(sha256sum "$TRENV_REPO/integration/vm/init" /bin/busybox | awk '{print $1}' | tr '\n' ' ')"
    if [[ -f "$out" && -f "$out.key" && "$(cat "$out.key")" == "$key" ]]; then
        return 0
    fi
    log "building $out"
    root="$(mktemp -d)"
    mkdir -p "$root"/{bin,dev,proc,sys,newroot,lower,upper,modules}
    cp /bin/busybox "$root/bin/busybox"
    ln -s busybox "$root/bin/sh"
    install -m 0755 "$TRENV_REPO/integration/vm/init" "$root/init"
    # Dependencies first, as modprobe orders them; decompressed (busybox insmod).
    : >"$root/modules/order"
    for m in "${INITRAMFS_MODULES[@]}"; do
        while read -r line; do
            [[ "$line" == insmod\ * ]] || continue
            ko="$(awk '{print $2}' <<<"$line")"
            grep -qxF "$(basename "$ko")" "$root/modules/order.src" 2>/dev/null && continue
            basename "$ko" >>"$root/modules/order.src"
            n=$((n + 1))
            case "$ko" in
            *.xz) xz -dc "$ko" >"$root/modules/$n.ko" ;;
            *.zst) zstd -dc "$ko" >"$root/modules/$n.ko" ;;
            *) cp "$ko" "$root/modules/$n.ko" ;;
            esac
            printf '%s.ko\n' "$n" >>"$root/modules/order"
        done < <(modprobe -d "$VM_CACHE/kernel/usr" -S "$release" --show-depends "$m")
    done
    ((n > 0)) || die "no modules found for ${INITRAMFS_MODULES[*]} in $VM_CACHE/kernel"
    (cd "$root" && find . | sort | cpio -o -H newc --quiet | gzip -1) >"$out.tmp"
    rm -rf "$root"
    mv "$out.tmp" "$out"
    printf '%s\n' "$key" >"$out.key"
}

prepare_qemu
prepare_kernel
prepare_initramfs
"$TRENV_REPO/integration/vm/kmod.sh"
log "VM test bed ready in $VM_CACHE (kernel $(cat "$VM_CACHE/kernel/release"), $(cat "$VM_CACHE/qemu/.stamp" | sed 's/^/qemu /'))"
