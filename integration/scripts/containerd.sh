#!/usr/bin/env bash
# Run a private containerd for the integration tests.
#
#   containerd.sh start|stop|restart|status|env VERSION      VERSION: 2 or 1.7
#
# start    write $TRENV_CACHE/run/containerd-VERSION/config.toml from
#          config/containerd-VERSION.toml.in, install the CNI config, start
#          containerd in the background and wait until it answers (30 s).
#          Does nothing if it is already running and answering.
# stop     SIGTERM containerd (SIGKILL after 10 s). Shims are NOT killed: they
#          survive a containerd restart and containerd reconnects to them.
# restart  stop, then start.
# status   print whether it runs; exit 0 if it answers, 3 if not.
# env      print shell assignments for the tests: eval "$(containerd.sh env 2)"
#
# Both versions can run at the same time (separate root, state, sockets).
# Needs integration/scripts/install-deps.sh to have run.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    echo "usage: $0 start|stop|restart|status|env VERSION   (VERSION: 2 or 1.7)" >&2
    exit 2
}

(($# == 2)) || usage
CMD="$1"
VERSION="$2"
case "$VERSION" in
2 | 1.7) ;;
*) usage ;;
esac

PREFIX="$TRENV_CACHE/containerd-$VERSION"
BIN="$PREFIX/usr/bin/containerd"
CTR="$PREFIX/usr/bin/ctr"
RUN_DIR="$TRENV_CACHE/run/containerd-$VERSION"
CONFIG="$RUN_DIR/config.toml"
LOG="$RUN_DIR/containerd.log"
ROOT="$RUN_DIR/root"
SOCK_DIR="/run/trenv/containerd-$VERSION"
STATE="$SOCK_DIR/state"
ADDRESS="$SOCK_DIR/containerd.sock"
TTRPC_ADDRESS="$SOCK_DIR/containerd.sock.ttrpc"
PIDFILE="$SOCK_DIR/containerd.pid"
LOCKFILE="$SOCK_DIR/lock"
RUNC_ROOT="$SOCK_DIR/runc"
# trenv under runc's shim name, for the CRI handler that is typed io.containerd.runc.v2 with
# a runtime_path (containerd 2.x asks only runc-typed runtimes for their features).
ALIAS_DIR="$RUN_DIR/alias"
CNI_BIN_DIR=/usr/lib/cni
CNI_CONF_DIR="$TRENV_CACHE/cni/net.d"
SANDBOX_IMAGE="${TRENV_SANDBOX_IMAGE:-docker.io/trenv/pause:latest}"
LOG_LEVEL="${TRENV_CONTAINERD_LOG_LEVEL:-info}"
TEMPLATE="$TRENV_REPO/config/containerd-$VERSION.toml.in"
# containerd's own usr/bin first (its containerd-shim-runc-v2), then
# /usr/local/bin (containerd-shim-trenv-v1) and /usr/local/sbin (criu).
SHIM_PATH="$PREFIX/usr/bin:/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin"
START_TIMEOUT=30
STOP_TIMEOUT=10

# PID of our containerd if it runs (pid file checked against /proc).
running_pid() {
    local pid exe
    [[ -f "$PIDFILE" ]] || return 1
    pid="$(cat "$PIDFILE" 2>/dev/null)" || return 1
    [[ "$pid" =~ ^[0-9]+$ ]] || return 1
    exe="$(readlink "/proc/$pid/exe" 2>/dev/null)" || return 1
    [[ "$exe" == "$BIN" ]] || return 1
    printf '%s\n' "$pid"
}

answers() {
    [[ -S "$ADDRESS" ]] && timeout 5 "$CTR" --address "$ADDRESS" version >/dev/null 2>&1
}

