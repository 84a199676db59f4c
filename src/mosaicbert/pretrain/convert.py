"""Convert a text corpus to MDS shards for :class:`mosaicbert.pretrain.mlm.MLMStreamingDataset`.

Usage::

    # C4 from the Hugging Face Hub (needs internet), the published recipe: one 128-token sample per doc
    python -m mosaicbert.pretrain.convert --source hf --hf_dataset allenai/c4 --hf_config en \\
        --out_root ./data/c4 --mode truncate --max_seq_len 128

    # Local C4-format files (*.json.gz / *.jsonl with a "text" field) or plain .txt files
    python -m mosaicbert.pretrain.convert --source local \\
        --train_files 'my-corpus/train/*.json.gz' --val_files 'my-corpus/validation/*.json.gz' \\
        --tokenizer bert-base-uncased --out_root ./data/local --mode split --tokenize

    # Whole documents (long ones in chunks of at most 2048 tokens), for runs at any max_seq_len <= 2048
    python -m mosaicbert.pretrain.convert --source local \\
        --train_files 'my-corpus/train/*.json.gz' --val_files 'my-corpus/validation/*.json.gz' \\
        --tokenizer bert-base-uncased --out_root ./data/docs-2048 --mode documents --tokenize --max_seq_len 2048

    # The built-in offline corpus (Python stdlib docstrings) with its own tokenizer
    python -m mosaicbert.pretrain.convert --source builtin --tokenizer builtin://python-docs --out_root ./data/builtin

Output: ``<out_root>/train`` and ``<out_root>/val``, each an MDS dataset (``index.json`` + zstd shards, with an
xxh3 hash of every shard file that the loader checks) and ``mosaicbert.json`` (mode, max_seq_len and the
tokenizer's name and vocabulary hash, checked against the run's tokenizer for pre-tokenized shards). Both splits
are written to temporary folders beside the targets and moved into place only when both are complete: an error or
a kill half-way leaves the previous dataset (``--overwrite``) whole, and the next conversion removes the leftovers.

Workers (``--workers N``, default: the usable cores): documents are read in this process and cut into blocks of
1,024 consecutive documents; block ``k`` goes to worker ``k mod N``, which parses its JSON lines, tokenizes it and
writes its samples to its own shard folder ``<split>/part-<w>``; one ``index.json`` (streaming's ``merge_index``)
then lists worker 0's shards, then worker 1's, and so on. Sample order: for a fixed N and input it is always the
same (worker ``w`` holds blocks ``w, w + N, w + 2N, ...`` in input order); a different N writes the same samples
(the same multiset) with whole blocks in another order; N = 1 (or an input of a single block) keeps the input order
in one folder. Training shuffles anyway. The progress line shows documents/s and, when the input's size is known
(local files, a hub dataset with a card, ``--limit``), the share done and an ETA.

Modes (``--mode``):

* ``truncate``: one sample per document, truncated to ``max_seq_len`` tokens including [CLS]/[SEP]
  (the published MosaicBERT C4 recipe; the rest of each document is discarded). Only a prefix of each document is
  tokenized, grown when it holds too few tokens, with the same ids as tokenizing the whole document.
* ``split``: each document is cut into consecutive chunks of ``max_seq_len - 2`` tokens; each chunk
  becomes a sample ``[CLS] chunk [SEP]`` (nothing is discarded; the last chunk is shorter).
* ``pack``: documents are concatenated, separated by [SEP], and cut into full-length samples
  ``[CLS] <max_seq_len - 2 tokens> [SEP]`` (no padding at all; samples may straddle documents; only the
  final sample of each block of 1,024 documents can be shorter). Needs ``--tokenize``.
* ``documents``: one sample ``[CLS] document [SEP]`` per document, kept whole; a document of more than
  ``max_seq_len - 2`` tokens is cut into the fewest consecutive chunks that fit, of near-equal length (no
  short tail fragment), each ``[CLS] chunk [SEP]``. Needs ``--tokenize``. One such dataset serves runs at any
  ``data.max_seq_len`` up to the stored one (a shorter run truncates each document), with or without
  ``data.packing`` (several documents per row, never split). Convert at the longest context you will train
  at, e.g. ``--max_seq_len 2048`` or ``8192``.

A run whose ``data.max_seq_len`` is larger than the stored ``max_seq_len`` is refused: its samples were cut at
the stored length, so it would never see a longer sequence.

Columns (``--tokenize`` / ``--no-tokenize``, default ``--no-tokenize``):

* raw text: column ``text: str``. The dataset tokenizes it on the fly (truncating to ``max_seq_len``
  and adding [CLS]/[SEP]). In ``truncate`` and ``split`` modes the stored text is cut at token
  boundaries using the fast tokenizer's offset mapping, so each stored span re-tokenizes to at most
  ``max_seq_len - 2`` tokens (``truncate`` stores only the part of the document that is used).
  Raw text keeps the shards tokenizer-independent, but cuts are made with ``--tokenizer``.
* tokenized: column ``input_ids: ndarray:int32``, already including [CLS]/[SEP], length <= max_seq_len.

Input files (``--source local``): ``*.json.gz``, ``*.jsonl``, ``*.jsonl.gz``, ``*.json`` (JSON lines with a
``"text"`` field, C4's own format); ``*.txt`` / ``*.txt.gz``: plain text where each block of lines
separated by one or more blank lines is one document (for one-document-per-file corpora, simply
don't put blank lines inside documents). ``--train_files``/``--val_files`` accept globs (``**`` works),
a directory, or several of those separated by commas. Without ``--val_files``, ``val`` is held out of the train
files: every ``round(1 / --val_fraction)``-th document (default 0.01: documents 100, 200, ... in file order), the
same on every run.
"""

