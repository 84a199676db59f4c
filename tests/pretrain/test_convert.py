"""MDS conversion: every mode, raw and tokenized, round-tripped through streaming.StreamingDataset."""

from __future__ import annotations

import gzip
import json
import multiprocessing as mp
from pathlib import Path

import numpy as np
import pytest
from helpers import SPECIALS, WORDS, write_vocab
from streaming import StreamingDataset

from mosaicbert.core.builtin_corpus import atomic_build
from mosaicbert.core.tokenizer import load_tokenizer
from mosaicbert.pretrain.convert import convert, main

MAX_LEN = 16


@pytest.fixture(scope="module")
def toy_vocab(tmp_path_factory) -> Path:
    """A WordPiece vocab where every word ``w<i>`` is exactly one token (id i + 5)."""
    path = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    return write_vocab(path)


@pytest.fixture(scope="module")
def toy_docs() -> list[list[int]]:
    rng = np.random.default_rng(0)
    lengths = [1, 5, 14, 15, 30, 47, 3, 100] + rng.integers(1, 60, size=12).tolist()
    return [rng.integers(0, len(WORDS), size=n).tolist() for n in lengths]


def _doc_text(word_ids: list[int]) -> str:
    # Mixed case and punctuation-free: each word is exactly one token after lowercasing.
    return " ".join(("W" if i % 3 == 0 else "w") + str(w) for i, w in enumerate(word_ids))


