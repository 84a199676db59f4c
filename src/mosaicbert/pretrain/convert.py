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
tokenizer's name and vocabulary hash, checked against the run's tokenizer for pre-tokenized shards).

Modes (``--mode``):

* ``truncate``: one sample per document, truncated to ``max_seq_len`` tokens including [CLS]/[SEP]
  (the published MosaicBERT C4 recipe; the rest of each document is discarded).
* ``split``: each document is cut into consecutive chunks of ``max_seq_len - 2`` tokens; each chunk
  becomes a sample ``[CLS] chunk [SEP]`` (nothing is discarded; the last chunk is shorter).
* ``pack``: documents are concatenated, separated by [SEP], and cut into full-length samples
  ``[CLS] <max_seq_len - 2 tokens> [SEP]`` (no padding at all; samples may straddle documents; only the
  final sample of a split can be shorter). Needs ``--tokenize``.
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
a directory, or several of those separated by commas.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import sys
import uuid
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mosaicbert.core.builtin_corpus import BUILTIN_URI, atomic_build, builtin_corpus_files, cache_root

__all__ = [
    "DATASET_INFO",
    "HASHES",
    "MODES",
    "SPLITS",
    "ConvertStats",
    "convert",
    "ensure_builtin_mds",
    "iter_documents",
    "resolve_files",
    "main",
    "remove_stale_temporaries",
    "temporary_name",
    "tokenizer_identity",
]

log = logging.getLogger("mosaicbert")

MODES = ("truncate", "split", "pack", "documents")
SPLITS = ("train", "val")
_HF_SPLIT = {"train": "train", "val": "validation"}
_JSON_SUFFIXES = (".json.gz", ".jsonl.gz", ".jsonl", ".json")
_TXT_SUFFIXES = (".txt", ".txt.gz")
_BATCH_DOCS = 256
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
        return f"{self.split}: {self.documents} documents read, {self.samples} samples written, {self.tokens} tokens -> {self.out}"


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


