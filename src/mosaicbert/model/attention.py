"""ALiBi and the attention backends.

Every backend computes the same function on the packed (unpadded) tokens of one batch:

    out[i] = softmax_j( q_i . k_j / sqrt(D) - slope_h * |pos_i - pos_j| + mask_j ) @ v_j

where j runs over the real tokens of the same sequence, pos is the position inside the padded row and
mask_j is 0 for real keys and "minus infinity" for padding. A row that packs several documents (`sequence_id`)
holds one sequence per document: its tokens attend to their own document only, and since the bias depends on
|pos_i - pos_j| alone, ALiBi distances restart with each document. Backends differ only in the kernel:

  "flash_attn"  flash-attn >= 2.4 varlen kernel with native ALiBi slopes (CUDA, fp16/bf16), no padding at all
  "sdpa"        torch scaled_dot_product_attention on re-padded [B, H, S, D] with an additive float bias
  "flex"        torch FlexAttention on the packed tokens: ALiBi score_mod + same-sequence block mask (GPU)
  "torch"       reference: padded matmul -> + bias -> softmax in fp32 -> matmul (runs anywhere)
  "triton"      our own varlen ALiBi kernel (triton_attention.py), no padding at all (CUDA; fp16/bf16 for "auto")

"auto" picks the first backend of `AUTO_PREFERENCE` (fastest first) that is installed and fits the inputs:
triton (CUDA on Ampere or newer, fp16/bf16, supported head dim, no attention dropout), flash_attn (CUDA on Ampere
or newer, fp16/bf16, head dim <= 256, with attention dropout), sdpa (CUDA), torch (anywhere). The order is the
measured one (benchmarks/flash_attn_gpu.sh; the numbers are in benchmarks/README.md).

The registry `ATTENTION_BACKENDS` is a plain dict so new kernels are a function plus one entry.

Self-contained on purpose (torch + stdlib + relative imports): `save_pretrained` copies this file.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .padding import UnpadInfo, max_seqlen_bound, pad_rows, unpad_rows
from .triton_attention import (  # triton guarded there
    HAS_TRITON,
    SUPPORTED_HEAD_DIMS,
    TRITON_INTERPRET,
    triton_attention,
)

logger = logging.getLogger("mosaicbert")

# flash-attn is optional (CUDA only). Imported in a try block so that transformers' remote-code import check
# does not require it.
try:
    import flash_attn
    from flash_attn import flash_attn_varlen_qkvpacked_func

    _FLASH_VERSION = tuple(int(x) for x in flash_attn.__version__.split(".")[:2] if x.isdigit())
    HAS_FLASH_ATTN = _FLASH_VERSION >= (2, 4)  # alibi_slopes appeared in 2.4
    # a build restricted to some head dims (benchmarks/build_flash_attn.sh) names them; pip's build has every one
    FLASH_HEAD_DIMS = getattr(flash_attn, "KERNEL_HEAD_DIMS", None)
except ImportError:
    flash_attn_varlen_qkvpacked_func = None
    HAS_FLASH_ATTN = False
    FLASH_HEAD_DIMS = None


def flash_fits(head_dim: int | None, dropout_p: float = 0.0) -> bool:
    """flash-attn 2 has kernels for head dims up to 256, or only for those a restricted build names."""
    if head_dim is None:
        return True
    return head_dim in FLASH_HEAD_DIMS if FLASH_HEAD_DIMS is not None else head_dim <= 256

try:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    HAS_FLEX_ATTN = True
except ImportError:
    create_block_mask = flex_attention = None
    HAS_FLEX_ATTN = False


# ----------------------------------------------------------------------------------------------------------
# ALiBi


def alibi_slopes(num_heads: int) -> list[float]:
    """Per-head slopes from the ALiBi paper (Press et al. 2022).

    Power of two n: geometric sequence starting at 2^(-8/n) with the same ratio. Otherwise: the slopes of the
    closest lower power of two, then every other slope of the next power of two
    (12 heads: 2^-1 ... 2^-8, then 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5).
    """

    def power_of_2(n: int) -> list[float]:
        start = 2.0 ** (-8.0 / n)
        return [start ** (i + 1) for i in range(n)]

    if num_heads & (num_heads - 1) == 0:
        return power_of_2(num_heads)
    closest = 2 ** math.floor(math.log2(num_heads))
    return power_of_2(closest) + power_of_2(2 * closest)[0::2][: num_heads - closest]


def alibi_matrix(slopes: torch.Tensor, size: int) -> torch.Tensor:
    """[H] slopes -> [H, size, size] symmetric bias -slope * |i - j| (fp32)."""
    pos = torch.arange(size, device=slopes.device)
    dist = (pos[None, :] - pos[:, None]).abs().to(torch.float32)  # [size, size]
    return -slopes.to(torch.float32)[:, None, None] * dist[None]


class AlibiCache:
    """Holds the slopes and the [H, n, n] bias matrix, growing it when a longer sequence shows up.

    Deliberately not a buffer: nothing to save in checkpoints, and nothing for meta-device init to lose.
    """

    def __init__(self, num_heads: int, starting_size: int):
        self.num_heads = num_heads
        self.starting_size = starting_size
        self._slopes: torch.Tensor | None = None  # [H] fp32
        self._matrix: torch.Tensor | None = None  # [H, n, n] fp32

    def slopes(self, device: torch.device) -> torch.Tensor:
        if self._slopes is None or self._slopes.device != device:
            self._slopes = torch.tensor(alibi_slopes(self.num_heads), dtype=torch.float32, device=device)
        return self._slopes

    def matrix(self, seqlen: int, device: torch.device) -> torch.Tensor:
        """[H, seqlen, seqlen] view of the cached matrix; rebuilt (bigger) if the sequence is longer."""
        m = self._matrix
        if m is None or m.device != device or m.shape[-1] < seqlen:
            size = max(seqlen, self.starting_size, 0 if m is None else m.shape[-1])
            if m is not None and m.shape[-1] < seqlen:
                logger.info("ALiBi bias grown from %d to %d positions", m.shape[-1], size)
            self._matrix = m = alibi_matrix(self.slopes(device), size)
        return m[:, :seqlen, :seqlen]


# ----------------------------------------------------------------------------------------------------------
# Per-forward context shared by all layers (built once by the encoder)


@dataclass
class AttentionContext:
    info: UnpadInfo  # indices / cu_seqlens / max_seqlen / batch / seqlen
    attention_mask: torch.Tensor  # [B, S] bool, True = real token
    alibi: AlibiCache
    num_heads: int
    cache: dict = field(default_factory=dict)  # per-backend tensors built lazily once per forward

    def padded_bias(self, dtype: torch.dtype) -> torch.Tensor:
        """[B, H, S, S] additive bias = ALiBi + key padding mask (+ other documents of a packed row), in `dtype`.

        Padding uses min/2 of the dtype instead of -inf: finite, so fully padded rows give a uniform softmax
        instead of NaN (NaN would leak into key gradients), and adding ALiBi cannot overflow to -inf.
        """
        key = ("padded_bias", dtype)
        if key not in self.cache:
            mask = self.attention_mask
            S = mask.shape[1]
            neg = torch.finfo(dtype).min / 2
            key_bias = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
            key_bias = key_bias.masked_fill(~mask, neg)  # [B, S]
            bias = self.alibi.matrix(S, mask.device)[None] + key_bias[:, None, None, :]  # [B, H, S, S]
            if self.info.documents is not None:  # packed rows: each token attends to its own document only
                doc = self.info.documents.view(-1, S)  # [B, S]
                other = doc[:, :, None] != doc[:, None, :]  # [B, S, S]
                bias = bias.masked_fill(other[:, None], neg)
            self.cache[key] = bias.to(dtype)
        return self.cache[key]


def _pad_qkv(qkv: torch.Tensor, info: UnpadInfo):
    """[T, 3, H, D] packed -> q, k, v each [B, H, S, D] (zeros at padded positions)."""
    qkv = pad_rows(qkv, info)  # [B, S, 3, H, D], one gather for q, k and v together
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def _unpad_heads(out: torch.Tensor, info: UnpadInfo) -> torch.Tensor:
    """[B, H, S, D] -> [T, H, D]."""
    return unpad_rows(out.transpose(1, 2), info)  # one gather (a view for SDPA's BSHD-strided outputs)


# ----------------------------------------------------------------------------------------------------------
# Backends: attend(qkv [T, 3, H, D], ctx, dropout_p) -> [T, H, D]


def torch_attention(qkv: torch.Tensor, ctx: AttentionContext, dropout_p: float) -> torch.Tensor:
    """Reference implementation; softmax in fp32 whatever the input dtype."""
    q, k, v = _pad_qkv(qkv, ctx.info)  # [B, H, S, D]
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)  # [B, H, S, S]
    scores = scores.float() + ctx.padded_bias(torch.float32)
    probs = torch.softmax(scores, dim=-1).to(v.dtype)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    out = torch.matmul(probs, v)  # [B, H, S, D]
    return _unpad_heads(out, ctx.info)


def sdpa_attention(qkv: torch.Tensor, ctx: AttentionContext, dropout_p: float) -> torch.Tensor:
    """torch SDPA with an additive float mask (memory-efficient kernel on CUDA, math kernel on CPU)."""
    q, k, v = _pad_qkv(qkv, ctx.info)  # [B, H, S, D]
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.padded_bias(q.dtype), dropout_p=dropout_p)
    return _unpad_heads(out, ctx.info)


def flash_attention(qkv: torch.Tensor, ctx: AttentionContext, dropout_p: float) -> torch.Tensor:
    """flash-attn varlen on the packed tokens; no padding is ever materialised.

    flash-attn's ALiBi (docs of flash_attn_varlen_func): a bias of -slope * |i + seqlen_k - seqlen_q - j| is
    added to the (scaled) score of query i and key j when causal=False; with seqlen_q == seqlen_k that is
    exactly -slope * |i - j|, our symmetric bias. Positions count from the first real token of each sequence,
    which equals the padded position for right-padded batches (the only kind BERT data produces).
    """
    info = ctx.info
    out = flash_attn_varlen_qkvpacked_func(
        qkv,  # [T, 3, H, D]
        info.cu_seqlens,
        max_seqlen_bound(info),
        dropout_p=dropout_p,
        softmax_scale=None,  # 1/sqrt(D)
        causal=False,
        alibi_slopes=ctx.alibi.slopes(qkv.device),  # [H] fp32
    )
    return out  # [T, H, D]


_compiled_flex = None
_compiled_block_mask = None


def _get_flex():
    # flex_attention must be compiled to get the fused kernel (eager falls back to a slow math path).
    # dynamic=True: the packed length T changes every batch; avoid one recompile per length.
    global _compiled_flex, _compiled_block_mask
    if _compiled_flex is None:
        _compiled_flex = torch.compile(flex_attention, dynamic=True)
        # evaluating mask_mod over T x T eagerly costs ~10 ms at T=32k; compiled it is a few ms
        _compiled_block_mask = torch.compile(create_block_mask, dynamic=True)
    return _compiled_flex, _compiled_block_mask


def flex_attention_backend(qkv: torch.Tensor, ctx: AttentionContext, dropout_p: float) -> torch.Tensor:
    """FlexAttention on the packed tokens as one long "document-masked" sequence [1, H, T, D]."""
    if dropout_p > 0.0:
        raise ValueError(
            "attention_backend='flex' does not support attention dropout; set attention_probs_dropout_prob=0.0 "
            "or use another backend"
        )
    info = ctx.info
    if "flex" not in ctx.cache:
        # [T] which sequence (row, or document of a packed row) each token belongs to
        doc = (info.indices // info.seqlen if info.documents is None else info.documents[info.indices]).to(torch.int32)
        if info.valid_rows is not None:  # dummy rows (T rounded up) attend among themselves only
            doc = doc.masked_fill(~info.valid_rows, -1)
        pos = (info.indices % info.seqlen).to(torch.int32)  # [T] position inside its (padded) row
        slopes = ctx.alibi.slopes(qkv.device)  # [H]

        def score_mod(score, b, h, q_idx, kv_idx):
            return score - slopes[h] * (pos[q_idx] - pos[kv_idx]).abs()

        def mask_mod(b, h, q_idx, kv_idx):
            return doc[q_idx] == doc[kv_idx]

        T = qkv.shape[0]
        block_mask = _get_flex()[1](mask_mod, B=None, H=None, Q_LEN=T, KV_LEN=T, device=qkv.device)
        ctx.cache["flex"] = (score_mod, block_mask)
    score_mod, block_mask = ctx.cache["flex"]
    q, k, v = qkv.permute(1, 2, 0, 3).unsqueeze(1).unbind(0)  # each [1, H, T, D]
    out = _get_flex()[0](q, k, v, score_mod=score_mod, block_mask=block_mask)  # [1, H, T, D]
    return out[0].transpose(0, 1)  # [T, H, D]


# ----------------------------------------------------------------------------------------------------------
# Registry and dispatch


def cuda_capability(device: torch.device) -> tuple[int, int]:
    """(major, minor) of a CUDA device. "auto" uses the triton kernel from Ampere (8.0) on: it is only measured
    on Hopper, and older GPUs lack bf16 tensor cores. flash-attn 2 needs Ampere too."""
    props = torch.cuda.get_device_properties(device)  # torch.compile constant-folds this call (no graph break)
    return props.major, props.minor


def _any_shape(head_dim: int | None, attention_dropout: float) -> bool:
    return True


@dataclass(frozen=True)
class AttentionBackend:
    name: str
    attend: Callable[[torch.Tensor, AttentionContext, float], torch.Tensor]
    installed: Callable[[], bool]  # can it be imported at all?
    usable: Callable[[torch.device, torch.dtype], bool]  # can "auto" pick it for inputs on this device and dtype?
    # ... and for this head dim (None: unknown) and attention dropout (the probability that will be applied)?
    fits: Callable[[int | None, float], bool] = _any_shape
    needs_alibi_matrix: bool = False  # reads the [H, S, S] bias (padded backends); others use the slopes only


def _cuda_16bit(dev: torch.device, dt: torch.dtype) -> bool:
    return dev.type == "cuda" and dt in (torch.float16, torch.bfloat16)


ATTENTION_BACKENDS: dict[str, AttentionBackend] = {
    # flash-attn 2 runs on Ampere or newer, head dims up to 256 (pip's build) or those of a restricted build
    "flash_attn": AttentionBackend("flash_attn", flash_attention, installed=lambda: HAS_FLASH_ATTN,
                                   usable=lambda dev, dt: HAS_FLASH_ATTN and _cuda_16bit(dev, dt)
                                   and cuda_capability(dev) >= (8, 0),
                                   fits=flash_fits),
    # on CPU "auto" prefers the torch reference (fp32 softmax) to sdpa's math path
    "sdpa": AttentionBackend("sdpa", sdpa_attention, installed=lambda: True,
                             usable=lambda dev, dt: dev.type == "cuda", needs_alibi_matrix=True),
    "flex": AttentionBackend("flex", flex_attention_backend, installed=lambda: HAS_FLEX_ATTN,
                             usable=lambda dev, dt: HAS_FLEX_ATTN and dev.type == "cuda"),
    "torch": AttentionBackend("torch", torch_attention, installed=lambda: True, usable=lambda dev, dt: True,
                              needs_alibi_matrix=True),
    "triton": AttentionBackend("triton", triton_attention, installed=lambda: HAS_TRITON,
                               usable=lambda dev, dt: HAS_TRITON and _cuda_16bit(dev, dt)
                               and cuda_capability(dev) >= (8, 0),
                               # the kernel has no attention dropout
                               fits=lambda head_dim, p: head_dim in SUPPORTED_HEAD_DIMS and p == 0.0),
}
VALID_BACKENDS = ("auto", *ATTENTION_BACKENDS)

# The order in which "auto" tries the backends, fastest first: it picks the first one installed, usable on the
# inputs' device and dtype, and fitting their head dim and attention dropout. "torch" runs anything, so "auto" always
# resolves; "flex" runs only when named.
AUTO_PREFERENCE: tuple[str, ...] = ("triton", "flash_attn", "sdpa", "torch")

_logged: set[str] = set()


def check_backend_name(name: str) -> None:
    if name not in VALID_BACKENDS:
        raise ValueError(f"attention_backend={name!r} is not valid; choose one of {list(VALID_BACKENDS)}")


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype, head_dim: int | None = None,
                    attention_dropout: float = 0.0) -> AttentionBackend:
    """Map the configured name (possibly "auto") to a backend for inputs on `device` computed in `dtype`.
    head_dim / attention_dropout (the dropout that will be applied) let "auto" rule out backends that do not
    support them (`AttentionBackend.fits`)."""
    check_backend_name(name)
    if name == "auto":
        for chosen in AUTO_PREFERENCE:
            backend = ATTENTION_BACKENDS[chosen]
            if backend.installed() and backend.usable(device, dtype) and backend.fits(head_dim, attention_dropout):
                return backend
        raise ValueError(f"attention_backend='auto': no backend of {AUTO_PREFERENCE} fits device={device} "
                         f"dtype={dtype} head_dim={head_dim} attention_dropout={attention_dropout}")
    backend = ATTENTION_BACKENDS[name]
    if not backend.installed():
        raise ValueError(f"attention_backend={name!r} requested but it is not available (not installed)")
    if name == "flash_attn" and not backend.usable(device, dtype):
        raise ValueError(
            f"attention_backend='flash_attn' needs CUDA fp16/bf16 inputs on an Ampere or newer GPU, got "
            f"device={device} dtype={dtype} (run under torch.autocast or use attention_backend='auto')"
        )
    if name == "flash_attn" and not flash_fits(head_dim):
        raise ValueError(f"attention_backend='flash_attn': this flash-attn build has kernels for head dims "
                         f"{list(FLASH_HEAD_DIMS)} only, the model's is {head_dim} (rebuild it with that head dim, or "
                         "use attention_backend='auto')")
    if name == "triton" and device.type != "cuda" and not TRITON_INTERPRET:
        raise ValueError(
            f"attention_backend='triton' needs CUDA, got device={device} "
            "(on CPU it runs only under the Triton interpreter, TRITON_INTERPRET=1)"
        )
    return backend


def log_backend_choice(configured: str, chosen: str, device: torch.device, dtype: torch.dtype,
                       attention_dropout: float = 0.0, without_dropout: str | None = None) -> None:
    """Log the resolved backend once per (configured, chosen, device type, dropout). Call it outside torch.compile'd
    code: a logging call inside a compiled region is a graph break (the model calls it from its eager prepare step).

    With attention dropout (attention_probs_dropout_prob > 0, in training) also say so, and name the backend that
    would run without it when that differs: the triton kernel has no dropout, so "auto" takes the next backend
    of AUTO_PREFERENCE that fits."""
    key = f"{configured}->{chosen}@{device.type}:{attention_dropout}"
    if key in _logged:
        return
    _logged.add(key)
    logger.info("MosaicBERT attention backend: %s (configured %r, device %s, dtype %s)",
                chosen, configured, device.type, dtype)
    if attention_dropout > 0.0:
        hint = ""
        if without_dropout is not None and without_dropout != chosen:
            hint = (f"; {without_dropout!r}, faster, has no attention dropout: set attention_probs_dropout_prob=0 "
                    f"to use it")
        logger.warning("MosaicBERT attention dropout %g (attention_probs_dropout_prob) selects attention backend "
                       "%r in training%s", attention_dropout, chosen, hint)
