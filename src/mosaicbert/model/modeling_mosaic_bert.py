"""MosaicBERT: BERT with ALiBi, GeGLU, fused QKV, unpadding and low-precision LayerNorm (MosaicML, 2023).

Data flow of one forward pass:
    prepare_batch (host: which tokens are real, which are masked; the one graph break under torch.compile)
    input_ids [B, S] -> gather the real tokens -> [T] -> embeddings [T, hidden]   (T = real tokens)
    -> N x (attention -> post-LN -> GeGLU -> post-LN), all on [T, hidden]
    -> MLM training: the M masked rows only (the last layer computes only them after its attention) -> MLM head
    -> otherwise pad back -> [B, S, hidden] (zeros at padding) -> task heads

Every head calls `self.bert.prepare_batch(...)` and then `self.bert(..., prepared=...)`, the encoder's public
forward, as transformers' BertFor* heads call `self.bert(...)`.

Self-contained on purpose (torch + transformers + relative imports): `save_pretrained` copies this file and
its relative imports next to the weights, so `AutoModel*.from_pretrained(dir, trust_remote_code=True)` works
without the mosaicbert package installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import (
    BaseModelOutputWithPooling,
    MaskedLMOutput,
    MultipleChoiceModelOutput,
    QuestionAnsweringModelOutput,
    SequenceClassifierOutput,
    TokenClassifierOutput,
)

from .attention import (
    AlibiCache,
    AttentionBackend,
    AttentionContext,
    check_backend_name,
    log_backend_choice,
    resolve_backend,
)
from .configuration_mosaic_bert import MosaicBertConfig
from .layers import MosaicBertEmbeddings, MosaicBertLayer, make_layernorm
from .padding import (
    RowSelection,
    UnpadInfo,
    document_starts,
    extend_positions,
    get_unpad_info,
    pad_rows,
    positions_of_true,
    select_rows,
    unpad_rows,
)

try:  # transformers >= 5: init functions that skip weights already loaded from a checkpoint
    from transformers import initialization as _init
except ImportError:  # pragma: no cover
    from torch.nn import init as _init


def _compiler_disable(fn):
    disable = getattr(getattr(torch, "compiler", None), "disable", None)
    return disable(fn) if disable is not None else fn


def _check_ids(name: str, ids: torch.Tensor, upper: int, bad: bool) -> None:
    if bad:  # min/max only for the error message
        lo, hi = int(ids.min()), int(ids.max())
        raise ValueError(f"{name} must be in [0, {upper}), got values in [{lo}, {hi}]")


def _host_total(name: str, per_row, rows: int) -> int | None:
    if per_row is None:
        return None
    if len(per_row) != rows:
        raise ValueError(f"{name} must have one count per row ({rows}), got {len(per_row)}")
    return sum(int(n) for n in per_row)


def _check_host_totals(checks) -> None:
    """checks: (name, flags tensor, total claimed by the host or None). A wrong total would silently corrupt the
    unpadding (only the totals are used: positions and per-row lengths come from the tensors themselves)."""
    for name, flags, claimed in checks:
        if flags is None or claimed is None:
            continue
        actual = flags.sum()
        if actual.is_cuda:  # no sync: the assert runs on the device, in stream order, and stops the process
            torch._assert_async(actual == claimed, f"sum({name}) disagrees with the batch tensors")
        elif int(actual) != claimed:
            raise ValueError(f"sum({name}) = {claimed} disagrees with the batch tensors ({int(actual)}): "
                             "pass counts made from this batch, or none")


@_compiler_disable
def _prepare_batch(
    input_ids: torch.Tensor,
    token_type_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    masked_tokens_mask: torch.Tensor | None,
    vocab_size: int,
    type_vocab_size: int,
    alibi: AlibiCache | None = None,
    with_alibi_matrix: bool = True,
    backend_choice: tuple | None = None,
    sequence_lengths: list[int] | None = None,
    label_counts: list[int] | None = None,
    length_multiple: int = 0,
    sequence_id: torch.Tensor | None = None,
    document_counts: list[int] | None = None,
):
    """Everything about a batch that needs the host to know device data, in one place.

    masked_tokens_mask: [B, S] bool (True = masked), or MLM labels (-100 = not masked), or None.
    Inputs [..., S] are flattened to [N, S]; attention_mask None = no padding.
    sequence_id: [B, S] for rows that pack several documents (the index of each token's document in its row, see
    `get_unpad_info`), with `document_counts` (documents per row, on the host) to spare the sync of finding them.
    Returns (attention_mask [N, S], UnpadInfo, masked): masked = (flags [B*S] bool, positions [M] int64: the flat
    positions (row-major) of the masked tokens), or None. With `length_multiple` > 1, T and M are rounded up to
    multiples of it (config.packed_length_multiple): dummy token rows (see `get_unpad_info`) and dummy positions
    (0, after the real ones).

    The number of real tokens T and of masked tokens M are data-dependent shapes, so this runs outside
    torch.compile (`torch.compiler.disable`): the compiled forward graph-breaks once, here, at its start,
    instead of in the middle of the model; everything after it is one graph (with dynamic T and M). For the
    same reason the labels -> mask comparison happens here, not in the (compiled) head before the call.

    Two ways to learn T and M:
      * from the device tensors (`torch.nonzero`): the host waits for the GPU to finish all queued work, every
        forward, and the GPU then idles while the host launches the next kernels. The token ids are checked
        here too (an out-of-range id would be an opaque device-side assert on CUDA), at no extra wait.
      * from `sequence_lengths` / `label_counts` (per row, on the host: the MLM collator sends them), with no
        sync at all, so the host can queue the next step while the GPU runs this one. Whoever sends the counts
        vouches for the ids (the MLM collator checks them; GLUE checks the tokenizer against the vocab). On
        CUDA the totals are checked against the tensors by a device-side assert (no sync; a failure stops the
        process); elsewhere a sync is cheap and they are checked with a clear error.
    """
    if backend_choice is not None:  # logged once, here in eager code
        log_backend_choice(*backend_choice)
    seqlen = input_ids.shape[-1]  # [..., S] -> [N, S]: multiple choice's [B, C, S] is B * C sequences
    input_ids = input_ids.reshape(-1, seqlen)
    token_type_ids = token_type_ids.reshape(-1, seqlen) if token_type_ids is not None else None
    attention_mask = attention_mask.reshape(-1, seqlen) if attention_mask is not None else torch.ones_like(input_ids)
    has_mask = masked_tokens_mask is not None
    num_real = _host_total("sequence_lengths", sequence_lengths, input_ids.shape[0])
    num_labels = _host_total("label_counts", label_counts, input_ids.shape[0]) if has_mask else None
    if sequence_id is not None:
        _check_same_shape("sequence_id", sequence_id, input_ids)
        sequence_id = sequence_id.reshape(-1, seqlen)
    elif document_counts is not None:
        raise ValueError("document_counts given without sequence_id: pass the sequence_id of the packed rows too")
    num_docs = _host_total("document_counts", document_counts, input_ids.shape[0]) if sequence_id is not None else None
    sync_free = (num_real is not None and (not has_mask or num_labels is not None)
                 and (sequence_id is None or num_docs is not None))
    checks = []
    if input_ids.numel() > 0 and not (sync_free and input_ids.is_cuda):
        checks.append(("input_ids", input_ids, vocab_size))
        if token_type_ids is not None:
            checks.append(("token_type_ids", token_type_ids, type_vocab_size))
    flags = [((ids < 0) | (ids >= upper)).any() for _, ids, upper in checks]
    # no exact max_seqlen (a sync of its own): the varlen kernels take S as a bound
    info = get_unpad_info(attention_mask, with_max_seqlen=False, num_real_tokens=num_real,
                          length_multiple=length_multiple, sequence_id=sequence_id, num_sequences=num_docs)
    if sequence_id is not None:
        _check_host_totals([("document_counts", document_starts(sequence_id, attention_mask), num_docs)])
    if flags:  # one sync (the nonzero above, if any, has waited for the flags already)
        for (name, ids, upper), bad in zip(checks, torch.stack(flags).tolist()):
            _check_ids(name, ids, upper, bad)
    masked = None
    if has_mask:
        mask_flags = masked_tokens_mask.reshape(-1)  # [B*S]
        if mask_flags.dtype != torch.bool:  # MLM labels
            mask_flags = mask_flags != -100
        _check_host_totals([("sequence_lengths", info.real, num_real), ("label_counts", mask_flags, num_labels)])
        positions = positions_of_true(mask_flags, num_labels)  # [M], row-major
        if length_multiple > 1:
            positions = extend_positions(positions, length_multiple)  # [M rounded up]
        masked = (mask_flags, positions)
    else:
        _check_host_totals([("sequence_lengths", info.real, num_real)])
    if alibi is not None:  # build/grow the cached ALiBi tensors here, so no compiled graph ever mutates the cache
        alibi.slopes(attention_mask.device)
        if with_alibi_matrix:  # [H, S, S] fp32: only for the backends that read it
            alibi.matrix(attention_mask.shape[1], attention_mask.device)
    # T and M change with every batch: have the compiled graph treat them as symbolic from the first compile
    # (instead of compiling for the first batch's sizes, then recompiling)
    mark = getattr(getattr(torch, "_dynamo", None), "maybe_mark_dynamic", None)
    if mark is not None:
        for t in (info.indices, masked[1] if masked is not None else None,
                  info.cu_seqlens if sequence_id is not None else None):  # one entry per document
            if t is not None and t.numel() > 1:
                mark(t, 0)
    return attention_mask, info, masked


def _masked_rows(info: UnpadInfo, flags: torch.Tensor, positions: torch.Tensor):
    """The masked tokens as a selection out of the packed rows (flags [B*S], positions [M] from `_prepare_batch`).

    Returns (RowSelection of M rows out of the T packed rows, masked_positions [M]: flat positions, -1 for the
    dummy rows of a rounded-up M). A masked position on padding selects a zero row, exactly what the padded
    encoder output holds there; so do the dummy rows (no label, no gradient).
    """
    keep = info.real[positions]  # [M] False for masks on padding
    selected = flags[info.indices]  # [T] is this packed row masked
    if info.valid_rows is not None:  # T and M rounded up
        selected = selected & info.valid_rows
        real = torch.arange(positions.shape[0], device=positions.device) < flags.sum()
        keep = keep & real
        positions = positions.masked_fill(~real, -1)
    sel = RowSelection(
        info.packed_pos[positions.clamp(min=0)],  # [M] packed row of each masked position
        keep,
        (torch.cumsum(flags, dim=0) - 1).clamp(min=0)[info.indices],  # [T] inverse map
        selected,
    )
    return sel, positions


def _classifier_dropout(config) -> float:
    return config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob


def _check_same_shape(name: str, t: torch.Tensor | None, input_ids: torch.Tensor) -> None:
    if t is not None and t.shape != input_ids.shape:  # else: out-of-range gathers, opaque on CUDA
        raise ValueError(f"{name} must have input_ids' shape {tuple(input_ids.shape)}, got {tuple(t.shape)}")


# ----------------------------------------------------------------------------------------------------------
# Encoder and base model


class MosaicBertEncoder(nn.Module):
    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([MosaicBertLayer(config) for _ in range(config.num_hidden_layers)])
        self.alibi = AlibiCache(config.num_attention_heads, config.alibi_starting_size)

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor, info: UnpadInfo, backend,
                all_hidden: list | None = None, last_layer_rows: RowSelection | None = None) -> torch.Tensor:
        # h: [T, hidden] packed real tokens, attention_mask: [B, S] -> [T, hidden]
        # all_hidden: if a list, each layer's output is appended to it, padded to [B, S, hidden]
        # last_layer_rows: the last layer outputs only these rows -> [M, hidden] (see MosaicBertLayer)
        ctx = AttentionContext(info, attention_mask.bool(), self.alibi, self.config.num_attention_heads)
        last = len(self.layer) - 1
        for i, layer in enumerate(self.layer):
            h = layer(h, ctx, backend, last_layer_rows if i == last else None)
            if all_hidden is not None:
                all_hidden.append(pad_rows(h, info))
        return h


class MosaicBertPooler(nn.Module):
    """dense + tanh on the [CLS] (first) token, as in BERT."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))  # [B, hidden]


