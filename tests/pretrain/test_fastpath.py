"""Fast-path settings: compile by default on GPUs (eager on CPU, said once), the `ddp:` and dataloader-worker
settings reaching Composer in a two-process run, and FSDP training, saving, resuming and exporting on CPU."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mosaicbert.core import trainer as core_trainer
from mosaicbert.core.config import ConfigError
from mosaicbert.core.trainer import resolve_compile
from mosaicbert.pretrain.config import PretrainConfig, load_pretrain_config
from mosaicbert.pretrain.trainer import build_fsdp

ROOT = Path(__file__).resolve().parents[2]
COMPOSER = str(Path(sys.executable).parent / "composer")

# A tiny MosaicBERT on the built-in corpus, as in yamls/quickstart.yaml, for the multi-process runs.
TINY = [
    "tokenizer=builtin://python-docs",
    "data.local=builtin://python-docs",
    "model.config_overrides={vocab_size: 8192, hidden_size: 128, num_hidden_layers: 2, num_attention_heads: 4,"
    " intermediate_size: 512}",
    "global_train_batch_size=32",
    "device_train_microbatch_size=8",  # 2 microbatches per rank and batch: gradient accumulation is exercised
    "device_eval_batch_size=32",
    "precision=fp32",
    "device=cpu",
    "eval_subset_num_batches=1",
    "data.num_workers=0",
    "loggers.console_log_interval=1ba",
    # constant learning rate: a run stopped at batch 3 and resumed to 6 sees the same rates as one run to 6
    "scheduler.name=constant_with_warmup",
    "scheduler.t_warmup=0ba",
]


def _env():
    env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT / "src"))
    env.setdefault("MOSAICBERT_CACHE", str(ROOT / ".cache" / "mosaicbert"))
    return env


def _run(cmd, timeout=900):
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc.stdout + proc.stderr


# ---- compile ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("recipe", ["base", "large", "hf-bert-base"])
def test_recipes_compile_by_default_and_can_opt_out(recipe):
    assert PretrainConfig().compile == "auto"
    assert load_pretrain_config(f"yamls/{recipe}.yaml").compile == "auto"
    assert load_pretrain_config(f"yamls/{recipe}.yaml", ["compile=false"]).compile is False


def test_compile_auto_on_gpu_compiles_with_the_mode():
    if core_trainer._missing_compiler("gpu") is not None:
        pytest.skip(core_trainer._missing_compiler("gpu"))
    assert resolve_compile("auto", None, "gpu") == {}
    assert resolve_compile("auto", "max-autotune", "gpu") == {"mode": "max-autotune"}
    assert resolve_compile(True, None, "gpu") == {}
    assert resolve_compile(False, "max-autotune", "gpu") is None


def test_compile_auto_on_cpu_runs_eagerly_and_says_so_once(caplog):
    with caplog.at_level(logging.WARNING, logger="mosaicbert"):
        assert resolve_compile("auto", None, "cpu") is None
    said = [r.getMessage() for r in caplog.records if "compile" in r.getMessage()]
    assert said == ["compile: auto runs uncompiled on cpu (set compile=true to compile there anyway)"]


def test_compile_without_a_working_compiler(monkeypatch, caplog):
    # explicit compile=true on CPU compiles (a C++ compiler is found) and stops with the cause when none is
    monkeypatch.setenv("CXX", "no-such-cxx-compiler")
    with pytest.raises(ConfigError, match="'compile' = true, but .*'no-such-cxx-compiler' is not on PATH"):
        resolve_compile(True, None, "cpu")
    # a GPU torch without Triton: auto falls back once, with the reason; true stops
    monkeypatch.setattr(core_trainer, "_missing_compiler", lambda device: "Inductor needs Triton")
    with caplog.at_level(logging.WARNING, logger="mosaicbert"):
        assert resolve_compile("auto", None, "gpu") is None
    assert [r.getMessage() for r in caplog.records] == ["compile: auto runs uncompiled: Inductor needs Triton"]
    with pytest.raises(ConfigError, match="Inductor needs Triton: install it or set compile=false"):
        resolve_compile(True, None, "gpu")


def test_compile_true_on_cpu_finds_the_compiler():
    if core_trainer._missing_compiler("cpu") is not None:
        pytest.skip(core_trainer._missing_compiler("cpu"))
    assert resolve_compile(True, "max-autotune-no-cudagraphs", "cpu") == {"mode": "max-autotune-no-cudagraphs"}


@pytest.mark.parametrize("overrides, message", [
    (["compile=2"], "'compile' = 2 must be true, false or auto"),
    (["ddp.sync_strategy=single"], r"'ddp.sync_strategy'.*expected one of \[single_auto_sync"),
    (["ddp.bucket_cap_mb=50"], "unknown config key 'ddp.bucket_cap_mb'"),
    (["fsdp={sharding_strategy: FULL_SHARD}", "device_train_microbatch_size=auto"], "does not work with fsdp"),
])
def test_bad_fastpath_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_pretrain_config("yamls/base.yaml", overrides)


# ---- FSDP section -------------------------------------------------------------------------------------------


def test_fsdp_section_becomes_fsdp2_with_full_checkpoints():
    assert build_fsdp(None) is None
    full = build_fsdp({"sharding_strategy": "FULL_SHARD"})["fsdp"]
    assert (full.reshard_after_forward, full.state_dict_type) == (True, "full")
    grad_op = build_fsdp({"sharding_strategy": "SHARD_GRAD_OP", "state_dict_type": "sharded"})["fsdp"]
    assert (grad_op.reshard_after_forward, grad_op.state_dict_type) == (False, "sharded")
    with pytest.raises(ConfigError, match="'fsdp.sharding_strategy' = 'NO_SHARD'"):
        build_fsdp({"sharding_strategy": "NO_SHARD"})
    with pytest.raises(ConfigError, match="did you mean 'sharding_strategy'"):
        build_fsdp({"sharding_stratgy": "FULL_SHARD"})
    with pytest.raises(ConfigError, match="set the same thing"):
        build_fsdp({"sharding_strategy": "FULL_SHARD", "reshard_after_forward": False})


# ---- two processes (gloo) -----------------------------------------------------------------------------------

DDP_SCRIPT = r"""
import json, sys
import torch._dynamo
from torch.nn.parallel import DistributedDataParallel
from composer.utils import dist
from mosaicbert.pretrain.trainer import build_pretrain_trainer
from mosaicbert.pretrain.config import load_pretrain_config

