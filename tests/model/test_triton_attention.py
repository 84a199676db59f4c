"""The "triton" attention backend, run on CPU through Triton's interpreter.

TRITON_INTERPRET=1 must be set before the kernels are decorated (at import), so every check runs in a child
process with that variable: nothing leaks into the other tests, which import the model without it.
"""

from __future__ import annotations

import importlib.util
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import run_in_interpreter

SRC = Path(__file__).resolve().parents[2] / "src"

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
    return run_in_interpreter(PRELUDE.format(src=str(SRC)) + textwrap.dedent(body), timeout)


def test_kernels_match_reference_fp32():
    # mixed lengths with blocks of 16/32 so that query and key blocks straddle sequence ends;
    # H=3 gives non-power-of-two ALiBi slopes
    out = run_interpreted("""
        check([1, 5, 17, 70], H=3, D=16, bm=16, bn=32)
        check([33, 2, 16], H=2, D=32, bm=32, bn=16)
        check([40], H=3, D=64, bm=16, bn=16, seed=1)   # one sequence, several blocks each way
        check([3, 0, 20], H=2, D=128, bm=16, bn=16)    # an empty sequence in the batch
        # key block >= the longest sequence: the one-kernel (whole-sequence) backward
        check([1, 5, 17, 70], H=3, D=16, bm=16, bn=128)
        check([40], H=3, D=64, bm=32, bn=64, seed=1)
        check([3, 0, 9], H=2, D=128, bm=16, bn=16)
        print("OK")
    """)
    assert "OK" in out


def test_kernels_low_precision():
    # fp16/bf16 inputs, fp32 accumulation: error at the level of the input rounding
    out = run_interpreted("""
        check([5, 20], H=2, D=16, bm=16, bn=16, dtype=torch.float16, tol=2e-2)
        check([5, 20], H=2, D=16, bm=16, bn=16, dtype=torch.bfloat16, tol=6e-2)
        check([5, 20], H=2, D=16, bm=None, bn=None, dtype=torch.bfloat16, tol=6e-2)  # default: whole sequence
        print("OK")
    """)
    assert "OK" in out


@pytest.mark.slow
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
        # T = 42 real tokens; 64 rounds it to 64 with 22 dummy rows in two dummy sequences (21 + 1) and one empty
        for multiple in (0, 64):
            model.config.packed_length_multiple = multiple
            h, g = run("triton")
            err = (h - ref_h)[mask.bool()].abs().max().item()
            print("packed_length_multiple", multiple, "hidden", err)
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


def test_triton_backend_errors(monkeypatch):
    # in this process TRITON_INTERPRET is unset (unless the whole run sets it): CPU must be refused clearly
    from mosaicbert import MosaicBertConfig
    from mosaicbert.model.attention import ATTENTION_BACKENDS, AlibiCache, AttentionContext, resolve_backend
    from mosaicbert.model.padding import get_unpad_info
    from mosaicbert.model.triton_attention import TRITON_INTERPRET

    assert MosaicBertConfig(attention_backend="triton").attention_backend == "triton"
    assert ATTENTION_BACKENDS["triton"].installed()
    from mosaicbert.model import attention

    monkeypatch.setattr(attention, "cuda_capability", lambda dev: (9, 0))  # no GPU here: pretend a Hopper
    assert ATTENTION_BACKENDS["triton"].usable(torch.device("cuda"), torch.bfloat16)  # "auto" may pick it there
    assert not ATTENTION_BACKENDS["triton"].usable(torch.device("cpu"), torch.bfloat16)
    assert resolve_backend("auto", torch.device("cpu"), torch.float32).name == "torch"
    if not TRITON_INTERPRET:
        with pytest.raises(ValueError, match="needs CUDA"):
            resolve_backend("triton", torch.device("cpu"), torch.float32)
    mask = torch.ones(1, 4, dtype=torch.bool)
    ctx = AttentionContext(get_unpad_info(mask), mask, AlibiCache(2, 8), 2)
    with pytest.raises(ValueError, match="attention_probs_dropout_prob"):
        ATTENTION_BACKENDS["triton"].attend(torch.randn(4, 3, 2, 16), ctx, 0.1)


