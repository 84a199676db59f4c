"""Seeded C4-like English documents for the data benchmarks: no download, lengths like C4 en's.

Lengths: log-normal in characters, median ~1,200 and mean ~2,000 (C4 en: 2,000 characters on average, heavy tail),
clipped to [60, 60,000]. Text: sentences of words drawn Zipf-like from the tokenizer's whole-word vocabulary (ids in
a WordPiece vocab roughly follow frequency), ~8% rarer compound words that split into several pieces, some numbers,
commas, capitalised sentence starts and paragraph breaks. With bert-base-uncased this gives about 4.5 characters per
token, close to C4's.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np

MEAN_CHARS = 2000
_SIGMA = 1.0
_MU = float(np.log(MEAN_CHARS) - _SIGMA**2 / 2)


def _word_list(tokenizer) -> list[str]:
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    words = [w for w, _ in vocab if re.fullmatch(r"[a-z]{2,}", w)]
    if len(words) < 50:  # (a toy vocabulary): fall back to its tokens as they are
        words = [w for w, _ in vocab if not w.startswith(("[", "##"))]
    return words


def c4_like_documents(tokenizer, n: int, seed: int = 0) -> Iterator[str]:
    """`n` documents (strings), the same for the same (tokenizer vocabulary, n, seed)."""
    rng = np.random.default_rng(seed)
    words = np.array(_word_list(tokenizer), dtype=object)
    ranks = np.arange(1, len(words) + 1, dtype=np.float64)
    cdf = np.cumsum(ranks**-1.0)
    cdf /= cdf[-1]
    for _ in range(n):
        target = int(np.clip(rng.lognormal(_MU, _SIGMA), 60, 60_000))
        # ~5.6 characters per word including its space/punctuation: draw enough words, then cut at the target
        k = target // 5 + 8
        w = words[np.minimum(np.searchsorted(cdf, rng.random(k)), len(words) - 1)]
        rare = rng.random(k) < 0.08
        w[rare] = w[rare] + words[rng.integers(0, len(words), size=int(rare.sum()))]
        num = rng.random(k) < 0.02
        w[num] = rng.integers(0, 3000, size=int(num.sum())).astype(str)
        ends = rng.random(k) < 1 / 17  # sentence ends
        commas = (rng.random(k) < 1 / 12) & ~ends
        paras = ends & (rng.random(k) < 0.2)
        parts, start, size = [], True, 0
        for i in range(k):
            t = w[i].capitalize() if start else w[i]
            t += "." if ends[i] else ("," if commas[i] else "")
            parts.append(t)
            parts.append("\n" if paras[i] else " ")
            size += len(t) + 1
            start = bool(ends[i])
            if size >= target:
                break
        yield "".join(parts).rstrip() + ("" if parts and parts[-2].endswith(".") else ".")


def write_jsonl(path: str | Path, docs: Iterator[str]) -> int:
    """Write documents as C4-format JSON lines (``{"text": ...}``); returns how many."""
    n = 0
    with open(path, "w", encoding="utf-8") as fh:
        for d in docs:
            fh.write(json.dumps({"text": d}) + "\n")
            n += 1
    return n
