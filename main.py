"""Pretrain MosaicBERT (or the Hugging Face BERT baseline) with Composer.

    composer main.py yamls/base.yaml [key=value ...]          # all GPUs of this machine
    composer -n 2 main.py yamls/quickstart.yaml               # two processes (gloo on CPU, NCCL on GPUs)

The YAML file and overrides are validated against mosaicbert.config.PretrainConfig; builders in
mosaicbert.builders turn it into a composer.Trainer.
"""

import logging
import os
import sys

from mosaicbert.config import ConfigError, load_pretrain_config, to_yaml


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if argv else 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = load_pretrain_config(argv[0], argv[1:])
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    if cfg.run_name is None:
        cfg.run_name = os.path.splitext(os.path.basename(argv[0]))[0]
    if int(os.environ.get("RANK", "0")) == 0:
        print(to_yaml(cfg), flush=True)

    from mosaicbert.builders import build_pretrain_trainer  # heavy imports after the config is known to be good

    try:
        trainer = build_pretrain_trainer(cfg)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    trainer.fit()
    trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
