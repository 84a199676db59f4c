"""Experiment for issue 4: GeGLU and its dropout in one Triton kernel each way (benchmark variant, not in the model).

    h = dropout(gelu(gate) * up)                  gate, up: [T, I] (the two matmul outputs of the MLP)

The model's path (model/layers.py + model/dropout.py) writes a bool keep-mask in one kernel, then inductor fuses
gelu * up * mask in a second, and the backward reads the saved mask. Here the forward kernel draws the same kind of
mask on the fly (8 decisions per Philox call, the layout of `model/dropout.py`) and the backward draws it again
from the same seed, so no mask is written or read and no mask kernel runs: on MosaicBERT-base, ~2 x 90 MB less
memory traffic per layer and 12 fewer launches per step.

`throughput.py --variants fused_geglu_dropout` patches MosaicBertGatedMLP.forward with it. Tested against a plain
reference under the Triton interpreter (tests/test_fused_geglu_dropout.py).

Measured on the H200 (benchmarks/RESULTS.md, session 5): not adopted. The whole step gained 0.6 ms of 51 (1.2%), but
the kernels alone, at their best launch configuration (`python benchmarks/fused_geglu_dropout.py`), save only
0.02 ms per layer against the model's mask kernel + inductor's kernels: drawing the mask inside the GeGLU kernel
makes it compute-bound (2.9 TB/s against inductor's 3.9).
"""

from __future__ import annotations

import torch

from mosaicbert.model.dropout import HAS_TRITON, drop_threshold

if HAS_TRITON:
    import triton
    import triton.language as tl

    from mosaicbert.model.dropout import keep_tile  # the model's mask, element for element

    _BLOCK = 1024  # elements per program (128 Philox calls)

    @triton.jit
    def _load_tile(SEED, BLOCK: tl.constexpr, threshold, N, GATE, UP):
        offs, keep = keep_tile(SEED, BLOCK, threshold)
        inb = offs < N
        g = tl.load(GATE + offs, mask=inb, other=0.0).to(tl.float32)
        u = tl.load(UP + offs, mask=inb, other=0.0).to(tl.float32)
        return offs, inb, keep, g, u

    @triton.jit
    def _geglu_dropout_fwd_kernel(GATE, UP, OUT, SEED, N, threshold, scale, BLOCK: tl.constexpr):
        offs, inb, keep, g, u = _load_tile(SEED, BLOCK, threshold, N, GATE, UP)
        h = 0.5 * g * (1.0 + tl.math.erf(g * 0.7071067811865476)) * u  # erf GELU: x * Phi(x), Phi(x) = (1 + erf(x / sqrt 2)) / 2
        h = tl.where(keep, h * scale, 0.0)
        tl.store(OUT + offs, h.to(OUT.dtype.element_ty), mask=inb)

    @triton.jit
    def _geglu_dropout_bwd_kernel(DOUT, GATE, UP, DGATE, DUP, SEED, N, threshold, scale, BLOCK: tl.constexpr):
        offs, inb, keep, g, u = _load_tile(SEED, BLOCK, threshold, N, GATE, UP)
        d = tl.load(DOUT + offs, mask=inb, other=0.0).to(tl.float32)
        d = tl.where(keep, d * scale, 0.0)
        cdf = 0.5 * (1.0 + tl.math.erf(g * 0.7071067811865476))
        pdf = tl.exp(-0.5 * g * g) * 0.3989422804014327  # phi(x) = exp(-x^2 / 2) / sqrt(2 pi); GELU' = Phi + x phi
        tl.store(DUP + offs, (d * g * cdf).to(DUP.dtype.element_ty), mask=inb)
        tl.store(DGATE + offs, (d * u * (cdf + g * pdf)).to(DGATE.dtype.element_ty), mask=inb)