render_config() {
    [[ -f "$TEMPLATE" ]] || die "template $TEMPLATE missing"
    local tmp="$CONFIG.tmp"
    sed -e "s|@ROOT@|$ROOT|g" \
        -e "s|@STATE@|$STATE|g" \
        -e "s|@GRPC_ADDRESS@|$ADDRESS|g" \
        -e "s|@TTRPC_ADDRESS@|$TTRPC_ADDRESS|g" \
        -e "s|@LOG_LEVEL@|$LOG_LEVEL|g" \
        -e "s|@OPT_DIR@|$RUN_DIR/opt|g" \
        -e "s|@RUNC_ROOT@|$RUNC_ROOT|g" \
        -e "s|@SANDBOX_IMAGE@|$SANDBOX_IMAGE|g" \
        -e "s|@CNI_BIN_DIR@|$CNI_BIN_DIR|g" \
        -e "s|@CNI_CONF_DIR@|$CNI_CONF_DIR|g" \
        -e "s|@TRENV_AS_RUNC@|$ALIAS_DIR/containerd-shim-runc-v2|g" \
        "$TEMPLATE" >"$tmp"
    if grep -nE '^[^#]*@[A-Z_]+@' "$tmp" >&2; then
        die "unsubstituted placeholders in $tmp"
    fi
    if cmp -s "$tmp" "$CONFIG"; then
        rm -f "$tmp"
    else
        mv -f "$tmp" "$CONFIG"
        log "wrote $CONFIG"
    fi
}

install_cni_config() {
    local f dest
    mkdir -p "$CNI_CONF_DIR"
    for f in "$TRENV_REPO"/config/cni/*.conflist; do
        dest="$CNI_CONF_DIR/$(basename "$f")"
        cmp -s "$f" "$dest" || { cp "$f" "$dest" && log "installed $dest"; }
    done
}

start() {
    [[ -x "$BIN" ]] || die "$BIN missing: run integration/scripts/install-deps.sh"
    mkdir -p "$RUN_DIR" "$ROOT" "$SOCK_DIR" "$ALIAS_DIR"
    ln -sfn /usr/local/bin/containerd-shim-trenv-v1 "$ALIAS_DIR/containerd-shim-runc-v2"
    # Serialise concurrent start/stop of the same instance.
    exec 9>"$LOCKFILE"
    flock 9
    local pid
    if pid="$(running_pid)" && answers; then
        log "containerd $VERSION already running (pid $pid, $ADDRESS)"
        return 0
    fi
    if [[ -z "${pid:-}" ]] && answers; then
        log "something already answers on $ADDRESS (not started by this script); leaving it alone"
        return 0
    fi
    if [[ -n "${pid:-}" ]]; then
        # running but not answering (yet): give it the normal start-up time
        wait_answering "$pid"
        return 0
    fi
    render_config
    install_cni_config
    log "starting containerd $VERSION ($("$BIN" --version | awk '{print $3}')) on $ADDRESS, log $LOG"
    printf '\n=== %s containerd.sh start ===\n' "$(date -u +%FT%TZ)" >>"$LOG"
    local log_offset
    log_offset="$(stat -c %s "$LOG")"
    # setsid: own session, so that the caller's terminal/job control signals do
    # not reach it; stdin from /dev/null so CI without stdin works. The process
    # started here (no job control, so not a group leader) is setsid itself
    # exec'ing containerd: $! is containerd's PID. File descriptors above 2 are
    # closed first: neither our lock (fd 9) nor a caller's pipe (e.g. CI's
    # output) may be held open by the long-running daemon.
    (
        for fd in /proc/"$BASHPID"/fd/*; do
            fd="${fd##*/}"
            if ((fd > 2)); then eval "exec $fd>&-"; fi
        done
        # Nor a caller's LD_LIBRARY_PATH (cargo's, when a test starts it): the shims and
        # the CRIU they run would search libc along it at every exec, as on no real node.
        unset LD_LIBRARY_PATH
        PATH="$SHIM_PATH" exec setsid "$BIN" --config "$CONFIG" </dev/null >>"$LOG" 2>&1
    ) &
    pid=$!
    printf '%s\n' "$pid" >"$PIDFILE"
    wait_answering "$pid"
    local warnings
    # Warnings of this start about the config (unknown keys, deprecations).
    warnings="$(tail -c +"$((log_offset + 1))" "$LOG" |
        grep -iE 'level=(warning|error)' | grep -iE 'unknown|deprecat|config|ignor|invalid' || true)"
    [[ -z "$warnings" ]] || warn "config-related warnings in $LOG:"$'\n'"$warnings"
}