from __future__ import annotations

import argparse
import errno
import glob
import gzip
import hashlib
import itertools
import json
import logging
import multiprocessing as mp
import os
import queue
import re
import shutil
import signal
import socket
import sys
import time
import uuid
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np

from mosaicbert.core.builtin_corpus import BUILTIN_URI, atomic_build, builtin_corpus_files, cache_root

__all__ = [
    "DATASET_INFO",
    "HASHES",
    "MODES",
    "SPLITS",
    "BLOCK_DOCUMENTS",
    "ConvertStats",
    "InputProgress",
    "PrefixTokenizer",
    "WriteError",
    "convert",
    "ensure_builtin_mds",
    "iter_documents",
    "resolve_files",
    "main",
    "remove_stale_temporaries",
    "temporary_name",
    "tokenizer_identity",
    "usable_cores",
]

log = logging.getLogger("mosaicbert")

MODES = ("truncate", "split", "pack", "documents")
SPLITS = ("train", "val")
_HF_SPLIT = {"train": "train", "val": "validation"}
_JSON_SUFFIXES = (".json.gz", ".jsonl.gz", ".jsonl", ".json")
_TXT_SUFFIXES = (".txt", ".txt.gz")
_BATCH_DOCS = 256  # documents per tokenizer call
#: Documents per block: the unit of work handed to a worker (and the span of one pack-mode stream).
BLOCK_DOCUMENTS = 1024
#: Hashes of every shard file, recorded in index.json and checked by the loader (xxh3: fast, catches damage).
HASHES = ["xxh3_64"]
#: Written beside index.json: how the split was made, including the tokenizer of pre-tokenized shards.
DATASET_INFO = "mosaicbert.json"


@dataclass
class ConvertStats:
    split: str
    out: str
    documents: int = 0
    samples: int = 0
    tokens: int = 0  # tokens in the written samples, including [CLS]/[SEP]

    def line(self) -> str:
        return (f"{self.split}: {self.documents} documents read, {self.samples} samples written, {self.tokens} tokens "
                f"-> {self.out}")


# --------------------------------------------------------------------------------------------------
# Reading documents
# --------------------------------------------------------------------------------------------------


def resolve_files(spec: str | Sequence[str], what: str = "files") -> list[str]:
    """Expand globs / directories / comma-separated lists into a sorted list of files.

    Raises FileNotFoundError naming the glob when nothing matches.
    """
    patterns: list[str] = []
    for item in [spec] if isinstance(spec, str) else list(spec):
        patterns.extend(p.strip() for p in str(item).split(",") if p.strip())
    if not patterns:
        raise FileNotFoundError(f"No {what} given.")
    files: list[str] = []
    for pat in patterns:
        pat = os.path.expanduser(pat)
        if os.path.isdir(pat):
            found = sorted(
                str(p) for p in Path(pat).rglob("*") if p.is_file() and p.name.endswith(_JSON_SUFFIXES + _TXT_SUFFIXES)
            )
        else:
            found = sorted(f for f in glob.glob(pat, recursive=True) if os.path.isfile(f))
        if not found:
            raise FileNotFoundError(f"No input {what} match {pat!r} (glob relative to {os.getcwd()}).")
        files.extend(found)
    return files


class InputProgress:
    """How far the reader is through its input: bytes of the local files (compressed, as stored) read so far."""

    def __init__(self, files: Sequence[str] | None = None) -> None:
        self.total_bytes = sum(os.path.getsize(f) for f in files) if files else None
        self.done_bytes = 0  # of finished files
        self.current = None  # the open raw file of the current one

    def bytes_read(self) -> int:
        try:
            return self.done_bytes + (self.current.tell() if self.current is not None else 0)
        except (OSError, ValueError):  # (closed meanwhile)
            return self.done_bytes


def _byte_lines(path: str, progress: InputProgress | None = None) -> Iterator[tuple[int, bytes]]:
    """(line number, line) of a file, gzip-decompressed if its name ends in .gz; errors name the file."""
    lineno = 0
    try:
        with open(path, "rb") as raw, (gzip.GzipFile(fileobj=raw) if path.endswith(".gz") else raw) as fh:
            if progress is not None:
                progress.current = raw
            for lineno, line in enumerate(fh, start=1):
                yield lineno, line
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        where = f"{path}:{lineno + 1}" if lineno else path
        what = "not a gzip file" if isinstance(e, gzip.BadGzipFile) and lineno == 0 \
            else "a damaged or truncated gzip file"
        raise ValueError(
            f"{where}: {what} ({type(e).__name__}: {e}); its name ends in .gz. Re-download or re-compress it, or "
            "rename it without .gz if it is plain text."
        ) from None
    finally:
        if progress is not None:
            progress.current = None
            progress.done_bytes += os.path.getsize(path) if os.path.exists(path) else 0


def _utf8(path: str, lineno: int, line: bytes) -> str:
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(
            f"{path}:{lineno}: not UTF-8 text (byte 0x{line[e.start]:02x} at column {e.start + 1}); "
            "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8) or leave it out."
        ) from None


def json_line_text(path: str, lineno: int, line: bytes) -> str:
    """The 'text' field of one C4-format JSON line; errors name the file and line."""
    try:
        obj = json.loads(_utf8(path, lineno, line))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: malformed JSON line ({e.msg} at column {e.colno}).") from e
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise ValueError(f"{path}:{lineno}: expected a JSON object with a string field 'text'.")
    return obj["text"]


# A document as the reader deals it out: its text, or a JSON line still to be decoded, (path, line number, bytes),
# so that the conversion workers, not the one reading process, spend the time parsing JSON.
Document = Union[str, tuple[str, int, bytes]]


