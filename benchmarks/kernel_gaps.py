"""Where the GPU waits: idle gaps between kernels in a chrome trace from `throughput.py --profile N --trace PREFIX`.

    python benchmarks/kernel_gaps.py TRACE.json [--steps N] [--min_us 20] [--top 15] [--origins NAME ...]

Prints the GPU's busy and idle time per step and the longest gaps with the kernels on either side of each, which
says what the host was doing while the GPU waited (e.g. a sync at the start of the forward, launch-bound stretches).
--origins NAME: for the GPU events whose name contains NAME (e.g. "Memset", "reduce_kernel"), the host ops that
launched them, innermost last, with counts per step. Needs a trace with the host's ops (`throughput.py --trace_host`).
"""

from __future__ import annotations

import argparse
import gzip
import json
from collections import defaultdict

GPU_CATEGORIES = ("kernel", "gpu_memcpy", "gpu_memset")
HOST_OP_CATEGORIES = ("cpu_op", "user_annotation")


def load_events(path: str) -> list[dict]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]


def gpu_kernels(events: list[dict]) -> list[tuple[float, float, str]]:
    """(start, end, name) of every GPU kernel, memcpy and memset, in time order."""
    return sorted((e["ts"], e["ts"] + e.get("dur", 0), e["name"]) for e in events if e.get("cat") in GPU_CATEGORIES)


def load_kernels(path: str) -> list[tuple[float, float, str]]:
    return gpu_kernels(load_events(path))


def kernel_origins(events: list[dict], pattern: str, depth: int = 3) -> dict[str, int]:
    """Count the GPU events named like `pattern` by the chain of host ops (outermost first, at most `depth`) that
    enclosed their launch call (the runtime/driver event with the same correlation id) on the launching thread."""
    launches = {e["args"]["correlation"]: e for e in events
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    queries = sorted((launches[c]["ts"], launches[c]["tid"]) for e in events
                     if e.get("cat") in GPU_CATEGORIES and pattern in e["name"]
                     and (c := e.get("args", {}).get("correlation")) in launches)
    ops_by_thread: dict = defaultdict(list)
    for e in events:
        if e.get("cat") in HOST_OP_CATEGORIES:
            ops_by_thread[e["tid"]].append((e["ts"], -e.get("dur", 0), e["name"]))  # outer first at equal starts
    counts: dict[str, int] = defaultdict(int)
    for tid in {t for _, t in queries}:
        ops, stack, i = sorted(ops_by_thread[tid]), [], 0
        for ts, _ in (q for q in queries if q[1] == tid):
            while i < len(ops) and ops[i][0] <= ts:  # open every op that started before the launch
                stack.append((ops[i][0] - ops[i][1], ops[i][2]))
                i += 1
            stack = [(end, name) for end, name in stack if end >= ts]  # host ops nest, so this keeps the chain
            counts[" > ".join(name for _, name in stack[-depth:]) or "(no host op)"] += 1
    return dict(counts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace")
    p.add_argument("--steps", type=int, default=3, help="steps in the trace (throughput.py --profile N)")
    p.add_argument("--min_us", type=float, default=20.0, help="report gaps at least this long")
    p.add_argument("--top", type=int, default=15)
    p.add_argument("--origins", nargs="+", default=[], metavar="NAME",
                   help="name the host ops that launched the GPU events whose name contains NAME")
    args = p.parse_args(argv)
    events = load_events(args.trace)
    kernels = gpu_kernels(events)
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
          f"idle {(span - busy) / 1e3 / n:.2f} "
          f"(gaps >= {args.min_us:g} us: {sum(g for g, _, _ in gaps) / 1e3 / n:.2f})")
    print("\nlongest gaps (us) with the kernel before -> after:")
    for gap, before, after in sorted(gaps, reverse=True)[: args.top]:
        print(f"  {gap:9.1f}  {before[:70]}  ->  {after[:70]}")
    print("\ngaps by kernel pair (total us per step, count per step):")
    pairs = sorted(by_pair.items(), key=lambda kv: -sum(kv[1]))[: args.top]
    for (before, after), gs in pairs:
        print(f"  {sum(gs) / n:9.1f}  x{len(gs) / n:5.1f}  {before}  ->  {after}")
    for pattern in args.origins:
        origins = kernel_origins(events, pattern)
        print(f"\nlaunched by (count per step) for GPU events named like {pattern!r}:")
        if not origins:
            print("  none found (is the host in the trace? throughput.py --trace_host)")
        for chain, count in sorted(origins.items(), key=lambda kv: -kv[1])[: args.top]:
            print(f"  x{count / n:6.1f}  {chain}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
