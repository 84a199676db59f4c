"""Per-sample, resumable masked-language-model masking.

Why not ``transformers.DataCollatorForLanguageModeling``? It draws its masks from the global torch RNG
(in the main process or in each DataLoader worker, whose seed depends on the worker id and on how many
iterators were created before). The masks therefore depend on the number of workers, on how the job
was launched and on everything else that consumed the RNG; a job killed and resumed from a checkpoint
(Composer + StreamingDataset resume mid-epoch at the exact sample) would see *different* masks for the
remaining samples than an uninterrupted run.

Here every sample gets its own ``numpy.random.Generator`` seeded from ``(seed, epoch, sample_index)``
(:func:`sample_rng`), so the masks of a sample are a pure function of those three numbers: independent
of the global RNG, of worker ids, of batch composition and of resumption. A different epoch gives the
same sample a fresh mask (dynamic masking, as in RoBERTa / MosaicBERT).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

__all__ = ["IGNORE_INDEX", "Masker", "sample_rng", "mask_tokens"]

IGNORE_INDEX = -100


def sample_rng(seed: int, epoch: int, sample_index: int) -> np.random.Generator:
    """A generator that depends only on ``(seed, epoch, sample_index)`` (all must be >= 0)."""
    if seed < 0 or epoch < 0 or sample_index < 0:
        raise ValueError(f"seed, epoch and sample_index must be >= 0, got {(seed, epoch, sample_index)}")
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(epoch), int(sample_index), 0x4D4C4D]))


def mask_tokens(
    input_ids: np.ndarray,
    special_ids: Iterable[int],
    vocab_size: int,
    mlm_probability: float,
    rng: np.random.Generator,
    mask_token_id: int,
    *,
    pad_token_id: int | None = None,
    mask_replace_prob: float = 0.8,
    random_replace_prob: float = 0.1,
) -> tuple[np.ndarray, np.ndarray]:
    """BERT masking of one sample (or a batch: any shape works).

    Each token that is neither special (``special_ids``: [CLS], [SEP], [PAD], [UNK], [MASK], ...) nor
    padding is selected independently with probability ``mlm_probability`` (Bernoulli). Of the selected
    tokens, 80% become ``mask_token_id``, 10% a uniformly random token drawn from the non-special part
    of ``[0, vocab_size)``, and 10% stay unchanged.

    The random draws always consume the generator in the same fixed pattern for a given shape, so the
    result is a pure function of ``(input_ids, rng state)``.

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
    extra = [pad_token_id] if pad_token_id is not None else []
    specials = np.unique(np.asarray(list(special_ids) + extra, dtype=np.int64))
    n_special_in_vocab = int(np.sum((specials >= 0) & (specials < vocab_size)))
    if vocab_size - n_special_in_vocab <= 0:
        raise ValueError(f"vocab_size={vocab_size} leaves no non-special tokens to sample from")

    eligible = ~np.isin(ids, specials)
    # Fixed consumption pattern: three full-size draws, independent of which tokens are eligible.
    select_u = rng.random(ids.shape)
    action_u = rng.random(ids.shape)
    random_tokens = _random_non_special(rng, ids.shape, vocab_size, specials)

    selected = eligible & (select_u < mlm_probability)
    to_mask = selected & (action_u < mask_replace_prob)
    to_random = selected & (action_u >= mask_replace_prob) & (action_u < mask_replace_prob + random_replace_prob)

    labels = np.where(selected, ids, IGNORE_INDEX).astype(np.int64)
    out = ids.copy()
    out[to_mask] = mask_token_id
    out[to_random] = random_tokens[to_random].astype(ids.dtype)
    return out, labels


def _random_non_special(
    rng: np.random.Generator, shape: tuple[int, ...], vocab_size: int, specials: np.ndarray
) -> np.ndarray:
    """Uniform draws from ``[0, vocab_size)`` minus ``specials``, without materializing the vocabulary.

    Draw ``k`` uniformly from ``[0, vocab_size - n_specials)`` and shift it past the sorted special ids
    that are <= it, which maps the range bijectively onto the non-special ids.
    """
    sp = specials[(specials >= 0) & (specials < vocab_size)]  # sorted, unique
    k = rng.integers(0, vocab_size - len(sp), size=shape, dtype=np.int64)
    if len(sp) == 0:
        return k
    # The j-th non-special id is k + (number of specials s with s - index(s) <= k).
    adjusted = sp - np.arange(len(sp))
    return k + np.searchsorted(adjusted, k, side="right")


class Masker:
    """:func:`mask_tokens` for one tokenizer, with the per-call set-up done once: the same output for the same
    ``(input_ids, rng state)`` (the draws are made in the same order), faster per sample.

    Special ids are looked up in a table instead of ``np.isin``, and the random replacement token is the k-th entry
    of the table of non-special ids instead of a ``searchsorted`` over the specials (the same bijection).
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
        self.mask_replace_prob = float(mask_replace_prob)
        self.random_until = float(mask_replace_prob + random_replace_prob)

    def __call__(self, input_ids: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        ids = np.asarray(input_ids)
        if ids.size and (int(ids.min()) < 0 or int(ids.max()) >= len(self.is_special)):
            eligible = ~np.isin(ids, self.specials)  # (ids outside the table: the collator reports them)
        else:
            eligible = ~self.is_special[ids]
        select_u = rng.random(ids.shape)
        action_u = rng.random(ids.shape)
        random_tokens = self.non_special[rng.integers(0, len(self.non_special), size=ids.shape, dtype=np.int64)]
        selected = eligible & (select_u < self.mlm_probability)
        to_mask = selected & (action_u < self.mask_replace_prob)
        to_random = selected & (action_u >= self.mask_replace_prob) & (action_u < self.random_until)
        labels = np.where(selected, ids, IGNORE_INDEX).astype(np.int64)
        out = ids.copy()
        out[to_mask] = self.mask_token_id
        out[to_random] = random_tokens[to_random].astype(ids.dtype)
        return out, labels
