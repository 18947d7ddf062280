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
#    config/trenv.toml) and tunes the node (`trenv node tune`: cgroup migrations without
#    an RCU grace period; TRENV_NODE_TUNE=0 skips it);
# 5. builds and imports the local test images (busybox, pause, the Python function);
# 6. runs a demo container through trenv, a function templated and restored, and another
#    function started in a repurposed sandbox.
#
# Idempotent: a second run only rebuilds what changed. Environment:
#   TRENV_CACHE              cache dir (default /var/cache/trenv)
#   TRENV_CONTAINERD         containerd line for the demo: 2 (default) or 1.7
#   TRENV_SKIP_DEMO=1        set up only
#   TRENV_NODE_TUNE=0        leave the host's cgroup2 mount options alone (see
#                            runtime/src/node.rs: favordynmods stays on until reboot)
#   TRENV_POOL_SIZE          size of the tmpfs pool (default 50% of RAM)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/scripts/lib.sh"

version="${TRENV_CONTAINERD:-2}"
[[ $EUID -eq 0 ]] || die "run as root: trenv creates namespaces, cgroups and mounts"
command -v cargo >/dev/null ||
    die "cargo not found: trenv needs a Rust toolchain (>= 1.88) on PATH"

"$TRENV_REPO/integration/scripts/install-deps.sh"

log "building containerd-shim-trenv-v1 and trenv (release)"
cargo build --release --locked -p trenv-shim -p trenv-cli --manifest-path "$TRENV_REPO/Cargo.toml"
target="${CARGO_TARGET_DIR:-$TRENV_REPO/target}"
install -m 0755 "$target/release/containerd-shim-trenv-v1" /usr/local/bin/containerd-shim-trenv-v1
install -m 0755 "$target/release/trenv" /usr/local/bin/trenv
log "installed /usr/local/bin/containerd-shim-trenv-v1 and /usr/local/bin/trenv"

# The template memory pool, and the tmpfs where trenv's CRIU caches its kernel probe
# (install-deps.sh builds CRIU with RUNDIR=/run/trenv/criu). The pool keeps its files in
# 2 MiB pages where it can (huge=within_size): a restored function's read fault then maps
# 2 MiB of its template at once (docs/templates.md, "Pools"); a pool mounted before
# without it is switched (a remount keeps its files).
mount_tmpfs() {
    local dir="$1" size="$2" what="$3" extra="${4:-}"
    if [[ "$(stat -f -c %T "$dir" 2>/dev/null)" != tmpfs ]]; then
        mkdir -p "$dir"
        mount -t tmpfs -o "mode=0700,size=$size$extra" "trenv-$(basename "$dir")" "$dir"
        log "mounted $what: tmpfs on $dir"
    elif [[ -n "$extra" ]] && ! findmnt -n -o OPTIONS --target "$dir" | grep -q "${extra#,}"; then
        mount -o "remount${extra}" "$dir"
        log "remounted $what with ${extra#,}"
    fi
}
mount_tmpfs /run/trenv/pool "${TRENV_POOL_SIZE:-50%}" "the template memory pool" ",huge=within_size"
mount_tmpfs /run/trenv/criu 16m "CRIU's kernel-probe cache"
# The CNI network that io.trenv.network=trenv-fn attaches to a sandbox (docs/sandboxes.md;
# trenv's [sandboxes] cni_conf_dir).
install -D -m 0644 "$TRENV_REPO/config/cni/20-trenv-fn.conflist" /etc/trenv/cni/20-trenv-fn.conflist
if [[ "${TRENV_NODE_TUNE:-1}" != 0 ]]; then
    /usr/local/bin/trenv node tune | sed 's/^/[setup] node: /'
fi

"$TRENV_REPO/integration/scripts/containerd.sh" start "$version"
# The real functions' images (integration/functions/) are test and benchmark fixtures:
# integration/test.sh and integration/bench/functions.sh build and import them.
TRENV_FUNCTIONS=0 "$TRENV_REPO/integration/scripts/build-images.sh" build
TRENV_FUNCTIONS=0 "$TRENV_REPO/integration/scripts/build-images.sh" import "$version"