# Buffers that other implementations save (the original MosaicBERT's ALiBi tensor, BERT's token type and position
# ids): in some checkpoints, never information. Not reported when they do not load.
STALE_BUFFER_SUFFIXES = (".alibi", "embeddings.token_type_ids", "embeddings.position_ids")


class MosaicBertPreTrainedModel(PreTrainedModel):
    config_class = MosaicBertConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = False
    _no_split_modules = ["MosaicBertLayer"]
    _keys_to_ignore_on_load_unexpected = [re.escape(suffix) + "$" for suffix in STALE_BUFFER_SUFFIXES]

    def _init_weights(self, module):
        """BERT init: N(0, initializer_range) for Linear/Embedding weights, zero biases, LayerNorm = identity."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            _init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                _init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            _init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None and not getattr(module.weight, "_is_hf_initialized", False):
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            _init.ones_(module.weight)
            _init.zeros_(module.bias)


class PreparedBatch(NamedTuple):
    """What `MosaicBertModel.prepare_batch` learns about a batch (see there)."""

    attention_mask: torch.Tensor  # [B, S]
    backend: AttentionBackend
    info: UnpadInfo
    masked: tuple[torch.Tensor, torch.Tensor] | None  # (flags [B*S] bool, positions [M] int64), or None


@dataclass
class MosaicBertModelOutput(BaseModelOutputWithPooling):
    """BaseModelOutputWithPooling plus, when the forward got `masked_tokens_mask`, masked_positions [M]: the flat
    position (into batch * seqlen) of each row of last_hidden_state, -1 for dummy rows."""

    masked_positions: torch.LongTensor | None = None


class MosaicBertModel(MosaicBertPreTrainedModel):
    """The bare encoder. forward(input_ids [B, S], attention_mask [B, S]=None, token_type_ids [B, S]=None)
    (more leading dims are flattened: [B, C, S] runs as B * C sequences)
    -> MosaicBertModelOutput(last_hidden_state [B, S, hidden] (zeros at padding), pooler_output [B, hidden]
    or None, hidden_states (embeddings + each layer, padded) if output_hidden_states).

    masked_tokens_mask ([B, S] bool, True = masked; or MLM labels, -100 = not masked), as in the original
    MosaicBERT's BertModel: last_hidden_state then holds only the masked tokens' rows, [M, hidden], in row-major
    order (aligned with `labels[labels != -100]`), and masked_positions their flat positions. A masked padding
    position gets a zero row (the padded output there). With config.packed_length_multiple > 1 there are dummy
    rows (zeros, position -1) after the real ones, up to a multiple of it. With config.sparse_last_layer
    (default) the last layer computes attention for every token but its output projection, LayerNorms and
    feed-forward only for those rows, as the original MosaicBERT (not with output_hidden_states or a pooler).

    sequence_lengths / label_counts: optional per-row host counts of real / masked tokens (the collators send
    them) that spare the forward its host sync (see `_prepare_batch`).
    """

    def __init__(self, config: MosaicBertConfig, add_pooling_layer: bool = True):
        super().__init__(config)
        check_backend_name(config.attention_backend)
        self.embeddings = MosaicBertEmbeddings(config)
        self.encoder = MosaicBertEncoder(config)
        self.pooler = MosaicBertPooler(config) if add_pooling_layer else None
        self.post_init()

    def get_input_embeddings(self):
        return self.embeddings.word_embeddings

    def set_input_embeddings(self, value):
        self.embeddings.word_embeddings = value

    def _compute_dtype(self, device: torch.device) -> torch.dtype:
        if torch.is_autocast_enabled(device.type):
            return torch.get_autocast_dtype(device.type)
        return self.embeddings.word_embeddings.weight.dtype

    def _resolve_backend(self, device: torch.device):
        """-> (backend, the args of `log_backend_choice`)."""
        cfg = self.config
        dtype = self._compute_dtype(device)
        head_dim = cfg.hidden_size // cfg.num_attention_heads
        dropout = cfg.attention_probs_dropout_prob if self.training else 0.0
        backend = resolve_backend(cfg.attention_backend, device, dtype, head_dim, dropout)
        # what the same call would run without attention dropout (some kernels have none)
        without_dropout = resolve_backend(cfg.attention_backend, device, dtype, head_dim, 0.0) if dropout else backend
        return backend, (cfg.attention_backend, backend.name, device, dtype, dropout, without_dropout.name)

    def prepare_batch(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        masked_tokens_mask: torch.Tensor | None = None,
        sequence_lengths: list[int] | None = None,
        label_counts: list[int] | None = None,
        sequence_id: torch.Tensor | None = None,
        document_counts: list[int] | None = None,
    ) -> PreparedBatch:
        """The host-side step of a forward (unpadding indices, masked positions, attention backend): under
        torch.compile it is the one graph break (see `_prepare_batch`). `forward` calls it, unless it is given
        its result as `prepared`: task heads call it first, then `self.bert(..., prepared=...)`, so that the
        break comes before any compiled code and the whole rest of the head's forward is one graph."""
        if input_ids.dim() < 2:
            raise ValueError(f"input_ids must be [batch, seqlen], got shape {tuple(input_ids.shape)}")
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids),
                        ("masked_tokens_mask", masked_tokens_mask), ("sequence_id", sequence_id)):
            _check_same_shape(name, t, input_ids)
        backend, choice = self._resolve_backend(input_ids.device)
        attention_mask, info, masked = _prepare_batch(
            input_ids, token_type_ids, attention_mask, masked_tokens_mask, self.config.vocab_size,
            self.config.type_vocab_size, self.encoder.alibi, backend.needs_alibi_matrix, choice,
            sequence_lengths, label_counts, self.config.packed_length_multiple, sequence_id, document_counts,
        )
        return PreparedBatch(attention_mask, backend, info, masked)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        sequence_lengths: list[int] | None = None,
        masked_tokens_mask: torch.Tensor | None = None,
        label_counts: list[int] | None = None,
        prepared: PreparedBatch | None = None,
        sequence_id: torch.Tensor | None = None,
        document_counts: list[int] | None = None,
        **kwargs,
    ):
        if kwargs.get("output_attentions"):
            raise ValueError("output_attentions=True is not supported: MosaicBERT's attention kernels never form the "
                             "attention probabilities (use output_hidden_states for the layer outputs)")
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        output_hidden_states = bool(output_hidden_states)
        if prepared is None:
            prepared = self.prepare_batch(input_ids, attention_mask, token_type_ids, masked_tokens_mask,
                                          sequence_lengths, label_counts, sequence_id, document_counts)
        elif any(x is not None for x in (masked_tokens_mask, sequence_lengths, label_counts, sequence_id,
                                         document_counts)):
            raise ValueError("pass masked_tokens_mask / sequence_lengths / label_counts / sequence_id / "
                             "document_counts to prepare_batch, not next to `prepared`")
        attention_mask, backend, info, masked = prepared
        if input_ids.dim() > 2:  # [B, C, S] (multiple choice) -> [B * C, S], as prepare_batch did
            input_ids = input_ids.reshape(-1, input_ids.shape[-1])
            token_type_ids = token_type_ids.reshape(input_ids.shape) if token_type_ids is not None else None
        if output_hidden_states:  # hidden_states[0] is the embeddings at every position, padding included
            x = self.embeddings(input_ids, token_type_ids)  # [B, S, hidden]
            all_hidden = [x]
            h = unpad_rows(x, info)
        else:  # embed the real tokens only: no [B, S, hidden] tensor, no unpad copy
            all_hidden = None
            ids = input_ids.reshape(-1)[info.indices]  # [T]
            tt = token_type_ids.reshape(-1)[info.indices] if token_type_ids is not None else None
            h = self.embeddings(ids, tt)  # [T, hidden]
        rows, positions = _masked_rows(info, *masked) if masked is not None else (None, None)
        # sparse last layer: only the masked rows leave the encoder, so the last layer computes only them
        sparse = (rows is not None and self.config.sparse_last_layer and not output_hidden_states
                  and self.pooler is None)
        h = self.encoder(h, attention_mask, info, backend, all_hidden, rows if sparse else None)  # [T or M, hidden]
        if rows is None:
            sequence_output = pad_rows(h, info)  # [B, S, hidden], zeros at padding
            pooled = self.pooler(sequence_output) if self.pooler is not None else None
        else:
            sequence_output = h if sparse else select_rows(h, rows)  # [M, hidden]
            pooled = self.pooler(pad_rows(h, info)) if self.pooler is not None else None
        out = MosaicBertModelOutput(last_hidden_state=sequence_output, pooler_output=pooled,
                                    hidden_states=tuple(all_hidden) if output_hidden_states else None,
                                    masked_positions=positions)
        return out if return_dict else out.to_tuple()


