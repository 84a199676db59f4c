#!/usr/bin/env bash
# The attention backends on one GPU, flash-attn included: the GPU tests, each backend alone (one layer's attention
# forward + backward at seq 128, 512 and 2048), and a compiled MosaicBERT-base training step with each backend
# (synthetic batches of 256 x 128). Ends with one summary table (also $OUT/summary.json).
#
# usage: PYTHONPATH=/tmp/flash_attn_site:$PWD/src OUT=dir bash benchmarks/flash_attn_gpu.sh
#   (flash-attn from benchmarks/build_flash_attn.sh, or installed with pip; without it its rows say "not installed")
# environment:
#   OUT       results folder (default flash_attn_out): logs, JSON, summary.json
#   BACKENDS  backends to time (default "flash_attn triton sdpa")
#   STAGES    which of "tests attention train" to run (default all three)
#   STEPS     timed training steps per backend (default 30)
#   LIMIT     seconds for the whole script (default 540); each stage gets what is left, so the summary still prints
#   PYTHON    default python3
#   DRY_RUN=1 a tiny CPU version of every stage: the tests are collected (and skipped without a GPU), the attention
#             benchmark only parses its arguments (it needs a GPU), the training step runs eager on CPU at tiny size
set -uo pipefail  # not -e: a failing stage is reported and the others still run
cd "$(dirname "$0")/.."
OUT=${OUT:-flash_attn_out}; PY=${PYTHON:-python3}; LIMIT=${LIMIT:-540}; DRY=${DRY_RUN:-0}
BACKENDS=${BACKENDS:-flash_attn triton sdpa}; STAGES=${STAGES:-tests attention train}; STEPS=${STEPS:-30}
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"
T0=$SECONDS
stage() { echo "[$(date +%H:%M:%S) +$((SECONDS - T0))s] $*"; }
left() { local l=$((LIMIT - (SECONDS - T0) - 15)); echo $((l > 1 ? l : 1)); }  # keep 15 s for the summary
# logged LOG CMD...: CMD under the time left, its output into LOG; prints and returns its exit status
logged() { local log=$1; shift; timeout -k 5 "$(left)" "$@" > "$log" 2>&1; local rc=$?; echo "exit $rc" >> "$log"; return $rc; }
want() { [[ " $STAGES " == *" $1 "* ]]; }

"$PY" - << 'EOF'
import torch

from mosaicbert.model import attention

dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
print("device:", torch.cuda.get_device_name() if dev.type == "cuda" else "cpu", "| torch", torch.__version__,
      "| flash-attn", attention.flash_attn.__version__ if attention.HAS_FLASH_ATTN else "not installed",
      "| triton", attention.HAS_TRITON)
EOF

if want tests; then
  stage "tests: pytest -m gpu (every GPU test) -> $OUT/gpu_tests.log"
  logged "$OUT/gpu_tests.log" "$PY" -m pytest -m gpu tests -q -rs -p no:cacheprovider
  rc=$?
  stage "tests: exit $rc | $(grep -E '(passed|failed|skipped|error)' "$OUT/gpu_tests.log" | tail -n 1)"
fi

if want attention; then
  # B x S with about the same number of tokens per call
  for shape in "256 128" "64 512" "16 2048"; do
    read -r batch seq <<< "$shape"
    if [ "$DRY" = 1 ]; then  # CPU: only the argument parsing can run; the script then stops for want of a GPU
      "$PY" benchmarks/attention_backends.py --out "$OUT/attention_s$seq.json" --batch "$batch" --seqlen "$seq" \
        --backends $BACKENDS --iters 2 --warmup 1 > "$OUT/attention_s$seq.log" 2>&1
      rc=$?
      if [ $rc = 1 ] && grep -q "needs a CUDA GPU" "$OUT/attention_s$seq.log"; then
        stage "attention S=$seq B=$batch: arguments OK (dry run, no GPU)"
      else
        stage "attention S=$seq B=$batch: FAILED (exit $rc): $(tail -n 2 "$OUT/attention_s$seq.log")"
      fi
      continue
    fi
    stage "attention S=$seq B=$batch -> $OUT/attention_s$seq.json"
    logged "$OUT/attention_s$seq.log" "$PY" benchmarks/attention_backends.py --out "$OUT/attention_s$seq.json" \
      --batch "$batch" --seqlen "$seq" --backends $BACKENDS --iters 30 --warmup 5
    rc=$?; [ $rc = 0 ] || stage "attention S=$seq: exit $rc, see $OUT/attention_s$seq.log"
  done
