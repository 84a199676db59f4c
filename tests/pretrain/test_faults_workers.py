"""An error raised in a DataLoader worker of main.py (a damaged shard found by the worker reading it) reaches the user
as the project's own message on one `error:` line, not as torch's "Caught CorruptShardError in DataLoader worker
process 0" with a traceback; MOSAICBERT_DEBUG=1 adds the worker's traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_documents, write_vocab

from mosaicbert.pretrain.convert import convert

ROOT = Path(__file__).resolve().parents[2]


def _main(data: Path, vocab: Path, folder: Path, **env) -> subprocess.CompletedProcess:
    args = [
        "yamls/quickstart.yaml", f"tokenizer={vocab}", f"data.local={data}", "data.max_seq_len=32",
        "data.num_workers=1", "model.config_overrides.vocab_size=320", "model.config_overrides.hidden_size=32",
        "model.config_overrides.num_hidden_layers=1", "model.config_overrides.num_attention_heads=2",
        "model.config_overrides.intermediate_size=64", "global_train_batch_size=8", "device_train_microbatch_size=8",
        "device_eval_batch_size=8", "max_duration=4ba", "eval_interval=4ba", "eval_subset_num_batches=1",
        "precision=fp32", "device=cpu", "callbacks.runtime_estimator=false", f"save_folder={folder}",
    ]
    full_env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), **env}
    full_env.setdefault("MOSAICBERT_CACHE", str(folder.parent / "cache"))
    return subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, env=full_env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.slow
def test_damaged_shard_found_in_a_worker_is_one_error_line(tmp_path):
    write_documents(tmp_path / "docs.jsonl", num_docs=150, min_words=5, max_words=60)
    vocab = write_vocab(tmp_path / "vocab.txt")
    out = tmp_path / "mds"
    convert(out_root=out, source="local", train_files=str(tmp_path / "docs.jsonl"),
            val_files=str(tmp_path / "docs.jsonl"), mode="split", tokenize=True, max_seq_len=32, tokenizer=str(vocab),
            progress=False, compression="zstd", splits=["train", "val"])
    shard = next((out / "train").glob("shard.00000.mds*"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2: len(data) // 2 + 8] = bytes(8)  # same size, other bytes: the worker's hash check fails
    shard.write_bytes(bytes(data))

    proc = _main(out, vocab, tmp_path / "run", MOSAICBERT_DEBUG="0")
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: MDS shard file {shard} does not match its xxh3_64 hash in index.json"), last
    assert "(in DataLoader worker process 0)" in last and "MOSAICBERT_DEBUG=1" in last
    assert "Caught" not in proc.stderr and "Traceback" not in proc.stderr

    debug = _main(out, vocab, tmp_path / "run2", MOSAICBERT_DEBUG="1")
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.strip().splitlines()[-1].startswith(f"error: MDS shard file {shard} does not match")
