#!/usr/bin/env bash
# Issue 4 measurements on a machine with 4 GPUs: four independent jobs, one per GPU, at once (each job's results
# under $OUT/<job>/). Each runs under `timeout`, so one hang leaves the others' results.
#   probe   (GPU 0): benchmarks/speed_probe.sh: GPU tests, base throughput of both models (eager + compiled, profiled)
#   mainpy  (GPU 1): `composer main.py yamls/base.yaml` speed monitor, then throughput.py --data on the same MDS rows
#   sizes   (GPU 2): throughput.py, both models compiled: large at seq 128, base at seq 512
#   kernels (GPU 3): attention backends per layer (sdpa, flex, torch, triton), compiled MosaicBERT max-autotune
# usage: OUT=dir bash benchmarks/gpu_speed_session.sh [DATA_MDS] [VOCAB]   (defaults gpu_carry/tok-mds gpu_carry/vocab)
set -uo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-gpu_carry/tok-mds}; VOCAB=${2:-gpu_carry/vocab}; OUT=${OUT:-speed_out}; LIMIT=${LIMIT:-520}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"/{probe,mainpy,sizes,kernels}
T0=$SECONDS
left() { local l=$((LIMIT - (SECONDS - T0))); echo $((l > 16 ? l : 16)); }  # callers subtract 15

(export CUDA_VISIBLE_DEVICES=0; OUT="$OUT/probe" bash benchmarks/speed_probe.sh > "$OUT/probe/probe.log" 2>&1) &

(export CUDA_VISIBLE_DEVICES=1; cd_out="$OUT/mainpy"
 timeout -k 10 300 python3 -m composer.cli.launcher -n 1 main.py yamls/base.yaml data.local="$DATA" tokenizer="$VOCAB" \
   run_name=speed-base global_train_batch_size=256 device_train_microbatch_size=256 max_duration=600ba \
   eval_interval=10000ba eval_subset_num_batches=2 save_folder="$(mktemp -d)" save_interval=10000ba \
   autoresume=false compile=true data.num_workers=8 loggers.console_log_interval=50ba \
   callbacks.speed_monitor.window_size=50 > "$cd_out/main_base.log" 2>&1
 echo "main.py exit $?" >> "$cd_out/main_base.log"
 timeout -k 10 $(( $(left) - 15 )) python3 benchmarks/throughput.py --models mosaic_bert --modes compiled \
   --data "$DATA" --tokenizer "$VOCAB" --out "$cd_out/throughput_data.json" > "$cd_out/throughput_data.log" 2>&1
 echo "throughput exit $?" >> "$cd_out/throughput_data.log") &

(export CUDA_VISIBLE_DEVICES=2
 timeout -k 10 240 python3 benchmarks/throughput.py --size large --modes compiled \
   --out "$OUT/sizes/throughput_large.json" > "$OUT/sizes/large.log" 2>&1
 echo "exit $?" >> "$OUT/sizes/large.log"
 timeout -k 10 $(( $(left) - 15 )) python3 benchmarks/throughput.py --seq 512 --batch 64 --modes compiled \
   --out "$OUT/sizes/throughput_seq512.json" > "$OUT/sizes/seq512.log" 2>&1
 echo "exit $?" >> "$OUT/sizes/seq512.log") &

(export CUDA_VISIBLE_DEVICES=3
 timeout -k 10 150 python3 benchmarks/attention_backends.py --out "$OUT/kernels/attention_backends.json" \
   > "$OUT/kernels/attention.log" 2>&1
 echo "exit $?" >> "$OUT/kernels/attention.log"
 timeout -k 10 $(( $(left) - 15 )) python3 benchmarks/throughput.py --models mosaic_bert --modes compiled \
   --compile_mode max-autotune-no-cudagraphs --out "$OUT/kernels/throughput_autotune.json" \
   > "$OUT/kernels/autotune.log" 2>&1
 echo "exit $?" >> "$OUT/kernels/autotune.log") &

wait
echo "all jobs done in $((SECONDS - T0)) s"
