import torch

from mosaicbert.model.padding import get_unpad_info, pad, pad_input, unpad, unpad_input


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