@pytest.mark.slow
def test_custom_op_matches_function_and_reference():
    # The public function goes through the torch.library ops (mosaicbert::triton_alibi_varlen_fwd/bwd); the
    # plain autograd.Function runs the same launches without them. Same numbers, bit for bit, and both match
    # the fp64 reference, for any layout of qkv and of the incoming gradient (the ops make them contiguous).
    out = run_interpreted("""
        from mosaicbert.model.triton_attention import TritonAlibiVarlenAttention

        torch.manual_seed(3)
        lens, H, D = [7, 1, 30, 0, 12], 3, 32
        T = sum(lens)
        slopes = torch.tensor(alibi_slopes(H))
        cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
        qkv_base = torch.randn(3, T, H, D) * 2
        douts = {
            "contiguous": torch.randn(T, H, D),
            "transposed": torch.randn(H, T, D).transpose(0, 1),       # strides (D, T*D, 1)
            "expanded": torch.randn(1, H, D).expand(T, H, D),         # stride 0 over tokens
            "head_dim_strided": torch.randn(T, H, D, 2)[..., 0],      # last axis not contiguous
        }
        qkv_ref = qkv_base.permute(1, 0, 2, 3).contiguous().double().requires_grad_(True)
        ref = reference(qkv_ref, lens, slopes)
        for qkv_layout in ("contiguous", "permuted"):
            src = qkv_base.permute(1, 0, 2, 3)  # [T, 3, H, D], non-contiguous view
            if qkv_layout == "contiguous":
                src = src.contiguous()
            qkv = src.detach().requires_grad_(True)
            out_op = triton_alibi_varlen_attention(qkv, cu, max(lens), slopes, 16, 16)
            out_fn = TritonAlibiVarlenAttention.apply(qkv, cu, max(lens), slopes, 16, 16)
            assert out_op.is_contiguous() and out_op.shape == (T, H, D)
            assert torch.equal(out_op, out_fn), qkv_layout
            err_out = (out_op.double() - ref).abs().max().item()
            assert err_out < 1e-4, (qkv_layout, err_out)
            for name, g in douts.items():
                (d_op,) = torch.autograd.grad(out_op, qkv, g, retain_graph=True)
                (d_fn,) = torch.autograd.grad(out_fn, qkv, g.contiguous(), retain_graph=True)
                (d_ref,) = torch.autograd.grad(ref, qkv_ref, g.double(), retain_graph=True)
                assert torch.equal(d_op, d_fn), (qkv_layout, name)
                err = ((d_op.double() - d_ref).abs().max() / d_ref.abs().max().clamp_min(1)).item()
                print(qkv_layout, name, "out", err_out, "grad", err)
                assert err < 1e-4, (qkv_layout, name, err)
        print("OK")
    """)
    assert "OK" in out


def test_custom_ops_registered_once_and_opcheck():
    # A second import of the file under another module name (as Hugging Face remote code does) reuses the
    # registered ops instead of failing; torch.library.opcheck validates schema, fake (meta) functions incl.
    # strides, autograd registration and aot_autograd tracing with dynamic shapes, on real interpreted runs.
    out = run_interpreted("""
        import importlib.util
        import mosaicbert.model.triton_attention as ta

        import types
        pkg = types.ModuleType("remote_copy")  # a package, so that the file's `from .padding import` resolves
        pkg.__path__ = [os.path.dirname(ta.__file__)]
        sys.modules["remote_copy"] = pkg
        spec = importlib.util.spec_from_file_location("remote_copy.triton_attention", ta.__file__)
        copy = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = copy
        spec.loader.exec_module(copy)
        assert copy is not ta and copy.HAS_TRITON
        assert copy.triton_alibi_varlen_fwd is torch.ops.mosaicbert.triton_alibi_varlen_fwd
        assert copy.triton_alibi_varlen_bwd is torch.ops.mosaicbert.triton_alibi_varlen_bwd

        torch.manual_seed(0)
        lens, H, D = [5, 19, 1], 2, 16
        T = sum(lens)
        cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
        slopes = torch.tensor(alibi_slopes(H))
        qkv = torch.randn(T, 3, H, D, requires_grad=True)
        fwd, bwd = torch.ops.mosaicbert.triton_alibi_varlen_fwd, torch.ops.mosaicbert.triton_alibi_varlen_bwd
        for args in [(qkv, cu, max(lens), slopes, 16, 16), (qkv, cu, max(lens), slopes, None, None)]:
            res = torch.library.opcheck(fwd.default, args)
            print("fwd", res)
        with torch.no_grad():
            out, lse = fwd(qkv, cu, max(lens), slopes, 16, 16)
        dout = torch.randn(H, T, D).transpose(0, 1)
        res = torch.library.opcheck(bwd.default, (dout, qkv.detach(), out, lse, cu, slopes, max(lens), 16, 16))
        print("bwd", res)
        # the second module's public function runs through the shared ops
        o = copy.triton_alibi_varlen_attention(qkv, cu, max(lens), slopes, 16, 16)
        assert torch.equal(o, out)
        print("OK")
    """, timeout=300)
    assert "OK" in out


