"""Per-sample, resumable masked-language-model masking.

Why not ``transformers.DataCollatorForLanguageModeling``? It draws its masks from the global torch RNG
(in the main process or in each DataLoader worker, whose seed depends on the worker id and on how many
iterators were created before). The masks therefore depend on the number of workers, on how the job
was launched and on everything else that consumed the RNG; a job killed and resumed from a checkpoint
(Composer + StreamingDataset resume mid-epoch at the exact sample) would see *different* masks for the
remaining samples than an uninterrupted run.

Here the random numbers of every sample are a counter-based stream keyed by ``(seed, epoch, sample_index)``
(:func:`sample_uniforms`: SplitMix64 started from a hash of the three numbers), so the masks of a sample are a pure
function of those three numbers: independent of the global RNG, of worker ids, of batch composition and of
resumption. A different epoch gives the same sample a fresh mask (dynamic masking, as in RoBERTa / MosaicBERT).
Counter-based, because a ``numpy.random.Generator`` per sample cost more than everything else the loader does with a
pre-tokenized sample.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["IGNORE_INDEX", "Masker", "mask_tokens", "sample_key", "sample_uniforms"]

IGNORE_INDEX = -100

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15  # SplitMix64's increment
_GOLDEN2 = (2 * _GOLDEN) & _MASK64  # two outputs per token
_M1, _M2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
_TAG = 0x4D4C4D  # "MLM": keeps these streams apart from other users of the same seed


def _mix64(z: int) -> int:
    """SplitMix64's finalizer on a Python int (a bijection of 64-bit values)."""
    z = ((z ^ (z >> 30)) * _M1) & _MASK64
    z = ((z ^ (z >> 27)) * _M2) & _MASK64
    return z ^ (z >> 31)


def _mix64_array(z: np.ndarray) -> np.ndarray:
    """:func:`_mix64` on a uint64 array, in place (uint64 products wrap modulo 2**64, as the & does above)."""
    z ^= z >> np.uint64(30)
    z *= np.uint64(_M1)
    z ^= z >> np.uint64(27)
    z *= np.uint64(_M2)
    z ^= z >> np.uint64(31)
    return z


def sample_key(seed: int, epoch: int, sample_index: int) -> int:
    """The 64-bit state a sample's stream starts from; depends only on ``(seed, epoch, sample_index)`` (all >= 0)."""
    if seed < 0 or epoch < 0 or sample_index < 0:
        raise ValueError(f"seed, epoch and sample_index must be >= 0, got {(seed, epoch, sample_index)}")
    key = _mix64((_TAG ^ int(seed)) & _MASK64)
    key = _mix64((key + int(epoch)) & _MASK64)
    return _mix64((key + int(sample_index)) & _MASK64)


def sample_uniforms(seed: int, epoch: int, sample_index: int, n: int) -> np.ndarray:
    """The ``(3, n)`` float64 draws in [0, 1) that mask a sample of ``n`` tokens: row 0 selects a token (``< p``),
    row 1 picks what happens to a selected one (mask / random / keep), row 2 picks the random token.

    Token ``j`` uses outputs ``2j + 1`` and ``2j + 2`` of the sample's SplitMix64 stream: the upper and lower 32 bits of
    the first are rows 0 and 1, the upper 53 bits of the second are row 2. So the draws of token ``j`` do not depend
    on the sample's length.
    """
    # SplitMix64's outputs 1..2n from the key: mix(key + k * golden)
    bits = _mix64_array(np.arange(1, 2 * n + 1, dtype=np.uint64) * np.uint64(_GOLDEN)
                        + np.uint64(sample_key(seed, epoch, sample_index)))
    first, second = bits[0::2], bits[1::2]
    return np.stack([(first >> np.uint64(32)).astype(np.float64) / 2.0**32,
                     (first & np.uint64(0xFFFFFFFF)).astype(np.float64) / 2.0**32,
                     (second >> np.uint64(11)).astype(np.float64) / 2.0**53])


