#!/usr/bin/env bash
# Issue 4: short GPU calls, results under $OUT/<job>/. `profile` and `main` use two GPUs, one job per GPU (on a
# 1-GPU machine the jobs of `main` run one after the other); the others run on one GPU, one job after the other.
#   profile   GPU 0: GPU tests; the compiled MosaicBERT-base step profiled (top kernels) with graph breaks logged
#             GPU 1: the same step with inductor's coordinate-descent tuning, then with pointwise autotuning
#   main      GPU 0: GPU tests; the base table (MosaicBERT with the triton / torch dropout mask, HF BERT; compiled,
#                    one run, profiled, graph breaks logged)
#             GPU 1: `main.py yamls/base.yaml` speed monitor, batch 256, then throughput.py --data on the same rows
#   accum     one GPU: the table; main.py at the recipe's global batch 4096 in microbatches of 256; --data
#   counts    one GPU: GPU tests; the table with and without the collator's host counts, and HF BERT; main.py at
#             global batch 4096 (microbatches of 256) and 256; throughput.py --data
#   sizes     one GPU: the fused GeGLU-dropout candidate against the current code and HF BERT; large at S=128 and
#             base at S=512
#   tune      one GPU: fused GeGLU-dropout kernel launch configurations (standalone); max-autotune compile
#   epilogue  one GPU: the GeGLU up-projection with its activation in the matmul's epilogue: tile configurations
#             (standalone), then the step with the fastest against the current code
#   attention one GPU: GPU tests; attention alone per tile configuration and pipeline depth (ATTENTION_BLOCKS);
#             the table, profiled, with kernel timelines
#   graphs    one GPU: GPU tests (CUDA graphs with packed_length_multiple among them); is the step bound by the
#             host's launches? MosaicBERT-base on static batches (fixed T and M)
#             compiled without and with CUDA graphs (reduce-overhead); the usual batches with and without
#             packed_length_multiple=1024, without and with CUDA graphs
#   graphs_main one GPU: main.py at the recipe's batch with CUDA graphs (packed_length_multiple=1024) and without;
#             inductor's combo kernels (fewer launches) against the current code
#   power     one GPU: is the step bound by the GPU's power limit? The table (200 timed steps per row) and a
#             10-second sustained matmul peak, with the SM clock, power and throttle reasons sampled every 100 ms
#   power_main one GPU: main.py at the recipe's batch and throughput.py --data on the same rows, with the same
#             sampling; then inductor's generated code for the compiled step, kept where it calls ATen's sum
#   inductor_env one GPU: MosaicBERT-base with inductor settings read from the environment, one process each:
#             the defaults, programmatic dependent launch (PDL), mix-order reductions off
#   origins   one GPU: the table with inductor's combo kernels as a variant, with kernel timelines and their idle
#             gaps; then one step traced with the host's ops, naming the ops that launch the memsets and the
#             reductions outside inductor
# usage: OUT=dir LIMIT=seconds bash benchmarks/gpu_speed_check.sh JOB [DATA_MDS] [VOCAB], JOB one of the above
set -uo pipefail
cd "$(dirname "$0")/.."
STEP=${1:?profile or main}
DATA=${2:-gpu_carry/tok-mds}; VOCAB=${3:-gpu_carry/vocab}
OUT=${OUT:-speed_out}; LIMIT=${LIMIT:-560}
NGPU=$(nvidia-smi -L 2>/dev/null | wc -l)  # 1: run the per-GPU jobs one after the other on GPU 0
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
T0=$SECONDS
left() { local l=$((LIMIT - (SECONDS - T0) - 10)); echo $((l > 1 ? l : 1)); }  # timeout rejects <= 0
TP=(python3 benchmarks/throughput.py --profile_top 40)

