"""Document packing: several whole documents per row (pack_documents, pack_mlm_batch), and the packed loader."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_documents, write_vocab

from mosaicbert.core.tokenizer import load_tokenizer
from mosaicbert.pretrain.config import DataConfig
from mosaicbert.pretrain.convert import convert
from mosaicbert.pretrain.masking import IGNORE_INDEX
from mosaicbert.pretrain.mlm import (
    build_mlm_dataloader,
    num_samples_in_batch,
    pack_documents,
    pack_mlm_batch,
    pad_mlm_batch,
    padding_fraction,
)

MAX_LEN = 64
BATCH = 8


# ---- pack_documents --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(20))
def test_pack_documents_properties(seed):
    rng = np.random.default_rng(seed)
    max_len = int(rng.integers(3, 300))
    lengths = rng.integers(1, max_len + 1, size=int(rng.integers(1, 200))).tolist()
    rows = pack_documents(lengths, max_len)
    assert sorted(i for r in rows for i in r) == list(range(len(lengths)))  # every sample exactly once
    assert all(r and sum(lengths[i] for i in r) <= max_len for r in rows)  # never over max_len
    assert all(r == sorted(r) for r in rows)  # batch order inside a row
    assert pack_documents(lengths, max_len) == rows  # deterministic
    assert len(rows) <= len(lengths)
    # Best-fit decreasing: no two rows could be merged into one.
    used = sorted(sum(lengths[i] for i in r) for r in rows)
    assert len(used) < 2 or used[0] + used[1] > max_len


def test_pack_documents_short_documents_share_rows():
    lengths = [5, 3, 8, 1, 6, 2]
    assert pack_documents(lengths, 10) == [[2, 5], [1, 3, 4], [0]]
    assert len(pack_documents([10] * 16, 128)) == 2  # 12 fit in a row of 128, then 4
    assert pack_documents([10, 10, 10], 10) == [[0], [1], [2]]  # full-length documents: one per row
    assert pack_documents([], 10) == []
    with pytest.raises(ValueError, match="Sample 1 has 11 tokens, more than max_len=10"):
        pack_documents([3, 11], 10)


# ---- pack_mlm_batch --------------------------------------------------------------------------------------------


def _samples(lengths, seed=0):
    """MLM samples as the dataset gives them: [CLS] ... [SEP] (ids 2/3) with some masked positions."""
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        ids = np.concatenate([[2], rng.integers(5, 90, n - 2), [3]]).astype(np.int64)
        labels = np.where((rng.random(n) < 0.3) & (ids > 4), ids, IGNORE_INDEX)
        out.append({"input_ids": np.where(labels != IGNORE_INDEX, 4, ids), "labels": labels,
                    "attention_mask": np.ones(n, dtype=np.int64), "token_type_ids": np.zeros(n, dtype=np.int64)})
    return out


def test_pack_mlm_batch_rows_are_concatenated_documents():
    lengths = [12, 5, 30, 3, 9, 20, 7, 16]
    samples = _samples(lengths)
    b = pack_mlm_batch(samples, pad_token_id=0, max_len=32, vocab_size=100)
    groups = pack_documents(lengths, 32)
    rows, width = b["input_ids"].shape
    assert rows == len(groups) < len(samples) and width == max(sum(lengths[i] for i in g) for g in groups)
    assert set(b) == {"input_ids", "labels", "attention_mask", "token_type_ids", "sequence_id", "sequence_lengths",
                      "label_counts", "document_counts"}
    assert all(b[k].dtype == torch.int64 and b[k].shape == (rows, width)
               for k in ("input_ids", "labels", "attention_mask", "token_type_ids", "sequence_id"))
    # host counts match the tensors
    assert b["sequence_lengths"] == b["attention_mask"].sum(1).tolist() == [sum(lengths[i] for i in g) for g in groups]
    assert b["label_counts"] == (b["labels"] != IGNORE_INDEX).sum(1).tolist()
    assert b["document_counts"] == [len(g) for g in groups] and sum(b["document_counts"]) == len(samples)
    assert (b["token_type_ids"] == 0).all()
    for r, g in enumerate(groups):
        n = b["sequence_lengths"][r]
        # ids/labels: the row's documents, concatenated in batch order, then padding
        for key in ("input_ids", "labels"):
            assert b[key][r, :n].tolist() == np.concatenate([samples[i][key] for i in g]).tolist()
        assert (b["input_ids"][r, n:] == 0).all() and (b["labels"][r, n:] == IGNORE_INDEX).all()
        assert (b["attention_mask"][r, :n] == 1).all() and (b["attention_mask"][r, n:] == 0).all()
        # sequence_id: 0 for the first document, 1 for the second, ...; 0 at padding
        assert b["sequence_id"][r, :n].tolist() == [j for j, i in enumerate(g) for _ in range(lengths[i])]
        assert (b["sequence_id"][r, n:] == 0).all()
        starts = [0, *np.cumsum([lengths[i] for i in g])[:-1].tolist()]
        assert [int(b["input_ids"][r, s]) for s in starts] == [2] * len(g)  # each document keeps its [CLS]


def test_pack_mlm_batch_padding_and_checks():
    samples = _samples([10, 6, 4])
    b = pack_mlm_batch(samples, pad_token_id=0, max_len=32)
    assert b["input_ids"].shape == (1, 20) and b["document_counts"] == [3]
    assert b["sequence_id"].tolist() == [[0] * 10 + [1] * 6 + [2] * 4]
    assert pack_mlm_batch(samples, pad_token_id=0, max_len=32, pad_to_max_length=True)["input_ids"].shape == (1, 32)
    # one document per row when they cannot share: the same tensors as pad_mlm_batch, plus sequence_id 0
    apart = _samples([10, 6, 5])
    alone = pack_mlm_batch(apart, pad_token_id=0, max_len=10)
    padded = pad_mlm_batch(apart, pad_token_id=0)
    assert alone["document_counts"] == [1, 1, 1] and (alone["sequence_id"] == 0).all()
    assert all(torch.equal(alone[k], padded[k]) for k in ("input_ids", "labels", "attention_mask", "token_type_ids"))
    # samples with only input_ids/labels (like pad_mlm_batch accepts)
    minimal = [{"input_ids": np.array([2, 50, 3]), "labels": np.array([-100, 50, -100])},
               {"input_ids": np.array([2, 3])}]
    m = pack_mlm_batch(minimal, pad_token_id=0, max_len=8)
    assert m["attention_mask"].tolist() == [[1] * 5] and m["labels"].tolist() == [[-100, 50, -100, -100, -100]]
    with pytest.raises(ValueError, match="outside the vocabulary"):
        pack_mlm_batch(minimal, pad_token_id=0, max_len=8, vocab_size=40)
    with pytest.raises(ValueError, match="more than max_len=8"):
        pack_mlm_batch(_samples([9]), pad_token_id=0, max_len=8)
    with pytest.raises(ValueError, match="empty batch"):
        pack_mlm_batch([], pad_token_id=0, max_len=8)


def test_padding_fraction_before_and_after_packing():
    samples = _samples([10, 6, 4, 12])
    assert padding_fraction(pad_mlm_batch(samples, pad_token_id=0)) == pytest.approx(1 - 32 / 48)
    assert padding_fraction(pack_mlm_batch(samples, pad_token_id=0, max_len=16)) == 0.0  # [12, 4] and [10, 6]
    assert padding_fraction(pack_mlm_batch(samples, pad_token_id=0, max_len=32, pad_to_max_length=True)) == 0.0
    assert padding_fraction(pack_mlm_batch(samples, pad_token_id=0, max_len=64, pad_to_max_length=True)) == 0.5


def test_composer_counts_documents_and_splits_rows():
    """Composer counts a packed batch's samples as its documents (max_duration in samples, and the count handed to
    StreamingDataset.state_dict on a checkpoint) and splits rows into microbatches with their host lists."""
    from composer.core import DataSpec

    batch = pack_mlm_batch(_samples([12, 5, 30, 3, 9, 20, 7, 16]), pad_token_id=0, max_len=32)
    spec = DataSpec([batch], get_num_samples_in_batch=num_samples_in_batch)
    assert spec.get_num_samples_in_batch(batch) == 8 and batch["input_ids"].shape[0] < 8
    micro = spec.split_batch(batch, 2)
    assert sum(spec.get_num_samples_in_batch(m) for m in micro) == 8
    for m in micro:
        assert len(m["document_counts"]) == len(m["sequence_lengths"]) == m["input_ids"].shape[0]
        assert m["sequence_lengths"] == m["attention_mask"].sum(1).tolist()
    unpacked = pad_mlm_batch(_samples([4, 5]), pad_token_id=0)
    assert num_samples_in_batch(unpacked) == 2


# ---- the packed loader -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    """Documents-mode shards of 80 documents of 3-60 tokens (plus [CLS]/[SEP]) at MAX_LEN, and the tokenizer."""
    root = tmp_path_factory.mktemp("packing")
    tok = load_tokenizer(str(write_vocab(root / "vocab.txt")))
    write_documents(root / "docs.jsonl", num_docs=80, min_words=3, max_words=60)
    convert(out_root=root / "mds", source="local", train_files=str(root / "docs.jsonl"),
            val_files=str(root / "docs.jsonl"), mode="documents", tokenize=True, max_seq_len=MAX_LEN, tokenizer=tok,
            progress=False)
    return root, tok


def _loader(root, tok, *, split="train", remote=None, seed=5, device_batch_size=BATCH, drop_last=True,
            same_masks_every_epoch=False, mlm_probability=0.3, **data):
    """A loader of `split` (an evaluation loader, i.e. unshuffled with fixed masks, with `same_masks_every_epoch`)."""
    data = {"shuffle": True, "num_workers": 0, "max_seq_len": MAX_LEN, **data}
    cfg = DataConfig(local=str(root / "mds"), remote=remote, train_split=split, eval_split=split,
                     mlm_probability=mlm_probability, eval_mlm_probability=mlm_probability, **data)
    return build_mlm_dataloader(cfg, tok, train=not same_masks_every_epoch, batch_size=device_batch_size, seed=seed,
                                drop_last=drop_last)


def _documents(batch) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(input_ids, labels) of every document of a batch, in row order (one per row when unpacked)."""
    out = []
    for r in range(batch["input_ids"].shape[0]):
        n = batch["sequence_lengths"][r]
        ids, labels = batch["input_ids"][r, :n], batch["labels"][r, :n]
        sid = batch["sequence_id"][r, :n] if "sequence_id" in batch else torch.zeros(n, dtype=torch.int64)
        out += [(tuple(ids[sid == j].tolist()), tuple(labels[sid == j].tolist())) for j in range(int(sid.max()) + 1)]
    return out


