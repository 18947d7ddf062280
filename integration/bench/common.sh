# shellcheck shell=bash
# Shared by the benchmark wrappers (lifecycle.sh, meter.sh, templates.sh, functions.sh,
# start-ahead.sh, quiet-restores.sh). Source it, then:
#
#   run_bench BINARY [-v VERSION] [BENCH ARGS...]
#
# starts the private containerd of VERSION (2 by default, or $TRENV_CONTAINERD_VERSION)
# if it is not running, exports CTR and CONTAINERD_ADDRESS, builds the benchmark BINARY
# of the integration crate in release mode and runs it with the remaining arguments.

# shellcheck source-path=SCRIPTDIR source=../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

run_bench() {
    local bin="$1"
    shift
    local version="${TRENV_CONTAINERD_VERSION:-2}"
    if [[ "${1:-}" == "-v" ]]; then
        (($# >= 2)) || die "-v needs a value (2 or 1.7)"
        version="$2"
        shift 2
    fi
    case "$version" in
    2 | 1.7) ;;
    *) die "containerd version must be 2 or 1.7, not '$version'" ;;
    esac

    "$TRENV_REPO/integration/scripts/containerd.sh" start "$version"
    eval "$("$TRENV_REPO/integration/scripts/containerd.sh" env "$version")"
    export TRENV_CONTAINERD_VERSION="$version"

    log "building $bin (release)"
    cargo build --release --quiet --manifest-path "$TRENV_REPO/Cargo.toml" \
        -p trenv-integration --bin "$bin"
    exec "${CARGO_TARGET_DIR:-$TRENV_REPO/target}/release/$bin" "$@"
}

# The A/B scripts' helpers (start-ahead.sh, quiet-restores.sh), with $CTR set:

# Removes container ID of namespace NS, its task killed first; what is not there is fine.
remove_container() {
    "$CTR" -n "$1" task kill -s KILL "$2" >/dev/null 2>&1 || true
    "$CTR" -n "$1" task delete -f "$2" >/dev/null 2>&1 || true
    "$CTR" -n "$1" containers rm "$2" >/dev/null 2>&1 || true
}

# Calls FUNC ARM I for I in 1..RUNS, arms A and B in ABBA order.
interleave() {
    local a=$1 b=$2 runs=$3 fn=$4 i
    for i in $(seq 1 "$runs"); do
        if ((i % 2)); then
            "$fn" "$a" "$i"
            "$fn" "$b" "$i"
        else
            "$fn" "$b" "$i"
            "$fn" "$a" "$i"
        fi
    done
}

# Writes to WRAPPER a shim that runs the installed one (SHIM) with its own config: the
# node's (TRENV_CONFIG or /etc/trenv/config.toml, if any) with `[criu] KEY = VALUE` set
# (VALUE as TOML writes it), kept as WRAPPER.toml.
criu_key_shim() {
    local wrapper=$1 shim=$2 key=$3 value=$4
    local node_config="${TRENV_CONFIG:-/etc/trenv/config.toml}" conf="$1.toml"
    if [[ -f "$node_config" ]]; then
        grep -v "^[[:space:]]*$key[[:space:]]*=" "$node_config" >"$conf" || true
    else
        : >"$conf"
    fi
    if grep -q '^\[criu\]' "$conf"; then
        sed -i "/^\[criu\]/a $key = $value" "$conf"
    else
        printf '\n[criu]\n%s = %s\n' "$key" "$value" >>"$conf"
    fi
    printf '#!/bin/sh\nTRENV_CONFIG=%s exec %s "$@"\n' "$conf" "$shim" >"$wrapper"
    chmod 0755 "$wrapper"
}

# Nearest-rank percentile P of column C of FILE.
pct() { sort -n -k"$2","$2" "$1" | awk -v p="$3" -v c="$2" '{v[NR]=$c} END {i=int((p*NR+99)/100); if (i<1) i=1; print v[i]}'; }
