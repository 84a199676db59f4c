"""One finetuning job: tokenizer, classifier with its start weights, data loaders, a Composer Trainer, metrics.

The generic parts serve any sequence-classification finetuning: `get_tokenizer` (cached per process),
`build_classifier`, `load_start_weights`, and `fit_and_evaluate`, the Composer Trainer that GLUE and finetune.py
share (train, evaluate at intervals and at the end, optionally keep the final weights).
`train_job` / `run_job` wire them to a GLUE task and seed.

Start weights
    Every start loads the encoder and pooler only: the source's head (MLM `cls.*` or MNLI's 3-way `classifier.*`)
    is reported as intentionally not loaded, the new classification head as newly initialised, and any other key
    that fails to load is reported as a warning (mosaicbert.checkpoint.LoadReport).
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mosaicbert.config import ModelConfig, OptimizerConfig, SchedulerConfig
from mosaicbert.glue.config import GlueConfig, TaskConfig
from mosaicbert.glue.plan import Job, JobResult, progress, run_folder, setup_logging, task_duration
from mosaicbert.glue.tasks import TASKS, GlueTask, task_score

log = logging.getLogger("mosaicbert.glue")

HEAD_PREFIXES = ("classifier.", "cls.")
_TOKENIZERS: Dict[str, Any] = {}


def get_tokenizer(name: str):
    """mosaicbert.data.tokenizer.load_tokenizer, loaded once per process."""
    if name not in _TOKENIZERS:
        from mosaicbert.data.tokenizer import load_tokenizer

        _TOKENIZERS[name] = load_tokenizer(name)
    return _TOKENIZERS[name]


def build_classifier(model_cfg: ModelConfig, num_labels: int, tokenizer):
    """MosaicBertForSequenceClassification or transformers' BertForSequenceClassification, freshly initialised."""
    from mosaicbert.builders import build_hf_config
    from mosaicbert.config import ConfigError

    config = build_hf_config(model_cfg, num_labels=num_labels, pad_token_id=tokenizer.pad_token_id)
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(f"tokenizer has {len(tokenizer)} tokens but the model's vocab_size is {config.vocab_size}")
    if model_cfg.name == "mosaic_bert":
        from mosaicbert.model import MosaicBertForSequenceClassification

        return MosaicBertForSequenceClassification(config)
    from transformers import BertForSequenceClassification

    return BertForSequenceClassification(config)


def load_start_weights(model, source: str) -> Dict[str, Any]:
    """Load the encoder (and pooler) of `source` into a sequence classification model; returns the report.

    The source's heads (`cls.*` of MLM, `classifier.*` of another task) are never loaded; the model's new
    `classifier.*` is newly initialised. Every other key that does not load is reported in the log and the report.
    """
    from mosaicbert.checkpoint import load_weights

    return load_weights(model, source, head_prefixes=HEAD_PREFIXES, new_head_prefixes=("classifier.",)).as_dict()


def fit_and_evaluate(
    composer_model,
    train_loader,
    evaluators: List[Any],
    *,
    optimizer: OptimizerConfig,
    scheduler: SchedulerConfig,
    max_duration: str,
    device: str,
    precision: str,
    microbatch: Any,
    seed: int,
    run_name: Optional[str],
    eval_interval: str = "1dur",
    progress_bar: bool = False,
    console_log_interval: Optional[str] = None,
    save_folder: Optional[str] = None,
    callbacks: Sequence[Any] = (),
    eval_before_fit: bool = False,
) -> Tuple[Dict[str, Dict[str, float]], Optional[str]]:
    """Train with a Composer Trainer and evaluate (before training when `eval_before_fit`, at `eval_interval`, and
    at the end). The one Trainer of GLUE and finetune.py.

    `precision` applies on GPU only (CPU trains in fp32); `microbatch` None, or "auto" on CPU, is the whole
    per-rank batch. Console logging is on every `console_log_interval` (when set and without a progress bar).
    Returns {evaluator label: {metric class name: value}} from the final evaluation, and the path of the final
    weights-only checkpoint when `save_folder` is set (else None).
    """
    from composer import Trainer

    from mosaicbert.builders import build_optimizer, build_scheduler
    from mosaicbert.callbacks import FiniteLossCheck

    if microbatch == "auto" and device == "cpu":
        microbatch = None  # auto microbatching needs a GPU; Composer uses the per-rank batch size for None
    save_kw: Dict[str, Any] = {}
    if save_folder:
        save_kw = dict(save_folder=save_folder, save_interval="1dur", save_weights_only=True, save_overwrite=True,
                       save_num_checkpoints_to_keep=1, save_filename="final-rank{rank}.pt")
    log_kw: Dict[str, Any] = {"log_to_console": console_log_interval is not None and not progress_bar}
    if log_kw["log_to_console"]:
        log_kw["console_log_interval"] = console_log_interval
    trainer = Trainer(
        run_name=run_name,
        model=composer_model,
        train_dataloader=train_loader,
        eval_dataloader=evaluators,
        eval_interval=eval_interval,
        max_duration=max_duration,
        optimizers=build_optimizer(optimizer, composer_model),
        schedulers=build_scheduler(scheduler),
        callbacks=[FiniteLossCheck(), *callbacks],
        device=device,
        precision=precision if device == "gpu" else "fp32",
        device_train_microbatch_size=microbatch,
        seed=seed,
        progress_bar=progress_bar,
        loggers=[],
        **log_kw,
        **save_kw,
    )
    try:
        if eval_before_fit:
            trainer.eval()
        trainer.fit()
        metrics = {label: {name: float(m.compute()) for name, m in by_name.items()}
                   for label, by_name in trainer.state.eval_metrics.items()}
    finally:
        trainer.close()
    checkpoint = None
    if save_folder:
        checkpoint = os.path.join(save_folder, "final-rank0.pt")
        if not os.path.isfile(checkpoint):
            raise RuntimeError(f"the final checkpoint {checkpoint} was not written")
    return metrics, checkpoint


