"""The streaming MLM dataloader: shapes, label/mask consistency, determinism, resumption and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import WORDS, write_documents, write_vocab

from mosaicbert.core.tokenizer import load_tokenizer
from mosaicbert.pretrain.config import DataConfig
from mosaicbert.pretrain.convert import convert
from mosaicbert.pretrain.masking import IGNORE_INDEX
from mosaicbert.pretrain.mlm import CorruptShardError, DatasetMismatchError, build_mlm_dataloader, pad_mlm_batch

MAX_LEN = 32
BATCH = 8


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    root = tmp_path_factory.mktemp("mlm")
    tok = load_tokenizer(str(write_vocab(root / "vocab.txt")))
    write_documents(root / "docs.jsonl", num_docs=60, min_words=5, max_words=80)
    for name, tokenize in (("raw", False), ("tok", True)):
        convert(out_root=root / name, source="local", train_files=str(root / "docs.jsonl"),
                val_files=str(root / "docs.jsonl"), mode="split", tokenize=tokenize, max_seq_len=MAX_LEN,
                tokenizer=tok, progress=False)
    return root, tok


@pytest.fixture(scope="module")
def docs2048(toy):
    """`--mode documents --max_seq_len 2048` shards of documents of up to 3000 tokens; (folder, stored samples)."""
    root, tok = toy
    rng = np.random.default_rng(3)
    with open(root / "long.jsonl", "w") as fh:
        for n in (3000, 40, 2046, 700, 5, 2500, 130, 126):
            fh.write(json.dumps({"text": " ".join(WORDS[w] for w in rng.integers(0, len(WORDS), size=n))}) + "\n")
    convert(out_root=root / "docs2048", source="local", train_files=str(root / "long.jsonl"),
            val_files=str(root / "long.jsonl"), mode="documents", tokenize=True, max_seq_len=2048, tokenizer=tok,
            progress=False)
    from streaming import StreamingDataset

    raw = StreamingDataset(local=str(root / "docs2048"), split="train", batch_size=1, shuffle=False)
    return root / "docs2048", [raw[i]["input_ids"].tolist() for i in range(raw.num_samples)]


def _loader(local, tok, *, split="train", remote=None, seed=7, device_batch_size=BATCH, drop_last=False,
            same_masks_every_epoch=False, mlm_probability=0.3, **data):
    """A loader of `split` (an evaluation loader, i.e. unshuffled with fixed masks, with `same_masks_every_epoch`)."""
    data = {"shuffle": True, "num_workers": 0, "max_seq_len": MAX_LEN, **data}
    cfg = DataConfig(local=str(local), remote=remote, train_split=split, eval_split=split,
                     mlm_probability=mlm_probability, eval_mlm_probability=mlm_probability, **data)
    return build_mlm_dataloader(cfg, tok, train=not same_masks_every_epoch, batch_size=device_batch_size, seed=seed,
                                drop_last=drop_last)


def _same_batch(x, y) -> bool:
    """Equal keys and values (tensors, or the per-row host counts as lists)."""
    return x.keys() == y.keys() and all(
        torch.equal(x[k], y[k]) if torch.is_tensor(x[k]) else x[k] == y[k] for k in x)


def _batches(loader, n=None):
    out = []
    for i, b in enumerate(loader):
        if n is not None and i >= n:
            break
        out.append(b)
    return out


@pytest.mark.parametrize("kind", ["raw", "tok"])
def test_batches_shapes_and_consistency(toy, kind):
    root, tok = toy
    rng_before = torch.get_rng_state()
    batches = _batches(_loader(root / kind, tok))
    assert torch.equal(rng_before, torch.get_rng_state()), "the global torch RNG must not be consumed"
    assert sum(b["input_ids"].shape[0] for b in batches) == len(_loader(root / kind, tok).dataset)
    special = torch.tensor([tok.pad_token_id, tok.cls_token_id, tok.sep_token_id, tok.mask_token_id, tok.unk_token_id])
    n_sel = n_elig = 0
    for b in batches:
        assert set(b) == {"input_ids", "labels", "attention_mask", "token_type_ids", "sequence_lengths", "label_counts"}
        ids, labels, am, tt = b["input_ids"], b["labels"], b["attention_mask"], b["token_type_ids"]
        assert all(b[k].dtype == torch.int64 for k in ("input_ids", "labels", "attention_mask", "token_type_ids"))
        assert b["sequence_lengths"] == am.sum(1).tolist()
        assert b["label_counts"] == (labels != IGNORE_INDEX).sum(1).tolist()
        assert ids.shape == labels.shape == am.shape == tt.shape
        assert ids.shape[0] <= BATCH and ids.shape[1] <= MAX_LEN
        assert ids.shape[1] == int(am.sum(1).max())  # padded to the longest in the batch
        assert (tt == 0).all()
        assert (ids[am == 0] == tok.pad_token_id).all() and (labels[am == 0] == IGNORE_INDEX).all()
        assert (ids[:, 0] == tok.cls_token_id).all()
        last = am.sum(1) - 1
        assert (ids[torch.arange(len(ids)), last] == tok.sep_token_id).all()
        selected = labels != IGNORE_INDEX
        assert ((ids == tok.mask_token_id) <= selected).all()  # every [MASK] is a prediction target
        assert not torch.isin(labels[selected], special).any()
        assert (ids.max() < len(tok)) and (ids.min() >= 0)
        eligible = (am == 1) & ~torch.isin(ids, special) | selected
        n_sel += int(selected.sum())
        n_elig += int(eligible.sum())
    assert 0.2 < n_sel / n_elig < 0.4


def test_pad_to_max_length(toy):
    root, tok = toy
    b = _batches(_loader(root / "tok", tok, pad_to_max_length=True), 1)[0]
    assert b["input_ids"].shape == (BATCH, MAX_LEN)


def test_same_seed_same_batches_different_seed_differs(toy):
    root, tok = toy
    a = _batches(_loader(root / "raw", tok))
    b = _batches(_loader(root / "raw", tok))
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert _same_batch(x, y)
    c = _batches(_loader(root / "raw", tok, seed=8))
    assert not all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, c))


def test_masks_independent_of_workers(toy):
    root, tok = toy
    a = _batches(_loader(root / "tok", tok, shuffle=False, drop_last=True))
    b = _batches(_loader(root / "tok", tok, shuffle=False, drop_last=True, num_workers=2))
    key = lambda bs: sorted(tuple(r.tolist()) for bb in bs for r in torch.cat([bb["input_ids"], bb["labels"]], 1))  # noqa: E731
    assert key(a) == key(b)


def test_new_epoch_new_masks(toy):
    root, tok = toy
    loader = _loader(root / "tok", tok, shuffle=False)
    e0 = _batches(loader)
    e1 = _batches(loader)
    assert loader.dataset.current_epoch == 1
    assert all(torch.equal(torch.ne(x["labels"], -100) | torch.ne(x["input_ids"], 0), torch.ne(y["labels"], -100)
                           | torch.ne(y["input_ids"], 0)) for x, y in zip(e0, e1))  # same samples/lengths
    assert not all(torch.equal(x["labels"], y["labels"]) for x, y in zip(e0, e1))


def test_mid_epoch_resume_gives_identical_batches(toy):
    root, tok = toy
    full = _batches(_loader(root / "raw", tok))
    k = 3
    first = _loader(root / "raw", tok)
    _batches(first, k)
    state = first.dataset.state_dict(num_samples=k * BATCH, from_beginning=False)
    resumed = _loader(root / "raw", tok)
    resumed.dataset.load_state_dict(state)
    rest = _batches(resumed)
    assert len(rest) == len(full) - k
    for x, y in zip(full[k:], rest):
        assert _same_batch(x, y)


def test_builtin_corpus_loader(mosaicbert_cache):
    tok = load_tokenizer("builtin://python-docs")
    data = DataConfig(local="builtin://python-docs", train_split="val", max_seq_len=64, mlm_probability=0.15,
                      num_workers=0)
    loader = build_mlm_dataloader(data, tok, train=True, batch_size=4, seed=1)
    b = next(iter(loader))
    assert b["input_ids"].shape[0] == 4 and b["input_ids"].shape[1] <= 64
    assert (b["input_ids"] < 8192).all()
    unk = (b["input_ids"] == tok.unk_token_id) & (b["attention_mask"] == 1)
    assert unk.float().mean() < 0.05
    assert (mosaicbert_cache / "builtin").is_dir()


def test_missing_and_empty_folders(toy, tmp_path):
    _, tok = toy
    with pytest.raises(FileNotFoundError, match=r"nowhere.*mosaicbert\.pretrain\.convert"):
        _loader(tmp_path / "nowhere", tok)
    (tmp_path / "root").mkdir()
    with pytest.raises(FileNotFoundError, match=r"train.*does not exist"):
        _loader(tmp_path / "root", tok)
    (tmp_path / "root" / "train").mkdir()
    with pytest.raises(FileNotFoundError, match=r"train.*empty"):
        _loader(tmp_path / "root", tok)
    (tmp_path / "root" / "train" / "shard.00000.mds").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="index.json"):
        _loader(tmp_path / "root", tok)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("compression", ["zstd", None])
def test_corrupt_shard(toy, tmp_path, compression):
    root, tok = toy
    out = tmp_path / "mds"
    convert(out_root=out, source="local", train_files=str(root / "docs.jsonl"), val_files=str(root / "docs.jsonl"),
            mode="split", tokenize=True, max_seq_len=MAX_LEN, tokenizer=tok, progress=False, compression=compression,
            splits=["train"])
    shards = [p for p in (out / "train").iterdir() if p.name.startswith("shard.")]
    assert len(shards) == 1
    data = shards[0].read_bytes()
    # Keep the size (some readers check it), scramble the content.
    noise = np.random.default_rng(0).integers(0, 256, len(data) - 4, dtype=np.uint8)
    shards[0].write_bytes(bytes(reversed(data[:4])) + bytes(noise))
    with pytest.raises(CorruptShardError, match=r"shard\.00000\.mds") as info:
        _batches(_loader(out, tok, num_workers=0))
    assert "re-run" in str(info.value)
    # The other order of the race: streaming's background thread meets the bad shard first; a reader that
    # then asks for the shard must get the error too, not wait forever for a shard stuck in "preparing".
    ds = _loader(out, tok).dataset
    if compression is not None:  # (uncompressed shards fail on decoding, not in prepare_shard)
        with pytest.raises(CorruptShardError):
            ds.prepare_shard(0, blocking=False)
        ds._mlm_shard_error = None  # (as if the error were raised in another thread/worker)
    with pytest.raises(CorruptShardError):
        ds[0]


def test_collator_validates_vocab():
    samples = [{"input_ids": np.array([2, 50, 3]), "labels": np.array([-100, 50, -100])},
               {"input_ids": np.array([2, 3]), "labels": np.array([-100, -100])}]
    b = pad_mlm_batch(samples, pad_token_id=0, vocab_size=100)
    assert b["input_ids"].tolist() == [[2, 50, 3], [2, 3, 0]]
    assert b["labels"].tolist() == [[-100, 50, -100], [-100, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["sequence_lengths"] == [3, 2] and b["label_counts"] == [1, 0]  # host counts for the model
    assert pad_mlm_batch(samples, pad_token_id=0, pad_to=5)["input_ids"].shape == (2, 5)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        pad_mlm_batch(samples, pad_token_id=0, vocab_size=40)
    with pytest.raises(ValueError, match="pad_to"):
        pad_mlm_batch(samples, pad_token_id=0, pad_to=2)


def test_host_counts_follow_composer_microbatches():
    """Composer moves the batch to the device (the lists stay on the host) and splits it into microbatches:
    each microbatch keeps the counts of its own rows, and Composer counts the samples right."""
    from composer.core import DataSpec
    from composer.devices import DeviceCPU

    rng = np.random.default_rng(0)
    samples = [{"input_ids": rng.integers(5, 90, n), "labels": np.where(rng.random(n) < 0.4, 7, -100)}
               for n in (5, 3, 8, 1, 6)]
    batch = DeviceCPU().batch_to_device(pad_mlm_batch(samples, pad_token_id=0, vocab_size=100))
    from mosaicbert import MosaicBertConfig, MosaicBertForMaskedLM
    from mosaicbert.core.models import MaskedLMModel

    model = MaskedLMModel(MosaicBertForMaskedLM(MosaicBertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                                                 num_attention_heads=2, intermediate_size=32)))
    assert {"sequence_lengths", "label_counts"} <= set(model.model_forward_args)  # Composer passes them on
    spec = DataSpec([batch])
    assert spec.get_num_samples_in_batch(batch) == 5
    micro = spec.split_batch(batch, 2)
    assert [len(m["sequence_lengths"]) for m in micro] == [2, 2, 1]
    for m in micro:
        assert m["sequence_lengths"] == m["attention_mask"].sum(1).tolist()
        assert m["label_counts"] == (m["labels"] != -100).sum(1).tolist()


def test_remote_shards_are_cached_into_local(toy, tmp_path):
    """`remote` (s3://, gs://, https:// — or any folder streaming can read) is downloaded into `local`; the batches
    equal those read from the shards directly."""
    root, tok = toy
    cache = tmp_path / "cache"
    from_remote = _batches(_loader(cache, tok, remote=str(root / "tok"), shuffle=False))
    direct = _batches(_loader(root / "tok", tok, shuffle=False))
    assert (cache / "train" / "index.json").exists() and list((cache / "train").glob("shard.*.mds*"))
    assert len(from_remote) == len(direct)
    for x, y in zip(from_remote, direct):
        assert _same_batch(x, y)


def test_eval_masks_are_the_same_every_epoch(toy):
    root, tok = toy
    loader = _loader(root / "tok", tok, shuffle=False, same_masks_every_epoch=True)
    first, second = _batches(loader), _batches(loader)
    assert all(torch.equal(x["labels"], y["labels"]) for x, y in zip(first, second))


def test_eval_metrics_ignore_the_dummy_logit_rows():
    """With packed_length_multiple the masked-only head returns dummy rows after the real ones: the Composer
    model's eval metrics give the same values as without them."""
    import copy

    from mosaicbert import MosaicBertConfig, MosaicBertForMaskedLM
    from mosaicbert.core.models import MaskedLMModel

    rng = np.random.default_rng(1)
    samples = [{"input_ids": rng.integers(5, 90, n), "labels": np.where(rng.random(n) < 0.4, 7, -100)}
               for n in (5, 3, 8)]
    batch = pad_mlm_batch(samples, pad_token_id=0, vocab_size=100)
    net = MosaicBertForMaskedLM(MosaicBertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=1,
                                                 num_attention_heads=2, intermediate_size=32)).eval()
    rounded = copy.deepcopy(net)
    rounded.config.packed_length_multiple = 16
    values = []
    for m in (MaskedLMModel(net), MaskedLMModel(rounded)):
        metrics = m.get_metrics(is_train=False)
        outputs = m.eval_forward(batch)
        for metric in metrics.values():
            m.update_metric(batch, outputs, metric)
        values.append({name: float(metric.compute()) for name, metric in metrics.items()})
    assert values[1].keys() == values[0].keys() and len(values[0]) == 2
    for name in values[0]:
        assert values[1][name] == pytest.approx(values[0][name], rel=1e-5), name