# logged LOG SECONDS CMD...: CMD under a time limit, its output and exit status into LOG
logged() { local log=$1 secs=$2; shift 2; timeout -k 5 "$secs" "$@" > "$log" 2>&1; echo "exit $?" >> "$log"; }
# bench DIR NAME ARGS...: throughput.py ARGS with the time left, into DIR/NAME.json and DIR/NAME.log
bench() { local dir=$1 name=$2; shift 2; logged "$dir/$name.log" "$(left)" "${TP[@]}" "$@" --out "$dir/$name.json"; }
# gpu_tests DIR [TEST_FILE]: the GPU-marked tests into DIR/gpu_tests.log
gpu_tests() { logged "$1/gpu_tests.log" 150 python3 -m pytest -q -m gpu "${2:-tests/test_model_gpu.py}"; }
# main.py's speed monitor on the MDS rows: speed_main DIR NAME GLOBAL_BATCH BATCHES WINDOW [OVERRIDES...]
# (microbatches of 256)
speed_main() {
  logged "$1/main_$2.log" "$(left)" python3 -m composer.cli.launcher -n 1 main.py yamls/base.yaml data.local="$DATA" \
    tokenizer="$VOCAB" run_name=speed-main-$2 global_train_batch_size=$3 device_train_microbatch_size=256 \
    max_duration=$4ba eval_interval=10000ba eval_subset_num_batches=2 save_folder="$(mktemp -d)" \
    save_interval=10000ba autoresume=false compile=true data.num_workers=8 loggers.console_log_interval=$5ba \
    callbacks.speed_monitor.window_size=$5 "${@:6}"
}
# the benchmark on the same rows: throughput_on_data DIR
throughput_on_data() {
  bench "$1" throughput_data --models mosaic_bert --modes compiled --data "$DATA" --tokenizer "$VOCAB"
}

case $STEP in
profile)
  mkdir -p "$OUT"/{gpu0,gpu1}
  (export CUDA_VISIBLE_DEVICES=0; o=$OUT/gpu0
   gpu_tests "$o"
   TORCH_LOGS=graph_breaks,recompiles bench "$o" profile --models mosaic_bert --modes compiled --profile 3) &
  (export CUDA_VISIBLE_DEVICES=1; o=$OUT/gpu1
   TORCHINDUCTOR_COORDINATE_DESCENT_TUNING=1 bench "$o" coordinate_descent --models mosaic_bert --modes compiled \
     --profile 3
   TORCHINDUCTOR_MAX_AUTOTUNE_POINTWISE=1 bench "$o" autotune_pointwise --models mosaic_bert --modes compiled \
     --profile 3) &
  wait
  ;;
main)
  mkdir -p "$OUT"/{gpu0,gpu1}
  [ "$NGPU" = 1 ] && G1=0 || G1=1
  (export CUDA_VISIBLE_DEVICES=0; o=$OUT/gpu0
   gpu_tests "$o"
   TORCH_LOGS=graph_breaks,recompiles bench "$o" table --models mosaic_bert,hf_bert --modes compiled --profile 2 \
     --trace "$o/trace" --mosaic_configs default dropout_kernel=torch) &
  [ "$NGPU" = 1 ] && wait  # one GPU: the jobs one after the other
  (export CUDA_VISIBLE_DEVICES=$G1; o=$OUT/gpu1
   speed_main "$o" base 256 350 50
   throughput_on_data "$o") &
  wait
  ;;
accum)
  # one GPU, one after the other: the table (MosaicBERT and HF BERT compiled, one run); main.py with the recipe's
  # global batch 4096 in microbatches of 256 (16 per step, as one GPU runs yamls/base.yaml); throughput.py --data
  mkdir -p "$OUT"/gpu0; o=$OUT/gpu0; export CUDA_VISIBLE_DEVICES=0
  bench "$o" table --models mosaic_bert,hf_bert --modes compiled --profile 2
  speed_main "$o" accum 4096 35 10
  throughput_on_data "$o"
  ;;
