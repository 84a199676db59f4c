#!/usr/bin/env bash
# Time-to-quality: MosaicBERT vs HF BERT for the same wall-clock budget, then GLUE from both checkpoints and from a
# random-init MosaicBERT, on one machine with 2 × (number of learning rates) GPUs; with fewer GPUs the training runs
# go one after another.
#   train:  MosaicBERT and HF BERT (--size small, same batch, schedule shape and wall-clock budget) at each learning
#           rate in LRS, each run on its own GPU, all at once; then `pick` the better learning rate per model.
#   glue:   finetune the picked MosaicBERT, the picked HF BERT and a random-init MosaicBERT on the local GLUE tasks,
#           the three runs at once, each spreading its jobs over every GPU.
#   report: loss_vs_time.png/csv and time_to_quality.md under DEST (one report per learning rate beside it).
# usage: bash benchmarks/time_to_quality.sh train|glue|report
# env (defaults): DATA=bench_data/tok-mds VOCAB=bench_data/vocab GLUE=bench_data/glue RUNS=runs/ttq BUDGET=5min
#   EVAL_EVERY=20s SIZE=small LRS="1e-3 5e-4" DEST=$RUNS/report GLUE_SEEDS=reduced|published PYTHON=python3
#   SEGMENT=seconds: stop `train` after this long (for a budget longer than a job's time limit: run `train` again to
#   resume)
#   TRAIN_ARGS / GLUE_ARGS: extra arguments for `time_to_quality.py train` / `glue` (e.g. for a CPU dry run)
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${DATA:-bench_data/tok-mds}; VOCAB=${VOCAB:-bench_data/vocab}; GLUE=${GLUE:-bench_data/glue}
RUNS=${RUNS:-runs/ttq}; BUDGET=${BUDGET:-5min}; EVAL_EVERY=${EVAL_EVERY:-20s}; SIZE=${SIZE:-small}
LRS=${LRS:-"1e-3 5e-4"}; DEST=${DEST:-$RUNS/report}; PY=${PYTHON:-python3}; GLUE_SEEDS=${GLUE_SEEDS:-reduced}
read -r -a TRAIN_ARGS <<< "${TRAIN_ARGS:-}${SEGMENT:+ --segment_timeout $SEGMENT}"
read -r -a GLUE_ARGS <<< "${GLUE_ARGS:-}"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
ttq() { "$PY" benchmarks/time_to_quality.py "$@"; }
mkdir -p "$RUNS"

case ${1:-} in
train)
  n_gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
  read -r -a lrs <<< "$LRS"
  gpu=0; pids=()
  for lr in "${lrs[@]}"; do
    gpus=()
    if (( n_gpus >= 2 * ${#lrs[@]} )); then gpus=(--gpus "$gpu,$((gpu + 1))"); gpu=$((gpu + 2)); fi
    ttq train --out "$RUNS/lr$lr" --data "$DATA" --tokenizer "$VOCAB" --size "$SIZE" --budget "$BUDGET" \
      --eval_every "$EVAL_EVERY" --lr "$lr" "${gpus[@]}" "${TRAIN_ARGS[@]}" > "$RUNS/train-lr$lr.log" 2>&1 &
    pids+=($!)
    (( ${#gpus[@]} )) || wait "${pids[-1]}"  # no spare GPUs: one run after another
  done
  status=0
  for p in "${pids[@]}"; do wait "$p" || status=1; done
  echo "train exit $status"
  candidates=(); for lr in "${lrs[@]}"; do candidates+=("$RUNS/lr$lr"); done
  ttq pick --out "$RUNS/best" --candidates "${candidates[@]}" || status=1
  exit $status
  ;;
glue)
  # The published seeds are RTE/MRPC/STS-B 5, CoLA 4, SST-2 3; `reduced` runs 3/3/3, 2, 1 (about 4 minutes on 4 H200).
  seeds=()
  if [[ $GLUE_SEEDS == reduced ]]; then
    for s in 'tasks.rte.seeds=[19,8364,717]' 'tasks.mrpc.seeds=[19,8364,717]' 'tasks.stsb.seeds=[19,8364,717]' \
             'tasks.cola.seeds=[19,8364]' 'tasks.sst2.seeds=[19]'; do seeds+=(--glue_extra "$s"); done
  fi
  ttq glue --out "$RUNS/best" --tokenizer "$VOCAB" --glue_data "$GLUE" --size "$SIZE" \
    --random_init_baseline mosaic_bert --concurrent_glue --tasks cola,sst2,mrpc,stsb,rte "${seeds[@]}" \
    "${GLUE_ARGS[@]}"
  status=$?
  echo "glue exit $status"
  exit $status
  ;;
report)
  ttq report --out "$RUNS/best" --dest "$DEST" \
    --title "MosaicBERT vs HF BERT ($SIZE, batch 256, $BUDGET each): held-out MLM loss"
  for lr in $LRS; do
    [ -d "$RUNS/lr$lr" ] && ttq report --out "$RUNS/lr$lr" --dest "$DEST/lr$lr" --title "lr $lr" > /dev/null
  done
  ;;
*)
  echo "usage: bash benchmarks/time_to_quality.sh train|glue|report" >&2; exit 2 ;;
esac
