"""GLUE finetuning configuration schema (glue.py), validated by mosaicbert.core.config.load_config.

Defaults are the published MosaicBERT GLUE recipe: DecoupledAdamW (betas 0.9/0.98, eps 1e-6), max length 256,
linear warmup over 6% of training then linear decay to 0, per-task lr / weight decay / epochs / batch size / seeds.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Any, List, Optional, Sequence

from mosaicbert.core.config import (
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_FINITE,
    TRAINING_RANGES,
    ConfigError,
    Device,
    ModelConfig,
    OptimizerConfig,
    OptimizerName,
    Precision,
    SchedulerConfig,
    TrackersConfig,
    check_interval,
    check_microbatch,
    check_ranges,
    load_config,
    suggest,
)
from mosaicbert.glue.tasks import TASK_NAMES, canonical_task_name

PUBLISHED_SEEDS = [19, 8364, 717, 10536, 90166]


@dataclass
class TaskConfig:
    lr: float = 5.0e-5
    weight_decay: float = 5.0e-6
    epochs: int = 3
    # A Composer duration ("500ba", "2ep", "0.5dur"...) that replaces `epochs` when set.
    max_duration: Optional[str] = None
    batch_size: int = 32
    seeds: List[int] = field(default_factory=lambda: PUBLISHED_SEEDS[:1])
    max_seq_len: int = 256
    # Extra evaluations during training ("1ep", "500ba"); evaluation always runs at the end of training.
    eval_interval: Optional[str] = None


def _task(lr: float, wd: float, epochs: int, batch_size: int, n_seeds: int):
    return field(default_factory=lambda: TaskConfig(lr=lr, weight_decay=wd, epochs=epochs, batch_size=batch_size,
                                                    seeds=PUBLISHED_SEEDS[:n_seeds]))


@dataclass
class TasksConfig:
    mnli: TaskConfig = _task(5.0e-5, 5.0e-6, 3, 48, 1)
    rte: TaskConfig = _task(1.0e-5, 1.0e-5, 3, 16, 5)
    qqp: TaskConfig = _task(3.0e-5, 3.0e-6, 5, 16, 1)
    cola: TaskConfig = _task(5.0e-5, 5.0e-6, 10, 32, 4)
    mrpc: TaskConfig = _task(8.0e-5, 8.0e-6, 10, 32, 5)
    qnli: TaskConfig = _task(1.0e-5, 1.0e-6, 10, 16, 1)
    sst2: TaskConfig = _task(3.0e-5, 3.0e-6, 3, 16, 3)
    stsb: TaskConfig = _task(3.0e-5, 3.0e-6, 10, 32, 5)


@dataclass
class GlueOptimizerConfig:
    """Shared optimizer settings; lr and weight_decay are per task (tasks.<task>.lr / .weight_decay)."""

    name: OptimizerName = OptimizerName.decoupled_adamw
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    eps: float = 1.0e-6
    fused: bool = True

    def for_task(self, lr: float, weight_decay: float) -> OptimizerConfig:
        return OptimizerConfig(name=self.name, lr=lr, betas=list(self.betas), eps=self.eps,
                               weight_decay=weight_decay, fused=self.fused)


@dataclass
class GlueConfig:
    run_name: Optional[str] = None
    # model.pretrained_checkpoint: Composer checkpoint of main.py, Hugging Face folder, or (hf_bert) a hub name
    # such as bert-base-uncased; null = random init (a loud warning; for the "random init" baseline only).
    model: ModelConfig = field(default_factory=ModelConfig)
    # hub name, local folder, vocab.txt path, or builtin://python-docs; null = the tokenizer stored with
    # model.pretrained_checkpoint. A tokenizer other than the checkpoint's is an error unless
    # allow_tokenizer_mismatch (the embeddings would be read by ids the model never saw).
    tokenizer: Optional[str] = None
    allow_tokenizer_mismatch: bool = False

    # Data: a folder in the GLUE TSV layout (<data_dir>/<TASK>/train.tsv, dev.tsv, ...) or, when null,
    # the Hugging Face hub dataset `hub_dataset`.
    data_dir: Optional[str] = None
    hub_dataset: str = "nyu-mll/glue"
    skip_malformed_rows: bool = False  # default: a malformed TSV row is an error naming file and line

    tasks_to_run: List[str] = field(default_factory=lambda: list(TASK_NAMES))
    tasks: TasksConfig = field(default_factory=TasksConfig)
    # These start from the finetuned checkpoint of the first MNLI seed (when MNLI runs, or mnli_checkpoint is set).
    mnli_start_tasks: List[str] = field(default_factory=lambda: ["rte", "mrpc", "stsb"])
    mnli_checkpoint: Optional[str] = None  # reuse an MNLI checkpoint of an earlier run instead of running MNLI

    optimizer: GlueOptimizerConfig = field(default_factory=GlueOptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=lambda: SchedulerConfig(t_warmup="0.06dur", alpha_f=0.0))

    # Quick-run limits (null = no limit), applied to every task.
    max_train_samples: Optional[int] = None  # a fixed random subset of the training set
    max_eval_samples: Optional[int] = None  # the first rows of each dev set
    max_duration: Optional[str] = None  # replaces every task's epochs / max_duration, e.g. "10ba"

    eval_batch_size: int = 64
    device_train_microbatch_size: Any = None  # null = the task's batch size; an int; or "auto" (GPU only)
    precision: Precision = Precision.amp_bf16  # fp32 on CPU
    device: Optional[Device] = None  # null picks gpu when available
    # Jobs run at the same time, one per GPU, in a spawn process pool; null = number of visible GPUs (1 on CPU).
    parallel_jobs: Optional[int] = None
    dataloader_workers: int = 0
    progress_bar: bool = True  # Composer's progress bar inside each job
    save_folder: Optional[str] = None  # default runs/glue/<run_name>
    # Experiment trackers (as in main.py): one tracked run per job, named <run_name>-<task>-seed<seed>, in the
    # group <run_name>, with its config and final metrics (final/<task>/<metric>)
    loggers: TrackersConfig = field(default_factory=TrackersConfig)


def _task_list(names: Sequence[str], key: str) -> list[str]:
    out = []
    for name in names:
        canon = canonical_task_name(name)
        if canon is None:
            raise ConfigError(f"config key '{key}': unknown task {name!r}: {suggest(str(name).lower(), TASK_NAMES)}")
        if canon not in out:
            out.append(canon)
    return out


_TASK_RANGES = {"lr": POSITIVE_FINITE, "weight_decay": NON_NEGATIVE, "batch_size": POSITIVE, "max_seq_len": POSITIVE}
_POSITIVE_OR_NULL = (lambda v: v is None or v > 0, "positive or null")
GLUE_RANGES = {
    **TRAINING_RANGES,
    **{f"tasks.{f.name}.{key}": rule for f in fields(TasksConfig) for key, rule in _TASK_RANGES.items()},
    "max_train_samples": _POSITIVE_OR_NULL,
    "max_eval_samples": _POSITIVE_OR_NULL,
    "parallel_jobs": _POSITIVE_OR_NULL,
    "eval_batch_size": POSITIVE,
    "dataloader_workers": NON_NEGATIVE,
}


def validate_glue_config(cfg: GlueConfig) -> GlueConfig:
    """Checks beyond types; normalises task names (SST-2 -> sst2) in place."""
    cfg.tasks_to_run = _task_list(cfg.tasks_to_run, "tasks_to_run")
    if not cfg.tasks_to_run:
        raise ConfigError("config key 'tasks_to_run' is empty: name at least one task, e.g. tasks_to_run=[rte]")
    cfg.mnli_start_tasks = _task_list(cfg.mnli_start_tasks, "mnli_start_tasks")
    if "mnli" in cfg.mnli_start_tasks:
        raise ConfigError("config key 'mnli_start_tasks' cannot contain mnli itself")
    check_interval(cfg.scheduler.t_warmup, "scheduler.t_warmup", wall_clock=False)
    if cfg.max_duration is not None:
        check_interval(cfg.max_duration, "max_duration", wall_clock=False)
    for f in fields(TasksConfig):
        t: TaskConfig = getattr(cfg.tasks, f.name)
        where = f"tasks.{f.name}"
        for key in ("max_duration", "eval_interval"):
            if getattr(t, key) is not None:
                check_interval(getattr(t, key), f"{where}.{key}", wall_clock=False, nonzero=key == "eval_interval")
        if t.epochs <= 0 and t.max_duration is None:
            raise ConfigError(f"config key '{where}.epochs' must be positive (or set {where}.max_duration), "
                              f"got {t.epochs}")
        if not t.seeds and f.name in cfg.tasks_to_run:
            raise ConfigError(f"config key '{where}.seeds' is empty: give at least one seed")
    check_ranges(cfg, GLUE_RANGES)
    check_microbatch(cfg.device_train_microbatch_size, "device_train_microbatch_size", allow_null=True)
    return cfg


def load_glue_config(yaml_path: Optional[str], overrides: Sequence[str] = ()) -> GlueConfig:
    cfg = validate_glue_config(load_config(GlueConfig, yaml_path, overrides))
    if cfg.run_name is None:
        cfg.run_name = os.path.splitext(os.path.basename(yaml_path))[0] if yaml_path else "glue"
    return cfg
