"""Rows that pack several documents (`sequence_id`): CPU fp32 checks against the same documents one per row."""

import pytest
import torch
from helpers import randomize_, tiny_config

from mosaicbert import MosaicBertForMaskedLM, MosaicBertModel
from mosaicbert.model.padding import document_starts, get_unpad_info

DOCS = [5, 9, 3, 7, 4, 1]  # document lengths (tokens, [CLS]/[SEP] included)
ROWS = [[0, 1], [2, 3, 4], [5]]  # which documents each packed row holds (<= 16 tokens per row)
S = 16


def documents(vocab, seed=0, mask_rate=0.4):
    """Per document: token ids [L] and MLM labels [L] (-100 = not masked; at least one masked token each)."""
    g = torch.Generator().manual_seed(seed)
    docs = []
    for n in DOCS:
        ids = torch.randint(1, vocab, (n,), generator=g)
        masked = torch.rand(n, generator=g) < mask_rate
        masked[torch.randint(0, n, (1,), generator=g)] = True
        docs.append((ids, torch.where(masked, ids, torch.full_like(ids, -100))))
    return docs


def layout(docs, rows):
    """Right-padded [R, S] batch of the documents grouped by `rows` (one document per row: [[0], [1], ...])."""
    R = len(rows)
    batch = {k: torch.full((R, S), fill, dtype=torch.long)
             for k, fill in (("input_ids", 0), ("labels", -100), ("attention_mask", 0), ("sequence_id", 0))}
    for r, members in enumerate(rows):
        at = 0
        for j, d in enumerate(members):
            ids, labels = docs[d]
            n = ids.shape[0]
            batch["input_ids"][r, at:at + n] = ids
            batch["labels"][r, at:at + n] = labels
            batch["attention_mask"][r, at:at + n] = 1
            batch["sequence_id"][r, at:at + n] = j
            at += n
    batch["document_counts"] = [len(m) for m in rows]
    batch["sequence_lengths"] = batch["attention_mask"].sum(1).tolist()
    batch["label_counts"] = (batch["labels"] != -100).sum(1).tolist()
    return batch


def loss_and_grads(model, batch, keys):
    model.zero_grad()
    out = model(**{k: batch[k] for k in keys})
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("backend", ["torch", "sdpa"])
@pytest.mark.parametrize("sparse_last_layer", [True, False])
@pytest.mark.parametrize("length_multiple", [0, 8])
@pytest.mark.parametrize("host_counts", [True, False])
def test_packed_rows_equal_one_document_per_row(backend, sparse_last_layer, length_multiple, host_counts):
    cfg = tiny_config(attention_backend=backend, sparse_last_layer=sparse_last_layer,
                      packed_length_multiple=length_multiple)
    model = randomize_(MosaicBertForMaskedLM(cfg)).train()
    docs = documents(cfg.vocab_size)
    counts = ["sequence_lengths", "label_counts"] if host_counts else []
    packed = layout(docs, ROWS)
    single = layout(docs, [[d] for d in range(len(DOCS))])
    out_p, grads_p = loss_and_grads(model, packed, ["input_ids", "attention_mask", "labels", "sequence_id",
                                                    *counts, *(["document_counts"] if host_counts else [])])
    out_s, grads_s = loss_and_grads(model, single, ["input_ids", "attention_mask", "labels", *counts])
    M = int((packed["labels"] != -100).sum())
    # the masked tokens come in the same order (documents in order), so the logits rows line up one to one
    torch.testing.assert_close(out_p.logits[:M], out_s.logits[:M], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out_p.loss, out_s.loss, atol=1e-6, rtol=1e-5)
    assert grads_p.keys() == grads_s.keys() and len(grads_p) == len(list(model.parameters()))
    for name in grads_p:
        torch.testing.assert_close(grads_p[name], grads_s[name], atol=1e-5, rtol=1e-4, msg=name)


