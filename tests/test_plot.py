"""python -m mosaicbert.plot: metrics.jsonl of one or more runs -> an image."""

from __future__ import annotations

import json

import pytest

from mosaicbert.plot import main, read_metrics


def _write(folder, rows):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_reads_series_and_draws_a_png(tmp_path):
    rows = [{"batch": 10, "samples": 320, "train_loss": 7.5}, {"batch": 20, "samples": 640, "train_loss": 6.5},
            {"batch": 20, "samples": 640, "eval/LanguageCrossEntropy": 6.7},
            {"batch": 20, "samples": 640, "eval/LanguageCrossEntropy": 6.7}]  # an eval logged twice
    _write(tmp_path / "a", rows)
    series = read_metrics(str(tmp_path / "a"))
    assert series == {"train_loss": [(320, 7.5), (640, 6.5)], "eval/LanguageCrossEntropy": [(640, 6.7)]}
    _write(tmp_path / "b", rows[:2])
    assert main([str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert (tmp_path / "a" / "metrics.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_input_names_the_file_and_line(tmp_path, capsys):
    assert main([str(tmp_path / "missing")]) == 2
    assert "missing: no such file (a run folder of main.py holds metrics.jsonl)" in capsys.readouterr().err
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text('{"batch": 1, "samples": 2, "train_loss": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"metrics\.jsonl:2: not a JSON line"):
        read_metrics(str(tmp_path / "r"))
