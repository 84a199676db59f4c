"""Finetuning runner: read and check the data, build the task model from its start weights, train with Composer,
evaluate every `eval_interval`, keep the best evaluation (by the main metric) as a Hugging Face folder with its
tokenizer, and write results.json.

Output folder (`save_folder`, default runs/finetune/<run_name>):
    best_model/     save_pretrained of the best model + tokenizer (+ MosaicBERT's source files for remote code)
    results.json    task, labels, main metric, every evaluation, the best one, the start-weights report
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Dict, List, Optional

from composer import Callback, Evaluator, Logger, State
from composer.utils import dist, reproducibility

from mosaicbert.config import ConfigError
from mosaicbert.finetune.config import FinetuneConfig, main_metric
from mosaicbert.finetune.data import Rows, read_file, read_hub
from mosaicbert.finetune.metrics import TASK_METRICS, build_metrics
from mosaicbert.finetune.models import build_task_model, wrap
from mosaicbert.finetune.tasks import build_collator, infer_labels, prepare
from mosaicbert.glue.data import build_loader
from mosaicbert.glue.train import fit_and_evaluate

log = logging.getLogger("mosaicbert.finetune")
EVAL_LABEL = "eval"


def run_folder(cfg: FinetuneConfig) -> str:
    return cfg.save_folder or os.path.join("runs", "finetune", cfg.run_name or "finetune")


def _progress(msg: str) -> None:
    if dist.get_global_rank() == 0:
        print(msg, flush=True)


def load_rows(cfg: FinetuneConfig, split: str) -> Rows:
    """'train' or 'eval' rows from the local files, or from the hub dataset."""
    d = cfg.data
    limit = d.max_train_samples if split == "train" else d.max_eval_samples
    if d.train_file is not None:
        rows = read_file(d.train_file if split == "train" else d.eval_file, d.format, cfg.task, d.columns)
    else:
        # Hub ClassLabel ids become names for the label checks (multiple choice labels stay choice indices).
        label = d.columns.label if cfg.task in ("classification", "token_classification") else None
        kwargs = {"data_files": dict(d.hub_data_files)} if d.hub_data_files else {}
        rows = read_hub(d.hub_dataset, d.hub_config, d.train_split if split == "train" else d.eval_split, label,
                        **kwargs)
    return rows.head(limit)


class KeepBest(Callback):
    """After every evaluation: log the metrics, and when the main metric is the best so far, save the model and
    tokenizer as a Hugging Face folder (save_pretrained) in `folder`."""

    def __init__(self, model, tokenizer, folder: str, metric_classes: Dict[str, str], main: str):
        self.model, self.tokenizer, self.folder = model, tokenizer, folder
        self.metric_classes = metric_classes  # friendly name -> Composer's metric key (class name)
        self.main = main
        self.history: List[Dict[str, Any]] = []
        self.best: Optional[Dict[str, Any]] = None

    def eval_end(self, state: State, logger: Logger) -> None:
        computed = state.eval_metrics[EVAL_LABEL]
        values = {name: float(computed[cls].compute()) for name, cls in self.metric_classes.items()}
        entry = {"batch": int(state.timestamp.batch), "epoch": int(state.timestamp.epoch), "metrics": values}
        self.history.append(entry)
        improved = self.best is None or values[self.main] > self.best["metrics"][self.main]
        shown = " ".join(f"{k}={v:.4f}" for k, v in values.items())
        _progress(f"[eval] batch {entry['batch']}: {shown}" + (f" (best {self.main}: saved to {self.folder})"
                                                                 if improved else ""))
        if improved:
            self.best = entry
            if dist.get_global_rank() == 0:
                self.model.save_pretrained(self.folder)
                self.tokenizer.save_pretrained(self.folder)
            dist.barrier()


def _prepare_data(cfg: FinetuneConfig, tokenizer):
    train_rows, eval_rows = load_rows(cfg, "train"), load_rows(cfg, "eval")
    labels = None
    if cfg.task in ("classification", "token_classification"):
        labels = list(cfg.data.labels) if cfg.data.labels is not None else \
            infer_labels(cfg.task, train_rows, cfg.data.columns.label)
        log.info("labels (%d): %s", len(labels), labels)
    train = prepare(cfg.task, train_rows, tokenizer, cfg.data, labels, train=True)
    evals = prepare(cfg.task, eval_rows, tokenizer, cfg.data, labels, train=False)
    _progress(f"data: {train.num_examples} training examples ({len(train.dataset)} model inputs) from "
              f"{train_rows.source}; {evals.num_examples} eval examples ({len(evals.dataset)}) from {eval_rows.source}")
    return train, evals, labels


def load_finetune_tokenizer(cfg: FinetuneConfig):
    """`tokenizer`, or (tokenizer: null) the one saved with model.pretrained_checkpoint."""
    from mosaicbert.data.tokenizer import load_tokenizer

    name = cfg.tokenizer or cfg.model.pretrained_checkpoint
    key = "tokenizer" if cfg.tokenizer else "model.pretrained_checkpoint (tokenizer: null)"
    try:
        if cfg.tokenizer is None and os.path.isfile(os.path.expanduser(str(name))):
            raise ValueError("a Composer checkpoint file holds no tokenizer folder: set tokenizer= to the one used "
                             "for pretraining")
        return load_tokenizer(name)
    except Exception as e:
        raise ConfigError(f"config key '{key}' = {name!r}: cannot load a tokenizer from it: {e}") from e


def run_finetune(cfg: FinetuneConfig) -> Dict[str, Any]:
    """Finetune; returns the results dict also written to results.json."""
    from mosaicbert.builders import resolve_device

    logging.getLogger("composer").setLevel(logging.WARNING)
    t0 = time.time()
    device = resolve_device(cfg.device)
    tokenizer = load_finetune_tokenizer(cfg)
    train, evals, labels = _prepare_data(cfg, tokenizer)
    collate = build_collator(cfg.task, tokenizer)
    num_labels = len(labels) if labels else len(cfg.data.columns.choices)

    reproducibility.seed_all(cfg.seed)  # the new head's init depends on the seed
    model, report = build_task_model(cfg.model, cfg.task, tokenizer, labels)
    names = list(cfg.metrics or TASK_METRICS[cfg.task])
    metrics = build_metrics(cfg.task, names, num_labels, labels or (), (evals.contexts, evals.answers))
    metric_classes = {name: type(m).__name__ for name, m in metrics.items()}
    composer_model = wrap(cfg.task, model, tokenizer, list(metrics.values()), cfg.data.max_answer_length)

    loader_kw = dict(seed=cfg.seed, num_workers=cfg.data.num_workers, pin_memory=device == "gpu")
    folder = run_folder(cfg)
    best_folder = os.path.join(folder, "best_model")
    keep_best = KeepBest(model, tokenizer, best_folder, metric_classes, main_metric(cfg))
    evaluator = Evaluator(label=EVAL_LABEL, metric_names=list(metric_classes.values()),
                          dataloader=build_loader(evals.dataset, collate, cfg.eval_batch_size, train=False,
                                                  **loader_kw))
    fit_and_evaluate(
        composer_model, build_loader(train.dataset, collate, cfg.batch_size, train=True, **loader_kw), [evaluator],
        optimizer=cfg.optimizer, scheduler=cfg.scheduler, max_duration=cfg.max_duration, device=device,
        precision=cfg.precision, microbatch=cfg.device_train_microbatch_size, seed=cfg.seed, run_name=cfg.run_name,
        eval_interval=cfg.eval_interval, progress_bar=cfg.progress_bar, console_log_interval=cfg.console_log_interval,
        callbacks=[keep_best], eval_before_fit=cfg.eval_before_training,
    )
    results = {
        "run_name": cfg.run_name,
        "task": cfg.task,
        "model": cfg.model.name,
        "labels": labels,
        "main_metric": main_metric(cfg),
        "best": keep_best.best,
        "evaluations": keep_best.history,
        "best_model": best_folder,
        "init_report": report,
        "train_examples": train.num_examples,
        "eval_examples": evals.num_examples,
        "duration_s": time.time() - t0,
        "config": dataclasses.asdict(cfg),
    }
    if dist.get_global_rank() == 0:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "results.json"), "w") as f:
            json.dump(results, f, indent=2, default=str)
    best = keep_best.best
    if best is not None:
        shown = " ".join(f"{k}={v:.4f}" for k, v in best["metrics"].items())
        _progress(f"best {results['main_metric']} at batch {best['batch']}: {shown}\n"
                  f"wrote {best_folder} (Hugging Face model + tokenizer) and {os.path.join(folder, 'results.json')}")
    return results
