"""Statistics and determinism of the per-sample MLM masking."""

from __future__ import annotations

import numpy as np
import pytest

from mosaicbert.pretrain.masking import IGNORE_INDEX, Masker, mask_tokens, sample_key, sample_uniforms

VOCAB = 30522
PAD, UNK, CLS, SEP, MASK = 0, 100, 101, 102, 103
SPECIALS = [PAD, UNK, CLS, SEP, MASK]


def _u(ids, seed=0):
    """Independent draws for every token of `ids` (what sample_uniforms gives one sample)."""
    return np.random.default_rng(seed).random((3, *np.shape(ids)))


def _batch(rows=2000, length=128, seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, VOCAB, size=(rows, length), dtype=np.int64)
    lengths = rng.integers(10, length + 1, size=rows)
    ids[:, 0] = CLS
    for i, n in enumerate(lengths):
        ids[i, n - 1] = SEP
        ids[i, n:] = PAD
    ids[:, 5] = UNK  # a special in the middle
    return ids


def test_masking_statistics():
    ids = _batch()
    masked, labels = mask_tokens(ids, SPECIALS, VOCAB, 0.3, _u(ids, 1), MASK, pad_token_id=PAD)
    assert masked.shape == ids.shape and labels.shape == ids.shape and labels.dtype == np.int64
    eligible = ~np.isin(ids, SPECIALS)
    selected = labels != IGNORE_INDEX
    # Selection rate over non-special tokens: 30% +- 1%.
    rate = selected.sum() / eligible.sum()
    assert abs(rate - 0.3) < 0.01, rate
    # Specials / padding are never selected nor changed.
    assert not (selected & ~eligible).any()
    assert (masked[~eligible] == ids[~eligible]).all()
    # Labels hold the original ids at selected positions, -100 elsewhere.
    assert (labels[selected] == ids[selected]).all()
    assert (labels[~selected] == IGNORE_INDEX).all()
    # Unselected tokens are untouched.
    assert (masked[~selected] == ids[~selected]).all()
    # 80 / 10 / 10 split of the selected tokens (+- 1.5%).
    n = selected.sum()
    to_mask = (masked == MASK) & selected
    changed = (masked != ids) & selected & ~to_mask
    kept = (masked == ids) & selected
    assert abs(to_mask.sum() / n - 0.8) < 0.015
    assert abs(changed.sum() / n - 0.1) < 0.015
    assert abs(kept.sum() / n - 0.1) < 0.015
    # Random replacements never produce special tokens and stay inside the vocabulary.
    repl = masked[changed]
    assert not np.isin(repl, SPECIALS).any()
    assert repl.min() >= 0 and repl.max() < VOCAB


def test_random_tokens_cover_non_special_range():
    # Small vocab: every non-special id should appear, no special ever does.
    vocab, specials = 50, [0, 1, 2, 3, 4, 20]
    ids = np.full((20000,), 30, dtype=np.int64)
    masked, labels = mask_tokens(ids, specials, vocab, 1.0, _u(ids), 4)
    repl = masked[(masked != 4) & (masked != 30)]
    assert set(np.unique(repl).tolist()) == set(range(vocab)) - set(specials) - {30}


def test_deterministic_per_sample():
    ids = _batch(rows=1, length=128)[0]
    a = mask_tokens(ids, SPECIALS, VOCAB, 0.3, sample_uniforms(42, 3, 1234, len(ids)), MASK)
    b = mask_tokens(ids, SPECIALS, VOCAB, 0.3, sample_uniforms(42, 3, 1234, len(ids)), MASK)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    # Different epoch / index / seed -> different masks; global RNG state is irrelevant.
    np.random.seed(0)
    for seed, epoch, index in ((42, 4, 1234), (42, 3, 1235), (43, 3, 1234)):
        c = mask_tokens(ids, SPECIALS, VOCAB, 0.3, sample_uniforms(seed, epoch, index, len(ids)), MASK)
        assert not np.array_equal(a[1], c[1])
    np.random.seed(123)
    d = mask_tokens(ids, SPECIALS, VOCAB, 0.3, sample_uniforms(42, 3, 1234, len(ids)), MASK)
    assert np.array_equal(a[0], d[0])
    # A token's draws do not depend on the sample's length (a longer sample only adds draws at its end).
    assert np.array_equal(sample_uniforms(42, 3, 1234, 200)[:, :128], sample_uniforms(42, 3, 1234, 128))


