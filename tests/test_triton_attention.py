"""The "triton" attention backend, run on CPU through Triton's interpreter.

TRITON_INTERPRET=1 must be set before the kernels are decorated (at import), so every check runs in a child
process with that variable: nothing leaks into the other tests, which import the model without it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

SRC = Path(__file__).resolve().parents[1] / "src"

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not importable")

PRELUDE = """
import os, sys
assert os.environ.get("TRITON_INTERPRET") == "1"
sys.path.insert(0, {src!r})
import torch
from mosaicbert.model.attention import alibi_slopes
from mosaicbert.model.triton_attention import triton_alibi_varlen_attention


def reference(qkv, lens, slopes):
    # fp64, one sequence at a time: explicit ALiBi bias matrix, softmax, matmul
    outs, s = [], 0
    for L in lens:
        q, k, v = qkv[s:s + L].double().unbind(1)  # [L, H, D]
        scores = torch.einsum("ihd,jhd->hij", q, k) / q.shape[-1] ** 0.5
        pos = torch.arange(L)
        scores = scores - slopes.double()[:, None, None] * (pos[:, None] - pos[None]).abs()
        outs.append(torch.einsum("hij,jhd->ihd", scores.softmax(-1), v))
        s += L
    return torch.cat(outs)


def check(lens, H, D, bm, bn, dtype=torch.float32, tol=1e-4, seed=0):
    torch.manual_seed(seed)
    T = sum(lens)
    slopes = torch.tensor(alibi_slopes(H))
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
    base = torch.randn(T, 3, H, D) * 2  # larger scores: attention far from uniform
    qkv = base.to(dtype).requires_grad_(True)
    out = triton_alibi_varlen_attention(qkv, cu, max(lens), slopes, bm, bn)
    assert out.shape == (T, H, D) and out.dtype == dtype
    g = torch.randn(T, H, D)
    (dqkv,) = torch.autograd.grad(out, qkv, g.to(dtype))
    qkv64 = qkv.detach().double().requires_grad_(True)
    ref = reference(qkv64, lens, slopes)
    (dref,) = torch.autograd.grad(ref, qkv64, g.double())
    err_out = (out.double() - ref).abs().max().item()
    err_grad = ((dqkv.double() - dref).abs().max() / dref.abs().max().clamp_min(1)).item()
    print(lens, H, D, bm, bn, dtype, "out", err_out, "grad", err_grad)
    assert err_out < tol, err_out
    assert err_grad < tol, err_grad
"""


def run_interpreted(body: str, timeout: int = 120) -> str:
    env = dict(os.environ, TRITON_INTERPRET="1")
    code = PRELUDE.format(src=str(SRC)) + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"child failed:\n{proc.stdout}\n{proc.stderr[-4000:]}"
    print(proc.stdout)  # the measured errors, visible with pytest -s
    return proc.stdout


def test_kernels_match_reference_fp32():
    # mixed lengths with blocks of 16/32 so that query and key blocks straddle sequence ends;
    # H=3 gives non-power-of-two ALiBi slopes
    out = run_interpreted("""
        check([1, 5, 17, 70], H=3, D=16, bm=16, bn=32)
        check([33, 2, 16], H=2, D=32, bm=32, bn=16)
        check([40], H=3, D=64, bm=16, bn=16, seed=1)   # one sequence, several blocks each way
        check([3, 0, 9], H=2, D=128, bm=16, bn=16)     # an empty sequence in the batch
        print("OK")
    """)
    assert "OK" in out


def test_kernels_low_precision():
    # fp16/bf16 inputs, fp32 accumulation: error at the level of the input rounding
    out = run_interpreted("""
        check([5, 20], H=2, D=16, bm=16, bn=16, dtype=torch.float16, tol=2e-2)
        check([5, 20], H=2, D=16, bm=16, bn=16, dtype=torch.bfloat16, tol=6e-2)
        print("OK")
    """)
    assert "OK" in out


def test_model_triton_matches_torch_backend():
    out = run_interpreted("""
        from mosaicbert import MosaicBertConfig, MosaicBertModel

        torch.manual_seed(0)
        cfg = MosaicBertConfig(
            vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
            hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, alibi_starting_size=8,
        )
        model = MosaicBertModel(cfg)
        S = 21
        lengths = torch.tensor([S, 1, 13, 7])
        mask = (torch.arange(S)[None] < lengths[:, None]).long()
        ids = torch.randint(1, cfg.vocab_size, (4, S)) * mask

        def run(backend):
            model.config.attention_backend = backend
            model.zero_grad(set_to_none=True)
            h = model(ids, attention_mask=mask).last_hidden_state
            (h * torch.linspace(-1, 1, h.shape[-1])).sum().backward()
            grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            return h.detach(), grads

        ref_h, ref_g = run("torch")
        h, g = run("triton")
        err = (h - ref_h)[mask.bool()].abs().max().item()
        print("hidden", err)
        assert err < 1e-4, err
        assert g.keys() == ref_g.keys()
        for n in ref_g:
            e = ((g[n] - ref_g[n]).abs().max() / ref_g[n].abs().max().clamp_min(1)).item()
            assert e < 1e-4, (n, e)
        qkv_grad = "encoder.layer.0.attention.self.Wqkv.weight"
        assert qkv_grad in g and g[qkv_grad].abs().sum() > 0
        print("OK")
    """)
    assert "OK" in out


def test_triton_backend_errors():
    # in this process TRITON_INTERPRET is unset (unless the whole run sets it): CPU must be refused clearly
    from mosaicbert import MosaicBertConfig
    from mosaicbert.model.attention import ATTENTION_BACKENDS, AlibiCache, AttentionContext, resolve_backend
    from mosaicbert.model.padding import get_unpad_info
    from mosaicbert.model.triton_attention import TRITON_INTERPRET

    assert MosaicBertConfig(attention_backend="triton").attention_backend == "triton"
    assert ATTENTION_BACKENDS["triton"].installed()
    assert not ATTENTION_BACKENDS["triton"].usable(torch.device("cuda"), torch.bfloat16)  # never auto-picked
    assert resolve_backend("auto", torch.device("cpu"), torch.float32).name == "torch"
    if not TRITON_INTERPRET:
        with pytest.raises(ValueError, match="needs CUDA"):
            resolve_backend("triton", torch.device("cpu"), torch.float32)
    mask = torch.ones(1, 4, dtype=torch.bool)
    ctx = AttentionContext(get_unpad_info(mask), mask, AlibiCache(2, 8), 2)
    with pytest.raises(ValueError, match="attention_probs_dropout_prob"):
        ATTENTION_BACKENDS["triton"].attend(torch.randn(4, 3, 2, 16), ctx, 0.1)
