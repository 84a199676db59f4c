"""Unpad / re-pad helpers.

MosaicBERT runs every encoder layer on the packed [num_tokens, ...] tensor of real tokens only, so no FLOPs
are spent on padding. These helpers convert between the padded [batch, seqlen, ...] layout and the packed
layout.

Two implementations of the same maps:
  * `unpad` / `pad`: plain differentiable indexing (reference; autograd's backward of `x[indices]` is an
    accumulating scatter, and `index_copy` needs a zero fill plus a scatter).
  * `unpad_rows` / `pad_rows` (used by the model): both directions, forward and backward, are single
    row gathers (`gather_rows`), with the inverse index map built once per batch (`UnpadInfo.packed_pos`).
    A gather is one pointwise kernel with an indirect load under torch.compile: no zero fill, no atomics.

Self-contained on purpose (torch only): Hugging Face `save_pretrained` copies this file next to the weights.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch


class UnpadInfo(NamedTuple):
    """Everything needed to go back and forth between the padded and packed layouts."""

    indices: torch.Tensor  # [T] int64, flat positions (into batch*seqlen) of the real tokens, row-major
    cu_seqlens: torch.Tensor  # [B+1] int32, cumulative real lengths (flash-attn varlen convention)
    max_seqlen: Optional[int]  # longest real length in the batch (None when not asked for: it costs a sync)
    batch: int  # B
    seqlen: int  # S (padded length)
    packed_pos: Optional[torch.Tensor] = None  # [B*S] int64, packed row of each padded slot (0 at padding)
    real: Optional[torch.Tensor] = None  # [B*S] bool, True for real tokens (the flattened mask)
    # [T] bool, False for the dummy rows that round T up to a multiple (get_unpad_info's `length_multiple`);
    # None when every packed row is a real token
    valid_rows: Optional[torch.Tensor] = None
    # [B*S] int64, a number per document (unique across rows) at each padded slot when rows pack several
    # documents (get_unpad_info's `sequence_id`); None when every row is one sequence
    documents: Optional[torch.Tensor] = None


def round_up(n: int, multiple: int) -> int:
    """n rounded up to a multiple of `multiple` (n itself when multiple <= 1)."""
    return -(-n // multiple) * multiple if multiple > 1 else n


def extend_positions(positions: torch.Tensor, multiple: int) -> torch.Tensor:
    """[N] positions -> [N rounded up to `multiple`]: dummy positions 0 after the real ones."""
    extra = round_up(positions.shape[0], multiple) - positions.shape[0]
    return torch.cat([positions, positions.new_zeros(extra)]) if extra else positions


def positions_of_true(flags: torch.Tensor, count: Optional[int] = None) -> torch.Tensor:
    """[N] bool -> [count] int64: the positions where `flags` is True, in order.

    `count` None: `torch.nonzero`, whose output size is data-dependent, so the host waits for the device.
    `count` given (the number of True flags, known on the host, e.g. from the collator): `torch.nonzero_static`,
    which needs no host sync (a torch without it falls back to `torch.nonzero`). The count must be right (padded with
    -1 / truncated otherwise): callers check it.
    """
    if count is not None:
        try:
            return torch.nonzero_static(flags, size=int(count)).flatten()
        except (AttributeError, NotImplementedError):  # an older torch (e.g. running exported weights): no such kernel
            pass
    return torch.nonzero(flags, as_tuple=False).flatten()


def get_unpad_info(attention_mask: torch.Tensor, with_max_seqlen: bool = True,
                   num_real_tokens: Optional[int] = None, length_multiple: int = 0,
                   sequence_id: Optional[torch.Tensor] = None, num_sequences: Optional[int] = None) -> UnpadInfo:
    """attention_mask: [B, S], nonzero/True for real tokens.

    Batches must be right-padded (real tokens first), as BERT tokenizers and our collators produce: ALiBi
    positions are positions in the row, and the flash-attn backend counts them from each sequence's first token.

    `torch.nonzero` makes the number of real tokens T a data-dependent shape (a host sync, and a graph break
    under torch.compile); `max_seqlen` costs a second sync and is only needed by varlen kernels, so it is
    computed only when `with_max_seqlen` is True (else None; `max_seqlen_bound` then gives S, which the kernels
    accept as well). With `num_real_tokens` (T, known on the host) and `with_max_seqlen=False` nothing here syncs.

    `length_multiple` > 1: T is rounded up to a multiple of it with dummy rows after the real ones, so that a
    compiled model sees few distinct shapes (CUDA graphs need one recording per shape). The dummy rows copy
    the first token (finite values), form their own sequences in cu_seqlens (ceil(length_multiple / S) entries
    are always added, some empty, so its length is fixed too), and `valid_rows` marks them False; every map
    back to the padded layout skips them, so they never reach an output or a gradient of the real tokens.

    `sequence_id` [B, S] (packed rows: the index of each token's document inside its row, 0, 1, 2, ... from the
    left) splits every row into its documents: cu_seqlens then has one entry per document, so the varlen kernels
    attend within each document only, and ALiBi distances (|i - j| inside a sequence) restart with each document.
    `num_sequences` (the number of documents, known on the host) spares the host sync of finding where they start.
    """
    batch, seqlen = attention_mask.shape
    real = attention_mask.bool().flatten()  # [B*S]
    indices = positions_of_true(real, num_real_tokens)  # [T]
    documents = None
    if sequence_id is None:
        seqlens = real.view(batch, seqlen).sum(dim=-1, dtype=torch.int32)  # [B]
        cu_seqlens = torch.nn.functional.pad(torch.cumsum(seqlens, dim=0, dtype=torch.int32), (1, 0))  # [B+1]
    else:
        cu_seqlens, documents = _document_cu_seqlens(sequence_id, real, indices, num_sequences)  # [D+1], [B*S]
        seqlens = cu_seqlens.diff()
    max_seqlen = (int(seqlens.max().item()) if seqlens.numel() > 0 else 0) if with_max_seqlen else None
    packed_pos = (torch.cumsum(real, dim=0) - 1).clamp_(min=0)  # [B*S] int64
    valid_rows = None
    if length_multiple > 1 and seqlen > 0:
        num_real = indices.shape[0]
        indices = extend_positions(indices, length_multiple)  # [T rounded up]
        num_dummy = indices.shape[0] - num_real
        valid_rows = torch.arange(indices.shape[0], device=indices.device) < num_real
        # dummy sequences of at most S tokens each (the varlen kernels size their grids by S), then empty ones
        num_seqs = -(-length_multiple // seqlen)
        starts = torch.arange(num_seqs, device=cu_seqlens.device, dtype=torch.int32) * seqlen
        dummy = (num_dummy - starts).clamp(0, seqlen)  # [num_seqs] dummy sequence lengths
        cu_seqlens = torch.cat([cu_seqlens, cu_seqlens[-1:] + torch.cumsum(dummy, dim=0, dtype=torch.int32)])
        if max_seqlen is not None:
            max_seqlen = max(max_seqlen, min(num_dummy, seqlen))
    return UnpadInfo(indices, cu_seqlens, max_seqlen, batch, seqlen, packed_pos, real, valid_rows, documents)


def document_starts(sequence_id: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, S] bool: True at the real tokens that start a document (the first token of a row, or a change of
    `sequence_id` from the token before). Rows are right-padded, so the documents are contiguous runs."""
    starts = attention_mask.bool().clone()
    starts[:, 1:] &= sequence_id[:, 1:] != sequence_id[:, :-1]
    return starts


