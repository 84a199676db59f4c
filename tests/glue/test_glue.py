"""GLUE finetuning runner: config, TSV reading, MNLI-start, pool scheduling, results, glue.py end to end.

Uses the GLUE TSVs and the bert-base-uncased vocab in ../shared/data (tests skip when absent) and a tiny
MosaicBERT (hidden 64, 2 layers, 2 heads, vocab 30528) trained for a couple of batches on CPU.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mosaicbert.core.config import ConfigError
from mosaicbert.glue.config import GlueConfig, load_glue_config
from mosaicbert.glue.data import GlueDataError, read_glue_tsv
from mosaicbert.glue.plan import Job, JobResult, plan_jobs
from mosaicbert.glue.pool import run_jobs
from mosaicbert.glue.runner import run_glue
from mosaicbert.glue.tasks import TASKS

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data"
GLUE = DATA / "glue"
VOCAB = DATA / "vocab" / "bert-base-uncased"

needs_glue = pytest.mark.skipif(not GLUE.is_dir(), reason=f"local GLUE data not found at {GLUE}")
needs_vocab = pytest.mark.skipif(not VOCAB.is_dir(), reason=f"bert-base-uncased vocab not found at {VOCAB}")

TINY = [
    "model.name=mosaic_bert",
    "model.config_overrides={vocab_size: 30528, hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 2, "
    "intermediate_size: 128}",
    "model.pretrained_checkpoint=null",
    f"tokenizer={VOCAB}",
    "max_train_samples=64",
    "max_eval_samples=64",
    "max_duration=2ba",
    "eval_batch_size=64",
    "progress_bar=false",
    "device=cpu",
]
# One seed, short sequences, 32-row batches for every task: a couple of batches each.
FAST_TASKS = [f"tasks.{t}.{k}" for t in TASKS for k in ("seeds=[19]", "max_seq_len=64", "batch_size=32")]

EXPECTED_METRICS = {
    "mnli": ["matched_accuracy", "mismatched_accuracy"],
    "qnli": ["accuracy"],
    "qqp": ["f1", "accuracy"],
    "rte": ["accuracy"],
    "sst2": ["accuracy"],
    "mrpc": ["f1", "accuracy"],
    "cola": ["matthews"],
    "stsb": ["pearson", "spearman"],
}


def tiny_config(tmp_path: Path, data_dir, *extra: str) -> GlueConfig:
    return load_glue_config(str(ROOT / "yamls" / "glue" / "base.yaml"),
                            TINY + FAST_TASKS + [f"data_dir={data_dir}", f"save_folder={tmp_path / 'run'}",
                                                 *extra])


# ---------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------


def test_yamls_load_and_base_matches_published_recipe():
    cfg = load_glue_config(str(ROOT / "yamls" / "glue" / "base.yaml"))
    defaults = GlueConfig()
    assert cfg.tasks == defaults.tasks  # YAML and schema defaults agree
    recipe = {  # lr, weight decay, epochs, batch size, number of seeds
        "mnli": (5e-5, 5e-6, 3, 48, 1), "rte": (1e-5, 1e-5, 3, 16, 5), "qqp": (3e-5, 3e-6, 5, 16, 1),
        "cola": (5e-5, 5e-6, 10, 32, 4), "mrpc": (8e-5, 8e-6, 10, 32, 5), "qnli": (1e-5, 1e-6, 10, 16, 1),
        "sst2": (3e-5, 3e-6, 3, 16, 3), "stsb": (3e-5, 3e-6, 10, 32, 5),
    }
    for name, (lr, wd, epochs, bs, n_seeds) in recipe.items():
        t = getattr(cfg.tasks, name)
        assert (t.lr, t.weight_decay, t.epochs, t.batch_size, len(t.seeds), t.max_seq_len) == \
            (lr, wd, epochs, bs, n_seeds, 256), name
    assert cfg.optimizer.name == "decoupled_adamw" and cfg.optimizer.betas == [0.9, 0.98]
    assert cfg.optimizer.eps == 1e-6
    assert (cfg.scheduler.name, cfg.scheduler.t_warmup, cfg.scheduler.alpha_f) == \
        ("linear_decay_with_warmup", "0.06dur", 0.0)
    assert cfg.mnli_start_tasks == ["rte", "mrpc", "stsb"]
    for name in ("hf-bert-base.yaml", "quickstart.yaml"):
        load_glue_config(str(ROOT / "yamls" / "glue" / name))


def test_unknown_key_in_task_entry_is_an_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks:\n  rte: {lr: 1.0e-5, learning_rat: 3}\n")
    with pytest.raises(ConfigError, match=r"tasks\.rte\.learning_rat"):
        load_glue_config(str(bad))
    with pytest.raises(ConfigError, match="command line: unknown config key 'tasks.rte.epoch': "
                                            ".*Did you mean: 'epochs'"):
        load_glue_config(None, ["tasks.rte.epoch=3"])
    with pytest.raises(ConfigError, match="Did you mean: 'rte'"):
        load_glue_config(None, ["tasks.rtee.lr=1e-5"])


def test_tasks_to_run_override_and_names():
    cfg = load_glue_config(None, ["tasks_to_run=[RTE,sst-2,STS-B]"])
    assert cfg.tasks_to_run == ["rte", "sst2", "stsb"]
    with pytest.raises(ConfigError, match="unknown task 'mnlii'"):
        load_glue_config(None, ["tasks_to_run=[mnlii]"])


# ---------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------


def test_malformed_tsv_row_names_file_and_line(tmp_path):
    path = tmp_path / "train.tsv"
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\n")
    with pytest.raises(GlueDataError, match=rf"{path}:3: .*expected 4 .*fields, got 3"):
        read_glue_tsv(str(path), TASKS["rte"])
    path.write_text("index\tsentence1\tsentence2\tlabel\n0\ta\tb\tentailment\n1\tc\td\tmaybe\n")
    with pytest.raises(GlueDataError, match=rf"{path}:3: "):
        read_glue_tsv(str(path), TASKS["rte"])
    ex = read_glue_tsv(str(path), TASKS["rte"], skip_malformed=True)
    assert ex.labels == [0]
    path.write_text('src\t1\t\tHe said "hi.\nsrc\t0\t*\tStray " quotes\n')  # CoLA: no header, stray quotes
    ex = read_glue_tsv(str(path), TASKS["cola"])
    assert ex.labels == [1, 0] and ex.texts[1] == ('Stray " quotes',)


def test_collator_pads_and_sends_host_lengths():
    import torch

    from mosaicbert.finetune.tasks import PaddingCollator

    features = [{"input_ids": [2, 7, 9, 3], "token_type_ids": [0, 0, 1, 1], "labels": 1},
                {"input_ids": [2, 3], "token_type_ids": [0, 0], "labels": 0}]
    batch = PaddingCollator({"input_ids": 0, "token_type_ids": 0})(features)
    assert batch["input_ids"].shape == (2, 8)  # the longest row, rounded up to a multiple of 8
    assert batch["sequence_lengths"] == batch["attention_mask"].sum(1).tolist() == [4, 2]
    assert batch["labels"].tolist() == [1, 0] and batch["labels"].dtype == torch.long


@needs_glue
def test_local_tsvs_parse():
    for task in TASKS.values():
        for stem in ["train"] + [s for s, _ in task.evals.values()]:
            path = GLUE / task.folder / f"{stem}.tsv"
            if path.is_file():
                ex = read_glue_tsv(str(path), task)
                assert len(ex) > 100 and len(ex.texts[0]) == len(task.text_columns)


# ---------------------------------------------------------------------------------------------------------------
# Training: every available local task, MNLI-start, results
# ---------------------------------------------------------------------------------------------------------------


@needs_glue
@needs_vocab
@pytest.mark.slow
def test_all_local_tasks_train_and_report(tmp_path):
    cfg = tiny_config(tmp_path, GLUE, "mnli_start_tasks=[]")
    summary = run_glue(cfg)
    run = tmp_path / "run"
    on_disk = json.loads((run / "results.json").read_text())
    assert on_disk["glue_average"] == pytest.approx(summary["glue_average"])
    md = (run / "results.md").read_text()
    assert "GLUE average" in md and "Score rule" in md
    ran = []
    for name, task in TASKS.items():
        entry = summary["tasks"][name]
        if all((GLUE / task.folder / f"{s}.tsv").is_file() for s in ["train"] + [s for s, _ in task.evals.values()]):
            assert entry["status"] == "ok", (name, entry)
            assert list(entry["metrics_mean"]) == EXPECTED_METRICS[name]
            ran.append(name)
        else:
            assert entry["status"] == "skipped" and "missing" in entry["reason"], (name, entry)
            assert f"| {name} | skipped" in md
    assert ran and summary["glue_average_tasks"] == ran
    scores = [summary["tasks"][n]["score"] for n in ran]
    assert summary["glue_average"] == pytest.approx(sum(scores) / len(scores))
    for job in summary["jobs"]:
        assert job["status"] == "ok" and job["init_kind"] == "random"
        assert sorted(job["metrics"]) == sorted(EXPECTED_METRICS[job["task"]])


def _write_tsv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in [header] + rows) + "\n")


WORDS = "the cat dog sat ran on a mat big small red blue house tree river sky".split()


def _sentence(i: int) -> str:
    return " ".join(WORDS[(i * k) % len(WORDS)] for k in range(1, 6 + i % 5))


def write_fake_mnli_rte(root: Path, n: int = 48) -> None:
    labels = ["entailment", "neutral", "contradiction"]
    header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
              "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]

    def rows(offset):
        out = []
        for i in range(n):
            lab = labels[(i + offset) % 3]
            out.append([str(i), str(i), f"{i}e", "fiction", "(x)", "(y)", "(x)", "(y)", _sentence(i),
                        _sentence(i + 3), lab, lab])
        return out

    _write_tsv(root / "MNLI" / "train.tsv", header, rows(0))
    _write_tsv(root / "MNLI" / "dev_matched.tsv", header, rows(1))
    _write_tsv(root / "MNLI" / "dev_mismatched.tsv", header, rows(2))
    rte = [[str(i), _sentence(i), _sentence(i + 1), ["entailment", "not_entailment"][i % 2]] for i in range(n)]
    for split in ("train", "dev"):
        _write_tsv(root / "RTE" / f"{split}.tsv", ["index", "sentence1", "sentence2", "label"], rte)


@needs_vocab
@pytest.mark.slow
def test_mnli_start(tmp_path):
    data = tmp_path / "glue"
    write_fake_mnli_rte(data)
    cfg = tiny_config(tmp_path, data, "tasks_to_run=[rte,mnli,cola]", "tasks.rte.seeds=[19,20]")
    summary = run_glue(cfg)
    assert summary["tasks"]["cola"]["status"] == "skipped"  # no CoLA files in this folder
    jobs = {(j["task"], j["seed"]): j for j in summary["jobs"]}
    assert [j["task"] for j in summary["jobs"]] == ["mnli", "rte", "rte"]  # MNLI first
    mnli = jobs[("mnli", 19)]
    assert mnli["status"] == "ok" and mnli["checkpoint"] and os.path.isfile(mnli["checkpoint"])
    assert sorted(mnli["metrics"]) == ["matched_accuracy", "mismatched_accuracy"]
    for seed in (19, 20):
        rte = jobs[("rte", seed)]
        assert rte["status"] == "ok"
        assert rte["init_kind"] == "mnli" and rte["init_from"] == mnli["checkpoint"]
        report = rte["init_report"]
        # The 3-way MNLI head is reported as intentionally not loaded; everything else loaded.
        assert report["head_not_loaded"] == ["classifier.bias", "classifier.weight"]
        assert report["new_head"] == ["classifier.bias", "classifier.weight"]
        assert report["missing"] == [] and report["unexpected"] == [] and report["shape_mismatch"] == []
        assert report["loaded"] > 10
    assert "MNLI: " in (tmp_path / "run" / "results.md").read_text()


def test_mnli_start_falls_back_when_mnli_does_not_run(tmp_path, caplog):
    cfg = load_glue_config(None, ["tasks_to_run=[rte,sst2]", "model.pretrained_checkpoint=null",
                                  f"save_folder={tmp_path}"])
    with caplog.at_level("WARNING"):
        jobs, skipped = plan_jobs(cfg)
    assert not skipped and {j.task for j in jobs} == {"rte", "sst2"}
    assert all(j.init_kind == "random" and not j.waits_for_mnli for j in jobs)
    assert "RANDOM INIT" in caplog.text and "MNLI is not in tasks_to_run" in caplog.text
    cfg = load_glue_config(None, ["tasks_to_run=[rte,mnli]", "mnli_start_tasks=[]"])
    jobs, _ = plan_jobs(cfg)
    assert not any(j.waits_for_mnli or j.save_checkpoint for j in jobs)


@needs_vocab
@pytest.mark.parametrize("model_name", ["mosaic_bert", "hf_bert"])
def test_encoder_weights_from_mlm_export(tmp_path, model_name):
    """An exported Hugging Face folder of an MLM model: encoder loaded, MLM head reported as not loaded.

    hf_bert: a 30522-token checkpoint (like bert-base-uncased) keeps its 30522-row embedding (the shape comes from
    the checkpoint, not the config)."""
    from transformers import BertForMaskedLM

    from mosaicbert.core.trainer import build_hf_config
    from mosaicbert.finetune.runner import build_task, load_task_tokenizer
    from mosaicbert.model import MosaicBertForMaskedLM

    cfg = tiny_config(tmp_path, tmp_path, f"model.name={model_name}")
    if model_name == "mosaic_bert":
        mlm = MosaicBertForMaskedLM(build_hf_config(cfg.model))
    else:
        mlm = BertForMaskedLM(build_hf_config(cfg.model, vocab_size=30522))
    mlm.save_pretrained(tmp_path / "hf")
    model_cfg = dataclasses.replace(cfg.model, pretrained_checkpoint=str(tmp_path / "hf"))
    tokenizer = load_task_tokenizer(cfg.tokenizer, None)
    task = build_task("regression", model_cfg, tokenizer, None, TASKS["stsb"].metrics, seed=0)
    clf, report = task.model, task.init_report
    assert report["head_not_loaded"] and all(k.startswith("cls.") for k in report["head_not_loaded"])
    # an MLM model has no pooler: it starts fresh with the task head
    assert report["new_head"] == ["bert.pooler.dense.bias", "bert.pooler.dense.weight", "classifier.bias",
                                  "classifier.weight"]
    assert report["missing"] == [] and report["unexpected"] == [] and report["shape_mismatch"] == []
    word = "bert.embeddings.word_embeddings.weight"
    n = mlm.state_dict()[word].shape[0]
    assert (clf.state_dict()[word][:n] == mlm.state_dict()[word]).all()
    assert clf.config.vocab_size == n and not report["resized"]


def test_hub_split_reading(monkeypatch):
    """nyu-mll/glue columns and labels (load_dataset is faked: no network here)."""
    import datasets

    calls = []

    def fake_load_dataset(name, config, split):
        calls.append((name, config, split))
        return datasets.Dataset.from_dict({"premise": ["a", "b", "c"], "hypothesis": ["d", "e", "f"],
                                           "label": [0, 2, -1], "idx": [0, 1, 2]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    from mosaicbert.glue.data import read_split

    ex = read_split(TASKS["mnli"], "mismatched", None, "nyu-mll/glue")
    assert calls == [("nyu-mll/glue", "mnli", "validation_mismatched")]
    assert ex.texts == [("a", "d"), ("b", "e")] and ex.labels == [0, 2]  # -1 (unlabeled) dropped


# ---------------------------------------------------------------------------------------------------------------
# Process pool scheduling (spawn workers; a fake job function keeps this fast)
# ---------------------------------------------------------------------------------------------------------------


def fake_job(cfg, job: Job) -> JobResult:
    time.sleep(0.2 if job.task != "mnli" else 1.0)
    return JobResult(task=job.task, seed=job.seed, status="ok", metrics={}, init_from=job.init_from,
                     init_kind=job.init_kind, checkpoint="mnli-final.pt" if job.save_checkpoint else None,
                     init_report={"pid": os.getpid(), "end": time.time(), "start": time.time() - 0.2})


@pytest.mark.slow
def test_pool_runs_mnli_start_jobs_after_mnli(tmp_path):
    cfg = load_glue_config(None, ["tasks_to_run=[mnli,rte,sst2]", "tasks.rte.seeds=[1,2]", "tasks.sst2.seeds=[1]",
                                  "parallel_jobs=2", "device=cpu", f"save_folder={tmp_path}",
                                  "model.pretrained_checkpoint=pre.pt"])
    jobs, _ = plan_jobs(cfg)
    assert [j.task for j in jobs] == ["mnli", "rte", "rte", "sst2"]
    results = run_jobs(cfg, jobs, job_fn=fake_job)
    by = {(r.task, r.seed): r for r in results}
    assert by[("sst2", 1)].init_from == "pre.pt" and by[("sst2", 1)].init_kind == "pretrained"
    mnli_end = by[("mnli", 19)].init_report["end"]
    for seed in (1, 2):
        r = by[("rte", seed)]
        assert r.init_from == "mnli-final.pt" and r.init_kind == "mnli"
        assert r.init_report["start"] >= mnli_end - 0.05  # queued only once MNLI finished
    assert len({r.init_report["pid"] for r in results}) == 2 and os.getpid() not in {
        r.init_report["pid"] for r in results}


# ---------------------------------------------------------------------------------------------------------------
# glue.py end to end
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_glue_py_quickstart(tmp_path, mosaicbert_cache):
    """The shipped smoke config (examples/glue-smoke, the built-in tokenizer) runs without local data."""
    cmd = [sys.executable, "glue.py", "yamls/glue/quickstart.yaml", f"save_folder={tmp_path}", "max_duration=2ba",
           "tasks.rte.seeds=[19]", "max_eval_samples=64"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "done rte seed=19: accuracy=" in proc.stdout and "done mrpc seed=19: f1=" in proc.stdout
    summary = json.loads((tmp_path / "results.json").read_text())
    assert summary["glue_average_tasks"] == ["rte", "mrpc"]
    assert (tmp_path / "results.md").is_file()
    bad = subprocess.run([sys.executable, "glue.py", "yamls/glue/quickstart.yaml", "tasks.rte.lrr=1"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "Did you mean: 'lr'" in bad.stderr


@needs_vocab
def test_failed_mnli_job_is_reported_and_dependents_fall_back(tmp_path, monkeypatch):
    from mosaicbert.glue import train

    def fake_train_job(cfg, job):
        if job.task == "mnli":
            raise RuntimeError("boom")
        return JobResult(task=job.task, seed=job.seed, status="ok", metrics={"accuracy": 0.5}, score=0.5,
                         init_from=job.init_from, init_kind=job.init_kind)

    monkeypatch.setattr(train, "train_job", fake_train_job)
    data = tmp_path / "glue"
    write_fake_mnli_rte(data, n=4)
    cfg = tiny_config(tmp_path, data, "tasks_to_run=[mnli,rte]")
    summary = run_glue(cfg)
    assert summary["tasks"]["mnli"]["status"] == "failed" and "boom" in summary["tasks"]["mnli"]["reason"]
    rte = [j for j in summary["jobs"] if j["task"] == "rte"][0]
    assert rte["status"] == "ok" and rte["init_kind"] == "random"  # no MNLI checkpoint: pretrained (here random)
    assert summary["glue_average_tasks"] == ["rte"] and summary["glue_average"] == pytest.approx(0.5)
    assert "| mnli | failed" in (tmp_path / "run" / "results.md").read_text()


def test_glue_optimizer_lr_is_per_task_only():
    """lr and weight decay live in tasks.<task>; a global optimizer.lr would be ignored, so it is an error."""
    from mosaicbert.core.config import ConfigError
    from mosaicbert.glue.config import load_glue_config

    with pytest.raises(ConfigError, match="unknown config key 'optimizer.lr'"):
        load_glue_config(str(ROOT / "yamls/glue/base.yaml"), ["optimizer.lr=1e-3"])


@pytest.mark.parametrize("override, expected", [
    (["tasks.rte.lr=0"], "'tasks.rte.lr' must be a finite number > 0"),
    (["tasks.cola.batch_size=0"], "'tasks.cola.batch_size' must be > 0"),
    (["optimizer.betas=[0.9,1.5]"], "'optimizer.betas' must be two values"),
    (["scheduler.t_warmup=2dur"], "'scheduler.t_warmup' must be a fraction"),
    (["optimizer.name=sgd"], r"'optimizer.name': Invalid value 'sgd', expected one of \[decoupled_adamw, adamw\]"),
    (["precision=fp8"], "'precision'.*expected one of"),
    (["device_train_microbatch_size=0"], "'device_train_microbatch_size' must be null, a positive int or 'auto'"),
    (["parallel_jobs=0"], "'parallel_jobs' must be positive or null"),
])
def test_glue_ranges_and_closed_sets(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_glue_config(str(ROOT / "yamls/glue/base.yaml"), override)


@pytest.mark.parametrize("override", ["max_duration=abc", "tasks.rte.eval_interval=often"])
def test_glue_durations_are_checked_up_front(override):
    from mosaicbert.core.config import ConfigError
    from mosaicbert.glue.config import load_glue_config

    with pytest.raises(ConfigError, match="is not a duration"):
        load_glue_config(str(ROOT / "yamls/glue/base.yaml"), [override])


def test_glue_workers_are_pinned_to_the_parents_visible_gpus(monkeypatch):
    from mosaicbert.glue.pool import visible_gpu_ids

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 3")
    assert visible_gpu_ids(2) == ["2", "3"]
    assert visible_gpu_ids(1) == ["2"]
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert visible_gpu_ids(2) == ["0", "1"]
