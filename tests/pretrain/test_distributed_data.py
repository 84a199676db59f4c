"""Two ranks launched by the composer launcher read disjoint samples of one epoch."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow

SCRIPT = r"""
import json, os, sys
from composer.utils import dist
from mosaicbert.pretrain.config import DataConfig
from mosaicbert.pretrain.mlm import build_mlm_dataloader
from mosaicbert.core.tokenizer import load_tokenizer

dist.initialize_dist("cpu")
tok = load_tokenizer("builtin://python-docs")
data = DataConfig(local="builtin://python-docs", max_seq_len=64, mlm_probability=0.15, num_workers=0)
loader = build_mlm_dataloader(data, tok, train=True, batch_size=8, seed=3)
rows = []
for i, batch in enumerate(loader):
    # Unmasked view of each sample: labels hold the original id where a token was masked.
    ids = batch["input_ids"].clone()
    masked = batch["labels"] != -100
    ids[masked] = batch["labels"][masked]
    rows += [tuple(r[r != tok.pad_token_id].tolist()) for r in ids]
with open(os.path.join(sys.argv[1], f"rank{dist.get_global_rank()}.json"), "w") as f:
    json.dump({"rows": rows, "world": dist.get_world_size()}, f)
"""


def test_ranks_read_disjoint_samples(tmp_path):
    script = tmp_path / "dump_rank_samples.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("MOSAICBERT_CACHE", str(ROOT / ".cache" / "mosaicbert"))
    cmd = [str(Path(sys.executable).parent / "composer"), "-n", "2", "--master_port", "29531", str(script),
           str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0["world"] == rank1["world"] == 2
    a, b = {tuple(r) for r in rank0["rows"]}, {tuple(r) for r in rank1["rows"]}
    assert len(rank0["rows"]) > 50 and len(rank1["rows"]) > 50
    # Distinct chunks can repeat text (docstrings do), so allow a tiny overlap but not a shared stream.
    assert len(a & b) <= 0.02 * min(len(a), len(b)), len(a & b)
