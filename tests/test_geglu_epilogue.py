"""The GeGLU up-projection with the activation in the matmul's epilogue (benchmarks/geglu_epilogue.py, a
throughput.py variant) against the plain computation, under Triton's interpreter on CPU (set before import, so in
a child process)."""

from __future__ import annotations

import importlib.util
import sys
import textwrap
from pathlib import Path

import pytest

from triton_interpreter import run_in_interpreter  # tests/triton_interpreter.py

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not importable")


def test_geglu_epilogue_matches_reference():
    # Forward (gate, value, h) and the gradients of x and w against gelu(x W_g^T) * (x W_v^T) * keep / (1 - p) in
    # float64, for each loader: sizes that are not multiples of the tiles (TMA reads past the end as 0), K a
    # multiple of BLOCK_K or not, with and without dropout, and more than one row group (GROUP_M) so the
    # program-to-tile order is exercised.
    code = textwrap.dedent(f"""
        import sys
        sys.path[:0] = [{str(ROOT / 'src')!r}, {str(ROOT / 'benchmarks')!r}]
        import torch
        from geglu_epilogue import geglu_up_forward, geglu_up_projection, parse_blocks, reference_geglu

        torch.manual_seed(0)
        import itertools
        cases = ((37, 32, 40, 0.1), (70, 24, 16, 0.0), (5, 48, 36, 0.5))
        for loader, (T, K, inter, p) in itertools.product(("ptr", "tma", "tma_ws"), cases):
            cfg = parse_blocks("16x16x16:4:1:2:" + loader)
            x = torch.randn(T, K).requires_grad_(True)
            w = (torch.randn(2 * inter, K) / K ** 0.5).requires_grad_(True)
            keep = torch.rand(T, inter) >= p
            gate, value, h0 = geglu_up_forward(x.detach(), w.detach(), keep if p else None, 1 / (1 - p), cfg)
            assert torch.allclose(gate, x.detach() @ w.detach()[:inter].t(), atol=1e-5)
            assert torch.allclose(value, x.detach() @ w.detach()[inter:].t(), atol=1e-5)
            gate2, value2, _ = geglu_up_forward(x.detach(), w.detach(), None, 1.0, cfg, store_h=False)
            assert torch.equal(gate2, gate) and torch.equal(value2, value)
            h = geglu_up_projection(x, w, p, keep if p else None, cfg)
            assert torch.equal(h, h0)
            g = torch.randn(T, inter)
            dx, dw = torch.autograd.grad(h, (x, w), g)
            x_r, w_r = x.detach().double().requires_grad_(True), w.detach().double().requires_grad_(True)
            ref = reference_geglu(x_r, w_r, p, keep)
            dx_r, dw_r = torch.autograd.grad(ref, (x_r, w_r), g.double())
            for name, a, b in (("h", h, ref), ("dx", dx, dx_r), ("dw", dw, dw_r)):
                err = (a.double() - b).abs().max().item()
                print(loader, T, K, inter, p, name, err)
                assert err < 1e-4, (loader, T, K, inter, p, name, err)
            if p:
                assert (h[~keep] == 0).all() and (h[keep] != 0).any()
        print("OK")
    """)
    assert "OK" in run_in_interpreter(code)


def test_parse_blocks_errors_name_the_setting():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from geglu_epilogue import parse_blocks

    assert parse_blocks("128x64x32:4:3:8") == dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=32, num_warps=4, num_stages=3,
                                                   GROUP_M=8, loader="ptr")
    assert parse_blocks("128x64x32:4:3:8:tma_ws")["loader"] == "tma_ws"
    for bad in ("128x64:4", "128x64x32:4:3:8:tmx", "128x64x32:4:3:8:tma:1"):
        with pytest.raises(ValueError, match="MxNxK:warps:stages:group"):
            parse_blocks(bad)
    with pytest.raises(ValueError, match="BLOCK_N must be a power of two"):
        parse_blocks("128x48x32:4:3:8")


def test_fastest_picks_the_quickest_timed_configuration():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from geglu_epilogue import DEFAULT_BLOCKS, fastest

    rows = [dict(kernel="model: two cuBLAS matmuls", ms=0.1),
            dict(kernel="fused 128x128x64:8:3:8", ms=0.3), dict(kernel="fused 128x128x64:8:3:8 + keep-mask", ms=0.5),
            dict(kernel="fused 64x128x64:4:4:8", ms=0.2), dict(kernel="fused 64x128x64:4:4:8 + keep-mask", ms=0.4),
            dict(kernel="fused 256x64x64:8:3:8", error="OutOfResources")]
    assert fastest(rows) == "64x128x64:4:4:8"
    assert fastest(rows[:1]) == DEFAULT_BLOCKS


def test_variant_is_registered_and_falls_back_on_cpu():
    spec = importlib.util.spec_from_file_location("throughput", ROOT / "benchmarks" / "throughput.py")
    throughput = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(throughput)
    undo = throughput.VARIANTS["geglu_epilogue"]()  # patches; on CPU the patched forward runs the model's path
    try:
        import torch

        from mosaicbert import MosaicBertConfig, MosaicBertForMaskedLM

        torch.manual_seed(0)
        cfg = MosaicBertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                               intermediate_size=64)
        model = MosaicBertForMaskedLM(cfg).eval()
        ids = torch.randint(1, 64, (2, 8))
        patched = model(ids, labels=ids).loss
    finally:
        undo()
    assert torch.equal(patched, model(ids, labels=ids).loss)