def _unmasked_rows(batches) -> list[list[int]]:
    """The original (unmasked) real tokens of every row."""
    rows = []
    for b in batches:
        ids = torch.where(b["labels"] != IGNORE_INDEX, b["labels"], b["input_ids"])
        rows += [r[:n].tolist() for r, n in zip(ids, b["sequence_lengths"])]
    return rows


def test_documents_shards_serve_shorter_runs(toy, docs2048):
    """One set of documents-mode shards at 2048: a run at 2048 sees each stored sample whole, a run at 128 sees each
    truncated to 128 tokens with its [CLS] and [SEP]."""
    _, tok = toy
    folder, stored = docs2048
    assert max(len(x) for x in stored) == 2048 and len(stored) == 10  # (3000 and 2500 tokens: two chunks each)
    whole = _unmasked_rows(_batches(_loader(folder, tok, shuffle=False, max_seq_len=2048)))
    assert whole == stored
    short = _batches(_loader(folder, tok, shuffle=False, max_seq_len=128))
    assert all(b["input_ids"].shape[1] <= 128 for b in short)
    assert _unmasked_rows(short) == [x if len(x) <= 128 else x[:127] + [tok.sep_token_id] for x in stored]


@pytest.mark.parametrize("kind", ["raw", "tok"])
def test_run_longer_than_the_shards_is_refused(toy, kind):
    """Split shards made at 32 tokens hold nothing longer: a run at 64 is an error naming the folder, both lengths
    and the conversion that makes longer samples."""
    root, tok = toy
    with pytest.raises(DatasetMismatchError) as info:
        _loader(root / kind, tok, max_seq_len=2 * MAX_LEN)
    msg = str(info.value)
    assert str(root / kind / "train") in msg and "--mode split --max_seq_len 32" in msg
    assert "data.max_seq_len=64" in msg and "--mode documents --tokenize --max_seq_len 64" in msg
    assert len(_loader(root / kind, tok, max_seq_len=MAX_LEN // 2).dataset) > 0  # shorter runs are fine


def test_run_longer_than_documents_shards_is_refused(toy, docs2048):
    """Documents-mode shards chunk documents at their stored length too: a 4096 run on 2048 shards is refused."""
    _, tok = toy
    with pytest.raises(DatasetMismatchError, match=r"--mode documents --max_seq_len 2048.*--max_seq_len 4096"):
        _loader(docs2048[0], tok, max_seq_len=4096)


def test_pad_mlm_batch_equals_a_plain_loop():
    rng = np.random.default_rng(4)
    samples = []
    for n in rng.integers(1, 40, size=17):
        samples.append({"input_ids": rng.integers(5, 300, size=n), "labels": rng.integers(-100, 300, size=n)})
    samples[3]["labels"][:] = IGNORE_INDEX
    for pad_to in (None, 48):
        got = pad_mlm_batch(samples, pad_token_id=0, pad_to=pad_to)
        length = pad_to or max(len(s["input_ids"]) for s in samples)
        for key, fill in (("input_ids", 0), ("labels", IGNORE_INDEX), ("attention_mask", 0), ("token_type_ids", 0)):
            want = torch.full((len(samples), length), fill, dtype=torch.long)
            for i, s in enumerate(samples):
                n = len(s["input_ids"])
                want[i, :n] = torch.as_tensor(s[key]) if key in s else (1 if key == "attention_mask" else 0)
            assert torch.equal(got[key], want), key
        assert got["sequence_lengths"] == [len(s["input_ids"]) for s in samples]
        assert got["label_counts"] == [int((s["labels"] != IGNORE_INDEX).sum()) for s in samples]


def test_raw_text_is_tokenized_like_truncation_of_the_whole_text(tmp_path, shared_data, bert_tokenizer):
    """The loader tokenizes only the prefix of a raw-text sample that max_seq_len needs, with the ids of
    tokenizer(text, truncation=True, max_length=max_seq_len)."""
    from mosaicbert.pretrain.convert import iter_documents, resolve_files

    docs = list(iter_documents(resolve_files(str(shared_data / "text" / "validation" / "*.json.gz"))))[:60]
    docs += ["unbelievable " * 300, "x" * 4000, "a", "caf\u00e9 na\u00efve " * 100]
    with open(tmp_path / "docs.jsonl", "w") as fh:
        fh.writelines(json.dumps({"text": d}) + "\n" for d in docs)
    # Split mode at 2048 stores long raw-text spans: a run at 128 tokenizes a prefix of each.
    convert(out_root=tmp_path / "mds", source="local", train_files=str(tmp_path / "docs.jsonl"),
            val_files=str(tmp_path / "docs.jsonl"), splits=["train"], mode="split", max_seq_len=2048,
            tokenizer=bert_tokenizer, progress=False, workers=1)
    ds = _loader(tmp_path / "mds", bert_tokenizer, max_seq_len=128).dataset
    texts = [ds._read(i)["text"] for i in range(ds.num_samples)]
    for text in texts:
        want = bert_tokenizer(text, truncation=True, max_length=128, verbose=False)["input_ids"]
        assert ds.tokenize_sample({"text": text}).tolist() == want


@pytest.mark.parametrize("compression", [None, "zstd"])
@pytest.mark.parametrize("tokenize", [False, True])
def test_mapped_reads_equal_streaming_reads(tmp_path, toy, tokenize, compression):
    """Samples read from the kept-open memory maps are streaming's own samples, with several shards, when the maps are
    few enough to be closed and reopened, and streaming reads them itself under a cache limit."""
    from streaming import StreamingDataset

    root, tok = toy
    convert(out_root=tmp_path / "mds", source="local", train_files=str(root / "docs.jsonl"),
            val_files=str(root / "docs.jsonl"), mode="split", tokenize=tokenize, max_seq_len=MAX_LEN, tokenizer=tok,
            progress=False, splits=["train"], size_limit=2048, compression=compression)
    want = StreamingDataset(local=str(tmp_path / "mds"), split="train", batch_size=1, shuffle=False)
    assert want.num_shards > 3
    column = "input_ids" if tokenize else "text"
    ds = _loader(tmp_path / "mds", tok).dataset
    ds.MAX_OPEN_MAPS = 2
    order = np.random.default_rng(0).permutation(want.num_samples).tolist()
    for i in order:
        got, expected = ds._read(i)[column], want[i][column]
        assert (got.tolist() == expected.tolist()) if tokenize else got == expected
    assert 0 < len(ds._mlm_maps) <= 2
    assert ds._mapped_sample(*ds.spanner[0]) is not None
    ds.cache_limit = 10**9  # streaming evicts and re-downloads shards of a limited cache: it reads them itself
    ds._mlm_maps.clear()
    assert ds._mapped_sample(*ds.spanner[0]) is None


@pytest.mark.parametrize("packing", [False, True])
def test_batch_masking_equals_masking_each_sample(toy, packing):
    """The loader masks each batch in its collator; every row holds exactly the masks that the dataset gives each of
    its samples alone (dataset[i], a pure function of seed, epoch and sample index)."""
    from mosaicbert.pretrain.mlm import MLMStreamingDataset

    root, tok = toy
    loader = _loader(root / "raw", tok, shuffle=False, packing=packing)
    assert loader.dataset.mask_in_collator
    alone = MLMStreamingDataset(tokenizer=tok, max_seq_len=MAX_LEN, mlm_probability=0.3, mask_seed=7,
                                local=str(root / "raw"), split="train", batch_size=BATCH, shuffle=False)
    got = []
    for b in _batches(loader):
        docs = b.get("sequence_id", torch.zeros_like(b["input_ids"]))
        for ids, lab, m, doc in zip(b["input_ids"], b["labels"], b["attention_mask"].bool(), docs):
            for d in doc[m].unique().tolist():  # each document of the row (one per row without packing)
                part = m & (doc == d)
                got.append((ids[part].tolist(), lab[part].tolist()))
    samples = [alone[i] for i in range(alone.num_samples)]
    want = [(s["input_ids"].tolist(), s["labels"].tolist()) for s in samples]
    if packing:  # (packing reorders the documents of a batch into rows)
        got, want = sorted(got), sorted(want)
    assert got == want
    assert sum(lab != IGNORE_INDEX for _, labs in want for lab in labs) > 0
    with pytest.raises(ValueError, match="masker"):
        pad_mlm_batch([{"input_ids": np.array([2, 50, 3]), "mask_key": 5}], pad_token_id=0)
