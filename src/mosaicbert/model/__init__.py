"""MosaicBERT model: torch + transformers only (no Composer), Hugging Face remote-code compatible."""

from .attention import ATTENTION_BACKENDS, alibi_slopes
from .configuration_mosaic_bert import MosaicBertConfig
from .modeling_mosaic_bert import (
    MosaicBertForMaskedLM,
    MosaicBertForMultipleChoice,
    MosaicBertForQuestionAnswering,
    MosaicBertForSequenceClassification,
    MosaicBertForTokenClassification,
    MosaicBertModel,
    MosaicBertPreTrainedModel,
    load_mosaic_state_dict,
)

__all__ = [
    "ATTENTION_BACKENDS",
    "MosaicBertConfig",
    "MosaicBertForMaskedLM",
    "MosaicBertForMultipleChoice",
    "MosaicBertForQuestionAnswering",
    "MosaicBertForSequenceClassification",
    "MosaicBertForTokenClassification",
    "MosaicBertModel",
    "MosaicBertPreTrainedModel",
    "alibi_slopes",
    "load_mosaic_state_dict",
]
