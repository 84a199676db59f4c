"""Tokenizer loading: local folder, vocab.txt, offline hub name, built-in tokenizer, broken vocab."""

from __future__ import annotations

import pytest

from mosaicbert.core.tokenizer import load_tokenizer


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
    special = [tok.pad_token_id, tok.unk_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id]
    assert special == [0, 1, 2, 3, 4]
    ids = tok("Return the value of the attribute")["input_ids"]
    assert ids[0] == 2 and ids[-1] == 3 and tok.unk_token_id not in ids
    assert tok("RETURN")["input_ids"] == tok("return")["input_ids"]  # uncased
    # Second load hits the cache and gives the same tokenizer.
    ids = tok("Return the value")["input_ids"]
    assert load_tokenizer("builtin://python-docs")("Return the value")["input_ids"] == ids
    with pytest.raises(FileNotFoundError, match="builtin://"):
        load_tokenizer("builtin://nonexistent")


def test_exported_model_folder_loads_without_remote_code_prompt(tmp_path, monkeypatch):
    """An exported MosaicBERT folder (config.json with auto_map, the model's source files, tokenizer files): only the
    tokenizer files are read. AutoTokenizer would read config.json too and ask whether to run the remote code."""
    import builtins

    from mosaicbert.model import MosaicBertConfig, MosaicBertForMaskedLM
    from mosaicbert.model.modeling_mosaic_bert import auto_map

    vocab = tmp_path / "vocab.txt"
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"word{i}" for i in range(200)]
    vocab.write_text("\n".join(words) + "\n")
    source = load_tokenizer(str(vocab))
    model = MosaicBertForMaskedLM(MosaicBertConfig(vocab_size=256, hidden_size=32, num_hidden_layers=1,
                                                   num_attention_heads=2, intermediate_size=64))
    model.config.auto_map = auto_map()  # as mosaicbert.export writes it
    export = tmp_path / "export"
    model.save_pretrained(export)
    source.save_pretrained(export)
    assert "auto_map" in (export / "config.json").read_text()

    prompts = []  # transformers asks with input() and swallows the failure of a refused or broken prompt

    def no_prompt(message=""):
        prompts.append(message)
        raise EOFError

    monkeypatch.setattr(builtins, "input", no_prompt)
    tok = load_tokenizer(str(export))
    assert not prompts, prompts
    assert len(tok) == len(source) == 205
    text = "WORD7 word12 word199"
    assert tok(text)["input_ids"] == source(text)["input_ids"] == [2, 12, 17, 204, 3]
    assert (tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id) == (0, 2, 3, 4)


def test_exported_folder_with_broken_tokenizer_is_rejected(tmp_path):
    """The vocabulary check also applies to a folder's tokenizer files (a 5-token tokenizer.json)."""
    from tokenizers import BertWordPieceTokenizer
    from transformers import PreTrainedTokenizerFast

    from mosaicbert.core.wordpiece import wordpiece_to_fast

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]) + "\n")
    tiny = wordpiece_to_fast(BertWordPieceTokenizer(str(vocab), lowercase=True), True)
    assert isinstance(tiny, PreTrainedTokenizerFast)
    folder = tmp_path / "export"
    tiny.save_pretrained(folder)
    (folder / "vocab.txt").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="only 5 tokens"):
        load_tokenizer(str(folder))
