"""Conversion at scale: worker processes (same samples as one process, reproducible order), prefix tokenization in
truncate mode (same ids as whole documents), and replacing a dataset only once the new one is complete."""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from helpers import WORDS, write_documents, write_vocab
from streaming import StreamingDataset

from mosaicbert.core.tokenizer import load_tokenizer
from mosaicbert.pretrain.config import DataConfig
from mosaicbert.pretrain.convert import DATASET_INFO, PrefixTokenizer, convert, iter_documents, main, resolve_files
from mosaicbert.pretrain.mlm import build_mlm_dataloader

MAX_LEN = 16
BLOCK = 7  # documents per block: the toy corpus spans several blocks


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("par")
    vocab = write_vocab(root / "vocab.txt")
    write_documents(root / "train.jsonl", num_docs=45, min_words=1, max_words=50, seed=1)
    write_documents(root / "val.jsonl", num_docs=9, min_words=1, max_words=50, seed=2)
    return root, load_tokenizer(str(vocab))


def _convert(toy, out: Path, workers: int, mode="split", tokenize=True, **kw):
    root, tok = toy
    return convert(out_root=out, source="local", train_files=str(root / "train.jsonl"),
                   val_files=str(root / "val.jsonl"), mode=mode, tokenize=tokenize, max_seq_len=MAX_LEN,
                   tokenizer=tok, progress=False, workers=workers, block_documents=BLOCK, **kw)


def _samples(out: Path, split="train") -> list:
    ds = StreamingDataset(local=str(out), split=split, batch_size=1, shuffle=False)
    rows = [ds[i] for i in range(ds.num_samples)]
    return [tuple(r["input_ids"].tolist()) if "input_ids" in r else r["text"] for r in rows]


MODES = [("truncate", False), ("truncate", True), ("split", False), ("split", True), ("pack", True),
         ("documents", True)]


@pytest.mark.parametrize("mode,tokenize", MODES)
def test_workers_write_the_same_samples_as_one_process(tmp_path, toy, mode, tokenize):
    one = _convert(toy, tmp_path / "one", 1, mode, tokenize)
    three = _convert(toy, tmp_path / "three", 3, mode, tokenize)
    _convert(toy, tmp_path / "again", 3, mode, tokenize)
    for split in ("train", "val"):
        a, b, c = (_samples(tmp_path / name, split) for name in ("one", "three", "again"))
        assert Counter(a) == Counter(b)  # the same samples ...
        assert b == c  # ... in an order that is fixed for a fixed number of workers
        assert (one[split].documents, one[split].samples, one[split].tokens) == \
            (three[split].documents, three[split].samples, three[split].tokens)
    # One dataset: the parts' shards in one index.json (with their hashes) and one record of the tokenizer.
    train = tmp_path / "three" / "train"
    index = json.loads((train / "index.json").read_text())
    assert sorted({s["raw_data"]["basename"].split("/")[0] for s in index["shards"]}) == \
        ["part-0000", "part-0001", "part-0002"]
    assert all(s["raw_data"]["hashes"] for s in index["shards"])
    assert not list(train.glob("part-*/index.json"))
    assert json.loads((train / DATASET_INFO).read_text())["samples"] == three["train"].samples


def test_sample_order_is_block_k_to_worker_k_mod_n(tmp_path, toy):
    """The documented order: blocks of BLOCK documents, block k written by worker k mod N, workers in turn."""
    _convert(toy, tmp_path / "one", 1, "truncate", True)
    _convert(toy, tmp_path / "two", 2, "truncate", True)
    one, two = _samples(tmp_path / "one"), _samples(tmp_path / "two")  # (one sample per document here)
    blocks = [one[i: i + BLOCK] for i in range(0, len(one), BLOCK)]
    assert two == [s for w in range(2) for b in blocks[w::2] for s in b]


def test_parallel_output_is_read_by_the_loader(tmp_path, toy):
    _convert(toy, tmp_path / "mds", 2, "split", True, compression="zstd")
    data = DataConfig(local=str(tmp_path / "mds"), max_seq_len=MAX_LEN, num_workers=0)
    loader = build_mlm_dataloader(data, toy[1], train=True, batch_size=4, seed=3, drop_last=False)
    rows = sum(int(b["input_ids"].shape[0]) for b in loader)
    assert rows == len(_samples(tmp_path / "mds"))


