#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by .ci/slurm/start.sh (by PID; idempotent).
set -uo pipefail
RUN=/run/wsikt-slurm-ci

stop_pid() {  # name pidfile
  local name=$1 file=$2 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file" 2>/dev/null || true)
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "[slurm-ci] $name (pid $pid) did not stop on TERM; sending KILL" >&2
      kill -KILL "$pid" 2>/dev/null || true
    fi
    echo "[slurm-ci] stopped $name (pid $pid)" >&2
  fi
  rm -f "$file"
}

if command -v scancel >/dev/null && [ -f "$RUN/slurmctld.pid" ]; then
  timeout 10 scancel --full --quiet --state=RUNNING,PENDING 2>/dev/null || true
fi
stop_pid slurmd "$RUN/slurmd.pid"
stop_pid slurmctld "$RUN/slurmctld.pid"
stop_pid munged "$RUN/munged.pid"
exit 0