def document_text(doc: Document) -> str:
    return doc if isinstance(doc, str) else json_line_text(*doc)


def _iter_txt_blocks(path: str, progress: InputProgress | None = None) -> Iterator[str]:
    block: list[str] = []
    for lineno, raw in _byte_lines(path, progress):
        line = _utf8(path, lineno, raw)
        if line.strip():
            block.append(line.rstrip("\r\n"))
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def held_out(docs: Iterable[Document], every: int, keep: bool) -> Iterator[Document]:
    """Every `every`-th document (the 1-based `every`, 2*`every`, ...) when `keep`, else all the others."""
    for i, doc in enumerate(docs, 1):
        if (i % every == 0) == keep:
            yield doc


def iter_raw_documents(files: Iterable[str], progress: InputProgress | None = None) -> Iterator[Document]:
    """The documents of C4-format JSON-lines files (undecoded, see `Document`) and blank-line-separated .txt files."""
    for path in files:
        if path.endswith(_TXT_SUFFIXES):
            yield from _iter_txt_blocks(path, progress)
        elif path.endswith(_JSON_SUFFIXES):
            for lineno, line in _byte_lines(path, progress):
                if line.strip():
                    yield path, lineno, line
        else:
            raise ValueError(
                f"{path}: unsupported input file type; expected {', '.join(_JSON_SUFFIXES + _TXT_SUFFIXES)}."
            )


def iter_documents(files: Iterable[str], progress: InputProgress | None = None) -> Iterator[str]:
    """Yield documents (strings) from C4-format JSON-lines files and/or blank-line-separated .txt files."""
    for doc in iter_raw_documents(files, progress):
        yield document_text(doc)


def _open_hf(dataset: str, config: str | None, split: str):
    try:
        from datasets import load_dataset
    except ImportError as e:
        raise ImportError("--source hf needs the `datasets` package: pip install datasets") from e
    try:
        return load_dataset(dataset, config, split=_HF_SPLIT[split], streaming=True)
    except Exception as e:
        raise ConnectionError(
            f"Could not open {dataset!r} (config {config!r}, split {_HF_SPLIT[split]!r}) on the Hugging Face Hub: "
            f"{e}. Offline? Download C4-format files and use --source local --train_files ... --val_files ..."
        ) from e


def _hf_num_documents(ds, split: str) -> int | None:
    """The split's document count from the dataset card, when it has one (for the progress line's ETA)."""
    try:
        return int(ds.info.splits[_HF_SPLIT[split]].num_examples) or None
    except Exception:
        return None


def _limited(it: Iterator[Document], limit: int | None) -> Iterator[Document]:
    for i, doc in enumerate(it):
        if limit is not None and i >= limit:
            return
        yield doc


def _batched(it: Iterable[str], n: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for x in it:
        batch.append(x)
        if len(batch) == n:
            yield batch
            batch = []
    if batch:
        yield batch


# --------------------------------------------------------------------------------------------------
# Building samples
# --------------------------------------------------------------------------------------------------


class PrefixTokenizer:
    """Tokenize only as much of each document as its first ``max_tokens`` tokens need, with ids (and offsets)
    identical to tokenizing the whole document.

    A prefix of ``chars_per_token * max_tokens`` characters is tokenized (doubled until it suffices). The last word
    of a prefix that is not the whole document may be cut, so its tokens are not trusted: the prefix suffices when
    the tokens before its last word number at least ``max_tokens``. Words are the tokenizer's pre-tokenization
    words (BERT: split at whitespace and around punctuation), which are tokenized independently of each other.

    Uses the tokenizer's backend (``tokenizers.Tokenizer``), copied without truncation or padding: the transformers
    wrapper changes the backend's truncation setting on every call with ``truncation=True``, and costs more per call.
    """

    def __init__(self, tokenizer, max_tokens: int, chars_per_token: int = 6) -> None:
        from tokenizers import Tokenizer

        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is None:
            raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer (no backend_tokenizer); "
                             "conversion and on-the-fly tokenization need a fast (Rust) tokenizer.")
        self.backend = Tokenizer.from_str(backend.to_str())
        self.backend.no_truncation()
        self.backend.no_padding()
        self.max_tokens = int(max_tokens)
        self.first_chars = max(64, int(chars_per_token) * self.max_tokens)

    def encode(self, docs: Sequence[str]) -> list:
        """Whole-document encodings (``tokenizers.Encoding``: ids, offsets, word_ids), no special tokens."""
        return self.backend.encode_batch(list(docs), add_special_tokens=False)

    def encode_prefixes(self, docs: Sequence[str]) -> list[tuple[Any, int]]:
        """``(encoding of a prefix, n)`` per document: the prefix's first ``n >= min(max_tokens, all)`` tokens (ids,
        offsets, word_ids) are those of the whole document (``n`` is the whole length when the prefix is the whole
        document)."""
        out: list[tuple[Any, int] | None] = [None] * len(docs)
        limits = [self.first_chars] * len(docs)
        todo = list(range(len(docs)))
        while todo:
            encs = self.backend.encode_batch([docs[i][: limits[i]] for i in todo], add_special_tokens=False)
            short = []
            for i, enc in zip(todo, encs):
                n = self._trusted(enc, limits[i] >= len(docs[i]))
                if n is None:
                    limits[i] *= 2
                    short.append(i)
                else:
                    out[i] = (enc, n)
            todo = short
        return out  # type: ignore[return-value]

    def _trusted(self, enc, whole: bool) -> int | None:
        """How many leading tokens of a prefix's encoding are the whole document's, or None when fewer than
        ``max_tokens`` are (the prefix must grow)."""
        n = len(enc.ids)
        if whole:
            return n
        words = enc.word_ids
        safe = n
        while safe > 0 and words[safe - 1] == words[n - 1]:
            safe -= 1  # the last word may be cut: drop it
        return safe if safe >= self.max_tokens else None

    def __call__(self, text: str) -> list[int]:
        """The first ``max_tokens`` ids of one document (no special tokens).

        One document goes through ``encode``, which keeps the GIL: ``encode_batch`` releases it, and in a loader
        worker streaming's sample-tracking threads take it, so that every call then waits to get it back (on 2 cores
        the tokenizer's time per sample fell from ~430 to ~200 µs with ``encode``)."""
        limit = self.first_chars
        while True:
            enc = self.backend.encode(text[:limit], add_special_tokens=False)
            n = self._trusted(enc, limit >= len(text))
            if n is not None:
                return enc.ids[: min(n, self.max_tokens)]
            limit *= 2


