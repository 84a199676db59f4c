"""Training-step throughput of MosaicBERT vs Hugging Face BERT, in one process, on the same batches.

    python benchmarks/throughput.py --out results.json                  # GPU: base size, eager + compiled
    python benchmarks/throughput.py --size tiny --device cpu --steps 3  # smoke test on CPU

One step = forward, backward and a fused AdamW step under bf16 autocast (fp32 on CPU). Timing: CUDA events around
each step after warm-up, the steps queued back to back as in training (one sync after the last); the median of
--steps steps is reported. Each model gets the batch keys its forward takes (as Composer's HuggingFaceModel does):
MosaicBERT also gets the collator's per-row host counts, which spare it a host sync per step.

Useful FLOPs per step (the MFU numerator; padding and head work on unmasked tokens are not useful):
    6 x (encoder non-embedding parameters) x real tokens
  + 12 x sum_i S_i^2 x hidden x layers            (attention scores and values, forward + backward)
  + 6 x (MLM head parameters) x masked tokens
MFU = useful FLOPs / step time / measured bf16 matmul peak of this GPU (8192^3 matmul).

On CUDA each row also records the GPU's median SM clock and board power over its timed steps (`nvidia-smi`, when
present): a GPU at its power limit lowers its clock under sustained load, which the step time alone does not show.
"""

from __future__ import annotations

import argparse
import functools
import gzip
import inspect
import json
import math
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

SIZES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512),
}
VOCAB = 30528