# ----------------------------------------------------------------------------------------------------------
# Heads


class MosaicBertPredictionHeadTransform(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.transform_act_fn = ACT2FN[config.hidden_act]
        self.LayerNorm = make_layernorm(config, eps=1e-12)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.transform_act_fn(self.dense(x)))


class MosaicBertLMPredictionHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.transform = MosaicBertPredictionHeadTransform(config)
        # weight tied to the word embeddings by the model (_tied_weights_keys); the bias is its own
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.transform(x))  # [..., vocab]


class MosaicBertOnlyMLMHead(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.predictions = MosaicBertLMPredictionHead(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x)


class MosaicBertForMaskedLM(MosaicBertPreTrainedModel):
    """MosaicBERT with the MLM head (no pooler, as in the published checkpoints).

    forward(input_ids, attention_mask=None, token_type_ids=None, labels=None) -> MaskedLMOutput.
    Output convention:
      * labels is None: logits [B, S, vocab] for every position.
      * labels given ([B, S], -100 = ignore): the head runs only on positions with labels != -100
        ("masked-only prediction", saves the vocab projection on ~85% of tokens). Then
        logits is [num_masked, vocab] with rows in the row-major order of `labels != -100`, i.e.
        aligned with `labels[labels != -100]`; loss = mean cross-entropy over those rows.
    Optional `sequence_lengths` / `label_counts` (per row, host ints; the MLM collator sends them) let the
    forward run without a host sync (see `_prepare_batch`). Rows that pack several documents pass `sequence_id`
    [B, S] (each token's document index in its row) and `document_counts`: attention stays inside each
    document. With config.packed_length_multiple > 1 the masked-only
    logits have dummy rows after the real ones, up to a multiple of it; the loss ignores them.
    """

    _tied_weights_keys = {"cls.predictions.decoder.weight": "bert.embeddings.word_embeddings.weight"}

    def __init__(self, config: MosaicBertConfig):
        super().__init__(config)
        self.bert = MosaicBertModel(config, add_pooling_layer=False)
        self.cls = MosaicBertOnlyMLMHead(config)
        self.post_init()

    def get_output_embeddings(self):
        return self.cls.predictions.decoder

    def set_output_embeddings(self, new_embeddings):
        self.cls.predictions.decoder = new_embeddings

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        sequence_lengths: list[int] | None = None,
        label_counts: list[int] | None = None,
        sequence_id: torch.Tensor | None = None,
        document_counts: list[int] | None = None,
        **kwargs,
    ):
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        _check_same_shape("labels", labels, input_ids)
        prepared = self.bert.prepare_batch(input_ids, attention_mask, token_type_ids, masked_tokens_mask=labels,
                                           sequence_lengths=sequence_lengths, label_counts=label_counts,
                                           sequence_id=sequence_id, document_counts=document_counts)
        outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            output_hidden_states=output_hidden_states, return_dict=True, prepared=prepared)
        # labels given: [M, hidden] rows of the labelled positions only, else [B, S, hidden]
        logits = self.cls(outputs.last_hidden_state)  # [M, vocab] or [B, S, vocab]
        loss = None
        if labels is not None:
            positions = outputs.masked_positions  # [M], -1 for dummy rows
            targets = labels.reshape(-1)[positions.clamp(min=0)].masked_fill(positions < 0, -100)  # [M]
            if positions.numel() > 0:
                loss = F.cross_entropy(logits.float(), targets)  # mean over the real labels (dummies are -100)
            else:  # no masked token in the batch: zero loss (not NaN) that still touches the graph
                loss = logits.float().sum() * 0.0
        out = MaskedLMOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return out if return_dict else out.to_tuple()


