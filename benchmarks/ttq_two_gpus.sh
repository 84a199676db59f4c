#!/usr/bin/env bash
# Time to quality at base size on one machine with two GPUs: MosaicBERT-base (its recipe: 30% masking, compiled)
# against BERT-base (15% masking), the same batch, schedule shape and wall-clock budget, one model per GPU.
#   probes: short runs at several learning rates per model (two per GPU, one after another);
#   train:  each model at its best probe learning rate for BUDGET, both at once, held-out MLM loss every EVAL_EVERY;
#   glue:   both final checkpoints finetuned on the GLUE tasks in GLUE (published hyperparameters, seeds below);
#   report: loss_vs_time.png/csv and time_to_quality.md under RUNS/report, the probe table in RUNS/probes.md.
# usage: bash benchmarks/ttq_two_gpus.sh all|probes|train|glue|report   (inputs from benchmarks/prepare_data.sh)
# env (defaults): DATA=bench_data/tok-mds VOCAB=bench_data/vocab GLUE=bench_data/glue RUNS=runs/ttq-base BUDGET=8min
#   PROBE_BUDGET=100s EVAL_EVERY=30s BATCH=256 WARMUP=0.06 MOSAIC_LRS="1e-4 2e-4 4e-4" HF_LRS="1e-4 2e-4 4e-4"
#   PYTHON=python3
#   GLUE_TASKS=cola,sst2,mrpc,stsb,rte GLUE_SEEDS="[19]" SIZE=base
#   TRAIN_ARGS / GLUE_ARGS: more arguments for `time_to_quality.py train` / `glue` (e.g. for a CPU dry run:
#   SIZE=tiny BUDGET=20s PROBE_BUDGET=10s TRAIN_ARGS="--no-compile --eval_batches 2" GLUE_ARGS="--glue_extra max_duration=4ba")
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-bench_data/tok-mds}; VOCAB=${VOCAB:-bench_data/vocab}; GLUE=${GLUE:-bench_data/glue}
RUNS=${RUNS:-runs/ttq-base}; BUDGET=${BUDGET:-8min}; PROBE_BUDGET=${PROBE_BUDGET:-100s}
EVAL_EVERY=${EVAL_EVERY:-30s}; BATCH=${BATCH:-256}; WARMUP=${WARMUP:-0.06}
MOSAIC_LRS=${MOSAIC_LRS:-"1e-4 2e-4 4e-4"}; HF_LRS=${HF_LRS:-"1e-4 2e-4 4e-4"}; PY=${PYTHON:-python3}
GLUE_TASKS=${GLUE_TASKS:-cola,sst2,mrpc,stsb,rte}; GLUE_SEEDS=${GLUE_SEEDS:-"[19]"}; SIZE=${SIZE:-base}
read -r -a TRAIN_ARGS <<< "${TRAIN_ARGS:-}"; read -r -a GLUE_ARGS <<< "${GLUE_ARGS:-}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
ttq() { "$PY" benchmarks/time_to_quality.py "$@"; }
mkdir -p "$RUNS"

# Each training job reads its own copy of the shards: streaming decompresses shards inside the data folder.
data_copy() { local d="$RUNS/data-$1"; [ -d "$d" ] || cp -r "$DATA" "$d"; echo "$d"; }

train_one() {  # model gpu out lr budget
  ttq train --models "$1" --gpus "$2" --out "$3" --data "$(data_copy "$2")" --tokenizer "$VOCAB" --size "$SIZE" \
    --batch "$BATCH" --lr "$4" --warmup "$WARMUP" --budget "$5" --eval_every "$EVAL_EVERY" "${TRAIN_ARGS[@]}"
}

probes() {  # GPU 0: MosaicBERT's learning rates, GPU 1: BERT's; each GPU runs its probes one after another
  ( for lr in $MOSAIC_LRS; do train_one mosaic_bert 0 "$RUNS/probe-lr$lr" "$lr" "$PROBE_BUDGET"; done ) \
    > "$RUNS/probes-mosaic_bert.log" 2>&1 &
  local p0=$!
  ( for lr in $HF_LRS; do train_one hf_bert 1 "$RUNS/probe-lr$lr" "$lr" "$PROBE_BUDGET"; done ) \
    > "$RUNS/probes-hf_bert.log" 2>&1 &
  wait $p0; wait $!
  ttq pick --out "$RUNS/picked" --candidates "$RUNS"/probe-lr* | tee "$RUNS/picked.log"
}

picked_lr() {  # the learning rate of the probe folder `pick` chose for model $1
  sed -n "s/^$1: picked .*probe-lr\([0-9.e-]*\) .*/\1/p" "$RUNS/picked/picked.txt"
}

train() {
  local lr0 lr1
  lr0=$(picked_lr mosaic_bert); lr1=$(picked_lr hf_bert)
  echo "training MosaicBERT-base at lr $lr0 (GPU 0) and BERT-base at lr $lr1 (GPU 1) for $BUDGET each"
  train_one mosaic_bert 0 "$RUNS/main" "$lr0" "$BUDGET" > "$RUNS/train-mosaic_bert.log" 2>&1 &
  local p0=$!
  train_one hf_bert 1 "$RUNS/main" "$lr1" "$BUDGET" > "$RUNS/train-hf_bert.log" 2>&1 &
  wait $p0; wait $!
}

glue() {  # both GLUE runs at once, each spreading its jobs over both GPUs
  local seeds=() t
  [ -d "$GLUE" ] || { echo "error: no GLUE folder at $GLUE (benchmarks/prepare_data.sh copies one)" >&2; return 1; }
  for t in ${GLUE_TASKS//,/ }; do seeds+=(--glue_extra "tasks.$t.seeds=$GLUE_SEEDS"); done
  ttq glue --out "$RUNS/main" --tokenizer "$VOCAB" --glue_data "$GLUE" --size "$SIZE" --concurrent_glue \
    --tasks "$GLUE_TASKS" "${seeds[@]}" "${GLUE_ARGS[@]}" > "$RUNS/glue.log" 2>&1
}

report() {
  ttq report --out "$RUNS/main" --dest "$RUNS/report" \
    --title "MosaicBERT-base vs BERT-base (batch $BATCH, $BUDGET each): held-out MLM loss"
}

case ${1:-} in
  all) probes && train && glue; report ;;
  probes|train|glue|report) "$1" ;;
  *) echo "usage: bash benchmarks/ttq_two_gpus.sh all|probes|train|glue|report" >&2; exit 2 ;;
esac
