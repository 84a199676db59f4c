#!/usr/bin/env bash
# One GPU session's worth of checks, results under $OUT (or ./gpu_out):
#   1. GPU tests (every attention backend vs the reference in bf16)
#   2. composer main.py yamls/base.yaml on MDS text for a few hundred steps (speed monitor + loss)
#   3. benchmarks/throughput.py: MosaicBERT vs HF BERT, eager and compiled, same batches
# usage: bash benchmarks/gpu_checks.sh DATA_MDS_DIR VOCAB_DIR [STEPS]
set -uo pipefail
DATA=$1; VOCAB=$2; STEPS=${3:-300}
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" | tee -a "$OUT/gpu.txt"

timeout 120 python3 -m pytest -q -m gpu tests/test_model_gpu.py 2>&1 | tail -5 | tee "$OUT/gpu_tests.txt"

timeout 300 python3 -m composer.cli.launcher main.py yamls/base.yaml data.local="$DATA" tokenizer="$VOCAB" run_name=gpu-base \
  global_train_batch_size=256 device_train_microbatch_size=256 max_duration=${STEPS}ba eval_interval=100ba \
  eval_subset_num_batches=10 save_folder="$OUT/ckpt" save_interval=10000ba autoresume=false compile=true \
  data.num_workers=8 loggers.console_log_interval=50ba callbacks.speed_monitor.window_size=50 \
  > "$OUT/main_base.log" 2>&1
echo "main.py exit $?"; grep -E "throughput/samples_per_sec|loss/train/total|LanguageCrossEntropy|MaskedAccuracy" "$OUT/main_base.log" | tail -12
cp "$OUT/ckpt/metrics.jsonl" "$OUT/main_base_metrics.jsonl" 2>/dev/null; rm -rf "$OUT/ckpt"

timeout 420 python3 benchmarks/throughput.py --out "$OUT/throughput.json" 2>&1 | grep -v Warning | tail -8 | tee "$OUT/throughput.txt"