def _text_lines(path: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of a UTF-8 text file, gzip-compressed if its name ends in .gz; errors name the file."""
    lineno = 0
    try:
        with (gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")) as fh:
            for lineno, raw in enumerate(fh, start=1):
                try:
                    yield lineno, raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise ValueError(
                        f"{path}:{lineno}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {e.start + 1}); "
                        "convert the file to UTF-8 (e.g. iconv -f latin1 -t utf-8) or leave it out."
                    ) from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        where = f"{path}:{lineno + 1}" if lineno else path
        what = "not a gzip file" if isinstance(e, gzip.BadGzipFile) and lineno == 0 else "a damaged or truncated gzip file"
        raise ValueError(
            f"{where}: {what} ({type(e).__name__}: {e}); its name ends in .gz. Re-download or re-compress it, or "
            "rename it without .gz if it is plain text."
        ) from None


def _iter_json_lines(path: str) -> Iterator[str]:
    for lineno, line in _text_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{lineno}: malformed JSON line ({e.msg} at column {e.colno}).") from e
        if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
            raise ValueError(f"{path}:{lineno}: expected a JSON object with a string field 'text'.")
        yield obj["text"]


def _iter_txt_blocks(path: str) -> Iterator[str]:
    block: list[str] = []
    for _, line in _text_lines(path):
        if line.strip():
            block.append(line.rstrip("\r\n"))
        elif block:
            yield "\n".join(block)
            block = []
    if block:
        yield "\n".join(block)


def iter_documents(files: Iterable[str]) -> Iterator[str]:
    """Yield documents (strings) from C4-format JSON-lines files and/or blank-line-separated .txt files."""
    for path in files:
        if path.endswith(_TXT_SUFFIXES):
            yield from _iter_txt_blocks(path)
        elif path.endswith(_JSON_SUFFIXES):
            yield from _iter_json_lines(path)
        else:
            raise ValueError(
                f"{path}: unsupported input file type; expected {', '.join(_JSON_SUFFIXES + _TXT_SUFFIXES)}."
            )


def _iter_hf(dataset: str, config: str | None, split: str) -> Iterator[str]:
    try:
        from datasets import load_dataset
    except ImportError as e:
        raise ImportError("--source hf needs the `datasets` package: pip install datasets") from e
    try:
        ds = load_dataset(dataset, config, split=_HF_SPLIT[split], streaming=True)
    except Exception as e:
        raise ConnectionError(
            f"Could not open {dataset!r} (config {config!r}, split {_HF_SPLIT[split]!r}) on the Hugging Face Hub: {e}. "
            "Offline? Download C4-format files and use --source local --train_files ... --val_files ..."
        ) from e
    for ex in ds:
        yield ex["text"]


def _limited(it: Iterator[str], limit: int | None) -> Iterator[str]:
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


def _samples_tokenized(docs: Iterable[str], tokenizer, mode: str, max_seq_len: int, counter: ConvertStats) -> Iterator[np.ndarray]:
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    body = max_seq_len - 2
    carry: list[int] = []  # pack mode: tokens not yet emitted
    for batch in _batched(docs, _BATCH_DOCS):
        counter.documents += len(batch)
        if mode == "truncate":
            enc = tokenizer(batch, add_special_tokens=True, truncation=True, max_length=max_seq_len,
                            return_attention_mask=False, return_token_type_ids=False, verbose=False)
            for ids in enc["input_ids"]:
                if len(ids) > 2:  # skip empty documents
                    yield np.asarray(ids, dtype=np.int32)
            continue
        enc = tokenizer(batch, add_special_tokens=False, return_attention_mask=False, return_token_type_ids=False, verbose=False)
        for ids in enc["input_ids"]:
            if not ids:
                continue
            if mode == "split":
                for s in range(0, len(ids), body):
                    yield np.asarray([cls_id, *ids[s : s + body], sep_id], dtype=np.int32)
            elif mode == "documents":
                for chunk in _even_chunks(ids, body):
                    yield np.asarray([cls_id, *chunk, sep_id], dtype=np.int32)
            else:  # pack
                carry.extend(ids)
                carry.append(sep_id)
                while len(carry) >= body:
                    chunk, carry = carry[:body], carry[body:]
                    yield np.asarray([cls_id, *chunk, sep_id], dtype=np.int32)
    if mode == "pack":
        while carry and carry[-1] == sep_id:  # the final document's separator is redundant
            carry.pop()
        if carry:
            yield np.asarray([cls_id, *carry, sep_id], dtype=np.int32)


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


def _samples_raw(docs: Iterable[str], tokenizer, mode: str, max_seq_len: int, counter: ConvertStats) -> Iterator[tuple[str, int]]:
    """Yield ``(text_span, n_tokens_with_specials)``; spans are cut at word boundaries (offset mapping).

    Cutting between words (never inside one) guarantees that a stored span re-tokenizes to exactly the
    tokens it was cut from (WordPiece pieces a word independently of its neighbours): in ``split`` mode
    each span has at most ``max_seq_len - 2`` tokens and the spans of a document concatenate to its
    tokens; in ``truncate`` mode the span ends with the word containing the last kept token, so the
    load-time truncation to ``max_seq_len`` reproduces the first ``max_seq_len - 2`` tokens exactly.
    """
    body = max_seq_len - 2
    for batch in _batched(docs, _BATCH_DOCS):
        counter.documents += len(batch)
        enc = tokenizer(batch, add_special_tokens=False, return_offsets_mapping=True,
                        return_attention_mask=False, return_token_type_ids=False, verbose=False)
        for b, (doc, ids, offsets) in enumerate(zip(batch, enc["input_ids"], enc["offset_mapping"])):
            n = len(ids)
            if n == 0:
                continue
            word_ids = enc.word_ids(b)
            if mode == "truncate":
                e = min(body, n)
                while e < n and word_ids[e] is not None and word_ids[e] == word_ids[e - 1]:
                    e += 1  # finish the word that contains the last kept token
                text = doc[: offsets[e - 1][1]].strip()
                if text:
                    yield text, min(e, body) + 2
                continue
            s = 0
            while s < n:
                e = _word_boundary_end(word_ids, s, body, n)
                text = doc[offsets[s][0] : offsets[e - 1][1]].strip()
                if text:
                    yield text, (e - s) + 2
                s = e


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


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise FileExistsError(f"Output {str(out)!r} already exists and is not empty; pass --overwrite to replace it.")
        if out.is_dir():
            shutil.rmtree(out)
        else:
            out.unlink()


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
) -> dict[str, ConvertStats]:
    """Write MDS datasets ``<out_root>/train`` and ``<out_root>/val``; returns per-split statistics.

    ``source``: ``"local"`` (``train_files``/``val_files`` globs), ``"hf"`` (``hf_dataset``/``hf_config`` via
    ``datasets.load_dataset(..., streaming=True)``) or ``"builtin"`` (the Python-docs corpus).
    ``tokenizer``: a name/path for :func:`load_tokenizer` or an already loaded tokenizer.
    ``limit``: maximum number of documents read per split. See the module docstring for modes/columns.
    """
    from streaming import MDSWriter
    from tqdm.auto import tqdm

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
    if compression in ("", "none", "None"):
        compression = None
    for s in splits:
        if s not in SPLITS:
            raise ValueError(f"Unknown split {s!r}; expected a subset of {SPLITS}.")

    # Resolve inputs before touching the output, so that typos fail fast.
    inputs: dict[str, list[str] | None] = {}
    if source == "local":
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

    tok = load_tokenizer(tokenizer) if isinstance(tokenizer, (str, os.PathLike)) else tokenizer
    info = {"mode": mode, "max_seq_len": max_seq_len, "columns": _writer_columns(tokenize),
            "tokenizer": tokenizer_identity(tok, _tokenizer_name(tokenizer))}
    root = Path(out_root)
    for s in splits:
        _prepare_out(root / s, overwrite)
        remove_stale_temporaries(root, f".{s}.tmp-")

    stats: dict[str, ConvertStats] = {}
    for s in splits:
        out = root / s
        st = ConvertStats(split=s, out=str(out))
        docs = iter_documents(inputs[s]) if inputs[s] is not None else _iter_hf(hf_dataset, hf_config, s)
        docs = _limited(docs, limit)
        bar = tqdm(desc=f"{s} samples", unit=" samples", disable=not progress, file=sys.stderr)
        # Write into a private temporary folder and rename it into place only on success, so that an
        # interrupted or failed conversion never leaves a valid-looking (index.json) partial dataset.
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.parent / temporary_name(f".{out.name}.tmp-")
        try:
            with MDSWriter(out=str(tmp_out), columns=_writer_columns(tokenize), compression=compression,
                           hashes=HASHES, size_limit=size_limit) as w:
                if tokenize:
                    for ids in _samples_tokenized(docs, tok, mode, max_seq_len, st):
                        w.write({"input_ids": ids})
                        st.samples += 1
                        st.tokens += len(ids)
                        bar.update(1)
                else:
                    for text, ntok in _samples_raw(docs, tok, mode, max_seq_len, st):
                        w.write({"text": text})
                        st.samples += 1
                        st.tokens += ntok
                        bar.update(1)
            bar.close()
            if st.samples == 0:
                raise ValueError(f"No samples were produced for split {s!r} ({st.documents} documents read): empty input?")
            (tmp_out / DATASET_INFO).write_text(json.dumps({**info, "split": s, "documents": st.documents,
                                                            "samples": st.samples, "tokens": st.tokens}, indent=1))
            _prepare_out(out, overwrite)  # (re-check: another process may have written it meanwhile)
            os.rename(tmp_out, out)
        finally:
            bar.close()
            shutil.rmtree(tmp_out, ignore_errors=True)
        stats[s] = st
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
                tokenizer=tokenizer, compression=None, progress=False)
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
    p.add_argument("--val_files", help="--source local: glob(s) of validation files (comma-separated)")
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
    p.add_argument("--overwrite", action="store_true", help="replace existing non-empty output folders")
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
            size_limit=args.size_limit, progress=not args.no_progress,
        )
    except (FileNotFoundError, FileExistsError, ValueError, ConnectionError) as e:
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
