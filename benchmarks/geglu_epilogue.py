"""Experiment for issue 4: the GeGLU up-projection as one Triton matmul with the activation in its epilogue
(benchmark variant, not in the model).

    gate = x W_g^T,  value = x W_v^T,  h = dropout(gelu(gate) * value)      x: [T, hidden], W_g, W_v: [I, hidden]

The model runs two cuBLAS matmuls that write gate and value, then inductor's kernel reads them back to compute h.
Here one program computes the same [BLOCK_M, BLOCK_N] tile of gate and of value (two accumulators over the same
x tile) and writes gate, value and h from registers, so the [T, 2I] pre-activations are not read again in the
forward: on MosaicBERT-base ~360 MB less memory traffic and one launch fewer per layer. The step is bound by the
GPU's power limit (benchmarks/RESULTS.md, session 7), so bytes not moved are the lever left; the question this
answers is whether Triton's matmul is close enough to cuBLAS for that to pay.

The keep-mask is the model's (model/dropout.py, drawn by its own kernel) and is read in the epilogue; the backward
is plain torch (inductor fuses it as it does the model's) from the saved gate, value and mask.

`throughput.py --variants geglu_epilogue` patches MosaicBertGatedMLP.forward with it; the tile configuration comes
from GEGLU_EPILOGUE_BLOCKS ("MxNxK:warps:stages:group"). `python benchmarks/geglu_epilogue.py out.json` times the
configurations against the model's kernels. Tested against a plain reference under the Triton interpreter
(tests/test_geglu_epilogue.py).

Measured on the H200 (benchmarks/RESULTS.md, session 8): not adopted. The training step was 2.7% slower (51.6
against 50.2 ms). With TMA loads Triton's two matmuls take 0.459 ms per layer against cuBLAS's 0.389, and the
epilogue adds 0.22 ms after each tile's loop, so the kernel plus the mask takes 0.738 ms against the model's 0.609.
"""

from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F

