"""Streaming MLM dataset, collator and dataloader for MosaicBERT pretraining.

* :class:`MLMStreamingDataset` reads MDS shards written by :mod:`mosaicbert.pretrain.convert` (raw ``text``
  or pre-tokenized ``input_ids``), tokenizes raw text on the fly and masks each sample with random numbers keyed
  by ``(seed, epoch, sample_index)`` (see :mod:`mosaicbert.pretrain.masking` for why), so a run
  resumed mid-epoch from a Composer checkpoint sees exactly the masks an uninterrupted run would.
  StreamingDataset itself gives every rank/worker a disjoint, deterministic partition and supports
  exact mid-epoch resumption (Composer calls ``dataset.state_dict``/``load_state_dict``).
* :func:`pad_mlm_batch` pads a list of samples into int64 torch tensors, one sample per row.
* :func:`pack_mlm_batch` packs several samples (documents) into each row instead, never splitting one, and says
  which document each token belongs to (``sequence_id``); :func:`pack_documents` chooses the rows.
* :func:`build_mlm_dataloader` puts them together.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import json
import logging
import os
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from composer.utils import dist
from torch.utils.data import DataLoader

from mosaicbert.core.builtin_corpus import BUILTIN_PREFIX, BUILTIN_URI, cache_root
from mosaicbert.pretrain.config import DataConfig
from mosaicbert.pretrain.convert import DATASET_INFO, PrefixTokenizer, tokenizer_identity
from mosaicbert.pretrain.masking import IGNORE_INDEX, Masker, sample_key
from mosaicbert.pretrain.shards import (
    CONVERT_HINT,
    CorruptShardError,
    ShardReadError,
    VerifiedStreamingDataset,
    check_mds_split,
    file_problem,
)

log = logging.getLogger("mosaicbert")

__all__ = [
    "CorruptShardError",
    "DatasetMismatchError",
    "ShardReadError",
    "MLMStreamingDataset",
    "pad_mlm_batch",
    "pack_documents",
    "pack_mlm_batch",
    "padding_fraction",
    "num_samples_in_batch",
    "split_mlm_batch",
    "build_mlm_dataloader",
    "check_max_seq_len",
    "check_mds_split",
    "check_tokenizer_matches",
    "file_problem",
]


class DatasetMismatchError(ValueError):
    """The shards do not fit the run: pre-tokenized with another tokenizer, or cut shorter than its max_seq_len."""

def check_tokenizer_matches(folder: str | os.PathLike, tokenizer) -> None:
    """Pre-tokenized shards must come from the run's tokenizer: ids of another tokenizer that fit the vocabulary
    would train silently on garbage. The converter records its tokenizer in ``mosaicbert.json``."""
    folder = Path(folder)
    columns = json.loads((folder / "index.json").read_text())["shards"][0].get("column_names", [])
    if "input_ids" not in columns:
        return  # raw text is tokenized by the run's own tokenizer
    info_path = folder / DATASET_INFO
    if not info_path.is_file():
        log.warning("%s has pre-tokenized shards but no %s: cannot check that they were tokenized with this run's "
                    "tokenizer (re-convert them to record it)", folder, DATASET_INFO)
        return
    stored = json.loads(info_path.read_text()).get("tokenizer", {})
    ours = tokenizer_identity(tokenizer)
    if stored.get("vocab_sha256") != ours["vocab_sha256"]:
        raise DatasetMismatchError(
            f"the shards in {str(folder)!r} were tokenized with tokenizer {stored.get('name')!r} "
            f"({stored.get('vocab_size')} tokens, vocabulary sha256 {str(stored.get('vocab_sha256'))[:12]}...) but "
            f"this "
            f"run uses tokenizer {ours['name']!r} ({ours['vocab_size']} tokens, vocabulary sha256 "
            f"{ours['vocab_sha256'][:12]}...). Set tokenizer to the one the shards were made with, or re-convert "
            f"them with --tokenizer set to this run's tokenizer."
        )


def check_max_seq_len(folder: str | os.PathLike, max_seq_len: int) -> None:
    """A run's ``max_seq_len`` must not exceed the length the shards were converted at (recorded in
    ``mosaicbert.json``): their samples were cut there, so a longer run would silently never see a longer sequence."""
    info_path = Path(folder) / DATASET_INFO
    if not info_path.is_file():
        return  # (shards from elsewhere: nothing recorded to check against)
    info = json.loads(info_path.read_text())
    stored, mode = info.get("max_seq_len"), info.get("mode", "?")
    if stored is None or int(max_seq_len) <= int(stored):
        return
    raise DatasetMismatchError(
        f"data.max_seq_len={max_seq_len} is longer than the shards in {str(folder)!r}, which were converted with "
        f"--mode {mode} --max_seq_len {stored}: their samples are at most {stored} tokens. Convert the corpus again "
        f"with `python -m mosaicbert.pretrain.convert --mode documents --tokenize --max_seq_len {max_seq_len}` (whole "
        f"documents, usable by runs at any max_seq_len up to {max_seq_len}), or set data.max_seq_len <= {stored}."
    )


class MLMStreamingDataset(VerifiedStreamingDataset):
    """A :class:`streaming.StreamingDataset` of MDS samples turned into masked-LM examples.

    Each sample is a dict of unpadded int64 numpy arrays ``input_ids`` (with [CLS] ... [SEP], masked),
    ``labels`` (original ids at masked positions, -100 elsewhere), ``attention_mask`` (ones) and
    ``token_type_ids`` (zeros).

    With ``mask_in_collator``, a sample is instead ``input_ids`` unmasked and ``mask_key``, and the collator masks
    (``masker=dataset.masker``): the same masks. The mask of sample ``idx`` is a pure function of
    ``(mask_seed, epoch, idx)``. ``epoch`` is the epoch
    being iterated (captured in :meth:`_resume_incr_epoch`, which StreamingDataset calls at the start of
    every ``__iter__`` in every worker, also when resuming from a checkpoint); outside iteration
    (direct ``dataset[idx]``) the most recently started epoch is used, 0 before any iteration.

    Args:
        tokenizer: a fast tokenizer with [PAD]/[CLS]/[SEP]/[MASK].
        max_seq_len: samples are truncated to this many tokens (including [CLS]/[SEP]).
        mlm_probability: probability of selecting each non-special token.
        mask_seed: seed for the masks; defaults to ``shuffle_seed``.
        **kwargs: passed to :class:`streaming.StreamingDataset` (``local``, ``remote``, ``split``,
            ``shuffle``, ``shuffle_seed``, ``batch_size``, ...).
    """

    def __init__(
        self,
        *,
        tokenizer,
        max_seq_len: int,
        mlm_probability: float = 0.3,
        mask_seed: int | None = None,
        same_masks_every_epoch: bool = False,
        mask_in_collator: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        # Eval sets: the same masks at every evaluation, so successive eval losses compare like for like.
        self.same_masks_every_epoch = bool(same_masks_every_epoch)
        if max_seq_len < 3:
            raise ValueError(f"max_seq_len must be >= 3, got {max_seq_len}")
        for attr in ("pad_token_id", "cls_token_id", "sep_token_id", "mask_token_id"):
            if getattr(tokenizer, attr, None) is None:
                raise ValueError(f"Tokenizer lacks {attr.replace('_id', '')}; BERT MLM needs [PAD], [CLS], [SEP], "
                                 "[MASK].")
        self.tokenizer = tokenizer
        self.max_seq_len = int(max_seq_len)
        self.mlm_probability = float(mlm_probability)
        self.mask_seed = int(self.shuffle_seed if mask_seed is None else mask_seed)
        self.vocab_size = len(tokenizer)
        self.special_ids = sorted({int(i) for i in tokenizer.all_special_ids} | {int(tokenizer.pad_token_id)})
        self.pad_token_id = int(tokenizer.pad_token_id)
        self.cls_token_id = int(tokenizer.cls_token_id)
        self.sep_token_id = int(tokenizer.sep_token_id)
        self.mask_token_id = int(tokenizer.mask_token_id)
        self.masker = Masker(self.special_ids, self.vocab_size, self.mlm_probability, self.mask_token_id,
                             pad_token_id=self.pad_token_id)
        self._prefix: PrefixTokenizer | None = None  # (made on first use, in the worker that tokenizes)
        # With mask_in_collator, samples carry their unmasked ids and their mask key, and the collator masks the whole
        # batch in one call (`masker` argument of pad_mlm_batch / pack_mlm_batch): the same masks, far cheaper.
        self.mask_in_collator = bool(mask_in_collator)
        self._mlm_epoch = 0

    # ---- epoch tracking -------------------------------------------------------------------------
    def _resume_incr_epoch(self, *args: Any, **kwargs: Any) -> tuple[int, int]:
        epoch, sample_in_epoch = super()._resume_incr_epoch(*args, **kwargs)
        self._mlm_epoch = int(epoch)
        return epoch, sample_in_epoch

    @property
    def current_epoch(self) -> int:
        """The epoch whose masks ``__getitem__`` produces (see class docstring)."""
        return self._mlm_epoch

    # ---- shard integrity and errors -------------------------------------------------------------------
    # ---- samples ------------------------------------------------------------------------------------
    def tokenize_sample(self, raw: dict[str, Any]) -> np.ndarray:
        """The unmasked token ids (int64, with [CLS]/[SEP], <= max_seq_len) of a raw MDS sample."""
        if "input_ids" in raw:
            ids = np.asarray(raw["input_ids"], dtype=np.int64).reshape(-1)
            if len(ids) > self.max_seq_len:
                ids = np.concatenate([ids[: self.max_seq_len - 1], [self.sep_token_id]]).astype(np.int64)
            return ids
        if "text" in raw:
            # [CLS] + the first max_seq_len - 2 tokens + [SEP], as tokenizer(text, truncation=True,
            # max_length=max_seq_len) gives, tokenizing only the prefix of the text they need.
            if self._prefix is None:
                self._prefix = PrefixTokenizer(self.tokenizer, self.max_seq_len - 2)
            body = self._prefix(raw["text"])
            ids = np.empty(len(body) + 2, dtype=np.int64)
            ids[0], ids[1:-1], ids[-1] = self.cls_token_id, body, self.sep_token_id
            return ids
        raise KeyError(f"MDS sample has neither 'text' nor 'input_ids' (columns: {sorted(raw)}); was it written by "
                       "mosaicbert.pretrain.convert?")

    def __getitem__(self, idx: Any) -> Any:
        if not isinstance(idx, (int, np.integer)):
            return super().__getitem__(idx)  # slices / arrays: Array.__getitem__ -> get_item per index
        return self.get_item(int(idx))

    def get_item(self, sample_id: int, retry: int = 7) -> dict[str, np.ndarray]:
        if sample_id < 0:
            sample_id += self.num_samples
        if not 0 <= sample_id < self.num_samples:
            raise IndexError(f"Sample index {sample_id} out of range [0, {self.num_samples}).")
        ids = self.tokenize_sample(self._read(sample_id, retry))
        epoch = 0 if self.same_masks_every_epoch else max(self._mlm_epoch, 0)
        key = sample_key(self.mask_seed, epoch, sample_id)
        if self.mask_in_collator:
            return {"input_ids": ids, "mask_key": key}
        masked, labels = self.masker(ids, key)
        return {
            "input_ids": masked,
            "labels": labels,
            "attention_mask": np.ones(len(ids), dtype=np.int64),
            "token_type_ids": np.zeros(len(ids), dtype=np.int64),
        }


def _mask_in_batch(samples: Sequence[dict[str, Any]], masker: Masker | None) -> Sequence[dict[str, Any]]:
    """Samples of a ``mask_in_collator`` dataset (unmasked ``input_ids`` and ``mask_key``) masked all at once; other
    samples as they are."""
    if "mask_key" not in samples[0]:
        return samples
    if masker is None:
        raise ValueError("these samples carry a mask_key (MLMStreamingDataset(mask_in_collator=True)): pass the "
                         "dataset's masker to the collator")
    lengths = np.fromiter((len(s["input_ids"]) for s in samples), dtype=np.int64, count=len(samples))
    keys = np.fromiter((s["mask_key"] for s in samples), dtype=np.uint64, count=len(samples))
    masked, labels = masker.mask_many(np.concatenate([s["input_ids"] for s in samples]), keys, lengths)
    cuts = np.cumsum(lengths)[:-1]
    return [{"input_ids": i, "labels": lab} for i, lab in zip(np.split(masked, cuts), np.split(labels, cuts))]


def _columns(sample: dict[str, Any]) -> dict[str, np.ndarray]:
    """The four MLM columns of one sample (missing ones as if unmasked: labels -100, attention 1, token types 0)."""
    n = len(sample["input_ids"])
    defaults = {"labels": IGNORE_INDEX, "attention_mask": 1, "token_type_ids": 0}
    out = {"input_ids": np.asarray(sample["input_ids"])}
    for key, value in defaults.items():
        out[key] = np.asarray(sample[key]) if key in sample else np.full(n, value, dtype=np.int64)
    return out


def _pad_rows(rows: Sequence[dict[str, np.ndarray]], pad_token_id: int, length: int | None,
              vocab_size: int | None) -> dict[str, Any]:
    """Right-pad rows of columns (all of equal length within a row) into int64 tensors ``(rows, length)`` and add the
    per-row host counts; ``length=None`` pads to the longest row. Shared by :func:`pad_mlm_batch` and
    :func:`pack_mlm_batch`."""
    lengths = np.fromiter((len(r["input_ids"]) for r in rows), dtype=np.int64, count=len(rows))
    length = int(lengths.max()) if length is None else int(length)
    fill = {"input_ids": pad_token_id, "labels": IGNORE_INDEX, "attention_mask": 0, "token_type_ids": 0,
            "sequence_id": 0}
    real = np.arange(length)[None, :] < lengths[:, None]  # each row's first `lengths[i]` slots, in row order
    arrays: dict[str, np.ndarray] = {}
    for key in rows[0]:
        arr = np.full((len(rows), length), fill[key], dtype=np.int64)
        arr[real] = np.concatenate([r[key] for r in rows])
        arrays[key] = arr
    out: dict[str, Any] = {key: torch.from_numpy(arr) for key, arr in arrays.items()}
    if vocab_size is not None:
        ids, labels = arrays["input_ids"], arrays["labels"]
        bad = (ids < 0) | (ids >= vocab_size)
        if bool(bad.any()):
            raise ValueError(
                f"Token id {int(ids[bad][0])} in input_ids is outside the vocabulary [0, {vocab_size}): the data was "
                "tokenized with a different (larger) tokenizer than the model's. Re-convert or fix "
                "--tokenizer/vocab_size."
            )
        bad = ((labels < 0) & (labels != IGNORE_INDEX)) | (labels >= vocab_size)
        if bool(bad.any()):
            raise ValueError(f"Label {int(labels[bad][0])} is outside the vocabulary [0, {vocab_size}) and is not "
                             "-100.")
    # per-row counts on the host (lists, so Composer splits them into microbatches with the tensors): with them
    # the model learns the number of real and of labelled tokens without waiting for the GPU
    out["sequence_lengths"] = arrays["attention_mask"].sum(axis=1).tolist()
    out["label_counts"] = (arrays["labels"] != IGNORE_INDEX).sum(axis=1).tolist()
    return out


def pad_mlm_batch(
    samples: Sequence[dict[str, Any]],
    pad_token_id: int,
    pad_to: int | None = None,
    vocab_size: int | None = None,
    masker: Masker | None = None,
) -> dict[str, Any]:
    """Pad MLM samples into int64 tensors of shape ``(batch, length)``, plus the per-row host counts
    ``sequence_lengths`` (real tokens) and ``label_counts`` (labels != -100) as lists of ints.

    ``length`` is the longest sample in the batch (``pad_to=None``, default) or ``pad_to``. Padding:
    ``input_ids`` with ``pad_token_id``, ``labels`` with -100, ``attention_mask``/``token_type_ids`` with 0.
    When ``vocab_size`` is given, token ids are checked on the CPU (an out-of-range id would otherwise
    surface as an opaque device-side assert in the embedding lookup on GPU). Samples with a ``mask_key`` are masked
    here first, by ``masker``.
    """
    if not samples:
        raise ValueError("pad_mlm_batch got an empty batch.")
    samples = _mask_in_batch(samples, masker)
    longest = max(len(s["input_ids"]) for s in samples)
    if pad_to is not None and longest > pad_to:
        raise ValueError(f"A sample has {longest} tokens, more than pad_to={pad_to}.")
    return _pad_rows([_columns(s) for s in samples], pad_token_id, pad_to, vocab_size)


def pack_documents(lengths: Sequence[int], max_len: int) -> list[list[int]]:
    """Group samples (documents) of the given lengths into rows of at most ``max_len`` tokens; returns the sample
    indices of each row. Every sample lands in exactly one row, whole.

    Best-fit decreasing: the longest sample first, each into the fullest row that still has room for it, else a
    new row. Deterministic (ties: the earlier sample, the earlier row); inside a row the samples keep the batch's
    order. Rows are listed in the order they were opened, i.e. by their longest sample.
    """
    max_len = int(max_len)
    for i, n in enumerate(lengths):
        if n > max_len:
            raise ValueError(f"Sample {i} has {n} tokens, more than max_len={max_len}: it cannot be packed.")
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # (room left, row) sorted: bisect finds the fullest row with room
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        n = int(lengths[i])
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            room, row = free.pop(k)
        else:
            room, row = max_len, len(rows)
            rows.append([])
        rows[row].append(i)
        bisect.insort(free, (room - n, row))
    return [sorted(r) for r in rows]


def pack_mlm_batch(
    samples: Sequence[dict[str, Any]],
    pad_token_id: int,
    max_len: int,
    vocab_size: int | None = None,
    pad_to_max_length: bool = False,
    masker: Masker | None = None,
) -> dict[str, Any]:
    """Pack MLM samples (documents, each already truncated and masked on its own, or carrying a ``mask_key`` and masked
    here first by ``masker``) into rows of at most ``max_len`` tokens, several per row, never splitting one (rows
    chosen by :func:`pack_documents`).

    Returns what :func:`pad_mlm_batch` returns, per row (``input_ids``, ``labels``, ``attention_mask``,
    ``token_type_ids``: ``(rows, length)`` int64, right-padded; host lists ``sequence_lengths``, ``label_counts``),
    with ``rows <= len(samples)``, plus

    * ``sequence_id``: ``(rows, length)`` int64, the index of each token's document inside its row (0, 1, 2, ...
      from left to right; 0 at padding). Attention and position (ALiBi) distances must stay within a document.
    * ``document_counts``: host list, the number of documents in each row.

    ``length`` is the longest packed row, or ``max_len`` with ``pad_to_max_length``. A row's tokens are its
    documents' samples concatenated, in batch order.
    """
    if not samples:
        raise ValueError("pack_mlm_batch got an empty batch.")
    samples = _mask_in_batch(samples, masker)
    columns = [_columns(s) for s in samples]
    groups = pack_documents([len(c["input_ids"]) for c in columns], max_len)
    rows = []
    for members in groups:
        row = {key: np.concatenate([columns[i][key] for i in members]) for key in columns[0]}
        # [0,0,0,1,1,2,2,2,...]: document j of the row covers its own tokens
        row["sequence_id"] = np.repeat(np.arange(len(members)), [len(columns[i]["input_ids"]) for i in members])
        rows.append(row)
    out = _pad_rows(rows, pad_token_id, max_len if pad_to_max_length else None, vocab_size)
    out["document_counts"] = [len(members) for members in groups]
    return out


def padding_fraction(batch: dict[str, Any]) -> float:
    """The share of the batch's ``input_ids`` slots that are padding (``attention_mask == 0``): what packing saves."""
    mask = batch["attention_mask"]
    return float((mask == 0).sum()) / max(int(mask.numel()), 1)


