#!/usr/bin/env bash
# The contrastive example end to end at tiny CPU scale, for MosaicBERT and for transformers' BERT of the same shape:
# pretrain each with the quickstart recipe, export it (with the sentence-transformers files), finetune it on the
# shipped docstring pairs (yamls/finetune/embedding.yaml), and score STS-B dev and the held-out pairs before and after.
#   bash yamls/finetune/embedding_compare.sh        # from the repository root; about an hour on 2 CPU cores
# Results: $OUT/results.json and the table printed at the end.
set -euo pipefail
PY=${PY:-.venv/bin/python}
COMPOSER=${COMPOSER:-.venv/bin/composer}
STSB=${STSB:?set STSB to a GLUE STS-B dev.tsv (the original TSV layout)}
OUT=${OUT:-runs/embedding_compare}
PAIRS=yamls/finetune/data/docstring_pairs_eval.jsonl
folders=()
for model in mosaic_bert hf_bert; do
  run=$OUT/$model
  "$COMPOSER" main.py yamls/quickstart.yaml model.name=$model run_name=emb-$model save_folder=$run/pretrain
  "$PY" -m mosaicbert.export $run/pretrain/latest-rank0.pt $run/pretrained --sentence-transformers
  "$PY" finetune.py yamls/finetune/embedding.yaml model.name=$model model.pretrained_checkpoint=$run/pretrained \
    tokenizer=null 'model.config_overrides={}' embedding.stsb_file=$STSB save_folder=$run/contrastive
  folders+=($run/pretrained $run/contrastive/best_model)
done
"$PY" -m mosaicbert.embeddings.evaluate "${folders[@]}" --stsb $STSB --pairs $PAIRS \
  --negative-column negative --out $OUT/results.json
