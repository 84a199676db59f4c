#!/usr/bin/env bash
# Data-parallel scaling of the pretraining recipe on one machine with 2 GPUs. Time with a cold compile cache:
# single+ddp+knobs about 6 minutes, large about 10 (each step has a time limit: at most 10 minutes per group).
#   single  (a) `composer -n 1 main.py yamls/base.yaml` on GPU 0, in parallel with
#           (b) benchmarks/throughput.py --data on the same rows on GPU 1 (the single-GPU step benchmark), then the
#               same step with a dense last layer (sparse_last_layer=false: the sparse last layer's speedup)
#   ddp     (c) `composer -n 2 main.py yamls/base.yaml`
#   knobs   (d) (c) with ddp.optimize_ddp=true (one compiled graph per gradient bucket, so that each bucket's
#           all-reduce can overlap the backward; the default false compiles one graph)
#   large   (e) `composer -n 2 main.py yamls/large.yaml`, DDP and then fsdp FULL_SHARD, with peak memory; the FSDP
#           run saves, restarts with autoresume for a few more batches, and its checkpoint is exported and loaded
# Every run changes only data, tokenizer, duration, checkpointing and logging; samples/s is main.py's console line
# (median of its 5-batch windows after warm-up and compilation) and, from metrics.jsonl, the mean over the
# second half of the run, epoch boundaries included. A table of all runs in "$OUT" ends the output.
#
#   On a machine with one GPU, only `single` applies: (a) and (b) run one after the other.
#
# usage: DATA=bench_data/tok-mds TOK=bench_data/vocab OUT=scaling_out bash benchmarks/scaling.sh [STEP ...]
#   e.g. `bash benchmarks/scaling.sh single ddp knobs`, then `bash benchmarks/scaling.sh large` (same OUT)
#   DATA: pre-tokenized MDS folder with train/ and val/ (benchmarks/prepare_data.sh writes one)
#   TOK: tokenizer folder (vocab.txt); STEP: single ddp knobs large (default: all, in that order; the summary
#   covers every run found in "$OUT", so steps can be run in separate calls; `summary` alone only prints it).
#   Each run's log: "$OUT"/<name>.log
#   DRY_RUN=1: the same steps with a tiny model on CPU (gloo), to check the script itself
set -euo pipefail
{ # read to the end before running: editing the file during a run does not change the run
cd "$(dirname "$0")/.."
: "${DATA:?set DATA to a pre-tokenized MDS folder with train/ and val/ splits}"
: "${TOK:?set TOK to a tokenizer folder (vocab.txt)}"
OUT=${OUT:-scaling_out}
PYTHON=${PYTHON:-python3}
DRY_RUN=${DRY_RUN:-0}
GPU_COUNT=${GPU_COUNT:-$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)}
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(single ddp knobs large)
for s in "${STEPS[@]}"; do
  case $s in single|ddp|knobs|large|summary) ;; *) echo "unknown step '$s': use single ddp knobs large summary" >&2; exit 2 ;; esac
done
mkdir -p "$OUT"
# this checkout's package, whether or not (and wherever) mosaicbert is installed
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false

# Lengths in batches of 4096 samples (base on one H200: ~1.2 batches/s compiled, two: ~2.2, so 70 batches on one GPU
# are ~60 s and 70 on two pass one epoch boundary of the 167k-row set of three of the six corpus files; large on two: ~0.8 batches/s).
BASE1_BATCHES=70 BASE2_BATCHES=70 LARGE_BATCHES=16 LARGE_MORE=4 BENCH_STEPS=60
BASE=yamls/base.yaml LARGE=yamls/large.yaml
TIME_SCALE=${TIME_SCALE:-1}  # the time limits below are for the GPUs
TINY=()
if [ "$DRY_RUN" = 1 ]; then
  # the quickstart-sized model, fp32 on CPU, 2 gloo processes; same steps and parsing
  BASE1_BATCHES=12 BASE2_BATCHES=12 LARGE_BATCHES=4 LARGE_MORE=2 BENCH_STEPS=3
  TIME_SCALE=${TIME_SCALE:-20}  # 2 CPU processes compete with the rest of the machine
  TINY=(device=cpu precision=fp32 global_train_batch_size=32 device_train_microbatch_size=8 device_eval_batch_size=32
        "model.config_overrides={vocab_size: 30528, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 2,
        intermediate_size: 128}" data.num_workers=1)
fi

source benchmarks/run_step.sh  # run NAME SECONDS CMD...

