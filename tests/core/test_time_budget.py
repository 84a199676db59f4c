"""Wall-clock budgets: time strings, the schedule over the budget, and a budgeted main.py run."""

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

from mosaicbert.core.config import ConfigError, parse_seconds
from mosaicbert.pretrain.config import load_pretrain_config

ROOT = Path(__file__).resolve().parents[2]


def test_parse_seconds():
    assert parse_seconds("90s") == 90.0 and parse_seconds("10min") == 600.0 and parse_seconds("1.5h") == 5400.0
    assert parse_seconds("100ba") is None and parse_seconds(None) is None


def test_schedule_over_budget():
    from mosaicbert.core.callbacks import WallClockLinearSchedule

    sched = WallClockLinearSchedule(budget_s=100.0, warmup_fraction=0.1, alpha_f=0.02)

    def at(seconds):
        return sched(SimpleNamespace(timestamp=SimpleNamespace(total_wct=timedelta(seconds=seconds))))

    assert at(0) == 0.0 and at(5) == pytest.approx(0.5) and at(10) == pytest.approx(1.0)
    assert at(55) == pytest.approx(1.0 - 0.98 * 0.5)
    assert at(100) == pytest.approx(0.02) and at(500) == pytest.approx(0.02)


def test_budget_config_errors():
    with pytest.raises(ConfigError, match="max_train_time"):
        load_pretrain_config(str(ROOT / "yamls/quickstart.yaml"), ["max_train_time=ten minutes"])
    with pytest.raises(ConfigError, match="0.06dur"):
        load_pretrain_config(str(ROOT / "yamls/quickstart.yaml"), ["max_train_time=10min", "scheduler.t_warmup=100ba"])


@pytest.mark.slow
def test_budgeted_run_stops_and_evaluates_on_the_clock(tmp_path):
    cmd = [sys.executable, "main.py", "yamls/quickstart.yaml", "device=cpu", "precision=fp32", "data.num_workers=0",
           "max_duration=100000ba", "max_train_time=12s", "eval_interval=4s", "save_interval=6s",
           "eval_subset_num_batches=1", f"save_folder={tmp_path}", "run_name=budget"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval/LanguageCrossEntropy" in r]
    last_batch = max(r["batch"] for r in rows)
    assert 3 <= len(evals) <= 5, evals  # at ~4, 8, 12 s of training (+ the last batch)
    assert all(b["train_seconds"] > a["train_seconds"] for a, b in zip(evals, evals[1:]))
    assert 12.0 <= evals[-1]["train_seconds"] < 16.0 and evals[-1]["batch"] == last_batch
    assert list(tmp_path.glob(f"*ba{last_batch}-rank0.pt")), "no checkpoint at the end of the budget"


def test_wall_clock_interval_fires_once_per_slot_and_not_right_after_resume():
    from composer.core import Event

    from mosaicbert.core.callbacks import every_seconds

    def state(seconds, batch, max_batch=1000):
        return SimpleNamespace(timestamp=_Time(seconds, batch), max_duration=_Time(0, max_batch))

    fresh = every_seconds(10.0)
    fired = [t for t in (1, 5, 9, 11, 12, 19, 21) if fresh(state(t, int(t)), Event.BATCH_END)]
    assert fired == [11, 21]
    resumed = every_seconds(10.0)  # a run resumed at 35 s of training time
    assert not resumed(state(35, 350), Event.BATCH_END)
    assert resumed(state(41, 410), Event.BATCH_END)
    assert resumed(state(45, 1000), Event.BATCH_END)  # the last batch always fires


class _Time:
    """Just enough of Composer's Timestamp for every_seconds: wall-clock, batch, and >= on batches."""

    def __init__(self, seconds, batch):
        self.total_wct, self.batch = timedelta(seconds=seconds), batch

    def __ge__(self, other):
        return self.batch >= other.batch


def test_human_duration():
    from mosaicbert.core.runs import human_duration

    assert [human_duration(s) for s in (4.24, 65, 3725.2)] == ["4.2s", "1m 05s", "1h 02m 05s"]


def test_console_progress_lines(capsys):
    """One line per interval (loss, samples/s, elapsed, ETA from max_duration or from the time budget), one per
    evaluation."""
    import datetime
    from types import SimpleNamespace

    import torch
    from composer.core import Time

    from mosaicbert.core.callbacks import ConsoleProgress

    def state(batch, wct=10.0, max_duration="40ba"):
        ts = SimpleNamespace(batch=batch, sample=batch * 32, total_wct=datetime.timedelta(seconds=wct))
        return SimpleNamespace(timestamp=ts, max_duration=Time.from_timestring(max_duration),
                               loss=torch.tensor(2.5), dataloader_label="eval",
                               eval_metrics={"eval": {"MaskedAccuracy": SimpleNamespace(compute=lambda: 0.25)}})

    cb = ConsoleProgress(10)
    cb.fit_start(state(0), None)
    cb.batch_end(state(5), None)  # not on the interval
    cb.batch_end(state(10), None)
    cb.eval_end(state(10), None)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("[batch 10/40 25%] loss 2.5000 | ")
    assert " samples/s | " in lines[0] and ", ETA " in lines[0]
    assert lines[1] == "[eval at batch 10] MaskedAccuracy 0.2500"
    budget = ConsoleProgress(10, budget_s=40.0)
    budget.fit_start(state(0), None)
    budget.batch_end(state(10, wct=10.0, max_duration="100000000ba"), None)
    line = capsys.readouterr().out.strip()
    assert "[batch 10, 25% of the time budget]" in line and line.endswith("ETA 30.0s")


def test_metrics_jsonl_keeps_an_earlier_run_aside_and_this_runs_first_evaluation(tmp_path):
    import json
    from types import SimpleNamespace

    from mosaicbert.core.callbacks import MetricsJsonl

    path = tmp_path / "metrics.jsonl"
    old = [{"batch": 10, "train_loss": 5.0}, {"batch": 20, "eval/x": 1.0}]
    now = [{"batch": 0, "eval/x": 2.0}]  # this run's evaluation before training
    path.write_text("".join(json.dumps(r) + "\n" for r in old + now))
    MetricsJsonl(str(path)).fit_start(SimpleNamespace(timestamp=SimpleNamespace(batch=0)), None)
    assert [json.loads(line) for line in path.read_text().splitlines()] == now
    (aside,) = [p for p in tmp_path.iterdir() if p.name.startswith("metrics-")]
    assert [json.loads(line) for line in aside.read_text().splitlines()] == old
    # a resumed run keeps the rows up to its checkpoint and drops the ones it trains again
    path.write_text("".join(json.dumps(r) + "\n" for r in old))
    MetricsJsonl(str(path)).fit_start(SimpleNamespace(timestamp=SimpleNamespace(batch=10)), None)
    assert [json.loads(line) for line in path.read_text().splitlines()] == old[:1]
