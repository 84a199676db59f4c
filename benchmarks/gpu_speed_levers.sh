#!/usr/bin/env bash
# Issue 4 levers on a machine with 4 GPUs, one job per GPU, all at once (results under $OUT/<job>/):
#   levers  (GPU 0): the GPU tests, then MosaicBERT-base compiled with sdpa and with the triton attention backend, and
#                    HF BERT compiled, in one throughput.py run (same batches), profiled with the top kernels
#   dropout (GPU 1): current code and the GeGLU-as-two-matmuls candidate, with and without hidden dropout
#   large   (GPU 2): MosaicBERT eager with triton; MosaicBERT-large compiled with triton
#   mainpy  (GPU 3): `composer main.py yamls/base.yaml` with the triton backend (speed monitor), then throughput.py
#                    --data on the same MDS rows with the same backend
# usage: OUT=dir LIMIT=seconds bash benchmarks/gpu_speed_levers.sh [DATA_MDS] [VOCAB]
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-gpu_carry/tok-mds}; VOCAB=${2:-gpu_carry/vocab}; OUT=${OUT:-speed_out}; LIMIT=${LIMIT:-360}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"/{levers,dropout,large,mainpy}
T0=$SECONDS
left() { local l=$((LIMIT - (SECONDS - T0) - 10)); echo $((l > 1 ? l : 1)); }  # timeout rejects <= 0
TP=(python3 benchmarks/throughput.py --profile_top 25)

(export CUDA_VISIBLE_DEVICES=0
 timeout -k 5 240 python3 -m pytest -q -m gpu tests/test_model_gpu.py > "$OUT/levers/gpu_tests.log" 2>&1
 echo "pytest exit $?" >> "$OUT/levers/gpu_tests.log"
 timeout -k 5 "$(left)" "${TP[@]}" --models mosaic_bert,hf_bert --modes compiled --profile 3 \
   --mosaic_configs default attention_backend=triton --out "$OUT/levers/throughput.json" > "$OUT/levers/log" 2>&1
 echo "exit $?" >> "$OUT/levers/log") &

(export CUDA_VISIBLE_DEVICES=1
 timeout -k 5 "$(left)" "${TP[@]}" --models mosaic_bert --modes compiled --profile 3 \
   --variants geglu_split_matmuls,current --mosaic_configs default hidden_dropout_prob=0.0 \
   --out "$OUT/dropout/throughput.json" > "$OUT/dropout/log" 2>&1
 echo "exit $?" >> "$OUT/dropout/log") &

(export CUDA_VISIBLE_DEVICES=2
 timeout -k 5 120 "${TP[@]}" --models mosaic_bert --modes eager --mosaic_configs attention_backend=triton \
   --out "$OUT/large/eager_triton.json" > "$OUT/large/eager.log" 2>&1
 echo "exit $?" >> "$OUT/large/eager.log"
 timeout -k 5 "$(left)" "${TP[@]}" --models mosaic_bert --size large --modes compiled --mosaic_configs attention_backend=triton \
   --out "$OUT/large/large_triton.json" > "$OUT/large/large.log" 2>&1
 echo "exit $?" >> "$OUT/large/large.log") &

(export CUDA_VISIBLE_DEVICES=3
 timeout -k 10 150 python3 -m composer.cli.launcher -n 1 main.py yamls/base.yaml data.local="$DATA" tokenizer="$VOCAB" \
   run_name=speed-triton model.config_overrides.attention_backend=triton global_train_batch_size=256 \
   device_train_microbatch_size=256 max_duration=300ba eval_interval=10000ba eval_subset_num_batches=2 \
   save_folder="$(mktemp -d)" save_interval=10000ba autoresume=false compile=true data.num_workers=8 \
   loggers.console_log_interval=50ba callbacks.speed_monitor.window_size=50 > "$OUT/mainpy/main_base.log" 2>&1
 echo "main.py exit $?" >> "$OUT/mainpy/main_base.log"
 timeout -k 5 "$(left)" "${TP[@]}" --models mosaic_bert --modes compiled --mosaic_configs attention_backend=triton \
   --data "$DATA" --tokenizer "$VOCAB" --out "$OUT/mainpy/throughput_data.json" > "$OUT/mainpy/throughput.log" 2>&1
 echo "exit $?" >> "$OUT/mainpy/throughput.log") &

wait
echo "all jobs done in $((SECONDS - T0)) s"
