#!/usr/bin/env bash
# Wheels (and the Fashion-MNIST files) that tools/gpu_check.sh needs on a GPU machine with no
# network: downloads them into .whl/ (git-ignored) for that machine's python 3.12 on
# manylinux x86_64, checks that the tree plus .whl/ stays under the 64 MiB a device call
# carries, and prints the command to run there.
#   bash tools/gpu_wheels.sh            # run from anywhere in the repo, where pip can download
# Environment: PYTHON (default python3), FASHION_MNIST_SRC (default
# /usr/share/datasets/fashion-mnist), GPU_WHEELS_NO_DATA=1 to leave the dataset out.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEST=.whl
LIMIT_MIB=64
SRC=${FASHION_MNIST_SRC:-/usr/share/datasets/fashion-mnist}

# What the GPU image lacks (its package list: torch, torchvision, timm, numpy, opencv, scipy,
# matplotlib, einops, pyyaml, rich, click, markdown, zipp, packaging, pillow are there), pinned
# to the versions this project is tested with. --no-deps: every need is named here.
WHEELS=(
    mmengine==0.10.7 mmcv-lite==2.0.1 mmpretrain==1.2.0 mmaction2==1.1.0 decord==0.6.0
    addict==2.4.0 yapf==0.43.0 platformdirs==4.3.8 termcolor==3.3.0   # mmengine, mmcv
    mat4py==0.6.0 model-index==0.1.11 ordered-set==4.1.0                 # mmpretrain
    importlib-metadata==8.7.0                                            # mmpretrain (zipp only)
)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux2010_x86_64 --platform manylinux1_x86_64)

mkdir -p "$DEST"
grep -qxF '/.whl/' .gitignore 2>/dev/null || echo '/.whl/' >>"$(git rev-parse --git-common-dir)/info/exclude"
for spec in "${WHEELS[@]}"; do
    name=${spec%%==*}
    file_prefix=$(echo "$name" | tr '-' '_')
    if ls "$DEST/${file_prefix}-${spec##*==}-"*.whl >/dev/null 2>&1; then
        continue
    fi
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${PLATFORMS[@]}" -d "$DEST" "$spec" 2>&1 | grep -v '^WARNING: Location' || true
    ls "$DEST/${file_prefix}-${spec##*==}-"*.whl >/dev/null 2>&1 \
        || { echo "could not download $spec for python 3.12 manylinux x86_64" >&2; exit 1; }
done
# One version of each: two stop the whole install there.
dupes=$(ls "$DEST"/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)
if [ -n "$dupes" ]; then
    echo "more than one version of: $dupes (remove the extra files from $DEST/)" >&2
    exit 1
fi

if [ "${GPU_WHEELS_NO_DATA:-0}" != 1 ]; then
    if [ -d "$SRC" ]; then
        mkdir -p "$DEST/fashion-mnist"
        cp -u "$SRC"/*-ubyte.gz "$DEST/fashion-mnist/"
    else
        echo "note: $SRC not found; the tools section will report 'no Fashion-MNIST'" >&2
    fi
fi

echo "== $DEST/:"
du -b "$DEST"/*.whl "$DEST"/fashion-mnist/* 2>/dev/null | sort -n \
    | awk '{printf "   %8.2f MiB  %s\n", $1 / 1048576, $2}'
wheels=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
data=$(du -cb "$DEST"/fashion-mnist/* 2>/dev/null | tail -1 | cut -f1 || echo 0)
# What travels besides: tracked files and untracked files git does not ignore.
tree=$( (git ls-files -z; git ls-files -z --others --exclude-standard) | xargs -0 du -cb 2>/dev/null \
    | awk '$2 == "total" {s += $1} END {print s + 0}')
total=$((wheels + data + tree))
awk -v w="$wheels" -v d="$data" -v t="$tree" -v s="$total" -v l="$LIMIT_MIB" 'BEGIN {
    printf "== wheels %.1f MiB + Fashion-MNIST %.1f MiB + working tree %.1f MiB = %.1f MiB of %d MiB\n",
        w / 1048576, d / 1048576, t / 1048576, s / 1048576, l }'
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
    echo "over the ${LIMIT_MIB} MiB carry limit: leave the dataset out (GPU_WHEELS_NO_DATA=1) or drop decord" >&2
    exit 1
fi
cat <<'TXT'
== on the lent GPU machine (device tool), one call; rerun at once (the machine stays warm 30 s):
   run(command='bash tools/gpu_check.sh "$OUT"', carry=['.whl'], timeout_s=560)
   rerun only what failed or was skipped, e.g.:
   run(command='bash tools/gpu_check.sh "$OUT" --sections speed --speed-jobs vid-S:train:compiled,img-B:inference:compiled --budget speed=200', carry=['.whl'], timeout_s=260)
TXT
