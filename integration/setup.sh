#!/usr/bin/env bash
# One command from a fresh Debian 12 machine (as root) to trenv running a container:
#
#   integration/setup.sh
#
# 1. installs what trenv needs (Debian packages, containerd 2.x from sid and 1.7 from
#    trixie unpacked into the cache dir, CNI plugins, CRIU built from Debian's source);
# 2. builds containerd-shim-trenv-v1 and the trenv CLI (release) into /usr/local/bin;
# 3. starts containerd 2.x on a private socket with the trenv runtime registered
#    (io.containerd.trenv.v1, CRI handler "trenv"; config/containerd-2.toml.in);
# 4. mounts the memory pool for templates (a tmpfs at /run/trenv/pool, the default of
#    config/trenv.toml);
# 5. builds and imports the local test images (busybox, pause, the Python function);
# 6. runs a demo container through trenv.
#
# Idempotent: a second run only rebuilds what changed. Environment:
#   TRENV_CACHE              cache dir (default /var/cache/trenv)
#   TRENV_CONTAINERD         containerd line for the demo: 2 (default) or 1.7
#   TRENV_SKIP_DEMO=1        set up only
#   TRENV_POOL_SIZE          size of the tmpfs pool (default 50% of RAM)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/scripts/lib.sh"

version="${TRENV_CONTAINERD:-2}"
[[ $EUID -eq 0 ]] || die "run as root: trenv creates namespaces, cgroups and mounts"
command -v cargo >/dev/null ||
    die "cargo not found: trenv needs a Rust toolchain (>= 1.88) on PATH"

"$TRENV_REPO/integration/scripts/install-deps.sh"

log "building containerd-shim-trenv-v1 (release)"
cargo build --release --locked -p trenv-shim --manifest-path "$TRENV_REPO/Cargo.toml"
target="${CARGO_TARGET_DIR:-$TRENV_REPO/target}"
install -m 0755 "$target/release/containerd-shim-trenv-v1" /usr/local/bin/containerd-shim-trenv-v1
install -m 0755 "$target/release/trenv" /usr/local/bin/trenv
log "installed /usr/local/bin/containerd-shim-trenv-v1 and /usr/local/bin/trenv"

# The template memory pool, and the tmpfs where trenv's CRIU caches its kernel probe
# (install-deps.sh builds CRIU with RUNDIR=/run/trenv/criu).
mount_tmpfs() {
    local dir="$1" size="$2" what="$3"
    if [[ "$(stat -f -c %T "$dir" 2>/dev/null)" != tmpfs ]]; then
        mkdir -p "$dir"
        mount -t tmpfs -o "mode=0700,size=$size" "trenv-$(basename "$dir")" "$dir"
        log "mounted $what: tmpfs on $dir"
    fi
}
mount_tmpfs /run/trenv/pool "${TRENV_POOL_SIZE:-50%}" "the template memory pool"
mount_tmpfs /run/trenv/criu 16m "CRIU's kernel-probe cache"

"$TRENV_REPO/integration/scripts/containerd.sh" start "$version"
"$TRENV_REPO/integration/scripts/build-images.sh" build
"$TRENV_REPO/integration/scripts/build-images.sh" import "$version"

if [[ "${TRENV_SKIP_DEMO:-0}" != 1 ]]; then
    eval "$("$TRENV_REPO/integration/scripts/containerd.sh" env "$version")"
    demo="trenv-demo-$$"
    log "demo: a container through trenv (containerd $version)"
    "$CTR" --address "$CONTAINERD_ADDRESS" run --rm --runtime io.containerd.trenv.v1 \
        --annotation io.trenv.function=demo docker.io/trenv/busybox:latest "$demo" \
        sh -c 'echo "hello from trenv: $(uname -sr), pid $$, $(id)"; x=$(head -c 20000000 /dev/zero | tr "\0" x); echo "built ${#x} bytes of state"'
    meter="${TRENV_METER_DIR:-/var/lib/trenv/meter}"
    log "its metering record ($meter/invocations.jsonl, format in docs/metering.md):"
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        grep -q "\"container_id\":\"$demo\"" "$meter/invocations.jsonl" 2>/dev/null && break
        sleep 0.1
    done
    grep "\"container_id\":\"$demo\"" "$meter/invocations.jsonl" | tail -n 1 | jq .
    log "done. Try: eval \"\$($TRENV_REPO/integration/scripts/containerd.sh env $version)\"; \$CTR run --rm --runtime io.containerd.trenv.v1 docker.io/trenv/busybox:latest demo echo hi"
fi
