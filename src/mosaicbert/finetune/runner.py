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
import shutil
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from composer import Callback, Evaluator, Logger, State, Trainer
from composer.utils import dist, reproducibility
from torch.utils.data import DataLoader, Dataset

from mosaicbert.core.callbacks import FiniteLossCheck
from mosaicbert.core.checkpoint import CheckpointError
from mosaicbert.core.config import ConfigError, ModelConfig, OptimizerConfig, SchedulerConfig
from mosaicbert.core.runs import progress, run_folder
from mosaicbert.core.tokenizer import checkpoint_tokenizer, load_tokenizer, same_vocabulary
from mosaicbert.core.trainer import build_loggers, build_optimizer, build_scheduler, flat_hparams, resolve_device
from mosaicbert.finetune.config import FinetuneConfig, main_metric
from mosaicbert.finetune.data import Rows, read_file, read_hub
from mosaicbert.finetune.metrics import TASK_METRICS, build_metrics
from mosaicbert.finetune.models import build_task_model, wrap
from mosaicbert.finetune.tasks import Prepared, build_collator, infer_labels, prepare

log = logging.getLogger("mosaicbert.finetune")
EVAL_LABEL = "eval"


# ---------------------------------------------------------------------------------------------------------------
# The task runner (finetune.py and every GLUE job)
# ---------------------------------------------------------------------------------------------------------------

_TOKENIZERS: Dict[tuple, Any] = {}


def load_task_tokenizer(tokenizer: Optional[str], pretrained_checkpoint: Optional[str],
                        allow_tokenizer_mismatch: bool = False):
    """The tokenizer to finetune with, loaded once per process: `tokenizer`, or (tokenizer: null) the one stored
    with the start checkpoint. A tokenizer whose vocabulary differs from the checkpoint's is refused (the model's
    embeddings would be read by the wrong ids) unless `allow_tokenizer_mismatch`."""
    key = (tokenizer, pretrained_checkpoint, allow_tokenizer_mismatch)
    if key in _TOKENIZERS:
        return _TOKENIZERS[key]
    try:
        stored = checkpoint_tokenizer(pretrained_checkpoint)
    except CheckpointError:
        raise  # a damaged or unreadable checkpoint: its own message names the file
    except Exception as e:
        raise ConfigError(f"config key 'model.pretrained_checkpoint' = {pretrained_checkpoint!r}: cannot read the "
                          f"tokenizer stored with it: {e}") from e
    if tokenizer is None:
        if stored is None:
            raise ConfigError(f"config key 'tokenizer' is null but model.pretrained_checkpoint = "
                              f"{pretrained_checkpoint!r} holds no tokenizer: set tokenizer= to the one used for "
                              f"pretraining")
        _TOKENIZERS[key] = stored
        return stored
    try:
        tok = load_tokenizer(tokenizer)
    except Exception as e:
        raise ConfigError(f"config key 'tokenizer' = {tokenizer!r}: cannot load it: {e}") from e
    if stored is not None and not same_vocabulary(tok, stored) and not allow_tokenizer_mismatch:
        raise ConfigError(f"config key 'tokenizer' = {tokenizer!r} ({len(tok)} tokens) is not the tokenizer "
                          f"model.pretrained_checkpoint = {pretrained_checkpoint!r} was trained with ({len(stored)} "
                          f"tokens, a different vocabulary): set tokenizer=null to use the checkpoint's "
                          f"(allow_tokenizer_mismatch=true proceeds anyway)")
    _TOKENIZERS[key] = tok
    return tok


@dataclass
class TaskModel:
    """A task model ready to train: the Hugging Face-style model, its Composer wrapper, its metrics."""

    model: Any
    composer_model: Any
    metric_classes: Dict[str, str]  # friendly metric name -> Composer's metric key (the class name)
    init_report: Dict[str, Any]


def build_task(task: str, model_cfg: ModelConfig, tokenizer, labels: Optional[List[str]], metric_names: Sequence[str],
               *, seed: int, num_labels: Optional[int] = None, qa_eval: Optional[Prepared] = None,
               max_answer_length: int = 30) -> TaskModel:
    """The task model from model_cfg.pretrained_checkpoint (None: random init), its metrics and Composer wrapper.

    labels: class names (classification) or tags (token classification); None for the other task types.
    num_labels: for the metrics, when there are no labels (multiple choice: the number of choices)."""
    reproducibility.seed_all(seed)  # the new head's init depends on the seed
    model, report = build_task_model(model_cfg, task, tokenizer, labels)
    num_labels = len(labels) if labels else (num_labels or model.config.num_labels)
    qa = (qa_eval.contexts, qa_eval.answers) if qa_eval is not None else ([], [])
    metrics = build_metrics(task, list(metric_names), num_labels, labels or (), qa)
    composer_model = wrap(task, model, tokenizer, list(metrics.values()), max_answer_length)
    return TaskModel(model, composer_model, {name: type(m).__name__ for name, m in metrics.items()}, report)