def _write_c4(path: Path, docs: list[list[int]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for i, d in enumerate(docs):
            row = {"text": _doc_text(d), "timestamp": "2019-04-25T12:57:54Z", "url": f"https://x/{i}"}
            fh.write(json.dumps(row) + "\n")


@pytest.fixture(scope="module")
def c4_files(tmp_path_factory, toy_docs) -> tuple[str, str]:
    root = tmp_path_factory.mktemp("c4")
    _write_c4(root / "train" / "c4-train.00000-of-00002.json.gz", toy_docs[:10])
    _write_c4(root / "train" / "c4-train.00001-of-00002.json.gz", toy_docs[10:])
    _write_c4(root / "validation" / "c4-validation.00000-of-00001.json.gz", toy_docs[:4])
    return str(root / "train" / "*.json.gz"), str(root / "validation" / "*.json.gz")


def _read_back(out_root: Path, split: str) -> list[dict]:
    ds = StreamingDataset(local=str(out_root), split=split, batch_size=1, shuffle=False)
    return [ds[i] for i in range(ds.num_samples)]


def _ids_of(doc: list[int]) -> list[int]:
    return [w + len(SPECIALS) for w in doc]


@pytest.mark.parametrize(
    "mode,tokenize",
    [("truncate", False), ("truncate", True), ("split", False), ("split", True), ("pack", True), ("documents", True)],
)
def test_round_trip(tmp_path, toy_vocab, toy_docs, c4_files, mode, tokenize):
    tok = load_tokenizer(str(toy_vocab))
    cls, sep = tok.cls_token_id, tok.sep_token_id
    train_glob, val_glob = c4_files
    stats = convert(out_root=tmp_path / "mds", source="local", train_files=train_glob, val_files=val_glob,
                    mode=mode, tokenize=tokenize, max_seq_len=MAX_LEN, tokenizer=str(toy_vocab), progress=False)
    assert set(stats) == {"train", "val"}
    assert stats["train"].documents == len(toy_docs) and stats["val"].documents == 4
    for split, docs in (("train", toy_docs), ("val", toy_docs[:4])):
        samples = _read_back(tmp_path / "mds", split)
        assert len(samples) == stats[split].samples
        if tokenize:
            seqs = [s["input_ids"] for s in samples]
            assert all(isinstance(x, np.ndarray) and x.dtype == np.int32 for x in seqs)
            seqs = [x.tolist() for x in seqs]
        else:
            assert all(set(s) == {"text"} and isinstance(s["text"], str) for s in samples)
            seqs = [tok(s["text"])["input_ids"] for s in samples]
        assert all(len(x) <= MAX_LEN and x[0] == cls and x[-1] == sep for x in seqs)
        assert stats[split].tokens == sum(len(x) for x in seqs)
        bodies = [x[1:-1] for x in seqs]
        if mode == "truncate":
            assert bodies == [_ids_of(d)[: MAX_LEN - 2] for d in docs]
        elif mode in ("split", "documents"):  # (the same number of chunks; documents makes them even)
            assert [t for b in bodies for t in b] == [t for d in docs for t in _ids_of(d)]
            expected = sum(-(-len(d) // (MAX_LEN - 2)) for d in docs)
            assert len(seqs) == expected
        else:  # pack: full-length samples, docs joined with [SEP]
            assert all(len(x) == MAX_LEN for x in seqs[:-1])
            stream = []
            for d in docs:
                stream += _ids_of(d) + [sep]
            assert [t for b in bodies for t in b] == stream[:-1]


@pytest.mark.parametrize("mode", ["pack", "documents"])
def test_raw_text_is_refused(tmp_path, toy_vocab, c4_files, mode):
    with pytest.raises(ValueError, match=f"--mode {mode}.*--tokenize"):
        convert(out_root=tmp_path / "o", source="local", train_files=c4_files[0], val_files=c4_files[1],
                mode=mode, tokenize=False, tokenizer=str(toy_vocab), progress=False)


LONG = 2048
# Around the limit (2046 body tokens fit exactly), far over it, and short.
LONG_DOC_LENGTHS = [2046, 2047, 5000, 1, 300, 4093]


@pytest.fixture(scope="module")
def long_docs() -> list[list[int]]:
    rng = np.random.default_rng(1)
    return [rng.integers(0, len(WORDS), size=n).tolist() for n in LONG_DOC_LENGTHS]


def _expected_bodies(mode: str, docs: list[list[int]], sep: int, max_len: int) -> list[list[int]]:
    """The token ids between [CLS] and [SEP] of every sample each mode should store."""
    body = max_len - 2
    ids = [_ids_of(d) for d in docs]
    if mode == "truncate":
        return [x[:body] for x in ids]
    if mode == "split":
        return [x[s : s + body] for x in ids for s in range(0, len(x), body)]
    if mode == "pack":
        stream = [t for x in ids for t in x + [sep]][:-1]
        return [stream[s : s + body] for s in range(0, len(stream), body)]
    out = []  # documents: the fewest chunks that fit, of lengths differing by at most one
    for x in ids:
        n = -(-len(x) // body)
        sizes = [len(x) // n + (1 if i < len(x) % n else 0) for i in range(n)]
        starts = np.cumsum([0, *sizes]).tolist()
        out += [x[a:b] for a, b in zip(starts, starts[1:])]
    return out


@pytest.mark.parametrize("mode,tokenize", [("truncate", False), ("split", False), ("split", True), ("pack", True),
                                           ("documents", True)])
def test_round_trip_at_2048(tmp_path, toy_vocab, long_docs, mode, tokenize):
    """Nothing assumes 128 tokens: converted at 2048, the MLM dataset at 2048 gives back exactly the stored samples."""
    from mosaicbert.pretrain.mlm import MLMStreamingDataset

    tok = load_tokenizer(str(toy_vocab))
    _write_c4(tmp_path / "long.json.gz", long_docs)
    convert(out_root=tmp_path / "mds", source="local", train_files=str(tmp_path / "long.json.gz"),
            val_files=str(tmp_path / "long.json.gz"), splits=["train"], mode=mode, tokenize=tokenize,
            max_seq_len=LONG, tokenizer=tok, progress=False)
    info = json.loads((tmp_path / "mds" / "train" / "mosaicbert.json").read_text())
    assert info["mode"] == mode and info["max_seq_len"] == LONG
    ds = MLMStreamingDataset(tokenizer=tok, max_seq_len=LONG, local=str(tmp_path / "mds"), split="train",
                             batch_size=1, shuffle=False)
    got = []
    for i in range(ds.num_samples):
        s = ds[i]
        got.append(np.where(s["labels"] != -100, s["labels"], s["input_ids"]).tolist())  # undo the masking
    assert all(len(x) <= LONG and x[0] == tok.cls_token_id and x[-1] == tok.sep_token_id for x in got)
    assert [x[1:-1] for x in got] == _expected_bodies(mode, long_docs, tok.sep_token_id, LONG)
    if mode == "documents":
        # Whole documents up to the limit; longer ones in even chunks, each with its own [CLS]/[SEP].
        assert [len(x) for x in got] == [2048, 1026, 1025, 1669, 1669, 1668, 3, 302, 1367, 1366, 1366]


def test_documents_mode_from_the_cli(tmp_path, toy_vocab, c4_files):
    rc = main(["--source", "local", "--train_files", c4_files[0], "--val_files", c4_files[1], "--tokenizer",
               str(toy_vocab), "--out_root", str(tmp_path / "o"), "--mode", "documents", "--tokenize",
               "--max_seq_len", "2048", "--no_progress"])
    assert rc == 0
    info = json.loads((tmp_path / "o" / "val" / "mosaicbert.json").read_text())
    assert info["mode"] == "documents" and info["max_seq_len"] == 2048 and info["samples"] == info["documents"]


def test_txt_and_jsonl_inputs(tmp_path, toy_vocab):
    (tmp_path / "a.txt").write_text("w1 w2 w3\nw4 w5\n\n\nw6 w7\n\nw8\n")
    (tmp_path / "b.jsonl").write_text(json.dumps({"text": "w9 w10"}) + "\n\n" + json.dumps({"text": "w11"}) + "\n")
    stats = convert(out_root=tmp_path / "o", source="local", train_files=str(tmp_path / "a.txt"),
                    val_files=str(tmp_path / "b.jsonl"), mode="truncate", tokenize=True, tokenizer=str(toy_vocab),
                    progress=False, compression=None)
    assert stats["train"].documents == 3 and stats["val"].documents == 2
    got = [s["input_ids"][1:-1].tolist() for s in _read_back(tmp_path / "o", "train")]
    assert got == [[6, 7, 8, 9, 10], [11, 12], [13]]


def test_malformed_json_names_file_and_line(tmp_path, toy_vocab):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"text": "w1"}) + "\n" + json.dumps({"text": "w2"}) + "\n{\"text\": \"w3\n")
    with pytest.raises(ValueError, match=rf"{bad}:3"):
        convert(out_root=tmp_path / "o", source="local", train_files=str(bad), val_files=str(bad),
                tokenizer=str(toy_vocab), progress=False)
    # A failed conversion leaves no partial (valid-looking) dataset behind.
    assert not (tmp_path / "o" / "train").exists()
    assert not [p for p in (tmp_path / "o").iterdir()] if (tmp_path / "o").exists() else True
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text(json.dumps({"body": "w1"}) + "\n")
    with pytest.raises(ValueError, match=rf"{nofield}:1.*'text'"):
        convert(out_root=tmp_path / "o2", source="local", train_files=str(nofield), val_files=str(nofield),
                tokenizer=str(toy_vocab), progress=False)


def test_missing_inputs_and_existing_output(tmp_path, toy_vocab, c4_files):
    glob = str(tmp_path / "nothing" / "*.json.gz")
    with pytest.raises(FileNotFoundError, match="nothing"):
        convert(out_root=tmp_path / "o", source="local", train_files=glob, val_files=glob,
                tokenizer=str(toy_vocab), progress=False)
    assert not (tmp_path / "o").exists()
    kwargs = dict(out_root=tmp_path / "o", source="local", train_files=c4_files[0], val_files=c4_files[1],
                  tokenizer=str(toy_vocab), progress=False, limit=3)
    convert(**kwargs)
    with pytest.raises(FileExistsError, match="--overwrite"):
        convert(**kwargs)
    stats = convert(**kwargs, overwrite=True)
    assert stats["train"].documents == 3 and len(_read_back(tmp_path / "o", "train")) == 3


def test_cli_on_shared_data(tmp_path, shared_data, bert_vocab_dir, capsys):
    text = shared_data / "text"
    if not list((text / "train").glob("*.json.gz")):
        pytest.skip(f"no C4-format files in {text / 'train'}")
    out = tmp_path / "mds"
    rc = main(["--source", "local", "--train_files", str(text / "train" / "*.json.gz"),
               "--val_files", str(text / "validation" / "*.json.gz"), "--tokenizer", str(bert_vocab_dir),
               "--out_root", str(out), "--mode", "split", "--tokenize", "--limit", "50", "--no_progress"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "train: 50 documents read" in printed and "total: 100 documents read" in printed
    samples = _read_back(out, "train")
    # Documents are 2-10 KB, so far more samples than documents; all but doc tails are full length.
    assert len(samples) > 200
    lengths = np.array([len(s["input_ids"]) for s in samples])
    assert lengths.max() == 128 and (lengths == 128).mean() > 0.8
    assert all(s["input_ids"][0] == 101 and s["input_ids"][-1] == 102 for s in samples)
    # Not everything [UNK] (the 5-token-vocab trap).
    ids = np.concatenate([s["input_ids"] for s in samples])
    assert (ids == 100).mean() < 0.05
    # Error path through the CLI: existing output without --overwrite -> exit code 2 and a message.
    rc = main(["--source", "local", "--train_files", str(text / "train" / "*.json.gz"),
               "--val_files", str(text / "validation" / "*.json.gz"), "--tokenizer", str(bert_vocab_dir),
               "--out_root", str(out), "--limit", "5", "--no_progress"])
    assert rc == 2 and "--overwrite" in capsys.readouterr().err


def _racer(args):
    final, marker_dir = args

    def build(tmp: Path) -> None:
        (Path(marker_dir) / f"built-{__import__('os').getpid()}").touch()
        (tmp / "data.txt").write_text("ok")

    return str(atomic_build(final, build))


def test_atomic_build_concurrent(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    final = tmp_path / "cache" / "thing"
    # spawn, not fork: forking a test process that already runs threads can copy a held lock into the child
    with mp.get_context("spawn").Pool(4) as pool:
        results = pool.map(_racer, [(str(final), str(markers))] * 8)
    assert set(results) == {str(final)}
    assert (final / "data.txt").read_text() == "ok"
    assert len(list(markers.iterdir())) == 1  # built exactly once
    assert not [p for p in final.parent.iterdir() if ".tmp-" in p.name]


@pytest.mark.parametrize("mode", ["split", "truncate"])
def test_raw_text_spans_retokenize_exactly_on_shared_data(tmp_path, shared_data, bert_tokenizer, mode):
    """Raw-text spans are cut between words, so they re-tokenize to exactly the tokens they were cut from."""
    from mosaicbert.pretrain.convert import iter_documents, resolve_files

    val_glob = str(shared_data / "text" / "validation" / "*.json.gz")
    try:
        docs = list(iter_documents(resolve_files(val_glob)))[:30]
    except FileNotFoundError:
        pytest.skip(f"no C4-format files match {val_glob}")
    convert(out_root=tmp_path / "o", source="local", train_files=val_glob, val_files=val_glob, splits=["val"],
            mode=mode, tokenize=False, max_seq_len=128, tokenizer=bert_tokenizer, limit=30, progress=False)
    texts = [s["text"] for s in _read_back(tmp_path / "o", "val")]
    enc = lambda t: bert_tokenizer(t, add_special_tokens=False, verbose=False)["input_ids"]  # noqa: E731
    if mode == "split":
        pieces = [enc(t) for t in texts]
        assert max(len(p) for p in pieces) <= 126
        assert [t for p in pieces for t in p] == [t for d in docs for t in enc(d)]
    else:
        assert len(texts) == len(docs)
        for t, d in zip(texts, docs):
            assert enc(t)[:126] == enc(d)[:126]
            assert len(t) < len(d)  # only the used part of each (long) document is stored


def test_hub_source_streams_c4_through_datasets(tmp_path, toy_vocab, toy_docs, monkeypatch):
    """--source hf: `datasets.load_dataset(allenai/c4, en, split=..., streaming=True)` is what gets called, and its
    records are converted like local files (the hub itself is unreachable here, so load_dataset is faked)."""
    import datasets

    calls = []

    def fake_load_dataset(name, config, split, streaming):
        calls.append((name, config, split, streaming))
        docs = toy_docs[:6] if split == "train" else toy_docs[:2]
        return iter([{"text": _doc_text(d), "timestamp": "", "url": ""} for d in docs])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    stats = convert(out_root=str(tmp_path / "out"), source="hf", mode="truncate", tokenize=True,
                    max_seq_len=MAX_LEN, tokenizer=str(toy_vocab), progress=False)
    assert calls == [("allenai/c4", "en", "train", True), ("allenai/c4", "en", "validation", True)]
    assert stats["train"].documents == 6 and stats["val"].documents == 2
    rows = _read_back(tmp_path / "out", "train")
    assert [list(r["input_ids"][1:-1]) for r in rows] == [_ids_of(d)[: MAX_LEN - 2] for d in toy_docs[:6]]


def test_own_text_folder_without_val_files_holds_out_every_nth_document(tmp_path, toy_vocab):
    """A folder of .txt and .jsonl files, no --val_files: val is every 4th document (--val_fraction 0.25), train the
    rest; together they are the input, each document once, and a rerun gives the same split."""
    corpus = tmp_path / "my-text"
    (corpus / "notes").mkdir(parents=True)
    docs = [" ".join(WORDS[(7 * i + j) % len(WORDS)] for j in range(5 + i % 4)) for i in range(10)]
    (corpus / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:6]))
    (corpus / "notes" / "b.txt").write_text("\n\n".join(docs[6:]) + "\n")
    tok = load_tokenizer(str(toy_vocab))

    def texts(root, split):
        ds = StreamingDataset(local=str(root / split), shuffle=False, batch_size=1)
        return [tok.decode(tok(ds[i]["text"])["input_ids"], skip_special_tokens=True) for i in range(len(ds))]

    for root in (tmp_path / "o1", tmp_path / "o2"):
        assert main(["--source", "local", "--train_files", str(corpus), "--tokenizer", str(toy_vocab),
                     "--out_root", str(root), "--val_fraction", "0.25", "--workers", "1", "--no_progress"]) == 0
    expected_val = [docs[i] for i in (3, 7)]  # the 4th and 8th documents, in file order
    assert texts(tmp_path / "o1", "val") == expected_val
    assert texts(tmp_path / "o1", "train") == [d for d in docs if d not in expected_val]
    assert texts(tmp_path / "o2", "val") == expected_val
