#!/usr/bin/env bash
# Start a single-node SLURM test cluster on this machine (Debian 12, root,
# no systemd): munged + slurmctld + slurmd, one node "localhost" with 4 CPUs,
# 8000 MB and four fake GPUs (gres gpu backed by /dev/null, /dev/zero, ...),
# partition "debug", no accounting (no slurmdbd). The node is declared with
# 4 CPUs and 4 GPUs whatever the host has (SlurmdParameters=config_overrides),
# so up to four small test jobs overlap their start-up time.
#
# Idempotent: installs packages only when slurmctld is missing, rewrites the
# config files every time (same content), and starts only the daemons whose
# pid file does not point at a live process. Stop with stop_cluster.sh.
#
# Used by the SLURM tests together with tests/slurm/profile/ .
set -euo pipefail

if [[ $(id -u) -ne 0 ]]; then
    echo "start_cluster.sh: must run as root" >&2
    exit 1
fi

SLURM_ETC=/etc/slurm
RUN_DIR=/run/slurm
LOG_DIR=/var/log/slurm
CTLD_STATE=/var/spool/slurmctld
SLURMD_SPOOL=/var/spool/slurmd
MUNGE_RUN=/run/munge
MUNGE_PID=$MUNGE_RUN/munged.pid
CTLD_PID=$RUN_DIR/slurmctld.pid
SLURMD_PID=$RUN_DIR/slurmd.pid
WAIT_S=${SLURM_START_TIMEOUT:-60}

log() { echo "[start_cluster] $*"; }

# pid_alive PIDFILE: true when PIDFILE names a live process.
pid_alive() {
    local pid
    [[ -s $1 ]] || return 1
    pid=$(tr -dc '0-9' <"$1")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null
}

dump_logs() {
    echo "----- $LOG_DIR/slurmctld.log (tail) -----" >&2
    tail -n 30 "$LOG_DIR/slurmctld.log" >&2 2>/dev/null || true
    echo "----- $LOG_DIR/slurmd.log (tail) -----" >&2
    tail -n 30 "$LOG_DIR/slurmd.log" >&2 2>/dev/null || true
    echo "----- /var/log/munge/munged.log (tail) -----" >&2
    tail -n 10 /var/log/munge/munged.log >&2 2>/dev/null || true
}

fail() {
    echo "start_cluster.sh: ERROR: $*" >&2
    dump_logs
    exit 1
}

# ---------------------------------------------------------------- install
if [[ ! -x /usr/sbin/slurmctld || ! -x /usr/sbin/munged ]]; then
    log "installing slurm-wlm and munge (apt)"
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends slurm-wlm munge; then
        apt-get update
        apt-get install -y --no-install-recommends slurm-wlm munge
    fi
fi

# ---------------------------------------------------------------- munge key
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
        mungekey --create --keyfile=/etc/munge/munge.key
    else
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1 count=1024 status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key

# ---------------------------------------------------------------- config
mkdir -p "$SLURM_ETC"
cat >"$SLURM_ETC/slurm.conf" <<EOF
# Written by pndecomp tests/slurm/start_cluster.sh -- single-node test cluster.
ClusterName=pndecomp-test
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Trust the node definition below even if the host has fewer CPUs/less RAM.
SlurmdParameters=config_overrides
AccountingStorageType=accounting_storage/none
# Log GRES (GPU) allocations in slurmctld.log, so tests can check that GPU
# rules really asked for a GPU. (AccountingStorageTRES=gres/gpu would need
# slurmdbd: slurmctld exits with a fatal error.)
DebugFlags=Gres
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ReturnToService=2
# Finished jobs stay visible to squeue/scontrol this long: the snakemake
# profile uses slurm-status-command: squeue, which needs MinJobAge >= 3 x
# slurm-init-seconds-before-status-checks, and tests/test_slurm.py reads every
# job of a run (state, comment, TresPerJob) with scontrol after the run.
MinJobAge=3600
GresTypes=gpu
StateSaveLocation=$CTLD_STATE
SlurmdSpoolDir=$SLURMD_SPOOL
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
SchedulerType=sched/backfill
NodeName=localhost NodeAddr=127.0.0.1 NodeHostname=localhost CPUs=4 RealMemory=8000 Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
cat >"$SLURM_ETC/gres.conf" <<'EOF'
# Fake GPUs for the test cluster: a job asking --gpus=1 gets one of them
# (CUDA_VISIBLE_DEVICES=0..3) and TresPerJob=gres:gpu:1. One distinct device
# file per GPU: a Count without File is reported as 0 GPUs and drains the node.
Name=gpu File=/dev/null
Name=gpu File=/dev/zero
Name=gpu File=/dev/full
Name=gpu File=/dev/urandom
EOF

