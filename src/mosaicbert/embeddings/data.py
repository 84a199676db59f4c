"""Text pairs (contrastive training, retrieval evaluation) and STS sentence pairs with gold scores, read with
finetune's readers: CSV / TSV with a header row or JSON Lines, each bad row reported with its file and line."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

from mosaicbert.finetune.config import ColumnsConfig
from mosaicbert.finetune.data import FinetuneDataError, Rows, read_file, read_table


@dataclass
class Pairs:
    anchors: List[str]
    positives: List[str]
    negatives: List[List[str]] = field(default_factory=list)  # one list per hard-negative column
    source: str = ""

    def __len__(self) -> int:
        return len(self.anchors)

    def head(self, n: Optional[int]) -> "Pairs":
        if n is None or n >= len(self):
            return self
        return Pairs(self.anchors[:n], self.positives[:n], [c[:n] for c in self.negatives], self.source)


def pairs_from_rows(rows: Rows, anchor: str = "anchor", positive: str = "positive",
                    negatives: Sequence[str] = ()) -> Pairs:
    n = range(len(rows))
    return Pairs([rows.text(i, anchor, non_empty=True) for i in n], [rows.text(i, positive, non_empty=True) for i in n],
                 [[rows.text(i, c, non_empty=True) for i in n] for c in negatives], rows.source)


def read_pairs(path: str, anchor: str = "anchor", positive: str = "positive", negatives: Sequence[str] = (),
               fmt: Optional[str] = None) -> Pairs:
    """(anchor, positive[, hard negative ...]) rows of a .csv / .tsv / .jsonl file (`fmt` overrides the extension)."""
    return pairs_from_rows(read_file(path, fmt, "embedding", ColumnsConfig()), anchor, positive, negatives)


@dataclass
class StsPairs:
    sentences1: List[str]
    sentences2: List[str]
    scores: List[float]
    source: str


def read_sts(path: str, sentence1: str = "sentence1", sentence2: str = "sentence2", score: str = "score") -> StsPairs:
    """An STS file: GLUE's STS-B TSV layout (tab-separated, header with sentence1, sentence2, score), or the same
    columns in a CSV / JSON Lines file."""
    rows = read_table(path, "\t") if path.endswith(".tsv") else read_file(path, None, "embedding", ColumnsConfig())
    out = StsPairs([], [], [], path)
    for i in range(len(rows)):
        out.sentences1.append(rows.text(i, sentence1, non_empty=True))
        out.sentences2.append(rows.text(i, sentence2, non_empty=True))
        raw = rows.records[i].get(score)
        try:
            out.scores.append(float(raw))
        except (TypeError, ValueError):
            raise FinetuneDataError(f"{rows.where[i]}: column {score!r} must be a number, got {raw!r}") from None
    if not out.scores:
        raise FinetuneDataError(f"{path}: no rows")
    return out