@dataclass
class _Settings:
    """What every writer (in-process or a worker process) needs to turn documents into samples."""

    tokenizer: Any
    mode: str
    tokenize: bool
    max_seq_len: int
    compression: str | None
    size_limit: int | str

    def __post_init__(self) -> None:
        self.encoder = PrefixTokenizer(self.tokenizer, self.max_seq_len - 2)


def _block_samples(docs: Sequence[str], st: _Settings) -> Iterator[tuple[dict[str, Any], int]]:
    """The samples of one block of documents: ``(MDS record, tokens including [CLS]/[SEP])``.

    Pack mode packs within the block (its last sample may be short), so that the samples of a block do not depend
    on the blocks before it, nor on which worker converts it.
    """
    cls_id, sep_id = st.tokenizer.cls_token_id, st.tokenizer.sep_token_id
    body = st.max_seq_len - 2
    carry: list[int] = []  # pack mode: tokens not yet emitted
    for batch in _batched(docs, _BATCH_DOCS):
        if st.mode == "truncate":
            for doc, (enc, n) in zip(batch, st.encoder.encode_prefixes(batch)):
                e = min(body, n)
                if e == 0:
                    continue  # an empty document
                if st.tokenize:
                    yield {"input_ids": np.asarray([cls_id, *enc.ids[:e], sep_id], dtype=np.int32)}, e + 2
                    continue
                # Raw text: the span ends with the word containing the last kept token, so that the load-time
                # truncation to max_seq_len reproduces the first max_seq_len - 2 tokens exactly.
                words, end = enc.word_ids, e
                while end < n and words[end] is not None and words[end] == words[end - 1]:
                    end += 1
                text = doc[: enc.offsets[end - 1][1]].strip()
                if text:
                    yield {"text": text}, e + 2
            continue
        encs = st.encoder.encode(batch)
        for doc, enc in zip(batch, encs):
            ids = enc.ids
            if not ids:
                continue
            if not st.tokenize:  # split mode, raw text: spans cut between words
                n, s, words, offsets = len(ids), 0, enc.word_ids, enc.offsets
                while s < n:
                    e = _word_boundary_end(words, s, body, n)
                    text = doc[offsets[s][0] : offsets[e - 1][1]].strip()
                    if text:
                        yield {"text": text}, (e - s) + 2
                    s = e
            elif st.mode == "split":
                for s in range(0, len(ids), body):
                    yield {"input_ids": np.asarray([cls_id, *ids[s : s + body], sep_id], dtype=np.int32)}, \
                        len(ids[s : s + body]) + 2
            elif st.mode == "documents":
                for chunk in _even_chunks(ids, body):
                    yield {"input_ids": np.asarray([cls_id, *chunk, sep_id], dtype=np.int32)}, len(chunk) + 2
            else:  # pack
                carry.extend(ids)
                carry.append(sep_id)
                while len(carry) >= body:
                    chunk, carry = carry[:body], carry[body:]
                    yield {"input_ids": np.asarray([cls_id, *chunk, sep_id], dtype=np.int32)}, body + 2
    if st.mode == "pack":
        while carry and carry[-1] == sep_id:  # the final document's separator is redundant
            carry.pop()
        if carry:
            yield {"input_ids": np.asarray([cls_id, *carry, sep_id], dtype=np.int32)}, len(carry) + 2

