"""The first hour with your own text, end to end on CPU: a folder of .txt and .jsonl files -> one convert command
-> one train command (no vocabulary override) -> export -> glue.py and finetune.py from that checkpoint with its own
tokenizer. A new run_name trains; other data under the same run name is refused, naming the key."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, write_own_text

pytestmark = pytest.mark.slow

TRAIN = ["max_duration=30ba", "eval_interval=15ba", "save_interval=15ba", "eval_subset_num_batches=1",
         "data.num_workers=0", "device=cpu"]


def _run(args, cache, check=True):
    env = {**os.environ, "MOSAICBERT_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    if check:
        assert proc.returncode == 0, f"{args}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def _best(folder: Path) -> float:
    results = json.loads((folder / "results.json").read_text())
    return results["best"]["metrics"][results["main_metric"]]


def test_own_text_to_glue_and_finetune(tmp_path, mosaicbert_cache):
    text = write_own_text(tmp_path / "my-text")
    data, runs = tmp_path / "data", tmp_path / "runs"
    _run(["-m", "mosaicbert.pretrain.convert", "--source", "local", "--train_files", str(text),
          "--tokenizer", "builtin://python-docs", "--out_root", str(data), "--no_progress"], mosaicbert_cache)
    assert (data / "train" / "index.json").is_file() and (data / "val" / "index.json").is_file()

    train = ["main.py", "yamls/quickstart.yaml", f"data.local={data}", "run_name=mine",
             f"save_folder={runs / 'mine'}", *TRAIN]
    out = _run(train, mosaicbert_cache).stdout
    assert "run 'mine' finished: 30 batches" in out and "export: python -m mosaicbert.export" in out
    checkpoint = runs / "mine" / "latest-rank0.pt"
    assert (runs / "mine" / "config.yaml").is_file() and checkpoint.is_file()

    # the same run name with other data: refused before anything in the folder changes, naming the key
    before = (runs / "mine" / "metrics.jsonl").read_text()
    other = _run([*train[:2], "data.local=builtin://python-docs", *train[3:]], mosaicbert_cache, check=False)
    assert other.returncode == 2 and "data.local" in other.stderr and "another run_name" in other.stderr
    assert (runs / "mine" / "metrics.jsonl").read_text() == before
    # a new run name is a new run
    again = _run(["main.py", "yamls/quickstart.yaml", f"data.local={data}", "run_name=mine-2",
                  f"save_folder={runs / 'mine-2'}", *TRAIN[1:], "max_duration=4ba"], mosaicbert_cache)
    assert "run 'mine-2' finished: 4 batches" in again.stdout

    _run(["-m", "mosaicbert.export", str(checkpoint), str(tmp_path / "exported")], mosaicbert_cache)

    # GLUE from the checkpoint: its shape and tokenizer (tokenizer=null), every job starts from it
    glue = ["glue.py", "yamls/glue/quickstart.yaml", "tokenizer=null", "tasks_to_run=[rte]", "tasks.rte.seeds=[19]",
            "max_duration=4ba", "device=cpu"]
    for source in (checkpoint, tmp_path / "exported"):
        folder = tmp_path / "glue" / source.name
        _run([*glue, f"model.pretrained_checkpoint={source}", f"save_folder={folder}"], mosaicbert_cache)
        results = json.loads((folder / "results.json").read_text())
        assert [(j["init_kind"], j["status"]) for j in results["jobs"]] == [("pretrained", "ok")], results["jobs"]
    # an encoder that does not fit the config is an error, never a score
    wrong = _run([*glue, f"model.pretrained_checkpoint={checkpoint}", "model.name=hf_bert",
                  f"save_folder={tmp_path / 'glue-wrong'}"], mosaicbert_cache, check=False)
    assert wrong.returncode == 2 and "model.name" in wrong.stderr
    assert not (tmp_path / "glue-wrong" / "results.json").exists()

    # the shipped classification example from the checkpoint (its tokenizer), against random init
    finetune = ["finetune.py", "yamls/finetune/classification.yaml", "device=cpu"]
    _run([*finetune, f"model.pretrained_checkpoint={checkpoint}", "tokenizer=null",
          f"save_folder={tmp_path / 'ft-pretrained'}"], mosaicbert_cache)
    _run([*finetune, f"save_folder={tmp_path / 'ft-random'}"], mosaicbert_cache)
    assert _best(tmp_path / "ft-pretrained") >= max(_best(tmp_path / "ft-random"), 0.75)