def make_batches(n: int, batch: int, seq: int, mask_prob: float, seed: int, texts: list[list[int]] | None,
                 static: bool = False):
    """Batches with 75% full-length rows and 25% uniform shorter ones (or real token rows when given).
    static: every row full length with the same number of masked tokens, so every batch has the same numbers of
    real and of masked tokens (the shapes CUDA graphs need)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for b in range(n):
        if texts:
            rows = [texts[(b * batch + i) % len(texts)][:seq] for i in range(batch)]
            lengths = torch.tensor([len(r) for r in rows])
            ids = torch.zeros(batch, seq, dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, : len(r)] = torch.tensor(r)
        else:
            full = torch.rand(batch, generator=g) < (1.0 if static else 0.75)
            lengths = torch.where(full, torch.full((batch,), seq), torch.randint(16, seq, (batch,), generator=g))
            ids = torch.randint(1000, VOCAB - 8, (batch, seq), generator=g)
            ids[:, 0] = 101
        attn = (torch.arange(seq)[None, :] < lengths[:, None]).long()
        ids = ids * attn
        special = (ids == 101) | (ids == 102) | (attn == 0)
        if static:  # the same count per row: the first round(mask_prob * seq) of a random order of the non-special
            scores = torch.rand(batch, seq, generator=g).masked_fill(special, 2.0)
            masked = torch.zeros_like(special).scatter_(1, scores.argsort(1)[:, : round(mask_prob * seq)], True)
        else:
            masked = (torch.rand(batch, seq, generator=g) < mask_prob) & ~special
        labels = torch.where(masked, ids, torch.full_like(ids, -100))
        inputs = torch.where(masked, torch.full_like(ids, 103), ids)
        out.append(dict(input_ids=inputs, attention_mask=attn, token_type_ids=torch.zeros_like(ids), labels=labels,
                        # per-row host counts, as the MLM collator (pad_mlm_batch) sends them
                        sequence_lengths=attn.sum(1).tolist(), label_counts=(labels != -100).sum(1).tolist()))
    return out


def load_texts(path: str, vocab: str, seq: int, limit: int = 20000) -> list[list[int]]:
    """Real token rows: from an MDS folder written by mosaicbert.data.convert (its train/ split; raw text or token
    ids), or from C4-format *.json.gz files (one row per document, truncated)."""
    from mosaicbert.data.tokenizer import load_tokenizer

    tok = load_tokenizer(vocab)
    root = Path(path)
    split = root / "train" if (root / "train" / "index.json").exists() else root
    if (split / "index.json").exists():
        from streaming import StreamingDataset

        ds = StreamingDataset(local=str(split), shuffle=False, batch_size=1)
        rows, docs = [], []
        for i in range(min(limit, ds.num_samples)):
            sample = ds[i]
            if "input_ids" in sample:
                rows.append([int(t) for t in sample["input_ids"][:seq]])
            else:
                docs.append(sample["text"])
        return rows + (tok(docs, truncation=True, max_length=seq)["input_ids"] if docs else [])
    files = sorted(root.glob("*.json.gz")) if root.is_dir() else [root]
    docs = []
    for f in files:
        with gzip.open(f, "rt") as fh:
            for line in fh:
                docs.append(json.loads(line)["text"])
                if len(docs) >= limit:
                    break
    return tok(docs, truncation=True, max_length=seq)["input_ids"]


def useful_flops(model_name: str, cfg, batch: dict) -> float:
    attn = batch["attention_mask"]
    lengths = attn.sum(1).double()
    real_tokens = float(lengths.sum())
    masked = float((batch["labels"] != -100).sum())
    h, layers, inter = cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size
    if model_name == "mosaic_bert":  # fused Wqkv, out dense, GeGLU (2*inter) up, down; two LayerNorms
        layer = h * 3 * h + 3 * h + h * h + h + h * 2 * inter + inter * h + h + 4 * h
    else:  # q, k, v, out, up (inter), down; two LayerNorms
        layer = 4 * (h * h + h) + h * inter + inter + inter * h + h + 4 * h
    head = h * h + h + 2 * h + cfg.vocab_size * h + cfg.vocab_size
    return 6 * layer * layers * real_tokens + 12 * float((lengths**2).sum()) * h * layers + 6 * head * masked


def matmul_peak(device, seconds: float = 0.0) -> float:
    """bf16 FLOP/s of 8192^3 matmuls: 10 of them (~11 ms, the MFU denominator), or as many as fill `seconds`
    (sustained: a GPU at its power limit lowers its clocks after a while, which the short burst does not see)."""
    if device.type != "cuda":
        return float("nan")
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    n = 10 if seconds <= 0 else max(10, int(seconds / 1.4e-3))  # ~1.4 ms per matmul on an H100/H200
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(n):
        a @ b
    end.record()
    torch.cuda.synchronize()
    return 2 * 8192**3 * n / (start.elapsed_time(end) / 1e3)


# Benchmark-only variants of MosaicBERT (monkeypatches, undone after the row): ablations that undo one optimisation
# and candidates not yet adopted, measured against the current code in the same process. Each returns an undo function.
def _patch(obj, **attrs):
    """Set attributes of obj (a module or a class); return the function that puts the old values back."""
    old = {name: getattr(obj, name) for name in attrs}
    for name, value in attrs.items():
        setattr(obj, name, value)

    def undo():
        for name, value in old.items():
            setattr(obj, name, value)

    return undo


def _variant_index_pad():
    """Attention re-pads q/k/v with index_copy and unpads with plain indexing (accumulating-scatter backward),
    as before the gather-only pad/unpad."""
    from mosaicbert.model import attention, padding

    return _patch(attention, pad_rows=lambda x, info: padding.pad(x, info.indices, info.batch, info.seqlen),
                  unpad_rows=lambda x, info: padding.unpad(x, info.indices))


def _variant_geglu_fused_matmul():
    """GeGLU as one [T, 2I] matmul whose output is split, as before the model adopted two matmuls (the backward
    then concatenates the two gradient halves: `fused_cat_gelu_gelu_backward_mul_..._split` in the profile)."""
    from mosaicbert.model import layers

    def forward(self, x):
        gate, value = self.gated_layers(x).split(self.intermediate_size, dim=-1)  # [T, I] each
        h = self.dropout(self.act(gate) * value)
        return self.layernorm(self.wo(h) + x)

    return _patch(layers.MosaicBertGatedMLP, forward=forward)


def _variant_fused_geglu_dropout():
    """Candidate: GeGLU + dropout in one Triton kernel each way, the mask drawn again in the backward instead of
    stored (benchmarks/fused_geglu_dropout.py). Training with dropout on CUDA only; else the current code."""
    import torch.nn.functional as F

    from mosaicbert.model import layers

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fused_geglu_dropout import fused_geglu_dropout

    old = layers.MosaicBertGatedMLP.forward

    def forward(self, x):
        p = self.dropout.p
        if not (self.training and p > 0.0 and x.is_cuda and type(self.act).__name__ == "GELUActivation"):
            return old(self, x)
        w = self.gated_layers.weight  # [2I, hidden]
        gate = F.linear(x, w[: self.intermediate_size])  # [T, I]
        value = F.linear(x, w[self.intermediate_size:])  # [T, I]
        return self.layernorm(self.wo(fused_geglu_dropout(gate, value, p)) + x)

    return _patch(layers.MosaicBertGatedMLP, forward=forward)


def _variant_geglu_epilogue():
    """Candidate: the GeGLU up-projection as one Triton matmul that applies gelu * value * keep-mask in its
    epilogue (benchmarks/geglu_epilogue.py; tiles from GEGLU_EPILOGUE_BLOCKS). CUDA and exact-GELU only; else the
    current code."""
    import torch

    from mosaicbert.model import layers
    from mosaicbert.model.dropout import dropout_keep_mask

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from geglu_epilogue import geglu_up_projection, launch_config

    old = layers.MosaicBertGatedMLP.forward
    cfg = launch_config()  # here, not in the traced forward

    def forward(self, x):
        if not (x.is_cuda and type(self.act).__name__ == "GELUActivation"):
            return old(self, x)
        p = self.dropout.p if self.training else 0.0
        keep = None
        if p > 0.0:
            seed = torch.randint(0, 2**62, (1,), device=x.device, dtype=torch.int64)
            keep = dropout_keep_mask(seed, (x.shape[0], self.intermediate_size), p)
        h = geglu_up_projection(x, self.gated_layers.weight.to(x.dtype), p, keep, cfg)  # [T, I]
        return self.layernorm(self.wo(h) + x)

    return _patch(layers.MosaicBertGatedMLP, forward=forward)


def _variant_device_counts():
    """Ablation: no per-row host counts, so the forward learns the numbers of real and of labelled tokens with
    torch.nonzero, two host syncs per step (as before the collator sent the counts)."""
    from mosaicbert.model import modeling_mosaic_bert

    old = modeling_mosaic_bert.MosaicBertForMaskedLM.forward

    @functools.wraps(old)  # the same signature: the counts are still passed, and dropped here
    def forward(self, *args, sequence_lengths=None, label_counts=None, **kwargs):
        return old(self, *args, **kwargs)

    return _patch(modeling_mosaic_bert.MosaicBertForMaskedLM, forward=forward)


def _variant_split_attention_backward():
    """Ablation: the attention backward as three kernels (delta, dK/dV, dQ) at 64x64 tiles, as before the
    one-kernel backward became the default for S <= 128."""
    from mosaicbert.model import triton_attention

    return _patch(triton_attention, _WHOLE_SEQUENCE_KEYS_X_DIM=0)  # no default shape qualifies


def _variant_combo_kernels():
    """Candidate: inductor's combo kernels (independent small kernels launched as one: fewer launch gaps)."""
    from torch._inductor import config

    return _patch(config, combo_kernels=True)


