#!/usr/bin/env bash
# Restores on a quiet node, with and without hardware breakpoints at their end
# (docs/templates.md, "How a restore ends"), interleaved: the Python function's template
# restored through `ctr run -d` after a pause (--gap) in which no restored process lives,
# alternately by the installed shim (its restores' CRIU runs with CRIU_FAULT=130: no
# breakpoints) and by the same shim given a `[criu] binary` wrapper that drops that
# variable (CRIU's default: a hardware breakpoint per restored thread, a perf event, and
# the kernel's perf scheduling hooks enabled for it when no other task perf event exists).
#
#   integration/bench/quiet-restores.sh [-v VERSION] [--runs N] [--mb N] [--gap S]
#
#   -v VERSION   containerd to run against: 2 (default) or 1.7
#   --runs N     restores per arm (10)
#   --mb N       the function's state in MiB (200)
#   --gap S      seconds before each restore with nothing restored alive (1.5; the kernel
#                disables its perf hooks a second after the last task perf event is gone)
#
# Prints, per arm, CRIU's restore call and the shim's Create + Start (from its log lines)
# and `ctr run -d`'s wall time, P50 and P99, and the ratios. Uses the installed shim and
# trenv CLI and the pyfn image (integration/setup.sh). Anything else on the node that
# holds a task perf event (a process restored by a CRIU with breakpoints, `perf record`)
# hides the difference.
# shellcheck source-path=SCRIPTDIR source=common.sh
. "$(dirname "${BASH_SOURCE[0]}")/common.sh"

version="${TRENV_CONTAINERD_VERSION:-2}"
runs=10
mb=200
gap=1.5
while (($#)); do
    case "$1" in
    -v) version="${2:?-v needs 2 or 1.7}"; shift 2 ;;
    --runs) runs="${2:?--runs needs a number}"; shift 2 ;;
    --mb) mb="${2:?--mb needs a number}"; shift 2 ;;
    --gap) gap="${2:?--gap needs seconds}"; shift 2 ;;
    *) die "unknown argument '$1' (see the header of $0)" ;;
    esac