class _MosaicBertClassifierHead(MosaicBertPreTrainedModel):
    """encoder -> dropout -> linear: the sequence, token and multiple-choice classification heads.

    A head sets `pooled` (classify the pooled [CLS], else every token), `output_class` and `num_outputs` (None =
    config.num_labels), and defines `_loss(logits, labels)`; `_check_inputs` and `_shape_logits` adapt the input
    check and the logits' shape.
    """

    pooled: bool
    output_class: type
    num_outputs: int | None = None

    def __init__(self, config: MosaicBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = MosaicBertModel(config, add_pooling_layer=self.pooled)
        self.dropout = nn.Dropout(_classifier_dropout(config))
        self.classifier = nn.Linear(config.hidden_size, self.num_outputs or config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        sequence_lengths: list[int] | None = None,
        **kwargs,
    ):
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        self._check_inputs(input_ids, labels)
        prepared = self.bert.prepare_batch(input_ids, attention_mask, token_type_ids,
                                           sequence_lengths=sequence_lengths)
        outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            output_hidden_states=output_hidden_states, return_dict=True, prepared=prepared)
        features = outputs.pooler_output if self.pooled else outputs.last_hidden_state  # [B, hidden] / [B, S, hidden]
        logits = self._shape_logits(self.classifier(self.dropout(features)), input_ids)
        loss = self._loss(logits, labels) if labels is not None else None
        out = self.output_class(loss=loss, logits=logits, hidden_states=outputs.hidden_states)
        return out if return_dict else out.to_tuple()

    def _check_inputs(self, input_ids: torch.Tensor, labels: torch.Tensor | None) -> None:
        pass

    def _shape_logits(self, logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return logits

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class MosaicBertForSequenceClassification(_MosaicBertClassifierHead):
    """Pooled [CLS] -> dropout -> classifier. forward(..., labels=None) -> SequenceClassifierOutput with logits
    [B, num_labels]. Loss follows BertForSequenceClassification: MSE when num_labels == 1 (regression),
    cross-entropy for integer labels, BCE-with-logits for multi-label (config.problem_type)."""

    pooled = True
    output_class = SequenceClassifierOutput

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        problem_type = self.config.problem_type
        if problem_type is None:
            if self.num_labels == 1:
                problem_type = "regression"
            elif labels.dtype in (torch.long, torch.int):
                problem_type = "single_label_classification"
            else:
                problem_type = "multi_label_classification"
        if problem_type == "regression":
            return F.mse_loss(logits.squeeze(-1).float(), labels.reshape(-1).float()) if self.num_labels == 1 \
                else F.mse_loss(logits.float(), labels.float())
        if problem_type == "single_label_classification":
            return F.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1))
        return F.binary_cross_entropy_with_logits(logits.float(), labels.float())


