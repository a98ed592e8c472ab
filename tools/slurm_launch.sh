#!/usr/bin/env bash
# Shared by slurm_train.sh and slurm_test.sh: runs tools/SCRIPT with the given arguments on a
# slurm cluster, one task per GPU; with GPUS=0 a CPU job runs GPUS_PER_NODE tasks per node over
# gloo (set TASKS to the total number of tasks then).
#   [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] \
#       tools/slurm_launch.sh PARTITION JOB_NAME SCRIPT [SCRIPT arguments]
set -euo pipefail
PARTITION=$1
JOB_NAME=$2
SCRIPT=$3
shift 3
GPUS=${GPUS:-8}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
CPUS_PER_TASK=${CPUS_PER_TASK:-5}
TASKS=${TASKS:-$GPUS}
SRUN_ARGS=${SRUN_ARGS:-}
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
GRES=()
if [ "$GPUS" -gt 0 ]; then
    GRES=(--gres="gpu:$GPUS_PER_NODE")
fi

# shellcheck disable=SC2086
PYTHONPATH="$ROOT:${PYTHONPATH:-}" srun -p "$PARTITION" --job-name="$JOB_NAME" \
    "${GRES[@]}" --ntasks="$TASKS" --ntasks-per-node="$GPUS_PER_NODE" \
    --cpus-per-task="$CPUS_PER_TASK" --kill-on-bad-exit=1 $SRUN_ARGS \
    python -u "$ROOT/tools/$SCRIPT" "$@"
