"""finetune.py task embedding: config checks, and a tiny contrastive run that saves a sentence-transformers folder."""

import json
import subprocess
import sys

import pytest
from helpers import ROOT

from mosaicbert.core.config import ConfigError
from mosaicbert.finetune.config import load_finetune_config

YAML = str(ROOT / "yamls/finetune/embedding.yaml")


def test_embedding_yaml_loads_and_bad_settings_are_named(monkeypatch):
    monkeypatch.chdir(ROOT)
    cfg = load_finetune_config(YAML)
    assert cfg.task == "embedding" and cfg.data.columns.negatives == ["negative"]
    for overrides, key in ((["device_train_microbatch_size=16"], "embedding.cached_chunk_size"),
                           (["metrics=[stsb_spearman]"], "embedding.stsb_file"),
                           (["embedding.pooling=max"], "embedding.pooling"),
                           (["embedding.scale=500"], "embedding.max_scale"),
                           (["embedding.cached_chunk_size=0"], "embedding.cached_chunk_size")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_finetune_config(YAML, overrides)


@pytest.mark.slow
def test_contrastive_run_saves_a_sentence_transformers_folder(tmp_path, mosaicbert_cache):
    out = tmp_path / "run"
    cmd = [sys.executable, "finetune.py", YAML, f"save_folder={out}", "data.max_train_samples=96",
           "data.max_eval_samples=64", "max_duration=2ep", "eval_interval=1ep", "batch_size=32",
           "embedding.cached_chunk_size=12", "embedding.learnable_scale=true", "data.max_seq_len=48"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((out / "results.json").read_text())
    assert [e["batch"] for e in results["evaluations"]] == [0, 3, 6]
    assert results["final_scale"] != 20.0  # the learnable temperature moved
    best = out / "best_model"
    for name in ("config.json", "model.safetensors", "tokenizer.json", "modules.json", "sentence_bert_config.json",
                 "1_Pooling/config.json", "modeling_mosaic_bert.py"):
        assert (best / name).is_file(), name
    assert json.loads((best / "config.json").read_text())["auto_map"]["AutoModel"].endswith("MosaicBertModel")
