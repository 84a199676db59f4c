"""Forward-only (inference) throughput of encoders: MosaicBERT (this project's code) against transformers' BERT (SDPA)
and ModernBERT (SDPA; flash-attn 2 too when importable), random init, in one process, on the same batches.

    python benchmarks/inference.py --out inference.json             # GPU: base size, bf16, eager
    python benchmarks/inference.py --compile --out inference.json   # eager and torch.compile(dynamic=True)
    python benchmarks/inference.py --size tiny --device cpu --num-seqs 64 --batch 16 --max-len 64 \\
        --fixed 64x8 --repeats 1                                    # smoke test on CPU

Workloads (token ids random, lengths as below):
    variable/corpus  --num-seqs sequences with lengths drawn from a log-normal (median --median, sigma --sigma)
                     clipped to [--min-len, --max-len] (C4 documents cut at 512 tokens look like this), in batches
                     of --batch in the order drawn; each batch padded to its longest row
    variable/sorted  the same sequences sorted by length first (what mosaicbert.embeddings.encode does)
    fixed/SxB        full rows: batches of B sequences of S tokens (--fixed, e.g. 512x64,128x256)

Every model gets the padded batch and its attention mask; MosaicBERT also gets the per-row lengths on the host
(as its collators send them) and unpads inside. Real tokens/s counts only the tokens of the sequences (no padding);
the useful FLOPs per real token count the matmuls of the encoder layers on real tokens (2 per multiply-add) plus
attention over each sequence's own length (ModernBERT's sliding-window layers: at most its window), no embeddings.
Timing: one untimed pass over the workload (warm-up, compilation), then --repeats timed passes with a device sync
at each end; the median pass is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import platform
import statistics
import sys
import time
from typing import Dict, List

import numpy as np
import torch

SIZES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128),
}
MODERNBERT_SIZES = {  # ModernBERT-base as published (transformers' ModernBertConfig defaults), and a tiny one
    "base": dict(hidden_size=768, num_hidden_layers=22, num_attention_heads=12, intermediate_size=1152),
    "tiny": dict(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=96),
}
VOCAB = 30528
MODELS = ("mosaic_bert", "hf_bert", "modernbert")


# ---------------------------------------------------------------------------------------------------------------
# Workloads
# ---------------------------------------------------------------------------------------------------------------


def sequence_lengths(n: int, median: float, sigma: float, lo: int, hi: int, seed: int = 0) -> List[int]:
    """n lengths from a log-normal with the given median and sigma, rounded and clipped to [lo, hi]."""
    rng = np.random.default_rng(seed)
    raw = np.exp(rng.normal(math.log(median), sigma, size=n))
    return [int(x) for x in np.clip(np.rint(raw), lo, hi)]


def padded_batches(lengths: List[int], batch: int, vocab: int, seed: int = 0) -> List[Dict[str, object]]:
    """Batches of `batch` rows in the given order, each padded to its longest row: input_ids, attention_mask [B, S]
    (on the CPU) and sequence_lengths (a list)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, len(lengths), batch):
        rows = lengths[start:start + batch]
        seq = max(rows)
        mask = (torch.arange(seq)[None, :] < torch.tensor(rows)[:, None]).long()
        ids = torch.randint(5, vocab, (len(rows), seq), generator=g) * mask
        out.append({"input_ids": ids, "attention_mask": mask, "sequence_lengths": list(rows)})
    return out


def workloads(args) -> Dict[str, List[Dict[str, object]]]:
    lengths = sequence_lengths(args.num_seqs, args.median, args.sigma, args.min_len, args.max_len, args.seed)
    out = {"variable/corpus": padded_batches(lengths, args.batch, VOCAB, args.seed),
           "variable/sorted": padded_batches(sorted(lengths, reverse=True), args.batch, VOCAB, args.seed)}
    for spec in filter(None, args.fixed.split(",")):
        seq, batch = (int(x) for x in spec.lower().split("x"))
        out[f"fixed/{seq}x{batch}"] = padded_batches([seq] * (batch * args.fixed_batches), batch, VOCAB, args.seed)
    return out


def padding_share(batches) -> float:
    real = sum(sum(b["sequence_lengths"]) for b in batches)
    padded = sum(b["input_ids"].numel() for b in batches)
    return 1.0 - real / padded