fi

if want train; then
  configs=(); for b in $BACKENDS; do configs+=("attention_backend=$b"); done
  if [ "$DRY" = 1 ]; then
    size=(--size tiny --device cpu --batch 8 --seq 32 --steps 2 --warmup 1 --modes eager)
  else
    size=(--size base --batch 256 --seq 128 --steps "$STEPS" --warmup 3 --modes compiled)
  fi
  stage "train: MosaicBERT ${size[*]}, ${configs[*]} -> $OUT/train.json"
  logged "$OUT/train.log" "$PY" benchmarks/throughput.py --models mosaic_bert "${size[@]}" \
    --mosaic_configs "${configs[@]}" --out "$OUT/train.json"
  rc=$?; [ $rc = 0 ] || stage "train: exit $rc, see $OUT/train.log"
fi

stage "summary"
"$PY" - "$OUT" $BACKENDS << 'EOF'
import json
import re
import sys
from pathlib import Path

import torch

from mosaicbert.model.attention import AUTO_PREFERENCE, resolve_backend

out, backends = Path(sys.argv[1]), sys.argv[2:]
dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32  # what the training step computes in
auto = resolve_backend("auto", dev, dtype, 64, 0.0).name
summary = {"auto": auto, "auto_preference": list(AUTO_PREFERENCE), "backends": {b: {} for b in backends}}
tests = out / "gpu_tests.log"
if tests.exists():
    lines = tests.read_text().splitlines()
    summary["tests"] = next((ln.strip("= ") for ln in reversed(lines)
                             if re.search(r"\d+ (passed|failed|skipped|errors?)\b", ln)), "no pytest summary line")
    summary["tests_exit"] = lines[-1] if lines else ""
shapes = {}
for f in sorted(out.glob("attention_s*.json"), key=lambda f: int(f.stem.split("_s")[1])):
    data = json.loads(f.read_text())
    c = data["config"]
    shape = f"S={c['seqlen']} B={c['batch']}"
    shapes[shape] = None
    for r in data["results"]:
        if r["backend"] in summary["backends"]:
            cell = summary["backends"][r["backend"]].setdefault("attention_ms", {}).setdefault(shape, {})
            cell[r["fill"]] = r.get("kernel_ms", r.get("error"))
train = out / "train.json"
if train.exists():
    for r in json.loads(train.read_text())["rows"]:
        b = (r.get("config_overrides") or {}).get("attention_backend")
        if b in summary["backends"]:
            summary["backends"][b]["train"] = (
                {"error": r["error"][:100]} if "error" in r else
                {k: r[k] for k in ("batch", "seq", "ms_per_step", "seq_per_s", "mfu", "peak_mem_gib")})
(out / "summary.json").write_text(json.dumps(summary, indent=2))


def ms(v):
    return f"{v:.3f}" if isinstance(v, float) else "-" if v is None else "err"


print(f"auto picks {auto} ({dev.type} {str(dtype)[6:]}, head dim 64, no attention dropout; "
      f"AUTO_PREFERENCE = {AUTO_PREFERENCE})")
if "tests" in summary:
    print(f"GPU tests: {summary['tests']} ({summary['tests_exit']})")
cols = [f"attn ms/layer {s} full/mixed" for s in shapes] + ["step ms", "samples/s", "MFU"]
print("| backend | " + " | ".join(cols) + " |")
print("|---" * (len(cols) + 1) + "|")
for b, d in summary["backends"].items():
    cells = []
    for s in shapes:
        fills = d.get("attention_ms", {}).get(s, {})
        cells.append(f"{ms(fills.get('full'))}/{ms(fills.get('mixed'))}")
    t = d.get("train")
    if t is None:
        cells += ["-", "-", "-"]
    elif "error" in t:
        cells += [f"failed: {t['error'][:60]}", "-", "-"]
    else:
        cells += [f"{t['ms_per_step']:.1f}", f"{t['seq_per_s']:,.0f}", f"{t['mfu']:.1%}"]
    print(f"| {b} | " + " | ".join(cells) + " |")
print(f"attention: GPU kernel time of one layer's forward + backward (ms); train: compiled MosaicBERT step; "
      f"details in {out}/")
EOF
stage "done in $((SECONDS - T0))s"
