#!/usr/bin/env bash
# The GPU checks of the pipeline and sparsity work, in one run on a machine with an NVIDIA GPU
# (about 8 minutes on an H100). Needs the trained perception models and the sensitivities
# measured on the CPU (they do not depend on the device):
#
#     python benchmarks/perception_models.py --seconds 300 --size 128 --out runs/perception
#     python benchmarks/pipeline.py                      # fills runs/bench-pipeline/cache
#     OUT=/tmp/gpu bash benchmarks/gpu_pipeline_check.sh
#
# 1. The perception pipeline on CUDA in float16: latency tables profiled on the GPU, the plan at
#    a budget of 60% of the dense pipeline, dense / planned / uniform timed with CUDA events.
# 2. 2:4 on sparse tensor cores: `prunekit advise --device cuda` on BERT-base (random weights,
#    sequence 128) and ViT-B/16, whose work is in Linear layers, at batch 1, 8 and 32 -- the
#    measured 2:4 speedup per batch size beside the other kinds of pruning.
# 3. The tests of the gpu lane (tests/conftest.py), which skip with a reason where CUDA is not.
#
# Each step has its own time limit, so one that hangs leaves the others their time. The
# tables, logs and JSON land in $OUT.
set -u -o pipefail
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/prunekit-gpu}
WORK=${WORK:-/tmp/prunekit-gpu-work}
PY=${PYTHON:-python3}
mkdir -p "$OUT" "$WORK/pipeline/cache"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0), torch.cuda.get_device_capability())"
failed=0

echo "== 1. the perception pipeline on CUDA, float16"
if [ -d runs/perception ] && compgen -G "runs/bench-pipeline/cache/*.sensitivity.json" >/dev/null; then
    cp runs/bench-pipeline/cache/*.sensitivity.json "$WORK/pipeline/cache/"
    timeout 300 $PY benchmarks/pipeline.py --device cuda --dtype float16 --threads 4 \
        --models runs/perception --out "$WORK/pipeline" 2>&1 | tee "$OUT/pipeline-cuda.log" || failed=1
    cp "$WORK"/pipeline/summary*.json "$OUT/" 2>/dev/null
else
    echo "skipped: runs/perception or runs/bench-pipeline/cache/*.sensitivity.json missing"
    failed=1
fi

echo "== 2. 2:4 on sparse tensor cores (prunekit advise --device cuda)"
$PY -c "
from transformers import BertConfig, BertModel
BertModel(BertConfig()).save_pretrained('$WORK/bert-base')
" || failed=1
for model in "$WORK/bert-base" vit_b_16; do
    name=$(basename "$model")
    timeout 150 $PY -m prunekit.cli.main advise "$model" --device cuda --batch-sizes 1,8,32 \
        --out "$WORK/advise-$name" --force 2>&1 | tee "$OUT/advise-$name.log" || failed=1
    cp "$WORK/advise-$name/advise.json" "$OUT/advise-$name.json" 2>/dev/null
done

echo "== 3. the CUDA tests"
timeout 240 $PY -m pytest -q -rs -p no:cacheprovider -m gpu tests 2>&1 | tail -25 | tee "$OUT/tests-cuda.log" || failed=1

echo "failed=$failed"
exit $failed