def _even_chunks(ids: list[int], limit: int) -> list[list[int]]:
    """``ids`` in the fewest consecutive chunks of at most ``limit`` tokens, their lengths differing by at most one.

    Even chunks rather than full ones and a remainder: a document of limit + 2 tokens becomes two halves, not a
    full chunk and a 2-token fragment with no context to predict from.
    """
    n_chunks = -(-len(ids) // limit)
    base, extra = divmod(len(ids), n_chunks)
    chunks, start = [], 0
    for i in range(n_chunks):
        end = start + base + (1 if i < extra else 0)
        chunks.append(ids[start:end])
        start = end
    return chunks


def _word_boundary_end(word_ids: list, s: int, limit: int, n: int) -> int:
    """Largest ``e`` in ``(s, min(s + limit, n)]`` that does not split a word; ``s + limit`` if none does."""
    e = min(s + limit, n)
    if e == n:
        return e
    cut = e
    while cut > s and word_ids[cut] is not None and word_ids[cut] == word_ids[cut - 1]:
        cut -= 1
    return cut if cut > s else e


def _writer_columns(tokenize: bool) -> dict[str, str]:
    return {"input_ids": "ndarray:int32"} if tokenize else {"text": "str"}


def temporary_name(prefix: str) -> str:
    """``<prefix><pid>-<host>-<random>``: a private temporary name whose owner :func:`remove_stale_temporaries` can
    tell is dead."""
    return f"{prefix}{os.getpid()}-{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike, prefix: str) -> list[str]:
    """Remove `folder`'s temporaries named ``<prefix><pid>-...`` whose process (on this host) no longer runs: left by
    a killed conversion or decompression. Temporaries of live processes and of other hosts are kept."""
    removed = []
    pattern = re.compile(re.escape(prefix) + r"(\d+)-(?:(.+)-)?[0-9a-f]{8}")
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        return removed
    for name in names:
        m = pattern.fullmatch(name)
        if not m or (m.group(2) not in (None, socket.gethostname())) or _pid_alive(int(m.group(1))):
            continue
        path = os.path.join(folder, name)
        log.warning("removing %s, left by process %s that no longer runs (an interrupted conversion)", path, m.group(1))
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        removed.append(path)
    return removed


def tokenizer_identity(tokenizer, name: str | None = None) -> dict:
    """Name, size and a hash of the vocabulary (token -> id): what pre-tokenized shards depend on."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()
    return {"name": name or getattr(tokenizer, "name_or_path", "") or "?", "vocab_size": len(vocab),
            "vocab_sha256": digest}


def _tokenizer_name(tokenizer) -> str | None:
    if not isinstance(tokenizer, (str, os.PathLike)):
        return None
    return os.path.abspath(tokenizer) if os.path.exists(tokenizer) else str(tokenizer)


# --------------------------------------------------------------------------------------------------
# Writing: in this process, or in worker processes that each write a part
# --------------------------------------------------------------------------------------------------


@dataclass
class _Counts:
    documents: int = 0
    samples: int = 0
    tokens: int = 0

    def add(self, other: _Counts) -> None:
        self.documents += other.documents
        self.samples += other.samples
        self.tokens += other.tokens


class WriteError(OSError):
    """Writing the output failed (disk full, no permission, ...); the message names the folder and the fix."""


def _write_error(e: OSError, out: str | os.PathLike) -> WriteError:
    if e.errno == errno.ENOSPC:
        what, fix = "no space left on the device", "Free space there or choose another --out_root."
    elif e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what, fix = f"not allowed to write there ({e.strerror})", "Choose a writable --out_root."
    else:
        what, fix = str(e.strerror or e), "Check the disk and the folder."
    return WriteError(f"writing {str(out)!r} failed: {what}. The partial output is removed and any previous dataset "
                      f"there is left as it was. {fix}")


def _write_blocks(out: str, blocks: Iterable[list[Document]], st: _Settings, counts: _Counts,
                  on_block: Callable[[], None] | None = None) -> None:
    """Write the samples of `blocks` as one MDS folder `out`. Errors reading the input pass through as they are;
    errors writing become a WriteError naming `out`."""
    from streaming import MDSWriter

    try:
        writer = MDSWriter(out=out, columns=_writer_columns(st.tokenize), compression=st.compression, hashes=HASHES,
                           size_limit=st.size_limit)
    except OSError as e:
        raise _write_error(e, out) from e
    try:
        for block in blocks:
            for record, ntok in _block_samples([document_text(d) for d in block], st):
                try:
                    writer.write(record)
                except OSError as e:
                    raise _write_error(e, out) from e
                counts.samples += 1
                counts.tokens += ntok
            counts.documents += len(block)
            if on_block is not None:
                on_block()
        try:
            writer.finish()
        except OSError as e:
            raise _write_error(e, out) from e
    except BaseException:
        writer.cancel_future_jobs()
        raise


def _worker(part: str, inbox, outbox, st: _Settings, parent: int) -> None:
    """A conversion worker: writes the blocks it is sent to its own MDS folder `part`, then reports its counts."""
    from mosaicbert.pretrain.runlock import exit_with_parent

    # A converter killed while sending a block leaves a worker waiting for the rest of it: die with the converter.
    exit_with_parent(signal.SIGKILL)

    def blocks() -> Iterator[list[str]]:
        while True:
            try:
                block = inbox.get(timeout=2.0)
            except queue.Empty:
                if os.getppid() != parent:  # the converter was killed: nobody will merge this part
                    os._exit(1)
                continue
            if block is None:
                return
            yield block

    counts = _Counts()
    try:
        _write_blocks(part, blocks(), st, counts)
        outbox.put(("done", part, counts))
    except BaseException as e:  # reported to the converter, which raises it
        try:
            outbox.put(("error", part, e))
        except Exception:  # (not picklable)
            outbox.put(("error", part, RuntimeError(f"{type(e).__name__}: {e}")))


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity mask; a container's or taskset's limit)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # (not Linux)
        return os.cpu_count() or 1


class _Progress:
    """One line on stderr: documents, documents/s and, when the input's size is known, the share done and an ETA."""

    def __init__(self, split: str, enabled: bool, total_docs: int | None, reader: InputProgress | None) -> None:
        self.split, self.enabled, self.total_docs, self.reader = split, enabled, total_docs, reader
        self.start = self.last = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.documents = 0

    def update(self, documents: int, final: bool = False) -> None:
        self.documents = documents
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < (1.0 if self.tty else 30.0)):
            return
        self.last = now
        elapsed = max(now - self.start, 1e-9)
        rate = documents / elapsed
        line = f"{self.split}: {documents:,} documents, {rate:,.0f} documents/s"
        fraction = None
        if self.total_docs:
            fraction = min(documents / self.total_docs, 1.0)
        elif self.reader is not None and self.reader.total_bytes:
            fraction = min(self.reader.bytes_read() / self.reader.total_bytes, 1.0)
        if final:
            line += f", {_clock(elapsed)}"
        elif fraction:
            line += f", {100 * fraction:.1f}% of the input, ETA {_clock(elapsed * (1 - fraction) / fraction)}"
        print(("\r" if self.tty else "") + line + ("\n" if final or not self.tty else ""), end="", file=sys.stderr,
              flush=True)


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _convert_split(docs: Iterator[Document], out: Path, st: _Settings, workers: int, block_documents: int,
                   progress: _Progress) -> _Counts:
    """Write the samples of `docs` as one MDS dataset in `out` (which must not exist yet).

    Documents are cut into blocks of `block_documents`. With one worker (or a single block) they are written here,
    in order; with N workers, block k goes to worker k mod N, which writes ``out/part-<w>`` (its blocks in order),
    and ``out/index.json`` lists the parts' shards in worker order (streaming's merge_index).
    """
    counts = _Counts()
    blocks = _batched(docs, block_documents)
    first = next(blocks, None)
    second = next(blocks, None) if first is not None else None
    queued = itertools.chain([b for b in (first, second) if b is not None], blocks)
    if workers <= 1 or second is None:
        _write_blocks(str(out), queued, st, counts, on_block=lambda: progress.update(counts.documents))
        return counts

    ctx = mp.get_context("fork")  # (the workers inherit the loaded tokenizer; nothing to pickle or re-load)
    outbox = ctx.Queue()
    inboxes = [ctx.Queue(maxsize=2) for _ in range(workers)]
    parts = [str(out / f"part-{w:04d}") for w in range(workers)]
    procs: list = []
    finished: dict[str, _Counts] = {}

    def check_workers() -> None:
        while True:
            try:
                kind, part, payload = outbox.get_nowait()
            except queue.Empty:
                break
            if kind == "error":
                raise payload
            finished[part] = payload
        for w, p in enumerate(procs):
            if not p.is_alive() and parts[w] not in finished and p.exitcode not in (0, None):
                raise RuntimeError(f"conversion worker {w} (writing {parts[w]}) died with exit code {p.exitcode}.")

    # Forked workers must not use the tokenizer's own thread pool (it may have run in this process already).
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    try:
        out.mkdir(parents=True)
        dispatched = 0
        for k, block in enumerate(queued):
            w = k % workers
            if w == len(procs):  # workers start with their first block
                procs.append(ctx.Process(target=_worker, args=(parts[w], inboxes[w], outbox, st, os.getpid()),
                                         daemon=True))
                procs[-1].start()
            while True:
                try:
                    inboxes[w].put(block, timeout=1.0)
                    break
                except queue.Full:
                    check_workers()
            dispatched += len(block)
            progress.update(dispatched)
        for w in range(len(procs)):
            inboxes[w].put(None)
        while len(finished) < len(procs):
            try:
                kind, part, payload = outbox.get(timeout=1.0)
            except queue.Empty:
                check_workers()
                continue
            if kind == "error":
                raise payload
            finished[part] = payload
        for p in procs:
            p.join()
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    used = parts[: len(procs)]
    for part in used:
        counts.add(finished[part])
    _merge_parts(used, str(out))
    return counts