def test_packed_loader_keeps_every_document_and_its_masks(docs):
    """Packing changes only the layout: each batch holds the same documents, masked the same, in fewer rows."""
    root, tok = docs
    plain = list(_loader(root, tok))
    packed = list(_loader(root, tok, packing=True))
    assert len(plain) == len(packed) > 2
    for p, q in zip(plain, packed):
        assert sorted(_documents(p)) == sorted(_documents(q))
        assert q["input_ids"].shape[0] < p["input_ids"].shape[0] and q["input_ids"].shape[1] <= MAX_LEN
        assert sum(q["document_counts"]) == num_samples_in_batch(q) == BATCH
        assert q["document_counts"] == [int(r.max()) + 1 for r in q["sequence_id"]]
        assert padding_fraction(q) < padding_fraction(p)
    # a packed row's documents each start with [CLS] and end with [SEP]
    q = packed[0]
    for r, n in enumerate(q["sequence_lengths"]):
        sid, ids = q["sequence_id"][r, :n], q["input_ids"][r, :n]
        first = torch.cat([torch.tensor([True]), sid[1:] != sid[:-1]])
        last = torch.cat([sid[1:] != sid[:-1], torch.tensor([True])])
        assert (ids[first] == tok.cls_token_id).all() and (ids[last] == tok.sep_token_id).all()


