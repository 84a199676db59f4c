"""MosaicBERT: BERT with ALiBi, GeGLU, fused QKV, unpadding and low-precision LayerNorm (MosaicML, 2023).

Data flow of one forward pass:
    input_ids [B, S] -> gather the real tokens -> [T] -> embeddings [T, hidden]   (T = real tokens)
    -> N x (attention -> post-LN -> GeGLU -> post-LN), all on [T, hidden]
    -> masked-LM head on the M labelled rows only, or pad back -> [B, S, hidden] (zeros at padding) -> heads

Self-contained on purpose (torch + transformers + relative imports): `save_pretrained` copies this file and
its relative imports next to the weights, so `AutoModel*.from_pretrained(dir, trust_remote_code=True)` works
without the mosaicbert package installed.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import PreTrainedModel
from transformers.activations import ACT2FN
from transformers.modeling_outputs import BaseModelOutputWithPooling, MaskedLMOutput, SequenceClassifierOutput

from .attention import AlibiCache, AttentionContext, check_backend_name, log_backend_choice, resolve_backend
from .configuration_mosaic_bert import MosaicBertConfig
from .layers import MosaicBertEmbeddings, MosaicBertLayer, make_layernorm
from .padding import (UnpadInfo, extend_positions, gather_rows, get_unpad_info, pad_rows, positions_of_true,
                      unpad_rows)

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
    attention_mask: torch.Tensor,
    labels: torch.Tensor | None,
    vocab_size: int,
    type_vocab_size: int,
    alibi: AlibiCache | None = None,
    with_alibi_matrix: bool = True,
    backend_choice: tuple | None = None,
    sequence_lengths: list[int] | None = None,
    label_counts: list[int] | None = None,
    length_multiple: int = 0,
):
    """Everything about a batch that needs the host to know device data, in one place.

    Returns (UnpadInfo, label_pos): label_pos [M] int64 = flat positions (row-major) of labels != -100, or None.
    With `length_multiple` > 1, T and M are rounded up to multiples of it (config.packed_length_multiple): dummy
    token rows (see `get_unpad_info`) and dummy label positions (0, after the real ones).

    The number of real tokens T and of masked tokens M are data-dependent shapes, so this runs outside
    torch.compile (`torch.compiler.disable`): the compiled forward graph-breaks once, here, at its start,
    instead of in the middle of the model; everything after it is one graph (with dynamic T and M).

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
    if backend_choice is not None:  # (configured name, chosen name, dtype): logged once, here in eager code
        log_backend_choice(backend_choice[0], backend_choice[1], input_ids.device, backend_choice[2])
    num_real = _host_total("sequence_lengths", sequence_lengths, input_ids.shape[0])
    num_labels = _host_total("label_counts", label_counts, input_ids.shape[0]) if labels is not None else None
    sync_free = num_real is not None and (labels is None or num_labels is not None)
    checks = []
    if input_ids.numel() > 0 and not (sync_free and input_ids.is_cuda):
        checks.append(("input_ids", input_ids, vocab_size))
        if token_type_ids is not None:
            checks.append(("token_type_ids", token_type_ids, type_vocab_size))
    flags = [((ids < 0) | (ids >= upper)).any() for _, ids, upper in checks]
    # no exact max_seqlen (a sync of its own): the varlen kernels take S as a bound
    info = get_unpad_info(attention_mask, with_max_seqlen=False, num_real_tokens=num_real,
                          length_multiple=length_multiple)
    if flags:  # one sync (the nonzero above, if any, has waited for the flags already)
        for (name, ids, upper), bad in zip(checks, torch.stack(flags).tolist()):
            _check_ids(name, ids, upper, bad)
    label_flags = labels.reshape(-1) != -100 if labels is not None else None  # [B*S]
    _check_host_totals([("sequence_lengths", info.real, num_real), ("label_counts", label_flags, num_labels)])
    label_pos = positions_of_true(label_flags, num_labels) if labels is not None else None  # [M], row-major
    if label_pos is not None and length_multiple > 1:
        label_pos = extend_positions(label_pos, length_multiple)  # [M rounded up]
    if alibi is not None:  # build/grow the cached ALiBi tensors here, so no compiled graph ever mutates the cache
        alibi.slopes(attention_mask.device)
        if with_alibi_matrix:  # [H, S, S] fp32: only for the backends that read it
            alibi.matrix(attention_mask.shape[1], attention_mask.device)
    # T and M change with every batch: have the compiled graph treat them as symbolic from the first compile
    # (instead of compiling for the first batch's sizes, then recompiling)
    mark = getattr(getattr(torch, "_dynamo", None), "maybe_mark_dynamic", None)
    if mark is not None:
        for t in (info.indices, label_pos):
            if t is not None and t.numel() > 1:
                mark(t, 0)
    return info, label_pos