def _merge_parts(parts: list[str], out: str) -> None:
    """One index.json over the parts' shards, in the order given (streaming's merge_index)."""
    from streaming.base.util import merge_index

    # merge_index announces its temporary folder on the root logger (configuring the root logger if it has no
    # handler) and warns that `out` exists (it holds the parts): neither is news to the user.
    quiet, previous = logging.NullHandler(), logging.root.manager.disable
    logging.getLogger().addHandler(quiet)
    logging.disable(logging.WARNING)
    try:
        merge_index([os.path.join(p, "index.json") for p in parts], out)
    finally:
        logging.disable(previous)
        logging.getLogger().removeHandler(quiet)
    for p in parts:  # (the merged index is the dataset's; the parts' own would only confuse a reader)
        os.remove(os.path.join(p, "index.json"))


# --------------------------------------------------------------------------------------------------
# Replacing an existing dataset
# --------------------------------------------------------------------------------------------------


def _check_out_root(root: Path) -> None:
    for folder in (root, *root.parents):
        if folder.exists() or folder.is_symlink():
            if not folder.is_dir():
                what = "--out_root" if folder == root else f"--out_root's parent {str(folder)!r}"
                raise FileExistsError(f"{what} {str(root)!r} is a file, not a folder: give a folder for the "
                                      "dataset (it will hold train/ and val/)." if folder == root else
                                      f"{what} is a file, not a folder: {str(root)!r} cannot be created there.")
            return


def _check_replaceable(out: Path, overwrite: bool) -> None:
    if (out.exists() or out.is_symlink()) and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise FileExistsError(f"Output {str(out)!r} already exists and is not empty; pass --overwrite to replace it.")


