"""Contrastive finetuning of sentence embeddings (finetune.py with `task: embedding`).

Trains the bare encoder (MosaicBERT or transformers' BERT, from model.pretrained_checkpoint) on (anchor, positive[,
hard negative ...]) text pairs with in-batch negatives (InBatchNegativesLoss), with a Composer Trainer. Every
`eval_interval` (and before training when eval_before_training) the eval pairs are scored as a retrieval task
(ndcg@10, recall@1, recall@10) and, with embedding.stsb_file, STS-B (stsb_spearman); the best evaluation by the
main metric is kept in the run folder:

    best_model/     the encoder + tokenizer (save_pretrained; MosaicBERT's source files for remote code) and the
                    sentence-transformers files: SentenceTransformer(best_model, trust_remote_code=True) loads it
    results.json    every evaluation, the best one, the start-weights report

The batch is never split into microbatches (that would split its negatives); embedding.cached_chunk_size turns on
gradient caching instead, for batches larger than memory allows.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from typing import Any, Dict, List, Optional

import torch
from composer import Callback, Event, Logger, State, Trainer
from composer.core import DataSpec
from composer.models import ComposerModel
from composer.utils import dist, reproducibility
from composer.utils.misc import create_interval_scheduler
from torch.utils.data import Dataset

from mosaicbert.core.callbacks import FiniteLossCheck
from mosaicbert.core.checkpoint import load_weights, read_weights
from mosaicbert.core.config import ConfigError, ModelConfig
from mosaicbert.core.runs import progress, run_folder
from mosaicbert.core.trainer import build_optimizer, build_scheduler, resolve_device
from mosaicbert.embeddings.data import Pairs, pairs_from_rows, read_sts
from mosaicbert.embeddings.encode import embed_batch, pad_batch
from mosaicbert.embeddings.evaluate import evaluate_encoder
from mosaicbert.embeddings.loss import InBatchNegativesLoss, embed_columns
from mosaicbert.export import write_sentence_transformers_files
from mosaicbert.finetune.config import FinetuneConfig, main_metric
from mosaicbert.finetune.data import FinetuneDataError
from mosaicbert.finetune.models import SOURCE_HEADS, task_model_config
from mosaicbert.finetune.runner import build_loader, load_rows, load_task_tokenizer
from mosaicbert.model import MosaicBertModel
from mosaicbert.model.modeling_mosaic_bert import auto_map

log = logging.getLogger("mosaicbert.embeddings")


# ---------------------------------------------------------------------------------------------------------------
# The encoder
# ---------------------------------------------------------------------------------------------------------------


def build_encoder(model_cfg: ModelConfig, tokenizer, seed: int):
    """(bare encoder without the [CLS] pooler, start-weights report) for model.name, shaped like the start
    checkpoint; its weights from model.pretrained_checkpoint (an MLM or task checkpoint: heads left out)."""
    from transformers import BertModel

    reproducibility.seed_all(seed)
    config = task_model_config(model_cfg, tokenizer)
    cls = MosaicBertModel if model_cfg.name == "mosaic_bert" else BertModel
    encoder = cls(config, add_pooling_layer=False)
    report: Dict[str, Any] = {"source": None}
    source = model_cfg.pretrained_checkpoint
    if source:
        # task and MLM checkpoints keep the encoder under `bert.`; the bare encoder has no prefix
        state = {k.removeprefix("bert."): v for k, v in read_weights(source).items()}
        loaded = load_weights(encoder, state, head_prefixes=(*SOURCE_HEADS, "pooler."), name=source)
        if loaded.missing:
            raise ConfigError(f"model.pretrained_checkpoint {source!r}: the encoder weights {loaded.missing} are "
                              f"missing (a checkpoint of another model size, or of model.name other than "
                              f"{model_cfg.name!r}?)")
        report = {"source": source, **loaded.as_dict()}
    else:
        log.warning("model.pretrained_checkpoint is null: training embeddings from RANDOM INIT (smoke runs only)")
    return encoder, report


def save_embedding_model(encoder, tokenizer, folder: str, pooling: str, max_seq_length: int) -> None:
    """save_pretrained (+ remote code for MosaicBERT) and the sentence-transformers files."""
    if isinstance(encoder, MosaicBertModel):
        encoder.config.auto_map = auto_map()  # every Auto class: AutoModel is what sentence-transformers loads
    encoder.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    write_sentence_transformers_files(folder, pooling, max_seq_length)


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


class PairsDataset(Dataset):
    """Tokenized (anchor, positive, negatives ...) rows: each a list of (input_ids, token_type_ids)."""

    def __init__(self, pairs: Pairs, tokenizer, max_seq_len: int):
        columns = [pairs.anchors, pairs.positives, *pairs.negatives]
        enc = [tokenizer(c, truncation=True, max_length=max_seq_len, return_token_type_ids=True,
                         return_attention_mask=False) for c in columns]
        self.rows = [[(e["input_ids"][i], e["token_type_ids"][i]) for e in enc] for i in range(len(pairs))]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.rows[i]


class PairsCollator:
    """-> {"columns": [anchor batch, positive batch, negative batch ...]}, each padded to its own longest row
    (input_ids, attention_mask, token_type_ids [B, S], sequence_lengths)."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, rows) -> Dict[str, Any]:
        cpu = torch.device("cpu")
        return {"columns": [pad_batch([r[c][0] for r in rows], self.pad_token_id, cpu, [r[c][1] for r in rows])
                            for c in range(len(rows[0]))]}


