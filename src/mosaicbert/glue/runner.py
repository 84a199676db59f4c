"""GLUE finetuning entry (glue.py): plan the jobs, run them, write results.json / results.md.

    plan.py    jobs (task x seed, MNLI first), durations, MNLI-start
    train.py   one job: a task spec for finetune's runner (model, start weights, data, Trainer, metrics)
    pool.py    one job per GPU in a spawn process pool (or sequential on CPU)
    report.py  per-task means, GLUE average and its rule, results.json / results.md
"""

from __future__ import annotations

import os
import sys
from typing import Any, Callable, Dict

from mosaicbert.core.runs import progress, setup_logging
from mosaicbert.finetune.runner import load_task_tokenizer
from mosaicbert.glue.config import GlueConfig
from mosaicbert.glue.plan import Job, JobResult, plan_jobs
from mosaicbert.glue.pool import run_jobs
from mosaicbert.glue.report import results_markdown, summarize, write_results
from mosaicbert.glue.tasks import TASK_NAMES
from mosaicbert.glue.train import run_job


def preflight(cfg: GlueConfig) -> None:
    """Fail before any job on problems every job would hit: model config, a damaged start checkpoint, the tokenizer,
    and an encoder that does not load from the checkpoint."""
    from mosaicbert.core.checkpoint import resolve_source, verify_checkpoint
    from mosaicbert.core.config import ConfigError
    from mosaicbert.core.trainer import build_hf_config
    from mosaicbert.finetune.models import build_task_model

    build_hf_config(cfg.model, num_labels=2)
    for key, path in (("model.pretrained_checkpoint", cfg.model.pretrained_checkpoint),
                      ("mnli_checkpoint", cfg.mnli_checkpoint)):
        if not path:
            continue
        if key == "mnli_checkpoint" and not os.path.exists(os.path.expanduser(path)):
            raise ConfigError(f"config key '{key}' = {path!r}: no such file or folder")
        try:  # a hub id is downloaded here, once; the jobs then read the local cache
            local = resolve_source(path)
        except FileNotFoundError as e:
            raise ConfigError(f"config key '{key}' = {path!r}: {e}") from e
        # a damaged checkpoint stops the run here (CheckpointError), not in every job
        verify_checkpoint(local if os.path.isfile(local) else os.path.join(local, "pytorch_model.bin"))
    tokenizer = load_task_tokenizer(cfg.tokenizer, cfg.model.pretrained_checkpoint, cfg.allow_tokenizer_mismatch)
    if cfg.model.pretrained_checkpoint:
        build_task_model(cfg.model, "classification", tokenizer, ["0", "1"])  # raises when the encoder won't load
    if cfg.data_dir is not None and not os.path.isdir(cfg.data_dir):
        raise ConfigError(f"config key 'data_dir' = {cfg.data_dir!r}: no such folder (null loads from the hub)")


def run_glue(cfg: GlueConfig, job_fn: Callable[[GlueConfig, Job], JobResult] = run_job) -> Dict[str, Any]:
    """Plan, run, summarise and write results.json / results.md into the run folder; returns the summary."""
    setup_logging()
    preflight(cfg)
    jobs, skipped = plan_jobs(cfg)
    names = ", ".join(sorted({j.task for j in jobs}, key=TASK_NAMES.index)) or "no task"
    skipped_note = f"; skipped {', '.join(skipped)}" if skipped else ""
    progress(f"GLUE {cfg.run_name}: {len(jobs)} job(s) for {names}{skipped_note}")
    job_results = run_jobs(cfg, jobs, job_fn)
    summary = summarize(cfg, job_results, skipped)
    json_path, md_path = write_results(cfg, summary)
    print(results_markdown(summary), flush=True)
    progress(f"wrote {json_path} and {md_path}")
    sys.stdout.flush()
    return summary
