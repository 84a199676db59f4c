import math

import torch

from mosaicbert.model.attention import AlibiCache, alibi_matrix, alibi_slopes


def test_slopes_8_heads():
    assert alibi_slopes(8) == [2.0 ** -i for i in range(1, 9)]


def test_slopes_12_heads():
    expected = [2.0 ** -i for i in range(1, 9)] + [2.0 ** -0.5, 2.0 ** -1.5, 2.0 ** -2.5, 2.0 ** -3.5]
    got = alibi_slopes(12)
    assert len(got) == 12
    for g, e in zip(got, expected):
        assert math.isclose(g, e, rel_tol=1e-12)


def test_slopes_4_and_16_heads_geometric():
    assert alibi_slopes(4) == [2.0 ** -2, 2.0 ** -4, 2.0 ** -6, 2.0 ** -8]
    s16 = alibi_slopes(16)
    assert all(math.isclose(s16[i], 2.0 ** (-(i + 1) / 2), rel_tol=1e-12) for i in range(16))


def test_matrix_symmetric_and_grows():
    slopes = torch.tensor(alibi_slopes(4))
    m = alibi_matrix(slopes, 6)
    assert m.shape == (4, 6, 6)
    assert torch.equal(m, m.transpose(1, 2))
    assert m[1, 0, 5].item() == -slopes[1].item() * 5
    cache = AlibiCache(4, starting_size=8)
    assert cache.matrix(5, torch.device("cpu")).shape == (4, 5, 5)
    big = cache.matrix(20, torch.device("cpu"))  # longer than the starting size: grows, no error
    assert big.shape == (4, 20, 20)
    assert torch.equal(big, alibi_matrix(slopes, 20))
