"""A toy corpus for data tests: a WordPiece vocab in which every word `w<i>` is one token (id i + 5), and
JSON-lines documents of random such words."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

WORDS = [f"w{i}" for i in range(300)]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def write_vocab(path: Path, words: list[str] = WORDS) -> Path:
    path.write_text("\n".join(SPECIALS + words) + "\n")
    return path


def write_documents(path: Path, num_docs: int, min_words: int, max_words: int, seed: int = 0) -> Path:
    """`num_docs` documents of `min_words` to `max_words - 1` words, one JSON object per line."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        for _ in range(num_docs):
            words = rng.integers(0, len(WORDS), size=int(rng.integers(min_words, max_words)))
            fh.write(json.dumps({"text": " ".join(WORDS[w] for w in words)}) + "\n")
    return path
