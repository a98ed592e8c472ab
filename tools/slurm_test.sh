#!/usr/bin/env bash
# Testing on a slurm cluster (environment variables: see tools/slurm_launch.sh):
#   [GPUS=8] [GPUS_PER_NODE=8] [CPUS_PER_TASK=5] [SRUN_ARGS=...] \
#       tools/slurm_test.sh PARTITION JOB_NAME CONFIG CHECKPOINT [tools/test.py options]
set -euo pipefail
if [ $# -lt 4 ]; then
    echo "usage: $0 PARTITION JOB_NAME CONFIG CHECKPOINT [tools/test.py options]" >&2
    exit 2
fi
PARTITION=$1 JOB_NAME=$2 CONFIG=$3 CHECKPOINT=$4
shift 4
exec "$(dirname "$0")/slurm_launch.sh" "$PARTITION" "$JOB_NAME" test.py "$CONFIG" \
    "$CHECKPOINT" --launcher slurm "$@"
