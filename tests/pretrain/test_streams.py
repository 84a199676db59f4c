"""Mixing corpora (data.streams): proportions sampled as configured, exact mid-epoch resumption, validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import WORDS, write_vocab

from mosaicbert.core.config import ConfigError
from mosaicbert.core.tokenizer import load_tokenizer
from mosaicbert.pretrain.config import DataConfig, StreamConfig, check_data_config, load_pretrain_config
from mosaicbert.pretrain.convert import convert
from mosaicbert.pretrain.masking import IGNORE_INDEX
from mosaicbert.pretrain.mlm import build_mlm_dataloader

MAX_LEN = 16
SPECIALS = 5  # ids 0-4; word w<i> is id i + 5


def _write(path: Path, words: range, n_docs: int, seed: int) -> Path:
    import numpy as np

    rng = np.random.default_rng(seed)
    with open(path, "w") as fh:
        for _ in range(n_docs):
            ids = rng.choice(list(words), size=int(rng.integers(3, 12)))
            fh.write(json.dumps({"text": " ".join(WORDS[i] for i in ids)}) + "\n")
    return path


@pytest.fixture(scope="module")
def corpora(tmp_path_factory):
    """Two corpora told apart by their words: a (w0-w99, 120 documents) and b (w200-w299, 60 documents)."""
    root = tmp_path_factory.mktemp("streams")
    tok = load_tokenizer(str(write_vocab(root / "vocab.txt")))
    for name, words, n, seed in (("a", range(0, 100), 120, 1), ("b", range(200, 300), 60, 2)):
        docs = _write(root / f"{name}.jsonl", words, n, seed)
        convert(out_root=root / name, source="local", train_files=str(docs), val_files=str(docs), mode="truncate",
                tokenize=True, max_seq_len=MAX_LEN, tokenizer=tok, progress=False, workers=1)
    return root, tok


def _data(root: Path, **streams) -> DataConfig:
    data = DataConfig(max_seq_len=MAX_LEN, mlm_probability=0.3, num_workers=0,
                      streams={name: StreamConfig(local=str(root / name), **kw) for name, kw in streams.items()})
    check_data_config(data)
    return data


def _unmasked(batch) -> list[list[int]]:
    ids = batch["input_ids"].clone()
    masked = batch["labels"] != IGNORE_INDEX
    ids[masked] = batch["labels"][masked]
    return [row[batch["attention_mask"][i] == 1].tolist() for i, row in enumerate(ids)]


def _corpus_of(row: list[int]) -> str:
    words = [t - SPECIALS for t in row[1:-1]]
    assert all(w < 100 for w in words) or all(w >= 200 for w in words)
    return "a" if words[0] < 100 else "b"


@pytest.mark.parametrize("proportions", [(0.75, 0.25), (0.2, 0.8)])
def test_sampled_proportions_match(corpora, proportions):
    root, tok = corpora
    data = _data(root, a={"proportion": proportions[0]}, b={"proportion": proportions[1]})
    loader = build_mlm_dataloader(data, tok, train=True, batch_size=6, seed=3, drop_last=False)
    rows = [r for b in loader for r in _unmasked(b)]
    counts = {"a": 0, "b": 0}
    for r in rows:
        counts[_corpus_of(r)] += 1
    # An epoch is as many samples as the streams hold together (180), in the configured shares.
    assert len(rows) == 180
    assert abs(counts["a"] - proportions[0] * 180) <= 1 and abs(counts["b"] - proportions[1] * 180) <= 1


def test_repeat_and_eval_read_every_stream(corpora):
    root, tok = corpora
    data = _data(root, a={"repeat": 0.5}, b={"repeat": 2})
    rows = [r for b in build_mlm_dataloader(data, tok, train=True, batch_size=6, seed=3, drop_last=False)
            for r in _unmasked(b)]
    assert sum(_corpus_of(r) == "a" for r in rows) == 60 and sum(_corpus_of(r) == "b" for r in rows) == 120
    rows = [r for b in build_mlm_dataloader(data, tok, train=False, batch_size=6, seed=3) for r in _unmasked(b)]
    assert sum(_corpus_of(r) == "a" for r in rows) == 120 and sum(_corpus_of(r) == "b" for r in rows) == 60


def test_mixed_run_resumes_mid_epoch_exactly(corpora):
    root, tok = corpora
    data = _data(root, a={"proportion": 0.6}, b={"proportion": 0.4})

    def loader():
        return build_mlm_dataloader(data, tok, train=True, batch_size=6, seed=9)

    full = list(loader())
    first, k = loader(), 7
    it = iter(first)
    for _ in range(k):
        next(it)
    state = first.dataset.state_dict(k * 6, from_beginning=False)
    resumed = loader()
    resumed.dataset.load_state_dict(state)
    rest = list(resumed)
    assert len(rest) == len(full) - k
    for x, y in zip(full[k:], rest):
        assert all(torch.equal(x[key], y[key]) for key in ("input_ids", "labels", "attention_mask"))


def test_stream_problems_name_the_stream(corpora, tmp_path):
    root, tok = corpora
    with pytest.raises(ConfigError, match=r"add up to 0\.9, not 1 \(a=0\.5, b=0\.4\)"):
        _data(root, a={"proportion": 0.5}, b={"proportion": 0.4})
    with pytest.raises(ConfigError, match=r"data\.streams\.b\.proportion' is not set"):
        _data(root, a={"proportion": 1.0}, b={})
    with pytest.raises(ConfigError, match=r"data\.streams\.a\.proportion' and 'data\.streams\.a\.repeat' both set"):
        _data(root, a={"proportion": 1.0, "repeat": 2.0})
    with pytest.raises(ConfigError, match="data.streams' and 'data.local"):
        check_data_config(DataConfig(local=str(root / "a"), streams={"b": StreamConfig(local=str(root / "b"))}))
    missing = DataConfig(max_seq_len=MAX_LEN, streams={"a": StreamConfig(local=str(root / "a")),
                                                       "gone": StreamConfig(local=str(tmp_path / "nowhere"))})
    with pytest.raises(ConfigError, match=r"data\.streams\.gone'.*nowhere.*does not exist"):
        build_mlm_dataloader(missing, tok, train=True, batch_size=4, seed=1)
    # A stream converted at another max_seq_len, and one converted with another tokenizer (raw text, so the run's
    # own tokenizer could read it: only the mixture's consistency refuses it).
    docs = root / "a.jsonl"
    convert(out_root=tmp_path / "long", source="local", train_files=str(docs), val_files=str(docs), mode="truncate",
            tokenize=True, max_seq_len=2 * MAX_LEN, tokenizer=tok, progress=False, workers=1)
    with pytest.raises(ConfigError, match=r"data\.streams\.long'.*max_seq_len 32.*stream 'a' with 16"):
        build_mlm_dataloader(DataConfig(max_seq_len=MAX_LEN, streams={
            "a": StreamConfig(local=str(root / "a")), "long": StreamConfig(local=str(tmp_path / "long"))}),
            tok, train=True, batch_size=4, seed=1)
    other = load_tokenizer(str(write_vocab(tmp_path / "v2.txt", WORDS[:250])))
    convert(out_root=tmp_path / "other", source="local", train_files=str(docs), val_files=str(docs),
            mode="truncate", max_seq_len=MAX_LEN, tokenizer=other, progress=False, workers=1)
    convert(out_root=tmp_path / "raw", source="local", train_files=str(docs), val_files=str(docs),
            mode="truncate", max_seq_len=MAX_LEN, tokenizer=tok, progress=False, workers=1)
    with pytest.raises(ConfigError, match=r"data\.streams\.other'.*tokenizer"):
        build_mlm_dataloader(DataConfig(max_seq_len=MAX_LEN, streams={
            "raw": StreamConfig(local=str(tmp_path / "raw")), "other": StreamConfig(local=str(tmp_path / "other"))}),
            tok, train=True, batch_size=4, seed=1)


def test_streams_from_the_command_line(corpora):
    root, _ = corpora
    cfg = load_pretrain_config("yamls/quickstart.yaml", [
        "data.local=null", f"data.streams.a.local={root / 'a'}", "data.streams.a.proportion=0.7",
        f"data.streams.b.local={root / 'b'}", "data.streams.b.proportion=0.3"])
    assert cfg.data.streams["b"].proportion == 0.3 and cfg.data.streams["a"].local == str(root / "a")
