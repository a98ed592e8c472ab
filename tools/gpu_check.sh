#!/usr/bin/env bash
# GPU check (issue 13) in one run: installs the packages the GPU machine lacks from the wheels
# carried in .whl/ (made by tools/gpu_wheels.sh), says what is still missing, then runs
# tools/gpu_check.py, which writes OUT_DIR/gpu_check.{md,json}; the log goes to
# OUT_DIR/gpu_check.log.
#   bash tools/gpu_check.sh OUT_DIR [tools/gpu_check.py options]
#   bash tools/gpu_check.sh "$OUT"                                    # on the lent GPU machine
#   bash tools/gpu_check.sh /tmp/gpu_dry --dry-run                    # CPU rehearsal, tiny sizes
#   bash tools/gpu_check.sh "$OUT" --sections speed --speed-jobs img-B:inference:compiled
# Environment: PYTHON (default python3), GPU_CHECK_SITE (wheel target, default /tmp/site).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
    echo "usage: $0 OUT_DIR [tools/gpu_check.py options]" >&2
    exit 2
fi
OUT_DIR=$1
shift
mkdir -p "$OUT_DIR"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
SITE=${GPU_CHECK_SITE:-/tmp/site}
LOG="$OUT_DIR/gpu_check.log"
: >"$LOG"

# The import names the check needs, and the distributions that provide them.
NEEDED="mmengine:mmengine mmcv:mmcv-lite mmpretrain:mmpretrain mmaction:mmaction2 decord:decord \
timm:timm torchvision:torchvision cv2:opencv-python-headless"
missing() {
    "$PY" - "$NEEDED" <<'PYEOF'
import importlib, sys, warnings
warnings.simplefilter('ignore')
for pair in sys.argv[1].split():
    module, dist = pair.split(':')
    try:
        importlib.import_module(module)
    except Exception as error:  # any failure to import is what we report
        print(f'{dist} (import {module}: {type(error).__name__}: {str(error)[:120]})')
PYEOF
}

{
    echo "== gpu_check.sh $(date -u '+%Y-%m-%d %H:%M:%S UTC') on $(hostname); $("$PY" -V 2>&1)"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null \
        || echo "   (no nvidia-smi)"
    before=$(missing)
    if [ -z "$before" ]; then
        echo "== every needed package imports already; carried wheels not installed"
    elif ls .whl/*.whl >/dev/null 2>&1; then
        echo "== missing before install:"
        echo "$before" | sed 's/^/   /'
        echo "== installing $(ls .whl/*.whl | wc -l) carried wheels ($(du -ch .whl/*.whl | tail -1 | cut -f1)) into $SITE"
        if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
                --target "$SITE" .whl/*.whl; then
            echo "   installed"
        else
            echo "   WARNING: pip install of the carried wheels failed (see above)"
        fi
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "== missing, and no wheels in .whl/ (make them with: bash tools/gpu_wheels.sh):"
        echo "$before" | sed 's/^/   /'
    fi
    after=$(missing)
    if [ -n "$after" ]; then
        echo "== STILL MISSING (the sections that need them report errors):"
        echo "$after" | sed 's/^/   /'
    fi
} > >(tee -a "$LOG") 2>&1  # not a pipe: the block's PYTHONPATH must stay set here
wait $! 2>/dev/null || true  # let tee finish before the check's own output
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

"$PY" tools/gpu_check.py --out "$OUT_DIR" "$@" 2>&1 | tee -a "$LOG"
exit "${PIPESTATUS[0]}"
