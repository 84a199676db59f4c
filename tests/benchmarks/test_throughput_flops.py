"""The MFU numerator (mosaicbert.benchmarking) gives ~736 MFLOP per real token for MosaicBERT-base at S=128 and
30% masking (113.2M encoder parameters); benchmarks/throughput.py's batches and a tiny CPU run."""

import importlib.util
import json
import math
import os
import time
from pathlib import Path

import pytest
import torch

from mosaicbert.benchmarking import ClockPowerSampler, useful_flops

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
throughput = importlib.util.module_from_spec(spec)
spec.loader.exec_module(throughput)


def test_useful_flops_per_token_mosaic_base():
    from mosaicbert import MosaicBertConfig

    batch, seq = 4, 128
    attn = torch.ones(batch, seq, dtype=torch.long)
    labels = torch.full((batch, seq), -100)
    labels.view(-1)[: int(0.3 * batch * seq)] = 5  # 30% masked
    flops = useful_flops("mosaic_bert", MosaicBertConfig(), {"attention_mask": attn, "labels": labels})
    assert flops / (batch * seq) == pytest.approx(736e6, rel=0.01)


def test_encoder_parameter_count_used_by_flops():
    """6 x params x tokens uses the encoder's real parameter count (checked against the built model)."""
    from mosaicbert import MosaicBertConfig, MosaicBertModel

    cfg = MosaicBertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
                           vocab_size=128)
    encoder_params = sum(p.numel() for p in MosaicBertModel(cfg, add_pooling_layer=False).encoder.parameters())
    attn = torch.ones(1, 1, dtype=torch.long)
    labels = torch.full((1, 1), -100)
    flops = useful_flops("mosaic_bert", cfg, {"attention_mask": attn, "labels": labels})
    attention = 12 * 1 * cfg.hidden_size * cfg.num_hidden_layers
    assert flops - attention == pytest.approx(6 * encoder_params)


def test_cpu_run_with_and_without_host_counts(tmp_path):
    """A tiny run on CPU writes one row per setting; the per-row host counts change speed only, not the loss."""
    out = tmp_path / "rows.json"
    assert throughput.main(["--models", "mosaic_bert", "--size", "tiny", "--device", "cpu", "--modes", "eager",
                            "--batch", "4", "--seq", "32", "--steps", "2", "--warmup", "1", "--host_counts", "both",
                            "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [(r["model"], r["host_counts"]) for r in rows] == [("mosaic_bert", True), ("mosaic_bert", False)]
    assert all("error" not in r and r["ms_per_step"] > 0 and math.isfinite(r["final_loss"]) for r in rows)
    assert rows[0]["final_loss"] == pytest.approx(rows[1]["final_loss"], rel=1e-5)


def test_static_batches_have_fixed_token_and_label_counts():
    """--static_batches: every batch has the same T and M (what CUDA graphs need), with no label on [CLS] and
    host counts that match the tensors."""
    batches = throughput.make_batches(3, 6, 32, 0.3, 0, None, static=True)
    for b in batches:
        assert b["attention_mask"].all()
        assert b["sequence_lengths"] == [32] * 6
        assert b["label_counts"] == [round(0.3 * 32)] * 6
        assert (b["labels"] != -100).sum(1).tolist() == b["label_counts"]
        assert (b["labels"][:, 0] == -100).all()  # special tokens are never masked
    assert not torch.equal(batches[0]["labels"], batches[1]["labels"])  # still random positions


def test_clock_power_sampler_parses_nvidia_smi_lines():
    parse = ClockPowerSampler.parse
    assert parse(["1725, 691.52", "1755, 689.00", "1695, 700.1", "[N/A], [N/A]", "17"]) == dict(
        sm_clock_mhz=1725.0, power_w=691.52, gpu_samples=3)
    assert parse([]) == {}


def test_clock_power_sampler_runs_nvidia_smi_for_one_gpu(tmp_path, monkeypatch):
    """The sampler starts nvidia-smi for the given GPU, stops it when the block ends and keeps what it printed."""
    args_file = tmp_path / "args"
    fake = tmp_path / "nvidia-smi"
    fake.write_text(f'#!/bin/sh\necho "$@" > {args_file}\nwhile true; do echo "1500, 650.0"; sleep 0.02; done\n')
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    with ClockPowerSampler("GPU-1234") as sampler:
        time.sleep(0.3)
    summary = sampler.summary()
    assert summary["sm_clock_mhz"] == 1500.0 and summary["power_w"] == 650.0 and summary["gpu_samples"] >= 2
    assert "-i GPU-1234" in args_file.read_text() and "clocks.sm,power.draw" in args_file.read_text()


def test_clock_power_sampler_without_gpu_samples_nothing():
    with ClockPowerSampler.for_device(torch.device("cpu")) as sampler:
        pass
    assert sampler.summary() == {}
