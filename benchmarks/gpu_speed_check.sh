#!/usr/bin/env bash
# Issue 4, session 4: short GPU calls on a 2-GPU machine, one job per GPU, results under $OUT/<job>/.
#   profile   GPU 0: GPU tests; the compiled MosaicBERT-base step profiled (top kernels) with graph breaks logged
#             GPU 1: the same step with inductor's coordinate-descent tuning, then with pointwise autotuning
#   main      GPU 0: `main.py yamls/base.yaml` speed monitor, batch 256, then throughput.py --data on the same rows
#             GPU 1: the base table (MosaicBERT and HF BERT compiled, one run), profiled
# usage: OUT=dir LIMIT=seconds bash benchmarks/gpu_speed_check.sh profile|main [DATA_MDS] [VOCAB]
set -uo pipefail
cd "$(dirname "$0")/.."
STEP=${1:?profile or main}
DATA=${2:-gpu_carry/tok-mds}; VOCAB=${3:-gpu_carry/vocab}
OUT=${OUT:-speed_out}; LIMIT=${LIMIT:-560}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
T0=$SECONDS
left() { local l=$((LIMIT - (SECONDS - T0) - 10)); echo $((l > 1 ? l : 1)); }  # timeout rejects <= 0
TP=(python3 benchmarks/throughput.py --profile_top 40)

case $STEP in
profile)
  mkdir -p "$OUT"/{gpu0,gpu1}
  (export CUDA_VISIBLE_DEVICES=0; o=$OUT/gpu0
   timeout -k 5 150 python3 -m pytest -q -m gpu tests/test_model_gpu.py > "$o/gpu_tests.log" 2>&1
   echo "pytest exit $?" >> "$o/gpu_tests.log"
   TORCH_LOGS=graph_breaks,recompiles timeout -k 5 "$(left)" "${TP[@]}" --models mosaic_bert --modes compiled \
     --profile 3 --out "$o/profile.json" > "$o/profile.log" 2>&1
   echo "exit $?" >> "$o/profile.log") &
  (export CUDA_VISIBLE_DEVICES=1; o=$OUT/gpu1
   TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 timeout -k 5 "$(left)" "${TP[@]}" --models mosaic_bert \
     --modes compiled --profile 3 --out "$o/coordinate_descent.json" > "$o/coordinate_descent.log" 2>&1
   echo "exit $?" >> "$o/coordinate_descent.log"
   TORCHINDUCTOR_MAX_AUTOTUNE_POINTWISE=1 timeout -k 5 "$(left)" "${TP[@]}" --models mosaic_bert \
     --modes compiled --profile 3 --out "$o/autotune_pointwise.json" > "$o/autotune_pointwise.log" 2>&1
   echo "exit $?" >> "$o/autotune_pointwise.log") &
  wait
  ;;
*) echo "unknown step $STEP" >&2; exit 2 ;;
esac