@pytest.mark.parametrize("backend", ["torch", "sdpa"])
def test_no_attention_across_documents(backend):
    """Changing one document of a packed row leaves the other documents' outputs exactly as they were, and
    without `sequence_id` (one sequence per row) they do change: the test can see cross-document attention."""
    cfg = tiny_config(attention_backend=backend)
    model = randomize_(MosaicBertModel(cfg, add_pooling_layer=False)).eval()
    docs = documents(cfg.vocab_size)
    batch = layout(docs, ROWS)
    changed = {k: v.clone() if torch.is_tensor(v) else v for k, v in batch.items()}
    changed["input_ids"][1, 3:10] = (changed["input_ids"][1, 3:10] + 7) % cfg.vocab_size  # document 3 of row 1
    others = torch.ones(len(ROWS), S, dtype=torch.bool)
    others[1, 3:10] = False
    others &= batch["attention_mask"].bool()
    keys = ("input_ids", "attention_mask", "sequence_id")
    with torch.no_grad():
        a = model(**{k: batch[k] for k in keys}).last_hidden_state
        b = model(**{k: changed[k] for k in keys}).last_hidden_state
        a_row = model(batch["input_ids"], batch["attention_mask"]).last_hidden_state
        b_row = model(changed["input_ids"], changed["attention_mask"]).last_hidden_state
    torch.testing.assert_close(a[others], b[others], atol=0, rtol=0)
    assert not torch.allclose(a_row[1, :3], b_row[1, :3])  # whole-row attention: document 2 sees document 3


def test_alibi_positions_restart_per_document():
    """A document's hidden states are the same wherever it sits in a packed row (ALiBi distances are taken
    inside the document, not from the row's first token)."""
    cfg = tiny_config(attention_backend="torch")
    model = randomize_(MosaicBertModel(cfg, add_pooling_layer=False)).eval()
    docs = documents(cfg.vocab_size)
    first = layout(docs, [[1, 0]])  # document 1 at position 0
    later = layout(docs, [[0, 1]])  # document 1 after document 0 (5 tokens)
    keys = ("input_ids", "attention_mask", "sequence_id")
    with torch.no_grad():
        h_first = model(**{k: first[k] for k in keys}).last_hidden_state[0, :9]
        h_later = model(**{k: later[k] for k in keys}).last_hidden_state[0, 5:14]
    torch.testing.assert_close(h_first, h_later, atol=1e-5, rtol=1e-4)


def test_cu_seqlens_follow_documents():
    batch = layout(documents(101), ROWS)
    info = get_unpad_info(batch["attention_mask"], sequence_id=batch["sequence_id"])
    assert info.cu_seqlens.tolist() == [0, 5, 14, 17, 24, 28, 29]
    assert info.max_seqlen == 9
    # with the host's count: the same, without a sync
    info2 = get_unpad_info(batch["attention_mask"], with_max_seqlen=False, num_real_tokens=29,
                           sequence_id=batch["sequence_id"], num_sequences=6)
    assert info2.cu_seqlens.tolist() == info.cu_seqlens.tolist()
    starts = document_starts(batch["sequence_id"], batch["attention_mask"])
    assert starts.sum(1).tolist() == batch["document_counts"]


def test_document_counts_are_checked():
    cfg = tiny_config(attention_backend="torch")
    model = MosaicBertForMaskedLM(cfg)
    batch = layout(documents(cfg.vocab_size), ROWS)
    with pytest.raises(ValueError, match="document_counts"):
        model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"], sequence_id=batch["sequence_id"],
              document_counts=[2, 2, 1])
    with pytest.raises(ValueError, match="one count per row"):
        model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"], sequence_id=batch["sequence_id"],
              document_counts=[2, 3])
    with pytest.raises(ValueError, match="without sequence_id"):
        model(batch["input_ids"], batch["attention_mask"], labels=batch["labels"], document_counts=[2, 3, 1])
    with pytest.raises(ValueError, match="sequence_id"):
        model(batch["input_ids"], batch["attention_mask"], sequence_id=batch["sequence_id"][:, :4])