cfg = load_pretrain_config("yamls/base.yaml", sys.argv[2:])
trainer = build_pretrain_trainer(cfg)
loader = trainer.state.train_dataloader
facts = {
    "ddp": isinstance(trainer.state.model, DistributedDataParallel),
    "sync_strategy": str(trainer._ddp_sync_strategy.value),
    "optimize_ddp": torch._dynamo.config.optimize_ddp,
    "num_workers": loader.num_workers,
}
trainer.fit()
facts["batches"] = int(trainer.state.timestamp.batch)
with open(f"{sys.argv[1]}/rank{dist.get_global_rank()}.json", "w") as f:
    json.dump(facts, f)
"""


@pytest.mark.slow
def test_ddp_and_worker_settings_reach_the_trainer(tmp_path):
    script = tmp_path / "ddp_facts.py"
    script.write_text(DDP_SCRIPT)
    _run([COMPOSER, "-n", "2", "--master_port", "29541", str(script), str(tmp_path), *TINY, "max_duration=2ba",
          "eval_interval=2ba", "save_folder=null", "autoresume=false", "loggers.metrics_jsonl=false",
          "ddp.optimize_ddp=true", "ddp.sync_strategy=multi_auto_sync",
          "data.num_workers=1"])
    for rank in (0, 1):
        facts = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert facts == {"ddp": True, "sync_strategy": "multi_auto_sync", "optimize_ddp": True, "num_workers": 1,
                         "batches": 2}


GRAPHS_SCRIPT = r"""
import json, sys
from torch._dynamo.utils import counters
from composer.utils import dist
from mosaicbert.pretrain.trainer import build_pretrain_trainer
from mosaicbert.pretrain.config import load_pretrain_config

