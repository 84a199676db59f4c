"""GPU backends vs the "torch" reference backend, same weights, bf16 autocast (and fp32 for sdpa)."""

import math

import pytest
import torch

from mosaicbert import MosaicBertConfig, MosaicBertForMaskedLM
from mosaicbert.model.attention import (
    ATTENTION_BACKENDS,
    AUTO_PREFERENCE,
    AlibiCache,
    AttentionContext,
    alibi_slopes,
    resolve_backend,
)
from mosaicbert.model.padding import get_unpad_info

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]

GPU_BACKENDS = [name for name in ("sdpa", "flex", "flash_attn", "triton") if ATTENTION_BACKENDS[name].installed()]
needs_flash_attn = pytest.mark.skipif(not ATTENTION_BACKENDS["flash_attn"].installed(),
                                      reason="flash-attn >= 2.4 is not installed")


def _setup(seed=0, alibi_starting_size=64, seqlen=96):
    torch.manual_seed(seed)
    cfg = MosaicBertConfig(
        vocab_size=1024, hidden_size=768, num_hidden_layers=2, num_attention_heads=12, intermediate_size=1536,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, alibi_starting_size=alibi_starting_size,
    )
    model = MosaicBertForMaskedLM(cfg).cuda()
    with torch.no_grad():  # larger weights than init so attention patterns are far from uniform
        for name, p in model.named_parameters():
            if p.dim() == 2:
                p.mul_(2.0)
    B = 6
    lengths = torch.tensor([seqlen, 1, 17, seqlen - 5, 64, 33])  # mixed; seqlen > alibi_starting_size
    mask = (torch.arange(seqlen)[None] < lengths[:, None]).long()
    ids = torch.randint(1, cfg.vocab_size, (B, seqlen)) * mask
    labels = torch.where((torch.rand(B, seqlen) < 0.3) & mask.bool(), ids, torch.full_like(ids, -100))
    labels[0, 0] = 5
    return model, ids.cuda(), mask.cuda(), labels.cuda()


