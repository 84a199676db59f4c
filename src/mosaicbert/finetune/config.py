"""Finetuning configuration schema (finetune.py), validated by mosaicbert.core.config.load_config.

One run finetunes one model on one task of the user's own data: local CSV / TSV / JSON Lines / CoNLL / SQuAD
JSON files, or a Hugging Face hub dataset. Column names are set under `data.columns`; each task type reads
only the columns it needs (see `TASK_COLUMNS`). Task `embedding` (contrastive training of sentence embeddings on
text pairs) runs in mosaicbert.embeddings.train; its settings are under `embedding`.
"""

from __future__ import annotations

import operator
import os
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Dict, List, Optional, Sequence

from mosaicbert.core.config import (
    NON_NEGATIVE,
    POSITIVE,
    POSITIVE_FINITE,
    TRAINING_RANGES,
    ConfigError,
    Device,
    ModelConfig,
    OptimizerConfig,
    Precision,
    SchedulerConfig,
    TrackersConfig,
    check_interval,
    check_microbatch,
    check_ranges,
    load_config,
    suggest,
)

TASK_TYPES = ("classification", "regression", "token_classification", "question_answering", "multiple_choice",
              "embedding")
TaskType = StrEnum("TaskType", TASK_TYPES, module=__name__)
DataFormat = StrEnum("DataFormat", ["csv", "tsv", "jsonl", "conll", "squad"], module=__name__)

# The `data.columns` keys each task type reads (text_pair and question are optional where they appear).
TASK_COLUMNS: Dict[str, tuple] = {
    "classification": ("text", "text_pair", "label"),
    "regression": ("text", "text_pair", "label"),
    "token_classification": ("tokens", "label"),
    "question_answering": ("id", "context", "question", "answers"),
    "multiple_choice": ("context", "question", "choices", "label"),
    "embedding": ("anchor", "positive", "negatives"),
}


@dataclass
class ColumnsConfig:
    text: str = "text"  # the sentence (classification, regression)
    text_pair: Optional[str] = None  # the second sentence of a sentence pair; null = single sentences
    # classification: class name; regression: a number; token classification: one tag per word;
    # multiple choice: the index of the right choice (0-based)
    label: str = "label"
    tokens: str = "tokens"  # token classification: the words (a list, or one whitespace-separated string)
    context: str = "context"  # question answering, multiple choice
    question: Optional[str] = "question"  # question answering; multiple choice (null = none)
    choices: List[str] = field(default_factory=list)  # multiple choice: one column per choice
    answers: str = "answers"  # question answering: {"text": [...], "answer_start": [...]} as in SQuAD
    id: str = "id"  # question answering: example id
    anchor: str = "anchor"  # embedding: the query / first text of a pair
    positive: str = "positive"  # embedding: the text that belongs with the anchor
    negatives: List[str] = field(default_factory=list)  # embedding: hard-negative columns (optional)


@dataclass
class FinetuneDataConfig:
    # Local files; the format follows the extension (.csv, .tsv, .jsonl, .conll, .json = SQuAD for question
    # answering and JSON Lines otherwise) unless `format` names it.
    train_file: Optional[str] = None
    eval_file: Optional[str] = None
    format: Optional[DataFormat] = None  # csv | tsv | jsonl | conll | squad
    # Or a Hugging Face hub dataset (datasets.load_dataset(hub_dataset, hub_config)), used when train_file is null.
    hub_dataset: Optional[str] = None
    hub_config: Optional[str] = None
    # data_files for load_dataset, {split: path or list}: e.g. hub_dataset: parquet for local Parquet files
    hub_data_files: Optional[Dict[str, Any]] = None
    train_split: str = "train"
    eval_split: str = "validation"
    columns: ColumnsConfig = field(default_factory=ColumnsConfig)
    # The label set (classification: class names; token classification: tags such as O, B-PER, I-PER).
    # null = the sorted labels of the training data (hub ClassLabel columns: their names). A label outside the
    # declared set is an error naming the file and row.
    labels: Optional[List[str]] = None
    max_seq_len: int = 128
    doc_stride: int = 64  # question answering: overlap of consecutive windows over a long context, in tokens
    max_answer_length: int = 30  # question answering: longest predicted answer, in tokens
    max_train_samples: Optional[int] = None  # the first rows only (quick runs)
    max_eval_samples: Optional[int] = None
    num_workers: int = 0


