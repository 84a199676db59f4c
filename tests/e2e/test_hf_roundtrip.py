"""save_pretrained -> AutoModel*.from_pretrained(trust_remote_code=True) in a process that cannot import
mosaicbert: the copied model files must be self-contained and give bit-identical outputs, for every head; and a
folder whose auto_map lists every head (as mosaicbert.export writes it) loads into each of them."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from mosaicbert.model import (
    MosaicBertConfig,
    MosaicBertForMaskedLM,
    MosaicBertForMultipleChoice,
    MosaicBertForQuestionAnswering,
    MosaicBertForSequenceClassification,
    MosaicBertForTokenClassification,
)
from mosaicbert.model.modeling_mosaic_bert import AUTO_CLASSES, auto_map

HEADS = {"mlm": MosaicBertForMaskedLM, "clf": MosaicBertForSequenceClassification,
         "tok": MosaicBertForTokenClassification, "qa": MosaicBertForQuestionAnswering,
         "mc": MosaicBertForMultipleChoice}
AUTO_NAMES = {cls: auto for auto, cls in AUTO_CLASSES.items()}

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

    for job in sys.argv[1:]:  # each job: auto class name,model_dir,inputs_path,out_path
        auto, model_dir, inputs_path, out_path = job.split(",")
        model = getattr(transformers, auto).from_pretrained(model_dir, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        inputs = torch.load(inputs_path)
        with torch.no_grad():
            outputs = {k: v for k, v in model(**inputs).items() if isinstance(v, torch.Tensor)}
        torch.save({"outputs": outputs, "encoder": model.base_model.state_dict()}, out_path)
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


def _config():
    return MosaicBertConfig(
        vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=12, intermediate_size=64,
        alibi_starting_size=16, num_labels=2,
    )


def _inputs(cfg, kind):
    ids = torch.randint(1, cfg.vocab_size, (3, 20))
    mask = torch.ones_like(ids)
    mask[1, 12:] = 0
    mask[2, 5:] = 0
    token_type_ids = (torch.arange(20) >= 10).long()[None].expand(3, -1) * mask
    inputs = {"input_ids": ids * mask, "attention_mask": mask, "token_type_ids": token_type_ids}
    if kind == "mc":  # 3 choices of one question
        inputs = {k: v[None] for k, v in inputs.items()}
    return inputs


def _save(tmp_path, kind, folder=None, full_auto_map=False):
    torch.manual_seed(0)
    cfg = _config()
    model = HEADS[kind](cfg).eval()
    with torch.no_grad():  # make every parameter nonzero/non-trivial, including biases and LayerNorms
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model_dir = tmp_path / (folder or f"model_{kind}")
    if full_auto_map:
        model.config.auto_map = auto_map()  # as mosaicbert.export writes it
    model.save_pretrained(model_dir)

    saved = json.loads((model_dir / "config.json").read_text())
    assert saved["model_type"] == "mosaic_bert"
    auto = AUTO_NAMES[HEADS[kind]]
    expected_map = auto_map() if full_auto_map else {"AutoConfig": "configuration_mosaic_bert.MosaicBertConfig",
                                                      auto: f"modeling_mosaic_bert.{HEADS[kind].__name__}"}
    assert saved["auto_map"] == expected_map  # save_pretrained records the saved model's own auto class
    for f in ["configuration_mosaic_bert.py", "modeling_mosaic_bert.py", "attention.py", "padding.py", "layers.py"]:
        assert (model_dir / f).exists(), f
    return model, model_dir


def _job(tmp_path, auto, model_dir, inputs, name):
    torch.save(inputs, tmp_path / f"inputs_{name}.pt")
    return f"{auto},{model_dir},{tmp_path / f'inputs_{name}.pt'},{tmp_path / f'out_{name}.pt'}"


@pytest.mark.slow
def test_remote_code_round_trip(tmp_path):
    # every job in one child process: importing torch + transformers dominates the cost
    jobs, expected = [], []
    for kind, cls in HEADS.items():
        model, model_dir = _save(tmp_path, kind)
        inputs = _inputs(model.config, kind)
        with torch.no_grad():
            expected.append({k: v for k, v in model(**inputs).items() if isinstance(v, torch.Tensor)})
        jobs.append(_job(tmp_path, AUTO_NAMES[cls], model_dir, inputs, kind))
    # a pretraining export (auto_map of every class) loads into every head: encoder weights as saved
    mlm, export_dir = _save(tmp_path, "mlm", folder="export", full_auto_map=True)
    exports = []
    for auto in AUTO_CLASSES:
        kind = next((k for k, c in HEADS.items() if AUTO_NAMES.get(c) == auto), "mlm")
        exports.append(_job(tmp_path, auto, export_dir, _inputs(mlm.config, kind), f"export_{auto}"))
    (tmp_path / "child.py").write_text(CHILD)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "child.py"), *jobs, *exports],
        cwd=tmp_path, env=_child_env(tmp_path), capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for job, exp in zip(jobs, expected):
        got = torch.load(job.split(",")[3])["outputs"]
        assert got.keys() == exp.keys(), job
        for k, v in exp.items():
            # fp32 in another process: the same math, but summation order may differ in the last bits
            torch.testing.assert_close(got[k], v, rtol=1e-5, atol=1e-6, msg=f"{job}: {k}")
    encoder = mlm.bert.state_dict()
    for job in exports:
        got = torch.load(job.split(",")[3])["encoder"]
        got = {k: v for k, v in got.items() if not k.startswith("pooler.")}  # a new head's pooler
        assert got.keys() == encoder.keys(), job
        for k, v in encoder.items():
            assert torch.equal(got[k], v), (job, k)
