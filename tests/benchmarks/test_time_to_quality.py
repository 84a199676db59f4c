"""benchmarks/time_to_quality.py: time-to-target interpolation, the report (CSV, PNG, Markdown) and a tiny train."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("time_to_quality", ROOT / "benchmarks" / "time_to_quality.py")
ttq = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ttq)


def _point(seconds, loss, batch):
    return {"train_seconds": seconds, "eval/LanguageCrossEntropy": loss, "eval/MaskedAccuracy": 0.1, "batch": batch,
            "samples": batch * 8}


def test_time_to_reach_interpolates():
    pts = [_point(10, 7.0, 1), _point(20, 5.0, 2), _point(30, 4.0, 3)]
    assert ttq.time_to_reach(pts, 6.0) == pytest.approx(15.0)
    assert ttq.time_to_reach(pts, 7.5) == 10
    assert ttq.time_to_reach(pts, 3.0) is None


def test_report_writes_plot_csv_and_table(tmp_path):
    for model, losses in {"mosaic_bert": [7.0, 5.0, 4.0], "hf_bert": [7.5, 6.5, 6.0]}.items():
        (tmp_path / model).mkdir()
        rows = [_point(10 * (i + 1), loss, i + 1) for i, loss in enumerate(losses)]
        (tmp_path / model / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows + rows[-1:]))
    (tmp_path / "glue-mosaic_bert").mkdir()
    (tmp_path / "glue-mosaic_bert" / "results.json").write_text(json.dumps(
        {"glue_average": 0.7,
         "tasks": {"rte": {"status": "ok", "score": 0.6}, "cola": {"status": "ok", "score": 0.8}}}))
    (tmp_path / "glue-mosaic_bert-random-init").mkdir()
    (tmp_path / "glue-mosaic_bert-random-init" / "results.json").write_text(json.dumps(
        {"glue_average": 0.5,
         "tasks": {"rte": {"status": "ok", "score": 0.5}, "cola": {"status": "ok", "score": 0.5}}}))
    dest = tmp_path / "report"
    assert ttq.main(["report", "--out", str(tmp_path), "--dest", str(dest)]) == 0
    assert (dest / "loss_vs_time.png").stat().st_size > 1000
    csv_rows = (dest / "loss_vs_time.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 6  # header + 3 points per model (the repeated last eval counted once)
    md = (dest / "time_to_quality.md").read_text()
    assert "reaches HF BERT's final eval loss (6.000): 15 s = 0.50" in md
    assert "| MosaicBERT | 80.0 | 60.0 | 70.0 |" in md
    assert "| MosaicBERT, random init (no pretraining) | 50.0 | 50.0 | 50.0 |" in md


@pytest.mark.slow
def test_train_step_runs_a_budgeted_model(tmp_path):
    cmd = [sys.executable, "benchmarks/time_to_quality.py", "train", "--out", str(tmp_path), "--models", "mosaic_bert",
           "--data", "builtin://python-docs", "--tokenizer", "builtin://python-docs", "--size", "tiny",
           "--budget", "6s",
           "--eval_every", "3s", "--eval_batches", "1", "--batch", "16", "--no-compile", "--num_workers", "0",
           "device=cpu", "precision=fp32"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    points = ttq.read_eval_points(tmp_path / "mosaic_bert" / "metrics.jsonl")
    assert len(points) >= 2 and points[-1]["train_seconds"] >= 6.0
    assert (tmp_path / "mosaic_bert" / "latest-rank0.pt").exists()


def test_run_all_concurrent_pins_one_gpu_per_command(tmp_path):
    # Each command waits for the other's file, so this only finishes if the two really run at the same time.
    script = ("import os, sys, time, pathlib; d = pathlib.Path(sys.argv[1]); me, other = sys.argv[2], sys.argv[3]\n"
              "(d / me).write_text(os.environ['CUDA_VISIBLE_DEVICES'])\n"
              "t = time.time()\n"
              "while not (d / other).exists():\n"
              "    assert time.time() - t < 60; time.sleep(0.05)\n")
    cmds = [[sys.executable, "-c", script, str(tmp_path), "a", "b"],
            [sys.executable, "-c", script, str(tmp_path), "b", "a"]]
    assert ttq.run_all(cmds, ["2", "3"], concurrent=True, timeout=120) == 0
    assert (tmp_path / "a").read_text() == "2" and (tmp_path / "b").read_text() == "3"


def test_run_all_stops_at_the_segment_timeout():
    cmds = [[sys.executable, "-c", "import time; time.sleep(60)"]]
    assert ttq.run_all(cmds, None, concurrent=False, timeout=1) == 3


def test_pick_links_the_setting_with_the_lowest_final_loss(tmp_path):
    runs = {"lr1": {"mosaic_bert": 4.0, "hf_bert": 6.5}, "lr2": {"mosaic_bert": 4.5, "hf_bert": 6.0}}
    for lr, losses in runs.items():
        for model, loss in losses.items():
            (tmp_path / lr / model).mkdir(parents=True)
            (tmp_path / lr / model / "metrics.jsonl").write_text(
                json.dumps(_point(10, 9.0, 1)) + "\n" + json.dumps(_point(20, loss, 2)) + "\n")
    (tmp_path / "lr3").mkdir()  # a setting that never ran is reported, not picked
    best = tmp_path / "best"
    candidates = [str(tmp_path / d) for d in ("lr1", "lr2", "lr3")]
    assert ttq.main(["pick", "--out", str(best), "--candidates", *candidates]) == 0
    assert (best / "mosaic_bert").resolve() == (tmp_path / "lr1" / "mosaic_bert").resolve()
    assert (best / "hf_bert").resolve() == (tmp_path / "lr2" / "hf_bert").resolve()
    assert "lr3: no result" in (best / "picked.txt").read_text()


def test_glue_variants_add_the_random_init_baseline(tmp_path):
    args = ttq.argparse.Namespace(out=str(tmp_path), models="mosaic_bert,hf_bert", random_init_baseline="mosaic_bert")
    assert ttq.glue_variants(args) == [
        ("mosaic_bert", "glue-mosaic_bert", str(tmp_path / "mosaic_bert" / "latest-rank0.pt")),
        ("mosaic_bert", "glue-mosaic_bert-random-init", None),
        ("hf_bert", "glue-hf_bert", str(tmp_path / "hf_bert" / "latest-rank0.pt")),
    ]


def test_report_adds_extra_curves_from_runs_and_earlier_csvs(tmp_path):
    for model, losses in {"mosaic_bert": [7.0, 5.0, 4.0], "hf_bert": [7.5, 6.5, 6.0]}.items():
        (tmp_path / model).mkdir()
        rows = [_point(10 * (i + 1), loss, i + 1) for i, loss in enumerate(losses)]
        (tmp_path / model / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    first = tmp_path / "first"
    assert ttq.main(["report", "--out", str(tmp_path), "--dest", str(first)]) == 0
    dest = tmp_path / "second"
    args = ["report", "--out", str(tmp_path), "--dest", str(dest),
            "--extra_curve", f"HF BERT, repeat run={first / 'loss_vs_time.csv'}:hf_bert",
            "--extra_curve", f"MosaicBERT again={tmp_path / 'mosaic_bert'}"]
    assert ttq.main(args) == 0
    md = (dest / "time_to_quality.md").read_text()
    assert "| HF BERT, repeat run | 6.000 | 30 | 3 |" in md
    assert "| MosaicBERT again | 4.000 | 30 | 3 |" in md
    assert len((dest / "loss_vs_time.csv").read_text().splitlines()) == 1 + 4 * 3
    missing = ["report", "--out", str(tmp_path), "--dest", str(dest), "--extra_curve",
               f"x={first / 'loss_vs_time.csv'}:no_such_model"]
    assert ttq.main(missing) == 2
