"""Sentence embeddings from an encoder: pooling, and fast encoding of many texts.

`encode` sorts the texts by token length and batches neighbours, so every batch pads to about its own length, and
returns the embeddings in the input order. MosaicBERT unpads inside its forward (no compute on padding at all) and
gets each row's length on the host (`sequence_lengths`), which spares its forward a device sync; transformers' BERT
computes on padding, which the length sorting keeps small.
"""

from __future__ import annotations

import contextlib
import json
import os
from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from mosaicbert.export import check_pooling, read_sentence_transformers_settings
from mosaicbert.model import MosaicBertModel, MosaicBertPreTrainedModel


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str = "mean") -> torch.Tensor:
    """[B, S, H] token states + [B, S] mask -> [B, H] in fp32: the mean over the real tokens, or the first
    ([CLS]) token (what sentence-transformers' Pooling computes)."""
    check_pooling(pooling)
    hidden = hidden.float()
    if pooling == "cls":
        return hidden[:, 0]
    mask = attention_mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)  # clamp: an empty row gives zeros, not NaN


def base_encoder(model: torch.nn.Module) -> torch.nn.Module:
    """The bare encoder of a task model (MosaicBertForMaskedLM.bert, BertForMaskedLM.bert, ...), or the model."""
    base = getattr(model, "base_model", model)
    return base if isinstance(base, torch.nn.Module) else model


def embed_batch(encoder: torch.nn.Module, batch: Dict[str, object], pooling: str = "mean",
                normalize: bool = True) -> torch.Tensor:
    """Embeddings [B, H] (fp32) of one padded batch: input_ids, attention_mask, optional token_type_ids and
    sequence_lengths (MosaicBERT only: per-row host lengths). Keeps autograd (training uses it too)."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids") if batch.get(k) is not None}
    if isinstance(encoder, MosaicBertPreTrainedModel) and batch.get("sequence_lengths") is not None:
        inputs["sequence_lengths"] = batch["sequence_lengths"]
    hidden = encoder(**inputs, return_dict=True).last_hidden_state
    emb = pool(hidden, batch["attention_mask"], pooling)
    return F.normalize(emb, dim=-1) if normalize else emb


def pad_batch(rows: Sequence[Sequence[int]], pad_id: int, device: torch.device,
              token_types: Optional[Sequence[Sequence[int]]] = None) -> Dict[str, object]:
    """Right-pad token id lists to the longest: input_ids, attention_mask, token_type_ids [B, S] on `device`, and
    sequence_lengths (a list of ints)."""
    lengths = [len(r) for r in rows]
    length = max(lengths)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), length), dtype=torch.long)
    types = torch.zeros((len(rows), length), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[i, :len(r)] = 1
        if token_types is not None:
            types[i, :len(r)] = torch.tensor(token_types[i], dtype=torch.long)
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device), "token_type_ids": types.to(device),
            "sequence_lengths": lengths}


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> List[List[int]]:
    """Indices into `lengths`, longest first, cut into batches of `batch_size` (the first batch is the largest, so
    an out-of-memory error shows at once)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


@torch.no_grad()
def encode(model: torch.nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 128, *,
           pooling: str = "mean", normalize: bool = True, max_seq_len: int = 512,
           device: Optional[str | torch.device] = None, show_progress: bool = False) -> torch.Tensor:
    """Embed `texts` -> fp32 tensor [len(texts), hidden] on the CPU, row i the embedding of texts[i].

    model: an encoder or a task model holding one (its `base_model`); device None = the model's device. Texts are
    truncated to `max_seq_len` tokens. On CUDA the forward runs under bf16 autocast.
    """
    check_pooling(pooling)
    if isinstance(texts, str):
        raise TypeError("texts must be a sequence of strings, not one string")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    texts = list(texts)
    encoder = base_encoder(model)
    device = torch.device(device) if device is not None else next(encoder.parameters()).device
    out = torch.empty(len(texts), encoder.config.hidden_size, dtype=torch.float32)
    if not texts:
        return out
    tokens = tokenizer(texts, truncation=True, max_length=max_seq_len, padding=False, return_token_type_ids=True,
                       return_attention_mask=False)
    ids, types = tokens["input_ids"], tokens["token_type_ids"]
    batches = length_sorted_batches([len(r) for r in ids], batch_size)
    if show_progress:
        from tqdm.auto import tqdm

        batches = tqdm(batches, desc="encode", unit="batch")
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    was_training = encoder.training
    encoder.to(device).eval()
    try:
        for idx in batches:
            batch = pad_batch([ids[i] for i in idx], tokenizer.pad_token_id, device, [types[i] for i in idx])
            with autocast:
                emb = embed_batch(encoder, batch, pooling, normalize)
            out[torch.tensor(idx)] = emb.float().cpu()
    finally:
        encoder.train(was_training)
    return out


def load_encoder(folder: str, device: Optional[str | torch.device] = None):
    """(encoder, tokenizer, settings) from a Hugging Face folder: a MosaicBERT folder loads with this package's
    classes, any other (BERT, ...) with transformers' AutoModel, both without the [CLS] pooler. settings: pooling,
    max_seq_length and normalize from the folder's sentence-transformers files (defaults without them)."""
    from transformers import AutoModel

    from mosaicbert.core.tokenizer import load_tokenizer

    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{config_path} not found: expected a Hugging Face model folder")
    with open(config_path) as f:
        model_type = json.load(f).get("model_type")
    if model_type == "mosaic_bert":
        model = MosaicBertModel.from_pretrained(folder, add_pooling_layer=False)
    else:
        kwargs = {"add_pooling_layer": False} if model_type == "bert" else {}
        model = AutoModel.from_pretrained(folder, **kwargs)
    if device is not None:
        model.to(device)
    return model.eval(), load_tokenizer(folder), read_sentence_transformers_settings(folder)
