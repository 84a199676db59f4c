"""Finetune a MosaicBERT (or Hugging Face BERT) checkpoint on your own data, one task per run.

    python finetune.py yamls/finetune/classification.yaml                      # tiny random-init smoke run on CPU
    python finetune.py yamls/finetune/classification.yaml model.pretrained_checkpoint=exported/mosaicbert-base \\
        tokenizer=null data.train_file=train.csv data.eval_file=dev.csv data.columns.text=sentence

Tasks: classification (one sentence or a sentence pair), regression, token_classification, question_answering,
multiple_choice; see yamls/finetune/. The YAML and `key=value` overrides are validated against
mosaicbert.finetune.config.FinetuneConfig. The best evaluation (by the task's main metric) is saved as a Hugging
Face folder with its tokenizer in <save_folder>/best_model, with results.json beside it. Exit status: 0 when
training finished, 2 on a config or data error.
"""

import logging
import sys

from mosaicbert.config import ConfigError, to_yaml
from mosaicbert.finetune.config import load_finetune_config


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_finetune_config(argv[0], argv[1:])
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    print(to_yaml(cfg), flush=True)

    from mosaicbert.finetune.data import FinetuneDataError
    from mosaicbert.finetune.runner import run_finetune  # heavy imports after the config is known to be good

    try:
        run_finetune(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    except FinetuneDataError as e:
        print(f"data error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
