#!/usr/bin/env bash
# The GPU measurements behind benchmarks/README.md, one job per run; results (JSON, logs) under $OUT/.
#   table      MosaicBERT-base and HF BERT-base compiled, 256 x 128, 200 timed steps, profiled; the 10-second
#              sustained matmul peak; the GPU's clock, power and throttle reasons sampled every 100 ms (smi.csv)
#   sizes      large at 256 x 128 and base at 64 x 512, MosaicBERT and HF BERT compiled
#   microbatch MosaicBERT-base compiled at microbatches of 128, 256 and 512
#   host_counts MosaicBERT-base with and without the collator's per-row token counts (no host sync vs one)
#   graphs     CUDA graphs: fixed-shape batches without and with reduce-overhead; the usual batches rounded to
#              multiples of 1024 (packed_length_multiple), without and with CUDA graphs
#   training   main.py (yamls/base.yaml, compiled) at the recipe's global batch 4096 in microbatches of 256 and at
#              global batch 256, then throughput.py on the same pre-tokenized rows
#   attention  each attention backend alone (one layer, forward + backward), and the triton kernel's tile sizes
#   tests      the GPU tests (pytest -m gpu)
# usage: OUT=dir LIMIT=seconds bash benchmarks/gpu_speed_check.sh JOB [DATA_MDS] [VOCAB]
#   DATA_MDS and VOCAB (default bench_data/tok-mds, bench_data/vocab from benchmarks/prepare_data.sh): job training
set -uo pipefail
cd "$(dirname "$0")/.."
JOB=${1:?usage: bash benchmarks/gpu_speed_check.sh table|sizes|microbatch|host_counts|graphs|training|attention|tests}
DATA=${2:-bench_data/tok-mds}; VOCAB=${3:-bench_data/vocab}
OUT=${OUT:-speed_out}; LIMIT=${LIMIT:-560}; PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
T0=$SECONDS
left() { local l=$((LIMIT - (SECONDS - T0) - 10)); echo $((l > 1 ? l : 1)); }  # timeout rejects <= 0
# logged LOG SECONDS CMD...: CMD under a time limit, its output and exit status into LOG
logged() { local log=$1 secs=$2; shift 2; timeout -k 5 "$secs" "$@" > "$log" 2>&1; echo "exit $?" >> "$log"; }
# bench NAME ARGS...: throughput.py ARGS with the time left, into $OUT/NAME.json and $OUT/NAME.log
bench() {
  local name=$1; shift
  logged "$OUT/$name.log" "$(left)" "$PY" benchmarks/throughput.py --profile_top 40 "$@" --out "$OUT/$name.json"
}
# train NAME GLOBAL_BATCH BATCHES WINDOW: main.py's speed monitor on the MDS rows (microbatches of 256)
train() {
  logged "$OUT/main_$1.log" "$(left)" "$PY" -m composer.cli.launcher -n 1 main.py yamls/base.yaml \
    data.local="$DATA" tokenizer="$VOCAB" run_name="speed-main-$1" global_train_batch_size="$2" \
    device_train_microbatch_size=256 max_duration="$3ba" eval_interval=10000ba eval_subset_num_batches=2 \
    save_folder="$(mktemp -d)" save_interval=10000ba autoresume=false compile=true data.num_workers=8 \
    loggers.console_log_interval="$4ba" callbacks.speed_monitor.window_size="$4"
}

case $JOB in
table)
  q=timestamp,utilization.gpu,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu
  nvidia-smi --query-gpu=$q,clocks_event_reasons.active --format=csv -i 0 > /dev/null 2>&1 &&
    q=$q,clocks_event_reasons.active,clocks_event_reasons.sw_power_cap,clocks_event_reasons.sw_thermal_slowdown
  nvidia-smi --query-gpu=$q --format=csv -i 0 -lms 100 > "$OUT/smi.csv" 2>&1 & smi=$!
  bench table --models mosaic_bert,hf_bert --modes compiled --steps 200 --profile 2 --sustained_peak_seconds 10
  kill $smi
  ;;
sizes)
  bench large --models mosaic_bert,hf_bert --modes compiled --size large
  bench seq512 --models mosaic_bert,hf_bert --modes compiled --seq 512 --batch 64
  ;;
microbatch)
  for b in 128 256 512; do bench "batch$b" --models mosaic_bert --modes compiled --steps 50 --batch $b; done
  ;;
host_counts)
  bench host_counts --models mosaic_bert --modes compiled --profile 2 --host_counts both
  ;;
graphs)
  bench static --models mosaic_bert --modes compiled --static_batches --profile 2
  bench static_graphs --models mosaic_bert --modes compiled --static_batches --profile 2 \
    --compile_mode reduce-overhead
  bench rounded --models mosaic_bert --modes compiled --profile 2 --mosaic_configs default packed_length_multiple=1024
  bench rounded_graphs --models mosaic_bert --modes compiled --profile 2 --compile_mode reduce-overhead \
    --mosaic_configs packed_length_multiple=1024
  ;;
training)
  train accum 4096 35 7
  train b256 256 300 60
  bench throughput_data --models mosaic_bert --modes compiled --data "$DATA" --tokenizer "$VOCAB"
  ;;
attention)
  logged "$OUT/attention.log" "$(left)" "$PY" benchmarks/attention_backends.py --out "$OUT/attention.json" \
    --triton_blocks 64x64 16x128
  ;;
tests)
  logged "$OUT/gpu_tests.log" "$(left)" "$PY" -m pytest -q -m gpu tests
  ;;
*) echo "unknown job $JOB" >&2; exit 2 ;;
esac
