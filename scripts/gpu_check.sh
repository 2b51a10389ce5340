#!/usr/bin/env bash
# The GPU checks, in one command, on a machine with CUDA and PyTorch:
#   1. the gpu-marked tests: bf16 + channels-last + torch.compile forward/backward, a
#      training step under CUDA's sync checker (no host reads), GPU JPEG decode, one tiny
#      cell end to end on the GPU with a crash and resume;
#   2. bench/bench_step.py: swinv2-b at 192 px, bf16, fused AdamW, every combination of
#      torch.compile and channels-last (dynamo reset between them): images/s, MFU
#      (FlopCounterMode FLOPs) and peak GPU memory per row;
#   3. memory rows: one step of swinv2-h and swinv2-g at their planned batch per GPU
#      (128 = 2048 / 16 ranks; g also at 64 = 2048 / 32) under each activation
#      checkpointing mode, measured peak beside scaling/study/memory.py's estimate.
#
#   bash scripts/gpu_check.sh            # results under ./gpu-check, or $OUT if set
#
# It needs python3 with torch (CUDA build), torchvision, timm, numpy, pyarrow, pillow,
# simplejpeg, scikit-learn and pytest (not ray or plotly); it names what is missing. On a
# machine without a package index, bring wheels of what is missing in .whl/ (ignored by
# git) and they are installed to a temporary folder first, e.g.:
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_17_x86_64 -d .whl simplejpeg==1.9.0 timm==1.0.31
# MODELS, BATCH (step rows) and MEMORY (model:batch,... memory rows) override the sizes.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${OUT:-$PWD/gpu-check}
py=${PYTHON:-python3}
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/mimscale-site .whl/*.whl
    export PYTHONPATH=/tmp/mimscale-site:$PYTHONPATH
fi
needs="torch torchvision timm numpy pyarrow PIL simplejpeg sklearn pytest"
missing=$("$py" -c "
import importlib.util, sys
print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))" $needs)
if [ -n "$missing" ]; then
    echo "gpu_check: $py lacks: $missing (pip names: PIL is pillow, sklearn is scikit-learn); install them or put their wheels in .whl/" >&2
    exit 2
fi
if ! "$py" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check: $py sees no CUDA device (torch.cuda.is_available() is False); run it on a GPU machine" >&2
    exit 2
fi
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu.txt"
"$py" -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())" | tee -a "$out/gpu.txt"
status=0
"$py" -m pytest -q -m gpu -p no:cacheprovider tests/scaling tests/subsets tests/analysis \
    2>&1 | tee "$out/pytest-gpu.log" || status=1
"$py" bench/bench_step.py --models "${MODELS:-swinv2-b}" --batch "${BATCH:-128}" --compile both \
    --channels-last both --memory "" --json "$out/bench_step.json" 2>&1 | tee "$out/bench_step.log" || status=1
"$py" bench/bench_step.py --models none --memory "${MEMORY:-swinv2-h:128,swinv2-g:128,swinv2-g:64}" \
    --checkpointing none,block,stage 2>&1 | tee "$out/bench_memory.log" || status=1
exit $status
