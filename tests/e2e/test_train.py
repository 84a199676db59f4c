"""End-to-end pretraining runs through main.py on CPU: loss falls, checkpoints resume exactly after SIGKILL,
two processes train data-parallel, and a checkpoint exports to a Hugging Face folder."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

# Short fp32 runs of the quickstart model; every run writes a checkpoint every 10 batches.
COMMON = [
    "precision=fp32",
    "device=cpu",
    "max_duration=40ba",
    "eval_interval=20ba",
    "eval_subset_num_batches=1",
    "save_interval=10ba",
    "save_num_checkpoints_to_keep=-1",
    "loggers.console_log_interval=10ba",
    "data.num_workers=0",
]


def _env(tmp_path):
    env = dict(os.environ)
    env.setdefault("MOSAICBERT_CACHE", str(ROOT / ".cache" / "mosaicbert"))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _main_cmd(save_folder, *extra):
    return [sys.executable, "main.py", "yamls/quickstart.yaml", *COMMON, f"save_folder={save_folder}", *extra]


def _weights(checkpoint: Path) -> dict:
    return torch.load(checkpoint, map_location="cpu", weights_only=False)["state"]["model"]


def _losses(metrics: Path) -> list[float]:
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [r["train_loss"] for r in rows if "train_loss" in r]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("uninterrupted")
    proc = subprocess.run(_main_cmd(folder, "run_name=uninterrupted"), cwd=ROOT, env=_env(folder),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return folder


@pytest.mark.slow
def test_quickstart_loss_falls(uninterrupted):
    losses = _losses(uninterrupted / "metrics.jsonl")
    assert len(losses) == 4
    assert losses[-1] < losses[0] - 1.0, losses
    assert (uninterrupted / "ep0-ba40-rank0.pt").exists() or any(uninterrupted.glob("*ba40-rank0.pt"))


@pytest.mark.slow
def test_resume_after_sigkill_equals_uninterrupted(uninterrupted, tmp_path):
    folder = tmp_path / "killed"
    cmd = _main_cmd(folder, "run_name=killed", "autoresume=true")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not list(folder.glob("*ba20-rank0.pt")):
        assert proc.poll() is None, "training process ended before it could be killed"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up, like a preempted node
    proc.wait()
    assert not list(folder.glob("*ba40-rank0.pt")), "the run finished before it was killed"

    resumed = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "Resuming" in resumed.stdout + resumed.stderr or "resum" in (resumed.stdout + resumed.stderr).lower()

    final_a = _weights(next(uninterrupted.glob("*ba40-rank0.pt")))
    final_b = _weights(next(folder.glob("*ba40-rank0.pt")))
    assert final_a.keys() == final_b.keys()
    for name in final_a:
        assert torch.equal(final_a[name], final_b[name]), f"{name} differs after resume"


@pytest.mark.slow
def test_load_path_continues_from_checkpoint(uninterrupted, tmp_path):
    """Explicit load_path (not autoresume): training continues at batch 30 and ends at 40."""
    folder = tmp_path / "from30"
    ckpt = next(uninterrupted.glob("*ba30-rank0.pt"))
    proc = subprocess.run(_main_cmd(folder, "run_name=from30", f"load_path={ckpt}"), cwd=ROOT,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    batches = [r["batch"] for r in rows if "train_loss" in r]
    assert batches == [40], batches
    final_a = _weights(next(uninterrupted.glob("*ba40-rank0.pt")))
    final_c = _weights(next(folder.glob("*ba40-rank0.pt")))
    assert all(torch.equal(final_a[k], final_c[k]) for k in final_a)


@pytest.mark.slow
def test_two_process_data_parallel(tmp_path):
    folder = tmp_path / "ddp"
    cmd = [str(VENV_BIN / "composer"), "-n", "2", "--master_port", "29517", "main.py", "yamls/quickstart.yaml",
           *COMMON, "max_duration=6ba", "save_interval=6ba", f"save_folder={folder}", "run_name=ddp"]
    proc = subprocess.run(cmd, cwd=ROOT, env=_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    # Composer writes one checkpoint file per rank for DDP.
    assert list(folder.glob("*ba6-rank0.pt")), list(folder.iterdir())
    state = torch.load(next(folder.glob("*ba6-rank0.pt")), map_location="cpu", weights_only=False)["state"]
    # 6 batches of the global batch 32 were consumed in total: 16 per rank per batch.
    assert int(state["timestamp"]["Timestamp"]["sample"]) == 6 * 32


@pytest.mark.slow
def test_export_checkpoint_to_hf_folder(uninterrupted, tmp_path):
    ckpt = next(uninterrupted.glob("*ba40-rank0.pt"))
    out = tmp_path / "hf"
    proc = subprocess.run([sys.executable, "-m", "mosaicbert.export", str(ckpt), str(out)], cwd=ROOT,
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (out / "config.json").exists() and (out / "tokenizer.json").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["auto_map"]["AutoModelForMaskedLM"].endswith("MosaicBertForMaskedLM")

    # Load with plain transformers in a process where `import mosaicbert` is impossible.
    script = f"""
