"""Building blocks of a MosaicBERT encoder layer.

Module and attribute names mirror the published MosaicBERT checkpoints so their state dicts load unchanged:
    embeddings.{word_embeddings, token_type_embeddings, LayerNorm}
    encoder.layer.N.attention.self.Wqkv
    encoder.layer.N.attention.output.{dense, LayerNorm}
    encoder.layer.N.mlp.{gated_layers, wo, layernorm}

Inside the encoder every tensor is packed: [T, hidden] with T = number of real (non-padding) tokens.
Self-contained on purpose (torch + transformers + relative imports): `save_pretrained` copies this file.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.activations import ACT2FN

from .attention import AttentionContext
from .dropout import Dropout
from .padding import RowSelection, select_rows


class LowPrecisionLayerNorm(nn.LayerNorm):
    """LayerNorm that, under autocast, runs in the autocast dtype instead of fp32.

    Autocast normally upcasts layer_norm to fp32; MosaicBERT keeps it in bf16/fp16 for speed (one of the
    published changes). Outside autocast, or with enabled=False, it is a plain nn.LayerNorm.
    """

    def __init__(self, *args, low_precision: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.low_precision = low_precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device_type = x.device.type
        if not (self.low_precision and torch.is_autocast_enabled(device_type)):
            return super().forward(x)
        dtype = torch.get_autocast_dtype(device_type)
        with torch.autocast(device_type=device_type, enabled=False):
            return F.layer_norm(
                x.to(dtype),
                self.normalized_shape,
                self.weight.to(dtype) if self.weight is not None else None,
                self.bias.to(dtype) if self.bias is not None else None,
                self.eps,
            )


def make_layernorm(config, eps: float | None = None) -> LowPrecisionLayerNorm:
    return LowPrecisionLayerNorm(
        config.hidden_size,
        eps=config.layer_norm_eps if eps is None else eps,
        low_precision=config.low_precision_layernorm,
    )


class MosaicBertEmbeddings(nn.Module):
    """word + token-type embeddings, LayerNorm, dropout. No position embeddings: ALiBi encodes position."""

    def __init__(self, config):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=config.pad_token_id)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = make_layernorm(config)
        self.dropout = Dropout(config.hidden_dropout_prob, config.dropout_kernel)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        # input_ids, token_type_ids: [T] (packed real tokens) -> [T, hidden], or [B, S] -> [B, S, hidden]
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_embeddings(input_ids) + self.token_type_embeddings(token_type_ids)
        return self.dropout(self.LayerNorm(x))


class MosaicBertSelfAttention(nn.Module):
    """Fused QKV projection + attention through the chosen backend. Checkpoint name: attention.self."""

    def __init__(self, config):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        # One matmul for Q, K and V: output columns are [Q | K | V], each head-major ([H, D]).
        self.Wqkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.p_dropout = config.attention_probs_dropout_prob

    def forward(self, x: torch.Tensor, ctx: AttentionContext, backend) -> torch.Tensor:
        # x: [T, hidden] -> [T, hidden]
        qkv = self.Wqkv(x).view(-1, 3, self.num_heads, self.head_dim)  # [T, 3, H, D]
        dropout_p = self.p_dropout if self.training else 0.0
        out = backend.attend(qkv, ctx, dropout_p)  # [T, H, D]
        return out.reshape(x.shape[0], -1)


class MosaicBertSelfOutput(nn.Module):
    """Output projection, dropout, post-LayerNorm on the residual. Checkpoint name: attention.output."""

    def __init__(self, config):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = make_layernorm(config)
        self.dropout = Dropout(config.hidden_dropout_prob, config.dropout_kernel)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(h)) + residual)  # [T, hidden]


class MosaicBertAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.self = MosaicBertSelfAttention(config)
        self.output = MosaicBertSelfOutput(config)

    def forward(self, x: torch.Tensor, ctx: AttentionContext, backend, rows: RowSelection | None = None):
        # x: [T, hidden] -> [T, hidden], or [M, hidden] for the selected rows
        a = self.self(x, ctx, backend)  # [T, hidden]: the keys and values of every token are needed
        if rows is not None:  # from here on, row by row: only the selected rows
            a, x = select_rows(a, rows), select_rows(x, rows)  # [M, hidden]
        return self.output(a, x)


class MosaicBertGatedMLP(nn.Module):
    """GeGLU feed-forward with post-LayerNorm: LN(x + wo(drop(act(x W_g) * (x W_v)))).

    `gated_layers.weight` holds both projections (no bias), rows [gate | value], as in the published checkpoints.
    They run as two matmuls on the two halves rather than one [T, 2I] matmul that is split: same math, but the
    backward needs no cat of the two gradient halves: 7% faster per compiled training step on an H200 (method:
    benchmarks/README.md).
    """

    def __init__(self, config):
        super().__init__()
        self.intermediate_size = config.intermediate_size
        self.gated_layers = nn.Linear(config.hidden_size, 2 * config.intermediate_size, bias=False)
        self.act = ACT2FN[config.hidden_act]
        self.wo = nn.Linear(config.intermediate_size, config.hidden_size)
        self.dropout = Dropout(config.hidden_dropout_prob, config.dropout_kernel)
        self.layernorm = make_layernorm(config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: [T, hidden]
        w = self.gated_layers.weight  # [2I, hidden]
        gate = F.linear(x, w[: self.intermediate_size])  # [T, I]
        value = F.linear(x, w[self.intermediate_size :])  # [T, I]
        h = self.dropout(self.act(gate) * value)
        return self.layernorm(self.wo(h) + x)  # [T, hidden]


class MosaicBertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.attention = MosaicBertAttention(config)
        self.mlp = MosaicBertGatedMLP(config)

    def forward(self, x: torch.Tensor, ctx: AttentionContext, backend, rows: RowSelection | None = None):
        """x: [T, hidden] -> [T, hidden]. With `rows` (the sparse last layer of MLM training): attention for every
        token, then output projection, LayerNorms and feed-forward only for the selected rows -> [M, hidden],
        zero rows where rows.keep is False. The same values as computing all rows and selecting afterwards."""
        out = self.mlp(self.attention(x, ctx, backend, rows))
        if rows is not None:
            out = out.masked_fill(~rows.keep[:, None], 0.0)  # what selecting the padded output gives there
        return out
