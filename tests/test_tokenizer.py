"""Tokenizer loading: local folder, vocab.txt, offline hub name, built-in tokenizer, broken vocab."""

from __future__ import annotations

import pytest

from mosaicbert.data.tokenizer import load_tokenizer


def test_local_folder(bert_vocab_dir):
    tok = load_tokenizer(str(bert_vocab_dir))
    assert len(tok) == 30522
    assert tok("hello world")["input_ids"] == [101, 7592, 2088, 102]
    assert tok("Hello World")["input_ids"] == [101, 7592, 2088, 102]  # uncased
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 101, 102, 103)


def test_vocab_txt_path(bert_vocab_dir):
    tok = load_tokenizer(str(bert_vocab_dir / "vocab.txt"))
    assert len(tok) == 30522
    assert tok("Hello world")["input_ids"] == [101, 7592, 2088, 102]
    assert tok.mask_token_id == 103


def test_hub_name_offline_gives_clear_error(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    # A name that is certainly not in any local HF cache.
    name = "mosaicbert-tests/no-such-tokenizer-xyz"
    with pytest.raises(OSError) as info:
        load_tokenizer(name)
    msg = str(info.value)
    assert name in msg
    assert "vocab.txt" in msg and "local" in msg


def test_missing_local_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer(str(missing))


def test_tiny_vocab_is_rejected(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]) + "\n")
    with pytest.raises(ValueError, match=str(vocab)):
        load_tokenizer(str(vocab))


def test_builtin_tokenizer(mosaicbert_cache):
    tok = load_tokenizer("builtin://python-docs")
    assert len(tok) == 8192
    assert [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id] == [0, 1, 2, 3, 4]
    ids = tok("Return the value of the attribute")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3 and tok.unk_token_id not in ids
    assert tok("RETURN")["input_ids"] == tok("return")["input_ids"]  # uncased
    # Second load hits the cache and gives the same tokenizer.
    assert load_tokenizer("builtin://python-docs")("Return the value")["input_ids"] == tok("Return the value")["input_ids"]
    with pytest.raises(FileNotFoundError, match="builtin://"):
        load_tokenizer("builtin://nonexistent")