def num_samples_in_batch(batch: dict[str, Any]) -> int:
    """The dataset samples in a (micro)batch: its documents when packed (``document_counts``), else its rows.

    The pretraining loaders are handed to Composer in a DataSpec that counts samples with this: ``max_duration`` in
    samples and the sample count that a checkpoint hands to ``StreamingDataset.state_dict`` for mid-epoch resumption
    must count documents, not packed rows, or a resumed run would repeat documents.
    """
    if "document_counts" in batch:
        return int(sum(batch["document_counts"]))
    return int(batch["input_ids"].shape[0])


def split_mlm_batch(batch: dict[str, Any], microbatch_size: int) -> list[dict[str, Any]]:
    """Composer's microbatches of an MLM batch: every tensor and per-row list cut into runs of `microbatch_size` rows.

    Composer's own split warns on every batch shorter than the microbatch size, which packed batches (fewer rows than
    documents) always are at evaluation; such a batch is simply one microbatch.
    """
    rows = int(batch["input_ids"].shape[0])
    if rows <= microbatch_size:
        return [batch]
    return [{k: v[i:i + microbatch_size] for k, v in batch.items()} for i in range(0, rows, microbatch_size)]


def _default_local_for_remote(remote: str, split: str) -> str:
    key = hashlib.sha1(f"{remote}|{split}".encode()).hexdigest()[:16]
    return str(cache_root() / "streaming" / key)