def test_packed_loader_resumes_mid_epoch(docs):
    """The collator is stateless: resuming from the document count Composer records gives the same packed batches."""
    root, tok = docs
    full = list(_loader(root, tok, packing=True))
    k = 3
    first = _loader(root, tok, packing=True)
    seen = 0
    for i, b in enumerate(first):
        seen += num_samples_in_batch(b)
        if i + 1 == k:
            break
    resumed = _loader(root, tok, packing=True)
    resumed.dataset.load_state_dict(first.dataset.state_dict(num_samples=seen, from_beginning=False))
    rest = list(resumed)
    assert len(rest) == len(full) - k
    for x, y in zip(full[k:], rest):
        assert x.keys() == y.keys()
        assert all(torch.equal(x[key], y[key]) if torch.is_tensor(x[key]) else x[key] == y[key] for key in x)


def test_loaders_built_from_config_pack(docs):
    """data.packing=true: both loaders built from the config yield packed batches; Composer counts documents."""
    from mosaicbert.pretrain.config import load_pretrain_config
    from mosaicbert.pretrain.trainer import build_pretrain_dataloaders

    root, tok = docs
    yaml = Path(__file__).resolve().parents[2] / "yamls" / "quickstart.yaml"
    cfg = load_pretrain_config(str(yaml), [f"data.local={root / 'mds'}", "data.packing=true",
                                                         f"data.max_seq_len={MAX_LEN}", "data.num_workers=0",
                                                         "device_eval_batch_size=16"])
    train, evaluation = build_pretrain_dataloaders(cfg, tok, device_train_batch_size=BATCH, device="cpu")
    for spec, size in ((train, BATCH), (evaluation, 16)):
        batch = next(iter(spec.dataloader))
        assert {"sequence_id", "document_counts"} <= set(batch)
        assert spec.get_num_samples_in_batch(batch) == sum(batch["document_counts"]) == size
        assert batch["input_ids"].shape[0] < size


def test_split_mlm_batch_keeps_rows_and_host_lists_together():
    """Microbatches cut every tensor and per-row list at the same rows; a batch within one microbatch stays whole
    (and without Composer's warning for batches shorter than the microbatch size)."""
    import warnings

    import torch

    from mosaicbert.pretrain.mlm import split_mlm_batch

    batch = {"input_ids": torch.arange(10).view(5, 2), "sequence_lengths": [2, 2, 1, 2, 2],
             "document_counts": [1, 2, 1, 1, 3]}
    micro = split_mlm_batch(batch, 2)
    assert [m["input_ids"].shape[0] for m in micro] == [2, 2, 1]
    assert [m["document_counts"] for m in micro] == [[1, 2], [1, 1], [3]]
    assert torch.equal(torch.cat([m["input_ids"] for m in micro]), batch["input_ids"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert split_mlm_batch(batch, 8) == [batch]
