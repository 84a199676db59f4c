"""GLUE finetuning of MosaicBERT / BERT checkpoints (glue.py): config schema, task table, data, runner."""

from mosaicbert.glue.config import GlueConfig, TaskConfig, TasksConfig, load_glue_config, validate_glue_config
from mosaicbert.glue.tasks import TASK_NAMES, TASKS, GlueTask, task_score

__all__ = [
    "GlueConfig",
    "GlueTask",
    "TASKS",
    "TASK_NAMES",
    "TaskConfig",
    "TasksConfig",
    "load_glue_config",
    "task_score",
    "validate_glue_config",
]
