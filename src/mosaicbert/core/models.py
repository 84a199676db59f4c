"""Composer wrappers around Hugging Face-style models (MosaicBERT or transformers' BERT).

Subclassing Composer's HuggingFaceModel keeps its checkpoint metadata (the model config and the tokenizer files are
stored inside every checkpoint), which `mosaicbert.export` uses to rebuild a Hugging Face folder.
"""

from __future__ import annotations

from typing import Any, Optional

from composer.metrics.nlp import LanguageCrossEntropy, MaskedAccuracy
from composer.models import HuggingFaceModel
from torchmetrics import Metric


class _Wrapper(HuggingFaceModel):
    """HuggingFaceModel with its logits-style evaluation and no embedding resizing (vocab sizes are checked)."""

    def __init__(self, model, tokenizer, eval_metrics: list[Metric]):
        super().__init__(model, tokenizer=tokenizer, use_logits=True, shift_labels=False, metrics=[],
                         eval_metrics=eval_metrics, allow_embedding_resizing=False)

    def loss(self, outputs, batch):
        return outputs["loss"]  # the model computed it (masked-only head / classification head)


class MaskedLMModel(_Wrapper):
    """MLM training: loss from the model; eval metrics on masked positions only.

    MosaicBERT's head returns logits for the masked positions only ([num_masked, vocab], in row-major order of
    `labels != -100`); transformers' BertForMaskedLM returns [batch, seq, vocab]. Both are reduced to the same
    [num_masked, vocab] before the metrics see them.
    """

    def __init__(self, model, tokenizer=None):
        super().__init__(model, tokenizer, [LanguageCrossEntropy(ignore_index=-100), MaskedAccuracy(ignore_index=-100)])

    def eval_forward(self, batch, outputs: Optional[Any] = None):
        self.labels = batch["labels"]
        outputs = outputs if outputs is not None else self.forward(batch)
        logits = outputs["logits"]
        if logits.dim() == 3:
            logits = logits[self.labels != -100]
        return logits

    def update_metric(self, batch: Any, outputs: Any, metric: Metric) -> dict:
        target = self.labels[self.labels != -100]
        # MosaicBERT with packed_length_multiple adds dummy logit rows after the real ones
        metric.update(outputs[: target.shape[0]], target.to(outputs.device))
        return {}


class SequenceClassificationModel(_Wrapper):
    """Sequence classification / regression finetuning (GLUE) with task-specific torchmetrics."""

    def __init__(self, model, tokenizer=None, eval_metrics: Optional[list[Metric]] = None):
        super().__init__(model, tokenizer, eval_metrics or [])

    def eval_forward(self, batch, outputs: Optional[Any] = None):
        self.labels = batch["labels"]
        outputs = outputs if outputs is not None else self.forward(batch)
        logits = outputs["logits"]
        if logits.shape[-1] == 1:  # regression (STS-B): a score per example
            return logits.squeeze(-1).float()
        return logits.float()

    def update_metric(self, batch: Any, outputs: Any, metric: Metric) -> dict:
        labels = self.labels.to(outputs.device)
        if outputs.dim() == 2:  # classification metrics take class predictions
            metric.update(outputs.argmax(dim=-1), labels)
        else:
            metric.update(outputs, labels.to(outputs.dtype))
        return {}
