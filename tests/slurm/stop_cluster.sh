#!/usr/bin/env bash
# Stop the single-node SLURM test cluster started by start_cluster.sh.
# Each daemon is stopped by the pid in its pid file (never by name); SIGTERM
# first, SIGKILL after a bounded wait. Idempotent: a missing pid file or a
# dead pid is not an error. Queued/running jobs are cancelled first so a
# later start does not resume them.
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "stop_cluster.sh: must run as root" >&2
    exit 1
fi

RUN_DIR=/run/slurm
WAIT_S=${SLURM_STOP_TIMEOUT:-20}

log() { echo "[stop_cluster] $*"; }

# stop_pidfile NAME PIDFILE
stop_pidfile() {
    local name=$1 pidfile=$2 pid i
    if [[ ! -s $pidfile ]]; then
        log "$name: no pid file ($pidfile), not running"
        return 0
    fi
    pid=$(tr -dc '0-9' <"$pidfile")
    if [[ -z $pid ]] || ! kill -0 "$pid" 2>/dev/null; then
        log "$name: pid ${pid:-?} not running, removing stale pid file"
        rm -f "$pidfile"
        return 0
    fi
    log "$name: stopping pid $pid"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < WAIT_S * 4; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.25
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name: pid $pid ignored SIGTERM for ${WAIT_S}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.5
    fi
    if kill -0 "$pid" 2>/dev/null; then
        echo "stop_cluster.sh: ERROR: $name (pid $pid) still alive" >&2
        return 1
    fi
    rm -f "$pidfile"
}

# Cancel leftover jobs while the controller still answers (best effort).
if [[ -s $RUN_DIR/slurmctld.pid ]] && command -v scancel >/dev/null &&
    timeout 5 scontrol ping 2>/dev/null | grep -q 'is UP'; then
    jobs=$(timeout 10 squeue -h -o '%A' 2>/dev/null | tr '\n' ' ' || true)
    if [[ -n ${jobs// /} ]]; then
        log "cancelling leftover jobs: $jobs"
        # shellcheck disable=SC2086
        timeout 10 scancel $jobs 2>/dev/null || true
    fi
fi

rc=0
stop_pidfile slurmd "$RUN_DIR/slurmd.pid" || rc=1
stop_pidfile slurmctld "$RUN_DIR/slurmctld.pid" || rc=1
stop_pidfile munged /run/munge/munged.pid || rc=1
[[ $rc -eq 0 ]] && log "cluster stopped"
exit "$rc"