def _recover_interrupted_swap(root: Path, split: str) -> None:
    """A converter killed between moving the old split aside and moving the new one in left the old one as
    ``.<split>.old-<pid>-...``: put it back (or remove it when the new one made it into place)."""
    out = root / split
    pattern = re.compile(re.escape(f".{split}.old-") + r"(\d+)-(.+)-[0-9a-f]{8}")
    for name in sorted(os.listdir(root)) if root.is_dir() else []:
        m = pattern.fullmatch(name)
        if not m or m.group(2) != socket.gethostname() or _pid_alive(int(m.group(1))):
            continue
        old = root / name
        if out.exists():
            log.warning("removing %s, the dataset that %s replaced (its converter was killed)", old, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            log.warning("restoring %s from %s (a conversion with --overwrite was killed while replacing it)", out, old)
            os.rename(old, out)


def _swap_into_place(new: Path, out: Path) -> None:
    """Replace `out` by the complete dataset `new`: the old one is moved aside, the new one renamed into place, then
    the old one removed (the only moment without `out` is between two renames; see _recover_interrupted_swap)."""
    old = None
    if out.exists() or out.is_symlink():
        old = out.parent / temporary_name(f".{out.name}.old-")
        os.rename(out, old)
    os.rename(new, out)
    if old is not None:
        if old.is_dir() and not old.is_symlink():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink()


def convert(
    *,
    out_root: str | os.PathLike,
    source: str = "local",
    train_files: str | Sequence[str] | None = None,
    val_files: str | Sequence[str] | None = None,
    hf_dataset: str = "allenai/c4",
    hf_config: str | None = "en",
    mode: str = "truncate",
    tokenize: bool = False,
    max_seq_len: int = 128,
    tokenizer: str | object = "bert-base-uncased",
    limit: int | None = None,
    compression: str | None = "zstd",
    splits: Sequence[str] = SPLITS,
    overwrite: bool = False,
    size_limit: int | str = 1 << 26,
    progress: bool = True,
    workers: int | None = None,
    block_documents: int = BLOCK_DOCUMENTS,
    val_fraction: float = 0.01,
) -> dict[str, ConvertStats]:
    """Write MDS datasets ``<out_root>/train`` and ``<out_root>/val``; returns per-split statistics.

    ``source``: ``"local"`` (``train_files``/``val_files`` globs), ``"hf"`` (``hf_dataset``/``hf_config`` via
    ``datasets.load_dataset(..., streaming=True)``) or ``"builtin"`` (the Python-docs corpus).
    ``tokenizer``: a name/path for :func:`load_tokenizer` or an already loaded tokenizer.
    ``val_fraction``: with local ``train_files`` and no ``val_files``, the share of the train documents held out as
    ``val`` (evenly spaced, deterministic). ``limit``: maximum number of documents read per split.
    ``workers``: processes that tokenize and write (default:
    the usable cores); ``block_documents``: documents per block (see the module docstring for the sample order).
    All splits are written to temporary folders first and moved into place together once all are complete, so an
    error or a kill leaves any previous dataset whole. See the module docstring for modes/columns.
    """
    from mosaicbert.core.tokenizer import load_tokenizer

    if mode not in MODES:
        raise ValueError(f"Unknown mode {mode!r}; choose one of {MODES}.")
    if mode == "pack" and not tokenize:
        raise ValueError(
            "--mode pack cannot store raw text (packed samples straddle documents and must be exactly "
            "max_seq_len tokens); add --tokenize."
        )
    if mode == "documents" and not tokenize:
        raise ValueError("--mode documents stores token ids (whole documents, chunked at max_seq_len); add --tokenize.")
    if max_seq_len < 3:
        raise ValueError(f"max_seq_len must be >= 3 (room for [CLS] and [SEP]), got {max_seq_len}.")
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}.")
    workers = usable_cores() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"--workers must be >= 1, got {workers}.")
    if block_documents < 1:
        raise ValueError(f"block_documents must be >= 1, got {block_documents}.")
    if compression in ("", "none", "None"):
        compression = None
    for s in splits:
        if s not in SPLITS:
            raise ValueError(f"Unknown split {s!r}; expected a subset of {SPLITS}.")

    # Resolve inputs and check the output before any work, so that typos fail fast.
    inputs: dict[str, list[str] | None] = {}
    hold_out = 0  # > 0: val is every hold_out-th document of the train files, and train the others
    if source == "local":
        if val_files is None and train_files is not None:
            if not 0 < val_fraction < 1:
                raise ValueError(f"--val_fraction must be in (0, 1), got {val_fraction}.")
            hold_out = max(2, round(1 / val_fraction))
            val_files = train_files
        given = {"train": train_files, "val": val_files}
        for s in splits:
            if given[s] is None:
                raise ValueError(f"--source local needs --{s}_files (a glob of *.json.gz / *.jsonl / *.txt files).")
            inputs[s] = resolve_files(given[s], what=f"{s} files")
    elif source == "builtin":
        for s in splits:
            inputs[s] = builtin_corpus_files(s)
    elif source == "hf":
        for s in splits:
            inputs[s] = None
    else:
        raise ValueError(f"Unknown source {source!r}; choose 'hf', 'local' or 'builtin'.")
    root = Path(out_root).expanduser()
    _check_out_root(root)
    for s in splits:
        _recover_interrupted_swap(root, s)
        _check_replaceable(root / s, overwrite)

    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
    st = _Settings(tokenizer=tok, mode=mode, tokenize=tokenize, max_seq_len=max_seq_len, compression=compression,
                   size_limit=size_limit)
    info = {"mode": mode, "max_seq_len": max_seq_len, "columns": _writer_columns(tokenize),
            "tokenizer": tokenizer_identity(tok, _tokenizer_name(tokenizer))}
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(e, root) from e
    for s in splits:
        remove_stale_temporaries(root, f".{s}.tmp-")

    # Every split goes to a private temporary folder first; they replace the outputs only when all are complete,
    # so an interrupted or failed conversion never leaves a partial dataset nor removes the previous one.
    stats: dict[str, ConvertStats] = {}
    temporaries: dict[str, Path] = {}
    try:
        for s in splits:
            tmp_out = temporaries[s] = root / temporary_name(f".{s}.tmp-")
            reader = InputProgress(inputs[s]) if inputs[s] is not None else None
            total = limit
            if inputs[s] is not None:
                docs: Iterator[Document] = iter_raw_documents(inputs[s], reader)
                if hold_out:
                    docs = held_out(docs, hold_out, keep=s == "val")
            else:
                ds = _open_hf(hf_dataset, hf_config, s)
                n = _hf_num_documents(ds, s)
                total = n if total is None else min(total, n) if n else total
                docs = (ex["text"] for ex in ds)
            bar = _Progress(s, progress, total, reader if limit is None else None)
            counts = _convert_split(_limited(docs, limit), tmp_out, st, workers, block_documents, bar)
            bar.update(counts.documents, final=True)
            if counts.samples == 0:
                raise ValueError(f"No samples were produced for split {s!r} ({counts.documents} documents read): "
                                 "empty input?")
            (tmp_out / DATASET_INFO).write_text(json.dumps({**info, "split": s, "documents": counts.documents,
                                                            "samples": counts.samples, "tokens": counts.tokens},
                                                           indent=1))
            stats[s] = ConvertStats(split=s, out=str(root / s), documents=counts.documents, samples=counts.samples,
                                    tokens=counts.tokens)
        for s in splits:
            _check_replaceable(root / s, overwrite)  # (re-check: another process may have written it meanwhile)
        for s in splits:
            _swap_into_place(temporaries.pop(s), root / s)
    finally:
        for tmp in temporaries.values():
            shutil.rmtree(tmp, ignore_errors=True)
    return stats