# ----------------------------------------------------------------------------------------------------------
# Encoder and base model


class MosaicBertEncoder(nn.Module):
    def __init__(self, config: MosaicBertConfig):
        super().__init__()
        self.config = config
        self.layer = nn.ModuleList([MosaicBertLayer(config) for _ in range(config.num_hidden_layers)])
        self.alibi = AlibiCache(config.num_attention_heads, config.alibi_starting_size)

    def forward(self, h: torch.Tensor, attention_mask: torch.Tensor, info: UnpadInfo, backend,
                all_hidden: list | None = None) -> torch.Tensor:
        # h: [T, hidden] packed real tokens, attention_mask: [B, S] -> [T, hidden]
        # all_hidden: if a list, each layer's output is appended to it, padded to [B, S, hidden]
        ctx = AttentionContext(info, attention_mask.bool(), self.alibi, self.config.num_attention_heads)
        for layer in self.layer:
            h = layer(h, ctx, backend)
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


class MosaicBertPreTrainedModel(PreTrainedModel):
    config_class = MosaicBertConfig
    base_model_prefix = "bert"
    supports_gradient_checkpointing = False
    _no_split_modules = ["MosaicBertLayer"]

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


class MosaicBertModel(MosaicBertPreTrainedModel):
    """The bare encoder. forward(input_ids [B, S], attention_mask [B, S]=None, token_type_ids [B, S]=None)
    -> BaseModelOutputWithPooling(last_hidden_state [B, S, hidden] (zeros at padding), pooler_output [B, hidden]
    or None, hidden_states (embeddings + each layer, padded) if output_hidden_states)."""

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
        cfg = self.config
        return resolve_backend(cfg.attention_backend, device, self._compute_dtype(device),
                               cfg.hidden_size // cfg.num_attention_heads,
                               cfg.attention_probs_dropout_prob if self.training else 0.0)

    def _prepare(self, input_ids, attention_mask, token_type_ids, labels, sequence_lengths=None, label_counts=None):
        """-> (attention_mask, backend, UnpadInfo, label_pos [M] or None). Call it from the outermost forward:
        it is the one graph break of a compiled forward (see `_prepare_batch`, also for the optional per-row
        `sequence_lengths` / `label_counts` that spare the host sync)."""
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, seqlen], got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids), ("labels", labels)):
            if t is not None and t.shape != input_ids.shape:  # else: out-of-range gathers, opaque on CUDA
                raise ValueError(f"{name} must have input_ids' shape {tuple(input_ids.shape)}, got {tuple(t.shape)}")
        backend = self._resolve_backend(input_ids.device)
        info, label_pos = _prepare_batch(
            input_ids, token_type_ids, attention_mask, labels, self.config.vocab_size,
            self.config.type_vocab_size, self.encoder.alibi, backend.needs_alibi_matrix,
            (self.config.attention_backend, backend.name, self._compute_dtype(input_ids.device)),
            sequence_lengths, label_counts, self.config.packed_length_multiple,
        )
        return attention_mask, backend, info, label_pos

    def _encode(self, input_ids, attention_mask, token_type_ids, info: UnpadInfo, backend, output_hidden_states: bool):
        """-> (h [T, hidden] packed real tokens, hidden_states tuple (padded) or None)."""
        if output_hidden_states:  # hidden_states[0] is the embeddings at every position, padding included
            x = self.embeddings(input_ids, token_type_ids)  # [B, S, hidden]
            all_hidden = [x]
            h = unpad_rows(x, info)
        else:  # embed the real tokens only: no [B, S, hidden] tensor, no unpad copy
            all_hidden = None
            ids = input_ids.reshape(-1)[info.indices]  # [T]
            tt = token_type_ids.reshape(-1)[info.indices] if token_type_ids is not None else None
            h = self.embeddings(ids, tt)  # [T, hidden]
        h = self.encoder(h, attention_mask, info, backend, all_hidden)
        return h, (tuple(all_hidden) if output_hidden_states else None)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        sequence_lengths: list[int] | None = None,
        **kwargs,
    ):
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        attention_mask, backend, info, _ = self._prepare(input_ids, attention_mask, token_type_ids, None,
                                                         sequence_lengths)
        out = self._forward_prepared(input_ids, attention_mask, token_type_ids, info, backend, output_hidden_states)
        if not return_dict:
            return tuple(v for v in (out.last_hidden_state, out.pooler_output, out.hidden_states) if v is not None)
        return out

    def _forward_prepared(self, input_ids, attention_mask, token_type_ids, info, backend, output_hidden_states):
        """forward() after `_prepare` (task models call `_prepare` themselves, first, to keep one graph)."""
        output_hidden_states = bool(output_hidden_states)
        h, hidden_states = self._encode(input_ids, attention_mask, token_type_ids, info, backend, output_hidden_states)
        sequence_output = pad_rows(h, info)  # [B, S, hidden], zeros at padding
        pooled = self.pooler(sequence_output) if self.pooler is not None else None
        return BaseModelOutputWithPooling(
            last_hidden_state=sequence_output, pooler_output=pooled, hidden_states=hidden_states
        )


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
    forward run without a host sync (see `_prepare_batch`). With config.packed_length_multiple > 1 the masked-only
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
        **kwargs,
    ):
        return_dict = return_dict if return_dict is not None else getattr(self.config, "return_dict", True)
        loss = None
        if labels is None:
            attention_mask, backend, info, _ = self.bert._prepare(input_ids, attention_mask, token_type_ids, None,
                                                                  sequence_lengths)
            outputs = self.bert._forward_prepared(input_ids, attention_mask, token_type_ids, info, backend,
                                                  output_hidden_states)
            hidden_states = outputs.hidden_states
            logits = self.cls(outputs.last_hidden_state)  # [B, S, vocab]
        else:
            attention_mask, backend, info, label_pos = self.bert._prepare(input_ids, attention_mask, token_type_ids,
                                                                          labels, sequence_lengths, label_counts)
            h, hidden_states = self.bert._encode(input_ids, attention_mask, token_type_ids, info, backend,
                                                 bool(output_hidden_states))
            # Gather the labelled rows straight from the packed tokens (no re-padding). A label on a padding
            # position gets a zero row, exactly what the padded encoder output holds there.
            flat_labels = labels.reshape(-1)
            label_flags = flat_labels != -100  # [B*S]
            keep = info.real[label_pos]  # [M] False for labels on padding
            targets = flat_labels[label_pos]  # [M]
            labelled_rows = label_flags[info.indices]  # [T] is this packed row labelled
            if info.valid_rows is not None:  # T and M rounded up: dummy rows get zero rows, no label, no gradient
                labelled_rows = labelled_rows & info.valid_rows
                real_label = torch.arange(label_pos.shape[0], device=label_pos.device) < label_flags.sum()
                keep = keep & real_label
                targets = targets.masked_fill(~real_label, -100)
            rows = gather_rows(
                h,
                info.packed_pos[label_pos],  # [M] packed row of each labelled position
                keep,
                (torch.cumsum(label_flags, dim=0) - 1).clamp(min=0)[info.indices],  # [T] inverse map
                labelled_rows,
            )
            logits = self.cls(rows)  # [M, vocab], rows in row-major order of labels != -100 (then any dummies)
            if label_pos.numel() > 0:
                loss = F.cross_entropy(logits.float(), targets)  # mean over the real labels (dummies are -100)
            else:  # no masked token in the batch: zero loss (not NaN) that still touches the graph
                loss = logits.float().sum() * 0.0
        if not return_dict:
            out = (logits,) + ((hidden_states,) if hidden_states is not None else ())
            return ((loss,) + out) if loss is not None else out
        return MaskedLMOutput(loss=loss, logits=logits, hidden_states=hidden_states)


