"""The Triton dropout mask (model/dropout.py), run on CPU through Triton's interpreter, against plain references.

TRITON_INTERPRET=1 must be set before the kernel is decorated (at import), so the checks run in a child process.
"""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import run_in_interpreter

SRC = Path(__file__).resolve().parents[2] / "src"

needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not importable")

PRELUDE = """
import os, sys
assert os.environ.get("TRITON_INTERPRET") == "1"
sys.path.insert(0, {src!r})
import torch
from mosaicbert.model.dropout import Dropout, dropout_keep_mask, drop_threshold
"""


def run_interpreted(body: str, timeout: int = 300) -> str:
    return run_in_interpreter(PRELUDE.format(src=str(SRC)) + textwrap.dedent(body), timeout)


@needs_triton
def test_mask_is_the_documented_function_of_the_philox_words():
    # Reference: element i keeps iff half (i % 2) of word (i % 8) // 2 of Philox(seed, counter i // 8) >= threshold.
    # The Philox words come from triton's own randint4x (one program, counters 0..G-1), so this checks the layout:
    # lanes, halves, the threshold, and the block boundaries (n not a multiple of the block).
    out = run_interpreted("""
        import triton, triton.language as tl

        @triton.jit
        def words(SEED, OUT, G: tl.constexpr):
            c = tl.arange(0, G)
            r0, r1, r2, r3 = tl.randint4x(tl.load(SEED), c.to(tl.int64))
            tl.store(OUT + c * 4 + 0, r0)
            tl.store(OUT + c * 4 + 1, r1)
            tl.store(OUT + c * 4 + 2, r2)
            tl.store(OUT + c * 4 + 3, r3)

        n, p = 5000, 0.3  # 625 Philox counters, 3 programs of 2048 elements
        seed = torch.tensor([123456789], dtype=torch.int64)
        w = torch.empty(1024 * 4, dtype=torch.int32)
        words[(1,)](seed, w, G=1024)
        w = w.view(-1, 4).long() & 0xFFFFFFFF  # [G, 4] uint32 words
        i = torch.arange(n)
        word = w[i // 8, (i % 8) // 2]
        half = torch.where(i % 2 == 0, word & 0xFFFF, word >> 16)
        expected = half >= drop_threshold(p)
        keep = dropout_keep_mask(seed, (50, 100), p)
        assert keep.dtype == torch.bool and keep.shape == (50, 100)
        assert torch.equal(keep.flatten(), expected)
        assert torch.equal(dropout_keep_mask(seed, (n,), p), expected)  # a function of (seed, numel, p)
        print("OK")
    """)
    assert "OK" in out


@needs_triton
@pytest.mark.slow
def test_mask_statistics_and_seeds():
    out = run_interpreted("""
        n = 1 << 20
        seed = torch.tensor([7], dtype=torch.int64)
        for p in (0.1, 0.5, 0.9):
            keep = dropout_keep_mask(seed, (n,), p)
            dropped = 1.0 - keep.float().mean().item()
            assert abs(dropped - p) < 3e-3, (p, dropped)  # ~6 standard deviations
            # neighbours (same Philox word, same counter, next counter) are independent: P(equal) = p^2 + (1-p)^2
            for lag in (1, 2, 8):
                same = (keep[lag:] == keep[:-lag]).float().mean().item()
                assert abs(same - (p * p + (1 - p) ** 2)) < 4e-3, (p, lag, same)
        a = dropout_keep_mask(seed, (n,), 0.5)
        assert torch.equal(a, dropout_keep_mask(seed.clone(), (n,), 0.5))  # deterministic
        b = dropout_keep_mask(torch.tensor([8], dtype=torch.int64), (n,), 0.5)
        assert (a != b).float().mean().item() > 0.45  # another seed, another mask
        assert dropout_keep_mask(seed, (0, 4), 0.5).shape == (0, 4)
        assert dropout_keep_mask(seed, (n,), 0.0).all()
        print("OK")
    """)
    assert "OK" in out