# --------------------------------------------------------------------------------------------------
# The built-in corpus as MDS
# --------------------------------------------------------------------------------------------------


def ensure_builtin_mds(max_seq_len: int = 128, tokenizer: str = BUILTIN_URI) -> str:
    """Materialize the built-in corpus as raw-text MDS (``split`` mode) in the cache; return the folder.

    Shards are stored uncompressed (the corpus is small), so readers never write into the shared cache
    (streaming decompresses zstd shards next to the compressed files when there is no remote).

    The folder has ``train/`` and ``val/`` subfolders. Built once, atomically (build in a temporary
    folder, then rename; a file lock serializes concurrent builders, losers reuse the result).
    """
    import hashlib

    key = hashlib.sha1(f"{tokenizer}|{max_seq_len}".encode()).hexdigest()[:10]
    from mosaicbert.core.builtin_corpus import _corpus_key  # noqa: PLC0415

    final = cache_root() / "builtin" / _corpus_key() / f"mds-split-raw-L{max_seq_len}-{key}"

    def build(tmp: Path) -> None:
        convert(out_root=tmp, source="builtin", mode="split", tokenize=False, max_seq_len=max_seq_len,
                tokenizer=tokenizer, compression=None, progress=False, workers=1)
        (tmp / "convert_args.json").write_text(json.dumps({"source": "builtin", "mode": "split", "tokenize": False,
                                                           "max_seq_len": max_seq_len, "tokenizer": tokenizer}))

    return str(atomic_build(final, build))


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m mosaicbert.pretrain.convert",
        description="Convert a text corpus (C4 from the hub, local C4-format/.txt files, or the built-in corpus) "
        "into MDS shards for MosaicBERT MLM pretraining.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Output:", 1)[1] if __doc__ else None,
    )
    p.add_argument("--source", choices=("hf", "local", "builtin"), default="hf")
    p.add_argument("--out_root", required=True, help="output folder; splits go to <out_root>/train and <out_root>/val")
    p.add_argument("--hf_dataset", default="allenai/c4")
    p.add_argument("--hf_config", default="en")
    p.add_argument("--train_files", help="--source local: glob(s) of train files (comma-separated)")
    p.add_argument("--val_files", help="--source local: glob(s) of validation files (comma-separated); default: hold "
                   "out --val_fraction of the train files' documents")
    p.add_argument("--val_fraction", type=float, default=0.01,
                   help="without --val_files: the share of documents held out as val, evenly spaced (default 0.01)")
    p.add_argument("--splits", default="train,val", help="comma-separated subset of train,val (default both)")
    p.add_argument("--mode", choices=MODES, default="truncate")
    p.add_argument("--tokenize", action=argparse.BooleanOptionalAction, default=False,
                   help="store input_ids (int32, with [CLS]/[SEP]) instead of raw text")
    p.add_argument("--max_seq_len", type=int, default=128)
    p.add_argument("--tokenizer", default="bert-base-uncased",
                   help="hub name, local folder, vocab.txt path or builtin://python-docs")
    p.add_argument("--limit", type=int, default=None, help="documents per split (for quick tests)")
    p.add_argument("--compression", default="zstd", help="MDS shard compression (zstd, none, ...)")
    p.add_argument("--size_limit", default="64mb", help="maximum shard size before compression")
    p.add_argument("--overwrite", action="store_true",
                   help="replace existing output folders (once the new dataset is complete)")
    p.add_argument("--workers", type=int, default=None,
                   help="processes that tokenize and write (default: the usable cores, here %d)" % usable_cores())
    p.add_argument("--no_progress", action="store_true")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.source != "local" and (args.train_files or args.val_files):
        print("warning: --train_files/--val_files are ignored unless --source local", file=sys.stderr)
    try:
        stats = convert(
            out_root=args.out_root, source=args.source, train_files=args.train_files, val_files=args.val_files,
            hf_dataset=args.hf_dataset, hf_config=args.hf_config or None, mode=args.mode, tokenize=args.tokenize,
            max_seq_len=args.max_seq_len, tokenizer=args.tokenizer, limit=args.limit, compression=args.compression,
            splits=[s.strip() for s in args.splits.split(",") if s.strip()], overwrite=args.overwrite,
            size_limit=args.size_limit, progress=not args.no_progress, workers=args.workers,
            val_fraction=args.val_fraction,
        )
    except (OSError, ValueError) as e:  # (FileNotFoundError, FileExistsError, WriteError, ConnectionError, ...)
        print(f"error: {e}", file=sys.stderr)
        return 2
    for st in stats.values():
        print(st.line())
    total = {k: sum(getattr(st, k) for st in stats.values()) for k in ("documents", "samples", "tokens")}
    print(f"total: {total['documents']} documents read, {total['samples']} samples written, {total['tokens']} tokens "
          f"(mode={args.mode}, {'tokenized' if args.tokenize else 'raw text'}, max_seq_len={args.max_seq_len})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
