"""benchmarks/time_to_quality.py: time-to-target interpolation, the report (CSV, PNG, Markdown) and a tiny train."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
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
        {"glue_average": 0.7, "tasks": {"rte": {"status": "ok", "score": 0.6}, "cola": {"status": "ok", "score": 0.8}}}))
    dest = tmp_path / "report"
    assert ttq.main(["report", "--out", str(tmp_path), "--dest", str(dest)]) == 0
    assert (dest / "loss_vs_time.png").stat().st_size > 1000
    csv_rows = (dest / "loss_vs_time.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + 6  # header + 3 points per model (the repeated last eval counted once)
    md = (dest / "time_to_quality.md").read_text()
    assert "reaches HF BERT's final eval loss (6.000): 15 s = 0.50" in md
    assert "| MosaicBERT | 80.0 | 60.0 | 70.0 |" in md


@pytest.mark.slow
def test_train_step_runs_a_budgeted_model(tmp_path):
    cmd = [sys.executable, "benchmarks/time_to_quality.py", "train", "--out", str(tmp_path), "--models", "mosaic_bert",
           "--data", "builtin://python-docs", "--tokenizer", "builtin://python-docs", "--size", "tiny", "--budget", "6s",
           "--eval_every", "3s", "--eval_batches", "1", "--batch", "16", "--no-compile", "--num_workers", "0",
           "device=cpu", "precision=fp32"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    points = ttq.read_eval_points(tmp_path / "mosaic_bert" / "metrics.jsonl")
    assert len(points) >= 2 and points[-1]["train_seconds"] >= 6.0
    assert (tmp_path / "mosaic_bert" / "latest-rank0.pt").exists()