@needs_triton
def test_dropout_forward_backward_match_reference():
    # The module's output and gradient are x * keep / (1 - p) and g * keep / (1 - p), with keep the kernel's mask
    # for the seed the module drew from torch's generator.
    out = run_interpreted("""
        p = 0.25
        x = torch.randn(37, 129, dtype=torch.float64, requires_grad=True)
        g = torch.randn(37, 129, dtype=torch.float64)
        drop = Dropout(p, kernel="triton").train()
        torch.manual_seed(11)
        y = drop(x)
        (dx,) = torch.autograd.grad(y, x, g)
        torch.manual_seed(11)
        seed = torch.randint(0, 2**62, (1,), dtype=torch.int64)
        keep = dropout_keep_mask(seed, x.shape, p)
        assert 0.15 < 1 - keep.double().mean() < 0.35
        torch.testing.assert_close(y, x.detach() * keep / (1 - p), rtol=1e-12, atol=0)
        torch.testing.assert_close(dx, g * keep / (1 - p), rtol=1e-12, atol=0)
        assert drop.eval()(x) is x  # eval mode: identity
        assert Dropout(0.0, kernel="triton").train()(x) is x
        # (torch.compile traces the launch of a JIT kernel, not of the interpreter's stand-in: the compiled path is
        # tested on the GPU, tests/test_model_gpu.py)
        print("OK")
    """)
    assert "OK" in out


def test_dropout_kernel_choice_and_errors():
    # in this process TRITON_INTERPRET is unset (unless the whole run sets it): "auto" on CPU is torch's dropout
    from mosaicbert import MosaicBertConfig
    from mosaicbert.model.dropout import TRITON_INTERPRET, Dropout

    x = torch.randn(64, 64)
    torch.manual_seed(0)
    y = Dropout(0.5, kernel="auto").train()(x)
    torch.manual_seed(0)
    assert torch.equal(y, torch.nn.functional.dropout(x, 0.5, training=True))
    with pytest.raises(ValueError, match="dropout_kernel"):
        Dropout(0.1, kernel="fast")
    with pytest.raises(ValueError, match="dropout_kernel"):
        MosaicBertConfig(dropout_kernel="fast")
    with pytest.raises(ValueError, match="probability"):
        Dropout(1.0)
    if importlib.util.find_spec("triton") is not None and not TRITON_INTERPRET:
        with pytest.raises(ValueError, match="needs CUDA"):
            Dropout(0.1, kernel="triton").train()(x)


@needs_triton
@pytest.mark.slow
def test_model_trains_with_triton_dropout():
    # every hidden dropout of the model (embeddings, attention output, GeGLU output) takes the kernel's mask:
    # in train mode, two forwards differ, a reseeded forward repeats exactly, and gradients reach every layer
    out = run_interpreted("""
        from mosaicbert import MosaicBertConfig, MosaicBertForMaskedLM

        torch.manual_seed(0)
        cfg = MosaicBertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                               intermediate_size=64, hidden_dropout_prob=0.2, dropout_kernel="triton",
                               attention_backend="torch")
        model = MosaicBertForMaskedLM(cfg).train()
        kinds = {m.kernel for m in model.modules() if isinstance(m, Dropout)}
        assert kinds == {"triton"}, kinds
        ids = torch.randint(1, 64, (3, 10))
        labels = torch.where(torch.rand(3, 10) < 0.3, ids, -100)
        labels[0, 0] = ids[0, 0]
        torch.manual_seed(1); a = model(ids, labels=labels).loss
        torch.manual_seed(2); b = model(ids, labels=labels).loss
        torch.manual_seed(1); c = model(ids, labels=labels).loss
        assert a.item() != b.item() and a.item() == c.item(), (a, b, c)
        c.backward()
        g = model.bert.encoder.layer[0].mlp.gated_layers.weight.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0
        model.eval()
        with torch.no_grad():
            e1 = model(ids, labels=labels).loss
            e2 = model(ids, labels=labels).loss
        assert e1.item() == e2.item()
        print("OK")
    """)
    assert "OK" in out
