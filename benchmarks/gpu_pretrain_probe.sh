#!/usr/bin/env bash
# A short MosaicBERT-base pretraining run on MDS text to find a setting that leaves the unigram plateau
# (held-out MLM loss ~6.9), and to read main.py's speed-monitor throughput. Results under $OUT (or ./gpu_out).
# usage: bash benchmarks/gpu_pretrain_probe.sh DATA_MDS_DIR VOCAB_DIR STEPS LR [extra key=value ...]
set -uo pipefail
DATA=$1; VOCAB=$2; STEPS=$3; LR=$4; shift 4
OUT=${OUT:-gpu_out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
name=probe-lr$LR-${STEPS}ba
timeout 540 python3 -m composer.cli.launcher main.py yamls/base.yaml data.local="$DATA" tokenizer="$VOCAB" \
  run_name=$name global_train_batch_size=256 device_train_microbatch_size=256 max_duration=${STEPS}ba \
  optimizer.lr=$LR eval_interval=500ba eval_subset_num_batches=20 save_folder="$OUT/$name" save_interval=100000ba \
  autoresume=false compile=true data.num_workers=8 loggers.console_log_interval=250ba \
  callbacks.speed_monitor.window_size=100 "$@" > "$OUT/$name.log" 2>&1
echo "main.py exit $?"
grep -E "throughput/samples_per_sec|LanguageCrossEntropy|MaskedAccuracy" "$OUT/$name.log" | tail -20
cp "$OUT/$name/metrics.jsonl" "$OUT/$name-metrics.jsonl"; rm -rf "$OUT/$name"
