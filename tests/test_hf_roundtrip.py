"""save_pretrained -> AutoModel*.from_pretrained(trust_remote_code=True) in a process that cannot import
mosaicbert: the copied model files must be self-contained and give bit-identical logits."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mosaicbert import MosaicBertConfig, MosaicBertForMaskedLM, MosaicBertForSequenceClassification

CHILD = textwrap.dedent(
    """
    import importlib.abc, sys

    class BlockMosaicBert(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "mosaicbert" or name.startswith("mosaicbert."):
                raise ImportError("mosaicbert is blocked in this process")
            return None

    sys.meta_path.insert(0, BlockMosaicBert())

    import torch
    import transformers

    autos = {"mlm": transformers.AutoModelForMaskedLM, "clf": transformers.AutoModelForSequenceClassification}
    for job in sys.argv[1:]:  # each job: kind,model_dir,inputs_path,out_path
        kind, model_dir, inputs_path, out_path = job.split(",")
        model = autos[kind].from_pretrained(model_dir, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = torch.load(inputs_path)
        with torch.no_grad():
            logits = model(**inputs).logits
        torch.save(logits, out_path)
    assert not any(m == "mosaicbert" or m.startswith("mosaicbert.") for m in sys.modules)
    """
)


def _child_env(tmp_path):
    env = dict(os.environ)
    src = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "src"))
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and os.path.abspath(p) != src]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["HF_HUB_OFFLINE"] = "1"
    env["HF_MODULES_CACHE"] = str(tmp_path / "hf_modules")  # fresh copy of the remote code every run
    env["TRANSFORMERS_VERBOSITY"] = "error"
    return env


def _save(tmp_path, kind):
    torch.manual_seed(0)
    cfg = MosaicBertConfig(
        vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=12, intermediate_size=64,
        alibi_starting_size=16, num_labels=3,
    )
    model = (MosaicBertForMaskedLM if kind == "mlm" else MosaicBertForSequenceClassification)(cfg).eval()
    with torch.no_grad():  # make every parameter nonzero/non-trivial, including biases and LayerNorms
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model_dir = tmp_path / f"model_{kind}"
    model.save_pretrained(model_dir)

    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["model_type"] == "mosaic_bert"
    auto_map = saved["auto_map"]
    assert auto_map["AutoConfig"] == "configuration_mosaic_bert.MosaicBertConfig"
    # save_pretrained records the auto class of the saved model (plus AutoConfig)
    if kind == "mlm":
        assert auto_map["AutoModelForMaskedLM"] == "modeling_mosaic_bert.MosaicBertForMaskedLM"
    else:
        assert auto_map["AutoModelForSequenceClassification"] == (
            "modeling_mosaic_bert.MosaicBertForSequenceClassification"
        )
    for f in ["configuration_mosaic_bert.py", "modeling_mosaic_bert.py", "attention.py", "padding.py", "layers.py"]:
        assert (model_dir / f).exists(), f

    ids = torch.randint(1, cfg.vocab_size, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    mask[2, 5:] = 0
    token_type_ids = (torch.arange(20) >= 10).long()[None].expand(3, -1) * mask
    inputs = {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": token_type_ids}
    torch.save(inputs, tmp_path / f"inputs_{kind}.pt")
    with torch.no_grad():
        expected = model(**inputs).logits

    return f"{kind},{model_dir},{tmp_path / f'inputs_{kind}.pt'},{tmp_path / f'out_{kind}.pt'}", expected


@pytest.mark.slow
def test_remote_code_round_trip(tmp_path):
    # both models in one child process: importing torch + transformers dominates the cost
    jobs, expected = zip(*[_save(tmp_path, kind) for kind in ("mlm", "clf")])
    (tmp_path / "child.py").write_text(CHILD)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "child.py"), *jobs],
        cwd=tmp_path, env=_child_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for job, exp in zip(jobs, expected):
        got = torch.load(job.split(",")[3])
        assert got.shape == exp.shape
        assert torch.equal(got, exp), job