def test_builtin_and_hub_sources_with_workers(tmp_path, toy, monkeypatch):
    import datasets

    docs = [" ".join(WORDS[(7 * i + j) % len(WORDS)] for j in range(3 + i % 40)) for i in range(30)]
    monkeypatch.setattr(datasets, "load_dataset", lambda name, config, split, streaming: iter(
        [{"text": d} for d in (docs if split == "train" else docs[:5])]))
    kw = dict(mode="truncate", tokenize=True, max_seq_len=MAX_LEN, tokenizer=toy[1], progress=False,
              block_documents=BLOCK)
    one = convert(out_root=tmp_path / "hub1", source="hf", workers=1, **kw)
    two = convert(out_root=tmp_path / "hub2", source="hf", workers=2, **kw)
    assert one["train"].samples == two["train"].samples == 30
    assert Counter(_samples(tmp_path / "hub1")) == Counter(_samples(tmp_path / "hub2"))
    kw.update(tokenizer="builtin://python-docs", limit=40, splits=["val"])
    convert(out_root=tmp_path / "b1", source="builtin", workers=1, **kw)
    convert(out_root=tmp_path / "b2", source="builtin", workers=2, **kw)
    assert Counter(_samples(tmp_path / "b1", "val")) == Counter(_samples(tmp_path / "b2", "val"))


def test_progress_line_shows_rate_and_eta(tmp_path, toy, capsys):
    root, tok = toy
    convert(out_root=tmp_path / "mds", source="local", train_files=str(root / "train.jsonl"),
            val_files=str(root / "val.jsonl"), splits=["train"], tokenizer=tok, max_seq_len=MAX_LEN, workers=2,
            block_documents=BLOCK, progress=True)
    err = capsys.readouterr().err
    assert "train: 45 documents" in err and "documents/s" in err


# ---------------------------------------------------------------------------------------------------------------
# Truncate mode tokenizes a prefix of each document
# ---------------------------------------------------------------------------------------------------------------


def _hard_documents(rng) -> list[str]:
    """Documents where the prefix cut falls inside words of many pieces, in whitespace runs, in punctuation, in
    accented and CJK text, plus a single word longer than any first prefix."""
    pieces = ["unbelievably", "hyperparameterization", "antidisestablishmentarianism", "café", "naïve", "東京都",
              "don't", "e-mail", "3.14159", "—", "...", "  ", "\n\n", "x" * 30, "Zürich", "ünïcödé", "a", "the"]
    docs = []
    for n in range(300):
        k = int(rng.integers(1, 400))
        docs.append(" ".join(pieces[i] for i in rng.integers(0, len(pieces), size=k)))
    docs += ["y" * 5000, "word " * 2000, "", "   ", "東" * 3000, "a" * 767 + " b" * 300]
    return docs


