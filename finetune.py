"""Finetune a MosaicBERT (or Hugging Face BERT) checkpoint on your own data, one task per run.

    python finetune.py yamls/finetune/classification.yaml                      # tiny random-init smoke run on CPU
    python finetune.py yamls/finetune/classification.yaml model.pretrained_checkpoint=exported/mosaicbert-base \\
        tokenizer=null data.train_file=train.csv data.eval_file=dev.csv data.columns.text=sentence

Tasks: classification (one sentence or a sentence pair), regression, token_classification, question_answering,
multiple_choice, embedding (contrastive training of sentence embeddings on text pairs: mosaicbert.embeddings.train);
see yamls/finetune/. The YAML and `key=value` overrides are validated against
mosaicbert.finetune.config.FinetuneConfig. The best evaluation (by the task's main metric) is saved as a Hugging
Face folder with its tokenizer in <save_folder>/best_model, with results.json beside it (both replaced together at
every improvement); a save_folder that already holds results.json is refused unless overwrite=true. Exit status: 0
when training finished, 2 on a config or data error.
"""

import sys

from mosaicbert.core.cli import run_script
from mosaicbert.finetune.config import FinetuneConfig, load_finetune_config


def finetune(cfg) -> int:
    # embedding sits above finetune in the package's layers (it reuses finetune's readers and runner), so the
    # dispatch on the task type lives here, in the script
    if cfg.task == "embedding":
        from mosaicbert.embeddings.train import run_embedding_finetune as run
    else:
        from mosaicbert.finetune.runner import run_finetune as run
    run(cfg)  # a data error (FinetuneDataError) becomes run_script's `error: ...` line, status 2
    return 0


def main(argv: list[str]) -> int:
    return run_script(argv, __doc__, load_finetune_config, finetune, schema=FinetuneConfig)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
