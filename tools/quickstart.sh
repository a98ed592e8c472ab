#!/usr/bin/env bash
# The image main job, end to end on real data:
#   1. convert Fashion-MNIST (Debian package dataset-fashion-mnist) into class folders,
#   2. train configs/quickstart_image.py (a very small MViTv2) with tools/train.py,
#   3. test the final checkpoint with tools/test.py on the official 10,000 test images.
# Environment: DATA (default data/fashion_mnist), WORK_DIR (default work_dirs/quickstart_image),
# FASHION_MNIST_SRC (default /usr/share/datasets/fashion-mnist), OMP_NUM_THREADS (default 1:
# one compute thread plus one dataloader worker fill two cores without oversubscribing them).
# The console shows concise progress (loss, lr, eta, validation and test results); the tools'
# console output in full goes to $WORK_DIR/train.console.log and $WORK_DIR/test_result.txt, and
# mmengine's complete log (config included) to the run folder inside $WORK_DIR.
set -euo pipefail
cd "$(dirname "$0")/.."

DATA=${DATA:-data/fashion_mnist}
WORK_DIR=${WORK_DIR:-work_dirs/quickstart_image}
SRC=${FASHION_MNIST_SRC:-/usr/share/datasets/fashion-mnist}
CONFIG=configs/quickstart_image.py
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONUNBUFFERED=1  # progress reaches the console as it is logged
PROGRESS="python mmvit_plugin/engine/console.py"  # PROGRESS --tag T --log F: concise console
ROOTS="train_dataloader.dataset.data_root=$DATA val_dataloader.dataset.data_root=$DATA \
test_dataloader.dataset.data_root=$DATA"

echo "== 1/3 Fashion-MNIST -> $DATA/{train,val,test}/<class>/"
python tools/data/prepare_fashion_mnist.py --src "$SRC" --out "$DATA"

echo "== 2/3 training $CONFIG (load before: $(cut -d' ' -f1-3 /proc/loadavg))"
rm -f "$WORK_DIR/last_checkpoint"
mkdir -p "$WORK_DIR"
log=$WORK_DIR/train.console.log
echo "   (console output in full: $log)"
start=$(date +%s)
# shellcheck disable=SC2086
python tools/train.py "$CONFIG" --work-dir "$WORK_DIR" --cfg-options $ROOTS 2>&1 \
    | $PROGRESS --tag image --log "$log" || {
    tail -n 30 "$log" >&2
    echo "quickstart: training failed, full log: $log" >&2
    exit 1
}
train_seconds=$(( $(date +%s) - start ))
load_after=$(cut -d' ' -f1-3 /proc/loadavg)
checkpoint=$(cat "$WORK_DIR/last_checkpoint")

echo "== 3/3 testing $checkpoint on the official test split"
# shellcheck disable=SC2086
python tools/test.py "$CONFIG" "$checkpoint" --work-dir "$WORK_DIR/test" \
    --out "$WORK_DIR/test_predictions.csv" --cfg-options $ROOTS 2>&1 \
    | $PROGRESS --tag test --log "$WORK_DIR/test_result.txt" || {
    tail -n 30 "$WORK_DIR/test_result.txt" >&2
    exit 1
}
top1=$(grep -o 'top-1: [0-9.]*%' "$WORK_DIR/test_result.txt" | tail -1)
test_count=$(grep -o 'on [0-9]* test samples' "$WORK_DIR/test_result.txt" | tail -1)

echo
echo "================================================================"
echo " Fashion-MNIST, MViTv2 quickstart"
echo "   ${top1} ${test_count:+(${test_count#on })}"
echo "   training time: ${train_seconds} s ($(awk "BEGIN {printf \"%.1f\", $train_seconds / 60}") min)," \
     "$(getconf _NPROCESSORS_ONLN) cores, load average ${load_after}"
echo "   checkpoint: $checkpoint"
echo "================================================================"