counts)
  # one GPU: GPU tests; the table with and without the collator's host counts (device_counts = the nonzero syncs)
  # and HF BERT, profiled, with kernel timelines; main.py at the recipe's global batch (4096 in microbatches of
  # 256) and at global 256; throughput.py --data on the same rows
  mkdir -p "$OUT"/gpu0; o=$OUT/gpu0; export CUDA_VISIBLE_DEVICES=0
  gpu_tests "$o"
  bench "$o" table --models mosaic_bert,hf_bert --modes compiled --profile 2 --trace "$o/trace" \
    --variants current,device_counts
  speed_main "$o" accum 4096 35 7
  speed_main "$o" b256 256 300 60
  throughput_on_data "$o"
  ;;
sizes)
  # one GPU: the fused GeGLU-dropout candidate (its backward now a custom op) against the current code and HF BERT
  # (base, S=128); then large at S=128 and base at S=512 (batch 64), MosaicBERT and HF BERT compiled
  mkdir -p "$OUT"/gpu0; o=$OUT/gpu0; export CUDA_VISIBLE_DEVICES=0
  gpu_tests "$o" tests/test_fused_geglu_dropout.py
  bench "$o" table --models mosaic_bert,hf_bert --modes compiled --profile 2 --variants current,fused_geglu_dropout
  bench "$o" large --models mosaic_bert,hf_bert --modes compiled --size large
  bench "$o" seq512 --models mosaic_bert,hf_bert --modes compiled --seq 512 --batch 64
  ;;
epilogue)
  # one GPU: the GeGLU up-projection with the activation in the matmul's epilogue, per tile configuration, against
  # the model's kernels (standalone); then the step with the fastest configuration against the current code
  mkdir -p "$OUT"/gpu0; o=$OUT/gpu0; export CUDA_VISIBLE_DEVICES=0
  logged "$o/epilogue_tests.log" 60 python3 -m pytest -q tests/test_geglu_epilogue.py
  logged "$o/sweep.log" 240 python3 benchmarks/geglu_epilogue.py "$o/sweep.json"
  best=$(python3 benchmarks/geglu_epilogue.py --best "$o/sweep.json")
  echo "fastest: $best" >> "$o/sweep.log"
  GEGLU_EPILOGUE_BLOCKS=$best bench "$o" table --models mosaic_bert --modes compiled --profile 2 \
    --variants current,geglu_epilogue
  ;;
tune)
  # one GPU: the fused GeGLU-dropout kernels per launch configuration against the model's kernels (standalone);
  # then MosaicBERT-base compiled with inductor's max-autotune (Triton GEMM templates with fused epilogues)
  mkdir -p "$OUT"/gpu0; o=$OUT/gpu0; export CUDA_VISIBLE_DEVICES=0
  logged "$o/sweep.log" 120 python3 benchmarks/fused_geglu_dropout.py "$o/sweep.json"
  bench "$o" max_autotune --models mosaic_bert --modes compiled --variants current --mosaic_configs default \
    --compile_mode max-autotune-no-cudagraphs
  ;;
attention)
  # the defaults (forward 64x64, one-kernel backward 16x128; 4 warps) at 1, 2 and 4 pipeline stages
  ATTENTION_BLOCKS=${ATTENTION_BLOCKS:-64x64 64x64:4:1 64x64:4:2 64x64:4:4 16x128 16x128:4:1 16x128:4:2 16x128:4:4}
  mkdir -p "$OUT"/gpu0; o=$OUT/gpu0; export CUDA_VISIBLE_DEVICES=0
  gpu_tests "$o"
  # 64x64: the three-kernel backward (the old default); key block 128: the one-kernel backward
  logged "$o/attention.log" 120 python3 benchmarks/attention_backends.py --out "$o/attention.json" \
    --backends triton --triton_blocks $ATTENTION_BLOCKS
  [ -n "${NO_TABLE:-}" ] && exit 0
  bench "$o" table --models mosaic_bert,hf_bert --modes compiled --profile 2 --trace "$o/trace"
  ;;