wait_answering() {
    local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
    while ((SECONDS < deadline)); do
        if answers; then
            log "containerd $VERSION is up (pid $pid)"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 30 "$LOG" >&2
            rm -f "$PIDFILE"
            die "containerd $VERSION exited during start-up (log: $LOG)"
        fi
        sleep 0.1
    done
    tail -n 30 "$LOG" >&2
    die "containerd $VERSION did not answer on $ADDRESS within ${START_TIMEOUT}s (pid $pid, log: $LOG)"
}

stop() {
    mkdir -p "$SOCK_DIR"
    exec 9>"$LOCKFILE"
    flock 9
    local pid deadline
    if ! pid="$(running_pid)"; then
        log "containerd $VERSION is not running"
        rm -f "$PIDFILE"
        return 0
    fi
    # Only containerd's own PID is signalled, never its process group: the
    # shims run in their own process groups and must outlive this.
    log "stopping containerd $VERSION (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while kill -0 "$pid" 2>/dev/null && ((SECONDS < deadline)); do
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        warn "containerd $VERSION (pid $pid) still running after ${STOP_TIMEOUT}s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
    fi
    rm -f "$PIDFILE"
    log "containerd $VERSION stopped"
}

status() {
    local pid
    if pid="$(running_pid)" && answers; then
        log "containerd $VERSION running (pid $pid, $ADDRESS)"
        "$CTR" --address "$ADDRESS" version >&2
        return 0
    elif [[ -n "${pid:-}" ]]; then
        log "containerd $VERSION process $pid exists but does not answer on $ADDRESS"
        return 3
    fi
    log "containerd $VERSION not running"
    return 3
}

print_env() {
    local name value
    for name in CONTAINERD_VERSION CONTAINERD_PREFIX CONTAINERD_BIN CTR CONTAINERD_ADDRESS \
        CONTAINERD_TTRPC_ADDRESS CONTAINERD_CONFIG CONTAINERD_LOG CONTAINERD_ROOT \
        CONTAINERD_STATE CONTAINERD_PIDFILE CONTAINERD_RUNC_ROOT CONTAINERD_PATH \
        CNI_CONF_DIR CNI_BIN_DIR SANDBOX_IMAGE; do
        case "$name" in
        CONTAINERD_VERSION) value="$VERSION" ;;
        CONTAINERD_PREFIX) value="$PREFIX" ;;
        CONTAINERD_BIN) value="$BIN" ;;
        CTR) value="$CTR" ;;
        CONTAINERD_ADDRESS) value="$ADDRESS" ;;
        CONTAINERD_TTRPC_ADDRESS) value="$TTRPC_ADDRESS" ;;
        CONTAINERD_CONFIG) value="$CONFIG" ;;
        CONTAINERD_LOG) value="$LOG" ;;
        CONTAINERD_ROOT) value="$ROOT" ;;
        CONTAINERD_STATE) value="$STATE" ;;
        CONTAINERD_PIDFILE) value="$PIDFILE" ;;
        CONTAINERD_RUNC_ROOT) value="$RUNC_ROOT" ;;
        CONTAINERD_PATH) value="$SHIM_PATH" ;;
        CNI_CONF_DIR) value="$CNI_CONF_DIR" ;;
        CNI_BIN_DIR) value="$CNI_BIN_DIR" ;;
        SANDBOX_IMAGE) value="$SANDBOX_IMAGE" ;;
        esac
        printf 'export %s=%q\n' "$name" "$value"
    done
}

case "$CMD" in
start) start ;;
stop) stop ;;
restart)
    stop
    exec 9>&-
    start
    ;;
status) status ;;
env) print_env ;;
*) usage ;;
esac
