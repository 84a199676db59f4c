"""Dropout with a cheap random mask: a Triton kernel draws 8 keep/drop decisions per Philox call.

Why: under torch.compile, inductor fuses dropout into the neighbouring kernel but draws one Philox-4x32-10 value
per element, so the random numbers, not the memory traffic, set the speed. MosaicBERT drops out the [T, 3072]
GeGLU output of every layer; on an H200 that makes the fused GeGLU forward kernel 2.9x slower than without
dropout (measurements: benchmarks/README.md). Here one Philox call gives four 32-bit words, split into eight
16-bit numbers, so the mask costs 1/8 of the Philox work and is written once as a bool tensor. The dropout itself
stays a plain multiply that inductor fuses with its neighbours, and autograd saves the mask for the backward.

Each element is kept when its 16-bit number is >= round(p * 65536): the drop probability is p rounded to a
multiple of 1/65536 (0.1 -> 0.100006). Element i of the flattened tensor takes half (i % 2) of word (i % 8) // 2
of Philox counter i // 8, so the mask is a function of (seed, numel, p) alone, whatever the launch's block size.
The seed is drawn from torch's generator on the tensor's device, so torch.manual_seed makes runs repeatable.

Self-contained on purpose (torch + triton + stdlib): `save_pretrained` copies this file next to the weights.
Run on CPU with TRITON_INTERPRET=1 set before this module is imported (that is how the tests run it).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .configuration_mosaic_bert import DROPOUT_KERNEL_NAMES
from .triton_attention import HAS_TRITON, TRITON_INTERPRET, tl, triton  # the guarded triton import

_BLOCK = 2048  # elements per program (256 Philox calls)

if HAS_TRITON:

    @triton.jit
    def _keep_mask_kernel(SEED, KEEP, N, threshold, BLOCK: tl.constexpr):
        # KEEP[i] = (16-bit random number of element i) >= threshold, for the N elements of a flat bool tensor.
        # This program's BLOCK elements as a [BLOCK // 8, 8] tile: element i = 8 * (Philox counter) + lane takes
        # the 16-bit half (lane % 2) of word lane // 2.
        GROUPS: tl.constexpr = BLOCK // 8
        group = tl.program_id(0).to(tl.int64) * GROUPS + tl.arange(0, GROUPS)  # [G] Philox counters
        r0, r1, r2, r3 = tl.randint4x(tl.load(SEED), group)  # 4 x [G] uint32
        lane = tl.arange(0, 8)[None, :]  # [1, 8]
        word = tl.where(lane < 2, r0[:, None], tl.where(lane < 4, r1[:, None],
                                                         tl.where(lane < 6, r2[:, None], r3[:, None])))  # [G, 8]
        bits = tl.where(lane % 2 == 0, word & 0xFFFF, word >> 16)
        offs = group[:, None] * 8 + lane
        tl.store(KEEP + offs, bits >= threshold, mask=offs < N)


def drop_threshold(p: float) -> int:
    """16-bit threshold below which an element is dropped: round(p * 65536)."""
    return int(round(float(p) * 65536))


def _launch_keep_mask(seed: torch.Tensor, shape, p: float) -> torch.Tensor:
    # Called as is under torch.compile too: dynamo traces the launch of this user-defined Triton kernel and inductor
    # launches it from its generated code. (A torch.library custom op around it costs ~0.2 ms of host time per call,
    # 25 calls per forward, and leaves the GPU waiting.)
    keep = torch.empty(shape, dtype=torch.bool, device=seed.device)
    n = keep.numel()
    if n > 0:
        _keep_mask_kernel[((n + _BLOCK - 1) // _BLOCK,)](seed, keep, n, drop_threshold(p), BLOCK=_BLOCK)
    return keep


def dropout_keep_mask(seed: torch.Tensor, shape, p: float) -> torch.Tensor:
    """Bool keep-mask of `shape` from a 1-element int64 `seed` tensor (on the device the mask is made on)."""
    if not HAS_TRITON:
        raise RuntimeError("dropout_kernel='triton' needs the triton package")
    if not (seed.is_cuda or TRITON_INTERPRET):
        raise ValueError(f"dropout_kernel='triton' needs CUDA tensors (or TRITON_INTERPRET=1), got {seed.device}")
    if seed.numel() != 1 or seed.dtype != torch.int64:
        raise ValueError(f"seed must be a 1-element int64 tensor, got {seed.dtype} of shape {tuple(seed.shape)}")
    return _launch_keep_mask(seed, tuple(shape), float(p))


def triton_dropout_available(device: torch.device) -> bool:
    return HAS_TRITON and (device.type == "cuda" or TRITON_INTERPRET)


def triton_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Training-mode dropout of x with the Triton mask: x * keep / (1 - p)."""
    seed = torch.randint(0, 2**62, (1,), device=x.device, dtype=torch.int64)
    keep = dropout_keep_mask(seed, x.shape, p)
    return x * keep * (1.0 / (1.0 - p))


class Dropout(nn.Module):
    """nn.Dropout with a choice of mask kernel (config.dropout_kernel):
    "torch" = F.dropout; "triton" = the kernel above (CUDA, or the interpreter); "auto" = triton where available.
    Same semantics: identity in eval mode or with p == 0, else zero with probability p and scale by 1 / (1 - p).
    """

    def __init__(self, p: float, kernel: str = "auto"):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        if kernel not in DROPOUT_KERNEL_NAMES:
            raise ValueError(f"dropout_kernel={kernel!r} is not valid; choose one of {list(DROPOUT_KERNEL_NAMES)}")
        self.p = float(p)
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        if self.kernel == "torch" or (self.kernel == "auto" and not triton_dropout_available(x.device)):
            return F.dropout(x, self.p, training=True)
        return triton_dropout(x, self.p)

    def extra_repr(self) -> str:
        return f"p={self.p}, kernel={self.kernel!r}"