from mosaicbert.model.dropout import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl

    @triton.jit
    def _geglu_up_kernel(X, W, KEEP, GATE, VALUE, OUT, T, scale, I: tl.constexpr, K: tl.constexpr,
                         HAS_DROPOUT: tl.constexpr, STORE_H: tl.constexpr, EVEN_K: tl.constexpr,
                         BLOCK_M: tl.constexpr,
                         BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr):
        # X: [T, K], W: [2I, K] (rows [gate | value]), all row-major and contiguous; GATE, VALUE, OUT, KEEP: [T, I]
        pid_m, pid_n = _tile(T, I, BLOCK_M, BLOCK_N, GROUP_M)
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # [BM] rows of x
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] columns of gate / value
        rk = tl.arange(0, BLOCK_K)
        # out-of-range rows/columns wrap onto valid ones, so the loads need no mask; the stores are masked
        x_ptrs = X + (rm % T).to(tl.int64)[:, None] * K + rk[None, :]  # [BM, BK]
        wg_ptrs = W + (rn % I).to(tl.int64)[None, :] * K + rk[:, None]  # [BK, BN]: W_g^T tile
        wv_ptrs = wg_ptrs + I * K  # W_v^T tile
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_v = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            if EVEN_K:
                a = tl.load(x_ptrs)
                bg = tl.load(wg_ptrs)
                bv = tl.load(wv_ptrs)
            else:
                k_in = rk < K - k * BLOCK_K
                a = tl.load(x_ptrs, mask=k_in[None, :], other=0.0)
                bg = tl.load(wg_ptrs, mask=k_in[:, None], other=0.0)
                bv = tl.load(wv_ptrs, mask=k_in[:, None], other=0.0)
            acc_g = tl.dot(a, bg, acc_g)
            acc_v = tl.dot(a, bv, acc_v)
            x_ptrs += BLOCK_K
            wg_ptrs += BLOCK_K
            wv_ptrs += BLOCK_K
        _epilogue(acc_g, acc_v, rm, rn, KEEP, GATE, VALUE, OUT, T, I, scale, HAS_DROPOUT, STORE_H)

    @triton.jit
    def _geglu_up_tma_kernel(x_desc, wg_desc, wv_desc, KEEP, GATE, VALUE, OUT, T, scale, I: tl.constexpr,
                             K: tl.constexpr, HAS_DROPOUT: tl.constexpr, STORE_H: tl.constexpr,
                             BLOCK_M: tl.constexpr,
                             BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                             WARP_SPECIALIZE: tl.constexpr):
        # The same tile, its operands fetched by the tensor-memory accelerator (Hopper's TMA; rows past T read as 0)
        pid_m, pid_n = _tile(T, I, BLOCK_M, BLOCK_N, GROUP_M)
        off_m, off_n = pid_m * BLOCK_M, pid_n * BLOCK_N
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_v = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in tl.range(0, tl.cdiv(K, BLOCK_K), warp_specialize=WARP_SPECIALIZE):
            a = x_desc.load([off_m, k * BLOCK_K])  # [BM, BK]
            acc_g = tl.dot(a, wg_desc.load([off_n, k * BLOCK_K]).T, acc_g)  # [BN, BK]^T
            acc_v = tl.dot(a, wv_desc.load([off_n, k * BLOCK_K]).T, acc_v)
        rm = off_m + tl.arange(0, BLOCK_M)
        rn = off_n + tl.arange(0, BLOCK_N)
        _epilogue(acc_g, acc_v, rm, rn, KEEP, GATE, VALUE, OUT, T, I, scale, HAS_DROPOUT, STORE_H)

    @triton.jit
    def _tile(T, I: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr):
        # this program's (row block, column block); GROUP_M row blocks walk the column blocks together, so their
        # x tiles stay in L2
        pid = tl.program_id(0)
        num_m, num_n = tl.cdiv(T, BLOCK_M), tl.cdiv(I, BLOCK_N)
        per_group = GROUP_M * num_n
        first_m = (pid // per_group) * GROUP_M
        group_rows = tl.minimum(num_m - first_m, GROUP_M)
        return first_m + (pid % per_group) % group_rows, (pid % per_group) // group_rows

    @triton.jit
    def _epilogue(acc_g, acc_v, rm, rn, KEEP, GATE, VALUE, OUT, T, I: tl.constexpr, scale,
                  HAS_DROPOUT: tl.constexpr, STORE_H: tl.constexpr):
        # h = gelu(gate) * value (exact erf GELU, as hidden_act="gelu"), masked and scaled; gate and value are
        # stored for the backward. STORE_H=False: only gate and value (the sweep's matmul-only timing)
        offs = rm.to(tl.int64)[:, None] * I + rn[None, :]  # [BM, BN]
        inb = (rm < T)[:, None] & (rn < I)[None, :]
        tl.store(GATE + offs, acc_g.to(GATE.dtype.element_ty), mask=inb)
        tl.store(VALUE + offs, acc_v.to(VALUE.dtype.element_ty), mask=inb)
        if STORE_H:
            h = 0.5 * acc_g * (1.0 + tl.math.erf(acc_g * 0.7071067811865476)) * acc_v
            if HAS_DROPOUT:
                keep = tl.load(KEEP + offs, mask=inb, other=0) != 0
                h = tl.where(keep, h * scale, 0.0)
            tl.store(OUT + offs, h.to(OUT.dtype.element_ty), mask=inb)


LOADERS = ("ptr", "tma", "tma_ws")  # pointer loads; TMA descriptors; TMA with warp specialization


def parse_blocks(spec: str) -> dict:
    """"MxNxK:warps:stages:group[:loader]" -> launch configuration, e.g. "128x128x64:8:3:8:tma"."""
    try:
        tiles, warps, stages, group, *loader = spec.split(":")
        m, n, k = (int(v) for v in tiles.split("x"))
        cfg = dict(BLOCK_M=m, BLOCK_N=n, BLOCK_K=k, num_warps=int(warps), num_stages=int(stages), GROUP_M=int(group),
                   loader=loader[0] if loader else "ptr")
        if len(loader) > 1 or cfg["loader"] not in LOADERS:
            raise ValueError
    except ValueError:
        raise ValueError(f"GeGLU epilogue blocks {spec!r} must look like MxNxK:warps:stages:group[:loader], "
                         f"loader one of {LOADERS}, e.g. 128x128x64:8:3:8:tma") from None
    for name in ("BLOCK_M", "BLOCK_N", "BLOCK_K"):
        if cfg[name] < 16 or cfg[name] & (cfg[name] - 1):
            raise ValueError(f"GeGLU epilogue blocks {spec!r}: {name} must be a power of two >= 16")
    return cfg


DEFAULT_BLOCKS = "128x128x64:8:4:8:tma"  # the fastest in session 8's sweep on the H200


def launch_config() -> dict:
    return parse_blocks(os.environ.get("GEGLU_EPILOGUE_BLOCKS") or DEFAULT_BLOCKS)


def geglu_up_forward(x: torch.Tensor, w: torch.Tensor, keep: torch.Tensor | None, scale: float,
                     cfg: dict | None = None, store_h: bool = True):
    """x: [T, K], w: [2I, K] (same dtype) -> gate, value, h: [T, I] each. keep: [T, I] bool or None (no dropout).
    store_h=False leaves h unwritten (times the two matmuls alone)."""
    cfg = dict(cfg or launch_config())
    x, w = x.contiguous(), w.contiguous()
    T, K = x.shape
    inter = w.shape[0] // 2
    gate, value, h = (torch.empty(T, inter, device=x.device, dtype=x.dtype) for _ in range(3))
    if T == 0:
        return gate, value, h
    loader = cfg.pop("loader")
    grid = (triton.cdiv(T, cfg["BLOCK_M"]) * triton.cdiv(inter, cfg["BLOCK_N"]),)
    outputs = (keep if keep is not None else h, gate, value, h, T, scale, inter, K)
    if loader == "ptr":
        _geglu_up_kernel[grid](x, w, *outputs, HAS_DROPOUT=keep is not None, STORE_H=store_h,
                               EVEN_K=K % cfg["BLOCK_K"] == 0, **cfg)
    else:
        from triton.tools.tensor_descriptor import TensorDescriptor

        bm, bn, bk = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]
        x_desc = TensorDescriptor.from_tensor(x, [bm, bk])
        wg_desc, wv_desc = (TensorDescriptor.from_tensor(half, [bn, bk]) for half in (w[:inter], w[inter:]))
        _geglu_up_tma_kernel[grid](x_desc, wg_desc, wv_desc, *outputs, HAS_DROPOUT=keep is not None,
                                   STORE_H=store_h, WARP_SPECIALIZE=loader == "tma_ws", **cfg)
    return gate, value, h