@dataclass
class TrainSettings:
    optimizer: OptimizerConfig
    scheduler: SchedulerConfig
    max_duration: str
    batch_size: int  # global
    eval_batch_size: int  # per rank
    device: str
    precision: str  # on GPU; CPU trains in fp32
    microbatch: Any  # None (or "auto" on CPU): the whole per-rank batch
    seed: int
    run_name: Optional[str] = None
    eval_interval: str = "1dur"
    num_workers: int = 0
    progress_bar: bool = False
    console_log_interval: Optional[str] = None  # console metrics every interval (without a progress bar)
    eval_before_fit: bool = False
    save_folder: Optional[str] = None  # keep the final weights (weights-only Composer checkpoint) here
    # Experiment trackers (mosaicbert.core.trainer.build_loggers), and the hyperparameters they record
    loggers: List[Any] = field(default_factory=list)
    hparams: Dict[str, Any] = field(default_factory=dict)


def build_loader(dataset: Dataset, collate_fn, batch_size: int, *, train: bool, seed: int, num_workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """Training loaders are shuffled by a seeded DistributedSampler (Composer's dist.get_sampler: one shard per
    rank, reshuffled each epoch; `batch_size` is global); eval loaders are not shuffled (`batch_size` per rank)."""
    world = dist.get_world_size()
    sampler = dist.get_sampler(dataset, shuffle=train, drop_last=False, seed=seed)
    return DataLoader(dataset, batch_size=max(1, batch_size // world) if train else batch_size, sampler=sampler,
                      collate_fn=collate_fn, num_workers=num_workers, pin_memory=pin_memory, drop_last=False)


def fit_and_evaluate(task: str, tm: TaskModel, tokenizer, train: Prepared, evals: Dict[str, Prepared],
                     s: TrainSettings, callbacks: Sequence[Callback] = ()
                     ) -> Tuple[Dict[str, Dict[str, float]], Optional[str]]:
    """Train with a Composer Trainer and evaluate every eval set (before training when `eval_before_fit`, at
    `eval_interval`, and at the end).

    Returns {eval label: {friendly metric name: value}} of the final evaluation, and the path of the final
    weights-only checkpoint when `s.save_folder` is set (else None).
    """
    collate = build_collator(task, tokenizer)
    loader_kw = dict(seed=s.seed, num_workers=s.num_workers, pin_memory=s.device == "gpu")
    evaluators = [Evaluator(label=label, metric_names=list(tm.metric_classes.values()),
                            dataloader=build_loader(data.dataset, collate, s.eval_batch_size, train=False,
                                                    **loader_kw))
                  for label, data in evals.items()]
    microbatch = None if s.microbatch == "auto" and s.device == "cpu" else s.microbatch  # auto needs a GPU
    save_kw: Dict[str, Any] = {}
    if s.save_folder:
        save_kw = dict(save_folder=s.save_folder, save_interval="1dur", save_weights_only=True, save_overwrite=True,
                       save_num_checkpoints_to_keep=1, save_filename="final-rank{rank}.pt")
    log_kw: Dict[str, Any] = {"log_to_console": s.console_log_interval is not None and not s.progress_bar}
    if log_kw["log_to_console"]:
        log_kw["console_log_interval"] = s.console_log_interval
    trainer = Trainer(
        run_name=s.run_name,
        model=tm.composer_model,
        train_dataloader=build_loader(train.dataset, collate, s.batch_size, train=True, **loader_kw),
        eval_dataloader=evaluators,
        eval_interval=s.eval_interval,
        max_duration=s.max_duration,
        optimizers=build_optimizer(s.optimizer, tm.composer_model),
        schedulers=build_scheduler(s.scheduler),
        callbacks=[FiniteLossCheck(), *callbacks],
        device=s.device,
        precision=s.precision if s.device == "gpu" else "fp32",
        device_train_microbatch_size=microbatch,
        seed=s.seed,
        progress_bar=s.progress_bar,
        loggers=list(s.loggers),
        **log_kw,
        **save_kw,
    )
    try:
        if s.hparams:
            trainer.logger.log_hyperparameters(s.hparams)
        if s.eval_before_fit:
            trainer.eval()
        trainer.fit()
        metrics = {label: {name: float(by_class[cls].compute()) for name, cls in tm.metric_classes.items()}
                   for label, by_class in trainer.state.eval_metrics.items()}
        # the final evaluation under the names results.json uses, for the trackers' run tables
        trainer.logger.log_metrics({f"final/{label}/{name}": value for label, values in metrics.items()
                                    for name, value in values.items()})
    finally:
        trainer.close()
    checkpoint = None
    if s.save_folder:
        checkpoint = os.path.join(s.save_folder, "final-rank0.pt")
        if not os.path.isfile(checkpoint):
            raise RuntimeError(f"the final checkpoint {checkpoint} was not written")
    return metrics, checkpoint


# ---------------------------------------------------------------------------------------------------------------
# finetune.py: one task from the user's files or a hub dataset, keeping the best evaluation
# ---------------------------------------------------------------------------------------------------------------


def finetune_folder(cfg: FinetuneConfig) -> str:
    return run_folder(cfg.save_folder, cfg.run_name, "finetune")


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


def _write_json(path: str, obj: Any) -> None:
    """Write beside `path`, then rename: a reader (or a kill) never sees half a file."""
    tmp = f"{path}.new-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, default=str)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _sibling(path: str, kind: str) -> str:
    parent, name = os.path.split(os.path.abspath(path))
    return os.path.join(parent, f".{name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def replace_best(folder: str, save: Callable[[str], None], results_path: str, results: Dict[str, Any]) -> None:
    """Replace the Hugging Face folder `folder` (written by `save(path)`) and `results_path` together: both are
    written beside their targets first, then renamed into place back to back, so that the pair on disk always
    describes one model. The previous folder is removed only after the swap."""
    tmp, old = _sibling(folder, "new"), _sibling(folder, "old")
    results_tmp = f"{results_path}.new-{os.getpid()}"
    try:
        save(tmp)
        with open(results_tmp, "w") as f:
            json.dump(results, f, indent=2, default=str)
        if os.path.isdir(folder):
            os.rename(folder, old)
        os.rename(tmp, folder)
        os.replace(results_tmp, results_path)
    finally:
        for path in (tmp, old):
            shutil.rmtree(path, ignore_errors=True)
        if os.path.exists(results_tmp):
            os.remove(results_tmp)


def recover_best(folder: str) -> None:
    """Leftovers of a run killed inside `replace_best`: put back a best model set aside but not yet replaced, and
    remove unfinished new ones."""
    parent, name = os.path.split(os.path.abspath(folder))
    if not os.path.isdir(parent):
        return
    for entry in sorted(os.listdir(parent)):
        path = os.path.join(parent, entry)
        if entry.startswith(f".{name}.old-") and not os.path.isdir(folder):
            os.rename(path, folder)
        elif entry.startswith((f".{name}.new-", f".{name}.old-", "results.json.new-")):
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else os.remove(path)


class KeepBest(Callback):
    """After every evaluation: log the metrics, and when the main metric is the best so far, save the model and
    tokenizer as a Hugging Face folder (save_pretrained) in `folder`, together with `results(finished=False)`
    as `results_path` (see `replace_best`)."""

    def __init__(self, model, tokenizer, folder: str, metric_classes: Dict[str, str], main: str,
                 results_path: Optional[str] = None, results: Optional[Callable[..., Dict[str, Any]]] = None):
        self.model, self.tokenizer, self.folder = model, tokenizer, folder
        self.metric_classes = metric_classes  # friendly name -> Composer's metric key (class name)
        self.main = main
        self.results_path, self.results = results_path, results
        self.history: List[Dict[str, Any]] = []
        self.best: Optional[Dict[str, Any]] = None

    def _save(self, path: str) -> None:
        self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)

    def eval_end(self, state: State, logger: Logger) -> None:
        computed = state.eval_metrics[EVAL_LABEL]
        values = {name: float(computed[cls].compute()) for name, cls in self.metric_classes.items()}
        entry = {"batch": int(state.timestamp.batch), "epoch": int(state.timestamp.epoch), "metrics": values}
        self.history.append(entry)
        improved = self.best is None or values[self.main] > self.best["metrics"][self.main]
        shown = " ".join(f"{k}={v:.4f}" for k, v in values.items())
        progress(f"[eval] batch {entry['batch']}: {shown}" + (f" (best {self.main}: saved to {self.folder})"
                                                                if improved else ""))
        if improved:
            self.best = entry
            if dist.get_global_rank() == 0:
                if self.results_path is not None and self.results is not None:
                    replace_best(self.folder, self._save, self.results_path, self.results(finished=False))
                else:
                    self._save(self.folder)
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
    progress(f"data: {train.num_examples} training examples ({len(train.dataset)} model inputs) from "
             f"{train_rows.source}; {evals.num_examples} eval examples ({len(evals.dataset)}) from {eval_rows.source}")
    return train, evals, labels


def check_save_folder(cfg: FinetuneConfig) -> None:
    """A save_folder holding an earlier run's results.json is refused unless overwrite=true (before anything runs)."""
    folder = finetune_folder(cfg)
    results = os.path.join(folder, "results.json")
    if os.path.isfile(results) and not cfg.overwrite:
        raise ConfigError(f"save_folder {folder!r} holds the results of an earlier run ({results} and best_model/): "
                          f"set overwrite=true to replace them (at this run's first evaluation), or give another "
                          f"save_folder / run_name")


def run_finetune(cfg: FinetuneConfig) -> Dict[str, Any]:
    """Finetune; returns the results dict also written to results.json."""
    if cfg.task == "embedding":
        raise ConfigError("task embedding runs in mosaicbert.embeddings.train.run_embedding_finetune (finetune.py "
                          "picks it by the task type)")
    logging.getLogger("composer").setLevel(logging.WARNING)
    check_save_folder(cfg)
    t0 = time.time()
    device = resolve_device(cfg.device)
    tokenizer = load_task_tokenizer(cfg.tokenizer, cfg.model.pretrained_checkpoint, cfg.allow_tokenizer_mismatch)
    train, evals, labels = _prepare_data(cfg, tokenizer)
    names = list(cfg.metrics or TASK_METRICS[cfg.task])
    tm = build_task(cfg.task, cfg.model, tokenizer, labels, names, seed=cfg.seed,
                    num_labels=len(cfg.data.columns.choices) or None, qa_eval=evals,
                    max_answer_length=cfg.data.max_answer_length)
    folder = finetune_folder(cfg)
    best_folder = os.path.join(folder, "best_model")
    results_path = os.path.join(folder, "results.json")
    if dist.get_global_rank() == 0:
        os.makedirs(folder, exist_ok=True)
        recover_best(best_folder)

    def results(finished: bool) -> Dict[str, Any]:
        return {
            "run_name": cfg.run_name,
            "task": cfg.task,
            "model": cfg.model.name,
            "finished": finished,  # false: written at an improvement of a run still training (or killed)
            "labels": labels,
            "main_metric": main_metric(cfg),
            "best": keep_best.best,
            "evaluations": keep_best.history,
            "best_model": best_folder,
            "init_report": tm.init_report,
            "train_examples": train.num_examples,
            "eval_examples": evals.num_examples,
            "duration_s": time.time() - t0,
            "config": dataclasses.asdict(cfg),
        }

    keep_best = KeepBest(tm.model, tokenizer, best_folder, tm.metric_classes, main_metric(cfg), results_path, results)
    settings = TrainSettings(
        optimizer=cfg.optimizer, scheduler=cfg.scheduler, max_duration=cfg.max_duration, batch_size=cfg.batch_size,
        eval_batch_size=cfg.eval_batch_size, device=device, precision=cfg.precision,
        microbatch=cfg.device_train_microbatch_size, seed=cfg.seed, run_name=cfg.run_name,
        eval_interval=cfg.eval_interval, num_workers=cfg.data.num_workers, progress_bar=cfg.progress_bar,
        console_log_interval=cfg.console_log_interval, eval_before_fit=cfg.eval_before_training,
        loggers=build_loggers(cfg.loggers, "finetune"), hparams=flat_hparams(cfg))
    fit_and_evaluate(cfg.task, tm, tokenizer, train, {EVAL_LABEL: evals}, settings, callbacks=[keep_best])
    final = results(finished=True)
    if dist.get_global_rank() == 0:
        _write_json(results_path, final)
    best = keep_best.best
    if best is not None and best["batch"] == 0 and len(keep_best.history) > 1:
        log.warning("the best evaluation is the untrained model (batch 0): training never improved %s, so "
                    "best_model holds the start weights; try another optimizer.lr (a pretrained start usually "
                    "wants 1e-5 to 1e-4) or more epochs", final["main_metric"])
    if best is not None:
        shown = " ".join(f"{k}={v:.4f}" for k, v in best["metrics"].items())
        progress(f"best {final['main_metric']} at batch {best['batch']}: {shown}\n"
                 f"wrote {best_folder} (Hugging Face model + tokenizer) and {results_path}")
    return final
