"""The fused GeGLU + dropout kernels (benchmarks/fused_geglu_dropout.py, a throughput.py variant) against the plain
computation, under Triton's interpreter on CPU (set before import, so in a child process)."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

from triton_interpreter import run_in_interpreter  # tests/triton_interpreter.py

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not importable")


def test_fused_geglu_dropout_matches_reference():
    # The kernels draw the same mask as model/dropout.py for the same seed (same layout), so the reference uses
    # that mask: forward and both gradients must match gelu(gate) * up * keep / (1 - p) to fp32 rounding, on a size
    # that is not a multiple of the block; with p = 0 nothing is dropped.
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(ROOT / 'src')!r}, {str(ROOT / 'benchmarks')!r}]
        import torch
        from mosaicbert.model.dropout import dropout_keep_mask
        from fused_geglu_dropout import fused_geglu_dropout, reference_geglu_dropout

        torch.manual_seed(0)
        for shape, p in (((37, 70), 0.1), ((5, 1024), 0.5), ((3, 11), 0.0)):
            gate = (torch.randn(shape) * 2).requires_grad_(True)
            up = torch.randn(shape).requires_grad_(True)
            seed = torch.tensor([1234], dtype=torch.int64)
            out = fused_geglu_dropout(gate, up, p, seed)
            g = torch.randn(shape)
            dgate, dup = torch.autograd.grad(out, (gate, up), g)
            keep = dropout_keep_mask(seed, shape, p)
            gate_r, up_r = gate.detach().double().requires_grad_(True), up.detach().double().requires_grad_(True)
            ref = reference_geglu_dropout(gate_r, up_r, keep, p)
            dgate_r, dup_r = torch.autograd.grad(ref, (gate_r, up_r), g.double())
            for name, a, b in (("out", out, ref), ("dgate", dgate, dgate_r), ("dup", dup, dup_r)):
                err = (a.double() - b).abs().max().item()
                print(shape, p, name, err)
                assert err < 1e-5, (shape, p, name, err)
            if p == 0.0:
                assert keep.all()
            else:
                assert 0 < (out == 0).sum() < out.numel()
        print("OK")
    """)
    assert "OK" in run_in_interpreter(code)


def test_variant_is_registered():
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    assert "fused_geglu_dropout" in throughput.VARIANTS
    undo = throughput.VARIANTS["fused_geglu_dropout"]()  # patches, and on CPU falls back to the model's path
    try:
        import torch

        from mosaicbert import MosaicBertConfig, MosaicBertForMaskedLM

        torch.manual_seed(0)
        cfg = MosaicBertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64, hidden_dropout_prob=0.1)
        model = MosaicBertForMaskedLM(cfg).train()
        ids = torch.randint(1, 64, (2, 8))
        loss = model(ids, labels=ids).loss
        assert torch.isfinite(loss)
    finally:
        undo()


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_fused_geglu_dropout_on_gpu_eager_and_compiled(compiled_mlm_training_losses):
    # bf16 on the GPU against the fp64 reference with the same mask; then the patched model compiled (dynamo traces
    # the kernel launches inside the autograd.Function) trains: finite, decreasing loss
    import torch

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from fused_geglu_dropout import fused_geglu_dropout, reference_geglu_dropout

    from mosaicbert.model.dropout import dropout_keep_mask

    torch.manual_seed(0)
    gate = (torch.randn(3000, 3072, device="cuda") * 2).bfloat16().requires_grad_(True)
    up = torch.randn(3000, 3072, device="cuda").bfloat16().requires_grad_(True)
    seed = torch.tensor([99], dtype=torch.int64, device="cuda")
    out = fused_geglu_dropout(gate, up, 0.1, seed)
    g = torch.randn_like(out)
    dgate, dup = torch.autograd.grad(out, (gate, up), g)
    keep = dropout_keep_mask(seed, gate.shape, 0.1)
    gr, ur = gate.detach().double().requires_grad_(True), up.detach().double().requires_grad_(True)
    ref = reference_geglu_dropout(gr, ur, keep, 0.1)
    dgr, dur = torch.autograd.grad(ref, (gr, ur), g.double())
    for a, b in ((out, ref), (dgate, dgr), (dup, dur)):
        assert ((a.double() - b).abs().max() / b.abs().max()).item() < 1e-2

    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    undo = throughput.VARIANTS["fused_geglu_dropout"]()
    try:
        losses = compiled_mlm_training_losses(30)
        assert all(v == v for v in losses) and losses[-1] < losses[0] - 1.0, losses
    finally:
        undo()
