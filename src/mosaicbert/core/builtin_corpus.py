"""A built-in, download-free pretraining corpus and tokenizer (``builtin://python-docs``).

For the quickstart on a fresh offline machine we need *some* English prose without downloading
anything. Every Python installation ships one: the docstrings of its standard library's source files.
This module

* walks ``sysconfig.get_paths()["stdlib"]`` in sorted order, parses each ``.py`` file with :mod:`ast`
  (modules are never imported, so nothing is executed), skips test directories, ``site-packages`` and
  files that fail to parse, and collects module / class / function docstrings of reasonable length;
* writes them as C4-format ``*.json.gz`` files (``{"text", "timestamp", "url"}`` per line), holding out
  every 50th document for validation;
* trains a small uncased WordPiece tokenizer (vocab 8192, BERT special tokens with ``[PAD]`` = 0) on
  the training documents and saves it as a ``BertTokenizerFast`` folder.

Everything is cached under :func:`cache_root` (``$MOSAICBERT_CACHE`` or ``~/.cache/mosaicbert``) and
built once: each artifact is built in a private temporary directory and moved into place with an atomic
``os.rename``; a file lock keeps concurrent processes (e.g. the ranks of a multi-GPU job) from doing the
same work twice, and a process that loses the race simply reuses the winner's result.
"""

from __future__ import annotations

import ast
import gzip
import inspect
import json
import os
import shutil
import sys
import sysconfig
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = [
    "BUILTIN_PREFIX",
    "BUILTIN_NAME",
    "BUILTIN_URI",
    "cache_root",
    "CacheFolderError",
    "iter_stdlib_docstrings",
    "ensure_builtin_corpus",
    "ensure_builtin_tokenizer",
    "builtin_corpus_files",
    "atomic_build",
]

BUILTIN_PREFIX = "builtin://"
BUILTIN_NAME = "python-docs"
BUILTIN_URI = BUILTIN_PREFIX + BUILTIN_NAME

#: Bump when the extraction rules change, so stale caches are not reused.
CORPUS_VERSION = 1
VOCAB_SIZE = 8192
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
HOLDOUT_EVERY = 50
MIN_CHARS = 200
MIN_WORDS = 30
MAX_CHARS = 20_000

_SKIP_DIRS = {
    "test",
    "tests",
    "idle_test",
    "site-packages",
    "dist-packages",
    "__pycache__",
    "lib2to3",  # mostly test fixtures with odd syntax
    "turtledemo",
}
_TIMESTAMP = "2000-01-01T00:00:00Z"  # fixed, so the files are byte-for-byte reproducible


class CacheFolderError(PermissionError):
    """The cache directory cannot be created or written; the message names it and ``MOSAICBERT_CACHE``."""


