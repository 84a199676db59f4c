"""Data pipeline for MosaicBERT pretraining: tokenizers, the built-in offline corpus, MDS conversion,
resumable MLM masking and the streaming MLM dataloader.

Heavy modules (streaming, transformers, torch) are imported lazily: ``from mosaicbert.data import X``.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load_tokenizer": "mosaicbert.data.tokenizer",
    "BUILTIN_URI": "mosaicbert.data.builtin_corpus",
    "cache_root": "mosaicbert.data.builtin_corpus",
    "ensure_builtin_corpus": "mosaicbert.data.builtin_corpus",
    "ensure_builtin_tokenizer": "mosaicbert.data.builtin_corpus",
    "convert": "mosaicbert.data.convert",
    "ensure_builtin_mds": "mosaicbert.data.convert",
    "mask_tokens": "mosaicbert.data.masking",
    "sample_rng": "mosaicbert.data.masking",
    "IGNORE_INDEX": "mosaicbert.data.masking",
    "MLMStreamingDataset": "mosaicbert.data.mlm",
    "CorruptShardError": "mosaicbert.data.mlm",
    "pad_mlm_batch": "mosaicbert.data.mlm",
    "pack_documents": "mosaicbert.data.mlm",
    "pack_mlm_batch": "mosaicbert.data.mlm",
    "padding_fraction": "mosaicbert.data.mlm",
    "build_mlm_dataloader": "mosaicbert.data.mlm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