@dataclass
class EmbeddingConfig:
    """Task `embedding`: in-batch negatives contrastive loss (sentence-transformers' MultipleNegativesRankingLoss)."""

    pooling: str = "mean"  # mean | cls: the sentence embedding from the token states
    scale: float = 20.0  # 1 / temperature of the softmax over cosine similarities
    learnable_scale: bool = False  # learn log(scale), clamped to <= max_scale
    max_scale: float = 100.0
    # Gradient caching: embed `cached_chunk_size` texts at a time, so batch_size (the number of in-batch negatives)
    # is not bound by memory; null = one forward per column. device_train_microbatch_size must stay null for this
    # task, since splitting the batch would split the negatives.
    cached_chunk_size: Optional[int] = None
    # STS file (GLUE STS-B dev.tsv layout) scored at every evaluation as metric stsb_spearman; null = none.
    stsb_file: Optional[str] = None


@dataclass
class FinetuneConfig:
    run_name: Optional[str] = None
    # classification (single sentence or sentence pair) | regression | token_classification |
    # question_answering | multiple_choice
    task: TaskType = TaskType.classification
    seed: int = 17
    # model.pretrained_checkpoint: a Composer checkpoint of main.py, a Hugging Face folder (python -m
    # mosaicbert.export), or a hub model id; null = random init (smoke runs). The model's shape comes from the
    # folder's or checkpoint's config; model.config_overrides change single fields (e.g. dropout).
    model: ModelConfig = field(default_factory=ModelConfig)
    # hub name, local folder, vocab.txt path, or builtin://python-docs; null = the tokenizer stored with
    # model.pretrained_checkpoint (a Hugging Face folder or hub id)
    tokenizer: Optional[str] = None
    allow_tokenizer_mismatch: bool = False  # a tokenizer other than the checkpoint's: error unless true
    data: FinetuneDataConfig = field(default_factory=FinetuneDataConfig)
    # Metrics from the task's set (see mosaicbert.finetune.metrics.TASK_METRICS); null = the task's defaults.
    # The first one is the main metric: it picks the best checkpoint.
    metrics: Optional[List[str]] = None
    embedding: EmbeddingConfig = field(default_factory=EmbeddingConfig)  # task embedding only

    batch_size: int = 32
    eval_batch_size: int = 64
    device_train_microbatch_size: Any = None  # null = batch_size; an int; or "auto" (GPU only)
    max_duration: str = "3ep"
    eval_interval: str = "1ep"  # evaluation during training (Composer time); it also runs at the end
    eval_before_training: bool = False  # evaluate the untrained model first (a baseline in the results)
    optimizer: OptimizerConfig = field(
        default_factory=lambda: OptimizerConfig(lr=5.0e-5, weight_decay=5.0e-6, betas=[0.9, 0.98], eps=1.0e-6))
    scheduler: SchedulerConfig = field(default_factory=lambda: SchedulerConfig(t_warmup="0.06dur", alpha_f=0.0))
    precision: Precision = Precision.amp_bf16  # fp32 on CPU
    device: Optional[Device] = None  # cpu | gpu; null picks gpu when available
    progress_bar: bool = False
    console_log_interval: str = "10ba"
    # Holds best_model/ (Hugging Face folder with the tokenizer: the best evaluation by the main metric) and
    # results.json; default runs/finetune/<run_name>.
    save_folder: Optional[str] = None
    # A save_folder that already holds results.json (an earlier run) is refused unless true; the earlier
    # best_model / results.json pair is then replaced at this run's first evaluation.
    overwrite: bool = False
    # Experiment trackers: loggers.mlflow, loggers.wandb, loggers.tensorboard, loggers.file (as in main.py)
    loggers: TrackersConfig = field(default_factory=TrackersConfig)


FINETUNE_RANGES = {
    **TRAINING_RANGES,
    "optimizer.lr": POSITIVE_FINITE,
    "optimizer.weight_decay": NON_NEGATIVE,
    "seed": NON_NEGATIVE,
    "batch_size": POSITIVE,
    "eval_batch_size": POSITIVE,
    "data.max_seq_len": (lambda v: v >= 8, ">= 8"),
    "data.max_answer_length": POSITIVE,
    "data.max_train_samples": (lambda v: v is None or v > 0, "> 0 or null"),
    "data.max_eval_samples": (lambda v: v is None or v > 0, "> 0 or null"),
    "data.num_workers": NON_NEGATIVE,
    "embedding.scale": POSITIVE_FINITE,
    "embedding.max_scale": POSITIVE_FINITE,
    "embedding.cached_chunk_size": (lambda v: v is None or v > 0, "> 0 or null"),
}