import sys, importlib.abc
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "mosaicbert" or name.startswith("mosaicbert."):
            raise ImportError("mosaicbert is blocked in this test")
sys.meta_path.insert(0, Block())
import torch
from transformers import AutoModelForMaskedLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(out)!r})
model = AutoModelForMaskedLM.from_pretrained({str(out)!r}, trust_remote_code=True).eval()
batch = tok(["the quick brown fox", "a longer second sentence about parsing files"], padding=True, return_tensors="pt")
with torch.no_grad():
    logits = model(**batch).logits
torch.save({{"batch": dict(batch), "logits": logits}}, {str(tmp_path / "remote.pt")!r})
# The same folder also serves the bare encoder and a new classification head.
from transformers import AutoModel, AutoModelForSequenceClassification
encoder = AutoModel.from_pretrained({str(out)!r}, trust_remote_code=True)
classifier = AutoModelForSequenceClassification.from_pretrained({str(out)!r}, trust_remote_code=True, num_labels=3)
assert type(encoder).__name__ == "MosaicBertModel", type(encoder)
assert classifier(**batch).logits.shape == (2, 3)
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env={**_env(tmp_path), "HF_HUB_OFFLINE": "1"},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    remote = torch.load(tmp_path / "remote.pt", weights_only=False)

    from mosaicbert import MosaicBertForMaskedLM
    from mosaicbert.model.modeling_mosaic_bert import load_mosaic_state_dict

    local = MosaicBertForMaskedLM.from_pretrained(str(out)).eval()
    reference = MosaicBertForMaskedLM(local.config).eval()
    missing, unexpected = load_mosaic_state_dict(reference, _weights(ckpt))
    assert not missing and not unexpected
    with torch.no_grad():
        expected = reference(**remote["batch"]).logits
    assert torch.equal(remote["logits"], expected)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_loss_stops_with_clear_error(bad):
    from types import SimpleNamespace

    from mosaicbert.core.callbacks import FiniteLossCheck

    # at batch_end Composer's timestamp already counts the finished batch (index 123 -> 124)
    state = SimpleNamespace(total_loss_dict={"loss/train/total": bad}, timestamp=SimpleNamespace(batch=124))
    with pytest.raises(RuntimeError, match=r"not finite at batch 123 .*: the run diverged. Lower optimizer.lr"):
        FiniteLossCheck().batch_end(state, logger=None)
    FiniteLossCheck().batch_end(SimpleNamespace(total_loss_dict={"loss/train/total": 1.5},
                                                timestamp=state.timestamp), logger=None)


def test_step_seeded_rng_seeds_from_seed_rank_and_batch():
    from types import SimpleNamespace

    from mosaicbert.core.callbacks import StepSeededRNG

    cb = StepSeededRNG(17)
    draws = {}
    for batch in (5, 6, 5):
        cb.batch_start(SimpleNamespace(timestamp=SimpleNamespace(batch=batch)), logger=None)
        draws.setdefault(batch, []).append(torch.rand(4))
    assert torch.equal(draws[5][0], draws[5][1])  # the same batch index gives the same dropout stream
    assert not torch.equal(draws[5][0], draws[6][0])
    expected = torch.rand(4, generator=torch.Generator().manual_seed((17 * 1_000_003 + 5) % (2**63 - 1)))
    assert torch.equal(draws[5][0], expected)  # rank 0