@pytest.mark.parametrize("max_tokens", [1, 14, 126, 510])
def test_prefix_tokenization_equals_whole_documents(bert_tokenizer, shared_data, max_tokens):
    rng = np.random.default_rng(max_tokens)
    docs = _hard_documents(rng)
    val = str(shared_data / "text" / "validation" / "*.json.gz")
    docs += list(iter_documents(resolve_files(val)))[:150]
    prefix = PrefixTokenizer(bert_tokenizer, max_tokens)
    # The cut of the first prefix falls inside a word: the word is re-read from a longer prefix.
    docs.append("w " * (prefix.first_chars // 2 - 3) + "supercalifragilisticexpialidocious" * 3 + " tail" * 50)
    shorter = 0
    for doc, (enc, n) in zip(docs, prefix.encode_prefixes(docs)):
        whole = bert_tokenizer(doc, add_special_tokens=False, verbose=False)["input_ids"]
        assert n >= min(max_tokens, len(whole))
        assert enc.ids[:n] == whole[:n]
        assert prefix(doc) == whole[:max_tokens]
        shorter += len(enc.ids) < len(whole)
    assert shorter > len(docs) // 3  # (and most long documents were only partly tokenized)


def test_truncate_mode_ids_equal_whole_document_truncation(tmp_path, bert_tokenizer, shared_data):
    val = str(shared_data / "text" / "validation" / "*.json.gz")
    docs = list(iter_documents(resolve_files(val)))[:200]
    for tokenize in (True, False):
        out = tmp_path / f"t{tokenize}"
        convert(out_root=out, source="local", train_files=val, val_files=val, splits=["val"], mode="truncate",
                tokenize=tokenize, max_seq_len=128, tokenizer=bert_tokenizer, limit=200, progress=False, workers=1)
        got = _samples(out, "val")
        want = [bert_tokenizer(d, truncation=True, max_length=128, verbose=False)["input_ids"] for d in docs]
        if not tokenize:  # raw text: the stored span tokenizes (as the loader does) to the same ids
            got = [bert_tokenizer(t, truncation=True, max_length=128, verbose=False)["input_ids"] for t in got]
        assert [list(g) for g in got] == want


# ---------------------------------------------------------------------------------------------------------------
# --overwrite replaces a dataset only once the new one is complete; write errors are one clear line
# ---------------------------------------------------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_failed_overwrite_leaves_the_old_dataset_whole(tmp_path, toy, capsys):
    root, _ = toy
    out = tmp_path / "mds"
    _convert(toy, out, 1)
    before = _snapshot(out)
    bad = tmp_path / "bad_val.jsonl"
    bad.write_text('{"text": "w1 w2"}\n{"text": "w3"}\n{"text": broken\n')
    rc = main(["--source", "local", "--train_files", str(root / "train.jsonl"), "--val_files", str(bad),
               "--tokenizer", str(root / "vocab.txt"), "--out_root", str(out), "--overwrite", "--no_progress",
               "--mode", "split", "--max_seq_len", str(MAX_LEN), "--workers", "2"])
    assert rc == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(f"error: {bad}:3: malformed JSON")
    assert _snapshot(out) == before  # train/ was converted again, but not swapped in: val/ failed


def test_bad_line_parsed_in_a_worker_names_file_and_line(tmp_path, toy):
    # JSON lines are parsed by the workers: a bad line in the third block (worker 0 of 2) still names file and line
    bad = tmp_path / "bad.jsonl"
    lines = [json.dumps({"text": f"w{i % 300} w1"}) for i in range(30)]
    lines[17] = '{"text": 17}'
    bad.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"{bad}:18: expected a JSON object with a string field 'text'"):
        convert(out_root=tmp_path / "o", source="local", train_files=str(bad), val_files=str(bad), mode="split",
                tokenize=True, max_seq_len=MAX_LEN, tokenizer=toy[1], progress=False, workers=2,
                block_documents=BLOCK)
    assert not (tmp_path / "o" / "train").exists()


def test_killed_overwrite_leaves_the_old_dataset_whole(tmp_path, toy):
    root, _ = toy
    big = tmp_path / "big.jsonl"
    write_documents(big, num_docs=20_000, min_words=5, max_words=60, seed=5)
    out = tmp_path / "mds"
    _convert(toy, out, 1)
    before = _snapshot(out)
    argv = ["--source", "local", "--train_files", str(big), "--val_files", str(big), "--tokenizer",
            str(root / "vocab.txt"), "--out_root", str(out), "--overwrite", "--no_progress", "--mode", "split",
            "--max_seq_len", str(MAX_LEN), "--workers", "2"]
    # A forked child: the converter's command line without the start-up cost of a new interpreter.
    proc = mp.get_context("fork").Process(target=main, args=(argv,))
    proc.start()
    deadline = time.monotonic() + 120
    while not list(out.glob(".train.tmp-*/part-0001")) and time.monotonic() < deadline and proc.is_alive():
        time.sleep(0.01)
    assert proc.is_alive(), "the conversion ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert {k: v for k, v in _snapshot(out).items() if not k.startswith(".")} == before
    # The next conversion removes what the killed one left (its workers stop once they find their parent gone).
    deadline = time.monotonic() + 30
    _convert(toy, out, 1, overwrite=True)
    while [p for p in out.iterdir() if p.name.startswith(".")] and time.monotonic() < deadline:
        time.sleep(0.5)
        _convert(toy, out, 1, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["train", "val"]


def test_converter_killed_between_the_renames_gets_its_old_dataset_back(tmp_path, toy):
    out = tmp_path / "mds"
    _convert(toy, out, 1)
    before = _snapshot(out / "train")
    dead = subprocess.Popen(["true"])
    dead.wait()
    os.rename(out / "train", out / f".train.old-{dead.pid}-{socket.gethostname()}-0123abcd")
    with pytest.raises(FileExistsError, match="already exists"):  # restored, so not replaced without --overwrite
        _convert(toy, out, 1)
    assert _snapshot(out / "train") == before


@pytest.mark.parametrize("workers", [1, 2])
def test_disk_full_is_one_error_line_and_the_old_dataset_stays(tmp_path, toy, monkeypatch, capsys, workers):
    from streaming import MDSWriter

    root, _ = toy
    out = tmp_path / "mds"
    _convert(toy, out, 1)
    before = _snapshot(out)
    calls = []

    def full(self, sample):
        calls.append(1)
        if len(calls) > 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, sample)

    original = MDSWriter.write
    monkeypatch.setattr(MDSWriter, "write", full)
    rc = main(["--source", "local", "--train_files", str(root / "train.jsonl"), "--val_files",
               str(root / "val.jsonl"), "--tokenizer", str(root / "vocab.txt"), "--out_root", str(out),
               "--overwrite", "--no_progress", "--mode", "split", "--max_seq_len", str(MAX_LEN), "--workers",
               str(workers)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and "Traceback" not in "\n".join(err)
    assert err[-1].startswith("error: writing ") and "no space left on the device" in err[-1]
    assert str(out) in err[-1]
    assert _snapshot(out) == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_out_root_that_is_a_file(tmp_path, toy, capsys):
    root, _ = toy
    target = tmp_path / "notes.txt"
    target.write_text("mine")
    for out in (target, target / "sub"):
        rc = main(["--source", "local", "--train_files", str(root / "train.jsonl"), "--val_files",
                   str(root / "val.jsonl"), "--tokenizer", str(root / "vocab.txt"), "--out_root", str(out),
                   "--no_progress"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and err[0].startswith("error: ") and str(target) in err[0]
        assert "is a file" in err[0]
    assert target.read_text() == "mine"