def geglu_backward(dh, x, w, gate, value, keep, scale: float):
    """Gradients of h = drop(gelu(gate) * value) with gate, value = x W_g^T, x W_v^T, in plain torch."""
    d = dh.float() if keep is None else dh.float() * keep * scale
    g = gate.float()
    cdf = 0.5 * (1.0 + torch.erf(g * (1.0 / math.sqrt(2.0))))
    pdf = torch.exp(-0.5 * g * g) * (1.0 / math.sqrt(2.0 * math.pi))  # GELU'(g) = cdf + g * pdf
    dgate = (d * value.float() * (cdf + g * pdf)).to(dh.dtype)
    dvalue = (d * g * cdf).to(dh.dtype)
    inter = gate.shape[1]
    dx = dgate @ w[:inter] + dvalue @ w[inter:]
    dw = torch.cat([dgate.t() @ x, dvalue.t() @ x])
    return dx, dw


class GegluUpProjection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, keep, scale: float, cfg: dict | None):
        gate, value, h = geglu_up_forward(x, w, keep, scale, cfg)
        ctx.save_for_backward(x, w, gate, value, keep)
        ctx.scale = scale
        return h

    @staticmethod
    def backward(ctx, dh):
        x, w, gate, value, keep = ctx.saved_tensors
        dx, dw = geglu_backward(dh, x, w, gate, value, keep, ctx.scale)
        return dx, dw, None, None, None


def geglu_up_projection(x: torch.Tensor, w: torch.Tensor, p: float = 0.0, keep: torch.Tensor | None = None,
                        cfg: dict | None = None):
    """dropout(gelu(x W_g^T) * (x W_v^T)) with w = [W_g; W_v]: [T, K] -> [T, I]. keep: the [T, I] keep-mask
    (needed when p > 0); inputs in one dtype (cast the weight to the activations' dtype under autocast).
    cfg: a parse_blocks() result, parsed outside torch.compile (default: GEGLU_EPILOGUE_BLOCKS)."""
    if p > 0.0 and keep is None:
        raise ValueError("dropout p > 0 needs the keep-mask")
    return GegluUpProjection.apply(x, w, keep if p > 0.0 else None, 1.0 / (1.0 - p), cfg)


def reference_geglu(x, w, p: float = 0.0, keep=None):
    inter = w.shape[0] // 2
    h = F.gelu(x @ w[:inter].t()) * (x @ w[inter:].t())
    return h if p == 0.0 else h * keep / (1.0 - p)


