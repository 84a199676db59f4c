"""A mixture of two corpora (data.streams) through main.py: a run killed mid-epoch and autoresumed ends with exactly the
weights of an uninterrupted run. (The proportions each corpus is drawn in: tests/pretrain/test_streams.py.)"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import ROOT, write_documents, write_own_text

pytestmark = pytest.mark.slow

TRAIN = ["precision=fp32", "device=cpu", "max_duration=24ba", "eval_interval=100ba", "save_interval=8ba",
         "save_num_checkpoints_to_keep=-1", "data.num_workers=1", "loggers.console_log_interval=8ba",
         "global_train_batch_size=16", "device_train_microbatch_size=16", "autoresume=true", "data.local=null"]


def _env(cache: Path) -> dict:
    return {**os.environ, "MOSAICBERT_CACHE": str(cache), "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def _weights(folder: Path) -> dict:
    return torch.load(next(folder.glob("*ba24-rank0.pt")), map_location="cpu", weights_only=False)["state"]["model"]


def test_mixed_run_resumes_exactly_after_a_kill(tmp_path, mosaicbert_cache):
    # corpus a: the README and the configs' comments; corpus b: made-up words (told apart by their documents)
    a = write_own_text(tmp_path / "a-text")
    b = write_documents(tmp_path / "b.jsonl", num_docs=400, min_words=20, max_words=60)
    for name, source in (("a", str(a)), ("b", str(b))):
        subprocess.run([sys.executable, "-m", "mosaicbert.pretrain.convert", "--source", "local", "--train_files",
                        source, "--tokenizer", "builtin://python-docs", "--out_root", str(tmp_path / name),
                        "--no_progress", "--workers", "1"], cwd=ROOT, env=_env(mosaicbert_cache), check=True,
                       capture_output=True, timeout=600)
    streams = (f"data.streams={{a: {{local: {tmp_path / 'a'}, proportion: 0.75}}, "
               f"b: {{local: {tmp_path / 'b'}, proportion: 0.25}}}}")

    def cmd(run: str) -> list[str]:
        return [sys.executable, "main.py", "yamls/quickstart.yaml", streams, f"run_name={run}",
                f"save_folder={tmp_path / run}", *TRAIN]

    whole = subprocess.run(cmd("whole"), cwd=ROOT, env=_env(mosaicbert_cache), capture_output=True, text=True,
                           timeout=900)
    assert whole.returncode == 0, whole.stdout[-3000:] + whole.stderr[-3000:]

    killed = tmp_path / "killed"
    proc = subprocess.Popen(cmd("killed"), cwd=ROOT, env=_env(mosaicbert_cache), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while time.time() < deadline and not list(killed.glob("*ba16-rank0.pt")):
        assert proc.poll() is None, "training ended before it could be killed"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # mid-epoch, no chance to clean up
    proc.wait()
    assert not list(killed.glob("*ba24-rank0.pt")), "the run finished before it was killed"
    resumed = subprocess.run(cmd("killed"), cwd=ROOT, env=_env(mosaicbert_cache), capture_output=True, text=True,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resum" in (resumed.stdout + resumed.stderr).lower()

    want, got = _weights(tmp_path / "whole"), _weights(killed)
    assert want.keys() == got.keys()
    for name in want:
        assert torch.equal(want[name], got[name]), f"{name} differs after the kill and resume"
