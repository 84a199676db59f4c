"""Where the GPU waits: idle gaps between kernels in a chrome trace from `throughput.py --profile N --trace PREFIX`.

    python benchmarks/kernel_gaps.py TRACE.json [--steps N] [--min_us 20] [--top 15]

Prints the GPU's busy and idle time per step and the longest gaps with the kernels on either side of each, which
says what the host was doing while the GPU waited (e.g. a sync at the start of the forward, launch-bound stretches).
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict


def load_kernels(path: str) -> list[tuple[float, float, str]]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        events = json.load(f)["traceEvents"]
    kernels = [(e["ts"], e["ts"] + e.get("dur", 0), e["name"]) for e in events
               if e.get("ph") == "X" and e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")]
    return sorted(kernels)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace")
    p.add_argument("--steps", type=int, default=3, help="steps in the trace (throughput.py --profile N)")
    p.add_argument("--min_us", type=float, default=20.0, help="report gaps at least this long")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    kernels = load_kernels(args.trace)
    if not kernels:
        raise SystemExit(f"{args.trace}: no GPU kernels in the trace")
    span = kernels[-1][1] - kernels[0][0]
    busy, end, gaps = 0.0, kernels[0][0], []
    by_pair: dict[tuple[str, str], list[float]] = defaultdict(list)
    prev = None
    for start, stop, name in kernels:
        if start > end and prev is not None:
            gap = start - end
            if gap >= args.min_us:
                gaps.append((gap, prev, name))
                by_pair[(prev[:70], name[:70])].append(gap)
        busy += max(0.0, stop - max(start, end))
        end = max(end, stop)
        prev = name
    n = args.steps
    print(f"{len(kernels)} kernels; first to last {span / 1e3 / n:.2f} ms/step, busy {busy / 1e3 / n:.2f}, "
          f"idle {(span - busy) / 1e3 / n:.2f} (gaps >= {args.min_us:g} us: {sum(g for g, _, _ in gaps) / 1e3 / n:.2f})")
    print(f"\nlongest gaps (us) with the kernel before -> after:")
    for gap, before, after in sorted(gaps, reverse=True)[: args.top]:
        print(f"  {gap:9.1f}  {before[:70]}  ->  {after[:70]}")
    print(f"\ngaps by kernel pair (total us per step, count per step):")
    pairs = sorted(by_pair.items(), key=lambda kv: -sum(kv[1]))[: args.top]
    for (before, after), gs in pairs:
        print(f"  {sum(gs) / n:9.1f}  x{len(gs) / n:5.1f}  {before}  ->  {after}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
