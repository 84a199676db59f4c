"""Faults in weight files and in export: a checkpoint with flipped bytes inside a tensor is refused naming the file and
the tensor (not loaded as garbage); missing, truncated, non-Composer checkpoints and exported folders are one
`error:` line with exit status 2; export never overwrites a user's folder unless told to, and then swaps atomically."""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from transformers import BertConfig, BertForMaskedLM

from mosaicbert.core.checkpoint import (
    CheckpointError,
    CheckpointNotFoundError,
    load_weights,
    read_composer_checkpoint,
    verify_checkpoint,
)
from mosaicbert.export import main as export_main

VOCAB, HIDDEN = 120, 32  # the word-embedding storage: 120 * 32 float32 = 15360 bytes, unlike any other tensor here


def tiny_bert(seed: int = 0) -> BertForMaskedLM:
    torch.manual_seed(seed)
    return BertForMaskedLM(BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1,
                                      num_attention_heads=2, intermediate_size=37, max_position_embeddings=64))


def write_checkpoint(path: Path, model: BertForMaskedLM) -> Path:
    """What main.py writes: Composer's state, weights under `model.`, the HF config as integration metadata."""
    torch.save({"state": {"model": {f"model.{k}": v for k, v in model.state_dict().items()},
                          "integrations": {"huggingface": {"model": {"config": {"content": model.config.to_dict()}}}}},
                "rng": []}, path)
    return path


def flip_bytes_in_tensor(path: Path, storage_bytes: int, count: int = 64, skip: int = 1000) -> None:
    """XOR `count` bytes inside the archive member holding a storage of `storage_bytes` bytes (the file stays a
    well-formed zip: only the tensor's bytes change)."""
    with zipfile.ZipFile(path) as zf:
        (info,) = [i for i in zf.infolist() if i.file_size == storage_bytes]
    with open(path, "r+b") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = struct.unpack("<HH", f.read(4))
        start = info.header_offset + 30 + name_len + extra_len + skip
        f.seek(start)
        data = f.read(count)
        f.seek(start)
        f.write(bytes(b ^ 0xA5 for b in data))


@pytest.fixture
def damaged(tmp_path) -> Path:
    path = write_checkpoint(tmp_path / "ep0-ba10-rank0.pt", tiny_bert())
    flip_bytes_in_tensor(path, VOCAB * HIDDEN * 4)
    return path


def test_damaged_tensor_is_refused_naming_file_and_tensor(damaged):
    # what torch.load alone does: loads the changed bytes without a word
    loaded = torch.load(damaged, weights_only=False)["state"]["model"]["model.bert.embeddings.word_embeddings.weight"]
    assert not torch.equal(loaded, tiny_bert().state_dict()["bert.embeddings.word_embeddings.weight"])
    pattern = rf"checkpoint {damaged} is damaged: tensor .*model.bert.embeddings.word_embeddings.weight.* CRC-32"
    with pytest.raises(CheckpointError, match=pattern):
        verify_checkpoint(str(damaged))
    with pytest.raises(CheckpointError, match=pattern):
        read_composer_checkpoint(str(damaged))
    with pytest.raises(CheckpointError, match=pattern):
        load_weights(tiny_bert(1), str(damaged))


def test_damaged_pytorch_model_bin_in_a_folder_is_refused(tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    torch.save(tiny_bert().state_dict(), folder / "pytorch_model.bin")
    flip_bytes_in_tensor(folder / "pytorch_model.bin", VOCAB * HIDDEN * 4)
    with pytest.raises(CheckpointError, match=rf"{folder}/pytorch_model.bin is damaged: tensor "
                                              r"bert.embeddings.word_embeddings.weight"):
        load_weights(tiny_bert(1), str(folder))


def test_intact_checkpoint_verifies_and_loads_exactly(tmp_path):
    src = tiny_bert()
    path = write_checkpoint(tmp_path / "ok.pt", src)
    verify_checkpoint(str(path))
    dst = tiny_bert(1)
    assert load_weights(dst, str(path)).complete
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def test_missing_truncated_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match=r"checkpoint not found: .*nope.pt"):
        read_composer_checkpoint(str(tmp_path / "nope.pt"))
    path = write_checkpoint(tmp_path / "full.pt", tiny_bert())
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut.pt cannot be read .*truncated or damaged"):
        read_composer_checkpoint(str(tmp_path / "cut.pt"))
    torch.save({"weights": torch.ones(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match=r"other.pt is not a Composer checkpoint"):
        read_composer_checkpoint(str(tmp_path / "other.pt"))
    with pytest.raises(CheckpointError, match=r"is a folder, not a Composer checkpoint file"):
        read_composer_checkpoint(str(tmp_path))


# ---------------------------------------------------------------------------------------------------------------
# python -m mosaicbert.export
# ---------------------------------------------------------------------------------------------------------------


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def tokenizer_metadata(folder: Path) -> dict:
    """The tokenizer files as Composer stores them in a checkpoint: JSON files as objects, text files as lines."""
    from transformers import AutoTokenizer

    from mosaicbert.core.tokenizer import load_tokenizer

    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] +
                                                [f"w{i}" for i in range(VOCAB - 5)]) + "\n")
    load_tokenizer(str(folder / "vocab.txt")).save_pretrained(folder / "tok")
    AutoTokenizer.from_pretrained(folder / "tok")
    import json

    return {p.name: {"content": json.loads(p.read_text()) if p.suffix == ".json" else p.read_text().splitlines()}
            for p in (folder / "tok").iterdir()}