def validate_finetune_config(cfg: FinetuneConfig) -> FinetuneConfig:
    """Checks beyond types: durations, ranges, and that the task's data is described."""
    from mosaicbert.finetune.metrics import TASK_METRICS

    for key in ("max_duration", "eval_interval", "console_log_interval", "scheduler.t_warmup"):
        check_interval(operator.attrgetter(key)(cfg), key, wall_clock=False, nonzero=key == "eval_interval")
    check_ranges(cfg, FINETUNE_RANGES)
    check_microbatch(cfg.device_train_microbatch_size, "device_train_microbatch_size", allow_null=True)
    d = cfg.data
    if d.train_file is None and d.hub_dataset is None:
        raise ConfigError("config key 'data.train_file' is not set: give a local file (csv, tsv, jsonl, conll, "
                          "SQuAD json) or data.hub_dataset=<name on the Hugging Face hub>")
    if d.train_file is not None and d.eval_file is None:
        raise ConfigError("config key 'data.eval_file' is not set: evaluation (and the best checkpoint) needs "
                          "a held-out file in the same format as data.train_file")
    for key in ("train_file", "eval_file"):
        path = getattr(d, key)
        if path is not None and not os.path.isfile(path):
            raise ConfigError(f"config key 'data.{key}' = {path!r}: no such file")
    if cfg.task == "multiple_choice" and len(d.columns.choices) < 2:
        raise ConfigError("config key 'data.columns.choices' must name at least two choice columns for "
                          f"task multiple_choice, got {d.columns.choices}")
    if d.labels is not None:
        if cfg.task not in ("classification", "token_classification"):
            raise ConfigError(f"config key 'data.labels' is for classification and token_classification, "
                              f"not {cfg.task}: set it to null")
        if len(set(d.labels)) != len(d.labels) or len(d.labels) < 2:
            raise ConfigError(f"config key 'data.labels' must list at least two distinct labels, got {d.labels}")
    if cfg.task == "question_answering" and not 0 < d.doc_stride < d.max_seq_len:
        raise ConfigError(f"config key 'data.doc_stride' = {d.doc_stride} must be between 0 and "
                          f"data.max_seq_len ({d.max_seq_len})")
    if cfg.task == "embedding":
        check_embedding_config(cfg)
    allowed = TASK_METRICS[cfg.task]
    if cfg.metrics is not None:
        if not cfg.metrics:
            raise ConfigError("config key 'metrics' is empty: name at least one, or null for the task's defaults")
        for m in cfg.metrics:
            if m not in allowed:
                raise ConfigError(f"config key 'metrics': {m!r} is not a metric of task {cfg.task} "
                                  f"(one of {list(allowed)}): {suggest(str(m), allowed)}")
    if cfg.tokenizer is None and not cfg.model.pretrained_checkpoint:
        raise ConfigError("config key 'tokenizer' is null and there is no model.pretrained_checkpoint to take it "
                          "from: set tokenizer=<hub name, folder, vocab.txt or builtin://python-docs>")
    return cfg


def check_embedding_config(cfg: FinetuneConfig) -> None:
    e = cfg.embedding
    if e.pooling not in ("mean", "cls"):
        raise ConfigError(f"config key 'embedding.pooling' = {e.pooling!r}: use mean or cls")
    if e.scale > e.max_scale:
        raise ConfigError(f"config key 'embedding.scale' = {e.scale} is above embedding.max_scale = {e.max_scale}")
    if cfg.device_train_microbatch_size is not None:
        raise ConfigError("config key 'device_train_microbatch_size' must be null for task embedding (splitting the "
                          "batch would split its in-batch negatives): set embedding.cached_chunk_size instead")
    if e.stsb_file is not None and not os.path.isfile(e.stsb_file):
        raise ConfigError(f"config key 'embedding.stsb_file' = {e.stsb_file!r}: no such file")
    if "stsb_spearman" in (cfg.metrics or ()) and e.stsb_file is None:
        raise ConfigError("config key 'metrics' names stsb_spearman but embedding.stsb_file is null: set it to an "
                          "STS-B dev.tsv")


def load_finetune_config(yaml_path: Optional[str], overrides: Sequence[str] = ()) -> FinetuneConfig:
    cfg = validate_finetune_config(load_config(FinetuneConfig, yaml_path, overrides))
    if cfg.run_name is None:
        cfg.run_name = os.path.splitext(os.path.basename(yaml_path))[0] if yaml_path else "finetune"
    return cfg


def main_metric(cfg: FinetuneConfig) -> str:
    from mosaicbert.finetune.metrics import TASK_METRICS

    return (cfg.metrics or TASK_METRICS[cfg.task])[0]
