#!/usr/bin/env bash
# Builds the inputs of the GPU benchmarks into OUT_DIR (default bench_data/, git-ignored): pre-tokenized MDS shards
# (<= 128 tokens per sample) of C4-format text, the tokenizer's vocab.txt and, when given, a copy of a folder of GLUE
# TSVs (<dir>/<TASK>/train.tsv, dev.tsv ...).
#   usage: bash benchmarks/prepare_data.sh TEXT_DIR VOCAB_DIR [GLUE_DIR] [OUT_DIR]
#   TEXT_DIR: C4-format *.json.gz files under train/ and validation/ (e.g. from the Hugging Face c4 dataset)
#   VOCAB_DIR: a folder with a WordPiece vocab.txt (e.g. bert-base-uncased's)
#   TRAIN_GLOB (env, default *.json.gz): which train files to convert
set -euo pipefail
cd "$(dirname "$0")/.."
text=${1:?usage: bash benchmarks/prepare_data.sh TEXT_DIR VOCAB_DIR [GLUE_DIR] [OUT_DIR]}
vocab=${2:?usage: bash benchmarks/prepare_data.sh TEXT_DIR VOCAB_DIR [GLUE_DIR] [OUT_DIR]}
glue=${3:-}; out=${4:-bench_data}
[ -d "$text/train" ] || { echo "error: $text/train not found (C4-format *.json.gz files expected there)" >&2; exit 1; }
[ -f "$vocab/vocab.txt" ] || { echo "error: $vocab/vocab.txt not found" >&2; exit 1; }
PY=${PYTHON:-.venv/bin/python}
mkdir -p "$out/vocab"
cp "$vocab/vocab.txt" "$out/vocab/"
if [ -n "$glue" ]; then rm -rf "$out/glue" && cp -r "$glue" "$out/glue"; fi
"$PY" -m mosaicbert.pretrain.convert --source local --mode split --tokenize --max_seq_len 128 \
  --train_files "$text/train/${TRAIN_GLOB:-*.json.gz}" --val_files "$text/validation/*.json.gz" \
  --tokenizer "$out/vocab" --out_root "$out/tok-mds" --overwrite --no_progress
du -sh "$out"