def _num_samples(batch) -> int:
    return int(batch["columns"][0]["input_ids"].shape[0])


def _whole_batch(batch, microbatch_size: int) -> List[Any]:
    if microbatch_size < _num_samples(batch):
        raise ValueError("task embedding never splits a batch (its in-batch negatives): leave "
                         "device_train_microbatch_size null and set embedding.cached_chunk_size")
    return [batch]


# ---------------------------------------------------------------------------------------------------------------
# The Composer model
# ---------------------------------------------------------------------------------------------------------------


class ContrastiveModel(ComposerModel):
    """forward: the (unnormalised) embeddings of each column; loss: in-batch negatives over them."""

    def __init__(self, encoder, loss_fn: InBatchNegativesLoss, pooling: str = "mean",
                 cached_chunk_size: Optional[int] = None):
        super().__init__()
        self.encoder, self.loss_fn = encoder, loss_fn
        self.pooling, self.cached_chunk_size = pooling, cached_chunk_size

    def _embed(self, batch: Dict[str, Any]) -> torch.Tensor:
        return embed_batch(self.encoder, batch, self.pooling, normalize=False)

    def forward(self, batch: Dict[str, Any]) -> List[torch.Tensor]:
        return embed_columns(self._embed, batch["columns"], self.cached_chunk_size if self.training else None)

    def loss(self, outputs: List[torch.Tensor], batch: Any) -> torch.Tensor:
        return self.loss_fn(outputs[0], outputs[1], outputs[2:])

    def get_metrics(self, is_train: bool = False) -> Dict[str, Any]:
        return {}  # evaluation runs in EmbeddingEvaluation, on whole eval sets


# ---------------------------------------------------------------------------------------------------------------
# Evaluation during training
# ---------------------------------------------------------------------------------------------------------------


class EmbeddingEvaluation(Callback):
    """Score the eval pairs (and STS-B) every `interval`, at the end of training and, with `before`, at the start;
    keep the best by `main` in `folder`."""

    def __init__(self, encoder, tokenizer, evaluate_kwargs: Dict[str, Any], metrics: List[str], main: str,
                 folder: str, interval: str, before: bool, save_kwargs: Dict[str, Any]):
        self.encoder, self.tokenizer, self.evaluate_kwargs = encoder, tokenizer, evaluate_kwargs
        self.metrics, self.main, self.folder, self.before, self.save_kwargs = metrics, main, folder, before, save_kwargs
        self.due = create_interval_scheduler(interval, checkpoint_events=False, final_events={Event.BATCH_END})
        self.history: List[Dict[str, Any]] = []
        self.best: Optional[Dict[str, Any]] = None
        self._last_batch: Optional[int] = None

    def fit_start(self, state: State, logger: Logger) -> None:
        if self.before:
            self.evaluate(state, logger)

    def run_event(self, event: Event, state: State, logger: Logger) -> None:
        super().run_event(event, state, logger)
        if event in (Event.BATCH_END, Event.EPOCH_END) and self.due(state, event):
            self.evaluate(state, logger)

    def evaluate(self, state: State, logger: Logger) -> None:
        batch = int(state.timestamp.batch)
        if batch == self._last_batch:
            return
        self._last_batch = batch
        computed = evaluate_encoder(self.encoder, self.tokenizer, **self.evaluate_kwargs)
        values = {name: computed[name] for name in self.metrics}
        logger.log_metrics({f"eval/{k}": v for k, v in values.items()})
        entry = {"batch": batch, "epoch": int(state.timestamp.epoch), "metrics": values}
        self.history.append(entry)
        improved = self.best is None or values[self.main] > self.best["metrics"][self.main]
        shown = " ".join(f"{k}={v:.4f}" for k, v in values.items())
        saved = f" (best {self.main}: saved to {self.folder})" if improved else ""
        progress(f"[eval] batch {batch}: {shown}{saved}")
        if improved:
            self.best = entry
            if dist.get_global_rank() == 0:
                save_embedding_model(self.encoder, self.tokenizer, self.folder, **self.save_kwargs)
            dist.barrier()


# ---------------------------------------------------------------------------------------------------------------
# finetune.py task embedding
# ---------------------------------------------------------------------------------------------------------------