def _document_cu_seqlens(sequence_id: torch.Tensor, real: torch.Tensor, indices: torch.Tensor,
                         num_sequences: Optional[int]):
    """cu_seqlens [D+1] int32 over the D documents of the packed tokens, and documents [B*S] int64 (a number per
    contiguous document, unique across rows: the count of document starts up to and including the slot)."""
    starts = document_starts(sequence_id, real.view(sequence_id.shape)).flatten()  # [B*S]
    documents = torch.cumsum(starts, dim=0)  # [B*S] int64
    first = positions_of_true(starts[indices], num_sequences)  # [D] packed row where each document starts
    end = torch.full((1,), indices.shape[0], dtype=torch.int32, device=indices.device)
    return torch.cat([first.to(torch.int32), end]), documents


def max_seqlen_bound(info: UnpadInfo) -> int:
    """info.max_seqlen if it was computed, else the padded length S: an upper bound on every sequence's length.

    The varlen kernels (flash-attn, triton) only size their grids with it, and their programs past a sequence's
    end exit at once, so the bound gives the same result as the exact maximum without a host sync.
    """
    return info.max_seqlen if info.max_seqlen is not None else (info.seqlen if info.batch > 0 else 0)


def unpad(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """[B, S, *rest] -> [T, *rest]: keep only the rows listed in `indices` (row-major order). Reference."""
    return x.reshape(-1, *x.shape[2:])[indices]


def pad(x: torch.Tensor, indices: torch.Tensor, batch: int, seqlen: int) -> torch.Tensor:
    """[T, *rest] -> [B, S, *rest] with zeros at padded positions (inverse of `unpad`). Reference."""
    out = x.new_zeros(batch * seqlen, *x.shape[1:])
    out = out.index_copy(0, indices, x)  # out-of-place, so autograd routes gradients back through `indices`
    return out.view(batch, seqlen, *x.shape[1:])


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling())


