#!/usr/bin/env bash
# Issue 4 speed probe: one GPU call, < 8 minutes, results under $OUT (default ./speed_out).
#   1. GPU correctness tests (every attention backend vs the fp32-softmax reference)          <= 120 s
#   2. throughput.py base size: mosaic_bert + hf_bert, compiled + eager, --profile 3 (kernel
#      categories for every row, the compiled mosaic_bert one is the one to read)              <= 300 s
#   3. ablation: mosaic_bert compiled with the old index_copy/indexing pad/unpad around
#      attention (variant index_pad), same batches, if time is left                             <= rest
# Each step runs under `timeout`, so a hang in one still leaves the others' results.
# usage: OUT=/some/dir bash benchmarks/speed_probe.sh      (expects PYTHONPATH to include ./src)
# CPU smoke test: PROBE_ARGS='--size tiny --device cpu --batch 8 --seq 32 --steps 2 --warmup 1' SKIP_TESTS=1 bash ...
set -uo pipefail
OUT=${OUT:-speed_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
T0=$SECONDS
PROBE_ARGS=${PROBE_ARGS:-}
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
  git log --oneline -1 2>/dev/null || true
} 2>&1 | tee "$OUT/env.txt"

echo "== 1. GPU tests"
if [ -z "${SKIP_TESTS:-}" ]; then
  timeout -k 10 120 python3 -m pytest -q -m gpu tests/test_model_gpu.py > "$OUT/gpu_tests.txt" 2>&1
  echo "pytest exit $?" | tee -a "$OUT/gpu_tests.txt"; tail -3 "$OUT/gpu_tests.txt"
fi

echo "== 2. throughput (t=$((SECONDS - T0)) s)"
timeout -k 10 300 python3 benchmarks/throughput.py --models mosaic_bert,hf_bert --modes compiled,eager \
  --profile 3 $PROBE_ARGS --out "$OUT/throughput.json" > "$OUT/throughput.log" 2>&1
echo "throughput exit $?" | tee -a "$OUT/throughput.log"
grep -E "^\||^profile" "$OUT/throughput.log"

LEFT=$((450 - (SECONDS - T0)))
if [ "$LEFT" -gt 60 ]; then
  echo "== 3. ablation index_pad (t=$((SECONDS - T0)) s, budget $((LEFT - 10)) s)"
  timeout -k 5 $((LEFT - 10)) python3 benchmarks/throughput.py --models mosaic_bert --modes compiled \
    --variants index_pad $PROBE_ARGS --out "$OUT/throughput_index_pad.json" > "$OUT/throughput_index_pad.log" 2>&1
  echo "ablation exit $?" | tee -a "$OUT/throughput_index_pad.log"
  grep -E "^\|" "$OUT/throughput_index_pad.log"
else
  echo "== 3. ablation skipped: only $LEFT s left"
fi
echo "total $((SECONDS - T0)) s"