def _resolve_split(local: str | None, remote: str | None, split: str, tokenizer,
                   max_seq_len: int) -> tuple[str, str | None, str]:
    """(local folder, remote, split) of one stream, its folder checked (exists, index and shard sizes, tokenizer of
    pre-tokenized shards, max_seq_len) when it is local."""
    for value in (local, remote):
        if value is not None and str(value).startswith(BUILTIN_PREFIX):
            if str(value) != BUILTIN_URI:
                raise FileNotFoundError(f"Unknown built-in dataset {value!r}; the only one is {BUILTIN_URI}.")
            from mosaicbert.pretrain.convert import ensure_builtin_mds

            local, remote = ensure_builtin_mds(max_seq_len), None
            break
    if split in ("validation", "eval") and local is not None and remote is None \
            and not (Path(local) / split).exists() and (Path(local) / "val").exists():
        split = "val"
    if remote is None:
        if local is None:
            raise ValueError("build_mlm_dataloader needs `local` (a folder of MDS splits) or `remote`.")
        local = str(Path(local).expanduser())
        folder = check_mds_split(local, split)
        check_tokenizer_matches(folder, tokenizer)
        check_max_seq_len(folder, max_seq_len)
    elif local is None:
        local = _default_local_for_remote(str(remote), split)
    return local, remote, split


