#!/usr/bin/env bash
# Issues 4 and 6 on one 4-GPU machine in two calls, one job per GPU, all at once (results under $OUT/<job>/).
# Checkpoints stay under runs/ttq3 on the machine between the two calls (the second must find it still warm).
#   measure   GPU 0: GPU tests; attention backends per layer (sdpa, triton and triton tile sizes); the base table
#                    (MosaicBERT compiled with sdpa / triton, each with the recipe's hidden dropout 0.1 and with 0.0,
#                    and HF BERT compiled, one throughput.py run, profiled), the eager pair, base at seq 512
#             GPU 1: time-to-quality: MosaicBERT small with hidden dropout 0.0 (5 min, lr 1e-3)
#             GPU 2+3: time-to-quality: MosaicBERT and HF BERT small, their recipes (5 min each, lr 1e-3, at once)
#   follow    GPUs 0-2: GLUE from the three time-to-quality checkpoints (reduced seeds, as gpu_ttq_session.sh)
#             GPU 3: `main.py yamls/base.yaml` speed monitor with the faster backend of `measure`, then
#                    throughput.py --data on the same rows; MosaicBERT-large and HF BERT-large compiled
# usage: OUT=dir LIMIT=seconds bash benchmarks/gpu_speed_and_ttq.sh measure|follow [DATA_MDS] [VOCAB] [GLUE_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
STEP=${1:?measure or follow}
DATA=${2:-gpu_carry/tok-mds}; VOCAB=${3:-gpu_carry/vocab}; GLUE=${4:-gpu_carry/glue}
OUT=${OUT:-speed_out}; LIMIT=${LIMIT:-560}; RUNS=runs/ttq3
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
T0=$SECONDS
left() { local l=$((LIMIT - (SECONDS - T0) - 10)); echo $((l > 1 ? l : 1)); }  # timeout rejects <= 0
TP=(python3 benchmarks/throughput.py --profile_top 25)
TTQ=(python3 benchmarks/time_to_quality.py)
mkdir -p "$RUNS"

