#!/bin/bash
# PID 1 of the VM test bed's guest (integration/vm/init hands over to it). Not for
# running by hand: integration/vm/run.sh boots the VM that runs it.
#
# The guest's root is the host's, read-only under a tmpfs overlay. This script makes a
# cgroup v2-only host of it (the unified hierarchy with every controller, as on current
# distributions and Kubernetes nodes), formats the emulated PMem device (/dev/pmem0)
# with ext4 and mounts it with -o dax, starts containerd 2 with trenv, imports the test
# images and runs the plan that run.sh wrote into the results share: lines of
#
#   test TARGET POOL TEST...     the named tests of integration test TARGET, with the
#                                template pool POOL (tmpfs or dax)
#   bench NAME POOL ARGS...      a benchmark binary of trenv-integration with ARGS
#
# Everything it prints goes to the serial console, which run.sh shows; each step's
# output also goes to the results share (results/NAME.log). Its last line is
# TRENV-VM-EXIT=<status>, and results/status holds the same status.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export HOME=/root LANG=C.UTF-8

RESULTS=/trenv-results
status=0

say() { printf '[guest] %s\n' "$*"; }

finish() {
    say "done: status $1"
    [[ -n "${CONTAINERD_LOG:-}" && -d "$RESULTS" ]] && cp "$CONTAINERD_LOG" "$RESULTS/containerd.log"
    [[ -d "$RESULTS" ]] && printf '%s\n' "$1" >"$RESULTS/status"
    echo "TRENV-VM-EXIT=$1"
    sync
    echo b >/proc/sysrq-trigger
    sleep 10
}

fail() {
    say "ERROR: $*"
    finish 125
}

# --- the machine ------------------------------------------------------------------------
mount -t tmpfs -o mode=0755 run /run
mkdir -p /dev/pts /dev/shm /dev/mqueue
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
mount -t tmpfs -o mode=1777 shm /dev/shm
mount -t mqueue mqueue /dev/mqueue
# /tmp stays the overlay's (writable, in the guest's RAM): a tmpfs there would hide a
# checkout under /tmp, such as CI's clean clone.
# As systemd mounts it (tests/node.rs checks that `trenv node tune` keeps all of this).
mount -t cgroup2 -o nosuid,nodev,noexec,relatime,nsdelegate,memory_recursiveprot cgroup2 /sys/fs/cgroup ||
    fail "cannot mount cgroup2"
for c in $(cat /sys/fs/cgroup/cgroup.controllers); do
    echo "+$c" >/sys/fs/cgroup/cgroup.subtree_control || say "cannot enable controller $c"
done
mkdir -p "$RESULTS"
mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 results "$RESULTS" ||
    fail "cannot mount the results share"
# shellcheck source=/dev/null
. "$RESULTS/env" || fail "no $RESULTS/env"
[[ -x "$TRENV_REPO/integration/scripts/containerd.sh" ]] ||
    fail "the repository $TRENV_REPO is not visible in the guest (under a mount the guest replaces?)"
hostname trenv-vm
ip link set lo up
# The guest kernel's modules (the host's /usr/lib/modules has the host kernel's).
mkdir -p /usr/lib/modules
mount --bind "$TRENV_CACHE/vm/kernel/usr/lib/modules" /usr/lib/modules ||
    fail "cannot bind the guest kernel's modules"
say "kernel $(uname -r), cgroup v2 controllers: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
say "memory: $(awk '/MemTotal/ {print $2 / 1024 " MiB"}' /proc/meminfo)"

# What the host's containerd and trenv keep on disk, on fresh tmpfs here: overlayfs
# snapshots cannot have the overlay root as their upper layer.
for d in "$TRENV_CACHE/run" /var/lib/trenv /var/lib/containerd; do
    mkdir -p "$d"
    mount -t tmpfs -o mode=0755 trenv-vm "$d" || fail "cannot mount a tmpfs on $d"
done
mkdir -p /run/trenv/pool /run/trenv/criu
mount -t tmpfs -o mode=0700,size=50%,huge=within_size trenv-pool /run/trenv/pool
mount -t tmpfs -o mode=0700,size=16m trenv-criu /run/trenv/criu

# --- the DAX pool: ext4 on the emulated PMem (memmap=SIZE!OFFSET on the command line) --
modprobe nd_e820 && modprobe nd_pmem || fail "cannot load the PMem drivers"
for _ in $(seq 50); do
    [[ -b /dev/pmem0 ]] && break
    sleep 0.1