trainer = build_pretrain_trainer(load_pretrain_config("yamls/quickstart.yaml", sys.argv[2:]))
trainer.fit()
if dist.get_global_rank() == 0:
    with open(sys.argv[1], "w") as f:
        json.dump(counters["aot_autograd"]["total"], f)
"""


@pytest.mark.slow
def test_optimize_ddp_splits_the_compiled_model_at_gradient_buckets(tmp_path):
    """Composer compiles the DDP-wrapped model; with ddp.optimize_ddp the training graph is cut into one piece
    per gradient bucket (more graphs to compile and run), without it the model is one graph."""
    script = tmp_path / "count_graphs.py"
    script.write_text(GRAPHS_SCRIPT)
    graphs = {}
    for port, split in ((29545, "true"), (29546, "false")):
        _run([COMPOSER, "-n", "2", "--master_port", str(port), str(script), str(tmp_path / f"{split}.json"), *TINY,
              "compile=true", f"ddp.optimize_ddp={split}", "max_duration=1ba", "eval_interval=1000ba",
              "save_folder=null", "autoresume=false", "loggers.metrics_jsonl=false"])
        graphs[split] = json.loads((tmp_path / f"{split}.json").read_text())
    assert graphs["true"] > graphs["false"] >= 1, graphs


def _model_state(checkpoint: Path) -> dict:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state"]["model"]


@pytest.mark.slow
def test_fsdp_trains_saves_resumes_and_exports(tmp_path):
    """yamls/large.yaml with fsdp FULL_SHARD (tiny model, 2 CPU processes): a run stopped at batch 3 and
    autoresumed to 6 ends with the weights of an uninterrupted run, and its checkpoint exports to a HF folder."""

    def train(folder: Path, batches: int, port: int) -> str:
        return _run([COMPOSER, "-n", "2", "--master_port", str(port), "main.py", "yamls/large.yaml", *TINY,
                     "fsdp={sharding_strategy: FULL_SHARD}", f"max_duration={batches}ba", "eval_interval=3ba",
                     "save_interval=3ba", f"save_folder={folder}", "autoresume=true"])

    train(tmp_path / "straight", 6, 29542)
    train(tmp_path / "resumed", 3, 29543)
    log = train(tmp_path / "resumed", 6, 29544)
    assert "autoresume: run " in log, log[-3000:]

    straight = _model_state(tmp_path / "straight" / "ep0-ba6-rank0.pt")
    resumed = _model_state(tmp_path / "resumed" / "ep0-ba6-rank0.pt")
    first = _model_state(tmp_path / "resumed" / "ep0-ba3-rank0.pt")
    # full (unsharded) tensors under the plain model's names, as a DDP checkpoint has them
    layer = "model.bert.encoder.layer.1.mlp.gated_layers.weight"
    assert layer in straight and not isinstance(straight[layer], torch.distributed.tensor.DTensor)
    assert straight.keys() == resumed.keys()
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(first[layer], straight[layer]), "batches 4-6 did not train"

    out = tmp_path / "hf"
    _run([sys.executable, "-m", "mosaicbert.export", str(tmp_path / "resumed" / "latest-rank0.pt"), str(out)])
    from mosaicbert import MosaicBertForMaskedLM

    exported = MosaicBertForMaskedLM.from_pretrained(str(out))
    weights = exported.state_dict()
    assert torch.equal(weights[layer.removeprefix("model.")], straight[layer])
