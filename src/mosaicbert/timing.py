"""Wall-clock budgets for time-to-quality runs: stop after N minutes of training, evaluate every M seconds, and a
learning-rate schedule over the time budget instead of over a step count.

Composer counts training wall-clock in `state.timestamp.total_wct` (evaluation time excluded) and saves it in every
checkpoint, so a budgeted run that is killed and resumed with autoresume continues on the same clock.
"""

from __future__ import annotations

from typing import Callable

from composer.core import Callback, Event, State
from composer.loggers import Logger
from composer.optim import ComposerScheduler

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
