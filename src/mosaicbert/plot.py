"""Plot a pretraining run's metrics.jsonl: training loss and every evaluation metric against samples seen.

    python -m mosaicbert.plot runs/quickstart                 # writes runs/quickstart/metrics.png
    python -m mosaicbert.plot runs/a runs/b -o compare.png    # several runs on the same axes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Dict, List, Tuple

Series = Dict[str, List[Tuple[float, float]]]  # metric -> [(samples, value)]


def read_metrics(path: str) -> Series:
    """metric name -> points (samples, value), from metrics.jsonl (a file or the run folder holding it)."""
    if os.path.isdir(path):
        path = os.path.join(path, "metrics.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file (a run folder of main.py holds metrics.jsonl)")
    series: Series = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not a JSON line: {e}") from None
            for key, value in row.items():
                if key in ("batch", "samples", "tokens", "train_seconds") or not isinstance(value, (int, float)):
                    continue
                points = series.setdefault(key, [])
                if not points or points[-1][0] != row["samples"]:  # an evaluation logged twice at one step
                    points.append((row["samples"], float(value)))
    if not series:
        raise ValueError(f"{path}: no metrics in it yet")
    return series


def plot(runs: List[str], out: str) -> str:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    data = {os.path.basename(os.path.normpath(r)): read_metrics(r) for r in runs}
    names = sorted({m for s in data.values() for m in s if m != "eval/perplexity"},
                   key=lambda m: (m != "train_loss", m))
    fig, axes = plt.subplots(len(names), 1, figsize=(7, 2.6 * len(names)), sharex=True, squeeze=False)
    for ax, metric in zip(axes[:, 0], names):
        for run, series in data.items():
            if metric in series:
                xs, ys = zip(*series[metric])
                ax.plot(xs, ys, marker="." if len(xs) < 30 else None, label=run)
        ax.set_ylabel(metric.replace("eval/", "eval "))
        ax.grid(alpha=0.3)
    axes[0, 0].legend(loc="best")
    axes[-1, 0].set_xlabel("samples")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", help="run folders (or metrics.jsonl files)")
    parser.add_argument("-o", "--out", help="image file (default: metrics.png beside the first metrics given)")
    args = parser.parse_args(argv)
    first = args.runs[0] if os.path.isdir(args.runs[0]) else os.path.dirname(args.runs[0]) or "."
    try:
        out = plot(args.runs, args.out or os.path.join(first, "metrics.png"))
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