graphs)
  mkdir -p "$OUT"/gpu0; o=$OUT/gpu0; export CUDA_VISIBLE_DEVICES=0
  gpu_tests "$o"
  for mode in default reduce-overhead; do
    extra=(); [ "$mode" != default ] && extra=(--compile_mode "$mode")
    bench "$o" "static_$mode" --models mosaic_bert --modes compiled --static_batches --profile 2 "${extra[@]}"
  done
  # the usual batches: exact T and M, and rounded up to multiples of 1024 (few shapes); then the rounded ones with
  # CUDA graphs (not the exact ones: the benchmark cycles through 8 batches, so graphs for 8 shapes would be
  # replayed, while training meets a new T almost every step)
  bench "$o" rounded --models mosaic_bert --modes compiled --profile 2 \
    --mosaic_configs default packed_length_multiple=1024
  bench "$o" rounded_graphs --models mosaic_bert --modes compiled --profile 2 --compile_mode reduce-overhead \
    --mosaic_configs packed_length_multiple=1024
  ;;
graphs_main)
  mkdir -p "$OUT"/gpu0; o=$OUT/gpu0; export CUDA_VISIBLE_DEVICES=0
  speed_main "$o" graphs 4096 35 7 compile_mode=reduce-overhead model.config_overrides.packed_length_multiple=1024
  speed_main "$o" accum 4096 35 7
  bench "$o" combo --models mosaic_bert --modes compiled --profile 2 --variants current,combo_kernels
  ;;
power | power_main)
  mkdir -p "$OUT"/gpu0; o=$OUT/gpu0; export CUDA_VISIBLE_DEVICES=0
  q=timestamp,utilization.gpu,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu
  nvidia-smi --query-gpu=$q,clocks_event_reasons.active --format=csv -i 0 > /dev/null 2>&1 &&
    q=$q,clocks_event_reasons.active,clocks_event_reasons.sw_power_cap,clocks_event_reasons.sw_thermal_slowdown
  nvidia-smi --query-gpu=$q --format=csv -i 0 -lms 100 > "$o/smi.csv" 2>&1 & smi=$!
  if [ "$STEP" = power ]; then
    bench "$o" table --models mosaic_bert,hf_bert --modes compiled --steps 200 --profile 2 \
      --sustained_peak_seconds 10
  else
    speed_main "$o" accum 4096 35 7
    throughput_on_data "$o"
    TORCH_LOGS=output_code bench "$o" code --models mosaic_bert --modes compiled --steps 2 --warmup 1
    grep -n -B6 "aten\.sum\|reduce_kernel" "$o/code.log" > "$o/aten_sum_calls.txt"; gzip "$o/code.log"
  fi
  kill $smi
  ;;
inductor_env)
  mkdir -p "$OUT"/gpu0; o=$OUT/gpu0; export CUDA_VISIBLE_DEVICES=0
  for setting in default TORCHINDUCTOR_ENABLE_PDL=1 TORCHINDUCTOR_MIX_ORDER_REDUCTION=0; do
    (if [ "$setting" != default ]; then export "${setting?}"; fi
     bench "$o" "env_${setting%%=*}" --models mosaic_bert --modes compiled --steps 100 --profile 2)
  done
  ;;
origins)
  mkdir -p "$OUT"/gpu0; o=$OUT/gpu0; export CUDA_VISIBLE_DEVICES=0
  bench "$o" table --models mosaic_bert,hf_bert --modes compiled --profile 2 --trace "$o/trace" \
    --variants current,combo_kernels
  for t in "$o"/trace-*.json; do python3 benchmarks/kernel_gaps.py "$t" --steps 2 > "${t%.json}.gaps.txt" 2>&1; done
  bench "$o" host --models mosaic_bert --modes compiled --profile 2 --trace "$o/host" --trace_host
  for t in "$o"/host-*.json; do
    python3 benchmarks/kernel_gaps.py "$t" --steps 2 --top 25 \
      --origins Memset reduce_kernel splitKreduce triton_red_fused_sum Memcpy > "${t%.json}.origins.txt" 2>&1
  done
  gzip "$o"/*.json
  ;;
*) echo "unknown step $STEP" >&2; exit 2 ;;
esac