def cache_root() -> Path:
    """The cache directory: ``$MOSAICBERT_CACHE`` or ``~/.cache/mosaicbert``, created if needed; a
    :class:`CacheFolderError` when it cannot be created or written (e.g. an unwritable or missing HOME)."""
    root = Path(os.environ.get("MOSAICBERT_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "mosaicbert"))
    try:
        root.mkdir(parents=True, exist_ok=True)
        problem = None if os.access(root, os.W_OK | os.X_OK) else "not writable"
    except OSError as e:
        problem = e.strerror or str(e)
    if problem:
        how = "MOSAICBERT_CACHE" if os.environ.get("MOSAICBERT_CACHE") else "HOME (no MOSAICBERT_CACHE set)"
        raise CacheFolderError(f"the cache folder {root} (from {how}) cannot be used: {problem}; set MOSAICBERT_CACHE "
                               f"to a writable folder, e.g. MOSAICBERT_CACHE=/tmp/mosaicbert-cache")
    return root


def _corpus_key() -> str:
    return f"{BUILTIN_NAME}-v{CORPUS_VERSION}-py{sys.version_info.major}.{sys.version_info.minor}"


def atomic_build(final_dir: str | os.PathLike, build: Callable[[Path], None], *, lock_timeout: float = 1800) -> Path:
    """Build a directory exactly once, safely under concurrency.

    ``build(tmp_dir)`` fills a private temporary directory next to ``final_dir``; the directory is then
    renamed into place atomically. A file lock (``final_dir + ".lock"``) stops concurrent processes from
    building at the same time; if the lock can't be used (e.g. an unusual file system) the atomic rename
    alone still guarantees that readers only ever see a complete directory, and a process whose rename
    loses the race discards its own copy and reuses the winner's.
    """
    final = Path(final_dir)
    if final.is_dir():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)

    lock = None
    try:
        from filelock import FileLock

        lock = FileLock(str(final) + ".lock", timeout=lock_timeout)
        lock.acquire()
    except Exception:  # pragma: no cover - lock unavailable: rely on the atomic rename only
        lock = None
    try:
        if final.is_dir():  # someone else finished while we waited for the lock
            return final
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            tmp.mkdir(parents=True)
            build(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                # Lost the race: another process renamed first. Reuse theirs.
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final
    finally:
        if lock is not None:
            lock.release()


# --------------------------------------------------------------------------------------------------
# Corpus extraction
# --------------------------------------------------------------------------------------------------


def _stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _iter_source_files(root: Path) -> Iterator[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune in place, sorted, for a deterministic walk.
        dirnames[:] = sorted(
            d for d in dirnames if d not in _SKIP_DIRS and not d.startswith(("test_", ".")) and "-" not in d
        )
        for name in sorted(filenames):
            if name.endswith(".py") and not name.startswith("test_"):
                yield Path(dirpath) / name


def _clean(doc: str) -> str | None:
    text = inspect.cleandoc(doc).strip()
    if len(text) < MIN_CHARS or len(text.split()) < MIN_WORDS:
        return None
    if len(text) > MAX_CHARS:
        text = text[:MAX_CHARS]
    # Skip docstrings that are mostly not prose (tables, doctest dumps, code).
    letters = sum(c.isalpha() for c in text)
    if letters < 0.6 * len(text.replace(" ", "").replace("\n", "")):
        return None
    return text


def _docstrings_of(source: str) -> list[str]:
    tree = ast.parse(source)
    out: list[str] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=False)
            if doc:
                cleaned = _clean(doc)
                if cleaned:
                    out.append(cleaned)
        for child in ast.iter_child_nodes(node):  # depth first, source order
            if isinstance(child, (ast.stmt, ast.excepthandler, ast.match_case)):
                visit(child)

    visit(tree)
    return out


def iter_stdlib_docstrings(stdlib_dir: str | os.PathLike | None = None) -> Iterator[tuple[str, str]]:
    """Yield ``(url, text)`` for each docstring in the standard library, in deterministic order.

    ``url`` is ``python-stdlib://<relative/path.py>#<n>``. Files that can't be read or parsed are skipped.
    """
    root = Path(stdlib_dir) if stdlib_dir is not None else _stdlib_dir()
    seen: set[str] = set()
    for path in _iter_source_files(root):
        try:
            source = path.read_text(encoding="utf-8")
            docs = _docstrings_of(source)
        except (SyntaxError, ValueError, UnicodeDecodeError, OSError, RecursionError):
            continue
        rel = path.relative_to(root).as_posix()
        for i, text in enumerate(docs):
            if text in seen:  # duplicated docstrings (overrides, copies) add nothing
                continue
            seen.add(text)
            yield f"python-stdlib://{rel}#{i}", text


def _write_c4_json_gz(path: Path, docs: list[tuple[str, str]]) -> None:
    # mtime=0: reproducible bytes.
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        for url, text in docs:
            line = json.dumps({"text": text, "timestamp": _TIMESTAMP, "url": url}, ensure_ascii=False)
            gz.write(line.encode("utf-8") + b"\n")


def _corpus_dir() -> Path:
    return cache_root() / "builtin" / _corpus_key() / "corpus"


def ensure_builtin_corpus() -> Path:
    """Materialize the built-in corpus (once) and return its folder.

    Layout: ``<folder>/train/python-docs-train.json.gz`` and
    ``<folder>/validation/python-docs-validation.json.gz``, in C4's own line format.
    """

    def build(tmp: Path) -> None:
        docs = list(iter_stdlib_docstrings())
        if len(docs) < 100:
            raise RuntimeError(
                f"The built-in corpus found only {len(docs)} docstrings under {_stdlib_dir()}; "
                "is the Python standard library source installed? Pass your own data instead "
                "(python -m mosaicbert.pretrain.convert --source local ...)."
            )
        train = [d for i, d in enumerate(docs) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
        val = [d for i, d in enumerate(docs) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
        (tmp / "train").mkdir()
        (tmp / "validation").mkdir()
        _write_c4_json_gz(tmp / "train" / f"{BUILTIN_NAME}-train.json.gz", train)
        _write_c4_json_gz(tmp / "validation" / f"{BUILTIN_NAME}-validation.json.gz", val)
        (tmp / "stats.json").write_text(
            json.dumps({"train_docs": len(train), "val_docs": len(val), "stdlib": str(_stdlib_dir())}, indent=1)
        )

    return atomic_build(_corpus_dir(), build)


def builtin_corpus_files(split: str) -> list[str]:
    """The C4-format files of one split (``train`` or ``val``/``validation``) of the built-in corpus."""
    folder = ensure_builtin_corpus()
    sub = {"train": "train", "val": "validation", "validation": "validation"}.get(split)
    if sub is None:
        raise ValueError(f"Unknown split {split!r} for {BUILTIN_URI}; expected 'train' or 'val'.")
    return sorted(str(p) for p in (folder / sub).glob("*.json.gz"))


def _iter_corpus_texts(files: list[str]) -> Iterator[str]:
    for f in files:
        with gzip.open(f, "rt", encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    yield json.loads(line)["text"]


def ensure_builtin_tokenizer() -> Path:
    """Train (once) the ``builtin://python-docs`` WordPiece tokenizer and return its folder.

    Uncased BERT-style WordPiece, vocab size 8192, special tokens ``[PAD]``=0, ``[UNK]``=1, ``[CLS]``=2,
    ``[SEP]``=3, ``[MASK]``=4. The folder loads with ``BertTokenizerFast.from_pretrained`` /
    ``AutoTokenizer.from_pretrained`` and also contains a plain ``vocab.txt``.
    """
    corpus_files = builtin_corpus_files("train")
    final = cache_root() / "builtin" / _corpus_key() / f"tokenizer-wordpiece-{VOCAB_SIZE}"

    def build(tmp: Path) -> None:
        from tokenizers import BertWordPieceTokenizer

        wp = BertWordPieceTokenizer(lowercase=True, clean_text=True, handle_chinese_chars=True, strip_accents=None)
        wp.train_from_iterator(
            _iter_corpus_texts(corpus_files),
            vocab_size=VOCAB_SIZE,
            min_frequency=2,
            special_tokens=SPECIAL_TOKENS,
            show_progress=False,
            wordpieces_prefix="##",
        )
        wp.save_model(str(tmp))  # vocab.txt
        from mosaicbert.core.wordpiece import wordpiece_to_fast

        tok = wordpiece_to_fast(wp, lowercase=True)
        if len(tok) <= 100 or tok.pad_token_id != 0:
            raise RuntimeError(f"Training the built-in tokenizer failed: vocab size {len(tok)}, "
                               f"pad id {tok.pad_token_id}")
        tok.save_pretrained(str(tmp))

    return atomic_build(final, build)


def _main() -> None:  # pragma: no cover - manual inspection helper
    import time

    t0 = time.time()
    corpus = ensure_builtin_corpus()
    t1 = time.time()
    tok = ensure_builtin_tokenizer()
    t2 = time.time()
    print(f"corpus: {corpus} ({t1 - t0:.1f}s); tokenizer: {tok} ({t2 - t1:.1f}s)")
    print((corpus / "stats.json").read_text())


if __name__ == "__main__":  # pragma: no cover
    _main()
