import pytest
import torch

from mosaicbert.model.padding import (
    gather_rows,
    get_unpad_info,
    max_seqlen_bound,
    pad,
    pad_input,
    pad_rows,
    positions_of_true,
    unpad,
    unpad_input,
    unpad_rows,
)


def _mask(lengths, seqlen):
    return (torch.arange(seqlen)[None, :] < torch.tensor(lengths)[:, None]).long()


def test_unpad_pad_round_trip():
    mask = _mask([5, 2, 7, 0], 7)
    x = torch.randn(4, 7, 3, 2)
    packed, info = unpad_input(x, mask)
    assert packed.shape == (14, 3, 2)
    assert info.cu_seqlens.tolist() == [0, 5, 7, 14, 14]
    assert info.cu_seqlens.dtype == torch.int32
    assert info.max_seqlen == 7 and info.batch == 4 and info.seqlen == 7
    back = pad_input(packed, info)
    m = mask.bool()
    assert torch.equal(back[m], x[m])
    assert torch.count_nonzero(back[~m]) == 0
    # row-major order of the real tokens
    assert torch.equal(packed, x[m])


def test_unpad_non_contiguous_mask_and_grad():
    mask = torch.tensor([[1, 0, 1, 1], [0, 1, 1, 0]])
    info = get_unpad_info(mask)
    assert info.indices.tolist() == [0, 2, 3, 5, 6]
    x = torch.randn(2, 4, 5, requires_grad=True)
    y = pad(unpad(x, info.indices) * 2, info.indices, 2, 4)
    y.sum().backward()
    assert torch.equal(x.grad, 2 * mask[..., None].float().expand(2, 4, 5))


def _rand_mask(B, S, seed, right_padded=True):
    g = torch.Generator().manual_seed(seed)
    if right_padded:
        lengths = torch.randint(0, S + 1, (B,), generator=g)
        return (torch.arange(S)[None, :] < lengths[:, None]).long()
    return (torch.rand(B, S, generator=g) < 0.6).long()


@pytest.mark.parametrize("right_padded", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gather_pad_unpad_match_reference(seed, right_padded):
    """unpad_rows / pad_rows (gather-only backward) == unpad / pad (indexing reference), values and grads."""
    B, S = 5, 9
    mask = _rand_mask(B, S, seed, right_padded)
    mask[0, 0] = 1  # at least one real token
    info = get_unpad_info(mask)
    x = torch.randn(B, S, 3, 2, requires_grad=True)
    gy = torch.randn(int(mask.sum()), 3, 2)
    ref = unpad(x, info.indices)
    (gref,) = torch.autograd.grad(ref, x, gy)
    out = unpad_rows(x, info)
    (gout,) = torch.autograd.grad(out, x, gy)
    assert torch.equal(out, ref) and torch.equal(gout, gref)

    p = torch.randn(int(mask.sum()), 4, requires_grad=True)
    gp = torch.randn(B, S, 4)
    ref = pad(p, info.indices, B, S)
    (gref,) = torch.autograd.grad(ref, p, gp)
    out = pad_rows(p, info)
    (gout,) = torch.autograd.grad(out, p, gp)
    assert out.shape == (B, S, 4)
    assert torch.equal(out, ref) and torch.equal(gout, gref)


def test_gather_pad_unpad_without_real_tokens():
    mask = torch.zeros(3, 4, dtype=torch.long)
    info = get_unpad_info(mask)
    assert info.indices.numel() == 0 and info.max_seqlen == 0
    x = torch.randn(3, 4, 5, requires_grad=True)
    packed = unpad_rows(x, info)
    assert packed.shape == (0, 5)
    back = pad_rows(packed, info)
    assert back.shape == (3, 4, 5) and torch.count_nonzero(back) == 0
    back.sum().backward()
    assert torch.count_nonzero(x.grad) == 0


@pytest.mark.parametrize("right_padded", [True, False])
def test_host_token_count_gives_the_same_unpadding(right_padded):
    """With the number of real tokens known on the host (nonzero_static, no sync) every map is the same."""
    mask = _rand_mask(5, 11, seed=3, right_padded=right_padded)
    ref = get_unpad_info(mask, with_max_seqlen=False)
    fast = get_unpad_info(mask, with_max_seqlen=False, num_real_tokens=int(mask.sum()))
    for name in ("indices", "cu_seqlens", "packed_pos", "real"):
        assert torch.equal(getattr(fast, name), getattr(ref, name)), name
    flags = torch.tensor([0, 1, 1, 0, 1, 0], dtype=torch.bool)
    assert positions_of_true(flags, 3).tolist() == positions_of_true(flags).tolist() == [1, 2, 4]
    assert positions_of_true(torch.zeros(4, dtype=torch.bool), 0).numel() == 0


def test_positions_of_true_without_nonzero_static(monkeypatch):
    """A torch without nonzero_static (for this device) falls back to nonzero: same positions, with a sync."""
    def missing(*args, **kwargs):
        raise NotImplementedError("nonzero_static: no kernel for this backend")

    monkeypatch.setattr(torch, "nonzero_static", missing)
    flags = torch.tensor([0, 1, 1, 0, 1, 0], dtype=torch.bool)
    assert positions_of_true(flags, 3).tolist() == [1, 2, 4]


def test_max_seqlen_only_when_asked():
    mask = _mask([3, 6, 1], 8)
    assert get_unpad_info(mask, with_max_seqlen=False).max_seqlen is None
    assert max_seqlen_bound(get_unpad_info(mask, with_max_seqlen=False)) == mask.shape[1]  # the padded length
    assert max_seqlen_bound(get_unpad_info(mask)) == 6


def test_gather_rows_with_keep_masks():
    """y[m] = keep[m] ? x[idx[m]] : 0; backward through the inverse map == autograd of the plain formula."""
    x = torch.randn(6, 3, requires_grad=True)
    idx = torch.tensor([4, 0, 2, 0, 5])  # row 0 twice, but only one of them kept
    keep = torch.tensor([True, True, True, False, False])
    inv = torch.tensor([1, 0, 2, 0, 0, 0])
    inv_keep = torch.tensor([True, False, True, False, True, False])
    gy = torch.randn(5, 3)
    out = gather_rows(x, idx, keep, inv, inv_keep)
    (g,) = torch.autograd.grad(out, x, gy)
    ref = torch.where(keep[:, None], x[idx], torch.zeros(()))
    (gref,) = torch.autograd.grad(ref, x, gy)
    assert torch.equal(out, ref)
    assert torch.equal(g, gref)


def test_gather_pad_unpad_compiled_path():
    """Under torch.compile the re-pad takes the gather branch (eager takes index_copy): same values and grads."""
    import torch._dynamo

    torch._dynamo.reset()
    mask = _rand_mask(4, 7, seed=3)
    mask[1, :] = 1
    info = get_unpad_info(mask, with_max_seqlen=False)

    def roundtrip(x):
        packed = unpad_rows(x, info) * 3.0
        return pad_rows(packed, info).square()

    x = torch.randn(4, 7, 5, requires_grad=True)
    gy = torch.randn(4, 7, 5)
    ref = roundtrip(x)
    (gref,) = torch.autograd.grad(ref, x, gy)
    out = torch.compile(roundtrip, backend="aot_eager", fullgraph=True)(x)
    (gout,) = torch.autograd.grad(out, x, gy)
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(gout, gref)
