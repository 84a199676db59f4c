"""GLUE data: the original TSV layout or the Hugging Face hub (`nyu-mll/glue`), tokenized into dataloaders.

Local layout: <data_dir>/<TASK>/train.tsv and dev.tsv (MNLI: dev_matched.tsv, dev_mismatched.tsv). Files are read
with the csv module and QUOTE_NONE (GLUE text contains stray quote characters). Every row must have as many fields
as the header (CoLA: 4) and a parseable label, or reading fails with `file:line`.
"""

from __future__ import annotations

import csv
import logging
import os
import random
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch.utils.data import DataLoader, Dataset

from mosaicbert.glue.tasks import GlueTask

log = logging.getLogger("mosaicbert.glue")

csv.field_size_limit(1 << 24)
COLA_FIELDS = 4  # source, label, original label, sentence


class GlueDataError(ValueError):
    """A problem with GLUE data files, naming the file (and line)."""


@dataclass
class Examples:
    texts: List[Tuple[str, ...]]  # one tuple (sentence, or sentence pair) per example
    labels: List[float]  # class ids (as int) or regression scores
    source: str  # file path or hub name, for messages

    def __len__(self) -> int:
        return len(self.labels)


# ---------------------------------------------------------------------------------------------------------------
# Local TSV files
# ---------------------------------------------------------------------------------------------------------------


def tsv_path(data_dir: str, task: GlueTask, stem: str) -> str:
    return os.path.join(data_dir, task.folder, f"{stem}.tsv")


def missing_files(data_dir: str, task: GlueTask) -> list[str]:
    """The TSV files `task` needs that are not in `data_dir` (empty when the task can run)."""
    stems = ["train"] + [stem for stem, _ in task.evals.values()]
    return [p for p in (tsv_path(data_dir, task, s) for s in stems) if not os.path.isfile(p)]


def _parse_label(task: GlueTask, raw: str):
    raw = raw.strip()
    if task.is_regression:
        return float(raw)
    if task.label_names is not None:
        return task.label_names.index(raw)  # ValueError when unknown
    value = int(raw)
    if not 0 <= value < task.num_labels:
        raise ValueError(f"label {value} out of range [0, {task.num_labels})")
    return value


def read_glue_tsv(path: str, task: GlueTask, skip_malformed: bool = False) -> Examples:
    """Read one GLUE TSV file; a malformed row raises GlueDataError('path:line: ...') (or is skipped and counted)."""
    texts, labels, skipped = [], [], 0
    # utf-8-sig: MRPC's files start with a byte-order mark.
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        if task.header:
            try:
                header = next(reader)
            except StopIteration:
                raise GlueDataError(f"{path}:1: empty file (expected a header row)") from None
            header = [h.strip() for h in header]
            n_fields = len(header)
            cols = list(task.text_columns) + [task.label_column]
            index = []
            for c in cols:
                if isinstance(c, int):
                    index.append(c)
                elif c in header:
                    index.append(header.index(c))
                else:
                    raise GlueDataError(f"{path}:1: header has no column {c!r} (columns: {header}); "
                                        f"is this the {task.folder} file of the original GLUE layout?")
        else:
            n_fields = COLA_FIELDS
            index = list(task.text_columns) + [task.label_column]
        text_idx, label_idx = index[:-1], index[-1]
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line (e.g. at the end of the file)
            try:
                if len(row) != n_fields:
                    raise ValueError(f"expected {n_fields} tab-separated fields, got {len(row)}")
                label = _parse_label(task, row[label_idx])
            except ValueError as e:
                msg = f"{path}:{reader.line_num}: malformed {task.folder} row: {e}"
                if not skip_malformed:
                    raise GlueDataError(msg + " (set skip_malformed_rows=true to skip such rows)") from None
                skipped += 1
                if skipped <= 3:
                    log.warning("skipping %s", msg)
                continue
            texts.append(tuple(row[i] for i in text_idx))
            labels.append(label)
    if skipped:
        log.warning("%s: skipped %d malformed rows", path, skipped)
    if not labels:
        raise GlueDataError(f"{path}: no examples")
    return Examples(texts, labels, path)


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face hub
# ---------------------------------------------------------------------------------------------------------------


def read_hub_split(hub_dataset: str, task: GlueTask, split: str) -> Examples:
    import datasets

    ds = datasets.load_dataset(hub_dataset, task.hub_config, split=split)
    texts = list(zip(*(ds[c] for c in task.hub_text_columns)))
    labels = list(ds["label"])
    keep = [i for i, y in enumerate(labels) if y is not None and y != -1]  # -1: unlabeled (test splits)
    if len(keep) != len(labels):
        texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    if not task.is_regression:
        labels = [int(y) for y in labels]
    return Examples(texts, labels, f"{hub_dataset}/{task.hub_config}:{split}")


