"""Faults at the frame of the entry scripts (mosaicbert.core.cli.run_script) and in the configs: errors raised in
DataLoader workers reach the user as the project's own one-line message, broken overrides and meaningless settings
are config errors naming the key, --help lists the config keys, --print-config prints without running, and an
unusable cache folder names MOSAICBERT_CACHE."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import pytest
from torch.utils.data import DataLoader, Dataset

from mosaicbert.core.builtin_corpus import CacheFolderError, cache_root
from mosaicbert.core.checkpoint import CheckpointError
from mosaicbert.core.cli import run_script
from mosaicbert.core.config import ConfigError, Precision, load_config
from mosaicbert.pretrain.config import PretrainConfig, load_pretrain_config

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = str(ROOT / "yamls" / "quickstart.yaml")


@dataclass
class Section:
    depth: int = 2


@dataclass
class Schema:
    lr: float = 1.0
    name: Optional[str] = None
    precision: Precision = Precision.fp32
    betas: List[float] = field(default_factory=lambda: [0.9, 0.98])
    section: Section = field(default_factory=Section)


def load(yaml_path, overrides):
    return load_config(Schema, None, overrides)


class Raises(Dataset):
    """A dataset whose items raise `error` (in the DataLoader worker that reads them)."""

    def __init__(self, error: Exception):
        self.error = error

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i):
        raise self.error


def read_in_worker(error: Exception):
    def run(cfg) -> int:
        list(DataLoader(Raises(error), batch_size=2, num_workers=1))
        return 0
    return run


def test_project_error_from_a_worker_is_the_headline(capsys, monkeypatch):
    monkeypatch.delenv("MOSAICBERT_DEBUG", raising=False)
    error = CheckpointError("checkpoint x.pt is damaged: tensor w: copy it again")
    assert run_script(["cfg.yaml"], "", load, read_in_worker(error), show_config=False) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err  # no traceback, no "Caught CheckpointError" wrapper
    assert lines[0].startswith("error: checkpoint x.pt is damaged: tensor w: copy it again (in DataLoader worker "
                               "process 0)")
    assert "MOSAICBERT_DEBUG=1" in lines[0]


def test_debug_flag_shows_the_worker_traceback_first(capsys, monkeypatch):
    monkeypatch.setenv("MOSAICBERT_DEBUG", "1")
    error = CheckpointError("damaged record")
    assert run_script(["cfg.yaml"], "", load, read_in_worker(error), show_config=False) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "__getitem__" in err  # the worker's own frame
    assert err.strip().splitlines()[-1].startswith("error: damaged record (in DataLoader worker process 0)")


def test_config_error_from_a_worker_stays_a_config_error(capsys, monkeypatch):
    monkeypatch.delenv("MOSAICBERT_DEBUG", raising=False)
    error = ConfigError("config key 'data.max_seq_len' = 8 is shorter than the shards")
    assert run_script(["cfg.yaml"], "", load, read_in_worker(error), show_config=False) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("config error: config key 'data.max_seq_len' = 8 is shorter than "
                                                   "the shards (in DataLoader worker process 0)")


def test_foreign_worker_error_names_its_type_and_exits_1(capsys, monkeypatch):
    monkeypatch.delenv("MOSAICBERT_DEBUG", raising=False)
    assert run_script(["cfg.yaml"], "", load, read_in_worker(ValueError("token id 99999 out of range")),
                      show_config=False) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ValueError: token id 99999 out of range (in DataLoader")


def test_project_error_in_the_main_process_is_one_line(capsys):
    def run(cfg):
        raise CheckpointError("checkpoint y.pt not found: give a .pt file")

    assert run_script(["cfg.yaml"], "", load, run, show_config=False) == 2
    assert capsys.readouterr().err == "error: checkpoint y.pt not found: give a .pt file\n"


def test_other_exceptions_keep_their_traceback():
    def run(cfg):
        raise KeyError("a bug")

    with pytest.raises(KeyError):
        run_script(["cfg.yaml"], "", load, run, show_config=False)


def test_help_lists_the_schemas_keys_with_types_and_defaults(capsys):
    assert run_script(["--help"], "DOC", load, lambda cfg: 0, schema=Schema) == 0
    out = capsys.readouterr().out
    assert "DOC" in out
    assert "  lr: float = 1.0" in out
    assert "  name: str or null = null" in out
    assert "  precision: fp32 | amp_bf16 | amp_fp16 = 'fp32'" in out
    assert "  betas: list of float = [0.9, 0.98]" in out
    assert "  section: section (depth)" in out


@pytest.mark.parametrize("script", ["main.py", "glue.py", "finetune.py"])
def test_scripts_help_derives_keys_from_their_config_class(script):
    proc = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 0, proc.stderr
    assert "Config keys (" in proc.stdout and "--print-config" in proc.stdout
    assert "  run_name: str or null = null" in proc.stdout and "  optimizer: section (name, " in proc.stdout
    if script == "main.py":
        assert "  save_num_checkpoints_to_keep: int = -1" in proc.stdout
    if script == "finetune.py":
        assert "  overwrite: bool = false" in proc.stdout


def test_print_config_prints_the_resolved_config_without_running(capsys):
    ran = []
    assert run_script(["cfg.yaml", "lr=0.25", "--print-config"], "", load, lambda cfg: ran.append(cfg) or 0) == 0
    out = capsys.readouterr().out
    assert "lr: 0.25" in out and "depth: 2" in out and not ran
    # a bad override is still a config error
    assert run_script(["cfg.yaml", "--print-config", "lrr=1"], "", load, lambda cfg: 0) == 2
    assert "config error:" in capsys.readouterr().err


def test_main_print_config_does_not_train(tmp_path):
    proc = subprocess.run([sys.executable, "main.py", QUICKSTART, f"save_folder={tmp_path / 'run'}",
                           "optimizer.lr=1e-3", "--print-config"], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert proc.returncode == 0, proc.stderr
    assert "lr: 0.001" in proc.stdout and "run_name: quickstart" in proc.stdout
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override", ["optimizer.betas=[0.9,", "model.config_overrides={a: 1"])
def test_broken_override_syntax_names_the_override(override):
    with pytest.raises(ConfigError, match=rf"command-line override '{override.replace('[', '.').replace('{', '.')}' "
                                          r"does not parse .*key=\[a,b\]"):
        load_pretrain_config(QUICKSTART, [override])


@pytest.mark.parametrize("overrides, message", [
    (["eval_interval=0ba"], r"'eval_interval' = '0ba' is zero: it would never fire"),
    (["eval_interval=0ep"], r"'eval_interval' = '0ep' is zero"),
    (["eval_interval=0s"], r"'eval_interval' = '0s' is zero"),
    (["eval_interval=0"], r"'eval_interval' = '0' is not a duration"),
    (["save_interval=0ba"], r"'save_interval' = '0ba' is zero"),
    (["data.num_workers=-1"], r"'data.num_workers' must be >= 0"),
    (["save_num_checkpoints_to_keep=0", "autoresume=true"],
     r"'save_num_checkpoints_to_keep' = 0 keeps no checkpoint, so autoresume=true has nothing to resume from"),
])
def test_meaningless_pretrain_settings_are_config_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_pretrain_config(QUICKSTART, overrides)


def test_positive_settings_still_load():
    cfg = load_pretrain_config(QUICKSTART, ["eval_interval=0.5ep", "save_num_checkpoints_to_keep=1",
                                            "autoresume=true", "save_folder=x", "data.num_workers=0"])
    assert isinstance(cfg, PretrainConfig) and cfg.eval_interval == "0.5ep"


def test_unusable_home_names_the_folder_and_mosaicbert_cache(tmp_path, monkeypatch):
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    monkeypatch.delenv("MOSAICBERT_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(home))
    with pytest.raises(CacheFolderError, match=rf"cache folder {home}/.cache/mosaicbert \(from HOME .*\) cannot be "
                                               r"used: .*set MOSAICBERT_CACHE to a writable folder"):
        cache_root()
    from mosaicbert.core.tokenizer import load_tokenizer

    with pytest.raises(CacheFolderError, match="MOSAICBERT_CACHE"):
        load_tokenizer("builtin://python-docs")
    monkeypatch.setenv("MOSAICBERT_CACHE", str(tmp_path / "cache"))
    assert cache_root() == tmp_path / "cache" and (tmp_path / "cache").is_dir()


@pytest.mark.slow
def test_main_py_with_unusable_home_ends_in_one_error_line(tmp_path):
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "MOSAICBERT_CACHE"}
    env.update(HOME=str(home), PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run([sys.executable, "main.py", QUICKSTART, f"save_folder={tmp_path / 'run'}", "device=cpu"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") or last.startswith("config error: "), proc.stderr[-3000:]
    assert f"{home}/.cache/mosaicbert" in last and "MOSAICBERT_CACHE" in last
    assert "Traceback" not in proc.stderr
