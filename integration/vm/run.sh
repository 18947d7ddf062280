#!/usr/bin/env bash
# The VM test bed: trenv on a cgroup v2 host with a DAX (emulated PMem) memory pool.
#
#   integration/vm/run.sh [PLAN]        PLAN: default integration/vm/plan
#
# Prepares (once, cached: integration/vm/prepare.sh) qemu, Debian's kernel and an
# initramfs; builds the integration tests and benchmarks on the host; boots the
# kernel under TCG (KVM does not work on this machine kind) with the host's root
# filesystem shared read-only over virtio-9p, cgroup v2 only, and 1 GiB of emulated
# PMem (memmap=); inside, integration/vm/guest.sh starts containerd 2 with trenv and
# runs PLAN (format: see guest.sh). Prints the guest's console, then one summary line
#
#   trenv-vm: N passed, M failed
#
# and exits non-zero if a test or the VM failed. Runs integration/setup.sh first (without
# its demo), so that the guest gets the current shim. Environment:
#   TRENV_VM_TIMEOUT   seconds the whole VM may run (default 3000)
#   TRENV_VM_MEM       guest RAM including the PMem region (default 4G)
#   TRENV_VM_PMEM      PMem region: memmap=SIZE!OFFSET (default 1G!4G, the top GiB
#                      of a 4G guest: qemu places RAM above 3G at 4G)
# Timing on this machine kind (2 cores, TCG): prepare ~1 min the first time, boot
# ~10 s, the default plan ~15 min (see docs/vm.md).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=../scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../scripts/lib.sh"

PLAN="${1:-$TRENV_REPO/integration/vm/plan}"
[[ -f "$PLAN" ]] || die "plan $PLAN not found"
PLAN="$(realpath "$PLAN")"
VM_CACHE="$TRENV_CACHE/vm"
RESULTS="$VM_CACHE/results"
TIMEOUT="${TRENV_VM_TIMEOUT:-3000}"
MEM="${TRENV_VM_MEM:-4G}"
PMEM="${TRENV_VM_PMEM:-1G!4G}"

"$TRENV_REPO/integration/vm/prepare.sh"
# The guest runs what is installed here: the current shim, CRIU, containerd, images
# (idempotent; integration/test.sh has just run it and says so).
if [[ "${TRENV_VM_SETUP_DONE:-0}" != 1 ]]; then
    TRENV_SKIP_DEMO=1 "$TRENV_REPO/integration/setup.sh"
fi

# The test executables, built here and run in the guest from the shared root.
cd "$TRENV_REPO"
target="${CARGO_TARGET_DIR:-$TRENV_REPO/target}"
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
log "building the integration tests, benchmarks and the trenv CLI"
cargo build --locked -p trenv-cli --bin trenv
cargo build --locked -p trenv-integration --bins
cargo test --locked -p trenv-integration --no-run --message-format=json |
    jq -r 'select(.reason == "compiler-artifact" and .profile.test == true and .executable != null and (.target.kind | index("test")))
           | "\(.target.name) \(.executable)"' >"$RESULTS/executables"
for b in bench-templates bench-meter bench-lifecycle; do
    printf '%s %s\n' "$b" "$target/debug/$b" >>"$RESULTS/executables"
done
cp "$PLAN" "$RESULTS/plan"
{
    printf 'export TRENV_CACHE=%q\n' "$TRENV_CACHE"
    printf 'export TRENV_REPO=%q\n' "$TRENV_REPO"
    printf 'export TRENV_CLI=%q\n' "$target/debug/trenv"
    printf 'export RUST_BACKTRACE=1\n'
    # The Python function's state in the template tests (64 MiB on the host): the
    # emulated CPUs generate and hash it about 20 times slower.
    printf 'export TRENV_TEST_FN_MB=%q\n' "${TRENV_VM_FN_MB:-16}"
    # Timing under TCG emulation is about ten times coarser (two vCPUs take turns on one
    # host thread): tests that check a time to the millisecond widen their bound by this.
    printf 'export TRENV_TEST_TIME_SCALE=%q\n' "${TRENV_VM_TIME_SCALE:-10}"
    # How long one step of the plan may take (guest.sh), e.g. longer for bench-plan.
    printf 'export TRENV_VM_STEP_TIMEOUT=%q\n' "${TRENV_VM_STEP_TIMEOUT:-900}"
} >"$RESULTS/env"

qemu_dir="$VM_CACHE/qemu"
# One TCG thread for both vCPUs: with a thread per vCPU (thread=multi), qemu 7.2 runs
# stale translations of kernel text that another vCPU just patched (static keys flip as
# netfilter, cgroups and BPF come up), and the guest dies of an int3 Oops in
# __schedule; seen once in four runs of the plan.
kernel="$(ls "$VM_CACHE"/kernel/boot/vmlinuz-*)"
console="$RESULTS/console.log"
log "booting $(basename "$kernel") under TCG ($MEM, PMem memmap=$PMEM); console: $console"
start=$SECONDS
rc=0
LD_LIBRARY_PATH="$qemu_dir/usr/lib/x86_64-linux-gnu" timeout --kill-after=10 "$TIMEOUT" \
    "$qemu_dir/usr/bin/qemu-system-x86_64" \
    -L "$qemu_dir/usr/share/qemu" -L "$qemu_dir/usr/share/seabios" \
    -machine pc -accel tcg,thread=single -cpu max -smp 2 -m "$MEM" \
    -display none -monitor none -serial "file:$console" -no-reboot -nic none \
    -kernel "$kernel" -initrd "$VM_CACHE/initramfs.cpio.gz" \
    -append "console=ttyS0 panic=-1 quiet memmap=$PMEM -- $TRENV_REPO/integration/vm/guest.sh" \
    -virtfs "local,path=/,mount_tag=hostroot,security_model=passthrough,readonly=on,multidevs=remap" \
    -virtfs "local,path=$RESULTS,mount_tag=results,security_model=passthrough,multidevs=remap" \
    </dev/null >"$RESULTS/qemu.log" 2>&1 &
qemu=$!
# The console as it grows, until qemu exits.
tail -n +1 -F "$console" 2>/dev/null --pid "$qemu" | sed -u 's/^/[vm] /' >&2 &
tailer=$!
wait "$qemu" || rc=$?
sleep 0.5
kill "$tailer" 2>/dev/null || true
wait "$tailer" 2>/dev/null || true
log "the VM ran $((SECONDS - start)) s"
if ((rc == 124)); then
    warn "the VM timed out after ${TIMEOUT}s (TRENV_VM_TIMEOUT)"
elif ((rc != 0)); then
    warn "qemu exited with status $rc: $(tail -n 5 "$RESULTS/qemu.log")"
fi

guest_status="$(sed -n 's/^TRENV-VM-EXIT=\([0-9]*\).*/\1/p' "$console" | tail -n 1)"
passed=0 failed=0
while read -r p f; do
    passed=$((passed + p))
    failed=$((failed + f))
done < <(cat "$RESULTS"/[0-9]*-*.log 2>/dev/null |
    sed -nE 's/^test result: [a-zA-Z]+\. ([0-9]+) passed; ([0-9]+) failed.*/\1 \2/p')
status=0
if [[ -z "$guest_status" ]]; then
    warn "the guest did not finish (no TRENV-VM-EXIT line on its console)"
    status=1
elif ((guest_status != 0)); then
    status=1
fi
((failed == 0)) || status=1
if ((status == 0 && passed == 0)); then
    warn "no test ran in the VM"
    status=1
fi
echo "trenv-vm: $passed passed, $failed failed"
exit "$status"