COMPILED_MODEL = """
import copy
import torch._dynamo
from mosaicbert import MosaicBertConfig, MosaicBertForMaskedLM

backend_name = {backend!r}
torch.manual_seed(0)
cfg = MosaicBertConfig(
    vocab_size=64, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=96,
    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, alibi_starting_size=16, attention_backend="triton",
)
eager = MosaicBertForMaskedLM(cfg).train()
with torch.no_grad():
    for p in eager.parameters():
        p.add_(0.1 * torch.randn_like(p))  # attention far from uniform
compiled_model = copy.deepcopy(eager)

targets, frames = set(), []
inner = torch._dynamo.lookup_backend(backend_name)

def backend(gm, example_inputs):
    frames.append(gm)
    targets.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
    return inner(gm, example_inputs)

compiled = torch.compile(compiled_model, backend=backend)

def batch(lengths, S, seed):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.arange(S)[None] < torch.tensor(lengths)[:, None]).long()
    ids = torch.randint(1, cfg.vocab_size, (len(lengths), S), generator=g) * mask
    labels = torch.where((torch.rand(ids.shape, generator=g) < 0.3) & mask.bool(), ids, torch.full_like(ids, -100))
    labels[0, 0] = 3
    return dict(input_ids=ids, attention_mask=mask, labels=labels)

# different T, M and max_seqlen per batch: after one recompile (max_seqlen becomes a SymInt) no more
for seed, lengths in enumerate({batches!r}):
    b = batch(lengths, 17, seed)
    l1 = eager(**b).loss
    l1.backward()
    l2 = compiled(**b).loss
    l2.backward()
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-6)
    worst = 0.0
    for (n, p1), (_, p2) in zip(eager.named_parameters(), compiled_model.named_parameters()):
        e = ((p2.grad - p1.grad).abs().max() / p1.grad.abs().max().clamp_min(1)).item()
        assert e < 1e-5, (n, e)
        worst = max(worst, e)
    print(backend_name, lengths, "loss", l1.item(), l2.item(), "grad rel err", worst)
    eager.zero_grad()
    compiled_model.zero_grad()
print("frames", len(frames), sorted(t for t in targets if "mosaicbert" in t or "triton" in t))
assert len(frames) <= 2, len(frames)
assert any(t.startswith("mosaicbert.triton_alibi_varlen_fwd") for t in targets), targets
assert not any("triton_kernel_wrapper" in t for t in targets), targets  # kernels stay inside the op
print("OK")
"""


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.slow
def test_compiled_model_matches_eager(backend):
    # torch.compile sees the attention as opaque ops: aot_autograd traces forward and backward around them
    # (aot_eager), inductor additionally generates CPU C++ code for everything else and calls the ops as
    # extern kernels. Loss and every gradient match eager.
    if backend == "inductor":
        import shutil

        if not any(shutil.which(c) for c in ("g++", "c++", "clang++")):
            pytest.skip("inductor on CPU needs a C++ compiler")
        batches = [[17, 4, 6], [1, 5, 11], [3, 9, 2]]
    else:
        batches = [[17, 4, 6], [17, 17, 2], [1, 5, 11], [3, 9, 2]]
    out = run_interpreted(COMPILED_MODEL.format(backend=backend, batches=batches), timeout=600)
    assert "OK" in out


def test_whole_sequence_backward_matches_split_backward():
    # The one-kernel backward (a key block holds every sequence) and the three-kernel one give the same dQ, dK, dV;
    # the default picks the one-kernel path for 16-bit pretraining shapes (S <= 128 at D = 64) and not beyond.
    out = run_interpreted("""
        from mosaicbert.model.triton_attention import _bwd_config

        assert _bwd_config(64, torch.bfloat16, 128, None, None) == (16, 128, 4, True)
        assert _bwd_config(64, torch.bfloat16, 100, None, None)[1] == 128
        assert not _bwd_config(64, torch.bfloat16, 512, None, None)[3]
        assert not _bwd_config(128, torch.bfloat16, 128, None, None)[3]
        assert not _bwd_config(64, torch.float32, 128, None, None)[3]  # fp32 keeps its small tiles by default
        assert _bwd_config(64, torch.float32, 60, 16, 64)[3]          # an explicit block_n >= max_seqlen

        torch.manual_seed(5)
        lens, H, D = [9, 31, 1, 0, 24], 2, 32
        T = sum(lens)
        slopes = torch.tensor(alibi_slopes(H))
        cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32)
        qkv = (torch.randn(T, 3, H, D) * 2).requires_grad_(True)
        g = torch.randn(T, H, D)
        grads = {}
        for bn in (16, 32):  # 16: split (three kernels); 32 >= 31: whole sequence (one kernel)
            out = triton_alibi_varlen_attention(qkv, cu, max(lens), slopes, 16, bn)
            (grads[bn],) = torch.autograd.grad(out, qkv, g)
        err = (grads[16] - grads[32]).abs().max().item()
        print("split vs whole-sequence backward", err)
        assert err < 1e-5, err

        import mosaicbert.model.triton_attention as triton_attention
        triton_attention._NUM_STAGES = 2  # the pipelining-depth knob reaches every launch
        for bn in (16, 32):
            out = triton_alibi_varlen_attention(qkv, cu, max(lens), slopes, 16, bn)
            (staged,) = torch.autograd.grad(out, qkv, g)
            assert torch.equal(staged, grads[bn])
        print("OK")
    """)
    assert "OK" in out
