"""Finetuning metrics (torchmetrics), by task: classification, regression, entity-level F1 for token
classification (BIO spans, as seqeval / conlleval count them), and SQuAD exact match / F1 for extractive QA.

Composer keys eval metrics by class name, so every metric of one task has its own class.
"""

from __future__ import annotations

from typing import Dict, List, Sequence, Set, Tuple

import torch
from torchmetrics import Metric

# Per task: the metrics it can report, in default order (the first is the default main metric).
TASK_METRICS: Dict[str, Tuple[str, ...]] = {
    "classification": ("accuracy", "f1", "matthews"),
    "regression": ("pearson", "spearman"),
    "token_classification": ("entity_f1", "accuracy"),
    "question_answering": ("f1", "exact_match"),
    "multiple_choice": ("accuracy",),
    # computed by mosaicbert.embeddings (retrieval over the eval pairs; STS-B with embedding.stsb_file)
    "embedding": ("ndcg@10", "recall@1", "recall@10", "stsb_spearman"),
}


# ---------------------------------------------------------------------------------------------------------------
# Entity-level F1 (token classification)
# ---------------------------------------------------------------------------------------------------------------


def bio_spans(tags: Sequence[str]) -> Set[Tuple[str, int, int]]:
    """Entity spans (type, first, last) of a BIO / IOB tag sequence, counted as conlleval does: an entity starts
    at B-X, or at I-X that does not continue an X entity, and runs over the I-X tags that follow."""
    spans = set()
    kind, start = None, 0
    for i, tag in enumerate(list(tags) + ["O"]):
        prefix, _, t = tag.partition("-") if tag != "O" else ("O", "", "")
        continues = prefix == "I" and kind == t
        if kind is not None and not continues:
            spans.add((kind, start, i - 1))
            kind = None
        if prefix in ("B", "I") and not continues:
            kind, start = t, i
        elif prefix not in ("B", "I", "O"):  # a tag without B-/I- (e.g. PER) is a one-token entity of its own
            spans.add((tag, i, i))
    return spans


class EntityF1(Metric):
    """Micro F1 over entities: an entity counts as found only when its type and both ends match.

    update(preds [B, S] class ids, target [B, S] class ids with -100 where not labelled (padding, special tokens,
    sub-tokens after a word's first)). Only labelled positions form the word-level tag sequences.
    """

    full_state_update = False
    higher_is_better = True

    def __init__(self, label_names: Sequence[str], **kwargs):
        super().__init__(**kwargs)
        self.label_names = list(label_names)
        for s in ("tp", "n_pred", "n_gold"):
            self.add_state(s, default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def update(self, preds: torch.Tensor, target: torch.Tensor) -> None:
        for p_row, t_row in zip(preds.tolist(), target.tolist()):
            keep = [i for i, t in enumerate(t_row) if t != -100]
            pred = bio_spans([self.label_names[p_row[i]] for i in keep])
            gold = bio_spans([self.label_names[t_row[i]] for i in keep])
            self.tp += len(pred & gold)
            self.n_pred += len(pred)
            self.n_gold += len(gold)

    def compute(self) -> torch.Tensor:
        tp = self.tp.float()
        precision = tp / self.n_pred.clamp(min=1)
        recall = tp / self.n_gold.clamp(min=1)
        return torch.where(tp > 0, 2 * precision * recall / (precision + recall), torch.zeros_like(tp))


# ---------------------------------------------------------------------------------------------------------------
# Extractive QA: SQuAD exact match and F1 over the best span of each example
# ---------------------------------------------------------------------------------------------------------------


def _values(state) -> list:
    """A "cat" state as a Python list: a list of tensors in one process, one tensor after a distributed sync."""
    if isinstance(state, list):
        return torch.cat(state).tolist() if state else []
    return state.tolist()


class _SpanMetric(Metric):
    """Collects one best span per window (example index, score, start char, end char); compute() keeps each
    example's highest-scoring window, cuts the answer out of the context and scores it against all gold
    answers with SQuAD's normalisation (torchmetrics.functional.text.squad). Values are fractions (0-1)."""

    full_state_update = False
    higher_is_better = True
    key = ""

    def __init__(self, contexts: List[str], answers: List[List[str]], **kwargs):
        super().__init__(**kwargs)
        self.contexts = contexts
        self.answers = answers
        for s in ("example", "score", "start", "end"):
            self.add_state(s, default=[], dist_reduce_fx="cat")

    def update(self, spans: torch.Tensor) -> None:
        """spans: [N, 4] float rows (example index, score, start char, end char), one per window."""
        self.example.append(spans[:, 0].long())
        self.score.append(spans[:, 1].float())
        self.start.append(spans[:, 2].long())
        self.end.append(spans[:, 3].long())

    def predictions(self) -> List[str]:
        """The predicted answer text of every example ('' for an example that no window covered)."""
        best: Dict[int, Tuple[float, int, int]] = {}
        for ex, score, s, e in zip(*(_values(x) for x in (self.example, self.score, self.start, self.end))):
            if ex not in best or score > best[ex][0]:
                best[ex] = (score, s, e)
        return [self.contexts[i][best[i][1]:best[i][2]] if i in best else "" for i in range(len(self.contexts))]

    def compute(self) -> torch.Tensor:
        from torchmetrics.functional.text import squad

        preds = [{"prediction_text": p, "id": str(i)} for i, p in enumerate(self.predictions())]
        target = [{"answers": {"text": a, "answer_start": [0] * len(a)}, "id": str(i)}
                  for i, a in enumerate(self.answers)]
        return squad(preds, target)[self.key] / 100.0


class SpanExactMatch(_SpanMetric):
    key = "exact_match"


class SpanF1(_SpanMetric):
    key = "f1"


# ---------------------------------------------------------------------------------------------------------------
# Factory
# ---------------------------------------------------------------------------------------------------------------


def build_metrics(task: str, names: Sequence[str], num_labels: int, label_names: Sequence[str] = (),
                  qa_examples: Tuple[List[str], List[List[str]]] = ([], [])) -> Dict[str, Metric]:
    """{friendly name: metric} for a task. Classification with two labels uses binary F1 / Matthews of the
    second class; with more labels, macro F1 and multiclass Matthews."""
    import torchmetrics
    from torchmetrics.classification import BinaryF1Score, MatthewsCorrCoef, MulticlassAccuracy, MulticlassF1Score

    binary = num_labels == 2
    factories = {
        "classification": {
            "accuracy": lambda: MulticlassAccuracy(num_classes=num_labels, average="micro"),
            "f1": lambda: BinaryF1Score() if binary else MulticlassF1Score(num_classes=num_labels, average="macro"),
            "matthews": lambda: MatthewsCorrCoef(task="binary") if binary else
            MatthewsCorrCoef(task="multiclass", num_classes=num_labels),
        },
        "regression": {"pearson": torchmetrics.PearsonCorrCoef, "spearman": torchmetrics.SpearmanCorrCoef},
        "token_classification": {
            "entity_f1": lambda: EntityF1(label_names),
            "accuracy": lambda: MulticlassAccuracy(num_classes=num_labels, average="micro", ignore_index=-100),
        },
        "question_answering": {"f1": lambda: SpanF1(*qa_examples), "exact_match": lambda: SpanExactMatch(*qa_examples)},
        "multiple_choice": {"accuracy": lambda: MulticlassAccuracy(num_classes=num_labels, average="micro")},
    }[task]
    return {name: factories[name]() for name in names}
