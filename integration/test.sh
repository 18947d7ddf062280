#!/usr/bin/env bash
# All of trenv's tests, as root on this machine kind:
#
#   integration/test.sh
#
# Unit tests of every crate, then the end-to-end suites (ctr, CRI, containerd restart,
# errors at Create through ctr, containerd's API and CRI (tests/errors.rs),
# 200-lifecycle leak check) against a real containerd 2.x AND 1.7, each started on its
# private socket with the freshly built shim installed; then the VM test bed. Environment:
#   TRENV_CONTAINERD="2 1.7"   which containerd lines to test
#   TRENV_LEAK_RUNS=200        lifecycles of the leak test
#   TRENV_VM=1                 0 skips the VM test bed (integration/vm/run.sh: cgroup v2
#                              and the DAX pool in a qemu guest)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/scripts/lib.sh"

# setup.sh takes one containerd line (for its demo and the services it starts): the first.
versions="${TRENV_CONTAINERD:-2 1.7}"
TRENV_SKIP_DEMO=1 TRENV_CONTAINERD="${versions%% *}" "$TRENV_REPO/integration/setup.sh"

cd "$TRENV_REPO"
results="$(mktemp)"
trap 'rm -f "$results"' EXIT
# The trenv CLI, for the end-to-end tests that drive it.
cargo build --locked -p trenv-cli --bin trenv
export TRENV_CLI="${CARGO_TARGET_DIR:-$TRENV_REPO/target}/debug/trenv"
log "unit and kernel-level tests"
status=0
cargo test --locked --no-fail-fast --workspace --exclude trenv-integration 2>&1 | tee -a "$results" || status=1
# A test-only library of the end-to-end suites (here and in the VM).
trenv_jemalloc

for version in $versions; do
    "$TRENV_REPO/integration/scripts/containerd.sh" start "$version"
    "$TRENV_REPO/integration/scripts/build-images.sh" import "$version"
    log "end-to-end tests against containerd $version"
    # Every file in integration/tests/ is one suite (tests/errors.rs among them); cargo
    # runs them one after another, each with up to 4 tests at a time.
    if ! (
        eval "$("$TRENV_REPO/integration/scripts/containerd.sh" env "$version")"
        cargo test --locked --no-fail-fast -p trenv-integration -- --test-threads 4
    ) 2>&1 | tee -a "$results"; then
        status=1
        log "end-to-end tests against containerd $version FAILED; containerd log tail:"
        tail -n 40 "$TRENV_CACHE/run/containerd-$version/containerd.log" >&2 || true
    fi
done
# The VM test bed: cgroup v2 and a DAX memory pool, which this machine does not have.
if [[ "${TRENV_VM:-1}" != 0 ]]; then
    log "the VM test bed (cgroup v2 host, DAX pool): integration/vm/run.sh"
    TRENV_VM_SETUP_DONE=1 "$TRENV_REPO/integration/vm/run.sh" 2>&1 | tee -a "$results" || status=1
fi
# One summary over every suite (cargo's "test result" lines and the kernel tests' line).
passed=0 failed=0
while read -r p f; do
    passed=$((passed + p))
    failed=$((failed + f))
done < <(sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p; s/^([0-9]+) passed, ([0-9]+) failed$/\1 \2/p; s/^trenv-vm: ([0-9]+) passed, ([0-9]+) failed$/\1 \2/p' "$results")
((failed == 0)) || status=1
echo "trenv: $passed passed, $failed failed"
exit "$status"