GPU_BACKENDS = ["sdpa", "flex", "flash_attn", "triton"]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("backend", GPU_BACKENDS)
def test_packed_rows_equal_one_document_per_row_gpu_bf16(backend):
    from mosaicbert.model.attention import ATTENTION_BACKENDS

    if not ATTENTION_BACKENDS[backend].installed():
        pytest.skip(f"{backend} is not installed")
    # head dim 64 (the triton kernel's sizes), bf16 autocast, host counts as the collator sends them
    cfg = tiny_config(attention_backend=backend, hidden_size=256, intermediate_size=512)
    model = randomize_(MosaicBertForMaskedLM(cfg)).cuda().train()
    docs = documents(cfg.vocab_size)
    packed, single = layout(docs, ROWS), layout(docs, [[d] for d in range(len(DOCS))])
    results = []
    for batch in (packed, single):
        keys = ["input_ids", "attention_mask", "labels", "sequence_lengths", "label_counts"]
        keys += ["sequence_id", "document_counts"] if batch is packed else []
        args = {k: batch[k].cuda() if torch.is_tensor(batch[k]) else batch[k] for k in keys}
        model.zero_grad()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(**args)
        out.loss.backward()
        results.append((out.loss.float(), {n: p.grad.float().clone() for n, p in model.named_parameters()}))
    (loss_p, grads_p), (loss_s, grads_s) = results
    assert abs(loss_p.item() - loss_s.item()) < 2e-2 * max(1.0, abs(loss_s.item()))
    for name, g in grads_s.items():
        assert ((grads_p[name] - g).norm() / g.norm().clamp_min(1e-6)).item() < 5e-2, name


@pytest.mark.slow
def test_long_context_continuation_from_128_token_checkpoint(tmp_path):
    """The long-context recipe end to end on CPU: documents shards, a 128-token run, then yamls/base-1024.yaml (at 512
    here, packed) from its checkpoint, evaluated before its first batch; the held-out loss at 512 falls."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.setdefault("MOSAICBERT_CACHE", str(root / ".cache" / "mosaicbert"))
    tiny = ["precision=fp32", "device=cpu", "data.num_workers=0", "tokenizer=builtin://python-docs",
            "model.config_overrides={vocab_size: 8192, hidden_size: 128, num_hidden_layers: 2, num_attention_heads: 4, "
            "intermediate_size: 512}", "eval_subset_num_batches=2", "loggers.console_log_interval=5ba"]

    def run(*cmd):
        proc = subprocess.run([sys.executable, *cmd], cwd=root, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc

    docs = tmp_path / "docs"
    run("-m", "mosaicbert.pretrain.convert", "--source", "builtin", "--tokenizer", "builtin://python-docs",
        "--out_root", str(docs), "--mode", "documents", "--tokenize", "--max_seq_len", "512")
    short = tmp_path / "short"
    run("main.py", "yamls/quickstart.yaml", f"data.local={docs}", "data.max_seq_len=128", f"save_folder={short}",
        "max_duration=30ba", "save_interval=30ba", "eval_interval=30ba", *tiny)
    long = tmp_path / "long"
    run("main.py", "yamls/base-1024.yaml", f"data.local={docs}", "data.max_seq_len=512", f"save_folder={long}",
        f"model.pretrained_checkpoint={short}/latest-rank0.pt", "global_train_batch_size=16",
        "device_train_microbatch_size=8", "device_eval_batch_size=16", "optimizer.lr=2e-3", "max_duration=20ba",
        "eval_interval=20ba", "save_interval=20ba", *tiny)
    evals = [json.loads(line) for line in (long / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["batch"], r["eval/LanguageCrossEntropy"]) for r in evals if "eval/LanguageCrossEntropy" in r]
    assert [b for b, _ in evals] == [0, 20], evals
    assert evals[1][1] < evals[0][1], evals
