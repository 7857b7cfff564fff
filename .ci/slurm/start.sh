#!/usr/bin/env bash
# Start a single-node SLURM cluster on this machine for the SLURM workflow test (tests/workflow/test_slurm.py).
#
#   bash .ci/slurm/start.sh        # installs slurm-wlm + munge if missing (apt, needs root)
#   bash .ci/slurm/stop.sh         # stops the daemons by PID
#
# One node named after `hostname -s`, on 127.0.0.1, all CPUs, ~90% of memory, one fake GPU
# (gres gpu:1 backed by /dev/null: jobs asking --gpus=1 get CUDA_VISIBLE_DEVICES=0). No slurmdbd:
# the SLURM profile must use `slurm-status-command: squeue`, hence MinJobAge well above the
# plugin's status-check delay. slurm.conf goes to SLURM's default /etc/slurm/slurm.conf because the
# executor plugin's job-step wrapper drops SLURM_CONF before its inner srun.
# Idempotent: a running cluster with the same config is left alone; a changed config restarts it.
set -euo pipefail

STATE=${WSIKT_SLURM_STATE:-/var/lib/wsikt-slurm-ci}
RUN=/run/wsikt-slurm-ci
ETC=/etc/slurm
WAIT_S=${WSIKT_SLURM_WAIT_S:-60}
HERE=$(cd "$(dirname "$0")" && pwd)

log() { echo "[slurm-ci] $*" >&2; }
die() { echo "[slurm-ci] ERROR: $*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root (writes $ETC, starts munged/slurmctld/slurmd)"

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v sbatch >/dev/null \
   || ! command -v munged >/dev/null; then
  log "installing slurm-wlm and munge (apt)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq slurm-wlm munge >/dev/null
fi

NODE=$(hostname -s)
CPUS=$(nproc)
MEM_MB=$(awk '/MemTotal/ {printf "%d", $2 / 1024 * 0.9}' /proc/meminfo)
DEF_MEM=$(( MEM_MB / CPUS / 2 ))   # DefMemPerCPU: half a CPU's share, so jobs without --mem pack
[ "$DEF_MEM" -ge 100 ] || DEF_MEM=100

mkdir -p "$ETC" "$STATE/ctld" "$STATE/spool" "$STATE/log" "$RUN"

conf=$(mktemp)
cat > "$conf" <<CONF
# Written by .ci/slurm/start.sh (wsikt CI): single node, no accounting, one fake GPU.
ClusterName=wsikt-ci
SlurmctldHost=${NODE}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=${DEF_MEM}
SlurmdParameters=config_overrides
ReturnToService=2
# No slurmdbd: sacct cannot answer, so finished jobs must stay visible to squeue for a while.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=600
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=2
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=${STATE}/ctld
SlurmdSpoolDir=${STATE}/spool
SlurmctldPidFile=${RUN}/slurmctld.pid
SlurmdPidFile=${RUN}/slurmd.pid
SlurmctldLogFile=${STATE}/log/slurmctld.log
SlurmdLogFile=${STATE}/log/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
GresTypes=gpu
NodeName=${NODE} NodeAddr=127.0.0.1 NodeHostname=${NODE} CPUs=${CPUS} RealMemory=${MEM_MB} Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
CONF

alive() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_idle() {
  local state
  state=$(sinfo -h -N -n "$NODE" -o '%T' 2>/dev/null | head -n1) || return 1
  [[ "$state" == idle* || "$state" == mixed* || "$state" == allocated* ]]
}

if cmp -s "$conf" "$ETC/slurm.conf" && alive "$RUN/munged.pid" && alive "$RUN/slurmctld.pid" \
   && alive "$RUN/slurmd.pid" && node_idle; then
  rm -f "$conf"
  log "cluster already up (node $NODE): $(sinfo -h -N -o '%N %T %C %G')"
  exit 0
fi

# Something is missing or the config changed: stop whatever this script started, then start all.
bash "$HERE/stop.sh" >/dev/null 2>&1 || true
mv "$conf" "$ETC/slurm.conf"
chmod 644 "$ETC/slurm.conf"
echo "NodeName=${NODE} Name=gpu File=/dev/null" > "$ETC/gres.conf"
# Any state from an older config (other node names) would only confuse slurmctld.
rm -rf "${STATE:?}/ctld/"* "${STATE:?}/spool/"*

# munge: own key if none, daemon with a pid file.
mkdir -p /etc/munge /var/lib/munge /var/log/munge /run/munge
if [ ! -s /etc/munge/munge.key ]; then
  if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key --force
  else dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none; fi
fi
if id munge >/dev/null 2>&1; then
  chown munge:munge /etc/munge /etc/munge/munge.key /var/lib/munge /var/log/munge /run/munge
fi
chmod 700 /etc/munge; chmod 400 /etc/munge/munge.key; chmod 755 /run/munge
if id munge >/dev/null 2>&1; then
  runuser -u munge -- munged --pid-file=/run/munge/munged.pid
else
  munged --force --pid-file=/run/munge/munged.pid
fi
for _ in $(seq 50); do [ -s /run/munge/munged.pid ] && break; sleep 0.1; done
cp /run/munge/munged.pid "$RUN/munged.pid"
munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"

slurmctld -i   # -i: ignore (and drop) saved state
slurmd -N "$NODE"

log "waiting up to ${WAIT_S}s for node $NODE to be idle"
for ((i = 0; i < WAIT_S * 2; i++)); do
  if node_idle; then
    log "cluster up: $(sinfo -h -N -o '%N %T cpus(A/I/O/T)=%C gres=%G')"
    exit 0
  fi
  state=$(sinfo -h -N -o '%T' 2>/dev/null | head -n1 || true)
  if [[ "$state" == drain* || "$state" == down* ]] && (( i > 10 )); then
    scontrol update NodeName="$NODE" State=RESUME 2>/dev/null || true
  fi
  sleep 0.5
done
{
  echo "--- sinfo -R"; sinfo -R 2>&1 || true
  echo "--- scontrol show node"; scontrol show node "$NODE" 2>&1 || true
  echo "--- slurmctld.log"; tail -n 30 "$STATE/log/slurmctld.log" 2>/dev/null || true
  echo "--- slurmd.log"; tail -n 30 "$STATE/log/slurmd.log" 2>/dev/null || true
} >&2
die "node $NODE not idle after ${WAIT_S}s (logs above; daemons left running for inspection — run .ci/slurm/stop.sh)"