class MosaicBertForTokenClassification(_MosaicBertClassifierHead):
    """Dropout -> linear on every token, as BertForTokenClassification. forward(..., labels [B, S] (-100 =
    ignored)) -> TokenClassifierOutput(loss = mean cross-entropy over the labels != -100, logits
    [B, S, num_labels]). The encoder output is zero at padding, so there the logits are the classifier's bias."""

    pooled = False
    output_class = TokenClassifierOutput

    def _check_inputs(self, input_ids: torch.Tensor, labels: torch.Tensor | None) -> None:
        _check_same_shape("labels", labels, input_ids)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.view(-1, self.num_labels).float(), labels.reshape(-1))


class MosaicBertForQuestionAnswering(MosaicBertPreTrainedModel):
    """Extractive QA (SQuAD), as BertForQuestionAnswering: linear -> (start, end) logit per token.
    forward(..., start_positions [B], end_positions [B]) -> QuestionAnsweringModelOutput(loss, start_logits [B, S],
    end_logits [B, S]). Positions outside the sequence are clamped to S and ignored by the loss, as in
    transformers; loss = (start cross-entropy + end cross-entropy) / 2. Padding is not masked out of the logits
    (as in transformers: answer extraction looks only at context tokens); the encoder output is zero there, so
    the logits at padding are the qa_outputs bias."""

    def __init__(self, config: MosaicBertConfig):
        super().__init__(config)
        if config.num_labels != 2:
            raise ValueError(f"MosaicBertForQuestionAnswering needs num_labels == 2 (start, end), "
                             f"got {config.num_labels}")
        self.num_labels = config.num_labels
        self.bert = MosaicBertModel(config, add_pooling_layer=False)
        self.qa_outputs = nn.Linear(config.hidden_size, config.num_labels)
        self.post_init()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        start_positions: torch.Tensor | None = None,
        end_positions: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        sequence_lengths: list[int] | None = None,
        **kwargs,
    ):
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        prepared = self.bert.prepare_batch(input_ids, attention_mask, token_type_ids,
                                           sequence_lengths=sequence_lengths)
        outputs = self.bert(input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                            output_hidden_states=output_hidden_states, return_dict=True, prepared=prepared)
        logits = self.qa_outputs(outputs.last_hidden_state)  # [B, S, 2]
        start_logits, end_logits = (t.squeeze(-1).contiguous() for t in logits.split(1, dim=-1))  # [B, S] each
        loss = None
        if start_positions is not None and end_positions is not None:
            ignored = start_logits.shape[1]  # a position outside the sequence (e.g. a truncated answer)
            start = start_positions.reshape(-1).clamp(0, ignored)  # [B] ([B, 1] on multi-GPU gathers)
            end = end_positions.reshape(-1).clamp(0, ignored)
            loss = (F.cross_entropy(start_logits.float(), start, ignore_index=ignored)
                    + F.cross_entropy(end_logits.float(), end, ignore_index=ignored)) / 2
        out = QuestionAnsweringModelOutput(loss=loss, start_logits=start_logits, end_logits=end_logits,
                                           hidden_states=outputs.hidden_states)
        return out if return_dict else out.to_tuple()


