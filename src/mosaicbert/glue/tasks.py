"""The GLUE task table: one declarative entry per task (files, columns, labels, metrics, hub names).

Columns of the original GLUE TSV files are named by their header; CoLA has no header, so its columns are indices.
String labels (RTE, QNLI, MNLI) map to class ids in the order of `label_names`, which is the order used by the
Hugging Face `nyu-mll/glue` dataset, so a model finetuned on either source predicts the same class ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Union

Column = Union[str, int]  # header name, or index for files without a header

@dataclass(frozen=True)
class GlueTask:
    name: str  # canonical lower-case key used in configs and results
    folder: str  # folder name in the GLUE TSV layout
    hub_config: str  # config name in nyu-mll/glue
    num_labels: int  # 1 = regression
    metrics: Tuple[str, ...]  # names of finetune.metrics.TASK_METRICS[kind]
    # TSV layout
    header: bool
    text_columns: Tuple[Column, ...]
    label_column: Column
    label_names: Optional[Tuple[str, ...]] = None  # string labels -> index; None: integer (or float) labels
    # Hub layout (nyu-mll/glue)
    hub_text_columns: Tuple[str, ...] = ()
    # eval name -> (TSV file stem, hub split)
    evals: Dict[str, Tuple[str, str]] = field(default_factory=lambda: {"dev": ("dev", "validation")})

    @property
    def is_regression(self) -> bool:
        return self.num_labels == 1

    @property
    def kind(self) -> str:
        """The finetuning task type that trains it."""
        return "regression" if self.is_regression else "classification"

    def metric_keys(self) -> list[str]:
        """Names of the metrics in results: `accuracy`, or `<eval>_<metric>` when the task has several evals."""
        if len(self.evals) == 1:
            return list(self.metrics)
        return [f"{ev}_{m}" for ev in self.evals for m in self.metrics]


TASKS: Dict[str, GlueTask] = {t.name: t for t in [
    GlueTask("mnli", "MNLI", "mnli", 3, ("accuracy",), True, ("sentence1", "sentence2"), "gold_label",
             ("entailment", "neutral", "contradiction"), ("premise", "hypothesis"),
             evals={"matched": ("dev_matched", "validation_matched"),
                    "mismatched": ("dev_mismatched", "validation_mismatched")}),
    GlueTask("qnli", "QNLI", "qnli", 2, ("accuracy",), True, ("question", "sentence"), "label",
             ("entailment", "not_entailment"), ("question", "sentence")),
    GlueTask("qqp", "QQP", "qqp", 2, ("f1", "accuracy"), True, ("question1", "question2"), "is_duplicate",
             None, ("question1", "question2")),
    GlueTask("rte", "RTE", "rte", 2, ("accuracy",), True, ("sentence1", "sentence2"), "label",
             ("entailment", "not_entailment"), ("sentence1", "sentence2")),
    GlueTask("sst2", "SST-2", "sst2", 2, ("accuracy",), True, ("sentence",), "label", None, ("sentence",)),
    GlueTask("mrpc", "MRPC", "mrpc", 2, ("f1", "accuracy"), True, ("#1 String", "#2 String"), "Quality",
             None, ("sentence1", "sentence2")),
    GlueTask("cola", "CoLA", "cola", 2, ("matthews",), False, (3,), 1, None, ("sentence",)),
    GlueTask("stsb", "STS-B", "stsb", 1, ("pearson", "spearman"), True, ("sentence1", "sentence2"), "score",
             None, ("sentence1", "sentence2")),
]}

TASK_NAMES = tuple(TASKS)  # mnli first: other tasks may start from its checkpoint


def canonical_task_name(name: str) -> Optional[str]:
    """'SST-2', 'sst_2', 'sst2' -> 'sst2'; None when unknown."""
    key = str(name).lower().replace("-", "").replace("_", "")
    return key if key in TASKS else None


def task_score(task: GlueTask, metrics: Dict[str, float]) -> float:
    """The task's score: the mean of its metrics (MNLI (m+mm)/2, MRPC/QQP (F1+acc)/2, STS-B (P+S)/2)."""
    values = [metrics[k] for k in task.metric_keys()]
    return sum(values) / len(values)

