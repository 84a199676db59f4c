"""Experiment tracking in all three commands: `loggers:` builds Composer's MLflow, W&B and TensorBoard loggers, and
each command's metrics are read back from a local MLflow file store, W&B offline run files and TensorBoard event
files, against the command's own record of them (metrics.jsonl, results.json)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mosaicbert.core.config import ConfigError, MlflowConfig, TensorboardConfig, TrackersConfig, WandbConfig

ROOT = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------------------------------------------
# Fast: the builder
# ---------------------------------------------------------------------------------------------------------------


def test_build_loggers_makes_composer_loggers(tmp_path, monkeypatch):
    from composer.loggers import MLFlowLogger, TensorboardLogger, WandBLogger

    from mosaicbert.core.trainer import build_loggers

    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    cfg = TrackersConfig(wandb=WandbConfig(project="p", tags=["a"]),
                         mlflow=MlflowConfig(tracking_uri=f"file:{tmp_path / 'mlruns'}", tags={"team": "nlp"}),
                         tensorboard=TensorboardConfig(log_dir=str(tmp_path / "tb")))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    wandb, mlflow, tb = build_loggers(cfg, "glue", group="sweep")
    assert isinstance(wandb, WandBLogger) and wandb._init_kwargs["group"] == "sweep"
    assert wandb._init_kwargs["project"] == "p" and wandb._init_kwargs["tags"] == ["a"]
    assert isinstance(mlflow, MLFlowLogger)
    assert mlflow.experiment_name == "mosaicbert-glue" and mlflow.run_group == "sweep"
    assert mlflow.tags == {"command": "glue", "team": "nlp"}
    assert isinstance(tb, TensorboardLogger)
    assert build_loggers(TrackersConfig()) == []
    # W&B is a tracker only: Composer's autoresume must get "not here" from it, not an API-key error
    with pytest.raises(NotImplementedError):
        wandb.download_file("latest-rank0.pt", str(tmp_path / "x"))


def test_missing_tracker_package_is_a_config_error(monkeypatch):
    import importlib.util

    from mosaicbert.core.trainer import build_loggers

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    with pytest.raises(ConfigError, match=r"loggers.mlflow.*pip install mlflow-skinny"):
        build_loggers(TrackersConfig(mlflow=MlflowConfig()))


def test_flat_hparams_flattens_a_config():
    from mosaicbert.core.trainer import flat_hparams
    from mosaicbert.pretrain.config import load_pretrain_config

    cfg = load_pretrain_config(str(ROOT / "yamls" / "quickstart.yaml"), ["optimizer.lr=0.001"])
    flat = flat_hparams(cfg)
    assert flat["optimizer.lr"] == 0.001 and flat["model.config_overrides.hidden_size"] == 128
    assert flat["optimizer.betas"] == "[0.9, 0.98]" and flat["precision"] == "amp_bf16"
    assert flat["loggers.mlflow"] is None
    assert all(v is None or isinstance(v, (bool, int, float, str)) for v in flat.values())


@pytest.mark.parametrize("load, yaml", [
    ("mosaicbert.finetune.config:load_finetune_config", "yamls/finetune/classification.yaml"),
    ("mosaicbert.glue.config:load_glue_config", "yamls/glue/quickstart.yaml"),
    ("mosaicbert.pretrain.config:load_pretrain_config", "yamls/quickstart.yaml"),
])
def test_every_command_takes_the_same_tracker_keys(load, yaml):
    import importlib

    module, name = load.split(":")
    loader = getattr(importlib.import_module(module), name)
    cfg = loader(str(ROOT / yaml), ["loggers.mlflow.tracking_uri=file:/x", "loggers.wandb.project=p",
                                    "loggers.tensorboard.log_dir=tb"])
    assert cfg.loggers.mlflow.tracking_uri == "file:/x" and cfg.loggers.wandb.project == "p"
    with pytest.raises(ConfigError, match="loggers.mlfow"):
        loader(str(ROOT / yaml), ["loggers.mlfow.tracking_uri=x"])


# ---------------------------------------------------------------------------------------------------------------
# Slow: each command, for real, against a local MLflow file store and W&B offline
# ---------------------------------------------------------------------------------------------------------------


def _tracker_env(tmp_path: Path) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "PYTHONUNBUFFERED": "1",
            "MOSAICBERT_CACHE": os.environ.get("MOSAICBERT_CACHE", str(ROOT / ".cache" / "mosaicbert")),
            # MLflow's file store (a `file:` tracking URI) must be opted into since MLflow 3
            "MLFLOW_ALLOW_FILE_STORE": "true",
            "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wandb"), "WANDB_SILENT": "true",
            "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def _tracker_args(tmp_path: Path) -> list[str]:
    return [f"loggers.mlflow.tracking_uri=file:{tmp_path / 'mlruns'}", "loggers.wandb.project=mosaicbert-test",
            f"loggers.tensorboard.log_dir={tmp_path / 'tb'}"]


def _run(cmd: list[str], tmp_path: Path) -> None:
    proc = subprocess.run(cmd, cwd=ROOT, env=_tracker_env(tmp_path), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def mlflow_runs(tmp_path: Path, experiment: str) -> dict:
    """{run name: (final metric values, params, tags)} of an experiment in the file store."""
    from mlflow.tracking import MlflowClient

    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    client = MlflowClient(f"file:{tmp_path / 'mlruns'}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r}"
    out = {}
    for run in client.search_runs([exp.experiment_id]):
        assert run.info.status == "FINISHED", run.info
        out[run.info.run_name] = (run.data.metrics, run.data.params, run.data.tags, client, run.info.run_id)
    return out


def _key(item) -> str:
    return item.key or "/".join(item.nested_key)  # W&B stores keys with '/' as nested keys


def wandb_runs(tmp_path: Path) -> dict:
    """{run name: (history rows, config, summary, group)} from W&B's offline run files."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    out = {}
    for path in sorted(glob.glob(str(tmp_path / "wandb" / "wandb" / "offline-run-*" / "*.wandb"))):
        store = datastore.DataStore()
        store.open_for_scan(path)
        history, config, summary, name, group = [], {}, {}, None, None
        while (data := store.scan_data()) is not None:
            record = wandb_internal_pb2.Record()
            record.ParseFromString(data)
            kind = record.WhichOneof("record_type")
            if kind == "run":
                name, group = record.run.display_name, record.run.run_group
            elif kind == "history":
                history.append({_key(i): json.loads(i.value_json) for i in record.history.item})
            elif kind == "config":
                config.update({_key(i): json.loads(i.value_json) for i in record.config.update})
            elif kind == "summary":
                summary.update({_key(i): json.loads(i.value_json) for i in record.summary.update})
        out[name] = (history, config, summary, group)
    return out


