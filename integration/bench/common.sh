# shellcheck shell=bash
# Shared by the benchmark wrappers (lifecycle.sh, meter.sh, templates.sh, functions.sh). Source it, then:
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
