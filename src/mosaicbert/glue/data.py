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
from typing import Dict, List, Optional, Tuple

from mosaicbert.finetune.config import ColumnsConfig, FinetuneDataConfig
from mosaicbert.finetune.data import Rows, not_utf8_message
from mosaicbert.finetune.tasks import Prepared, prepare
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
    """The label as a class id (or a score); a ValueError naming the value and the allowed labels."""
    raw = raw.strip()
    if task.is_regression:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"label {raw!r} is not a number ({task.folder} labels are similarity scores)") from None
    if task.label_names is not None:
        if raw not in task.label_names:
            raise ValueError(f"label {raw!r} is not one of the {task.folder} labels {list(task.label_names)}")
        return task.label_names.index(raw)
    allowed = [str(i) for i in range(task.num_labels)]
    if raw not in allowed:
        raise ValueError(f"label {raw!r} is not one of the {task.folder} labels {allowed}")
    return int(raw)


def read_glue_tsv(path: str, task: GlueTask, skip_malformed: bool = False) -> Examples:
    """Read one GLUE TSV file; a malformed row raises GlueDataError('path:line: ...') (or is skipped and counted)."""
    try:
        return _read_glue_tsv(path, task, skip_malformed)
    except UnicodeDecodeError:  # decoded as read: name the line here
        raise GlueDataError(not_utf8_message(path)) from None


def _read_glue_tsv(path: str, task: GlueTask, skip_malformed: bool) -> Examples:
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
# Finetuning inputs
# ---------------------------------------------------------------------------------------------------------------


def subsample(examples: Examples, n: Optional[int], randomly: bool, seed: int = 0) -> Examples:
    if n is None or n >= len(examples):
        return examples
    idx = sorted(random.Random(seed).sample(range(len(examples)), n)) if randomly else list(range(n))
    return Examples([examples.texts[i] for i in idx], [examples.labels[i] for i in idx], examples.source)


def task_labels(task: GlueTask) -> Optional[List[str]]:
    """The class names of a classification task (None for regression): its label names, else "0", "1", ..."""
    if task.is_regression:
        return None
    return list(task.label_names or [str(i) for i in range(task.num_labels)])


def as_rows(examples: Examples, task: GlueTask) -> Rows:
    """GLUE examples as finetuning rows (columns text, text_pair, label) for finetune's `prepare`."""
    names = task_labels(task)
    records = []
    for texts, label in zip(examples.texts, examples.labels):
        record = {"text": texts[0], "label": label if names is None else names[int(label)]}
        if len(texts) > 1:
            record["text_pair"] = texts[1]
        records.append(record)
    where = [f"{examples.source} example {i + 1}" for i in range(len(records))]
    return Rows(records, where, examples.source)


# Prepared datasets are cached per process: sequential runs tokenize each task once, not once per seed.
_CACHE: Dict[tuple, Prepared] = {}


def load_prepared(task: GlueTask, split: str, tokenizer, max_seq_len: int, *, data_dir: Optional[str],
                  hub_dataset: str, max_samples: Optional[int] = None, skip_malformed: bool = False) -> Prepared:
    """One split of a task, read and tokenized by finetune's classification / regression task type."""
    key = (task.name, split, id(tokenizer), max_seq_len, data_dir, hub_dataset, max_samples, skip_malformed)
    if key not in _CACHE:
        examples = read_split(task, split, data_dir, hub_dataset, skip_malformed)
        # Training: a fixed random subset (same for every seed); eval: the first rows.
        examples = subsample(examples, max_samples, randomly=split == "train")
        data_cfg = FinetuneDataConfig(columns=ColumnsConfig(text_pair="text_pair" if len(examples.texts[0]) > 1
                                                            else None), max_seq_len=max_seq_len)
        _CACHE[key] = prepare(task.kind, as_rows(examples, task), tokenizer, data_cfg, task_labels(task), train=True)
    return _CACHE[key]