if [[ "${TRENV_SKIP_DEMO:-0}" != 1 ]]; then
    eval "$("$TRENV_REPO/integration/scripts/containerd.sh" env "$version")"
    demo="trenv-demo-$$"
    log "demo: a container through trenv (containerd $version)"
    "$CTR" --address "$CONTAINERD_ADDRESS" run --rm --runtime io.containerd.trenv.v1 \
        --annotation io.trenv.function=demo docker.io/trenv/busybox:latest "$demo" \
        sh -c 'echo "hello from trenv: $(uname -sr), pid $$, $(id)"; x=$(head -c 20000000 /dev/zero | tr "\0" x); echo "built ${#x} bytes of state"'
    meter="${TRENV_METER_DIR:-/var/lib/trenv/meter}"
    # Waits (at most 5 s) for a metering record with this text (the caller shows it).
    wait_record() {
        for _ in $(seq 50); do
            grep -q "$1" "$meter/invocations.jsonl" 2>/dev/null && return 0
            sleep 0.1
        done
        return 0
    }
    log "its metering record ($meter/invocations.jsonl, format in docs/metering.md):"
    wait_record "\"container_id\":\"$demo\""
    grep "\"container_id\":\"$demo\"" "$meter/invocations.jsonl" | tail -n 1 | jq .
    # A function templated once and restored: the Python test function (64 MiB of state).
    ctr_() { "$CTR" --address "$CONTAINERD_ADDRESS" "$@"; }
    src="trenv-demo-fn-$$" inst="trenv-demo-fn-$$-1" tpl="demo-fn-$$"
    shared1="trenv-demo-fn-$$-2" shared2="trenv-demo-fn-$$-3"
    cleanup_demo() {
        for c in "$inst" "$shared1" "$shared2" "$src"; do
            ctr_ task kill -s SIGKILL "$c" >/dev/null 2>&1 || true
            ctr_ task delete "$c" >/dev/null 2>&1 || true
            ctr_ container delete "$c" >/dev/null 2>&1 || true
        done
        /usr/local/bin/trenv template rm "$tpl" >/dev/null 2>&1 || true
    }
    trap cleanup_demo EXIT
    log "demo: the Python function starts cold and initialises 64 MiB of state"
    # io.trenv.repurpose=true: in a sandbox of the node's pool (docs/sandboxes.md).
    ctr_ run -d --runtime io.containerd.trenv.v1 --env FN_STATE_MB=64 --env FN_LOG=/tmp/fn.log \
        --annotation io.trenv.repurpose=true docker.io/trenv/pyfn:latest "$src" >/dev/null
    for _ in $(seq 100); do
        ready="$(ctr_ task exec --exec-id "probe-$RANDOM" "$src" sh -c 'grep ^ready /tmp/fn.log 2>/dev/null' || true)"
        [[ -n "$ready" ]] && break
        sleep 0.2
    done
    [[ -n "$ready" ]] || die "the demo function did not get ready"
    log "  $ready"
    log "demo: trenv template create $tpl --from $src"
    /usr/local/bin/trenv template create "$tpl" --from "$src"
    log "demo: a new instance restored from the template (ctr run --annotation io.trenv.template=$tpl)"
    t0=$(date +%s%N)
    # The same environment as the template's source: a restore cannot change a restored
    # process's environment, so trenv refuses a spec whose environment differs.
    ctr_ run -d --runtime io.containerd.trenv.v1 --annotation io.trenv.function=demo-fn \
        --env FN_STATE_MB=64 --env FN_LOG=/tmp/fn.log --annotation io.trenv.repurpose=true \
        --annotation "io.trenv.template=$tpl" docker.io/trenv/pyfn:latest "$inst" >/dev/null
    log "  running after $((($(date +%s%N) - t0) / 1000000)) ms (ctr run to return), already initialised"
    ctr_ task kill -s SIGUSR1 "$inst"
    for _ in $(seq 50); do
        check="$(ctr_ task exec --exec-id "probe-$RANDOM" "$inst" sh -c 'grep ^check /tmp/fn.log 2>/dev/null' || true)"
        [[ -n "$check" ]] && break
        sleep 0.1
    done
    log "  its state checksum: $check (same as at ready: $([[ "${check#check }" == "${ready##* }" ]] && echo yes || echo NO))"
    ctr_ task kill -s SIGTERM "$inst"
    # The record of the function itself (its init process), not of the probes above.
    record="\"container_id\":\"$inst\",\"exec_id\":\"\""
    wait_record "$record"
    log "its metering record:"
    grep "$record" "$meter/invocations.jsonl" | tail -n 1 | jq . || true
    # A tenant's shared shim keeps an instance restored ahead (docs/templates.md, "The
    # reserve"): the first start below restores the template, the second takes the process
    # the shim restored meanwhile (no CRIU on its path). Its writable layer in memory, which
    # the memory limit bounds.
    log "demo: two more instances in the tenant's shared shim; the second takes the one it restored ahead"
    for c in "$shared1" "$shared2"; do
        ctr_ run -d --runtime io.containerd.trenv.v1 --annotation io.trenv.function=demo-fn \
            --env FN_STATE_MB=64 --env FN_LOG=/tmp/fn.log --memory-limit 268435456 \
            --annotation io.trenv.shim=shared --annotation "io.trenv.template=$tpl" \
            docker.io/trenv/pyfn:latest "$c" >/dev/null
        sleep 1
    done
    ctr_ task kill -s SIGTERM "$shared2"
    record="\"container_id\":\"$shared2\",\"exec_id\":\"\""
    wait_record "$record"
    log "its metering record says it was restored ahead:"
    grep "$record" "$meter/invocations.jsonl" | tail -n 1 |
        jq -c '{container_id, start, reserve, sandbox}' || true
    cleanup_demo
    trap - EXIT
    # Deleted, the two Python containers left their sandboxes (network, IPC and UTS
    # namespaces) purged in the node's idle pool: another function starts in one.
    again="trenv-demo-again-$$"
    log "demo: another function (busybox) starts in a repurposed sandbox"
    ctr_ run --rm --runtime io.containerd.trenv.v1 --annotation io.trenv.function=demo-again \
        --annotation io.trenv.repurpose=true docker.io/trenv/busybox:latest "$again" \
        sh -c 'echo "  hello from $(hostname), network namespace $(readlink /proc/self/ns/net)"'
    record="\"container_id\":\"$again\""
    wait_record "$record"
    log "its metering record says where it started:"
    grep "$record" "$meter/invocations.jsonl" | tail -n 1 |
        jq -c '{container_id, function, start, sandbox, previous_function}' || true
    log "the node's idle pool (trenv pool list):"
    /usr/local/bin/trenv pool list
    log "done. Try: eval \"\$($TRENV_REPO/integration/scripts/containerd.sh env $version)\"; \$CTR run --rm --runtime io.containerd.trenv.v1 docker.io/trenv/busybox:latest demo echo hi"
fi
