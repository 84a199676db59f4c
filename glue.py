"""Finetune a pretrained MosaicBERT (or Hugging Face BERT) on GLUE and report the GLUE average.

    python glue.py yamls/glue/base.yaml model.pretrained_checkpoint=runs/base/latest-rank0.pt
    python glue.py yamls/glue/quickstart.yaml                          # tiny random-init smoke run on CPU
    python glue.py yamls/glue/base.yaml tasks_to_run=[rte,mrpc] data_dir=path/to/glue    # a folder of GLUE TSVs

The YAML and `key=value` overrides are validated against mosaicbert.glue.config.GlueConfig. Runs one Composer
Trainer per task and seed (a process pool with one job per GPU), then writes results.json and results.md to
`save_folder` (default runs/glue/<run_name>). Exit status: 0 when every job ran, 1 when a job failed, 2 on a
config error. Run it with python, not with the composer launcher: it starts its own processes.
"""

import sys

from mosaicbert.core.cli import run_script
from mosaicbert.glue.config import GlueConfig, load_glue_config


def glue(cfg) -> int:
    from mosaicbert.glue.runner import run_glue

    summary = run_glue(cfg)
    failed = [j for j in summary["jobs"] if j["status"] != "ok"]
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    return run_script(argv, __doc__, load_glue_config, glue, schema=GlueConfig)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