VARIANTS = {"current": lambda: (lambda: None), "device_counts": _variant_device_counts, "index_pad": _variant_index_pad,
            "geglu_fused_matmul": _variant_geglu_fused_matmul, "fused_geglu_dropout": _variant_fused_geglu_dropout,
            "split_attention_backward": _variant_split_attention_backward, "combo_kernels": _variant_combo_kernels,
            "geglu_epilogue": _variant_geglu_epilogue}


def parse_config_set(text: str) -> dict:
    """'default' -> {}; 'attention_backend=triton;hidden_dropout_prob=0.0' -> {...} (values parsed as YAML)."""
    import yaml

    if text == "default":
        return {}
    out = {}
    for item in filter(None, text.split(";")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--mosaic_configs: {item!r} is not KEY=VALUE (sets are ';'-separated, e.g. "
                             "'attention_backend=triton;hidden_dropout_prob=0.0')")
        out[key.strip()] = yaml.safe_load(value)
    return out


def build(model_name: str, size: str, attention_backend: str | None, overrides: dict | None = None):
    from transformers import BertConfig, BertForMaskedLM

    from mosaicbert import MosaicBertConfig, MosaicBertForMaskedLM

    if model_name == "mosaic_bert":
        extra = {"attention_backend": attention_backend} if attention_backend else {}
        unknown = sorted(set(overrides or {}) - set(MosaicBertConfig().to_dict()))
        if unknown:  # PretrainedConfig would keep a misspelled key as an attribute nobody reads
            raise ValueError(f"--mosaic_configs: {unknown} are not MosaicBertConfig keys")
        extra.update(overrides or {})
        cfg = MosaicBertConfig(vocab_size=VOCAB, **SIZES[size], **extra)
        return MosaicBertForMaskedLM(cfg), cfg
    cfg = BertConfig(vocab_size=VOCAB, attention_probs_dropout_prob=0.1, **SIZES[size])
    return BertForMaskedLM(cfg), cfg


# Kernel-name patterns -> where the step's GPU time goes (first match wins).
KERNEL_CATEGORIES = [
    ("attention", ("flash", "fmha", "attention", "sdpa", "flex")),
    ("matmul", ("gemm", "cutlass", "matmul", "mm_", "addmm", "bmm", "wgmma", "sm90_xmma", "nvjet")),
    ("layernorm", ("layer_norm", "layernorm")),
    ("optimizer", ("adam", "foreach", "multi_tensor")),
    ("index/pad/unpad", ("index", "gather", "scatter", "nonzero", "masked")),
    ("cross-entropy/softmax", ("softmax", "nll", "cross_entropy", "log_softmax")),
    ("elementwise (incl. fused triton)", ("triton", "elementwise", "vectorized", "reduce", "copy", "fill")),
]


def profile_steps(step, batches, n: int, device, top: int = 0, trace: str | None = None,
                  trace_host: bool = False) -> tuple[dict, list]:
    """GPU (or CPU) time per step by kernel category, and the `top` kernels, from torch.profiler over `n` steps.
    trace: also write the kernel timeline there (chrome trace JSON; GPU kernels only, so the host is not slowed).
    trace_host: record the host's ops too, so `kernel_gaps.py --origins` can name the op that launched a kernel
    (the host then runs slower: use that trace for attribution, not for gaps)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    if trace_host and device.type == "cuda":
        activities.append(ProfilerActivity.CPU)
    with profile(activities=activities) as prof:
        for i in range(n):
            step(batches[i % len(batches)])
        if device.type == "cuda":
            torch.cuda.synchronize()
    if trace:
        prof.export_chrome_trace(trace)
    totals: dict[str, float] = {}
    kernels = []
    for evt in prof.key_averages():
        us = evt.self_device_time_total if device.type == "cuda" else evt.self_cpu_time_total
        if us <= 0 or (device.type == "cuda" and evt.device_type != torch.autograd.DeviceType.CUDA):
            continue
        name = evt.key.lower()
        cat = next((c for c, keys in KERNEL_CATEGORIES if any(k in name for k in keys)), "other")
        totals[cat] = totals.get(cat, 0.0) + us / 1e3 / n
        kernels.append(dict(kernel=evt.key[:160], category=cat, ms_per_step=us / 1e3 / n, calls_per_step=evt.count / n))
    kernels.sort(key=lambda k: -k["ms_per_step"])
    return dict(sorted(totals.items(), key=lambda kv: -kv[1])), kernels[:top]


def resolved_backend(cfg, device) -> str:
    """The configured attention backend and, for "auto", what it resolved to under bf16 training here."""
    if not hasattr(cfg, "attention_backend"):
        return "sdpa (transformers)"
    from mosaicbert.model.attention import resolve_backend

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name = resolve_backend(cfg.attention_backend, device, dtype, cfg.hidden_size // cfg.num_attention_heads,
                           cfg.attention_probs_dropout_prob).name
    return name if cfg.attention_backend == name else f"{cfg.attention_backend} ({name})"


def run_one(model_name, compiled, args, batches, device, peak, variant="current", overrides=None):
    torch.manual_seed(0)
    torch._dynamo.reset()  # every row compiles from scratch (variants patch code the cached graphs were traced from)
    undo = VARIANTS[variant]() if model_name == "mosaic_bert" else (lambda: None)
    try:
        return _run_one(model_name, compiled, args, batches, device, peak, variant, overrides or {})
    except Exception as e:  # noqa: BLE001 - one failing setting must not cost the other rows of a GPU run
        if args.fail_fast:
            raise
        import traceback

        traceback.print_exc()
        if device.type == "cuda":
            try:
                torch.cuda.empty_cache()
            except Exception:  # noqa: BLE001 - a CUDA fault poisons the context: the next rows will say so too
                pass
        return dict(model=model_name, compiled=compiled, variant=variant, config_overrides=overrides or {},
                    error=f"{type(e).__name__}: {str(e)[:500]}")
    finally:
        undo()


class ClockPowerSampler:
    """Samples one GPU's SM clock (MHz) and board power (W) every `interval_ms` with `nvidia-smi` while the `with`
    block runs; `summary()` gives their medians. Without nvidia-smi (or a GPU id) it samples nothing."""

    QUERY = "clocks.sm,power.draw"

    def __init__(self, gpu_id: str | None, interval_ms: int = 100):
        self.gpu_id, self.interval_ms, self.proc, self.lines = gpu_id, interval_ms, None, []

    @staticmethod
    def for_device(device) -> "ClockPowerSampler":
        gpu_id = f"GPU-{torch.cuda.get_device_properties(device).uuid}" if device.type == "cuda" else None
        return ClockPowerSampler(gpu_id)

    def __enter__(self):
        if self.gpu_id and shutil.which("nvidia-smi"):
            self.proc = subprocess.Popen(
                ["nvidia-smi", f"--query-gpu={self.QUERY}", "--format=csv,noheader,nounits", "-i", self.gpu_id,
                 f"-lms={self.interval_ms}"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        return self

    def __exit__(self, *exc):
        if self.proc is not None:
            self.proc.terminate()
            out, _ = self.proc.communicate(timeout=10)
            self.lines = out.splitlines()

    @staticmethod
    def parse(lines: list[str]) -> dict:
        """'1725, 691.52' lines -> medians; lines that are not two numbers ("[N/A]", a cut-off line) are skipped."""
        clocks, watts = [], []
        for line in lines:
            try:
                clock, watt = (float(x) for x in line.split(","))
            except ValueError:
                continue
            clocks.append(clock)
            watts.append(watt)
        if not clocks:
            return {}
        return dict(sm_clock_mhz=statistics.median(clocks), power_w=statistics.median(watts), gpu_samples=len(clocks))

    def summary(self) -> dict:
        return self.parse(self.lines)


def _run_one(model_name, compiled, args, batches, device, peak, variant, overrides):
    model, cfg = build(model_name, args.size, args.attention_backend, overrides)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    step_model = (torch.compile(model, mode=args.compile_mode) if compiled else model)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    takes = inspect.signature(model.forward).parameters  # the keys this model's forward takes (as Composer filters)
    dev_batches = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items() if k in takes}
                   for b in batches]

    def step(b):
        with amp:
            loss = step_model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(dev_batches[i % len(dev_batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warm_s = time.perf_counter() - t0
    times, host_times, events = [], [], []
    flops = [useful_flops(model_name, cfg, batches[(args.warmup + i) % len(batches)]) for i in range(args.steps)]
    with ClockPowerSampler.for_device(device) as sampler:  # the GPU's clock and power over the timed steps
        for i in range(args.steps):
            b = dev_batches[(args.warmup + i) % len(dev_batches)]
            if device.type == "cuda":  # steps queued back to back; each one's time is read from its events at the end
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                t = time.perf_counter()
                loss = step(b)
                host_times.append(time.perf_counter() - t)  # host time to issue the step (incl. the model's syncs)
                e.record()
                events.append((s, e))
            else:
                t = time.perf_counter()
                loss = step(b)
                times.append(time.perf_counter() - t)
        if events:
            torch.cuda.synchronize()
            times = [s.elapsed_time(e) / 1e3 for s, e in events]
    trace = None
    if args.trace and args.profile:
        label = "-".join([model_name, "compiled" if compiled else "eager", variant]
                         + [f"{k}={v}" for k, v in sorted((overrides or {}).items())])
        trace = f"{args.trace}-{label}.json"
    profile, top_kernels = (profile_steps(step, dev_batches, args.profile, device, args.profile_top, trace,
                                          args.trace_host) if args.profile else (None, []))
    med = statistics.median(times)
    bsz = batches[0]["input_ids"].shape[0]
    real_tokens = statistics.mean(float(b["attention_mask"].sum()) for b in batches)
    tflops = statistics.mean(flops) / med / 1e12
    row = dict(
        model=model_name, compiled=compiled, size=args.size, batch=bsz, seq=args.seq,
        variant=variant if model_name == "mosaic_bert" else "", config_overrides=overrides,
        compile_mode=args.compile_mode if compiled else None,
        attention_backend=resolved_backend(cfg, device),
        ms_per_step=med * 1e3,
        host_ms_per_step=statistics.median(host_times) * 1e3 if host_times else float("nan"),
        seq_per_s=bsz / med, real_tokens_per_s=real_tokens / med,
        useful_tflops=tflops, mfu=tflops * 1e12 / peak if math.isfinite(peak) else float("nan"),
        peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
        warmup_s=warm_s, final_loss=float(loss.detach()), profile_ms_per_step=profile, top_kernels=top_kernels,
        **sampler.summary(),
    )
    del model, opt, step_model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mosaic_bert,hf_bert")
    p.add_argument("--modes", default="eager,compiled", help="eager and/or compiled")
    p.add_argument("--size", default="base", choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--mask_prob", type=float, default=0.30)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--data", default=None,
                   help="real token rows: an MDS folder (as main.py reads) or C4-format *.json.gz file/folder")
    p.add_argument("--tokenizer", default="bert-base-uncased")
    p.add_argument("--static_batches", action="store_true",
                   help="every row full length with the same number of masked tokens: fixed T and M for every batch "
                        "(to measure CUDA graphs, --compile_mode reduce-overhead, without bucketing)")
    p.add_argument("--attention_backend", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--profile", type=int, default=0, help="also profile this many steps: time per kernel category")
    p.add_argument("--compile_mode", default=None,
                   help="torch.compile mode, e.g. max-autotune-no-cudagraphs (default: torch's default)")
    p.add_argument("--variants", default="current",
                   help=f"MosaicBERT code variants to compare in this run, comma-separated, from {sorted(VARIANTS)}; "
                        "'current' is the code as it is, the others undo one optimisation (benchmark-only patches)")
    p.add_argument("--mosaic_configs", nargs="+", default=["default"], metavar="SET",
                   help="MosaicBERT config override sets to compare in this run, each 'default' or "
                        "'KEY=VALUE;KEY=VALUE', e.g. default attention_backend=triton 'hidden_dropout_prob=0.0'")
    p.add_argument("--profile_top", type=int, default=15, help="with --profile: also record the N slowest kernels")
    p.add_argument("--trace", default=None, metavar="PREFIX",
                   help="with --profile: write each row's GPU kernel timeline to PREFIX-<row>.json (chrome trace)")
    p.add_argument("--sustained_peak_seconds", type=float, default=0.0,
                   help="also measure the matmul peak over this many seconds (reported; MFU keeps the short one)")
    p.add_argument("--trace_host", action="store_true",
                   help="with --trace: record the host's ops too (for kernel_gaps.py --origins; slows the host)")
    p.add_argument("--fail_fast", action="store_true", help="stop at the first failing row (default: record it)")
    args = p.parse_args(argv)
    try:
        config_sets = [parse_config_set(c) for c in args.mosaic_configs]
    except ValueError as e:
        p.error(str(e))

    device = torch.device(args.device)
    texts = load_texts(args.data, args.tokenizer, args.seq) if args.data else None
    batches = make_batches(8, args.batch, args.seq, args.mask_prob, 0, texts, args.static_batches)
    peak = matmul_peak(device)
    env = dict(torch=torch.__version__, device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               matmul_peak_tflops=peak / 1e12, date=time.strftime("%Y-%m-%d"), argv=sys.argv)
    if args.sustained_peak_seconds > 0:
        env["sustained_matmul_peak_tflops"] = matmul_peak(device, args.sustained_peak_seconds) / 1e12
    print(json.dumps(env))
    rows = []
    variants = args.variants.split(",")
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}; choose from {sorted(VARIANTS)}")
    for model_name in args.models.split(","):
        settings = ([(v, c) for v in variants for c in config_sets] if model_name == "mosaic_bert"
                    else [("current", {})])
        for variant, overrides in settings:
            for mode in args.modes.split(","):
                row = run_one(model_name, mode == "compiled", args, batches, device, peak, variant, overrides)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out:  # after every row, so a run cut short by a timeout keeps what it measured
                    Path(args.out).write_text(json.dumps(dict(env=env, rows=rows), indent=2))
    hdr = "| model | mode | ms/step | seq/s | real tok/s | useful TFLOP/s | MFU | peak GiB | SM MHz | W |"
    print("\n" + hdr + "\n|" + "---|" * 10)

    def label(r):
        notes = [r["variant"]] if r.get("variant") not in ("", "current", None) else []
        notes += [f"{k}={v}" for k, v in (r.get("config_overrides") or {}).items()]
        return r["model"] + (f" ({', '.join(notes)})" if notes else "")

    def mode_of(r):
        return ("compiled" + (f" {r['compile_mode']}" if r.get("compile_mode") else "")) if r["compiled"] else "eager"

    for r in rows:
        if "error" in r:
            print(f"| {label(r)} | {mode_of(r)} | failed: {r['error'][:120]} |||||||| ")
            continue
        clock = f"{r['sm_clock_mhz']:.0f} | {r['power_w']:.0f}" if "sm_clock_mhz" in r else "- | -"
        print(f"| {label(r)} | {mode_of(r)} | {r['ms_per_step']:.1f} | "
              f"{r['seq_per_s']:,.0f} | {r['real_tokens_per_s']:,.0f} | {r['useful_tflops']:.0f} | "
              f"{r['mfu']:.1%} | {r['peak_mem_gib']:.1f} | {clock} |")
    if "sustained_matmul_peak_tflops" in env:
        sustained = env["sustained_matmul_peak_tflops"]
        print(f"matmul peak sustained over {args.sustained_peak_seconds:g} s: {sustained:.0f} TFLOP/s "
              f"(short burst, the MFU denominator: {env['matmul_peak_tflops']:.0f}); useful TFLOP/s against it: "
              + ", ".join(f"{label(r)} {mode_of(r)} {r['useful_tflops'] / sustained:.1%}"
                          for r in rows if "error" not in r))
    for r in rows:
        if r.get("profile_ms_per_step"):
            parts = ", ".join(f"{k} {v:.1f}" for k, v in r["profile_ms_per_step"].items())
            busy = sum(r["profile_ms_per_step"].values())
            print(f"profile {label(r)} {mode_of(r)} (ms/step): {parts}; kernels {busy:.1f} of {r['ms_per_step']:.1f} "
                  f"ms, host issues the step in {r.get('host_ms_per_step', float('nan')):.1f} ms")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(env=env, rows=rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