def _streams(data: DataConfig, tokenizer, train: bool) -> list:
    """streaming Streams of ``data.streams``: the training mixture (proportion/repeat), or every stream's eval split
    read once. Each stream's folder is checked as a single one is, and the streams must have been converted with one
    tokenizer and one max_seq_len; errors name the stream."""
    from streaming import Stream

    from mosaicbert.core.config import ConfigError

    streams, records = [], {}
    for name, st in data.streams.items():
        split = (st.split or data.train_split) if train else data.eval_split
        try:
            local, remote, split = _resolve_split(st.local, st.remote, split, tokenizer, data.max_seq_len)
        except (FileNotFoundError, DatasetMismatchError, CorruptShardError) as e:
            raise ConfigError(f"config key 'data.streams.{name}': {e}") from e
        info = Path(local) / split / DATASET_INFO
        if remote is None and info.is_file():
            records[name] = json.loads(info.read_text())
        weights = {"proportion": st.proportion, "repeat": st.repeat} if train else {}
        streams.append(Stream(local=local, remote=remote, split=split, **weights))
    def described(record: dict, what: str) -> Any:
        if what == "max_seq_len":
            return record.get("max_seq_len")
        tok = record.get("tokenizer") or {}
        return f"{tok.get('name')} (vocabulary sha256 {str(tok.get('vocab_sha256'))[:12]}...)" if tok else None

    for what in ("tokenizer", "max_seq_len"):
        seen = {name: described(r, what) for name, r in records.items() if described(r, what) is not None}
        first = next(iter(seen), None)
        other = next((n for n in seen if seen[n] != seen[first]), None)
        if other is not None:
            raise ConfigError(f"config key 'data.streams.{other}': converted with {what} {seen[other]}, but stream "
                              f"{first!r} with {seen[first]}; convert all streams of a mixture with the same "
                              f"--tokenizer and --max_seq_len")
    return streams