def read_split(task: GlueTask, split: str, data_dir: Optional[str], hub_dataset: str,
               skip_malformed: bool = False) -> Examples:
    """`split` is 'train' or an eval name of the task ('dev', 'matched', 'mismatched')."""
    stem, hub_split = ("train", "train") if split == "train" else task.evals[split]
    if data_dir is not None:
        return read_glue_tsv(tsv_path(data_dir, task, stem), task, skip_malformed)
    return read_hub_split(hub_dataset, task, hub_split)


# ---------------------------------------------------------------------------------------------------------------
# Tokenization and loaders
# ---------------------------------------------------------------------------------------------------------------


class TokenizedDataset(Dataset):
    def __init__(self, features: List[dict]):
        self.features = features

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, i: int) -> dict:
        return self.features[i]


def tokenize(examples: Examples, tokenizer, max_seq_len: int, regression: bool) -> TokenizedDataset:
    columns = [list(c) for c in zip(*examples.texts)]
    enc = tokenizer(*columns[:2], truncation=True, max_length=max_seq_len, return_token_type_ids=True,
                    return_attention_mask=False)
    features = []
    for i, label in enumerate(examples.labels):
        features.append({
            "input_ids": enc["input_ids"][i],
            "token_type_ids": enc["token_type_ids"][i],
            "labels": float(label) if regression else int(label),
        })
    return TokenizedDataset(features)


class Collator:
    """Pads a batch to its longest sequence (rounded up to a multiple of 8). Also sends each row's real length as a
    list of ints (`sequence_lengths`), which spares MosaicBERT's forward its host sync (see the MLM collator)."""

    def __init__(self, pad_token_id: int, regression: bool):
        self.pad_token_id = pad_token_id
        self.regression = regression

    def __call__(self, features: Sequence[dict]) -> Dict[str, Any]:
        length = max(len(f["input_ids"]) for f in features)
        length = (length + 7) // 8 * 8
        n = len(features)
        input_ids = torch.full((n, length), self.pad_token_id, dtype=torch.long)
        token_type_ids = torch.zeros((n, length), dtype=torch.long)
        attention_mask = torch.zeros((n, length), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            input_ids[i, :k] = torch.tensor(f["input_ids"])
            token_type_ids[i, :k] = torch.tensor(f["token_type_ids"])
            attention_mask[i, :k] = 1
        labels = torch.tensor([f["labels"] for f in features],
                              dtype=torch.float32 if self.regression else torch.long)
        return {"input_ids": input_ids, "token_type_ids": token_type_ids, "attention_mask": attention_mask,
                "labels": labels, "sequence_lengths": [len(f["input_ids"]) for f in features]}


def subsample(examples: Examples, n: Optional[int], randomly: bool, seed: int = 0) -> Examples:
    if n is None or n >= len(examples):
        return examples
    idx = sorted(random.Random(seed).sample(range(len(examples)), n)) if randomly else list(range(n))
    return Examples([examples.texts[i] for i in idx], [examples.labels[i] for i in idx], examples.source)


# Tokenized datasets are cached per process: sequential runs tokenize each task once, not once per seed.
_CACHE: Dict[tuple, TokenizedDataset] = {}


def load_tokenized(task: GlueTask, split: str, tokenizer, max_seq_len: int, *, data_dir: Optional[str],
                   hub_dataset: str, max_samples: Optional[int] = None, skip_malformed: bool = False
                   ) -> TokenizedDataset:
    key = (task.name, split, id(tokenizer), max_seq_len, data_dir, hub_dataset, max_samples, skip_malformed)
    if key not in _CACHE:
        examples = read_split(task, split, data_dir, hub_dataset, skip_malformed)
        # Training: a fixed random subset (same for every seed); eval: the first rows.
        examples = subsample(examples, max_samples, randomly=split == "train")
        _CACHE[key] = tokenize(examples, tokenizer, max_seq_len, task.is_regression)
    return _CACHE[key]



def build_dataloader(dataset: TokenizedDataset, tokenizer, batch_size: int, *, train: bool, seed: int,
                     regression: bool, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A GLUE loader: build_loader with the sentence (pair) Collator."""
    return build_loader(dataset, Collator(tokenizer.pad_token_id, regression), batch_size, train=train, seed=seed,
                        num_workers=num_workers, pin_memory=pin_memory)


def build_loader(dataset: Dataset, collate_fn, batch_size: int, *, train: bool, seed: int, num_workers: int = 0,
                 pin_memory: bool = False) -> DataLoader:
    """Training loaders are shuffled by a seeded DistributedSampler (Composer's dist.get_sampler: one shard per
    rank, reshuffled each epoch; `batch_size` is global); eval loaders are not shuffled (`batch_size` per rank)."""
    from composer.utils import dist

    world = dist.get_world_size()
    sampler = dist.get_sampler(dataset, shuffle=train, drop_last=False, seed=seed)
    return DataLoader(
        dataset,
        batch_size=max(1, batch_size // world) if train else batch_size,
        sampler=sampler,
        collate_fn=collate_fn,
        num_workers=num_workers,
        pin_memory=pin_memory,
        drop_last=False,
    )
