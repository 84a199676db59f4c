#!/usr/bin/env bash
# Builds what a GPU run needs from ../shared/data into gpu_carry/ (git-ignored; name it in the device tool's
# `carry`, 64 MiB in all). Pre-tokenized MDS of 3 of the 6 train shards (~31 MB, 167k samples of <=128 tokens),
# the validation split, the bert-base-uncased vocab and the local GLUE TSVs.
#   usage: bash benchmarks/prepare_gpu_data.sh [OUT_DIR]      (default gpu_carry)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-gpu_carry}
data=../shared/data
[ -d "$data/text" ] || { echo "error: $data/text not found (the shared corpus sits beside the project)" >&2; exit 1; }
mkdir -p "$out/vocab"
cp "$data/vocab/bert-base-uncased/vocab.txt" "$out/vocab/"
rm -rf "$out/glue" && cp -r "$data/glue" "$out/glue"  # the GLUE TSVs (9 MB) for glue.py runs
.venv/bin/python -m mosaicbert.data.convert --source local --mode split --tokenize --max_seq_len 128 \
  --train_files "$data/text/train/en-train.0000[0-2]-of-00006.json.gz" \
  --val_files "$data/text/validation/*.json.gz" \
  --tokenizer "$out/vocab" --out_root "$out/tok-mds" --overwrite --no_progress
du -sh "$out"
