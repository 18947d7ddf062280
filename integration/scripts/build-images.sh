#!/usr/bin/env bash
# Build trenv's test images locally (no Docker, no network) and import them.
#
#   build-images.sh [build]               build the OCI layout tarballs
#   build-images.sh fnbase                build only the real functions' base layer
#   build-images.sh import VERSION|SOCKET build (if needed), then import into the
#                                         containerd at that address, namespaces
#                                         default and k8s.io (the CRI's)
#   build-images.sh smoke VERSION|SOCKET  ctr run the images with runc (sanity check)
#
# TRENV_IMAGES_SKIP="NS/NAME ..." leaves those images out of the import (the VM test
# bed skips what its plan does not use: unpacking is slow under emulation).
# VERSION is 2 or 1.7 (the instances of containerd.sh); SOCKET a containerd
# gRPC socket path.
#
# Images ($TRENV_CACHE/images/NAME.oci.tar, OCI image layout, one gzip layer):
#   docker.io/trenv/busybox:latest  Debian's busybox-static: /bin/busybox, a
#                                   symlink per applet, /etc/passwd+group with
#                                   root and nobody, /tmp; Cmd ["sh"]
#   docker.io/trenv/pause:latest    /pause, a static C program that sleeps until
#                                   SIGTERM/SIGINT (exit 0) and reaps zombies;
#                                   the CRI sandbox image
#   docker.io/trenv/pyfn:latest     Debian bookworm minbase + python3
#                                   (debootstrap from the system's mirror,
#                                   cached in $TRENV_CACHE/rootfs, trimmed),
#                                   /usr/local/bin/pyfn.py from
#                                   integration/tests/fixtures: a function
#                                   with FN_STATE_MB (200) MiB of state, see
#                                   there; Entrypoint python3 -u pyfn.py
#   docker.io/trenv/fn-NAME:latest  the real functions of integration/functions/
#                                   (one per directory NAME): two layers, the
#                                   shared fnbase layer (bookworm minbase +
#                                   python3, its web and function libraries and
#                                   nodejs, debootstrapped like pyfn's) and
#                                   NAME/rootfs/ with NAME/config.json as the
#                                   image config; imported into the default
#                                   namespace only (tests copy them into theirs)
# Output is deterministic (fixed mtimes, owners, order; gzip -n): the same
# inputs give the same digests, and a re-run with unchanged inputs does nothing.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