# ---------------------------------------------------------------------------------------------------------------
# Models and their FLOPs
# ---------------------------------------------------------------------------------------------------------------


def flash_attn_available() -> bool:
    try:
        import flash_attn  # noqa: F401
    except Exception:
        return False
    return True


def build(name: str, size: str, attn: str = "sdpa"):
    """(bare encoder without pooler, its config) with random weights; `attn`: transformers' attn_implementation of
    ModernBERT (MosaicBERT picks its own backend, BERT runs SDPA)."""
    if name == "mosaic_bert":
        from mosaicbert.model import MosaicBertConfig, MosaicBertModel

        cfg = MosaicBertConfig(vocab_size=VOCAB, **SIZES[size])
        return MosaicBertModel(cfg, add_pooling_layer=False), cfg
    if name == "hf_bert":
        from transformers import BertConfig, BertModel

        cfg = BertConfig(vocab_size=VOCAB, **SIZES[size], attn_implementation="sdpa")
        return BertModel(cfg, add_pooling_layer=False), cfg
    if name == "modernbert":
        from transformers import ModernBertConfig, ModernBertModel

        cfg = ModernBertConfig(**MODERNBERT_SIZES[size], attn_implementation=attn)
        return ModernBertModel(cfg), cfg
    raise ValueError(f"unknown model {name!r}: one of {MODELS}")


def layer_matmul_params(name: str, cfg) -> int:
    """Multiply-adds per token of one encoder layer's linear layers (weights only)."""
    h, inter = cfg.hidden_size, cfg.intermediate_size
    if name == "mosaic_bert":  # fused Wqkv, output dense, GeGLU up (2 * inter), down
        return 3 * h * h + h * h + h * 2 * inter + inter * h
    if name == "hf_bert":  # q, k, v, output, up, down
        return 4 * h * h + 2 * h * inter
    return 3 * h * h + h * h + h * 2 * inter + inter * h  # modernbert: Wqkv, Wo, GLU Wi (2 * inter), Wo


def attended_keys(name: str, cfg, length: int) -> List[int]:
    """Keys each query attends to, per layer, in a sequence of `length` tokens."""
    if name != "modernbert":
        return [length] * cfg.num_hidden_layers
    types = getattr(cfg, "layer_types", None) or ["full_attention"] * cfg.num_hidden_layers
    return [length if t == "full_attention" else min(length, cfg.local_attention) for t in types]


def useful_flops(name: str, cfg, lengths: List[int]) -> float:
    """Forward FLOPs on real tokens: 2 * linear multiply-adds per token per layer, plus QK^T and attention x V
    (2 * 2 * keys * hidden per token per layer)."""
    h = cfg.hidden_size
    linear = 2 * layer_matmul_params(name, cfg) * cfg.num_hidden_layers
    return float(sum(n * linear + sum(4 * n * k * h for k in attended_keys(name, cfg, n)) for n in lengths))


def flops_per_token(name: str, cfg, length: int) -> float:
    return useful_flops(name, cfg, [length]) / length


# ---------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------


