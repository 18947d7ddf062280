#!/usr/bin/env bash
# Restores with and without spare restorers (a CRIU started ahead, docs/templates.md
# "Restorers started ahead"), interleaved: the 200 MiB Python function's template restored
# into fresh containers through `ctr run -d`, alternately by a shim with
# `[criu] start_ahead = true` and one with `false` (each through a wrapper that gives the
# installed shim its own TRENV_CONFIG; the node's config, if any, with only that key
# changed).
#
#   integration/bench/start-ahead.sh [-v VERSION] [--runs N] [--mb N] [--shared]
#
#   -v VERSION   containerd to run against: 2 (default) or 1.7
#   --runs N     restores per arm (30)
#   --mb N       the function's state in MiB (200)
#   --shared     in shared shims (io.trenv.shim=shared), which keep a spare at all times:
#                each arm in a namespace of its own (trenv-bench-ahead-on/-off, the
#                image copied there), since a tenant has one shared shim
#
# Prints, per arm, the shim's own Create + Start (from its log line) and `ctr run -d`'s
# wall time, P50 and P99, how many restores took a spare, and the ratios. Uses the
# installed shim and trenv CLI and the pyfn image (integration/setup.sh).
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

version="${TRENV_CONTAINERD_VERSION:-2}"
runs=30
mb=200
shared=0
while (($#)); do
    case "$1" in
    -v) version="${2:?-v needs 2 or 1.7}"; shift 2 ;;
    --runs) runs="${2:?--runs needs a number}"; shift 2 ;;
    --mb) mb="${2:?--mb needs a number}"; shift 2 ;;
    --shared) shared=1; shift ;;
    *) die "unknown argument '$1' (see the header of $0)" ;;
    esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive number, not '$runs'"
[[ "$mb" =~ ^[1-9][0-9]*$ ]] || die "--mb must be a positive number, not '$mb'"

"$TRENV_REPO/integration/scripts/containerd.sh" start "$version"
eval "$("$TRENV_REPO/integration/scripts/containerd.sh" env "$version")"
ns=trenv-bench
image=docker.io/trenv/pyfn:latest
"$CTR" -n "$ns" images ls -q | grep -qx "$image" ||
    "$TRENV_REPO/integration/scripts/build-images.sh" import "$version" >/dev/null
shim=$(command -v containerd-shim-trenv-v1) || die "the trenv shim is not installed (integration/setup.sh)"

work=$(mktemp -d /tmp/trenv-start-ahead.XXXXXX)
wrappers=/run/trenv/bench/start-ahead
mkdir -p "$wrappers"
tag="sa-$$"
template="$tag-t"
declare -A ns_of
flags=()
if ((shared)); then
    flags=(--annotation io.trenv.shim=shared)
    for arm in on off; do
        ns_of[$arm]="trenv-bench-ahead-$arm"
        if ! "$CTR" -n "${ns_of[$arm]}" images ls -q | grep -qx "$image"; then
            [[ -f "$work/image.tar" ]] || "$CTR" -n "$ns" images export "$work/image.tar" "$image"
            "$CTR" -n "${ns_of[$arm]}" images import "$work/image.tar" >/dev/null
        fi
    done
else
    ns_of[on]=$ns
    ns_of[off]=$ns
fi
current=""
cleanup() {
    for arm in on off; do
        for id in "$tag-src-$arm" $current; do
            remove_container "${ns_of[$arm]}" "$id"
        done
        trenv template rm "$template" -n "${ns_of[$arm]}" >/dev/null 2>&1 || true
    done
    rm -rf "$work"
}
trap cleanup EXIT

# Each arm's config: the node's, with [criu] start_ahead set; kept where a shared shim
# that lingers from an earlier run finds it again.
for arm in on off; do
    criu_key_shim "$wrappers/containerd-shim-trenv$arm-v1" "$shim" start_ahead \
        "$([[ $arm == on ]] && echo true || echo false)"
done

env=(--env "FN_STATE_MB=$mb" --env FN_LOG=/tmp/fn.log)
for arm in on off; do
    c=("$CTR" -n "${ns_of[$arm]}")
    trenv template inspect "$template" -n "${ns_of[$arm]}" >/dev/null 2>&1 && continue
    log "making template $template of the ${mb} MiB function in ${ns_of[$arm]}"
    src="$tag-src-$arm"
    "${c[@]}" run -d --runtime io.containerd.trenv.v1 "${env[@]}" "$image" "$src" >/dev/null
    for _ in $(seq 1 600); do
        "${c[@]}" task exec --exec-id "r$RANDOM" "$src" cat /tmp/fn.log 2>/dev/null | grep -q '^ready ' && break
        sleep 0.1
    done
    trenv template create "$template" --from "$src" -n "${ns_of[$arm]}" >/dev/null
    remove_container "${ns_of[$arm]}" "$src"
done

# Restore N by ARM; appends "in-shim-ms e2e-ms took-a-spare" to $work/ARM.
restore() {
    local arm=$1 id="$tag-$1-$2" t0 t1 line
    local ctr=("$CTR" -n "${ns_of[$arm]}")
    current=$id
    t0=$(date +%s%N)
    "${ctr[@]}" run -d --runtime "$wrappers/containerd-shim-trenv$arm-v1" \
        --annotation "io.trenv.template=$template" "${flags[@]}" "${env[@]}" "$image" "$id" >/dev/null ||
        die "restore $id failed"
    t1=$(date +%s%N)
    for _ in $(seq 1 50); do
        line=$(grep -a "started $id (pid" "$CONTAINERD_LOG" | tail -n1)
        [[ -n "$line" ]] && break
        sleep 0.1
    done
    local restored
    restored=$(grep -a "restored $id (pid" "$CONTAINERD_LOG" | tail -n1)
    awk -v line="$line" -v restored="$restored" -v e2e="$(((t1 - t0) / 1000))" 'BEGIN {
        match(line, /create [0-9.]+ ms, start [0-9.]+ ms/)
        split(substr(line, RSTART, RLENGTH), f, " ")
        printf "%.1f %.1f %d\n", f[2] + f[5], e2e / 1000, (index(restored, "criu ahead") > 0)
    }' >>"$work/$arm"
    remove_container "${ns_of[$arm]}" "$id"
    current=""
}

log "$runs restores per arm, interleaved"
: >"$work/on"
: >"$work/off"
interleave on off "$runs" restore

printf '\n| arm | in the shim P50 | in the shim P99 | ctr run -d P50 | ctr run -d P99 | took a spare | n |\n'
printf '| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n'
for arm in on off; do
    printf '| start_ahead = %s | %s | %s | %s | %s | %s | %s |\n' \
        "$([[ $arm == on ]] && echo true || echo false)" \
        "$(pct "$work/$arm" 1 50)" "$(pct "$work/$arm" 1 99)" \
        "$(pct "$work/$arm" 2 50)" "$(pct "$work/$arm" 2 99)" \
        "$(awk '{s+=$3} END {print s}' "$work/$arm")" "$(wc -l <"$work/$arm")"
done
awk -v a="$(pct "$work/off" 1 50)" -v b="$(pct "$work/on" 1 50)" \
    -v c="$(pct "$work/off" 1 99)" -v d="$(pct "$work/on" 1 99)" \
    'BEGIN { printf "\nin the shim, without / with spares: %.2fx at P50, %.2fx at P99\n", a / b, c / d }'