done
[[ "$runs" =~ ^[1-9][0-9]*$ ]] || die "--runs must be a positive number, not '$runs'"
[[ "$mb" =~ ^[1-9][0-9]*$ ]] || die "--mb must be a positive number, not '$mb'"
[[ "$gap" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "--gap must be a number of seconds, not '$gap'"

"$TRENV_REPO/integration/scripts/containerd.sh" start "$version"
eval "$("$TRENV_REPO/integration/scripts/containerd.sh" env "$version")"
ns=trenv-bench
image=docker.io/trenv/pyfn:latest
"$CTR" -n "$ns" images ls -q | grep -qx "$image" ||
    "$TRENV_REPO/integration/scripts/build-images.sh" import "$version" >/dev/null
shim=$(command -v containerd-shim-trenv-v1) || die "the trenv shim is not installed (integration/setup.sh)"
criu=$(command -v criu || echo /usr/local/sbin/criu)
[[ -x "$criu" ]] || die "CRIU is not installed (integration/setup.sh)"

work=$(mktemp -d /tmp/trenv-quiet-restores.XXXXXX)
wrappers=/run/trenv/bench/quiet-restores
mkdir -p "$wrappers"
tag="qr-$$"
template="$tag-t"
src="$tag-src"
current=""
cleanup() {
    for id in "$src" $current; do
        remove_container "$ns" "$id"
    done
    trenv template rm "$template" -n "$ns" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

# The breakpoints arm: the node's config with [criu] binary set to a CRIU wrapper that
# drops CRIU_FAULT (any binary = line of the node's is replaced by it).
node_config="${TRENV_CONFIG:-/etc/trenv/config.toml}"
configured=$(sed -n 's/^[[:space:]]*binary[[:space:]]*=[[:space:]]*"\(.*\)".*/\1/p' "$node_config" 2>/dev/null | head -n1)
printf '#!/bin/sh\nunset CRIU_FAULT\nexec %s "$@"\n' "${configured:-$criu}" >"$wrappers/criu"
chmod 0755 "$wrappers/criu"
criu_key_shim "$wrappers/containerd-shim-trenvbp-v1" "$shim" binary "\"$wrappers/criu\""
declare -A runtime_of=([none]=io.containerd.trenv.v1 [breakpoints]="$wrappers/containerd-shim-trenvbp-v1")

env=(--env "FN_STATE_MB=$mb" --env FN_LOG=/tmp/fn.log)
log "making template $template of the ${mb} MiB function"
"$CTR" -n "$ns" run -d --runtime io.containerd.trenv.v1 "${env[@]}" "$image" "$src" >/dev/null
for _ in $(seq 1 600); do
    "$CTR" -n "$ns" task exec --exec-id "r$RANDOM" "$src" cat /tmp/fn.log 2>/dev/null | grep -q '^ready ' && break
    sleep 0.1
done
trenv template create "$template" --from "$src" -n "$ns" >/dev/null
remove_container "$ns" "$src"

# Restore N by ARM after the gap; appends "criu-ms in-shim-ms e2e-ms" to $work/ARM.
restore() {
    local arm=$1 id="$tag-$1-$2" t0 t1 line restored
    current=$id
    sleep "$gap"
    t0=$(date +%s%N)
    "$CTR" -n "$ns" run -d --runtime "${runtime_of[$arm]}" \
        --annotation "io.trenv.template=$template" "${env[@]}" "$image" "$id" >/dev/null ||
        die "restore $id failed"
    t1=$(date +%s%N)
    for _ in $(seq 1 50); do
        line=$(grep -a "started $id (pid" "$CONTAINERD_LOG" | tail -n1)
        [[ -n "$line" ]] && break
        sleep 0.1
    done
    restored=$(grep -a "restored $id (pid" "$CONTAINERD_LOG" | tail -n1)
    awk -v line="$line" -v restored="$restored" -v e2e="$(((t1 - t0) / 1000))" 'BEGIN {
        match(line, /create [0-9.]+ ms, start [0-9.]+ ms/)
        split(substr(line, RSTART, RLENGTH), f, " ")
        match(restored, /criu restore [0-9.]+ ms/)
        split(substr(restored, RSTART, RLENGTH), c, " ")
        printf "%.1f %.1f %.1f\n", c[3], f[2] + f[5], e2e / 1000
    }' >>"$work/$arm"
    remove_container "$ns" "$id"
    current=""
}

log "$runs restores per arm, interleaved, each after ${gap} s"
: >"$work/none"
: >"$work/breakpoints"
interleave none breakpoints "$runs" restore

printf '\n| arm | CRIU P50 | CRIU P99 | in the shim P50 | in the shim P99 | ctr run -d P50 | ctr run -d P99 | n |\n'
printf '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n'
for arm in none breakpoints; do
    printf '| %s | %s | %s | %s | %s | %s | %s | %s |\n' \
        "$([[ $arm == none ]] && echo "no breakpoints (trenv)" || echo "breakpoints (CRIU's default)")" \
        "$(pct "$work/$arm" 1 50)" "$(pct "$work/$arm" 1 99)" \
        "$(pct "$work/$arm" 2 50)" "$(pct "$work/$arm" 2 99)" \
        "$(pct "$work/$arm" 3 50)" "$(pct "$work/$arm" 3 99)" "$(wc -l <"$work/$arm")"
done
awk -v a="$(pct "$work/breakpoints" 2 50)" -v b="$(pct "$work/none" 2 50)" \
    -v c="$(pct "$work/breakpoints" 2 99)" -v d="$(pct "$work/none" 2 99)" \
    'BEGIN { printf "\nin the shim, with / without breakpoints: %.2fx at P50, %.2fx at P99\n", a / b, c / d }'