class MosaicBertForMultipleChoice(_MosaicBertClassifierHead):
    """Multiple choice (SWAG), as BertForMultipleChoice: every choice is one sequence, pooled [CLS] -> dropout ->
    linear -> one score. forward(input_ids [B, C, S], attention_mask / token_type_ids [B, C, S], labels [B])
    -> MultipleChoiceModelOutput(loss = cross-entropy over the C choices, logits [B, C]). The B * C sequences
    run through the encoder as one batch (sequence_lengths, if given, has one count per sequence: B * C)."""

    pooled = True
    output_class = MultipleChoiceModelOutput
    num_outputs = 1

    def _check_inputs(self, input_ids: torch.Tensor, labels: torch.Tensor | None) -> None:
        # [B, C, S] goes in as is: prepare_batch and the encoder flatten it to B * C sequences (in prepare_batch's
        # eager code, so that a compiled forward still breaks only there)
        if input_ids.dim() != 3:
            raise ValueError(f"input_ids must be [batch, num_choices, seqlen], got shape {tuple(input_ids.shape)}")

    def _shape_logits(self, logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        return logits.view(-1, input_ids.shape[1])  # [B * C, 1] -> [B, C]

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels.reshape(-1))


# ----------------------------------------------------------------------------------------------------------
# Checkpoint loading


