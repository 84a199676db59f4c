"""Tokenizer loading that works offline and refuses silently broken vocabularies.

``load_tokenizer(name_or_path)`` accepts

* a Hugging Face Hub name (``bert-base-uncased``), loaded with ``AutoTokenizer.from_pretrained``
  (from the local HF cache only, at once, when the Hub cannot be reached: :mod:`mosaicbert.core.hub`);
* a local folder (``tokenizer.json`` and/or ``vocab.txt`` + ``tokenizer_config.json``), also an exported model
  folder (its tokenizer files only: the model's remote code is never consulted);
* a path to a WordPiece ``vocab.txt`` file;
* ``builtin://python-docs``: a small uncased WordPiece trained on the Python standard library's
  docstrings (see :mod:`mosaicbert.core.builtin_corpus`), needs no download;
* a Composer checkpoint file written by main.py: the tokenizer files stored inside it.

``checkpoint_tokenizer(source)`` is the tokenizer a pretrained checkpoint carries (None when it has none), so
that finetuning uses the ids the model was trained on.

Trap guarded against here: with transformers 5.x ``BertTokenizerFast(vocab_file=...)`` silently ignores
the file and builds a 5-token vocabulary (everything becomes ``[UNK]``, MLM loss collapses to ~0). We
never use that constructor, and every loaded tokenizer's vocabulary size is checked (> 100).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from transformers import PreTrainedTokenizerFast

from mosaicbert.core.builtin_corpus import BUILTIN_NAME, BUILTIN_PREFIX, ensure_builtin_tokenizer
from mosaicbert.core.hub import hub_local_only, hub_unreachable
from mosaicbert.core.wordpiece import wordpiece_to_fast

__all__ = ["load_tokenizer", "checkpoint_tokenizer", "write_tokenizer_files", "same_vocabulary", "MIN_VOCAB_SIZE"]

MIN_VOCAB_SIZE = 100
_REQUIRED_SPECIALS = ("pad_token", "cls_token", "sep_token", "mask_token")


def _looks_like_path(name: str) -> bool:
    return (
        os.path.isabs(name)
        or name.startswith(("./", "../", "~", ".\\", "..\\"))
        or name in (".", "..")
        or os.path.exists(os.path.expanduser(name))
        or name.endswith((".txt", ".json"))
    )


def _check(tokenizer: PreTrainedTokenizerFast, source: str) -> PreTrainedTokenizerFast:
    size = len(tokenizer)
    if size <= MIN_VOCAB_SIZE:
        raise ValueError(
            f"Tokenizer loaded from {source!r} has only {size} tokens (expected > {MIN_VOCAB_SIZE}); the vocabulary "
            "was not read (with transformers 5.x, BertTokenizerFast(vocab_file=...) silently builds a 5-token vocab). "
            "Pass a tokenizer folder, a vocab.txt path, or a hub name."
        )
    missing = [attr for attr in _REQUIRED_SPECIALS if getattr(tokenizer, attr, None) is None]
    if missing:
        raise ValueError(
            f"Tokenizer {source!r} lacks the special tokens {missing} needed for BERT MLM pretraining "
            "([PAD], [CLS], [SEP], [MASK])."
        )
    if not getattr(tokenizer, "name_or_path", ""):  # (built from a vocab.txt): name it for error messages
        tokenizer.name_or_path = source
    return tokenizer


def _from_vocab_txt(vocab_file: Path) -> PreTrainedTokenizerFast:
    from tokenizers import BertWordPieceTokenizer

    with open(vocab_file, encoding="utf-8") as fh:
        tokens = [line.rstrip("\n") for line in fh]
    # A cased vocab (bert-base-cased) contains capitalized whole words; an uncased one doesn't.
    lowercase = not any("A" <= t[:1] <= "Z" for t in tokens)
    wp = BertWordPieceTokenizer(str(vocab_file), lowercase=lowercase, strip_accents=None if lowercase else False)
    return wordpiece_to_fast(wp, lowercase)


def _from_tokenizer_files(folder: Path) -> PreTrainedTokenizerFast:
    """The tokenizer files of a local folder, read by the class tokenizer_config.json names (when transformers has
    it as a fast tokenizer) or by PreTrainedTokenizerFast.

    Not AutoTokenizer: in a model folder it also reads config.json, and an exported MosaicBERT's `auto_map` (the
    model's remote code) makes it ask interactively whether to run that code, which fails in scripts.
    """
    import transformers

    config_file = folder / "tokenizer_config.json"
    class_name = None
    if config_file.is_file():
        with open(config_file, encoding="utf-8") as fh:
            try:
                class_name = json.load(fh).get("tokenizer_class")
            except json.JSONDecodeError as e:
                raise ValueError(f"{config_file} is not valid JSON: {e}") from e
    cls = getattr(transformers, str(class_name), None) if class_name else None
    if not (isinstance(cls, type) and issubclass(cls, PreTrainedTokenizerFast)):
        cls = PreTrainedTokenizerFast
    return cls.from_pretrained(str(folder))


def write_tokenizer_files(files: dict, folder: str) -> None:
    """Write the tokenizer files stored in a Composer checkpoint (its Hugging Face metadata) into `folder`."""
    for name, entry in files.items():
        content = entry["content"]
        path = os.path.join(folder, name)
        if isinstance(content, bytes):  # sentencepiece .model
            with open(path, "wb") as f:
                f.write(content)
        elif isinstance(content, list):  # .txt files are stored as their lines
            with open(path, "w", encoding="utf-8") as f:
                f.write("\n".join(content))
        elif isinstance(content, str):
            with open(path, "w", encoding="utf-8") as f:
                f.write(content)
        else:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(content, f, indent=2)


def _from_composer_checkpoint(path: Path) -> PreTrainedTokenizerFast:
    import tempfile

    from mosaicbert.core.checkpoint import read_composer_checkpoint

    meta = (read_composer_checkpoint(str(path)).get("integrations") or {}).get("huggingface") or {}
    files = meta.get("tokenizer") or {}
    if not files:
        raise FileNotFoundError(f"checkpoint {str(path)!r} holds no tokenizer files: name the tokenizer it was "
                                "trained with")
    with tempfile.TemporaryDirectory() as folder:
        write_tokenizer_files(files, folder)
        return _from_tokenizer_files(Path(folder))


def _is_checkpoint_file(path: Path) -> bool:
    import zipfile

    return path.suffix in (".pt", ".pth", ".ckpt") or zipfile.is_zipfile(path)


def checkpoint_tokenizer(source: str | None) -> PreTrainedTokenizerFast | None:
    """The tokenizer stored with a checkpoint (a Composer checkpoint file or a Hugging Face folder), else None."""
    if not source:
        return None
    path = Path(str(source)).expanduser()
    if path.is_file() and _is_checkpoint_file(path):
        try:
            return _check(_from_composer_checkpoint(path), str(source))
        except FileNotFoundError:
            return None
    if path.is_dir():
        return load_tokenizer(str(path)) if any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt")) \
            else None
    if not _looks_like_path(str(source)):  # a hub model id: its tokenizer, when cached or reachable
        try:
            return load_tokenizer(str(source))
        except (FileNotFoundError, ValueError):
            return None
    return None


def same_vocabulary(a: PreTrainedTokenizerFast, b: PreTrainedTokenizerFast) -> bool:
    """The same token -> id mapping (what the model's embeddings were trained on)."""
    return a.get_vocab() == b.get_vocab()


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerFast:
    """Load a fast (Rust) tokenizer from a hub name, a folder, a ``vocab.txt`` path or ``builtin://python-docs``.

    Raises:
        FileNotFoundError: a local path that does not exist, an unknown ``builtin://`` name, or a hub name
            that is neither cached locally nor reachable (offline). The message names the tokenizer and
            says what to pass instead.
        ValueError: the loaded tokenizer's vocabulary is implausibly small (<= 100 tokens) or it lacks
            the BERT special tokens.
    """
    from transformers import AutoTokenizer, BertTokenizerFast

    name = str(name_or_path)
    if name.startswith(BUILTIN_PREFIX):
        builtin = name[len(BUILTIN_PREFIX) :]
        if builtin != BUILTIN_NAME:
            raise FileNotFoundError(f"Unknown built-in tokenizer {name!r}; "
                                    f"the only one is {BUILTIN_PREFIX}{BUILTIN_NAME}.")
        folder = ensure_builtin_tokenizer()
        return _check(BertTokenizerFast.from_pretrained(str(folder)), name)

    if _looks_like_path(name):
        path = Path(name).expanduser()
        if not path.exists():
            raise FileNotFoundError(
                f"Tokenizer path {name!r} does not exist. Pass a tokenizer folder (with tokenizer.json or vocab.txt), "
                f"a WordPiece vocab.txt file, a Hugging Face Hub name, or {BUILTIN_PREFIX}{BUILTIN_NAME}."
            )
        if path.is_file():
            if _is_checkpoint_file(path):
                return _check(_from_composer_checkpoint(path), name)
            if path.name == "tokenizer.json":
                return _check(PreTrainedTokenizerFast(tokenizer_file=str(path)), name)
            return _check(_from_vocab_txt(path), name)
        if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
            raise FileNotFoundError(
                f"Tokenizer folder {name!r} contains neither tokenizer.json nor vocab.txt. Pass a tokenizer folder, "
                "a vocab.txt path, or a hub name."
            )
        has_config = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
        tok = None
        if has_config:
            try:
                tok = _from_tokenizer_files(path)
            except (OSError, ValueError, KeyError):
                if not (path / "vocab.txt").is_file():
                    raise
        if (tok is None or not isinstance(tok, PreTrainedTokenizerFast) or len(tok) <= MIN_VOCAB_SIZE) and (
            path / "vocab.txt"
        ).is_file():
            # A bare vocab.txt folder (e.g. bert-base-uncased's vocab.txt alone): BertTokenizerFast.from_pretrained
            # reads it correctly (uncased by default); fall back to building from the file if that fails.
            try:
                tok = BertTokenizerFast.from_pretrained(str(path))
            except (OSError, ValueError, KeyError):
                tok = None
            if tok is None or len(tok) <= MIN_VOCAB_SIZE:
                tok = _from_vocab_txt(path / "vocab.txt")
        if not isinstance(tok, PreTrainedTokenizerFast):
            raise ValueError(f"Tokenizer {name!r} has no fast (Rust) implementation; "
                             "offsets are needed for conversion.")
        return _check(tok, name)

    # Hub name.
    local_only = hub_local_only(name)
    try:
        tok = AutoTokenizer.from_pretrained(name, use_fast=True, local_files_only=local_only)
    except Exception as e:  # OSError offline, huggingface_hub errors, HTTP errors ...
        why = f"{hub_unreachable()}, and not in the local HF cache" if local_only else "offline or not cached"
        raise FileNotFoundError(
            f"Could not load tokenizer {name!r} from the Hugging Face Hub or the local HF cache "
            f"({why}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            f"Pass a local tokenizer folder or a path to a WordPiece vocab.txt instead (main.py / glue.py: "
            f"tokenizer=path/to/vocab-folder; the converter: --tokenizer ...), or use "
            f"{BUILTIN_PREFIX}{BUILTIN_NAME} for the built-in offline tokenizer."
        ) from e
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise ValueError(f"Tokenizer {name!r} has no fast (Rust) implementation; "
                             "offsets are needed for conversion.")
    return _check(tok, name)