case $STEP in
measure)
  mkdir -p "$OUT"/{table,ttq}
  (export CUDA_VISIBLE_DEVICES=0; o=$OUT/table
   timeout -k 5 150 python3 -m pytest -q -m gpu tests/test_model_gpu.py > "$o/gpu_tests.log" 2>&1
   echo "pytest exit $?" >> "$o/gpu_tests.log"
   timeout -k 5 90 python3 benchmarks/attention_backends.py --backends sdpa triton \
     --triton_blocks 64x64 128x64 64x128 128x128 --out "$o/attention.json" > "$o/attention.log" 2>&1
   echo "exit $?" >> "$o/attention.log"
   timeout -k 5 "$(left)" "${TP[@]}" --models mosaic_bert,hf_bert --modes compiled --profile 3 \
     --mosaic_configs default attention_backend=sdpa hidden_dropout_prob=0.0 \
     'attention_backend=sdpa;hidden_dropout_prob=0.0' --out "$o/throughput.json" > "$o/throughput.log" 2>&1
   echo "exit $?" >> "$o/throughput.log"
   timeout -k 5 "$(left)" "${TP[@]}" --models mosaic_bert,hf_bert --modes eager \
     --out "$o/eager.json" > "$o/eager.log" 2>&1
   echo "exit $?" >> "$o/eager.log"
   timeout -k 5 "$(left)" "${TP[@]}" --models mosaic_bert,hf_bert --modes compiled --seq 512 --batch 64 \
     --mosaic_configs default attention_backend=sdpa --out "$o/seq512.json" > "$o/seq512.log" 2>&1
   echo "exit $?" >> "$o/seq512.log"
   cp "$o"/*.json "$RUNS/" 2>/dev/null) &
  common=(--data "$DATA" --tokenizer "$VOCAB" --size small --budget 5min --eval_every 20s --lr 1e-3)
  (timeout -k 10 "$(left)" "${TTQ[@]}" train --out "$RUNS/dropout0" --models mosaic_bert --gpus 1 "${common[@]}" \
     model.config_overrides.hidden_dropout_prob=0.0 > "$OUT/ttq/train-dropout0.log" 2>&1
   echo "exit $?" >> "$OUT/ttq/train-dropout0.log") &
  (timeout -k 10 "$(left)" "${TTQ[@]}" train --out "$RUNS/lr1e-3" --gpus 2,3 "${common[@]}" > "$OUT/ttq/train.log" 2>&1
   echo "exit $?" >> "$OUT/ttq/train.log"
   "${TTQ[@]}" pick --out "$RUNS/best" --candidates "$RUNS/lr1e-3" >> "$OUT/ttq/train.log" 2>&1) &
  wait
  # metrics and logs only (the checkpoints stay for `follow`)
  tar czf "$OUT/ttq/runs.tgz" --exclude='*.pt' "$RUNS" 2>/dev/null
  ;;
follow)
  mkdir -p "$OUT"/{glue,speed}
  seeds=()
  for s in 'tasks.rte.seeds=[19,8364,717]' 'tasks.mrpc.seeds=[19,8364,717]' 'tasks.stsb.seeds=[19,8364,717]' \
           'tasks.cola.seeds=[19,8364]' 'tasks.sst2.seeds=[19]'; do seeds+=(--glue_extra "$s"); done
  glue=(glue --tokenizer "$VOCAB" --glue_data "$GLUE" --size small --tasks cola,sst2,mrpc,stsb,rte "${seeds[@]}")
  (export CUDA_VISIBLE_DEVICES=0,1,2
   timeout -k 10 "$(left)" "${TTQ[@]}" "${glue[@]}" --out "$RUNS/best" --concurrent_glue > "$OUT/glue/glue.log" 2>&1 &
   timeout -k 10 "$(left)" "${TTQ[@]}" "${glue[@]}" --out "$RUNS/dropout0" --models mosaic_bert > "$OUT/glue/glue-dropout0.log" 2>&1 &
   wait) &
  (export CUDA_VISIBLE_DEVICES=3; o=$OUT/speed
   # the faster attention backend of `measure` at the recipe's dropout
   backend=$(python3 - "$RUNS/throughput.json" <<'EOF'
import json, sys
rows = [r for r in json.load(open(sys.argv[1]))["rows"] if r["model"] == "mosaic_bert" and "ms_per_step" in r
        and "hidden_dropout_prob" not in r["config_overrides"]]
print(min(rows, key=lambda r: r["ms_per_step"])["config_overrides"].get("attention_backend", "auto") if rows else "auto")
EOF
)
   echo "backend $backend" > "$o/backend.txt"
   timeout -k 10 170 python3 -m composer.cli.launcher -n 1 main.py yamls/base.yaml data.local="$DATA" \
     tokenizer="$VOCAB" run_name=speed-main model.config_overrides.attention_backend="$backend" \
     global_train_batch_size=256 device_train_microbatch_size=256 max_duration=350ba eval_interval=10000ba \
     eval_subset_num_batches=2 save_folder="$(mktemp -d)" save_interval=10000ba autoresume=false compile=true \
     data.num_workers=8 loggers.console_log_interval=50ba callbacks.speed_monitor.window_size=50 \
     > "$o/main_base.log" 2>&1
   echo "main.py exit $?" >> "$o/main_base.log"
   timeout -k 5 "$(left)" "${TP[@]}" --models mosaic_bert --modes compiled \
     --mosaic_configs "attention_backend=$backend" --data "$DATA" --tokenizer "$VOCAB" \
     --out "$o/throughput_data.json" > "$o/throughput_data.log" 2>&1
   echo "exit $?" >> "$o/throughput_data.log"
   timeout -k 5 "$(left)" "${TP[@]}" --models mosaic_bert,hf_bert --modes compiled --size large \
     --mosaic_configs "attention_backend=$backend" --out "$o/large.json" > "$o/large.log" 2>&1
   echo "exit $?" >> "$o/large.log") &
  wait
  tar czf "$OUT/ttq-runs.tgz" --exclude='*.pt' "$RUNS" 2>/dev/null
  ;;
*)
  echo "usage: bash benchmarks/gpu_speed_and_ttq.sh measure|follow" >&2; exit 2 ;;
esac
echo "$STEP done in $((SECONDS - T0)) s"
