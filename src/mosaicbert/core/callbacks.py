"""Small Composer callbacks the recipe needs and Composer does not ship, and the wall-clock budget of
time-to-quality runs."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from typing import Any, Callable, Optional

import torch
from composer.core import Callback, Event, State
from composer.loggers import Logger
from composer.optim import ComposerScheduler
from composer.utils import dist

from mosaicbert.core.runs import human_duration

log = logging.getLogger("mosaicbert")


class FiniteLossCheck(Callback):
    """Stop with a clear error as soon as the training loss is NaN or infinite.

    Composer's NaNMonitor only catches NaN and says nothing about what to do; a diverged run should stop at once,
    naming the step, instead of burning GPU hours on garbage.

    It reads the loss Composer has already brought to the host at the end of the batch (`state.total_loss_dict`,
    averaged over ranks, so every rank sees the same value and all stop together). Reading the loss tensor itself
    would make the host wait for the GPU in the middle of every step.
    """

    def batch_end(self, state: State, logger: Logger) -> None:
        losses = getattr(state, "total_loss_dict", None) or {}
        bad = {k: v for k, v in losses.items() if not math.isfinite(float(v))}
        if bad:
            raise RuntimeError(
                f"training loss is not finite at batch {int(state.timestamp.batch) - 1} ({bad}): the run diverged. "
                f"Lower optimizer.lr, lengthen the warmup (scheduler.t_warmup), enable algorithms.gradient_clipping, "
                f"or try precision=fp32 to check for a numerics problem; resume from the last checkpoint with "
                f"load_path/autoresume."
            )


class MetricsJsonl(Callback):
    """Appends one JSON line per log call (train loss every `interval` batches, every eval) to a file.

    Plot-ready: each line has batch, samples, wall-clock seconds and the values logged at that point.
    """

    def __init__(self, path: str, interval: int = 10):
        self.path = path
        self.interval = interval
        self._train_wct = 0.0

    def _write(self, state: State, values: dict[str, Any]) -> None:
        if dist.get_global_rank() != 0:
            return
        os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
        ts = state.timestamp
        row = {
            "batch": int(ts.batch),
            "samples": int(ts.sample),
            "tokens": int(ts.token),
            "train_seconds": float(ts.total_wct.total_seconds()),
            **values,
        }
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def fit_start(self, state: State, logger: Logger) -> None:
        """After a resume, drop rows logged past the checkpoint: those batches are trained (and logged) again."""
        if dist.get_global_rank() != 0 or not os.path.exists(self.path):
            return
        resumed_at = int(state.timestamp.batch)
        with open(self.path) as f:
            rows = [line for line in f if line.strip()]
        if resumed_at == 0:
            # A fresh run over an old one (save_overwrite): the old rows (up to the last one past batch 0) go to a
            # file of their own; the rows after them are this run's evaluation before training (eval_at_start).
            past = [i for i, line in enumerate(rows) if json.loads(line).get("batch", 0) > 0]
            if past:
                aside = f"{os.path.splitext(self.path)[0]}-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
                with open(aside, "w") as f:
                    f.writelines(rows[: past[-1] + 1])
                with open(self.path, "w") as f:
                    f.writelines(rows[past[-1] + 1:])
                log.warning("%s held an earlier run's metrics: moved to %s", self.path, aside)
            return
        kept = [line for line in rows if json.loads(line).get("batch", 0) <= resumed_at]
        if len(kept) != len(rows):
            with open(self.path, "w") as f:
                f.writelines(kept)

    def batch_end(self, state: State, logger: Logger) -> None:
        if int(state.timestamp.batch) % self.interval == 0 and isinstance(state.loss, torch.Tensor):
            self._write(state, {"train_loss": float(state.loss.detach().float().cpu())})

    def eval_end(self, state: State, logger: Logger) -> None:
        values = {}
        for name, metric in (state.eval_metrics.get(state.dataloader_label, {}) or {}).items():
            value = metric.compute()
            value = float(value.cpu()) if isinstance(value, torch.Tensor) else float(value)
            values[f"eval/{name}"] = value
            if name == "LanguageCrossEntropy" and math.isfinite(value):
                values["eval/perplexity"] = math.exp(min(value, 50.0))
        self._write(state, values)


class StepSeededRNG(Callback):
    """Reseed torch's RNG (dropout) at every batch from (seed, rank, batch index).

    Composer 0.32 restores the saved RNG state on a mid-epoch resume only when it replays ("spins") the dataloader;
    with a StreamingDataset, which resumes by itself, the RNG restarts from the seed, so dropout masks after a
    resume differ from an uninterrupted run. Seeding from the batch index makes them identical. (MLM masks are
    already a function of (seed, epoch, sample index); see mosaicbert.pretrain.masking.)
    """

    def __init__(self, seed: int):
        self.seed = seed

    def batch_start(self, state: State, logger: Logger) -> None:
        rank, batch = dist.get_global_rank(), int(state.timestamp.batch)
        seed = (self.seed * 1_000_003 + rank * 65_537 + batch) % (2**63 - 1)
        # Only the generators this rank draws from: the CPU one and its own GPU's. torch.manual_seed also seeds every
        # other device and backend, ~0.1-0.5 ms of host time per batch (measured on CPU), where the GPU then waits.
        torch.default_generator.manual_seed(seed)
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.default_generators[torch.cuda.current_device()].manual_seed(seed)


# --------------------------------------------------------------------------------------------------------------
# Wall-clock budgets for time-to-quality runs: stop after N minutes of training, evaluate every M seconds, and a
# learning-rate schedule over the time budget instead of over a step count.
#
# Composer counts training wall-clock in `state.timestamp.total_wct` (evaluation time excluded) and saves it in every
# checkpoint, so a budgeted run that is killed and resumed with autoresume continues on the same clock.
# --------------------------------------------------------------------------------------------------------------

def train_seconds(state: State) -> float:
    return state.timestamp.total_wct.total_seconds()


class WallClockBudget(Callback):
    """Ends training (with its final eval and checkpoint) once `budget_s` seconds of training have passed."""

    def __init__(self, budget_s: float):
        self.budget_s = budget_s

    def batch_end(self, state: State, logger: Logger) -> None:
        if train_seconds(state) >= self.budget_s:
            state.stop_training()


def every_seconds(interval_s: float) -> Callable[[State, Event], bool]:
    """An eval or save interval for Composer: true at the first batch after each multiple of `interval_s` of
    training time, and at the last batch. Use one per consumer: it remembers the last slot it fired in."""
    last: dict = {"slot": None}

    def due(state: State, event: Event) -> bool:
        if event not in (Event.BATCH_END, Event.BATCH_CHECKPOINT):
            return False
        slot = int(train_seconds(state) // interval_s)
        if last["slot"] is None:  # first call: a fresh run starts in slot 0, a resumed one wherever it stopped
            last["slot"] = 0 if int(state.timestamp.batch) <= 1 else slot
        if slot > last["slot"] or state.timestamp >= state.max_duration:
            last["slot"] = slot
            return True
        return False

    return due


class WallClockLinearSchedule(ComposerScheduler):
    """Linear warmup over `warmup_fraction` of the time budget, then linear decay to `alpha_f` at its end."""

    def __init__(self, budget_s: float, warmup_fraction: float, alpha_f: float):
        if not 0.0 <= warmup_fraction < 1.0:
            raise ValueError(f"warmup fraction must be in [0, 1), got {warmup_fraction}")
        self.budget_s, self.warmup, self.alpha_f = budget_s, warmup_fraction, alpha_f

    def __call__(self, state: State, ssr: float = 1.0) -> float:
        frac = min(train_seconds(state) / self.budget_s, 1.0)
        if self.warmup > 0 and frac < self.warmup:
            return frac / self.warmup
        return 1.0 - (1.0 - self.alpha_f) * (frac - self.warmup) / (1.0 - self.warmup)


class ConsoleProgress(Callback):
    """One console line every `interval` batches and one per evaluation (rank 0), for logs and non-terminals:

        [batch 80/160 50%] loss 6.2131 | 412 samples/s | 31.2s elapsed, ETA 31.0s
        [eval at batch 80] LanguageCrossEntropy 6.1020 | MaskedAccuracy 0.1210
    """

    def __init__(self, interval: int, budget_s: Optional[float] = None):
        self.interval = max(1, interval)
        self.budget_s = budget_s  # a training-time budget (max_train_time): the ETA counts down to it
        self._t0 = None
        self._last = None  # (time, samples) at the previous line
        self._start_batch = 0

    def fit_start(self, state: State, logger: Logger) -> None:
        self._t0 = time.time()
        self._last = (self._t0, int(state.timestamp.sample))
        self._start_batch = int(state.timestamp.batch)  # after a resume, the ETA counts this run's pace only

    def batch_end(self, state: State, logger: Logger) -> None:
        batch = int(state.timestamp.batch)
        if batch % self.interval or dist.get_global_rank() != 0 or self._t0 is None:
            return
        now, samples = time.time(), int(state.timestamp.sample)
        rate = (samples - self._last[1]) / max(now - self._last[0], 1e-9)
        self._last = (now, samples)
        elapsed = now - self._t0
        total = ""
        eta = ""
        if self.budget_s is not None:
            trained = state.timestamp.total_wct.total_seconds()
            total = f", {100 * min(1.0, trained / self.budget_s):.0f}% of the time budget"
            eta = f", ETA {human_duration(max(0.0, self.budget_s - trained))}"
        elif state.max_duration is not None and state.max_duration.unit.name == "BATCH":
            done = batch / int(state.max_duration.value)
            total = f"/{int(state.max_duration.value)} {100 * done:.0f}%"
            if batch > self._start_batch:
                pace = elapsed / (batch - self._start_batch)
                eta = f", ETA {human_duration(pace * (int(state.max_duration.value) - batch))}"
        loss = float(state.loss.detach().float().cpu()) if isinstance(state.loss, torch.Tensor) else float("nan")
        print(f"[batch {batch}{total}] loss {loss:.4f} | {rate:,.0f} samples/s | "
              f"{human_duration(elapsed)} elapsed{eta}", flush=True)

    def eval_end(self, state: State, logger: Logger) -> None:
        if dist.get_global_rank() != 0:
            return
        label = state.dataloader_label or "eval"
        metrics = state.eval_metrics.get(label, {})
        shown = " | ".join(f"{name} {float(m.compute()):.4f}" for name, m in metrics.items())
        print(f"[{label} at batch {int(state.timestamp.batch)}] {shown}", flush=True)