def mask_tokens(
    input_ids: np.ndarray,
    special_ids: Iterable[int],
    vocab_size: int,
    mlm_probability: float,
    uniforms: np.ndarray,
    mask_token_id: int,
    *,
    pad_token_id: int | None = None,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking of one sample (or a batch: any shape works), given its draws ``uniforms`` (shape
    ``(3, *input_ids.shape)``, values in [0, 1): :func:`sample_uniforms` for a sample).

    Each token that is neither special (``special_ids``: [CLS], [SEP], [PAD], [UNK], [MASK], ...) nor
    padding is selected when its first draw is below ``mlm_probability`` (Bernoulli). Of the selected
    tokens, 80% become ``mask_token_id``, 10% a uniformly random token drawn from the non-special part
    of ``[0, vocab_size)``, and 10% stay unchanged.

    Returns:
        ``(masked_input_ids, labels)``: new arrays (the input is not modified), same shape and dtype as
        ``input_ids`` (labels int64); ``labels`` holds the original id at the selected positions and
        ``-100`` everywhere else.
    """
    if not 0.0 <= mlm_probability <= 1.0:
        raise ValueError(f"mlm_probability must be in [0, 1], got {mlm_probability}")
    ids = np.asarray(input_ids)
    if not np.issubdtype(ids.dtype, np.integer):
        raise TypeError(f"input_ids must be an integer array, got dtype {ids.dtype}")
    select_u, action_u, token_u = np.asarray(uniforms, dtype=np.float64)
    if select_u.shape != ids.shape:
        raise ValueError(f"uniforms must have shape (3, *{ids.shape}), got {np.shape(uniforms)}")
    extra = [pad_token_id] if pad_token_id is not None else []
    specials = np.unique(np.asarray(list(special_ids) + extra, dtype=np.int64))
    n_special_in_vocab = int(np.sum((specials >= 0) & (specials < vocab_size)))
    if vocab_size - n_special_in_vocab <= 0:
        raise ValueError(f"vocab_size={vocab_size} leaves no non-special tokens to sample from")

    eligible = ~np.isin(ids, specials)
    random_tokens = _random_non_special(token_u, vocab_size, specials)

    selected = eligible & (select_u < mlm_probability)
    to_mask = selected & (action_u < mask_replace_prob)
    to_random = selected & (action_u >= mask_replace_prob) & (action_u < mask_replace_prob + random_replace_prob)

    labels = np.where(selected, ids, IGNORE_INDEX).astype(np.int64)
    out = ids.copy()
    out[to_mask] = mask_token_id
    out[to_random] = random_tokens[to_random].astype(ids.dtype)
    return out, labels


def _random_non_special(token_u: np.ndarray, vocab_size: int, specials: np.ndarray) -> np.ndarray:
    """Uniform draws from ``[0, vocab_size)`` minus ``specials``, without materializing the vocabulary.

    ``k = floor(u * (vocab_size - n_specials))``, shifted past the sorted special ids that are <= it, which maps the
    range bijectively onto the non-special ids.
    """
    sp = specials[(specials >= 0) & (specials < vocab_size)]  # sorted, unique
    k = (token_u * (vocab_size - len(sp))).astype(np.int64)
    if len(sp) == 0:
        return k
    # The j-th non-special id is k + (number of specials s with s - index(s) <= k).
    adjusted = sp - np.arange(len(sp))
    return k + np.searchsorted(adjusted, k, side="right")


class Masker:
    """:func:`mask_tokens` of :func:`sample_uniforms` for one tokenizer, for many samples at once: the same output as
    the reference, sample by sample, at a fraction of its cost (a DataLoader worker masks a whole batch in one call).

    Special ids are looked up in a table instead of ``np.isin``; the random replacement token is the k-th entry of the
    table of non-special ids instead of a ``searchsorted`` over the specials (the same bijection); the selection and
    action draws are compared as the 32-bit integers they are made of (``u < p`` exactly when
    ``bits < ceil(p * 2**32)``, since ``u = bits / 2**32``), and the random-token draw is only made for the tokens that
    need one.
    """

    def __init__(
        self,
        special_ids: Iterable[int],
        vocab_size: int,
        mlm_probability: float,
        mask_token_id: int,
        *,
        pad_token_id: int | None = None,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
    ) -> None:
        if not 0.0 <= mlm_probability <= 1.0:
            raise ValueError(f"mlm_probability must be in [0, 1], got {mlm_probability}")
        extra = [pad_token_id] if pad_token_id is not None else []
        self.specials = np.unique(np.asarray(list(special_ids) + extra, dtype=np.int64))
        in_vocab = self.specials[(self.specials >= 0) & (self.specials < vocab_size)]
        if vocab_size - len(in_vocab) <= 0:
            raise ValueError(f"vocab_size={vocab_size} leaves no non-special tokens to sample from")
        self.is_special = np.zeros(max(vocab_size, int(self.specials.max(initial=-1)) + 1), dtype=bool)
        self.is_special[self.specials[self.specials >= 0]] = True
        self.non_special = np.setdiff1d(np.arange(vocab_size, dtype=np.int64), in_vocab)
        self.mlm_probability = float(mlm_probability)
        self.mask_token_id = int(mask_token_id)

        def below(x: float) -> np.uint64:  # b / 2**32 < x  <=>  b < ceil(x * 2**32), for integers b < 2**32
            return np.uint64(min(int(np.ceil(x * 2.0**32)), 2**32))

        self._select_below = below(mlm_probability)
        self._mask_below = below(mask_replace_prob)
        self._random_below = below(mask_replace_prob + random_replace_prob)

    def __call__(self, input_ids: np.ndarray, key: int) -> tuple[np.ndarray, np.ndarray]:
        """Mask one sample (1-d ``input_ids``) whose stream starts at ``key`` (:func:`sample_key`)."""
        ids = np.asarray(input_ids).reshape(-1)
        return self.mask_many(ids, np.asarray([key], dtype=np.uint64), np.asarray([len(ids)]))

    def mask_many(self, ids: np.ndarray, keys: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Mask samples laid end to end in the 1-d ``ids``: sample ``i`` has ``lengths[i]`` tokens and key ``keys[i]``.

        Returns ``(masked, labels)`` laid out like ``ids``; each sample's part is exactly ``self(its ids, its key)``.
        """
        lengths = np.asarray(lengths, dtype=np.int64)
        starts = np.repeat(np.cumsum(lengths) - lengths, lengths)
        # token j of a sample uses stream outputs 2j+1 (selection, action) and 2j+2 (random token)
        base = np.repeat(np.asarray(keys, dtype=np.uint64), lengths)
        base += (np.arange(len(ids), dtype=np.int64) - starts).astype(np.uint64) * np.uint64(_GOLDEN2)
        first = _mix64_array(base + np.uint64(_GOLDEN))
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= len(self.is_special)):
            eligible = ~np.isin(ids, self.specials)  # (ids outside the table: the collator reports them)
        else:
            eligible = ~self.is_special[ids]
        selected = eligible & ((first >> np.uint64(32)) < self._select_below)
        action = first & np.uint64(0xFFFFFFFF)
        to_mask = selected & (action < self._mask_below)
        to_random = selected & (action >= self._mask_below) & (action < self._random_below)
        labels = np.where(selected, ids, IGNORE_INDEX).astype(np.int64)
        out = ids.copy()
        out[to_mask] = self.mask_token_id
        if to_random.any():
            second = _mix64_array(base[to_random] + np.uint64(_GOLDEN2))
            token_u = (second >> np.uint64(11)).astype(np.float64) / 2.0**53
            out[to_random] = self.non_special[(token_u * len(self.non_special)).astype(np.int64)].astype(ids.dtype)
        return out, labels