# the fastest of session 8's two sweeps on the H200 (pointer loads: 8 configurations, the best kept here)
SWEEP_BLOCKS = ("128x128x64:8:4:8:tma", "128x128x64:8:4:8:tma_ws", "128x128x32:8:4:8", "128x128x64:8:3:8:tma")


def sweep(T: int = 29_500, hidden: int = 768, inter: int = 3072, p: float = 0.1, reps: int = 20,
          blocks=SWEEP_BLOCKS, on_row=None) -> list[dict]:
    """GPU: the fused kernel per launch configuration on MosaicBERT-base's sizes, against what the model runs
    (two cuBLAS matmuls, the keep-mask kernel, inductor's gelu * value * mask), and its error against them; also
    the fused kernel's matmuls alone (no h written). on_row(rows) after each row (so a timeout keeps them)."""
    from attention_backends import cuda_time_ms  # this script's folder is on sys.path when it runs

    from mosaicbert.model.dropout import dropout_keep_mask

    dev, dt = torch.device("cuda"), torch.bfloat16
    x = torch.randn(T, hidden, device=dev, dtype=dt)
    w = (torch.randn(2 * inter, hidden, device=dev) / math.sqrt(hidden)).to(dt)
    seed = torch.tensor([7], device=dev, dtype=torch.int64)
    keep = dropout_keep_mask(seed, (T, inter), p)
    scale = 1.0 / (1.0 - p)
    flops = 2 * T * hidden * 2 * inter
    rows = []

    def add(name, t, **extra):
        rows.append(dict(kernel=name, ms=round(t, 4), tflops=round(flops / t / 1e9, 1), **extra))
        print(rows[-1], flush=True)
        if on_row:
            on_row(rows)

    def ms(fn):
        return cuda_time_ms(fn, iters=reps, warmup=3)

    act = torch.compile(lambda g, v, k: F.gelu(g) * v * k * scale)
    ref = act(F.linear(x, w[:inter]), F.linear(x, w[inter:]), keep)
    add("model: two cuBLAS matmuls", ms(lambda: (F.linear(x, w[:inter]), F.linear(x, w[inter:]))))
    add("model: matmuls + keep-mask + inductor gelu*value*mask", ms(lambda: act(
        F.linear(x, w[:inter]), F.linear(x, w[inter:]), dropout_keep_mask(seed, (T, inter), p))))
    for spec in blocks:
        cfg = parse_blocks(spec)
        try:
            _, _, h = geglu_up_forward(x, w, keep, scale, cfg)
            err = ((h.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
            add(f"fused {spec}", ms(lambda: geglu_up_forward(x, w, keep, scale, cfg)), rel_err=round(err, 5))
            add(f"fused {spec} + keep-mask", ms(lambda: geglu_up_forward(
                x, w, dropout_keep_mask(seed, (T, inter), p), scale, cfg)))
            add(f"matmuls only {spec}", ms(lambda: geglu_up_forward(x, w, keep, scale, cfg, store_h=False)))
        except Exception as e:  # e.g. out of shared memory for this tile
            rows.append(dict(kernel=f"fused {spec}", error=f"{type(e).__name__}: {str(e)[:200]}"))
            print(rows[-1], flush=True)
    return rows


def fastest(rows: list[dict]) -> str:
    """The configuration whose fused kernel, keep-mask included, was fastest in a sweep (DEFAULT_BLOCKS if none ran)."""
    timed = [(r["ms"], r["kernel"].split()[1]) for r in rows if r["kernel"].endswith("+ keep-mask") and "ms" in r
             and r["kernel"].startswith("fused ")]
    return min(timed)[1] if timed else DEFAULT_BLOCKS


if __name__ == "__main__":
    import argparse
    import json

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", nargs="?", help="JSON to write the sweep to")
    ap.add_argument("--best", metavar="SWEEP_JSON", help="print the fastest configuration of a finished sweep")
    args = ap.parse_args()
    if args.best:
        with open(args.best) as fh:
            print(fastest(json.load(fh)["rows"]))
    else:
        def write(rows):
            if args.out:
                with open(args.out, "w") as fh:
                    json.dump(dict(torch=torch.__version__, device=torch.cuda.get_device_name(), rows=rows), fh,
                              indent=2)

        sweep(on_row=write)