def forward_inputs(name: str, batch: Dict[str, object], device) -> Dict[str, object]:
    inputs = {"input_ids": batch["input_ids"].to(device, non_blocking=True),
              "attention_mask": batch["attention_mask"].to(device, non_blocking=True)}
    if name == "mosaic_bert":
        inputs["sequence_lengths"] = batch["sequence_lengths"]
    return inputs


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_workload(model, name: str, batches, device, repeats: int) -> List[float]:
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext())
    inputs = [forward_inputs(name, b, device) for b in batches]  # on the device before timing: forward only

    def one_pass():
        with torch.inference_mode(), autocast:
            for x in inputs:
                model(**x)

    one_pass()  # warm-up and compilation (dynamic shapes: every length)
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        one_pass()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def run(args) -> dict:
    device = torch.device(args.device)
    loads = workloads(args)
    rows = []
    # MosaicBERT's own attention backend choice ("auto"); transformers' models with SDPA
    variants = [(m, "auto" if m == "mosaic_bert" else "sdpa") for m in args.models.split(",")]
    if "modernbert" in args.models and device.type == "cuda" and flash_attn_available():
        variants.append(("modernbert", "flash_attention_2"))
    for name, attn in variants:
        for compiled in ([False, True] if args.compile else [False]):
            torch.manual_seed(0)
            torch._dynamo.reset()
            model, cfg = build(name, args.size, attn)
            model = model.to(device).eval()
            n_params = sum(p.numel() for p in model.parameters())
            runner = torch.compile(model, dynamic=True) if compiled else model
            for label, batches in loads.items():
                lengths = [n for b in batches for n in b["sequence_lengths"]]
                try:
                    times = time_workload(runner, name, batches, device, args.repeats)
                except Exception as e:  # one failing variant (e.g. a flash-attn build) must not lose the others
                    rows.append(dict(model=name, attention=attn, compiled=compiled, workload=label,
                                     error=f"{type(e).__name__}: {e}"[:500]))
                    print(f"{name} {attn} compiled={compiled} {label}: FAILED {e}", file=sys.stderr)
                    continue
                seconds = statistics.median(times)
                flops = useful_flops(name, cfg, lengths)
                rows.append(dict(
                    model=name, attention=attn, compiled=compiled, workload=label, parameters=n_params,
                    sequences=len(lengths), real_tokens=sum(lengths), padding_share=padding_share(batches),
                    seconds=seconds, seconds_all=times, real_tokens_per_s=sum(lengths) / seconds,
                    useful_tflops=flops / seconds / 1e12, flops_per_real_token=flops / sum(lengths)))
                print(f"{name:11s} {attn:17s} {'compiled' if compiled else 'eager':8s} {label:16s} "
                      f"{sum(lengths) / seconds:14,.0f} real tok/s", flush=True)
            del model, runner
            if device.type == "cuda":
                torch.cuda.empty_cache()
    per_token = {}
    for name in args.models.split(","):
        cfg = build(name, args.size)[1]
        per_token[name] = {f"gflops_per_token_at_{n}": flops_per_token(name, cfg, n) / 1e9 for n in (128, 512)}
        per_token[name]["linear_gflops_per_token"] = 2 * layer_matmul_params(name, cfg) * cfg.num_hidden_layers / 1e9
    import transformers

    env = dict(date=time.strftime("%Y-%m-%d"), device=torch.cuda.get_device_name(device) if device.type == "cuda"
               else platform.processor() or "cpu", torch=torch.__version__, transformers=transformers.__version__,
               cuda=torch.version.cuda, flash_attn=flash_attn_available(), argv=sys.argv)
    return {"env": env, "args": vars(args), "flops": per_token, "results": rows}


def table(result: dict) -> str:
    rows = [r for r in result["results"] if "error" not in r]
    loads = list(dict.fromkeys(r["workload"] for r in rows))
    lines = ["| model | " + " | ".join(loads) + " |", "|---|" + "---:|" * len(loads)]
    for key in dict.fromkeys((r["model"], r["attention"], r["compiled"]) for r in rows):
        cells = {r["workload"]: r["real_tokens_per_s"] for r in rows
                 if (r["model"], r["attention"], r["compiled"]) == key}
        label = f"{key[0]} ({key[1]}{', compiled' if key[2] else ''})"
        lines.append(f"| {label} | " + " | ".join(f"{cells[w] / 1e6:.3f}M" if w in cells else "" for w in loads) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--size", choices=sorted(SIZES), default="base")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile(dynamic=True)")
    parser.add_argument("--num-seqs", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--min-len", type=int, default=16)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--median", type=float, default=120.0)
    parser.add_argument("--sigma", type=float, default=0.8)
    parser.add_argument("--fixed", default="512x64,128x256", help="full-row workloads SEQxBATCH, comma-separated")
    parser.add_argument("--fixed-batches", type=int, default=16, help="batches per full-row workload")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    unknown = set(args.models.split(",")) - set(MODELS)
    if unknown:
        parser.error(f"--models: unknown {sorted(unknown)}; choose from {list(MODELS)}")
    result = run(args)
    loads = workloads(args)
    print("\npadding share of the padded batches: " + ", ".join(
        f"{k} {padding_share(v):.0%}" for k, v in loads.items()))
    print("useful GFLOPs per real token: " + ", ".join(
        f"{m} {v['gflops_per_token_at_128']:.3f} (S=128) / {v['gflops_per_token_at_512']:.3f} (S=512)"
        for m, v in result["flops"].items()))
    print(table(result))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