def load_mosaic_state_dict(model: nn.Module, state_dict: dict, strict: bool = False):
    """Load a MosaicBERT state dict (HF-style keys, or Composer's with a leading `model.`) into `model`.

    Returns (missing_keys, unexpected_keys) as lists; callers must report them. Keys that never hold
    information are not reported: buffers that other implementations save (`*.alibi`, `*.token_type_ids`,
    `*.position_ids`). With strict=True, a nonempty list raises RuntimeError instead.
    """
    cleaned = {}
    for k, v in state_dict.items():
        if k.startswith("model."):
            k = k[len("model."):]
        if k.endswith(STALE_BUFFER_SUFFIXES):
            continue
        cleaned[k] = v
    # A bare MosaicBertModel has no `bert.` prefix; accept checkpoints of the task models too.
    if isinstance(model, MosaicBertModel):
        cleaned = {k[len("bert."):] if k.startswith("bert.") else k: v for k, v in cleaned.items()}
    result = model.load_state_dict(cleaned, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    # The tied decoder weight is the word embedding: absent from deduplicated checkpoints and fine.
    tied = "cls.predictions.decoder.weight"
    if tied in missing and getattr(model.config, "tie_word_embeddings", True):
        missing.remove(tied)
    if isinstance(model, MosaicBertModel):
        # A bare encoder ignores the task heads of a full checkpoint; report only if that is not the case.
        unexpected = [k for k in unexpected if not k.startswith(("cls.", "classifier.", "qa_outputs."))]
    if strict and (missing or unexpected):
        raise RuntimeError(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    return missing, unexpected


# The Auto classes a saved folder serves (config.json's `auto_map`, with trust_remote_code=True).
AUTO_CLASSES = {
    "AutoModel": MosaicBertModel,
    "AutoModelForMaskedLM": MosaicBertForMaskedLM,
    "AutoModelForSequenceClassification": MosaicBertForSequenceClassification,
    "AutoModelForTokenClassification": MosaicBertForTokenClassification,
    "AutoModelForQuestionAnswering": MosaicBertForQuestionAnswering,
    "AutoModelForMultipleChoice": MosaicBertForMultipleChoice,
}
MosaicBertConfig.register_for_auto_class()
for _auto_class, _model_class in AUTO_CLASSES.items():
    _model_class.register_for_auto_class(_auto_class)


def auto_map() -> dict[str, str]:
    """config.json's `auto_map` listing every Auto class above (save_pretrained records only the saved model's)."""
    module = __name__.rsplit(".", 1)[-1]  # modeling_mosaic_bert, also when loaded as remote code
    return {"AutoConfig": f"configuration_mosaic_bert.{MosaicBertConfig.__name__}",
            **{auto: f"{module}.{cls.__name__}" for auto, cls in AUTO_CLASSES.items()}}