def load_pairs(cfg: FinetuneConfig, split: str) -> Pairs:
    c = cfg.data.columns
    return pairs_from_rows(load_rows(cfg, split), c.anchor, c.positive, c.negatives)


def run_embedding_finetune(cfg: FinetuneConfig) -> Dict[str, Any]:
    """Contrastive finetuning; returns the results dict also written to results.json."""
    logging.getLogger("composer").setLevel(logging.WARNING)
    if cfg.task != "embedding":
        raise ConfigError(f"run_embedding_finetune runs task embedding, not {cfg.task}")
    t0 = time.time()
    e = cfg.embedding
    if e.cached_chunk_size is not None and dist.get_world_size() > 1:
        raise ConfigError("embedding.cached_chunk_size (gradient caching) runs on one process only: set it to null "
                          "for multi-GPU runs")
    device = resolve_device(cfg.device)
    tokenizer = load_task_tokenizer(cfg.tokenizer, cfg.model.pretrained_checkpoint)
    train, held_out = load_pairs(cfg, "train"), load_pairs(cfg, "eval")
    if len(train) < 2:
        raise FinetuneDataError(f"{train.source}: in-batch negatives need at least two training pairs")
    sts = read_sts(e.stsb_file) if e.stsb_file else None
    progress(f"data: {len(train)} training pairs from {train.source} ({len(train.negatives)} hard-negative "
             f"columns); {len(held_out)} eval pairs from {held_out.source}"
             + (f"; {len(sts.scores)} STS pairs from {e.stsb_file}" if sts else ""))
    names = list(cfg.metrics or ["ndcg@10", "recall@1", "recall@10"] + (["stsb_spearman"] if sts else []))
    main = main_metric(cfg)

    encoder, report = build_encoder(cfg.model, tokenizer, cfg.seed)
    loss_fn = InBatchNegativesLoss(e.scale, e.learnable_scale, e.max_scale)
    model = ContrastiveModel(encoder, loss_fn, e.pooling, e.cached_chunk_size)
    folder = run_folder(cfg.save_folder, cfg.run_name, "finetune")
    best_folder = os.path.join(folder, "best_model")
    evaluation = EmbeddingEvaluation(
        encoder, tokenizer,
        dict(sts=sts, pairs=held_out, pooling=e.pooling, max_seq_len=cfg.data.max_seq_len,
             batch_size=cfg.eval_batch_size, retrieval=[n for n in names if n != "stsb_spearman"]),
        names, main, best_folder, cfg.eval_interval, cfg.eval_before_training,
        dict(pooling=e.pooling, max_seq_length=cfg.data.max_seq_len))
    loader = build_loader(PairsDataset(train, tokenizer, cfg.data.max_seq_len), PairsCollator(tokenizer.pad_token_id),
                          cfg.batch_size, train=True, seed=cfg.seed, num_workers=cfg.data.num_workers,
                          pin_memory=device == "gpu")
    log_kw: Dict[str, Any] = {"log_to_console": not cfg.progress_bar}
    if log_kw["log_to_console"]:
        log_kw["console_log_interval"] = cfg.console_log_interval
    trainer = Trainer(
        run_name=cfg.run_name,
        model=model,
        train_dataloader=DataSpec(loader, get_num_samples_in_batch=_num_samples, split_batch=_whole_batch),
        max_duration=cfg.max_duration,
        optimizers=build_optimizer(cfg.optimizer, model),
        schedulers=build_scheduler(cfg.scheduler),
        callbacks=[FiniteLossCheck(), evaluation],
        device=device,
        precision=cfg.precision if device == "gpu" else "fp32",
        seed=cfg.seed,
        progress_bar=cfg.progress_bar,
        loggers=[],
        **log_kw,
    )
    try:
        trainer.fit()
    finally:
        trainer.close()
    results = {
        "run_name": cfg.run_name,
        "task": cfg.task,
        "model": cfg.model.name,
        "main_metric": main,
        "best": evaluation.best,
        "evaluations": evaluation.history,
        "best_model": best_folder,
        "final_scale": float(loss_fn.scale.detach()),
        "init_report": report,
        "train_examples": len(train),
        "eval_examples": len(held_out),
        "duration_s": time.time() - t0,
        "config": dataclasses.asdict(cfg),
    }
    if dist.get_global_rank() == 0:
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, "results.json"), "w") as f:
            json.dump(results, f, indent=2, default=str)
    if evaluation.best is not None:
        shown = " ".join(f"{k}={v:.4f}" for k, v in evaluation.best["metrics"].items())
        progress(f"best {main} at batch {evaluation.best['batch']}: {shown}\n"
                 f"wrote {best_folder} (Hugging Face + sentence-transformers) and "
                 f"{os.path.join(folder, 'results.json')}")
    return results
