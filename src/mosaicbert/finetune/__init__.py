"""Finetuning on your own data (finetune.py): classification, regression, token classification, extractive QA,
multiple choice; config schema, data readers, task features, metrics, runner."""

from mosaicbert.finetune.config import TASK_TYPES, FinetuneConfig, load_finetune_config, validate_finetune_config

__all__ = ["FinetuneConfig", "TASK_TYPES", "load_finetune_config", "validate_finetune_config"]