def _grid(n: int):
    return ((n + _BLOCK - 1) // _BLOCK,)


def _launch_bwd(dout, gate, up, seed, p: float):
    dout = dout.contiguous()
    dgate, dup = torch.empty_like(gate), torch.empty_like(up)
    n = gate.numel()
    if n > 0:
        _geglu_dropout_bwd_kernel[_grid(n)](dout, gate, up, dgate, dup, seed, n, drop_threshold(p), 1.0 / (1.0 - p),
                                            BLOCK=_BLOCK)
    return dgate, dup


# The backward runs as a torch.library custom op, opaque to inductor: traced as a user-defined Triton kernel in a
# compiled backward with dynamic T, inductor 2.11 failed on it (AssertionError in decompose_triton_kernel_wrapper_
# functional, benchmarks/RESULTS.md). The forward's launch is traced (as the model's mask kernel is), no op needed.
@torch.library.custom_op("mosaicbert_bench::geglu_dropout_bwd", mutates_args=())
def geglu_dropout_bwd(dout: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, seed: torch.Tensor,
                      p: float) -> tuple[torch.Tensor, torch.Tensor]:
    return _launch_bwd(dout, gate, up, seed, p)


@geglu_dropout_bwd.register_fake
def _(dout, gate, up, seed, p):
    return torch.empty_like(gate), torch.empty_like(up)


class FusedGegluDropout(torch.autograd.Function):
    """dropout(gelu(gate) * up, p) with the mask drawn from `seed` in the forward and drawn again in the backward."""

    @staticmethod
    def forward(ctx, gate, up, seed, p: float):
        gate, up = gate.contiguous(), up.contiguous()
        out = torch.empty_like(gate)
        n = gate.numel()
        if n > 0:
            _geglu_dropout_fwd_kernel[_grid(n)](gate, up, out, seed, n, drop_threshold(p), 1.0 / (1.0 - p),
                                                BLOCK=_BLOCK)
        ctx.save_for_backward(gate, up, seed)
        ctx.p = p
        return out

    @staticmethod
    def backward(ctx, dout):
        gate, up, seed = ctx.saved_tensors
        dgate, dup = geglu_dropout_bwd(dout, gate, up, seed, ctx.p)
        return dgate, dup, None, None


def fused_geglu_dropout(gate: torch.Tensor, up: torch.Tensor, p: float, seed: torch.Tensor | None = None):
    """[T, I] x 2 -> [T, I]. seed: 1-element int64 tensor; drawn from torch's generator when None."""
    if seed is None:
        seed = torch.randint(0, 2**62, (1,), device=gate.device, dtype=torch.int64)
    return FusedGegluDropout.apply(gate, up, seed, float(p))


def reference_geglu_dropout(gate: torch.Tensor, up: torch.Tensor, keep: torch.Tensor, p: float) -> torch.Tensor:
    """The plain computation with an explicit keep-mask (exact erf GELU, as hidden_act="gelu")."""
    return torch.nn.functional.gelu(gate) * up * keep / (1.0 - p)


def sweep(T: int = 29_500, inter: int = 3072, p: float = 0.1, reps: int = 20) -> list[dict]:
    """GPU: time the fused kernels per launch configuration (BLOCK, num_warps) on MosaicBERT-base's [T, 3072] bf16,
    against what the model runs now (the keep-mask kernel, then inductor's fused GeGLU * mask forward and its
    backward), and report the memory bandwidth each reaches."""
    import torch.nn.functional as F

    from mosaicbert.model.dropout import dropout_keep_mask

    dev = torch.device("cuda")
    gate, up, dout = (torch.randn(T, inter, device=dev, dtype=torch.bfloat16) for _ in range(3))
    seed = torch.tensor([7], device=dev, dtype=torch.int64)
    n, thr, scale = gate.numel(), drop_threshold(p), 1.0 / (1.0 - p)
    out, dgate, dup = (torch.empty_like(gate) for _ in range(3))

    from attention_backends import cuda_time_ms  # this script's folder is on sys.path when it runs

    def ms(fn) -> float:
        return cuda_time_ms(fn, iters=reps, warmup=3)

    rows = []

    def add(name, t, bytes_moved):
        rows.append(dict(kernel=name, ms=round(t, 4), tb_per_s=round(bytes_moved / t / 1e9, 2)))
        print(rows[-1], flush=True)

    for block in (1024, 2048, 4096, 8192):
        for warps in (4, 8, 16):
            grid = (triton.cdiv(n, block),)
            add(f"fused fwd BLOCK={block} warps={warps}", ms(lambda: _geglu_dropout_fwd_kernel[grid](
                gate, up, out, seed, n, thr, scale, BLOCK=block, num_warps=warps)), 3 * 2 * n)
            add(f"fused bwd BLOCK={block} warps={warps}", ms(lambda: _geglu_dropout_bwd_kernel[grid](
                dout, gate, up, dgate, dup, seed, n, thr, scale, BLOCK=block, num_warps=warps)), 5 * 2 * n)
    keep = dropout_keep_mask(seed, gate.shape, p)
    add("model: keep-mask kernel", ms(lambda: dropout_keep_mask(seed, gate.shape, p)), n)
    fwd = torch.compile(lambda g, u, k: F.gelu(g) * u * k * scale)

    def bwd_math(d, g, u, k):
        d = d.float() * k * scale
        g32, u32 = g.float(), u.float()
        cdf = 0.5 * (1.0 + torch.erf(g32 * 0.7071067811865476))
        pdf = torch.exp(-0.5 * g32 * g32) * 0.3989422804014327
        return (d * u32 * (cdf + g32 * pdf)).to(g.dtype), (d * g32 * cdf).to(u.dtype)

    bwd = torch.compile(bwd_math)
    add("model: inductor gelu*up*mask fwd", ms(lambda: fwd(gate, up, keep)), 3 * 2 * n + n)
    add("model: inductor gelu*up*mask bwd", ms(lambda: bwd(dout, gate, up, keep)), 5 * 2 * n + n)
    return rows


if __name__ == "__main__":
    import json
    import sys

    rows = sweep()
    if len(sys.argv) > 1:
        with open(sys.argv[1], "w") as fh:
            json.dump(dict(torch=torch.__version__, device=torch.cuda.get_device_name(), rows=rows), fh, indent=2)