def build_mlm_dataloader(
    data: DataConfig,
    tokenizer,
    *,
    train: bool,
    batch_size: int,
    seed: int,
    pin_memory: bool = False,
    drop_last: bool | None = None,
    **streaming_kwargs: Any,
) -> DataLoader:
    """A DataLoader of padded (or, with ``data.packing``, packed) MLM batches over the MDS data of ``data``.

    ``train``: the training loader (``data.train_split``, ``data.mlm_probability``, ``data.shuffle``, fresh masks
    every epoch, the last incomplete batch dropped) or the evaluation loader (``data.eval_split``,
    ``data.eval_mlm_probability``, no shuffling, the same masks at every evaluation, every sample).
    ``drop_last`` overrides the incomplete-batch choice.

    ``data.local``: a folder containing ``<split>/index.json`` (output of ``python -m mosaicbert.pretrain.convert``),
    or ``builtin://python-docs`` (the built-in offline corpus, materialized once in the cache), or None when
    ``data.remote`` is given (then a cache folder under ``$MOSAICBERT_CACHE/streaming`` is used).
    ``data.remote``: ``s3://``, ``gs://``, ``https://`` ... (streaming downloads shards into ``local``).
    ``tokenizer``: a loaded tokenizer or a name/path for :func:`mosaicbert.core.tokenizer.load_tokenizer`.
    ``seed``: the shuffle seed and the mask seed. The DataLoader gets its own seeded ``torch.Generator`` so building
    and iterating it never consumes the global torch RNG.
    ``packing``: several documents per row (:func:`pack_mlm_batch`, with ``sequence_id`` and ``document_counts``)
    instead of one sample per row (:func:`pad_mlm_batch`). Each batch still holds ``batch_size`` samples (dataset
    order, masks and resumption are unchanged), in fewer rows; count its samples with :func:`num_samples_in_batch`.
    Extra keyword arguments go to :class:`streaming.StreamingDataset` (e.g. ``predownload``, ``cache_limit``,
    ``epoch_size``, ``shuffle_algo``).
    """
    if isinstance(tokenizer, (str, os.PathLike)):
        from mosaicbert.core.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(str(tokenizer))
    max_seq_len = data.max_seq_len
    if data.streams:
        stream_kwargs = {"streams": _streams(data, tokenizer, train)}
        local = remote = split = None
    else:
        local, remote, split = _resolve_split(data.local, data.remote, data.train_split if train else data.eval_split,
                                              tokenizer, max_seq_len)
        stream_kwargs = {"local": local, "remote": remote, "split": split}

    kwargs: dict[str, Any] = dict(streaming_kwargs)
    if data.shuffle_block_size is not None:
        kwargs["shuffle_block_size"] = data.shuffle_block_size
    if data.num_canonical_nodes is not None:
        kwargs["num_canonical_nodes"] = data.num_canonical_nodes
    try:
        for attempt in range(6):
            try:
                dataset = MLMStreamingDataset(
                    tokenizer=tokenizer, max_seq_len=max_seq_len,
                    mlm_probability=data.mlm_probability if train else data.eval_mlm_probability, mask_seed=seed,
                    same_masks_every_epoch=not train, mask_in_collator=True, shuffle=data.shuffle and train,
                    shuffle_seed=seed,
                    batch_size=batch_size, **stream_kwargs, **kwargs,
                )
                break
            except FileExistsError as e:
                # streaming registers its shared memory under the first free prefix; an unrelated process
                # on the same machine registering at the same instant makes one of them fail. Retry, but only
                # alone: building the dataset has collective steps, and a retry on one rank of a distributed
                # run would leave the others waiting at a different collective (a hang until dist_timeout).
                if attempt == 5 or dist.get_world_size() > 1:
                    raise RuntimeError(f"streaming could not register its shared memory ({e}): another job on this "
                                       f"machine started at the same instant, or two nodes of one run share "
                                       f"/dev/shm; start the run again") from e
                time.sleep(0.05 + 0.1 * random.Random(os.getpid() + attempt).random())
    except FileNotFoundError as e:
        raise FileNotFoundError(f"Could not open MDS data (local={local!r}, remote={remote!r}, split={split!r}): "
                                f"{e}. {CONVERT_HINT}") from e
    except (json.JSONDecodeError, KeyError) as e:
        raise CorruptShardError(f"Unreadable MDS index in {os.path.join(local or '', split or '')!r} "
                                f"({type(e).__name__}: {e}); re-run the conversion.") from e

    if data.packing:
        collate = functools.partial(
            pack_mlm_batch, pad_token_id=int(tokenizer.pad_token_id), max_len=max_seq_len, vocab_size=len(tokenizer),
            pad_to_max_length=data.pad_to_max_length, masker=dataset.masker,
        )
    else:
        collate = functools.partial(
            pad_mlm_batch, pad_token_id=int(tokenizer.pad_token_id),
            pad_to=max_seq_len if data.pad_to_max_length else None, vocab_size=len(tokenizer), masker=dataset.masker,
        )
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    loader_kwargs: dict[str, Any] = {}
    if data.num_workers > 0:
        loader_kwargs["prefetch_factor"] = data.prefetch_factor
    return DataLoader(
        dataset,
        batch_size=batch_size,
        collate_fn=collate,
        num_workers=data.num_workers,
        drop_last=train if drop_last is None else drop_last,
        pin_memory=pin_memory,
        generator=generator,
        **loader_kwargs,
    )