def _eval_label(task: GlueTask, eval_name: str) -> str:
    return task.name if len(task.evals) == 1 else f"{task.name}_{eval_name}"


def train_job(cfg: GlueConfig, job: Job) -> JobResult:
    """Finetune one (task, seed); raises on errors (run_job turns them into a failed result)."""
    from composer import Evaluator
    from composer.utils import reproducibility

    from mosaicbert.builders import resolve_device
    from mosaicbert.composer_models import SequenceClassificationModel
    from mosaicbert.glue.data import build_dataloader, load_tokenized
    from mosaicbert.glue.tasks import build_metric

    t0 = time.time()
    task = TASKS[job.task]
    tcfg: TaskConfig = getattr(cfg.tasks, job.task)
    device = resolve_device(cfg.device)
    tokenizer = get_tokenizer(cfg.tokenizer)

    data_kw = dict(data_dir=cfg.data_dir, hub_dataset=cfg.hub_dataset, skip_malformed=cfg.skip_malformed_rows)
    train_ds = load_tokenized(task, "train", tokenizer, tcfg.max_seq_len, max_samples=cfg.max_train_samples,
                              **data_kw)
    eval_sets = {ev: load_tokenized(task, ev, tokenizer, tcfg.max_seq_len, max_samples=cfg.max_eval_samples,
                                    **data_kw) for ev in task.evals}
    loader_kw = dict(seed=job.seed, regression=task.is_regression, num_workers=cfg.dataloader_workers,
                     pin_memory=device == "gpu")
    train_loader = build_dataloader(train_ds, tokenizer, tcfg.batch_size, train=True, **loader_kw)

    reproducibility.seed_all(job.seed)  # the new head's init depends on the seed
    model = build_classifier(cfg.model, task.num_labels, tokenizer)
    report: Dict[str, Any] = {}
    if job.init_from:
        report = load_start_weights(model, job.init_from)
    metrics = [build_metric(m, task.num_labels) for m in task.metrics]
    metric_class = {m: type(obj).__name__ for m, obj in zip(task.metrics, metrics)}
    composer_model = SequenceClassificationModel(model, tokenizer=tokenizer, eval_metrics=metrics)
    evaluators = [
        Evaluator(label=_eval_label(task, ev), metric_names=list(metric_class.values()),
                  dataloader=build_dataloader(ds, tokenizer, cfg.eval_batch_size, train=False, **loader_kw))
        for ev, ds in eval_sets.items()
    ]
    save_folder = (os.path.join(run_folder(cfg), "checkpoints", f"{job.task}-seed{job.seed}")
                   if job.save_checkpoint else None)

    evaluated, checkpoint = fit_and_evaluate(
        composer_model, train_loader, evaluators,
        optimizer=cfg.optimizer.for_task(tcfg.lr, tcfg.weight_decay), scheduler=cfg.scheduler,
        max_duration=task_duration(cfg, tcfg), device=device, precision=cfg.precision,
        microbatch=cfg.device_train_microbatch_size, seed=job.seed,
        run_name=f"{cfg.run_name}-{job.task}-seed{job.seed}",
        eval_interval=tcfg.eval_interval or "1dur", progress_bar=cfg.progress_bar, save_folder=save_folder,
    )
    results: Dict[str, float] = {}
    for ev in task.evals:
        for m, cls_name in metric_class.items():
            results[m if len(task.evals) == 1 else f"{ev}_{m}"] = evaluated[_eval_label(task, ev)][cls_name]
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
                         init_kind=job.init_kind, duration_s=time.time() - t0, error=f"{type(e).__name__}: {e}")