# train NAME SECONDS GPUS PORT CONFIG BATCHES [OVERRIDES...]: main.py through the composer launcher
train() {
  local name=$1 secs=$2 gpus=$3 port=$4 config=$5 batches=$6; shift 6
  rm -rf "$OUT/ckpt-$name" "$OUT/$name.rc"
  run "$name" "$secs" "$PYTHON" -m composer.cli.launcher -n "$gpus" --master_port "$port" main.py "$config" \
    data.local="$DATA" tokenizer="$TOK" run_name="$name" max_duration="${batches}ba" \
    eval_interval=100000ba eval_subset_num_batches=1 save_folder="$OUT/ckpt-$name" \
    save_interval="${batches}ba" save_num_checkpoints_to_keep=1 \
    callbacks.speed_monitor.window_size=10 loggers.console_log_interval=5ba "${TINY[@]}" "$@"
}

for step in "${STEPS[@]}"; do
  case $step in
    single)
      # (a) and (b) at once, one GPU each; on a one-GPU machine one after the other
      CUDA_VISIBLE_DEVICES=0 train base-1gpu 190 1 29611 "$BASE" "$BASE1_BATCHES" &
      bench_gpu=1
      if [ "$GPU_COUNT" -lt 2 ]; then wait || true; bench_gpu=0; fi
      if [ "$DRY_RUN" = 1 ]; then
        bench=(--size tiny --device cpu --batch 32 --steps "$BENCH_STEPS" --warmup 1)
      else
        bench=(--size base --batch 256 --steps "$BENCH_STEPS" --warmup 10)
      fi
      CUDA_VISIBLE_DEVICES=$bench_gpu run bench-1gpu 240 "$PYTHON" benchmarks/throughput.py --data "$DATA" --tokenizer "$TOK" \
        --models mosaic_bert --modes compiled --seq 128 --mask_prob 0.30 "${bench[@]}" --out "$OUT/bench-1gpu.json" \
        --mosaic_configs default sparse_last_layer=false &
      wait || true
      ;;
    ddp)
      train base-2gpu 160 2 29612 "$BASE" "$BASE2_BATCHES"
      ;;
    knobs)
      train base-2gpu-optimize-ddp 160 2 29613 "$BASE" "$BASE2_BATCHES" ddp.optimize_ddp=true
      ;;
    large)
      train large-2gpu-ddp 240 2 29615 "$LARGE" "$LARGE_BATCHES" callbacks.memory_monitor=true
      fsdp=("fsdp={sharding_strategy: FULL_SHARD}" callbacks.memory_monitor=true)
      train large-2gpu-fsdp 240 2 29616 "$LARGE" "$LARGE_BATCHES" "${fsdp[@]}"
      # autoresume: the same folder, a longer max_duration; it must continue from the saved batch (uncompiled:
      # this checks the checkpoint, not the speed)
      more=$((LARGE_BATCHES + LARGE_MORE))
      run large-2gpu-fsdp-resume 150 "$PYTHON" -m composer.cli.launcher -n 2 --master_port 29617 main.py "$LARGE" \
        data.local="$DATA" tokenizer="$TOK" run_name=large-2gpu-fsdp max_duration="${more}ba" \
        eval_interval=100000ba eval_subset_num_batches=1 save_folder="$OUT/ckpt-large-2gpu-fsdp" \
        save_interval="${more}ba" save_num_checkpoints_to_keep=1 autoresume=true compile=false "${TINY[@]}" "${fsdp[@]}"
      rm -rf "$OUT/large-fsdp-hf"
      run large-fsdp-export 60 "$PYTHON" -m mosaicbert.export "$OUT/ckpt-large-2gpu-fsdp/latest-rank0.pt" \
        "$OUT/large-fsdp-hf"
      run large-fsdp-load 40 "$PYTHON" -c "
import sys
from transformers import AutoModelForMaskedLM
model = AutoModelForMaskedLM.from_pretrained(sys.argv[1], trust_remote_code=True)
print(type(model).__name__, sum(p.numel() for p in model.parameters()), 'parameters loaded')" "$OUT/large-fsdp-hf"
      ;;
    summary) ;;
  esac
done

# ---- summary over every run in $OUT ------------------------------------------------------------------------
"$PYTHON" - "$OUT" <<'EOF'
import json, re, statistics, sys
from pathlib import Path

out = Path(sys.argv[1])