IMAGES_DIR="$TRENV_CACHE/images"
BUSYBOX_REF=docker.io/trenv/busybox:latest
PAUSE_REF=docker.io/trenv/pause:latest
PYFN_REF=docker.io/trenv/pyfn:latest
PYFN_SRC="$TRENV_REPO/integration/tests/fixtures/pyfn.py"
# Debootstrapped rootfs: `debootstrap --variant=$DEB_VARIANT --include=INCLUDE
# $DEB_SUITE`, cached untrimmed in $TRENV_CACHE/rootfs/NAME-$DEB_SUITE with its
# key in .key.
DEB_SUITE=bookworm
DEB_VARIANT=minbase
PYFN_INCLUDE=python3
# The real functions' shared base: Python with the libraries of
# integration/functions/*, the WSGI servers they use, and Node.js; and jemalloc, which
# functions.rs preloads into a function to test templates of allocators that take purged
# memory for zeros.
FNBASE_INCLUDE=python3,python3-flask,python3-waitress,gunicorn,python3-jinja2,python3-chameleon,python3-pyaes,python3-pil,python3-igraph,nodejs,libjemalloc2
FUNCTIONS_DIR="$TRENV_REPO/integration/functions"
FN_PREFIX=docker.io/trenv/fn-
# Every directory of integration/functions with a config.json is a function;
# TRENV_FUNCTIONS=0 leaves them all out (the VM test bed does not use them).
FUNCTION_NAMES=()
if [[ "${TRENV_FUNCTIONS:-1}" != 0 ]]; then
    for f in "$FUNCTIONS_DIR"/*/config.json; do
        [[ -f "$f" ]] && FUNCTION_NAMES+=("fn-$(basename "$(dirname "$f")")")
    done
fi
IMAGE_NAMES=(busybox pause pyfn "${FUNCTION_NAMES[@]}")
NAMESPACES=(default k8s.io)
# Bump to force a rebuild when the image recipe changes in a way the input
# hash does not see.
RECIPE_VERSION=2
ARCH="$(dpkg --print-architecture)"
EPOCH="1970-01-01T00:00:00Z"
WORK_DIR=""
trap '[[ -z "$WORK_DIR" ]] || rm -rf "$WORK_DIR"' EXIT
# File modes must not depend on the caller's umask (deterministic layers).
umask 022

usage() {
    echo "usage: $0 [build] | import VERSION|SOCKET | smoke VERSION|SOCKET" >&2
    exit 2
}

sha256_of() { sha256sum "$1" | awk '{print $1}'; }

# Deterministic tar of directory $1 (its content, as ./...) to stdout.
det_tar() {
    tar -C "$1" --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
        --format=gnu -cf - .
}

make_busybox_rootfs() {
    local root="$1" bb=/bin/busybox applet dir
    [[ -x "$bb" ]] || die "$bb missing: install busybox-static (install-deps.sh)"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,root,home,proc,sys,dev,run,var/tmp,tmp}
    cp "$bb" "$root/bin/busybox"
    # `busybox --list-full` names each applet with its usual directory
    # (bin/sh, usr/bin/awk, sbin/ip, ...); make each a symlink to /bin/busybox.
    while read -r applet; do
        [[ -n "$applet" && "$applet" != bin/busybox ]] || continue
        dir="$(dirname "$applet")"
        mkdir -p "$root/$dir"
        ln -sf /bin/busybox "$root/$applet"
    done < <("$bb" --list-full | sort)
    [[ -L "$root/bin/sh" ]] || die "busybox has no sh applet"
    cat >"$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat >"$root/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
    chmod 1777 "$root/tmp" "$root/var/tmp"
    chmod 0700 "$root/root"
}

PAUSE_C='/* trenv pause: the CRI sandbox process. Sleeps until SIGTERM or SIGINT
 * (exit 0) and, as PID 1 of a shared PID namespace, reaps orphaned children. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_term(int sig) { (void)sig; _exit(0); }
static void on_chld(int sig) {
    (void)sig;
    while (waitpid(-1, 0, WNOHANG) > 0) {}
}

int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = on_term;
    sigaction(SIGTERM, &sa, 0);
    sigaction(SIGINT, &sa, 0);
    sa.sa_handler = on_chld;
    sa.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, 0);
    for (;;) pause();
}
'

make_pause_rootfs() {
    local root="$1" src
    mkdir -p "$root"
    src="$(dirname "$root")/pause.c"
    printf '%s' "$PAUSE_C" >"$src"
    if gcc -static -Os -s -Wall -o "$root/pause" "$src" 2>"$root/../gcc.log"; then
        return 0
    fi
    # Fallback without a static C toolchain: busybox sh with a trap.
    warn "gcc -static failed ($(head -n1 "$root/../gcc.log")); using a busybox-based pause"
    rm -f "$root/pause"
    mkdir -p "$root/bin"
    cp /bin/busybox "$root/bin/busybox"
    ln -sf busybox "$root/bin/sh"
    ln -sf busybox "$root/bin/sleep"
    printf '#!/bin/sh\ntrap "exit 0" TERM INT\nwhile :; do sleep 3600 & wait $!; done\n' >"$root/pause"
    chmod 0755 "$root/pause"
}

# Key of the cached debootstrap result NAME with packages INCLUDE: everything
# that selects its content (the packages are whatever the mirror serves for the
# suite when it runs).
rootfs_key() {
    printf 'debootstrap %s variant=%s include=%s suite=%s arch=%s mirror=%s\n' \
        "$(dpkg-query -W -f='${Version}' debootstrap 2>/dev/null || echo none)" \
        "$DEB_VARIANT" "$1" "$DEB_SUITE" "$ARCH" "$(trenv_mirror_uri)"
}

rootfs_dir() { printf '%s\n' "$TRENV_CACHE/rootfs/$1-$DEB_SUITE"; }

# Unmount whatever an interrupted debootstrap left mounted below $1 (proc,
# sys, ...), deepest first, so that removing $1 stays inside it.
umount_below() {
    local dir m
    dir="$(realpath -m "$1")"
    awk -v d="$dir/" 'index($2, d) == 1 {print $2}' /proc/self/mounts | sort -r |
        while read -r m; do umount -l "$m" || true; done
}

# debootstrap NAME INCLUDE: the untrimmed rootfs in $(rootfs_dir NAME),
# debootstrapped only when missing or when its key changed.
debootstrap_rootfs() {
    local name="$1" include="$2" key dir tmp
    key="$(rootfs_key "$include")"
    dir="$(rootfs_dir "$name")"
    tmp="$dir.tmp"
    if [[ -x "$dir/usr/bin/python3" && "$(cat "$dir.key" 2>/dev/null)" == "$key" ]]; then
        log "$name rootfs: cached ($dir)"
        return 0
    fi
    command -v debootstrap >/dev/null || die "debootstrap missing: run install-deps.sh"
    mkdir -p "$(dirname "$dir")"
    umount_below "$tmp"
    rm -rf --one-file-system "$tmp"
    log "$name rootfs: debootstrap --variant=$DEB_VARIANT --include=$include $DEB_SUITE ($(trenv_mirror_uri)); takes a minute or two"
    if ! debootstrap --variant="$DEB_VARIANT" --include="$include" \
        "$DEB_SUITE" "$tmp" "$(trenv_mirror_uri)" >"$tmp.log" 2>&1; then
        sed "s/^/[$TRENV_LOG_NAME]   /" "$tmp.log" | tail -n 30 >&2
        umount_below "$tmp"
        die "debootstrap failed (log: $tmp.log, debootstrap.log in $tmp/debootstrap)"
    fi
    umount_below "$tmp"
    [[ -x "$tmp/usr/bin/python3" ]] || die "debootstrap left no /usr/bin/python3 in $tmp"
    umount_below "$dir"
    rm -rf --one-file-system "$dir" "$dir.key"
    mv "$tmp" "$dir"
    mv "$tmp.log" "$dir.log"
    printf '%s\n' "$key" >"$dir.key"
    log "$name rootfs: done ($(du -sh "$dir" | cut -f1))"
}

# A copy of debootstrapped rootfs NAME in $2, trimmed to what a container
# image needs, with the Python standard library and packages precompiled.
make_debian_rootfs() {
    local name="$1" root="$2" pyver
    cp -a "$(rootfs_dir "$name")/." "$root/"
    # No device nodes or host leftovers: runtimes provide /dev, /proc, /sys.
    rm -rf "${root:?}"/{dev,proc,sys,tmp,run,var/tmp}
    mkdir -p "$root"/{dev,proc,sys,tmp,run/lock,var/tmp}
    chmod 0755 "$root"/{dev,proc,sys,run}
    chmod 1777 "$root/tmp" "$root/var/tmp" "$root/run/lock"
    # Trim: documentation, manuals, translations (C only), apt and debconf
    # state that only a package manager needs, logs, caches.
    rm -rf "${root:?}"/usr/share/{doc,man,info,lintian,linda}
    mkdir -p "$root/usr/share/doc"
    find "$root/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias ! -name 'C' ! -name 'C.*' \
        -exec rm -rf {} +
    if [[ -d "$root/usr/lib/locale" ]]; then
        find "$root/usr/lib/locale" -mindepth 1 -maxdepth 1 ! -name 'C' ! -name 'C.*' -exec rm -rf {} +
    fi
    rm -rf "${root:?}"/var/lib/apt/lists/* "${root:?}"/var/cache/apt/* \
        "${root:?}"/var/cache/debconf/*-old "${root:?}"/var/lib/dpkg/*-old \
        "${root:?}"/var/cache/ldconfig/aux-cache "${root:?}"/debootstrap
    find "$root/var/log" -mindepth 1 \( -type f -o -type l \) -delete
    # Host files debootstrap copies in; the runtime (or CRI) provides its own.
    : >"$root/etc/resolv.conf"
    printf 'localhost\n' >"$root/etc/hostname"
    chmod 0644 "$root/etc/resolv.conf" "$root/etc/hostname"
    # The layer's mtimes are all 0 (det_tar), so the timestamp-validated .pyc
    # files py3compile wrote would be stale: every start would recompile the
    # stdlib. Hash-based, unchecked .pyc files do not depend on mtimes.
    pyver="$(chroot "$root" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    find "$root/usr/lib/python3" "$root/usr/lib/python$pyver" -name __pycache__ -type d -prune \
        -exec rm -rf {} +
    chroot "$root" python3 -m compileall -q --invalidation-mode unchecked-hash \
        "/usr/lib/python$pyver" /usr/lib/python3 >/dev/null ||
        die "compileall in the $name rootfs failed"
}

make_pyfn_rootfs() {
    local root="$1"
    debootstrap_rootfs pyfn "$PYFN_INCLUDE"
    make_debian_rootfs pyfn "$root"
    install -m 0755 "$PYFN_SRC" "$root/usr/local/bin/pyfn.py"
    chroot "$root" python3 -m py_compile "/usr/local/bin/pyfn.py" ||
        die "$PYFN_SRC does not compile with the image's python3"
    rm -rf "${root:?}/usr/local/bin/__pycache__"
}

# Inputs of an image: the recipe (this script) and the files it copies.
input_hash() {
    local name="$1"
    {
        echo "recipe $RECIPE_VERSION arch $ARCH"
        sha256sum "${BASH_SOURCE[0]}" | awk '{print $1}'
        sha256sum /bin/busybox | awk '{print $1}'
        if [[ "$name" == pause ]]; then gcc --version 2>/dev/null | head -n1 || true; fi
        if [[ "$name" == pyfn ]]; then
            rootfs_key "$PYFN_INCLUDE"
            sha256sum "$PYFN_SRC" | awk '{print $1}'
        fi
        if [[ "$name" == fn-* ]]; then
            rootfs_key "$FNBASE_INCLUDE"
            # The function's files, names and modes included.
            (cd "$FUNCTIONS_DIR/${name#fn-}" && find . -type f -print0 | sort -z |
                xargs -0 stat -c '%n %a' && find . -type f -print0 | sort -z | xargs -0 sha256sum)
        fi
    } | sha256sum | awk '{print $1}'
}

# Layers of the image being built (add_layer), in order.
LAYER_BLOBS=() LAYER_SIZES=() DIFF_IDS=()

# add_layer FILE.tar LAYOUT: gzip'd into LAYOUT's blobs as the image's next
# layer (uncompressed digest = diff_id, gzip'd digest = blob).
add_layer() {
    local tar="$1" layout="$2" diff_id digest
    diff_id="sha256:$(sha256_of "$tar")"
    gzip -n -9 <"$tar" >"$tar.gz"
    digest="$(sha256_of "$tar.gz")"
    LAYER_SIZES+=("$(stat -c %s "$tar.gz")")
    mv "$tar.gz" "$layout/blobs/sha256/$digest"
    LAYER_BLOBS+=("sha256:$digest")
    DIFF_IDS+=("$diff_id")
}

# The fnbase layer, built and gzip'd once for every function image: cached as
# $IMAGES_DIR/fnbase.layer.tar.gz with its diff_id in .diffid, keyed by its
# inputs in .inputs.
FNBASE_LAYER="$IMAGES_DIR/fnbase.layer.tar.gz"
fnbase_layer() {
    local out="$FNBASE_LAYER" key work
    key="$(printf 'recipe %s %s\n%s\n' "$RECIPE_VERSION" "$(sha256_of "${BASH_SOURCE[0]}")" \
        "$(rootfs_key "$FNBASE_INCLUDE")" | sha256sum | awk '{print $1}')"
    if [[ -s "$out" && -s "$out.diffid" && "$(cat "$out.inputs" 2>/dev/null)" == "$key" ]]; then
        return 0
    fi
    debootstrap_rootfs fnbase "$FNBASE_INCLUDE"
    log "fnbase layer: trimming and packing the function base"
    work="$(mktemp -d "$IMAGES_DIR/.build-fnbase.XXXXXX")"
    mkdir "$work/rootfs"
    make_debian_rootfs fnbase "$work/rootfs"
    mkdir -p "$work/rootfs/srv/fn"
    det_tar "$work/rootfs" >"$work/layer.tar"
    printf 'sha256:%s\n' "$(sha256_of "$work/layer.tar")" >"$out.diffid"
    gzip -n -6 <"$work/layer.tar" >"$out.tmp"
    rm -rf "$work"
    mv -f "$out.tmp" "$out"
    printf '%s\n' "$key" >"$out.inputs"
    log "fnbase layer: $(du -h "$out" | cut -f1) gzip'd"
}

# build_image NAME REF: $IMAGES_DIR/NAME.oci.tar with its manifest digest in
# NAME.digest and its snapshot chain ID in NAME.chainid, skipped when
# NAME.inputs matches.
build_image() {
    local name="$1" ref="$2" out="$IMAGES_DIR/$1.oci.tar" hash work layout base
    hash="$(input_hash "$name")"
    if [[ -s "$out" && -s "$IMAGES_DIR/$name.digest" && -s "$IMAGES_DIR/$name.chainid" &&
        "$(cat "$IMAGES_DIR/$name.inputs" 2>/dev/null)" == "$hash" ]]; then
        log "$ref: up to date ($out, $(cat "$IMAGES_DIR/$name.digest"))"
        return 0
    fi
    log "building $ref"
    work="$(mktemp -d "$IMAGES_DIR/.build-$name.XXXXXX")"
    WORK_DIR="$work" # removed by the EXIT trap if we fail
    layout="$work/layout"
    mkdir -p "$work/rootfs" "$layout/blobs/sha256"
    LAYER_BLOBS=() LAYER_SIZES=() DIFF_IDS=()
    local config_json
    case "$name" in
    busybox)
        make_busybox_rootfs "$work/rootfs"
        config_json='{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"],"WorkingDir":"/"}'
        ;;
    pause)
        make_pause_rootfs "$work/rootfs"
        config_json='{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Entrypoint":["/pause"],"WorkingDir":"/"}'
        ;;
    pyfn)
        make_pyfn_rootfs "$work/rootfs"
        config_json='{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin","FN_STATE_MB=200"],"Entrypoint":["python3","-u","/usr/local/bin/pyfn.py"],"WorkingDir":"/"}'
        ;;
    fn-*)
        fnbase_layer
        base="$(sha256_of "$FNBASE_LAYER")"
        cp "$FNBASE_LAYER" "$layout/blobs/sha256/$base"
        LAYER_BLOBS+=("sha256:$base")
        LAYER_SIZES+=("$(stat -c %s "$FNBASE_LAYER")")
        DIFF_IDS+=("$(cat "$FNBASE_LAYER.diffid")")
        cp -a "$FUNCTIONS_DIR/${name#fn-}/rootfs/." "$work/rootfs/"
        config_json="$(jq -cS . "$FUNCTIONS_DIR/${name#fn-}/config.json")" ||
            die "$FUNCTIONS_DIR/${name#fn-}/config.json is not JSON"
        ;;
    *) die "unknown image $name" ;;
    esac
    det_tar "$work/rootfs" >"$work/layer.tar"
    add_layer "$work/layer.tar" "$layout"

    # image config
    local diff_ids_json
    diff_ids_json="$(printf '%s\n' "${DIFF_IDS[@]}" | jq -cR . | jq -cs .)"
    jq -cnS --arg arch "$ARCH" --arg created "$EPOCH" --argjson diff_ids "$diff_ids_json" \
        --arg by "integration/scripts/build-images.sh $name" --argjson config "$config_json" \
        '{architecture: $arch, os: "linux", created: $created, config: $config,
          rootfs: {type: "layers", diff_ids: $diff_ids},
          history: [$diff_ids[] | {created: $created, created_by: $by}]}' >"$work/config.json"
    local config_digest config_size
    config_digest="$(sha256_of "$work/config.json")"
    config_size="$(stat -c %s "$work/config.json")"
    mv "$work/config.json" "$layout/blobs/sha256/$config_digest"

    # manifest
    local layers_json="[]" i
    for i in "${!LAYER_BLOBS[@]}"; do
        layers_json="$(jq -c --arg d "${LAYER_BLOBS[$i]}" --argjson s "${LAYER_SIZES[$i]}" \
            '. + [{mediaType: "application/vnd.oci.image.layer.v1.tar+gzip", digest: $d, size: $s}]' \
            <<<"$layers_json")"
    done
    jq -cnS --arg cd "sha256:$config_digest" --argjson cs "$config_size" \
        --argjson layers "$layers_json" \
        '{schemaVersion: 2, mediaType: "application/vnd.oci.image.manifest.v1+json",
          config: {mediaType: "application/vnd.oci.image.config.v1+json", digest: $cd, size: $cs},
          layers: $layers}' \
        >"$work/manifest.json"
    local manifest_digest manifest_size
    manifest_digest="$(sha256_of "$work/manifest.json")"
    manifest_size="$(stat -c %s "$work/manifest.json")"
    mv "$work/manifest.json" "$layout/blobs/sha256/$manifest_digest"

    # index.json: org.opencontainers.image.ref.name carries the tag (as the
    # OCI layout spec intends); io.containerd.image.name the full reference,
    # which `ctr images import` uses as the image name (a full reference in
    # ref.name alone would be dropped by ctr's default name prefixing).
    jq -cnS --arg md "sha256:$manifest_digest" --argjson ms "$manifest_size" \
        --arg arch "$ARCH" --arg ref "$ref" --arg tag "${ref##*:}" \
        '{schemaVersion: 2, mediaType: "application/vnd.oci.image.index.v1+json",
          manifests: [{mediaType: "application/vnd.oci.image.manifest.v1+json",
                       digest: $md, size: $ms,
                       platform: {architecture: $arch, os: "linux"},
                       annotations: {"io.containerd.image.name": $ref,
                                     "org.opencontainers.image.ref.name": $tag}}]}' \
        >"$layout/index.json"
    printf '{"imageLayoutVersion":"1.0.0"}' >"$layout/oci-layout"

    det_tar "$layout" >"$work/image.tar"
    mv -f "$work/image.tar" "$out"
    printf 'sha256:%s\n' "$manifest_digest" >"$IMAGES_DIR/$name.digest"
    chain_id "${DIFF_IDS[@]}" >"$IMAGES_DIR/$name.chainid"
    printf '%s\n' "$hash" >"$IMAGES_DIR/$name.inputs"
    rm -rf "$work"
    WORK_DIR=""
    log "built $ref: $out (manifest sha256:$manifest_digest, ${#DIFF_IDS[@]} layer(s))"
}

# chain_id DIFF_ID...: the OCI chain ID of these layers (what containerd names
# the unpacked snapshot): the first diff_id, then sha256 of "CHAIN DIFF_ID".
chain_id() {
    local chain="$1" d
    shift
    for d in "$@"; do
        chain="sha256:$(printf '%s %s' "$chain" "$d" | sha256sum | awk '{print $1}')"
    done
    printf '%s\n' "$chain"
}

build_all() {
    mkdir -p "$IMAGES_DIR"
    command -v jq >/dev/null || die "jq missing: run install-deps.sh"
    build_image busybox "$BUSYBOX_REF"
    build_image pause "$PAUSE_REF"
    build_image pyfn "$PYFN_REF"
    local fn
    for fn in "${FUNCTION_NAMES[@]}"; do
        build_image "$fn" "$FN_PREFIX${fn#fn-}:latest"
    done
}

image_ref() {
    case "$1" in
    busybox) echo "$BUSYBOX_REF" ;;
    pause) echo "$PAUSE_REF" ;;
    pyfn) echo "$PYFN_REF" ;;
    fn-*) echo "$FN_PREFIX${1#fn-}:latest" ;;
    *) die "unknown image $1" ;;
    esac
}

# resolve_target VERSION|SOCKET: sets ADDRESS and CTR (the ctr of the matching
# containerd version).
resolve_target() {
    local arg="$1" v server
    case "$arg" in
    2 | 1.7)
        ADDRESS="/run/trenv/containerd-$arg/containerd.sock"
        CTR="$TRENV_CACHE/containerd-$arg/usr/bin/ctr"
        ;;
    *)
        ADDRESS="$arg"
        [[ -S "$ADDRESS" ]] || die "$ADDRESS is not a socket"
        CTR=""
        for v in 2 1.7; do
            [[ -x "$TRENV_CACHE/containerd-$v/usr/bin/ctr" ]] || continue
            server="$("$TRENV_CACHE/containerd-$v/usr/bin/ctr" --address "$ADDRESS" version 2>/dev/null |
                awk '/^Server:/ {s = 1} s && /Version:/ {print $2; exit}')" || continue
            if [[ "$server" == 1.* ]]; then
                CTR="$TRENV_CACHE/containerd-1.7/usr/bin/ctr"
            else
                CTR="$TRENV_CACHE/containerd-2/usr/bin/ctr"
            fi
            break
        done
        [[ -n "$CTR" ]] || die "no containerd answers on $ADDRESS"
        ;;
    esac
    [[ -x "$CTR" ]] || die "$CTR missing: run install-deps.sh"
    timeout 10 "$CTR" --address "$ADDRESS" version >/dev/null 2>&1 ||
        die "containerd at $ADDRESS does not answer (start it: containerd.sh start VERSION)"
}

ctr_() { "$CTR" --address "$ADDRESS" "$@"; }

# True if REF is in namespace NS with the built manifest digest and its layer
# is unpacked for overlayfs (its snapshot is named by the layers' chain ID).
image_ready() {
    local ns="$1" ref="$2" name="$3" digest chain
    digest="$(cat "$IMAGES_DIR/$name.digest")"
    chain="$(cat "$IMAGES_DIR/$name.chainid")"
    ctr_ -n "$ns" images ls | awk -v r="$ref" -v d="$digest" '$1 == r && $3 == d {f = 1} END {exit !f}' || return 1
    ctr_ -n "$ns" snapshots --snapshotter overlayfs info "$chain" >/dev/null 2>&1
}

import_all() {
    local ns name ref
    for ns in "${NAMESPACES[@]}"; do
        for name in "${IMAGE_NAMES[@]}"; do
            ref="$(image_ref "$name")"
            if [[ " ${TRENV_IMAGES_SKIP:-} " == *" $ns/$name "* ]]; then
                log "$ref not imported into namespace $ns (TRENV_IMAGES_SKIP)"
                continue
            fi
            # The functions' images only where tests and benchmarks copy them from.
            [[ "$name" != fn-* || "$ns" == default ]] || continue
            if image_ready "$ns" "$ref" "$name"; then
                log "$ref already imported and unpacked in namespace $ns ($ADDRESS)"
                continue
            fi
            log "importing $ref into namespace $ns ($ADDRESS)"
            # ctr import unpacks for the default snapshotter (overlayfs) unless
            # --no-unpack; --snapshotter makes it explicit.
            ctr_ -n "$ns" images import --snapshotter overlayfs "$IMAGES_DIR/$name.oci.tar" >&2
            image_ready "$ns" "$ref" "$name" || die "$ref not ready in namespace $ns after import"
        done
    done
}

smoke() {
    local id out rc=0 t0
    id="trenv-smoke-$$"
    log "ctr run --rm $BUSYBOX_REF echo hi (runtime io.containerd.runc.v2)"
    out="$(ctr_ -n default run --rm --runtime io.containerd.runc.v2 "$BUSYBOX_REF" "$id" echo hi)"
    [[ "$out" == hi ]] || die "expected 'hi', got '$out'"
    log "busybox: ok ($out)"
    log "pause: start, SIGTERM, expect exit 0"
    ctr_ -n default run -d --runtime io.containerd.runc.v2 "$PAUSE_REF" "$id-pause" >/dev/null
    sleep 0.3
    t0=$SECONDS
    ctr_ -n default tasks kill -s SIGTERM "$id-pause"
    # `tasks delete` needs the task stopped; poll its status
    while ctr_ -n default tasks ls | awk -v id="$id-pause" '$1 == id && $3 == "RUNNING" {f = 1} END {exit !f}'; do
        ((SECONDS - t0 < 10)) || { rc=1 && break; }
        sleep 0.1
    done
    out="$(ctr_ -n default tasks delete "$id-pause" 2>&1 || true)"
    ctr_ -n default containers delete "$id-pause" >/dev/null 2>&1 || true
    ((rc == 0)) || die "pause did not exit on SIGTERM"
    log "pause: ok (stopped on SIGTERM) $out"
}

case "${1:-build}" in
fnbase)
    (($# == 1)) || usage
    mkdir -p "$IMAGES_DIR"
    fnbase_layer
    ;;
build)
    (($# <= 1)) || usage
    build_all
    ;;
import)
    (($# == 2)) || usage
    build_all
    resolve_target "$2"
    import_all
    ;;
smoke)
    (($# == 2)) || usage
    resolve_target "$2"
    smoke
    ;;
*) usage ;;
esac