MASK64 = (1 << 64) - 1


def _splitmix64_reference(state: int, n: int) -> list[int]:
    """SplitMix64 as published (Steele, Lea, Flood 2014; Vigna's splitmix64.c), in plain Python integers."""
    out = []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & MASK64
        z = state
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK64
        out.append(z ^ (z >> 31))
    return out


def test_uniforms_are_splitmix64_of_the_sample_key():
    """The vectorised stream is SplitMix64 from the sample's key: outputs 2j+1 and 2j+2 make token j's draws."""
    key = sample_key(7, 2, 99)
    bits = _splitmix64_reference(key, 10)
    u = sample_uniforms(7, 2, 99, 5)
    assert u[0].tolist() == [(b >> 32) / 2**32 for b in bits[0::2]]
    assert u[1].tolist() == [(b & 0xFFFFFFFF) / 2**32 for b in bits[0::2]]
    assert u[2].tolist() == [(b >> 11) / 2**53 for b in bits[1::2]]
    assert ((u >= 0) & (u < 1)).all()
    # the uniforms of many samples: mean 1/2, variance 1/12, no correlation between neighbouring samples' draws
    many = np.stack([sample_uniforms(0, 0, i, 64) for i in range(2000)])  # (samples, 3, tokens)
    assert abs(many.mean() - 0.5) < 0.005 and abs(many.var() - 1 / 12) < 0.002
    assert abs(np.corrcoef(many[:-1, 0].ravel(), many[1:, 0].ravel())[0, 1]) < 0.01


def test_input_not_modified_and_dtype_kept():
    ids = _batch(rows=4, length=16).astype(np.int32)
    before = ids.copy()
    masked, labels = mask_tokens(ids, SPECIALS, VOCAB, 0.5, _u(ids), MASK)
    assert np.array_equal(ids, before)
    assert masked.dtype == np.int32


def test_bad_arguments():
    with pytest.raises(ValueError):
        mask_tokens(np.array([5, 6]), SPECIALS, VOCAB, 1.5, _u([5, 6]), MASK)
    with pytest.raises(ValueError, match="shape"):
        mask_tokens(np.array([5, 6]), SPECIALS, VOCAB, 0.5, _u([5, 6, 7]), MASK)
    with pytest.raises(ValueError):
        sample_key(-1, 0, 0)


@pytest.mark.parametrize("vocab,specials,p",
                         [(VOCAB, SPECIALS, 0.3), (320, [0, 1, 2, 3, 4], 0.15), (50, [49, 3, 0], 1.0)])
def test_masker_equals_mask_tokens(vocab, specials, p):
    """The loader's fast path (one sample, or many laid end to end) gives exactly the reference's masks."""
    masker = Masker(specials, vocab, p, specials[-1], pad_token_id=specials[0])
    rng = np.random.default_rng(vocab)
    samples, keys, wants = [], [], []
    for n in (0, 1, 2, 37, 128, 513):
        ids = rng.integers(0, vocab, size=n)
        ids[: min(n, 3)] = specials[: min(n, 3)]
        if n > 10:
            ids[7] = vocab + 5  # out of the vocabulary: kept (the collator reports it)
        for seed, epoch, index in ((3, 0, n), (3, 1, n), (11, 0, 2 * n)):
            want = mask_tokens(ids, specials, vocab, p, sample_uniforms(seed, epoch, index, n), specials[-1],
                               pad_token_id=specials[0])
            got = masker(ids, sample_key(seed, epoch, index))
            assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
            assert got[0].dtype == want[0].dtype and got[1].dtype == want[1].dtype
            samples.append(ids)
            keys.append(sample_key(seed, epoch, index))
            wants.append(want)
    lengths = [len(x) for x in samples]
    masked, labels = masker.mask_many(np.concatenate(samples), np.array(keys, dtype=np.uint64), np.array(lengths))
    assert np.array_equal(masked, np.concatenate([w[0] for w in wants]))
    assert np.array_equal(labels, np.concatenate([w[1] for w in wants]))