def speeds(log: str):
    """(batch, samples/s) from main.py's console lines: '[batch N/M P%] loss L | S samples/s | ...', each the rate
    since the line before (console_log_interval batches)."""
    return [(int(m.group(1)), float(m.group(2).replace(",", "")))
            for m in re.finditer(r"^\[batch (\d+)/\d+ [^]]*\] loss \S+ \| ([0-9,.]+) samples/s", log, re.M)]


def peak_gib(log: str):
    values = [float(v) for v in re.findall(r"Train memory/peak_allocated_mem: ([0-9.eE+-]+)", log)]
    return max(values) * 1e9 / 2**30 if values else None


def second_half_mean(name: str):
    path = out / f"ckpt-{name}" / "metrics.jsonl"
    if not path.exists():
        return None
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    rows = [r for r in rows if "train_loss" in r]
    if len(rows) < 3:
        return None
    mid, last = rows[len(rows) // 2], rows[-1]
    dt = last["train_seconds"] - mid["train_seconds"]
    return (last["samples"] - mid["samples"]) / dt if dt > 0 else None


bench = None
if (out / "bench-1gpu.json").exists():
    rows = [r for r in json.loads((out / "bench-1gpu.json").read_text())["rows"] if "seq_per_s" in r]
    default = [r for r in rows if not r.get("config_overrides")]
    dense = [r for r in rows if r.get("config_overrides") == {"sparse_last_layer": False}]
    bench = default[0]["seq_per_s"] if default else None
    if default and dense:
        d, s = dense[0], default[0]
        print(f"sparse last layer: {s['seq_per_s']:,.0f} samples/s (loss {s['final_loss']:.4f}) vs dense "
              f"{d['seq_per_s']:,.0f} (loss {d['final_loss']:.4f}): {s['seq_per_s'] / d['seq_per_s'] - 1:+.1%}")

status = {p.stem: p.read_text().strip() for p in sorted(out.glob("*.rc"))}
results = {}
for name in status:
    log_path = out / f"{name}.log"
    if name.startswith("bench") or not log_path.exists():
        continue
    log = log_path.read_text(errors="replace")
    s = speeds(log)
    if name.endswith(("-resume", "-export", "-load")):
        continue
    last_batch = max((b for b, _ in s), default=0)
    steady = [v for b, v in s if b > last_batch / 3]  # after compilation and warm-up
    gpus = 2 if "-2gpu" in name else 1
    results[name] = dict(gpus=gpus, median=statistics.median(steady) if steady else None,
                         low=min(steady) if steady else None, mean=second_half_mean(name), peak=peak_gib(log))

one = results.get("base-1gpu", {}).get("median")
fmt = lambda v, f="{:,.0f}": "-" if v is None else f.format(v)  # noqa: E731
print(f"\n{'run':32} {'exit':>4} {'GPUs':>4} {'samples/s':>10} {'min win':>9} {'2nd half':>9} "
      f"{'% bench':>8} {'scaling':>8} {'peak GiB':>9}")
if "bench-1gpu" in status:
    print(f"{'bench-1gpu (throughput.py)':32} {status['bench-1gpu']:>4} {1:>4} {fmt(bench):>10}")
for name, r in results.items():
    base = name.startswith("base")
    pct = r["median"] / (bench * r["gpus"]) * 100 if base and bench and r["median"] else None
    scale = r["median"] / (one * r["gpus"]) * 100 if base and one and r["median"] and r["gpus"] > 1 else None
    print(f"{name:32} {status[name]:>4} {r['gpus']:>4} {fmt(r['median']):>10} {fmt(r['low']):>9} "
          f"{fmt(r['mean']):>9} {fmt(pct, '{:.1f}%'):>8} {fmt(scale, '{:.1f}%'):>8} {fmt(r['peak'], '{:.1f}'):>9}")
for name in ("large-2gpu-fsdp-resume", "large-fsdp-export", "large-fsdp-load"):
    if name in status:
        print(f"{name:32} {status[name]:>4}")
resume_log = out / "large-2gpu-fsdp-resume.log"
if resume_log.exists():
    text = resume_log.read_text(errors="replace")
    found = "Autoresuming training from checkpoint" in text
    print("autoresume:", "continued from the saved checkpoint" if found else "NOT resumed (no 'Autoresuming' line)")
print("samples/s: median of the console's 5-batch windows after the first third of the run; min win: the "
      "slowest of them; 2nd half: samples / seconds over the second half (metrics.jsonl, epoch ends included); "
      "% bench: of throughput.py's compiled step x GPUs; scaling: of base-1gpu x GPUs")
failed = [n for n, rc in status.items() if rc != "0"]
sys.exit(1 if failed else 0)
EOF
exit $?
}
