"""GLUE run planning: the jobs (task x seed, MNLI first), their durations and start weights; the job and result
records the other modules pass around.

MNLI start
    Tasks in `mnli_start_tasks` (default RTE, MRPC, STS-B) start from the finetuned checkpoint of the first MNLI
    seed when MNLI runs in this run (or `mnli_checkpoint` names one); otherwise they start from
    `model.pretrained_checkpoint`, with a warning. `model.pretrained_checkpoint: null` trains from random init
    (loud warning; for a "random init" comparison only).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from mosaicbert.core.config import ConfigError
from mosaicbert.core.runs import progress, run_folder
from mosaicbert.glue.config import GlueConfig, TaskConfig
from mosaicbert.glue.tasks import TASK_NAMES, TASKS

log = logging.getLogger("mosaicbert.glue")


@dataclass
class Job:
    index: int  # 1-based, for progress lines
    total: int
    task: str
    seed: int
    init_from: Optional[str]  # checkpoint to start from; None = random init
    init_kind: str  # "pretrained" | "mnli" | "random"
    save_checkpoint: bool = False  # final weights kept for MNLI-start
    waits_for_mnli: bool = False


@dataclass
class JobResult:
    task: str
    seed: int
    status: str  # ok | failed
    metrics: Dict[str, float] = field(default_factory=dict)
    score: Optional[float] = None
    init_from: Optional[str] = None
    init_kind: str = "random"
    init_report: Dict[str, Any] = field(default_factory=dict)
    checkpoint: Optional[str] = None
    duration_s: float = 0.0
    device: str = "cpu"
    error: Optional[str] = None


def glue_folder(cfg: GlueConfig) -> str:
    return run_folder(cfg.save_folder, cfg.run_name, "glue")


def task_duration(cfg: GlueConfig, tcfg: TaskConfig) -> str:
    return cfg.max_duration or tcfg.max_duration or f"{tcfg.epochs}ep"


def plan_jobs(cfg: GlueConfig) -> tuple[List[Job], Dict[str, str]]:
    """The jobs to run (MNLI first) and {task: reason} for the tasks skipped because their data is missing."""
    from mosaicbert.glue.data import missing_files, tsv_path

    skipped: Dict[str, str] = {}
    runnable = []
    for name in TASK_NAMES:
        if name not in cfg.tasks_to_run:
            continue
        if cfg.data_dir is not None:
            missing = missing_files(cfg.data_dir, TASKS[name])
            if missing:
                skipped[name] = f"data files missing: {', '.join(missing)}"
                log.warning("skipping %s: %s", name, skipped[name])
                progress(f"skip {name}: {skipped[name]}")
                continue
        runnable.append(name)
    if not runnable:  # every requested task was skipped: a GLUE average over no task means nothing
        looked_for = "; ".join(f"{name}: {', '.join(missing_files(cfg.data_dir, TASKS[name]))}" for name in skipped)
        example = tsv_path(cfg.data_dir, TASKS[next(iter(skipped))], "train")
        raise ConfigError(f"config key 'data_dir' = {cfg.data_dir!r} holds none of the requested tasks "
                          f"{list(cfg.tasks_to_run)}: looked for {looked_for}. Point data_dir at a folder in the GLUE "
                          f"TSV layout (e.g. {example}), or set data_dir=null to load from the hub")

    pretrained = cfg.model.pretrained_checkpoint
    if not pretrained:
        log.warning("!" * 100)
        log.warning("model.pretrained_checkpoint is null: finetuning from RANDOM INIT. Scores mean nothing except "
                    "as a random-init baseline; set model.pretrained_checkpoint=<main.py checkpoint or HF folder>.")
        log.warning("!" * 100)
    base_kind = "pretrained" if pretrained else "random"
    mnli_runs = "mnli" in runnable
    mnli_start = [t for t in cfg.mnli_start_tasks if t in runnable]
    if mnli_start and not mnli_runs and not cfg.mnli_checkpoint:
        why = "is not in tasks_to_run" if "mnli" not in cfg.tasks_to_run else "was skipped (data missing)"
        log.warning("MNLI %s: %s start from %s instead of an MNLI checkpoint (set mnli_checkpoint=<path> to reuse "
                    "one, or mnli_start_tasks=[] to silence this)", why, ", ".join(mnli_start),
                    pretrained or "random init")

    jobs: List[Job] = []
    for name in runnable:
        tcfg: TaskConfig = getattr(cfg.tasks, name)
        for i, seed in enumerate(tcfg.seeds):
            job = Job(index=0, total=0, task=name, seed=seed, init_from=pretrained, init_kind=base_kind)
            if name == "mnli" and i == 0 and mnli_start and not cfg.mnli_checkpoint:
                job.save_checkpoint = True
            if name in mnli_start:
                if cfg.mnli_checkpoint:
                    job.init_from, job.init_kind = cfg.mnli_checkpoint, "mnli"
                elif mnli_runs:
                    job.waits_for_mnli = True
            jobs.append(job)
    for i, job in enumerate(jobs, 1):
        job.index, job.total = i, len(jobs)
    return jobs, skipped


def resolve_mnli_start(job: Job, mnli_result: Optional[JobResult], cfg: GlueConfig) -> Job:
    """A job that waited for MNLI, now starting from its checkpoint (or, when MNLI failed, the pretrained one)."""
    if mnli_result is not None and mnli_result.status == "ok" and mnli_result.checkpoint:
        return dataclasses.replace(job, init_from=mnli_result.checkpoint, init_kind="mnli", waits_for_mnli=False)
    log.warning("%s seed=%d: the MNLI job failed, starting from %s instead", job.task, job.seed,
                cfg.model.pretrained_checkpoint or "random init")
    return dataclasses.replace(job, waits_for_mnli=False)