def test_export_writes_a_loadable_folder_without_leftovers(tmp_path, capsys):
    from transformers import AutoTokenizer

    src = tiny_bert()
    ckpt = write_checkpoint(tmp_path / "ok.pt", src)
    state = torch.load(ckpt, weights_only=False)
    state["state"]["integrations"]["huggingface"]["tokenizer"] = tokenizer_metadata(tmp_path)
    torch.save(state, ckpt)
    assert export_main([str(ckpt), str(tmp_path / "out")]) == 0
    reloaded = BertForMaskedLM.from_pretrained(tmp_path / "out")
    assert torch.equal(reloaded.bert.embeddings.word_embeddings.weight, src.bert.embeddings.word_embeddings.weight)
    assert AutoTokenizer.from_pretrained(tmp_path / "out").convert_tokens_to_ids("w7") == 12
    assert sorted(os.listdir(tmp_path)) == ["ok.pt", "out", "tok", "vocab.txt"]  # no temporary sibling left


def test_export_refuses_a_non_empty_folder_and_replaces_it_atomically_with_overwrite(tmp_path, capsys):
    ckpt = write_checkpoint(tmp_path / "ok.pt", tiny_bert())
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.json").write_text('{"my": "own"}')
    (out / "notes.txt").write_text("keep me")
    assert export_main([str(ckpt), str(out)]) == 2
    line = one_error_line(capsys)
    assert f"destination {out} is not empty (config.json, notes.txt)" in line and "--overwrite" in line
    assert (out / "config.json").read_text() == '{"my": "own"}' and (out / "notes.txt").read_text() == "keep me"

    # --overwrite with a damaged checkpoint: refused before anything is written, the old folder whole
    bad = write_checkpoint(tmp_path / "bad.pt", tiny_bert())
    flip_bytes_in_tensor(bad, VOCAB * HIDDEN * 4)
    assert export_main([str(bad), str(out), "--overwrite"]) == 2
    assert "word_embeddings" in one_error_line(capsys)
    assert (out / "notes.txt").read_text() == "keep me"

    assert export_main([str(ckpt), str(out), "--overwrite"]) == 0
    assert not (out / "notes.txt").exists() and '"my"' not in (out / "config.json").read_text()
    assert BertForMaskedLM.from_pretrained(out).config.vocab_size == VOCAB
    assert sorted(os.listdir(tmp_path)) == ["bad.pt", "mine", "ok.pt"]  # no temporary or replaced folder left


def test_export_of_a_damaged_checkpoint_is_refused(damaged, tmp_path, capsys):
    assert export_main([str(damaged), str(tmp_path / "out")]) == 2
    line = one_error_line(capsys)
    assert str(damaged) in line and "word_embeddings.weight" in line and "copy it again" in line
    assert not (tmp_path / "out").exists()


def test_export_bad_inputs_are_one_error_line(tmp_path, capsys):
    good = write_checkpoint(tmp_path / "ok.pt", tiny_bert())
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:4000])
    torch.save({"state": {"weights": 1}}, tmp_path / "other.pt")
    torch.save({"state": {"model": {}}}, tmp_path / "no_meta.pt")
    assert export_main([str(good), str(tmp_path / "exported")]) == 0
    capsys.readouterr()
    (tmp_path / "a_file").write_text("x")
    cases = [
        ([str(tmp_path / "nope.pt"), str(tmp_path / "o1")], "checkpoint not found"),
        ([str(cut), str(tmp_path / "o2")], "cannot be read"),
        ([str(tmp_path / "other.pt"), str(tmp_path / "o3")], "is not a Composer checkpoint"),
        ([str(tmp_path / "no_meta.pt"), str(tmp_path / "o4")], "has no Hugging Face metadata"),
        ([str(tmp_path / "exported"), str(tmp_path / "o5")], "is a Hugging Face folder (already exported?)"),
        ([str(good), str(tmp_path / "a_file")], "is a file, not a folder"),
    ]
    for argv, message in cases:
        assert export_main(argv) == 2, argv
        assert message in one_error_line(capsys), argv
    assert sorted(os.listdir(tmp_path)) == ["a_file", "cut.pt", "exported", "no_meta.pt", "ok.pt", "other.pt"]
