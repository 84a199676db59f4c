"""MosaicBERT: a BERT encoder with the published MosaicML changes (see mosaicbert.model).

The model classes load lazily, so tools that only need the config or data code (`python -m mosaicbert.pretrain.convert`,
config errors in main.py/glue.py) start without importing torch and transformers.
"""

__all__ = [
    "MosaicBertConfig",
    "MosaicBertModel",
    "MosaicBertForMaskedLM",
    "MosaicBertForSequenceClassification",
    "MosaicBertForTokenClassification",
    "MosaicBertForQuestionAnswering",
    "MosaicBertForMultipleChoice",
]


def __getattr__(name: str):
    if name in __all__:
        from . import model

        return getattr(model, name)
    raise AttributeError(f"module 'mosaicbert' has no attribute {name!r}")
