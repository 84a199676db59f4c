"""Measurement helpers shared by the benchmarks in benchmarks/: the MFU numerator and denominator, GPU time by
kernel category from torch.profiler, and the GPU's clock and power while a benchmark runs.

MFU = useful FLOPs / step time / measured bf16 matmul peak of this GPU. Useful FLOPs per step (padding and head work
on unmasked tokens are not useful):
    6 x (encoder non-embedding parameters) x real tokens
  + 12 x sum_i S_i^2 x hidden x layers            (attention scores and values, forward + backward)
  + 6 x (MLM head parameters) x masked tokens
"""

from __future__ import annotations

import shutil
import statistics
import subprocess

import torch

__all__ = ["ClockPowerSampler", "KERNEL_CATEGORIES", "matmul_peak", "profile_steps", "useful_flops"]


def useful_flops(model_name: str, cfg, batch: dict) -> float:
    """Useful FLOPs of one training step on `batch` (`attention_mask`, `labels`) for "mosaic_bert" or "hf_bert"."""
    attn = batch["attention_mask"]
    lengths = attn.sum(1).double()  # [B] real tokens per row = per attended sequence
    real_tokens = float(lengths.sum())
    if batch.get("sequence_id") is not None:  # packed rows: attention is per document
        S = attn.shape[1]
        docs = (batch["sequence_id"] + S * torch.arange(attn.shape[0])[:, None])[attn.bool()]
        lengths = torch.bincount(docs.flatten()).double()
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