def _masked_index_select(x: torch.Tensor, idx: torch.Tensor, keep: Optional[torch.Tensor]) -> torch.Tensor:
    """y[m] = x[idx[m]] if keep[m] (or keep is None) else 0."""
    if x.shape[0] == 0:  # nothing to gather from (no real token at all): every row is a zero row
        return x.new_zeros(idx.shape[0], *x.shape[1:])
    y = x.index_select(0, idx)
    if keep is not None:
        y = y.masked_fill(~keep.view(-1, *([1] * (y.dim() - 1))), 0)
    return y


class _GatherRows(torch.autograd.Function):
    """y[m] = keep[m] ? x[idx[m]] : 0 for an index map that is one-to-one on the kept rows.

    The adjoint of such a map is again a gather: dx[n] = inv_keep[n] ? dy[inv[n]] : 0, where inv[n] is the
    row m with idx[m] == n and keep[m] (inv_keep[n] False if there is none). So the backward needs no
    scatter, no zero fill and no atomics.
    """

    @staticmethod
    def forward(ctx, x, idx, keep, inv, inv_keep):
        ctx.save_for_backward(inv, inv_keep)
        if keep is not None and inv_keep is None and not _is_compiling():
            # Every source row lands in a kept row (re-padding): in eager mode a zero fill plus a scatter of
            # the N source rows is cheaper than gathering all M rows and then zeroing the unkept ones. Under
            # torch.compile the gather below is one fused kernel, so it is used there.
            return x.new_zeros(idx.shape[0], *x.shape[1:]).index_copy_(0, inv, x)
        return _masked_index_select(x, idx, keep)

    @staticmethod
    def backward(ctx, dy):
        inv, inv_keep = ctx.saved_tensors
        return _masked_index_select(dy, inv, inv_keep), None, None, None, None


def gather_rows(
    x: torch.Tensor,
    idx: torch.Tensor,
    keep: Optional[torch.Tensor],
    inv: torch.Tensor,
    inv_keep: Optional[torch.Tensor],
) -> torch.Tensor:
    """x [N, *rest] -> y [M, *rest], y[m] = keep[m] ? x[idx[m]] : 0 (keep=None: keep all rows).

    Contract (not checked: that would need a host sync): idx is one-to-one on the kept rows, and
    (inv [N], inv_keep [N] or None) is its inverse: for every n, inv_keep[n] is True iff some kept m has
    idx[m] == n, and then inv[n] == m. All indices must be in range, also where keep/inv_keep is False.
    """
    return _GatherRows.apply(x, idx, keep, inv, inv_keep)


class RowSelection(NamedTuple):
    """The arguments of `gather_rows` after x: a selection of M rows out of N packed rows, with its inverse."""

    idx: torch.Tensor  # [M] int64 source row of each selected row
    keep: torch.Tensor  # [M] bool, False = a zero row (no source)
    inv: torch.Tensor  # [N] int64 selected row of each source row
    inv_keep: torch.Tensor  # [N] bool, False = source row not selected


def select_rows(x: torch.Tensor, sel: RowSelection) -> torch.Tensor:
    """x [N, *rest] -> [M, *rest] (zero rows where sel.keep is False); gather-only backward."""
    return gather_rows(x, sel.idx, sel.keep, sel.inv, sel.inv_keep)


def unpad_rows(x: torch.Tensor, info: UnpadInfo) -> torch.Tensor:
    """[B, S, *rest] -> [T, *rest]; same values as `unpad`, gather-only backward."""
    if info.packed_pos is None:
        return unpad(x, info.indices)
    return gather_rows(x.reshape(-1, *x.shape[2:]), info.indices, None, info.packed_pos, info.real)


def pad_rows(x: torch.Tensor, info: UnpadInfo) -> torch.Tensor:
    """[T, *rest] -> [B, S, *rest] with zeros at padding; same values as `pad`, gather-only backward."""
    if info.packed_pos is None:
        return pad(x, info.indices, info.batch, info.seqlen)
    out = gather_rows(x, info.packed_pos, info.real, info.indices, info.valid_rows)  # dummy rows: no gradient
    return out.view(info.batch, info.seqlen, *x.shape[1:])


def unpad_input(hidden_states: torch.Tensor, attention_mask: torch.Tensor):
    """Convenience: [B, S, *rest] + mask [B, S] -> ([T, *rest], UnpadInfo)."""
    info = get_unpad_info(attention_mask)
    return unpad_rows(hidden_states, info), info


def pad_input(hidden_states: torch.Tensor, info: UnpadInfo) -> torch.Tensor:
    """Convenience inverse of `unpad_input`: [T, *rest] -> [B, S, *rest]."""
    return pad_rows(hidden_states, info)