class MosaicBertForSequenceClassification(MosaicBertPreTrainedModel):
    """Pooled [CLS] -> dropout -> classifier. forward(..., labels=None) -> SequenceClassifierOutput with logits
    [B, num_labels]. Loss follows BertForSequenceClassification: MSE when num_labels == 1 (regression),
    cross-entropy for integer labels, BCE-with-logits for multi-label (config.problem_type)."""

    def __init__(self, config: MosaicBertConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.bert = MosaicBertModel(config, add_pooling_layer=True)
        p = config.classifier_dropout if config.classifier_dropout is not None else config.hidden_dropout_prob
        self.dropout = nn.Dropout(p)
        self.classifier = nn.Linear(config.hidden_size, config.num_labels)
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
        attention_mask, backend, info, _ = self.bert._prepare(input_ids, attention_mask, token_type_ids, None,
                                                              sequence_lengths)
        outputs = self.bert._forward_prepared(input_ids, attention_mask, token_type_ids, info, backend,
                                              output_hidden_states)
        logits = self.classifier(self.dropout(outputs.pooler_output))  # [B, num_labels]
        loss = None
        if labels is not None:
            problem_type = self.config.problem_type
            if problem_type is None:
                if self.num_labels == 1:
                    problem_type = "regression"
                elif labels.dtype in (torch.long, torch.int):
                    problem_type = "single_label_classification"
                else:
                    problem_type = "multi_label_classification"
            if problem_type == "regression":
                loss = F.mse_loss(logits.squeeze(-1).float(), labels.reshape(-1).float()) if self.num_labels == 1 \
                    else F.mse_loss(logits.float(), labels.float())
            elif problem_type == "single_label_classification":
                loss = F.cross_entropy(logits.view(-1, self.num_labels).float(), labels.view(-1))
            else:
                loss = F.binary_cross_entropy_with_logits(logits.float(), labels.float())
        if not return_dict:
            out = (logits,) + ((outputs.hidden_states,) if outputs.hidden_states is not None else ())
            return ((loss,) + out) if loss is not None else out
        return SequenceClassifierOutput(loss=loss, logits=logits, hidden_states=outputs.hidden_states)


# ----------------------------------------------------------------------------------------------------------
# Checkpoint loading


def load_mosaic_state_dict(model: nn.Module, state_dict: dict, strict: bool = False):
    """Load a MosaicBERT state dict (HF-style keys, or Composer's with a leading `model.`) into `model`.

    Returns (missing_keys, unexpected_keys) as lists; callers must report them. Keys that never hold
    information are not reported: non-persistent buffers from older code (`*.alibi`, `*.token_type_ids`,
    `*.position_ids`). With strict=True, a nonempty list raises RuntimeError instead.
    """
    cleaned = {}
    for k, v in state_dict.items():
        if k.startswith("model."):
            k = k[len("model."):]
        if k.endswith((".alibi", "embeddings.token_type_ids", "embeddings.position_ids")):
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
        unexpected = [k for k in unexpected if not k.startswith(("cls.", "classifier."))]
    if strict and (missing or unexpected):
        raise RuntimeError(f"state dict mismatch: missing={missing} unexpected={unexpected}")
    return missing, unexpected


MosaicBertConfig.register_for_auto_class()
MosaicBertModel.register_for_auto_class("AutoModel")
MosaicBertForMaskedLM.register_for_auto_class("AutoModelForMaskedLM")
MosaicBertForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