# ---------------------------------------------------------------- dirs
mkdir -p "$RUN_DIR" "$LOG_DIR" "$CTLD_STATE" "$SLURMD_SPOOL" \
    "$MUNGE_RUN" /var/log/munge /var/lib/munge
chown munge:munge "$MUNGE_RUN" /var/log/munge /var/lib/munge
chmod 0755 "$MUNGE_RUN"

# ---------------------------------------------------------------- munged
if pid_alive "$MUNGE_PID"; then
    log "munged already running (pid $(cat "$MUNGE_PID"))"
else
    rm -f "$MUNGE_PID" "$MUNGE_RUN/munge.socket.2" "$MUNGE_RUN/munge.socket.2.lock"
    log "starting munged"
    runuser -u munge -- /usr/sbin/munged --pid-file="$MUNGE_PID"
fi
for _ in $(seq 1 20); do
    munge -n </dev/null | unmunge >/dev/null 2>&1 && break
    sleep 0.5
done
munge -n </dev/null | unmunge >/dev/null 2>&1 || fail "munge does not work"

# ---------------------------------------------------------------- slurmctld
if pid_alive "$CTLD_PID"; then
    log "slurmctld already running (pid $(cat "$CTLD_PID"))"
else
    rm -f "$CTLD_PID"
    log "starting slurmctld"
    /usr/sbin/slurmctld
fi
deadline=$((SECONDS + WAIT_S))
until scontrol ping 2>/dev/null | grep -q 'is UP'; do
    pid_alive "$CTLD_PID" || sleep 1
    pid_alive "$CTLD_PID" || fail "slurmctld exited during startup"
    ((SECONDS < deadline)) || fail "slurmctld not UP after ${WAIT_S}s"
    sleep 1
done

# ---------------------------------------------------------------- slurmd
if pid_alive "$SLURMD_PID"; then
    log "slurmd already running (pid $(cat "$SLURMD_PID"))"
else
    rm -f "$SLURMD_PID"
    log "starting slurmd"
    /usr/sbin/slurmd -N localhost
fi

# ---------------------------------------------------------------- node idle
deadline=$((SECONDS + WAIT_S))
while :; do
    state=$(sinfo -h -n localhost -o '%T' 2>/dev/null | head -n1 || true)
    case $state in
        idle | mixed | allocated | completing) break ;;
        drained* | draining* | down*)
            # e.g. left over from an earlier run; ReturnToService=2 usually
            # handles this, otherwise resume explicitly.
            scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true
            ;;
    esac
    pid_alive "$SLURMD_PID" || sleep 1
    pid_alive "$SLURMD_PID" || fail "slurmd exited during startup"
    ((SECONDS < deadline)) ||
        fail "node localhost not idle after ${WAIT_S}s (state: '${state:-?}'; $(sinfo -h -R 2>/dev/null || true))"
    sleep 1
done

log "cluster up: munged=$(cat "$MUNGE_PID") slurmctld=$(cat "$CTLD_PID") slurmd=$(cat "$SLURMD_PID")"
sinfo -o '%P %a %D %T %c %m %G'