@pytest.mark.slow
def test_pretraining_logs_to_mlflow_wandb_and_tensorboard(tmp_path):
    save = tmp_path / "save"
    _run([sys.executable, "main.py", "yamls/quickstart.yaml", "run_name=tracked", f"save_folder={save}",
          "max_duration=4ba", "eval_interval=4ba", "eval_subset_num_batches=1", "device=cpu", "precision=fp32",
          "data.num_workers=0", *_tracker_args(tmp_path)], tmp_path)
    rows = [json.loads(line) for line in (save / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/LanguageCrossEntropy" in r]
    assert evals and evals[-1]["batch"] == 4

    metrics, params, tags, client, run_id = mlflow_runs(tmp_path, "mosaicbert-pretrain")["tracked"]
    assert metrics["metrics/eval/LanguageCrossEntropy"] == pytest.approx(evals[-1]["eval/LanguageCrossEntropy"])
    train = client.get_metric_history(run_id, "loss/train/total")
    assert sorted(m.step for m in train) == [0, 1, 2, 3, 4][:len(train)] and len(train) >= 4
    assert params["optimizer.lr"] == "0.002" and params["model.config_overrides.hidden_size"] == "128"
    assert tags["command"] == "pretrain" and tags["run_name"] == "tracked"

    history, config, summary, _ = wandb_runs(tmp_path)["tracked"]
    assert summary["metrics/eval/LanguageCrossEntropy"] == pytest.approx(evals[-1]["eval/LanguageCrossEntropy"])
    assert [h["loss/train/total"] for h in history if "loss/train/total" in h] == \
        pytest.approx([m.value for m in sorted(train, key=lambda m: m.step)])
    assert config["optimizer.lr"] == 0.002

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb" / "tracked"))
    events.Reload()
    ce = events.Scalars("metrics/eval/LanguageCrossEntropy")
    assert ce[-1].value == pytest.approx(evals[-1]["eval/LanguageCrossEntropy"], rel=1e-6)


@pytest.mark.slow
def test_finetune_logs_every_evaluation_and_the_final_metrics(tmp_path):
    save = tmp_path / "ft"
    _run([sys.executable, "finetune.py", "yamls/finetune/classification.yaml", "run_name=ft-tracked",
          f"save_folder={save}", "max_duration=2ep", "eval_interval=1ep", *_tracker_args(tmp_path)], tmp_path)
    results = json.loads((save / "results.json").read_text())
    last = results["evaluations"][-1]["metrics"]

    metrics, params, tags, client, run_id = mlflow_runs(tmp_path, "mosaicbert-finetune")["ft-tracked"]
    for name in ("accuracy", "f1", "matthews"):
        assert metrics[f"final/eval/{name}"] == pytest.approx(last[name])
    # every evaluation (before training, after 1 and 2 epochs) is in the run's history, at its batch (Composer's
    # MLflow logger leaves out a value equal to the one before it)
    history = client.get_metric_history(run_id, "metrics/eval/MulticlassAccuracy")
    expected = [(e["batch"], e["metrics"]["accuracy"]) for e in results["evaluations"]]
    expected = [e for i, e in enumerate(expected) if i == 0 or e[1] != expected[i - 1][1]]
    assert [(h.step, pytest.approx(h.value)) for h in history] == expected
    assert params["task"] == "classification" and params["optimizer.lr"] == "0.003"
    assert tags["command"] == "finetune"

    _, config, summary, _ = wandb_runs(tmp_path)["ft-tracked"]
    assert summary["final/eval/accuracy"] == pytest.approx(last["accuracy"])
    assert config["data.max_seq_len"] == 64


@pytest.mark.slow
def test_glue_logs_one_run_per_job_named_by_task_and_seed(tmp_path):
    save = tmp_path / "glue"
    _run([sys.executable, "glue.py", "yamls/glue/quickstart.yaml", "run_name=gq", f"save_folder={save}",
          "max_duration=2ba", "max_train_samples=64", "max_eval_samples=32", *_tracker_args(tmp_path)], tmp_path)
    results = json.loads((save / "results.json").read_text())
    jobs = {f"gq-{j['task']}-seed{j['seed']}": j for j in results["jobs"]}
    assert sorted(jobs) == ["gq-mrpc-seed19", "gq-rte-seed19", "gq-rte-seed8364"]

    runs = mlflow_runs(tmp_path, "mosaicbert-glue")
    assert sorted(runs) == sorted(jobs)
    wandb = wandb_runs(tmp_path)
    assert sorted(wandb) == sorted(jobs)
    for name, job in jobs.items():
        metrics, params, tags, _, _ = runs[name]
        assert tags["run_group"] == "gq" and params["task"] == job["task"] and params["seed"] == str(job["seed"])
        for metric, value in job["metrics"].items():
            assert metrics[f"final/{job['task']}/{metric}"] == pytest.approx(value), (name, metric)
        _, config, summary, group = wandb[name]
        assert group == "gq" and config["seed"] == job["seed"]
        for metric, value in job["metrics"].items():
            assert summary[f"final/{job['task']}/{metric}"] == pytest.approx(value), (name, metric)
