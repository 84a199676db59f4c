"""The MFU numerator of benchmarks/throughput.py matches the issue's figure: ~736 MFLOP per real token for
MosaicBERT-base at S=128 and 30% masking (113.2M encoder parameters). Also the wiring of benchmark variants."""

import importlib.util
import os
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
throughput = importlib.util.module_from_spec(spec)
spec.loader.exec_module(throughput)


def test_useful_flops_per_token_mosaic_base():
    from mosaicbert import MosaicBertConfig

    batch, seq = 4, 128
    attn = torch.ones(batch, seq, dtype=torch.long)
    labels = torch.full((batch, seq), -100)
    labels.view(-1)[: int(0.3 * batch * seq)] = 5  # 30% masked
    flops = throughput.useful_flops("mosaic_bert", MosaicBertConfig(), {"attention_mask": attn, "labels": labels})
    assert flops / (batch * seq) == pytest.approx(736e6, rel=0.01)


def test_encoder_parameter_count_used_by_flops():
    """6 x params x tokens uses the encoder's real parameter count (checked against the built model)."""
    from mosaicbert import MosaicBertConfig, MosaicBertModel

    cfg = MosaicBertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=96,
                           vocab_size=128)
    encoder_params = sum(p.numel() for p in MosaicBertModel(cfg, add_pooling_layer=False).encoder.parameters())
    attn = torch.ones(1, 1, dtype=torch.long)
    labels = torch.full((1, 1), -100)
    flops = throughput.useful_flops("mosaic_bert", cfg, {"attention_mask": attn, "labels": labels})
    attention = 12 * 1 * cfg.hidden_size * cfg.num_hidden_layers
    assert flops - attention == pytest.approx(6 * encoder_params)


@pytest.mark.parametrize("variant", sorted(set(throughput.VARIANTS) - {"current"}))
def test_benchmark_variants_compute_the_same_model(variant):
    """Every benchmark variant (ablation or candidate) changes speed only: same loss and gradients in fp32 on CPU,
    and its undo restores the current code."""
    from mosaicbert import MosaicBertConfig, MosaicBertForMaskedLM

    cfg = MosaicBertConfig(vocab_size=128, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=48, hidden_dropout_prob=0.0, attention_backend="torch")
    torch.manual_seed(0)
    model = MosaicBertForMaskedLM(cfg)
    ids = torch.randint(5, 128, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    labels = torch.where(torch.rand(3, 10) < 0.4, ids, torch.full_like(ids, -100))
    labels[0, 0] = ids[0, 0]

    def loss_and_grads():
        model.zero_grad()
        loss = model(input_ids=ids, attention_mask=mask, labels=labels, sequence_lengths=mask.sum(1).tolist(),
                     label_counts=(labels != -100).sum(1).tolist()).loss  # the host counts, as the benchmark passes
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    ref_loss, ref_grads = loss_and_grads()
    undo = throughput.VARIANTS[variant]()
    try:
        loss, grads = loss_and_grads()
    finally:
        undo()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert len(grads) == len(ref_grads)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    again, _ = loss_and_grads()
    torch.testing.assert_close(again, ref_loss)


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
    parse = throughput.ClockPowerSampler.parse
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
    with throughput.ClockPowerSampler("GPU-1234") as sampler:
        time.sleep(0.3)
    summary = sampler.summary()
    assert summary["sm_clock_mhz"] == 1500.0 and summary["power_w"] == 650.0 and summary["gpu_samples"] >= 2
    assert "-i GPU-1234" in args_file.read_text() and "clocks.sm,power.draw" in args_file.read_text()


def test_clock_power_sampler_without_gpu_samples_nothing():
    with throughput.ClockPowerSampler.for_device(torch.device("cpu")) as sampler:
        pass
    assert sampler.summary() == {}
