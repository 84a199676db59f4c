#!/usr/bin/env bash
# Long sequences on one GPU: throughput at 512 and 2048 tokens, padded and packed, and a 1024-token continuation of
# a 128-token checkpoint (yamls/base-1024.yaml).
#   throughput  benchmarks/throughput.py on the documents (compiled, bf16): MosaicBERT-base at 512 (64 rows) and
#               2048 (16 rows), one document per row and packed, and at 1024 packed (64 rows, base-1024.yaml's
#               microbatch); Hugging Face BERT-base at 512 (it has 512 positions)
#   pretrain    `composer main.py yamls/base.yaml` at 128 tokens on DATA128 (default DATA, where each document is
#               truncated to 128 tokens; a split-mode set uses all the text), PRETRAIN_BATCHES batches of 256 at
#               lr 2e-4: the starting checkpoint
#   continue    `composer main.py yamls/base-1024.yaml` from that checkpoint for CONTINUE_BATCHES batches, evaluated at
#               1024 tokens before the first batch (eval_at_start) and every EVAL_EVERY
# usage: DATA=<documents shards> TOK=<tokenizer folder> OUT=long_out bash benchmarks/long_context.sh [STEP ...]
#   DATA: `python -m mosaicbert.pretrain.convert --mode documents --max_seq_len 2048 --tokenize` output (train/, val/)
#   DRY_RUN=1: the same steps with a tiny model on CPU, to check the script itself
set -euo pipefail
{
cd "$(dirname "$0")/.."
: "${DATA:?set DATA to a documents-mode MDS folder with train/ and val/}"
: "${TOK:?set TOK to a tokenizer folder (vocab.txt)}"
OUT=${OUT:-long_out}
PYTHON=${PYTHON:-python3}
DRY_RUN=${DRY_RUN:-0}
STEPS=("$@")
[ ${#STEPS[@]} -gt 0 ] || STEPS=(throughput pretrain continue)
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PRETRAIN_BATCHES=${PRETRAIN_BATCHES:-2000} CONTINUE_BATCHES=${CONTINUE_BATCHES:-800} EVAL_EVERY=${EVAL_EVERY:-200ba}
SIZE=base ROWS512=64 ROWS2048=16 BENCH=(--steps 20 --warmup 5) TINY=() TIME_SCALE=1
if [ "$DRY_RUN" = 1 ]; then
  PRETRAIN_BATCHES=4 CONTINUE_BATCHES=3 EVAL_EVERY=2ba SIZE=tiny ROWS512=4 ROWS2048=2 TIME_SCALE=20
  BENCH=(--steps 2 --warmup 1 --device cpu --modes eager)
  TINY=(device=cpu precision=fp32 global_train_batch_size=8 device_train_microbatch_size=4 device_eval_batch_size=4
        "model.config_overrides={vocab_size: 30528, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 2,
        intermediate_size: 128}" data.num_workers=1 eval_subset_num_batches=2)
fi

source benchmarks/run_step.sh  # run NAME SECONDS CMD...

bench() {  # bench NAME SEQ ROWS MODELS [--packing]
  local name=$1 seq=$2 rows=$3 models=$4; shift 4
  run "$name" 240 "$PYTHON" benchmarks/throughput.py --data "$DATA" --tokenizer "$TOK" --size "$SIZE" \
    --models "$models" --modes compiled --seq "$seq" --batch "$rows" "${BENCH[@]}" --out "$OUT/$name.json" "$@"
}

for step in "${STEPS[@]}"; do
  case $step in
    throughput)
      bench tput-512 512 "$ROWS512" mosaic_bert,hf_bert
      bench tput-512-packed 512 "$ROWS512" mosaic_bert --packing
      bench tput-1024-packed 1024 "$ROWS512" mosaic_bert --packing  # yamls/base-1024.yaml's microbatch
      bench tput-2048 2048 "$ROWS2048" mosaic_bert
      bench tput-2048-packed 2048 "$ROWS2048" mosaic_bert --packing
      ;;
    pretrain)
      rm -rf "$OUT/ckpt-base-128"
      run pretrain-128 400 "$PYTHON" -m composer.cli.launcher -n 1 --master_port 29641 main.py yamls/base.yaml \
        data.local="${DATA128:-$DATA}" tokenizer="$TOK" run_name=base-128 save_folder="$OUT/ckpt-base-128" \
        global_train_batch_size=256 optimizer.lr=2.0e-4 max_duration="${PRETRAIN_BATCHES}ba" \
        save_interval="${PRETRAIN_BATCHES}ba" eval_interval="${PRETRAIN_BATCHES}ba" eval_subset_num_batches=20 \
        loggers.console_log_interval=100ba callbacks.speed_monitor.window_size=50 "${TINY[@]}"
      ;;
    continue)
      rm -rf "$OUT/ckpt-base-1024"
      run continue-1024 400 "$PYTHON" -m composer.cli.launcher -n 1 --master_port 29642 main.py \
        yamls/base-1024.yaml data.local="$DATA" tokenizer="$TOK" \
        model.pretrained_checkpoint="$OUT/ckpt-base-128/latest-rank0.pt" save_folder="$OUT/ckpt-base-1024" \
        max_duration="${CONTINUE_BATCHES}ba" save_interval="${CONTINUE_BATCHES}ba" eval_interval="$EVAL_EVERY" \
        eval_subset_num_batches=20 global_train_batch_size=64 loggers.console_log_interval=50ba \
        callbacks.speed_monitor.window_size=20 "${TINY[@]}"
      ;;
    *) echo "unknown step '$step': use throughput pretrain continue" >&2; exit 2 ;;
  esac
done

# ---- summary ----
"$PYTHON" - "$OUT" <<'PY'
import json, sys
from pathlib import Path

out = Path(sys.argv[1])
print("| run | model | seq | packed | padding | real tok/s | MFU | peak GiB |")
print("|---|---|---|---|---|---|---|---|")
for f in sorted(out.glob("tput-*.json")):
    for r in json.loads(f.read_text())["rows"]:
        if "error" in r:
            print(f"| {f.stem} | {r['model']} | failed: {r['error'][:100]} |||||")
            continue
        print(f"| {f.stem} | {r['model']} | {r['seq']} | {'yes' if r['packing'] else 'no'} | {r['padding']:.1%} | "
              f"{r['real_tokens_per_s']:,.0f} | {r['mfu']:.1%} | {r['peak_mem_gib']:.1f} |")
for name in ("base-128", "base-1024"):
    path = out / f"ckpt-{name}" / "metrics.jsonl"
    if path.exists():
        evals = [json.loads(l) for l in path.read_text().splitlines() if "eval/LanguageCrossEntropy" in l]
        print(name, "held-out loss by batch:",
              ", ".join(f"{e.get('batch')}: {e['eval/LanguageCrossEntropy']:.3f}" for e in evals))
PY
}