done
[[ -b /dev/pmem0 ]] || fail "no /dev/pmem0 (is memmap= on the kernel command line?)"
mkfs.ext4 -q -F -b 4096 /dev/pmem0 || fail "mkfs.ext4 /dev/pmem0 failed"
mkdir -p /mnt/pmem
mount -o dax /dev/pmem0 /mnt/pmem || fail "cannot mount /dev/pmem0 with -o dax"
grep -q ' /mnt/pmem .*dax' /proc/mounts || fail "/mnt/pmem is not mounted with dax"
mkdir -p /mnt/pmem/pool
chmod 0700 /mnt/pmem/pool
say "DAX pool: /dev/pmem0 $(($(blockdev --getsize64 /dev/pmem0) / 1048576)) MiB, ext4 -o dax on /mnt/pmem"

# --- the kernel side of memory templates: kernel-patches/trenv-mmt (integration/vm/kmod.sh
# built it for this kernel). Its tests need it: a module that does not load fails them.
export TRENV_MMT_REQUIRED=1
if insmod "$TRENV_CACHE/vm/kmod/trenv_mmt.ko" && [[ -c /dev/trenv-mmt ]]; then
    say "kernel templates: trenv_mmt loaded, /dev/trenv-mmt"
else
    say "ERROR: cannot load $TRENV_CACHE/vm/kmod/trenv_mmt.ko: $(dmesg | tail -n 3)"
    status=1
fi

# POOL of a plan line: tmpfs or dax, restored through the kernel templates (the module is
# loaded), or tmpfs-pool-file / dax-pool-file: the same pool with the pool-file mapping
# (kernel_templates = false). The tests read which one to expect from TRENV_MMT_EXPECT.
use_pool() {
    mkdir -p /etc/trenv
    case "${1%-pool-file}" in
    tmpfs) printf '[pool]\nkind = "tmpfs"\ndir = "/run/trenv/pool"\n' >/etc/trenv/config.toml ;;
    dax) printf '[pool]\nkind = "dax"\ndir = "/mnt/pmem/pool"\n' >/etc/trenv/config.toml ;;
    *) return 1 ;;
    esac
    if [[ "$1" == *-pool-file ]]; then
        printf 'kernel_templates = false\n' >>/etc/trenv/config.toml
        export TRENV_MMT_EXPECT=pool-file
    else
        export TRENV_MMT_EXPECT=kernel
    fi
}

# --- containerd -------------------------------------------------------------------------
"$TRENV_REPO/integration/scripts/containerd.sh" start 2 || fail "containerd 2 did not start"
TRENV_FUNCTIONS=0 TRENV_IMAGES_SKIP="k8s.io/pyfn" "$TRENV_REPO/integration/scripts/build-images.sh" import 2 || fail "importing the test images failed"
eval "$("$TRENV_REPO/integration/scripts/containerd.sh" env 2)"

# --- the plan ---------------------------------------------------------------------------
step=0
while read -r kind name pool args; do
    [[ -z "$kind" || "$kind" == \#* ]] && continue
    step=$((step + 1))
    log="$RESULTS/$step-$name-$pool.log"
    use_pool "$pool" || fail "plan: unknown pool $pool"
    # shellcheck disable=SC2086 # the plan's arguments are words
    case "$kind" in
    test)
        exe="$(awk -v n="$name" '$1 == n {print $2}' "$RESULTS/executables")"
        [[ -x "$exe" ]] || fail "plan: no test executable for $name"
        say "step $step: $name tests, $pool pool: $args"
        timeout "${TRENV_VM_STEP_TIMEOUT:-900}" "$exe" --exact --test-threads 2 $args 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
        ;;
    bench)
        exe="$(awk -v n="$name" '$1 == n {print $2}' "$RESULTS/executables")"
        [[ -x "$exe" ]] || fail "plan: no benchmark executable for $name"
        say "step $step: $name, $pool pool: $args"
        TRENV_CLI="$TRENV_CLI" timeout "${TRENV_VM_STEP_TIMEOUT:-900}" "$exe" $args 2>&1 | tee "$log"
        rc=${PIPESTATUS[0]}
        ;;
    *) fail "plan: unknown step kind $kind" ;;
    esac
    if ((rc != 0)); then
        say "step $step ($name, $pool) FAILED: exit $rc; processes and containerd's log:"
        status=1
        ps -eo pid,ppid,stat,etime,args | grep -v ' \[' | tail -n 40
        tail -n 60 "$CONTAINERD_LOG"
    fi
done <"$RESULTS/plan"
finish "$status"
