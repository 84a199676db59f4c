"""Task models: the Hugging Face-style model for a task type (config from the start checkpoint), its start
weights, and the Composer wrappers that turn its outputs into metric inputs."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from typing import Any, Dict, List, Optional

import torch

from mosaicbert.core.config import ConfigError, ModelConfig
from mosaicbert.core.hub import hub_local_only
from mosaicbert.core.models import SequenceClassificationModel
from mosaicbert.finetune.tasks import best_spans, model_class

log = logging.getLogger("mosaicbert.finetune")

# Fields of a saved config.json that describe the saved model's head or bookkeeping, not the encoder's shape.
_NOT_ENCODER = {"architectures", "auto_map", "id2label", "label2id", "num_labels", "problem_type", "model_type",
                "transformers_version", "_name_or_path", "torch_dtype", "dtype", "return_dict", "pad_token_id"}
_MODEL_TYPES = {"mosaic_bert": "mosaic_bert", "hf_bert": "bert"}
SOURCE_HEADS = ("cls.", "classifier.", "qa_outputs.")
# The encoder's shape: taken from the start checkpoint even when model.config_overrides says otherwise.
SHAPE_KEYS = {"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
              "max_position_embeddings", "type_vocab_size"}


def source_config(source: Optional[str]) -> Optional[Dict[str, Any]]:
    """config.json of the start checkpoint (a Hugging Face folder, a hub id, or the Hugging Face metadata inside a
    Composer checkpoint of main.py); None for random init or when it has none."""
    if not source:
        return None
    from mosaicbert.core.checkpoint import looks_like_hub_id, read_composer_checkpoint

    path = os.path.expanduser(source)
    if os.path.isdir(path):
        config_file = os.path.join(path, "config.json")
    elif os.path.isfile(path):
        meta = (read_composer_checkpoint(path).get("integrations") or {}).get("huggingface") or {}
        return dict(meta.get("model", {}).get("config", {}).get("content", {})) or None
    elif looks_like_hub_id(source):
        try:
            from huggingface_hub import hf_hub_download

            config_file = hf_hub_download(source, "config.json", local_files_only=hub_local_only(source))
        except Exception as e:  # read_weights reports the download failure with the same cause
            log.warning("%s: cannot download config.json from the hub: %s", source, e)
            return None
    else:
        return None
    if not os.path.isfile(config_file):
        return None
    with open(config_file) as f:
        return json.load(f)


def task_model_config(model_cfg: ModelConfig, tokenizer, **extra: Any):
    """The task model's config: the start checkpoint's config, then model.config_overrides (except the encoder's
    shape: with a checkpoint its own shape wins, so that its weights load), then `extra` (num_labels, labels)."""
    from mosaicbert.core.trainer import build_hf_config, vocab_size_for

    base = source_config(model_cfg.pretrained_checkpoint) or {}
    model_type = base.get("model_type")
    if model_type is not None and model_type != _MODEL_TYPES[model_cfg.name]:
        raise ConfigError(f"model.pretrained_checkpoint {model_cfg.pretrained_checkpoint!r} holds a {model_type!r} "
                          f"model but model.name is {model_cfg.name!r}")
    from_source = {k: v for k, v in base.items() if k not in _NOT_ENCODER}
    if from_source:
        from transformers import BertConfig

        from mosaicbert.model import MosaicBertConfig

        known = (MosaicBertConfig if model_cfg.name == "mosaic_bert" else BertConfig)().to_dict()
        from_source = {k: v for k, v in from_source.items() if k in known}
    overrides = dict(model_cfg.config_overrides)
    ignored = {k: v for k, v in overrides.items() if k in SHAPE_KEYS and k in from_source and v != from_source[k]}
    if ignored:
        log.warning("model.config_overrides %s ignored: the shape comes from model.pretrained_checkpoint (%s)",
                    ignored, {k: from_source[k] for k in ignored})
    merged = dataclasses.replace(model_cfg, config_overrides={
        **from_source, **{k: v for k, v in overrides.items() if k not in ignored}})
    if "vocab_size" not in merged.config_overrides:  # random init: the tokenizer's size
        extra = {**vocab_size_for(merged, tokenizer), **extra}
    config = build_hf_config(merged, pad_token_id=tokenizer.pad_token_id, **extra)
    if len(tokenizer) > config.vocab_size:
        raise ConfigError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocab_size is "
                          f"{config.vocab_size}: set model.config_overrides.vocab_size >= {len(tokenizer)}")
    return config


def build_task_model(model_cfg: ModelConfig, task: str, tokenizer, labels: Optional[List[str]]):
    """(model, start-weights report). Labels name the classes (classification) or tags (token classification)
    in config.id2label, so the exported model predicts names."""
    from mosaicbert.core.checkpoint import load_weights

    if task == "regression":
        extra: Dict[str, Any] = {"num_labels": 1}
    elif labels:
        extra = {"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                 "label2id": {name: i for i, name in enumerate(labels)}}
    else:
        extra = {"num_labels": 2}  # question answering: start and end logits
    cls = model_class(model_cfg.name, task)
    model = cls(task_model_config(model_cfg, tokenizer, **extra))
    report: Dict[str, Any] = {"source": None}
    if model_cfg.pretrained_checkpoint:
        # The source's heads (MLM `cls.*`, another task's `classifier.*` / `qa_outputs.*`) never load; this task's
        # head is new.
        try:
            loaded = load_weights(model, model_cfg.pretrained_checkpoint, head_prefixes=SOURCE_HEADS,
                                  new_head_prefixes=("classifier.", "qa_outputs.", "bert.pooler."))
        except RuntimeError as e:
            raise ConfigError(f"model.pretrained_checkpoint: {e}") from e
        # Only the task head (and the pooler, which an MLM checkpoint lacks) may start fresh: an encoder weight
        # that does not load would train from random init under a pretrained model's name.
        broken = loaded.shape_mismatch + loaded.missing
        if broken:
            raise ConfigError(f"model.pretrained_checkpoint {model_cfg.pretrained_checkpoint!r}: {len(broken)} encoder "
                              f"weights do not load into the {cls.__name__} built from it (of {loaded.loaded} that "
                              f"do): {broken[:5]}; the encoder must match the checkpoint's (check model.name and "
                              f"model.config_overrides)")
        report = {"source": model_cfg.pretrained_checkpoint, **loaded.as_dict()}
    else:
        log.warning("model.pretrained_checkpoint is null: finetuning from RANDOM INIT (smoke runs only)")
    n_params = sum(p.numel() for p in model.parameters())
    log.info("%s (%s): %.1fM parameters", cls.__name__, model_cfg.name, n_params / 1e6)
    return model, report


# ---------------------------------------------------------------------------------------------------------------
# Composer wrappers (loss from the model; eval outputs shaped for the task's metrics)
# ---------------------------------------------------------------------------------------------------------------


class TokenClassificationModel(SequenceClassificationModel):
    """Eval output: predicted tag ids [B, S]; metrics see them with labels [B, S] (-100 = not scored)."""

    def eval_forward(self, batch, outputs: Optional[Any] = None):
        self.labels = batch["labels"]
        outputs = outputs if outputs is not None else self.forward(batch)
        return outputs["logits"].argmax(dim=-1)

    def update_metric(self, batch: Any, outputs: Any, metric) -> dict:
        metric.update(outputs, self.labels.to(outputs.device))
        return {}


class QuestionAnsweringModel(SequenceClassificationModel):
    """Eval output: one row per window, (example index, score, start char, end char) of its best span; the span
    metrics keep each example's best window and compare its text with the gold answers."""

    def __init__(self, model, tokenizer=None, eval_metrics=None, max_answer_length: int = 30):
        super().__init__(model, tokenizer, eval_metrics)
        self.max_answer_length = max_answer_length

    def eval_forward(self, batch, outputs: Optional[Any] = None):
        outputs = outputs if outputs is not None else self.forward(batch)
        spans = best_spans(outputs["start_logits"], outputs["end_logits"], batch["offsets"], self.max_answer_length)
        return torch.cat([batch["example_index"][:, None].to(spans), spans], dim=-1)  # [N, 4]

    def update_metric(self, batch: Any, outputs: Any, metric) -> dict:
        metric.update(outputs)
        return {}


def wrap(task: str, model, tokenizer, eval_metrics: list, max_answer_length: int):
    if task == "token_classification":
        return TokenClassificationModel(model, tokenizer, eval_metrics)
    if task == "question_answering":
        return QuestionAnsweringModel(model, tokenizer, eval_metrics, max_answer_length)
    # classification, regression and multiple choice (logits [B, num_labels] / [B, C]) as in GLUE
    return SequenceClassificationModel(model, tokenizer, eval_metrics)
