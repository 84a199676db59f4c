"""MosaicBERT: a BERT encoder with the published MosaicML changes (see mosaicbert.model)."""

from .model import MosaicBertConfig, MosaicBertForMaskedLM, MosaicBertForSequenceClassification, MosaicBertModel

__all__ = ["MosaicBertConfig", "MosaicBertModel", "MosaicBertForMaskedLM", "MosaicBertForSequenceClassification"]
