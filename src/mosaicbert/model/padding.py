"""Unpad / re-pad helpers.

MosaicBERT runs every encoder layer on the packed [num_tokens, ...] tensor of real tokens only, so no FLOPs
are spent on padding. These helpers convert between the padded [batch, seqlen, ...] layout and the packed
layout; both directions are plain differentiable indexing ops (no custom autograd needed).

Self-contained on purpose (torch only): Hugging Face `save_pretrained` copies this file next to the weights.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class UnpadInfo(NamedTuple):
    """Everything needed to go back and forth between the padded and packed layouts."""

    indices: torch.Tensor  # [T] int64, flat positions (into batch*seqlen) of the real tokens, row-major
    cu_seqlens: torch.Tensor  # [B+1] int32, cumulative real lengths (flash-attn varlen convention)
    max_seqlen: int  # longest real length in the batch
    batch: int  # B
    seqlen: int  # S (padded length)


def get_unpad_info(attention_mask: torch.Tensor) -> UnpadInfo:
    """attention_mask: [B, S], nonzero/True for real tokens.

    Batches must be right-padded (real tokens first), as BERT tokenizers and our collators produce: ALiBi
    positions are positions in the row, and the flash-attn backend counts them from each sequence's first token.
    """
    batch, seqlen = attention_mask.shape
    mask = attention_mask.bool()
    seqlens = mask.sum(dim=-1, dtype=torch.int32)  # [B]
    indices = torch.nonzero(mask.flatten(), as_tuple=False).flatten()  # [T]
    # .item() is a host sync / graph break; fine for now (speed work comes later).
    max_seqlen = int(seqlens.max().item()) if batch > 0 else 0
    cu_seqlens = torch.nn.functional.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))  # [B+1]
    return UnpadInfo(indices, cu_seqlens, max_seqlen, batch, seqlen)


def unpad(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """[B, S, *rest] -> [T, *rest]: keep only the rows listed in `indices` (row-major order)."""
    return x.reshape(-1, *x.shape[2:])[indices]


def pad(x: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """[T, *rest] -> [B, S, *rest] with zeros at padded positions (inverse of `unpad`)."""
    out = x.new_zeros(batch * seqlen, *x.shape[1:])
    out = out.index_copy(0, indices, x)  # out-of-place, so autograd routes gradients back through `indices`
    return out.view(batch, seqlen, *x.shape[1:])


def unpad_input(hidden_states: torch.Tensor, attention_mask: torch.Tensor):
    """Convenience: [B, S, *rest] + mask [B, S] -> ([T, *rest], UnpadInfo)."""
    info = get_unpad_info(attention_mask)
    return unpad(hidden_states, info.indices), info


def pad_input(hidden_states: torch.Tensor, info: UnpadInfo) -> torch.Tensor:
    """Convenience inverse of `unpad_input`: [T, *rest] -> [B, S, *rest]."""
    return pad(hidden_states, info.indices, info.batch, info.seqlen)