def _run(model, backend, ids, mask, labels, autocast=True):
    model.config.attention_backend = backend
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = model.bert(ids, attention_mask=mask).last_hidden_state
        loss = model(ids, attention_mask=mask, labels=labels).loss
    (loss + out.float().square().mean()).backward()
    grads = {n: p.grad.detach().float().clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach().float()[mask.bool()], loss.detach().float(), grads


def _rel(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_backend_matches_torch_reference_bf16(backend):
    model, ids, mask, labels = _setup()
    ref_out, ref_loss, ref_grads = _run(model, "torch", ids, mask, labels)
    out, loss, grads = _run(model, backend, ids, mask, labels)
    errs = {n: _rel(grads[n], g) for n, g in ref_grads.items()}
    print(backend, "out", _rel(out, ref_out), "loss", abs(loss.item() - ref_loss.item()) / ref_loss.item(),
          "worst grad", max(errs.items(), key=lambda kv: kv[1]))
    assert _rel(out, ref_out) < 2e-2
    assert abs(loss.item() - ref_loss.item()) / ref_loss.item() < 2e-2
    assert grads.keys() == ref_grads.keys()
    for n, e in errs.items():
        assert e < 2e-2, (n, e)


def test_sdpa_matches_torch_reference_fp32():
    model, ids, mask, labels = _setup(seed=1)
    ref_out, ref_loss, ref_grads = _run(model, "torch", ids, mask, labels, autocast=False)
    out, loss, grads = _run(model, "sdpa", ids, mask, labels, autocast=False)
    assert _rel(out, ref_out) < 1e-3
    for n, g in ref_grads.items():
        assert _rel(grads[n], g) < 1e-3, n


def test_auto_picks_a_gpu_backend():
    # the first installed of the fast kernels, in AUTO_PREFERENCE's order
    fast = [n for n in AUTO_PREFERENCE if n in ("flash_attn", "triton") and ATTENTION_BACKENDS[n].installed()]
    assert resolve_backend("auto", torch.device("cuda"), torch.bfloat16, head_dim=64).name == (fast or ["sdpa"])[0]
    assert resolve_backend("auto", torch.device("cuda"), torch.float32, head_dim=64).name == "sdpa"


# ----------------------------------------------------------------------------------------------------------
# flash-attn: the kernel against fp32 references, on the packed tokens of right-padded rows

FLASH_LENGTHS = [200, 1, 17, 195, 64, 130]  # mixed, longer than the ALiBi cache's starting size (64)


def _packed(head_dim, dtype, heads=12, seed=0):
    """qkv [T, 3, H, D] (requires grad) for rows of FLASH_LENGTHS, the batch's AttentionContext, cu_seqlens."""
    torch.manual_seed(seed)
    S = max(FLASH_LENGTHS)
    mask = (torch.arange(S)[None] < torch.tensor(FLASH_LENGTHS)[:, None]).cuda()
    ctx = AttentionContext(get_unpad_info(mask), mask, AlibiCache(heads, 64), heads)
    qkv = (torch.randn(int(mask.sum()), 3, heads, head_dim, device="cuda") * 2).to(dtype).requires_grad_(True)
    cu = [0, *torch.tensor(FLASH_LENGTHS).cumsum(0).tolist()]
    return qkv, ctx, cu


def _per_sequence_reference(qkv, cu, slopes, keep=None, p=0.0):
    """fp32 attention of each sequence alone: softmax(q.k / sqrt(D) - slope_h |i - j|), times keep / (1 - p) when
    a dropout keep mask [B, H, >=L, >=L] is given, @ v."""
    D = qkv.shape[-1]
    outs = []
    for b in range(len(cu) - 1):
        q, k, v = qkv[cu[b]:cu[b + 1]].float().unbind(1)  # [L, H, D]
        pos = torch.arange(q.shape[0], device=q.device)
        scores = torch.einsum("ihd,jhd->hij", q, k) / D ** 0.5 - slopes[:, None, None] * (pos[:, None] - pos).abs()
        probs = scores.softmax(-1)
        if keep is not None:
            L = q.shape[0]
            probs = probs * keep[b, :, :L, :L] / (1 - p)
        outs.append(torch.einsum("hij,jhd->ihd", probs, v))
    return torch.cat(outs)


@needs_flash_attn
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_flash_attn_matches_fp32_torch_reference(head_dim, dtype):
    """Outputs and input gradients of the flash_attn backend against the torch backend run in fp32 on the same
    inputs: 12 heads (ALiBi slopes of a non-power of two), sequences up to 200 > the ALiBi cache's 64."""
    qkv, ctx, cu = _packed(head_dim, dtype)
    g = torch.randn(qkv.shape[0], 12, head_dim, device="cuda").to(dtype)
    out = ATTENTION_BACKENDS["flash_attn"].attend(qkv, ctx, 0.0)
    (dqkv,) = torch.autograd.grad(out, qkv, g)
    qkv32 = qkv.detach().float().requires_grad_(True)
    ref = ATTENTION_BACKENDS["torch"].attend(qkv32, ctx, 0.0)
    (dref,) = torch.autograd.grad(ref, qkv32, g.float())
    # the test sees ALiBi: without the slopes the reference is far off
    no_alibi = _per_sequence_reference(qkv.detach(), cu, torch.zeros(12, device="cuda"))
    print(head_dim, dtype, "out", _rel(out.float(), ref), "dqkv", _rel(dqkv.float(), dref),
          "alibi's effect", _rel(no_alibi, ref))
    assert out.dtype == dtype and out.shape == ref.shape
    assert _rel(no_alibi, ref) > 0.1
    assert _rel(out.float(), ref) < 2e-2
    assert _rel(dqkv.float(), dref) < 2e-2
    for part in range(3):  # q, k and v gradients each (a little more room: each is smaller than their sum)
        assert _rel(dqkv[:, part].float(), dref[:, part]) < 3e-2, part


@needs_flash_attn
@pytest.mark.parametrize("head_dim", [64, 128])
def test_flash_attn_dropout_matches_reference_with_its_mask(head_dim):
    """Attention dropout p=0.2: flash-attn returns the mask it drew (S_dmask, dropped entries negative). The output
    and input gradients equal the fp32 reference applying that mask with the 1/(1-p) rescale, about a fraction p
    is dropped, and the backend's own call (no mask returned) draws the same mask from the same RNG state."""
    from mosaicbert.model.attention import flash_attn_varlen_qkvpacked_func

    p = 0.2
    qkv, ctx, cu = _packed(head_dim, torch.bfloat16, seed=1)
    slopes = torch.tensor(alibi_slopes(12), device="cuda")
    g = torch.randn(qkv.shape[0], 12, head_dim, device="cuda").bfloat16()
    torch.cuda.manual_seed(123)
    out, _, s_dmask = flash_attn_varlen_qkvpacked_func(qkv, ctx.info.cu_seqlens, max(FLASH_LENGTHS), dropout_p=p,
                                                       causal=False, alibi_slopes=slopes, return_attn_probs=True)
    (dqkv,) = torch.autograd.grad(out, qkv, g)
    keep = ~torch.signbit(s_dmask)  # [B, H, S_rounded, S_rounded]; the sign bit marks a dropped entry, even a 0
    real = sum(12 * L * L for L in FLASH_LENGTHS)
    dropped = sum(int((~keep[b, :, :L, :L]).sum()) for b, L in enumerate(FLASH_LENGTHS))
    qkv32 = qkv.detach().float().requires_grad_(True)
    ref = _per_sequence_reference(qkv32, cu, slopes, keep, p)
    (dref,) = torch.autograd.grad(ref, qkv32, g.float())
    torch.cuda.manual_seed(123)
    with torch.no_grad():
        backend_out = ATTENTION_BACKENDS["flash_attn"].attend(qkv, ctx, p)
    no_dropout = _per_sequence_reference(qkv.detach(), cu, slopes)
    print(head_dim, "dropped", dropped / real, "out", _rel(out.float(), ref), "dqkv", _rel(dqkv.float(), dref),
          "backend vs returned-mask call", _rel(backend_out.float(), out.float()),
          "dropout's effect", _rel(no_dropout, ref))
    assert abs(dropped / real - p) < 0.01
    assert _rel(no_dropout, ref) > 0.1  # the mask matters: a kernel ignoring dropout fails the next check
    assert _rel(out.float(), ref) < 2e-2
    assert _rel(dqkv.float(), dref) < 2e-2
    assert _rel(backend_out.float(), out.float()) < 1e-3


@needs_flash_attn
def test_flash_attn_dropout_is_unbiased():
    """E[dropout output] = the no-dropout output (a second check that needs no mask from the kernel)."""
    qkv, ctx, cu = _packed(64, torch.bfloat16, seed=2)
    attend = ATTENTION_BACKENDS["flash_attn"].attend
    with torch.no_grad():
        clean = attend(qkv, ctx, 0.0).float()
        mean = sum(attend(qkv, ctx, 0.5).float() for _ in range(1600)) / 1600
    # sampling error a few %; forgetting the 1/(1-p) rescale would give ~50%
    print("mean of 1600 dropout draws vs no dropout", _rel(mean, clean))
    assert _rel(mean, clean) < 0.1


@needs_flash_attn
def test_flash_attn_attention_dropout_in_the_model():
    """attention_probs_dropout_prob > 0 with the flash_attn backend: in training two forwards differ, in eval the
    output is deterministic and equals the torch reference backend's (no dropout in eval)."""
    torch.manual_seed(3)
    cfg = MosaicBertConfig(vocab_size=1024, hidden_size=256, num_hidden_layers=2, num_attention_heads=4,
                           intermediate_size=512, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.3,
                           attention_backend="flash_attn")
    model = MosaicBertForMaskedLM(cfg).cuda()
    lengths = torch.tensor([40, 7, 33])
    mask = (torch.arange(40)[None] < lengths[:, None]).long().cuda()
    ids = torch.randint(1, cfg.vocab_size, (3, 40), device="cuda") * mask

    def hidden():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            return model.bert(ids, attention_mask=mask).last_hidden_state.float()[mask.bool()]

    model.train()
    a, b = hidden(), hidden()
    assert _rel(a, b) > 1e-2
    model.eval()
    c, d = hidden(), hidden()
    torch.testing.assert_close(c, d)
    model.config.attention_backend = "torch"
    assert _rel(c, hidden()) < 2e-2


def test_out_of_range_ids_on_gpu():
    model, ids, mask, labels = _setup()
    ids[0, 0] = model.config.vocab_size
    for backend in ["auto", *GPU_BACKENDS]:
        model.config.attention_backend = backend
        with pytest.raises(ValueError, match="input_ids"):
            with torch.autocast("cuda", dtype=torch.bfloat16):
                model(ids, attention_mask=mask)


def test_low_precision_layernorm_runs_in_bf16():
    model, ids, mask, labels = _setup()
    ln = model.bert.encoder.layer[0].mlp.layernorm
    x = torch.randn(4, 768, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        assert ln(x).dtype == torch.bfloat16
        ln.low_precision = False
        assert ln(x).dtype == torch.float32


@pytest.mark.parametrize("backend", [
    pytest.param("triton", marks=pytest.mark.skipif(not ATTENTION_BACKENDS["triton"].installed(),
                                                    reason="triton is not installed")),
    pytest.param("flash_attn", marks=needs_flash_attn),
])
def test_varlen_backend_under_inductor_matches_eager(backend):
    """The varlen kernels (ours, flash-attn's) run inside torch.library custom ops, opaque to inductor: a compiled
    training step (forward + backward, bf16 autocast) over batches of changing T and max_seqlen matches eager."""
    import copy

    import torch._dynamo

    torch._dynamo.reset()
    model, ids, mask, labels = _setup(seed=2)
    model.config.attention_backend = backend
    compiled_model = copy.deepcopy(model)
    compiled = torch.compile(compiled_model)  # inductor

    def step(m, fn, ids, mask, labels):
        m.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = fn(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        return loss.detach().float(), {n: p.grad.float().clone() for n, p in m.named_parameters() if p.grad is not None}

    for cut in (None, 50, 7):  # shorter rows each time: new T, M and max_seqlen
        if cut is not None:
            mask = mask * (torch.arange(mask.shape[1], device=mask.device)[None] < cut).long()
            labels = torch.where(mask.bool(), labels, torch.full_like(labels, -100))
            labels[0, 0] = 5
        ref_loss, ref_grads = step(model, model, ids, mask, labels)
        loss, grads = step(compiled_model, compiled, ids, mask, labels)
        torch.cuda.synchronize()  # an illegal memory access would surface here
        assert abs(loss.item() - ref_loss.item()) / ref_loss.item() < 1e-2, (cut, loss.item(), ref_loss.item())
        assert grads.keys() == ref_grads.keys()
        for n, g in ref_grads.items():
            assert _rel(grads[n], g) < 2e-2, (cut, n, _rel(grads[n], g))


@pytest.mark.skipif(not ATTENTION_BACKENDS["triton"].installed(), reason="triton is not installed")
def test_triton_dropout_mask_on_gpu():
    # the mask's layout is checked against the documented rule under the interpreter (tests/test_dropout.py);
    # here what matters on the device: drop rate, repeatability, and the module's forward/backward semantics
    from mosaicbert.model.dropout import Dropout, dropout_keep_mask

    seed = torch.tensor([5], dtype=torch.int64, device="cuda")
    keep = dropout_keep_mask(seed, (4096, 3072), 0.1)
    assert keep.dtype == torch.bool and keep.is_cuda
    assert abs((1 - keep.float().mean().item()) - 0.1) < 1e-3
    assert torch.equal(keep, dropout_keep_mask(seed.clone(), (4096, 3072), 0.1))
    x = torch.randn(1000, 768, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    drop = Dropout(0.1, kernel="triton").train()
    torch.manual_seed(3)
    y = drop(x)
    y.float().sum().backward()
    kept = y != 0
    torch.testing.assert_close(y[kept].float(), (x[kept] / 0.9).float(), rtol=1e-2, atol=1e-2)
    torch.testing.assert_close(x.grad[kept].float(), torch.full_like(x.grad[kept], 1 / 0.9).float(), rtol=1e-2,
                               atol=1e-2)
    assert torch.count_nonzero(x.grad[~kept]) == 0


def test_compiled_training_step_with_triton_dropout(compiled_mlm_training_losses):
    # dropout on (the default "auto" -> triton kernel on CUDA), compiled: the loss is finite and decreases
    losses = compiled_mlm_training_losses(30)
    assert all(map(lambda v: v == v and abs(v) < 1e9, losses))
    assert losses[-1] < losses[0] - 1.0, losses


@pytest.mark.parametrize("compiled", [False, True])
def test_training_step_with_host_counts_never_syncs(compiled):
    """With the collator's per-row host counts the forward and backward queue no host sync (the sync debug mode
    turns any sync into an error), so the host can run ahead of the GPU; the loss is the one learnt without them."""
    import torch._dynamo

    torch._dynamo.reset()
    model, ids, mask, labels = _setup(seed=4)
    from mosaicbert.model.dropout import Dropout

    for module in model.modules():  # the dropout kernel too
        if isinstance(module, Dropout):
            module.p = 0.1
    model.train()
    fn = torch.compile(model) if compiled else model
    counts = dict(sequence_lengths=mask.sum(1).tolist(), label_counts=(labels != -100).sum(1).tolist())
    for step in range(3):  # two to compile / fill the caches, then the checked one
        torch.manual_seed(step)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            ref = fn(ids, attention_mask=mask, labels=labels).loss.detach()
        torch.manual_seed(step)
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error" if step == 2 else 0)
        try:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = fn(ids, attention_mask=mask, labels=labels, **counts).loss
            loss.backward()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        torch.testing.assert_close(loss.detach(), ref)
        model.zero_grad(set_to_none=True)


@pytest.mark.skipif(not ATTENTION_BACKENDS["triton"].installed(), reason="triton is not installed")
def test_triton_whole_sequence_backward_matches_split_bf16():
    # The one-kernel backward (key block >= every sequence, the pretraining default at S <= 128) against the
    # three-kernel one on the same bf16 inputs, and both against an fp32 autograd reference (torch backend math).
    from mosaicbert.model.attention import alibi_slopes
    from mosaicbert.model.triton_attention import triton_alibi_varlen_attention

    torch.manual_seed(0)
    lens, H, D = [128, 1, 77, 128, 64, 100], 12, 64
    T = sum(lens)
    cu = torch.tensor([0] + torch.tensor(lens).cumsum(0).tolist(), dtype=torch.int32, device="cuda")
    slopes = torch.tensor(alibi_slopes(H), device="cuda")
    qkv = (torch.randn(T, 3, H, D, device="cuda") * 2).bfloat16().requires_grad_(True)
    g = torch.randn(T, H, D, device="cuda").bfloat16()

    def reference(x):
        outs, s = [], 0
        for L in lens:
            q, k, v = x[s:s + L].float().unbind(1)
            pos = torch.arange(L, device="cuda")
            scores = torch.einsum("ihd,jhd->hij", q, k) / D ** 0.5 - slopes[:, None, None] * (pos[:, None] - pos).abs()
            outs.append(torch.einsum("hij,jhd->ihd", scores.softmax(-1), v))
            s += L
        return torch.cat(outs)

    (ref,) = torch.autograd.grad(reference(qkv), qkv, g.float())
    grads = {}
    for bm, bn in ((64, 64), (64, 128), (None, None)):  # split; whole sequence (also forward 64x128); the default
        out = triton_alibi_varlen_attention(qkv, cu, max(lens), slopes, bm, bn)
        (grads[bm, bn],) = torch.autograd.grad(out, qkv, g)
    for key, d in grads.items():
        err = _rel(d.float(), ref.float())
        print(key, "grad rel err", err)
        assert err < 2e-2, (key, err)
    assert _rel(grads[64, 128].float(), grads[64, 64].float()) < 1e-2


def test_cuda_graphs_training_with_packed_length_multiple():
    """torch.compile(mode="reduce-overhead") (CUDA graphs) on batches whose T differs but rounds to the same
    multiple: the losses and gradients of eager, step after step (graph outputs are reused between replays)."""
    import copy

    import torch._dynamo

    torch._dynamo.reset()
    model, ids, mask, labels = _setup(seed=6)
    model.config.packed_length_multiple = 512
    model.train()
    graphed = copy.deepcopy(model)
    fn = torch.compile(graphed, mode="reduce-overhead")
    for step in range(4):
        keep = mask.clone()
        keep[1, : step + 1] = 1  # row 1 has one real token: T changes from step to step, within one multiple
        batch = dict(input_ids=ids, attention_mask=keep, labels=labels, sequence_lengths=keep.sum(1).tolist(),
                     label_counts=(labels != -100).sum(1).tolist())
        out_ref, out = _run_graph_step(model, model, batch), _run_graph_step(graphed, fn, batch)
        torch.testing.assert_close(out[0], out_ref[0], rtol=2e-2, atol=2e-2)
        for n, g in out_ref[1].items():
            assert _rel(out[1][n], g) < 2e-2, (step, n)


def test_cuda_graphs_draw_new_dropout_masks_every_step():
    """Under CUDA graphs (reduce-overhead) the replayed graph must still draw fresh dropout masks: the same batch
    gives a different loss at every step (a frozen seed would repeat the masks silently)."""
    import torch._dynamo

    from mosaicbert.model.dropout import Dropout

    torch._dynamo.reset()
    model, ids, mask, labels = _setup(seed=7)
    model.config.packed_length_multiple = 512
    for module in model.modules():
        if isinstance(module, Dropout):
            module.p = 0.1
    model.train()
    fn = torch.compile(model, mode="reduce-overhead")
    batch = dict(input_ids=ids, attention_mask=mask, labels=labels, sequence_lengths=mask.sum(1).tolist(),
                 label_counts=(labels != -100).sum(1).tolist())
    losses = [_run_graph_step(model, fn, batch)[0].item() for _ in range(4)]
    print("losses", losses)
    assert all(math.isfinite(x) for x in losses)
    assert len(set(losses[1:])) == 3, losses  # the replays (steps 2-4) differ from each other


def _run_graph_step(model, fn, batch):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = fn(**batch).loss
    loss.backward()
    return loss.detach().float().clone(), {n: p.grad.float().clone() for n, p in model.named_parameters()
                                           if p.grad is not None}


@pytest.mark.parametrize("compiled", [False, True])
def test_sparse_last_layer_matches_dense_bf16(compiled):
    """sparse_last_layer (the last layer's feed-forward on the masked rows only) against the dense last layer:
    same loss and gradients within bf16 tolerance, eager and under inductor, with the default backend, a label
    on padding and dummy rows (packed_length_multiple)."""
    import copy

    import torch._dynamo

    torch._dynamo.reset()
    dense, ids, mask, labels = _setup(seed=8)
    labels[1, 5] = 7  # row 1 has one real token: a label on padding
    dense.config.sparse_last_layer = False
    sparse = copy.deepcopy(dense)
    sparse.config.sparse_last_layer = True
    counts = dict(sequence_lengths=mask.sum(1).tolist(), label_counts=(labels != -100).sum(1).tolist())
    for multiple in (0, 64):
        dense.config.packed_length_multiple = sparse.config.packed_length_multiple = multiple
        batch = dict(input_ids=ids, attention_mask=mask, labels=labels, **counts)
        loss_ref, grads_ref = _run_graph_step(dense, torch.compile(dense) if compiled else dense, batch)
        loss, grads = _run_graph_step(sparse, torch.compile(sparse) if compiled else sparse, batch)
        assert abs(loss.item() - loss_ref.item()) / loss_ref.item() < 1e-2, (multiple, loss.item(), loss_ref.item())
        assert grads.keys() == grads_ref.keys()
        for n, g in grads_ref.items():
            assert _rel(grads[n], g) < 2e-2, (multiple, n, _rel(grads[n], g))
