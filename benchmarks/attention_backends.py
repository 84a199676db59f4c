"""Time each attention backend's per-layer attention forward+backward on GPU.

Default shape: B=256, S=128, 12 heads x 64 (MosaicBERT-base pretraining), bf16. What is timed per layer is
exactly what one encoder layer calls: `backend.attend(qkv [T, 3, H, D], ctx, dropout_p)` plus its backward,
including the re-padding/unpadding a backend needs. Once-per-forward work shared by all layers (ALiBi+mask
bias, flex block mask) is timed separately as `prepare_ms`.

    python benchmarks/attention_backends.py --out results.json [--batch 256 --seqlen 128 --iters 50]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from mosaicbert.benchmarking import profile_steps
from mosaicbert.model.attention import ATTENTION_BACKENDS, AlibiCache, AttentionContext
from mosaicbert.model.padding import get_unpad_info, max_seqlen_bound
from mosaicbert.model.triton_attention import triton_alibi_varlen_attention


def make_mask(batch: int, seqlen: int, fill: str, gen: torch.Generator) -> torch.Tensor:
    if fill == "full":
        lengths = torch.full((batch,), seqlen)
    else:  # "mixed": uniform lengths in [seqlen/4, seqlen]
        lengths = torch.randint(seqlen // 4, seqlen + 1, (batch,), generator=gen)
    return (torch.arange(seqlen)[None] < lengths[:, None]).cuda()


def cuda_time_ms(fn, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(iters):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / iters


def bench(name: str, mask: torch.Tensor, heads: int, head_dim: int, dtype, iters: int, warmup: int,
          attend=None) -> dict:
    """attend: what to time instead of the backend's own `attend` (the triton block-size sweep)."""
    attend = attend or ATTENTION_BACKENDS[name].attend
    alibi = AlibiCache(heads, 512)

    def make_ctx():
        ctx = AttentionContext(get_unpad_info(mask), mask, alibi, heads)
        # force the once-per-forward pieces so prepare_ms measures them
        if name in ("torch", "sdpa"):
            ctx.padded_bias(torch.float32 if name == "torch" else dtype)
        return ctx

    ctx = make_ctx()
    T = int(mask.sum())
    qkv = torch.randn(T, 3, heads, head_dim, device="cuda", dtype=dtype, requires_grad=True)
    grad = torch.randn(T, heads, head_dim, device="cuda", dtype=dtype)

    def step():
        out = attend(qkv, ctx, 0.0)
        out.backward(grad)
        qkv.grad = None

    def fwd():
        with torch.no_grad():
            attend(qkv, ctx, 0.0)

    t0 = time.perf_counter()
    step()  # first call: compilation for flex
    torch.cuda.synchronize()
    first_s = time.perf_counter() - t0
    fwd_bwd = cuda_time_ms(step, iters, warmup)
    fwd_only = cuda_time_ms(fwd, iters, warmup)
    # flex: building the block mask happens inside the first attend of a forward; time it via a fresh ctx
    prep = cuda_time_ms(lambda: make_ctx() if name != "flex" else attend(qkv.detach(), make_ctx(), 0.0),
                        max(iters // 5, 3), 2)
    if name == "flex":
        prep -= fwd_only  # block-mask construction only
    # GPU time alone (the kernels' durations from the profiler): at these sizes one attention call is shorter than
    # the host's launch work, so the event times above measure the host; in training the host runs ahead.
    totals, kernels = profile_steps(lambda _: step(), [None], iters, torch.device("cuda"), top=8)
    torch.cuda.reset_peak_memory_stats()
    step()
    peak_mb = torch.cuda.max_memory_allocated() / 2**20
    return {
        "backend": name, "tokens": T, "fwd_bwd_ms": fwd_bwd, "fwd_ms": fwd_only, "prepare_ms": prep,
        "kernel_ms": sum(totals.values()), "kernels": kernels, "first_call_s": first_s, "peak_mem_mb": peak_mb,
    }


def bench_triton_blocks(spec: str, mask, args, dtype) -> dict:
    """spec "MxN": the triton backend with query x key blocks of M x N (warps by the launcher's rule)."""
    bm, bn = (int(x) for x in spec.split("x"))

    def attend(qkv, ctx, dropout_p):
        info = ctx.info
        return triton_alibi_varlen_attention(qkv, info.cu_seqlens, max_seqlen_bound(info),
                                             ctx.alibi.slopes(qkv.device), bm, bn)

    try:
        r = bench("triton", mask, args.heads, args.head_dim, dtype, args.iters, args.warmup, attend)
    except Exception as e:  # e.g. a block too large for this GPU's shared memory
        return {"backend": f"triton[{spec}]", "error": f"{type(e).__name__}: {e}"[:300]}
    return {**r, "backend": f"triton[{spec}]"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="path of the JSON results file")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seqlen", type=int, default=128)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    p.add_argument("--fill", nargs="+", choices=["full", "mixed"], default=["full", "mixed"])
    p.add_argument("--backends", nargs="+", default=list(ATTENTION_BACKENDS))
    p.add_argument("--iters", type=int, default=50)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--triton_blocks", nargs="*", default=[], metavar="MxN",
                   help="also time the triton backend with these query x key block sizes, e.g. 64x64 16x128; a key "
                        "block >= the sequence length takes the one-kernel backward")
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16
    gen = torch.Generator().manual_seed(0)

    rows = []
    for fill in args.fill:
        mask = make_mask(args.batch, args.seqlen, fill, gen)
        for name in args.backends:
            if not ATTENTION_BACKENDS[name].installed():
                rows.append({"backend": name, "fill": fill, "error": "not installed"})
                continue
            try:
                r = bench(name, mask, args.heads, args.head_dim, dtype, args.iters, args.warmup)
                r["fill"] = fill
            except Exception as e:  # keep going: one broken backend should not hide the others
                r = {"backend": name, "fill": fill, "error": f"{type(e).__name__}: {e}"[:300]}
            rows.append(r)
        for blocks in args.triton_blocks:
            rows.append({**bench_triton_blocks(blocks, mask, args, dtype), "fill": fill})

    print(f"B={args.batch} S={args.seqlen} H={args.heads} D={args.head_dim} {args.dtype}, "
          f"{torch.cuda.get_device_name()}, torch {torch.__version__}")
    header = f"{'fill':6} {'backend':20} {'tokens':>7} {'fwd+bwd ms':>11} {'fwd ms':>8} {'kernel ms':>9} " \
             f"{'prepare ms':>11} {'peak MB':>8} {'1st call s':>10}"
    print(header)
    print("-" * len(header))
    for r in rows:
        if "error" in r:
            print(f"{r['fill']:6} {r['backend']:20} {r['error']}")
        else:
            print(f"{r['fill']:6} {r['backend']:20} {r['tokens']:7d} {r['fwd_bwd_ms']:11.3f} {r['fwd_ms']:8.3f} "
                  f"{r['kernel_ms']:9.3f} {r['prepare_ms']:11.3f} {r['peak_mem_mb']:8.0f} {r['first_call_s']:10.2f}")
            kernels = ", ".join(f"{k['kernel'][:40]} {k['ms_per_step']:.3f}" for k in r["kernels"])
            print(f"       kernels (ms): {kernels}")
    meta = {
        "batch": args.batch, "seqlen": args.seqlen, "heads": args.heads, "head_dim": args.head_dim,
        "dtype": args.dtype, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"config": meta, "results": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
