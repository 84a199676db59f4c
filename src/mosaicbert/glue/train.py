"""One GLUE job: a (task, seed) trained as finetune's classification or regression task.

The task's TSV (or hub) split becomes finetuning rows, and finetune's runner builds the model from its start
weights (the pretrained checkpoint or MNLI's), the collator, the metrics and the Composer Trainer. Every start
loads the encoder and pooler only: the source's head (MLM `cls.*` or MNLI's 3-way `classifier.*`) is reported as
intentionally not loaded, the new classification head as newly initialised (mosaicbert.core.checkpoint.LoadReport).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
import traceback
from typing import Dict

from mosaicbert.core.cli import describe_error
from mosaicbert.core.runs import progress, setup_logging
from mosaicbert.core.trainer import build_loggers, flat_hparams, resolve_device
from mosaicbert.finetune.runner import TrainSettings, build_task, fit_and_evaluate, load_task_tokenizer
from mosaicbert.glue.config import GlueConfig, TaskConfig
from mosaicbert.glue.data import load_prepared, task_labels
from mosaicbert.glue.plan import Job, JobResult, glue_folder, task_duration
from mosaicbert.glue.tasks import TASKS, GlueTask, task_score

log = logging.getLogger("mosaicbert.glue")


def _eval_label(task: GlueTask, eval_name: str) -> str:
    return task.name if len(task.evals) == 1 else f"{task.name}_{eval_name}"


def job_hparams(cfg: GlueConfig, job: Job, tcfg: TaskConfig) -> Dict[str, object]:
    """What a tracker records for one job: the shared config (without the other tasks' rows), the job's task,
    seed and start, and the task's hyperparameters as this job uses them."""
    shared = {k: v for k, v in flat_hparams(cfg).items() if not k.startswith("tasks.")}
    return {**shared, "task": job.task, "seed": job.seed, "init_from": job.init_kind, "lr": tcfg.lr,
            "weight_decay": tcfg.weight_decay, "batch_size": tcfg.batch_size, "max_seq_len": tcfg.max_seq_len,
            "max_duration": task_duration(cfg, tcfg)}


def train_job(cfg: GlueConfig, job: Job) -> JobResult:
    """Finetune one (task, seed); raises on errors (run_job turns them into a failed result)."""
    t0 = time.time()
    task = TASKS[job.task]
    tcfg: TaskConfig = getattr(cfg.tasks, job.task)
    device = resolve_device(cfg.device)
    tokenizer = load_task_tokenizer(cfg.tokenizer, cfg.model.pretrained_checkpoint, cfg.allow_tokenizer_mismatch)

    data_kw = dict(data_dir=cfg.data_dir, hub_dataset=cfg.hub_dataset, skip_malformed=cfg.skip_malformed_rows)
    train = load_prepared(task, "train", tokenizer, tcfg.max_seq_len, max_samples=cfg.max_train_samples, **data_kw)
    evals = {_eval_label(task, ev): load_prepared(task, ev, tokenizer, tcfg.max_seq_len,
                                                  max_samples=cfg.max_eval_samples, **data_kw)
             for ev in task.evals}
    model_cfg = dataclasses.replace(cfg.model, pretrained_checkpoint=job.init_from)
    tm = build_task(task.kind, model_cfg, tokenizer, task_labels(task), task.metrics, seed=job.seed)
    settings = TrainSettings(
        optimizer=cfg.optimizer.for_task(tcfg.lr, tcfg.weight_decay), scheduler=cfg.scheduler,
        max_duration=task_duration(cfg, tcfg), batch_size=tcfg.batch_size, eval_batch_size=cfg.eval_batch_size,
        device=device, precision=cfg.precision, microbatch=cfg.device_train_microbatch_size, seed=job.seed,
        run_name=f"{cfg.run_name}-{job.task}-seed{job.seed}", eval_interval=tcfg.eval_interval or "1dur",
        num_workers=cfg.dataloader_workers, progress_bar=cfg.progress_bar,
        save_folder=(os.path.join(glue_folder(cfg), "checkpoints", f"{job.task}-seed{job.seed}")
                     if job.save_checkpoint else None),
        loggers=build_loggers(cfg.loggers, "glue", group=cfg.run_name),
        hparams=job_hparams(cfg, job, tcfg))
    evaluated, checkpoint = fit_and_evaluate(task.kind, tm, tokenizer, train, evals, settings)
    results: Dict[str, float] = {}
    for ev in task.evals:
        for m in task.metrics:
            results[m if len(task.evals) == 1 else f"{ev}_{m}"] = evaluated[_eval_label(task, ev)][m]
    report = {k: v for k, v in tm.init_report.items() if k != "source"}
    return JobResult(task=job.task, seed=job.seed, status="ok", metrics=results, score=task_score(task, results),
                     init_from=job.init_from, init_kind=job.init_kind, init_report=report, checkpoint=checkpoint,
                     duration_s=time.time() - t0, device=device)


def run_job(cfg: GlueConfig, job: Job) -> JobResult:
    """train_job with a start line; exceptions become a failed result (the other jobs go on)."""
    setup_logging()
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES") if os.environ.get("MOSAICBERT_GLUE_WORKER") else None
    where = f" on GPU {gpu}" if gpu is not None else ""
    init = {"random": "random init", "mnli": f"MNLI checkpoint {job.init_from}",
            "pretrained": f"{job.init_from}"}[job.init_kind]
    progress(f"[job {job.index}/{job.total}] start {job.task} seed={job.seed}{where} from {init}")
    t0 = time.time()
    try:
        return train_job(cfg, job)
    except Exception as e:  # noqa: BLE001 - reported in the results, the run goes on
        log.error("job %s seed=%d failed:\n%s", job.task, job.seed, traceback.format_exc())
        return JobResult(task=job.task, seed=job.seed, status="failed", init_from=job.init_from,
                         init_kind=job.init_kind, duration_s=time.time() - t0, error=describe_error(e).message)
