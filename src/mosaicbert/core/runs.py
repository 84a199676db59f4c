"""Where a run's files go, and the console lines every command prints."""

from __future__ import annotations

import logging
import os
from typing import Optional

from composer.utils import dist


def run_folder(save_folder: Optional[str], run_name: Optional[str], command: str = "") -> str:
    """The folder a run owns: its save_folder, else runs/[<command>/]<run_name>."""
    return save_folder or os.path.join("runs", *([command] if command else []), run_name or command or "mosaicbert")


def setup_logging() -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Composer logs a dozen INFO lines per Trainer; keep the per-job start/end lines readable.
    logging.getLogger("composer").setLevel(logging.WARNING)


def progress(msg: str) -> None:
    """One console line, from rank 0 only."""
    if dist.get_global_rank() == 0:
        print(msg, flush=True)


def human_duration(seconds: float) -> str:
    """3725.2 -> '1h 02m 05s'; 65 -> '1m 05s'; 4.2 -> '4.2s'."""
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h {m:02d}m {s:02d}s" if h else f"{m}m {s:02d}s"
