#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (munge, slurmctld, slurmd; no accounting) for the reproduce.py --launcher
# slurm tests. Run as root; idempotent: a second run finds the cluster up and leaves it alone (or, where this script's
# slurm.conf changed since, rewrites it and reconfigures). A machine that already has its own slurm.conf (one this
# script did not write) is used as it is. Exits non-zero, with the reason, when the cluster cannot be brought up;
# nothing else on the machine depends on it (the SLURM tests then skip, except under CI=true, where they fail).
set -euo pipefail

CONF=/etc/slurm/slurm.conf
MARK="# Written by GLA-FERNet's .ci/slurm.sh"
LOGS=/var/log/slurm

up() {  # the controller answers and the node takes jobs (a state ending in * is a node not responding)
    local states
    states=$(timeout 20 sinfo --noheader --format=%t 2>/dev/null) && grep -qE '^(idle|mix|alloc|comp)$' <<<"$states"
}

ours() {  # no slurm.conf yet, or the one this script wrote
    [ ! -e "$CONF" ] || head -n 1 "$CONF" | grep -qF "$MARK"
}

config() {  # this machine's slurm.conf
    local host node cpus memory
    host=$(hostname -s)
    # slurmd -C reports this machine's CPUs, sockets, cores and memory in slurm.conf's own syntax.
    node=$(slurmd -C | head -n 1 | sed "s/^NodeName=[^ ]*/NodeName=$host/")
    cpus=$(sed -E 's/.* CPUs=([0-9]+).*/\1/' <<<"$node")
    memory=$(sed -E 's/.* RealMemory=([0-9]+).*/\1/' <<<"$node")
    cat <<EOF
$MARK: one node, no accounting. Overwritten by it.
ClusterName=ci
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# A requeued job waits for the credential lifetime before it starts again (default 120 s): short for the requeue test.
AuthInfo=cred_expire=10
# And the scheduler looks at pending jobs every few seconds (defaults: 60 and 30 s), so that the wait is that short.
SchedulerParameters=sched_interval=2,bf_interval=2
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
# Memory is a consumable resource; a job that asks for none gets its CPUs' share, so that jobs run side by side.
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=$((memory / cpus))
ReturnToService=2
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=$LOGS/slurmctld.log
SlurmdLogFile=$LOGS/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MpiDefault=none
$node NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
}

if command -v sinfo >/dev/null && up; then
    if [ "$(id -u)" != 0 ] || ! ours || [ "$(config)" == "$(cat "$CONF")" ]; then
        echo "slurm: already up ($(sinfo --noheader --format='%N %t'))"
        exit 0
    fi
fi
if [ "$(id -u)" != 0 ]; then
    echo "slurm: not up, and starting it needs root" >&2
    exit 1
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
        || ! command -v munged >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
fi

# munge authenticates every message between the commands and the daemons; the package usually creates the key.
if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
fi
chown munge:munge /etc/munge/munge.key
chmod 400 /etc/munge/munge.key
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown munge:munge /run/munge /var/lib/munge /var/log/munge
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- munged
fi

if ours; then
    mkdir -p /etc/slurm /var/spool/slurmctld /var/spool/slurmd "$LOGS"
    config >"$CONF.new"
    if ! cmp -s "$CONF.new" "$CONF"; then
        mv "$CONF.new" "$CONF"
        # Daemons started on the old configuration keep parts of it (scontrol reconfigure misses cred_expire): they
        # are restarted below.
        for daemon in slurmctld slurmd; do
            if [ -s "/run/$daemon.pid" ] && kill "$(cat "/run/$daemon.pid")" 2>/dev/null; then
                for _ in $(seq 50); do pgrep -x "$daemon" >/dev/null && sleep 0.2; done
            fi
        done
    else
        rm "$CONF.new"
    fi
fi

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd

for _ in $(seq 30); do
    if up && timeout 60 srun --time=1 hostname >/dev/null; then
        echo "slurm: up ($(sinfo --noheader --format='%N %t %c CPUs %m MB'); srun hostname ran)"
        exit 0
    fi
    # A node that came back from a restart may be left down; this one is ours to resume.
    if grep -qE '^(down|drain)' <<<"$(sinfo --noheader --format=%t 2>/dev/null)"; then
        scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true
    fi
    sleep 1
done
echo "slurm: the cluster did not come up; see $LOGS/slurmctld.log and $LOGS/slurmd.log" >&2
sinfo >&2 || true
tail -n 5 "$LOGS/slurmctld.log" "$LOGS/slurmd.log" >&2 || true
exit 1
