"""Training-step throughput of MosaicBERT vs Hugging Face BERT, in one process, on the same batches.

    python benchmarks/throughput.py --out results.json                  # GPU: base size, eager + compiled
    python benchmarks/throughput.py --size tiny --device cpu --steps 3  # smoke test on CPU

One step = forward, backward and a fused AdamW step under bf16 autocast (fp32 on CPU). Timing: CUDA events around
each step after warm-up, the steps queued back to back as in training (one sync after the last); the median of
--steps steps is reported. Each model gets the batch keys its forward takes (as Composer's HuggingFaceModel does):
MosaicBERT also gets the collator's per-row host counts, which spare it a host sync per step.

MFU = useful FLOPs / step time / measured bf16 matmul peak of this GPU (8192^3 matmul); the useful FLOPs are
defined in mosaicbert.benchmarking. --host_counts off feeds MosaicBERT without the collator's per-row counts (one
host sync per step, the cost they save).

On CUDA each row also records the GPU's median SM clock and board power over its timed steps (`nvidia-smi`, when
present): a GPU at its power limit lowers its clock under sustained load, which the step time alone does not show.
"""

from __future__ import annotations

import argparse
import gzip
import inspect
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from mosaicbert.benchmarking import ClockPowerSampler, matmul_peak, profile_steps, useful_flops

SIZES = {
    "base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
    "tiny": dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512),
}
VOCAB = 30528


def packed_rows(texts: list[list[int]], batch: int, seq: int, start: int):
    """`batch` rows that each pack whole documents (texts from `start` on, first fit) -> (ids [batch, seq],
    sequence_id [batch, seq], lengths [batch], documents per row, index of the next unused document)."""
    from mosaicbert.pretrain.mlm import pack_documents

    window = [texts[(start + i) % len(texts)] for i in range(4 * batch)]  # enough short documents to fill the rows
    rows = pack_documents([len(t) for t in window], seq)[:batch]
    ids = torch.zeros(batch, seq, dtype=torch.long)
    sequence_id = torch.zeros(batch, seq, dtype=torch.long)
    lengths = torch.zeros(batch, dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for j, d in enumerate(members):
            ids[r, at:at + len(window[d])] = torch.tensor(window[d])
            sequence_id[r, at:at + len(window[d])] = j
            at += len(window[d])
        lengths[r] = at
    used = max(d for members in rows for d in members) + 1
    return ids, sequence_id, lengths, [len(m) for m in rows], start + used


def make_batches(n: int, batch: int, seq: int, mask_prob: float, seed: int, texts: list[list[int]] | None,
                 static: bool = False, packed: bool = False):
    """Batches with 75% full-length rows and 25% uniform shorter ones (or real token rows when given).
    static: every row full length with the same number of masked tokens, so every batch has the same numbers of
    real and of masked tokens (the shapes CUDA graphs need).
    packed: each row packs several whole documents of `texts` (with `sequence_id` and `document_counts`, as the
    MLM collator sends them with data.packing), instead of one document per row."""
    g = torch.Generator().manual_seed(seed)
    out = []
    cursor = 0
    for b in range(n):
        extra = {}
        if packed:
            ids, sequence_id, lengths, counts, cursor = packed_rows(texts, batch, seq, cursor)
            extra = dict(sequence_id=sequence_id, document_counts=counts)
        elif texts:
            rows = [texts[(b * batch + i) % len(texts)][:seq] for i in range(batch)]
            lengths = torch.tensor([len(r) for r in rows])
            ids = torch.zeros(batch, seq, dtype=torch.long)
            for i, r in enumerate(rows):
                ids[i, : len(r)] = torch.tensor(r)
        else:
            full = torch.rand(batch, generator=g) < (1.0 if static else 0.75)
            lengths = torch.where(full, torch.full((batch,), seq), torch.randint(16, seq, (batch,), generator=g))
            ids = torch.randint(1000, VOCAB - 8, (batch, seq), generator=g)
            ids[:, 0] = 101
        attn = (torch.arange(seq)[None, :] < lengths[:, None]).long()
        ids = ids * attn
        special = (ids == 101) | (ids == 102) | (attn == 0)  # [CLS] / [SEP] of every document, padding
        if static:  # the same count per row: the first round(mask_prob * seq) of a random order of the non-special
            scores = torch.rand(batch, seq, generator=g).masked_fill(special, 2.0)
            masked = torch.zeros_like(special).scatter_(1, scores.argsort(1)[:, : round(mask_prob * seq)], True)
        else:
            masked = (torch.rand(batch, seq, generator=g) < mask_prob) & ~special
        labels = torch.where(masked, ids, torch.full_like(ids, -100))
        inputs = torch.where(masked, torch.full_like(ids, 103), ids)
        out.append(dict(input_ids=inputs, attention_mask=attn, token_type_ids=torch.zeros_like(ids), labels=labels,
                        # per-row host counts, as the MLM collator (pad_mlm_batch) sends them
                        sequence_lengths=attn.sum(1).tolist(), label_counts=(labels != -100).sum(1).tolist(),
                        **extra))
    return out


def load_texts(path: str, vocab: str, seq: int, limit: int = 20000) -> list[list[int]]:
    """Real token rows: from an MDS folder written by mosaicbert.pretrain.convert (its train/ split; raw text or token
    ids), or from C4-format *.json.gz files (one row per document, truncated)."""
    from mosaicbert.core.tokenizer import load_tokenizer

    tok = load_tokenizer(vocab)
    root = Path(path)
    split = root / "train" if (root / "train" / "index.json").exists() else root
    if (split / "index.json").exists():
        from streaming import StreamingDataset

        ds = StreamingDataset(local=str(split), shuffle=False, batch_size=1)
        rows, docs = [], []
        for i in range(min(limit, ds.num_samples)):
            sample = ds[i]
            if "input_ids" in sample:
                rows.append([int(t) for t in sample["input_ids"][:seq]])
            else:
                docs.append(sample["text"])
        return rows + (tok(docs, truncation=True, max_length=seq)["input_ids"] if docs else [])
    files = sorted(root.glob("*.json.gz")) if root.is_dir() else [root]
    docs = []
    for f in files:
        with gzip.open(f, "rt") as fh:
            for line in fh:
                docs.append(json.loads(line)["text"])
                if len(docs) >= limit:
                    break
    return tok(docs, truncation=True, max_length=seq)["input_ids"]


def parse_config_set(text: str) -> dict:
    """'default' -> {}; 'attention_backend=triton;hidden_dropout_prob=0.0' -> {...} (values parsed as YAML)."""
    import yaml

    if text == "default":
        return {}
    out = {}
    for item in filter(None, text.split(";")):
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--mosaic_configs: {item!r} is not KEY=VALUE (sets are ';'-separated, e.g. "
                             "'attention_backend=triton;hidden_dropout_prob=0.0')")
        out[key.strip()] = yaml.safe_load(value)
    return out


def build(model_name: str, size: str, attention_backend: str | None, overrides: dict | None = None):
    from transformers import BertConfig, BertForMaskedLM

    from mosaicbert import MosaicBertConfig, MosaicBertForMaskedLM

    if model_name == "mosaic_bert":
        extra = {"attention_backend": attention_backend} if attention_backend else {}
        unknown = sorted(set(overrides or {}) - set(MosaicBertConfig().to_dict()))
        if unknown:  # PretrainedConfig would keep a misspelled key as an attribute nobody reads
            raise ValueError(f"--mosaic_configs: {unknown} are not MosaicBertConfig keys")
        extra.update(overrides or {})
        cfg = MosaicBertConfig(vocab_size=VOCAB, **SIZES[size], **extra)
        return MosaicBertForMaskedLM(cfg), cfg
    cfg = BertConfig(vocab_size=VOCAB, attention_probs_dropout_prob=0.1, **SIZES[size])
    return BertForMaskedLM(cfg), cfg


def resolved_backend(cfg, device) -> str:
    """The configured attention backend and, for "auto", what it resolved to under bf16 training here."""
    if not hasattr(cfg, "attention_backend"):
        return "sdpa (transformers)"
    from mosaicbert.model.attention import resolve_backend

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name = resolve_backend(cfg.attention_backend, device, dtype, cfg.hidden_size // cfg.num_attention_heads,
                           cfg.attention_probs_dropout_prob).name
    return name if cfg.attention_backend == name else f"{cfg.attention_backend} ({name})"


def run_one(model_name, compiled, args, batches, device, peak, host_counts=True, overrides=None):
    torch.manual_seed(0)
    torch._dynamo.reset()  # every row compiles from scratch
    try:
        row = _run_one(model_name, compiled, args, batches, device, peak, host_counts, overrides or {})
        if device.type == "cuda":  # the row's model and optimizer are gone now
            torch.cuda.empty_cache()
        return row
    except Exception as e:  # noqa: BLE001 - one failing setting must not cost the other rows of a GPU run
        if args.fail_fast:
            raise
        import traceback

        traceback.print_exc()
        if device.type == "cuda":
            try:
                torch.cuda.empty_cache()
            except Exception:  # noqa: BLE001 - a CUDA fault poisons the context: the next rows will say so too
                pass
        return dict(model=model_name, compiled=compiled, host_counts=host_counts, config_overrides=overrides or {},
                    error=f"{type(e).__name__}: {str(e)[:500]}")


def _run_one(model_name, compiled, args, batches, device, peak, host_counts, overrides):
    model, cfg = build(model_name, args.size, args.attention_backend, overrides)
    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    step_model = (torch.compile(model, mode=args.compile_mode) if compiled else model)
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    takes = set(inspect.signature(model.forward).parameters)  # the keys its forward takes (as Composer filters)
    if not host_counts:  # the forward then counts real and masked tokens on the GPU, with a host sync
        takes -= {"sequence_lengths", "label_counts"}
    dev_batches = [{k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in b.items() if k in takes}
                   for b in batches]

    def step(b):
        with amp:
            loss = step_model(**b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    t0 = time.perf_counter()
    for i in range(args.warmup):
        step(dev_batches[i % len(dev_batches)])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    warm_s = time.perf_counter() - t0
    times, host_times, events = [], [], []
    flops = [useful_flops(model_name, cfg, batches[(args.warmup + i) % len(batches)]) for i in range(args.steps)]
    with ClockPowerSampler.for_device(device) as sampler:  # the GPU's clock and power over the timed steps
        for i in range(args.steps):
            b = dev_batches[(args.warmup + i) % len(dev_batches)]
            if device.type == "cuda":  # steps queued back to back; each one's time is read from its events at the end
                s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                s.record()
                t = time.perf_counter()
                loss = step(b)
                host_times.append(time.perf_counter() - t)  # host time to issue the step (incl. the model's syncs)
                e.record()
                events.append((s, e))
            else:
                t = time.perf_counter()
                loss = step(b)
                times.append(time.perf_counter() - t)
        if events:
            torch.cuda.synchronize()
            times = [s.elapsed_time(e) / 1e3 for s, e in events]
    trace = None
    if args.trace and args.profile:
        label = "-".join([model_name, "compiled" if compiled else "eager"] + ([] if host_counts else ["no-host-counts"])
                         + [f"{k}={v}" for k, v in sorted((overrides or {}).items())])
        trace = f"{args.trace}-{label}.json"
    profile, top_kernels = (profile_steps(step, dev_batches, args.profile, device, args.profile_top, trace,
                                          args.trace_host) if args.profile else (None, []))
    med = statistics.median(times)
    bsz = batches[0]["input_ids"].shape[0]
    real_tokens = statistics.mean(float(b["attention_mask"].sum()) for b in batches)
    tflops = statistics.mean(flops) / med / 1e12
    row = dict(
        model=model_name, compiled=compiled, size=args.size, batch=bsz, seq=args.seq,
        host_counts=host_counts and model_name == "mosaic_bert", config_overrides=overrides,
        compile_mode=args.compile_mode if compiled else None,
        attention_backend=resolved_backend(cfg, device),
        ms_per_step=med * 1e3,
        host_ms_per_step=statistics.median(host_times) * 1e3 if host_times else float("nan"),
        seq_per_s=bsz / med, real_tokens_per_s=real_tokens / med,
        packing=args.packing, padding=1.0 - real_tokens / batches[0]["attention_mask"].numel(),
        useful_tflops=tflops, mfu=tflops * 1e12 / peak if math.isfinite(peak) else float("nan"),
        peak_mem_gib=torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
        warmup_s=warm_s, final_loss=float(loss.detach()), profile_ms_per_step=profile, top_kernels=top_kernels,
        **sampler.summary(),
    )
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mosaic_bert,hf_bert")
    p.add_argument("--modes", default="eager,compiled", help="eager and/or compiled")
    p.add_argument("--size", default="base", choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seq", type=int, default=128)
    p.add_argument("--mask_prob", type=float, default=0.30)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--data", default=None,
                   help="real token rows: an MDS folder (as main.py reads) or C4-format *.json.gz file/folder")
    p.add_argument("--tokenizer", default="bert-base-uncased")
    p.add_argument("--packing", action="store_true",
                   help="with --data: rows pack several whole documents (attention within each document only), "
                        "MosaicBERT only")
    p.add_argument("--static_batches", action="store_true",
                   help="every row full length with the same number of masked tokens: fixed T and M for every batch "
                        "(to measure CUDA graphs, --compile_mode reduce-overhead, without bucketing)")
    p.add_argument("--attention_backend", default=None)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--profile", type=int, default=0, help="also profile this many steps: time per kernel category")
    p.add_argument("--compile_mode", default=None,
                   help="torch.compile mode, e.g. max-autotune-no-cudagraphs (default: torch's default)")
    p.add_argument("--host_counts", default="on", choices=["on", "off", "both"],
                   help="MosaicBERT gets the collator's per-row token counts (on, as in training), not (off: one host "
                        "sync per step), or one row each (both)")
    p.add_argument("--mosaic_configs", nargs="+", default=["default"], metavar="SET",
                   help="MosaicBERT config override sets to compare in this run, each 'default' or "
                        "'KEY=VALUE;KEY=VALUE', e.g. default attention_backend=triton 'hidden_dropout_prob=0.0'")
    p.add_argument("--profile_top", type=int, default=15, help="with --profile: also record the N slowest kernels")
    p.add_argument("--trace", default=None, metavar="PREFIX",
                   help="with --profile: write each row's GPU kernel timeline to PREFIX-<row>.json (chrome trace)")
    p.add_argument("--sustained_peak_seconds", type=float, default=0.0,
                   help="also measure the matmul peak over this many seconds (reported; MFU keeps the short one)")
    p.add_argument("--trace_host", action="store_true",
                   help="with --trace: record the host's ops too (for kernel_gaps.py --origins; slows the host)")
    p.add_argument("--fail_fast", action="store_true", help="stop at the first failing row (default: record it)")
    args = p.parse_args(argv)
    try:
        config_sets = [parse_config_set(c) for c in args.mosaic_configs]
    except ValueError as e:
        p.error(str(e))

    device = torch.device(args.device)
    texts = load_texts(args.data, args.tokenizer, args.seq) if args.data else None
    if args.packing and not texts:
        p.error("--packing needs --data (documents to pack)")
    if args.packing and args.models != "mosaic_bert":
        p.error("--packing: only --models mosaic_bert restricts attention to each document of a row")
    batches = make_batches(8, args.batch, args.seq, args.mask_prob, 0, texts, args.static_batches, args.packing)
    peak = matmul_peak(device)
    env = dict(torch=torch.__version__, device=torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
               matmul_peak_tflops=peak / 1e12, date=time.strftime("%Y-%m-%d"), argv=sys.argv)
    if args.sustained_peak_seconds > 0:
        env["sustained_matmul_peak_tflops"] = matmul_peak(device, args.sustained_peak_seconds) / 1e12
    print(json.dumps(env))
    rows = []
    host_counts = {"on": [True], "off": [False], "both": [True, False]}[args.host_counts]
    for model_name in args.models.split(","):
        settings = ([(h, c) for h in host_counts for c in config_sets] if model_name == "mosaic_bert"
                    else [(True, {})])
        for counts, overrides in settings:
            for mode in args.modes.split(","):
                row = run_one(model_name, mode == "compiled", args, batches, device, peak, counts, overrides)
                rows.append(row)
                print(json.dumps(row), flush=True)
                if args.out:  # after every row, so a run cut short by a timeout keeps what it measured
                    Path(args.out).write_text(json.dumps(dict(env=env, rows=rows), indent=2))
    hdr = ("| model | mode | seq | packed | padding | ms/step | seq/s | real tok/s | useful TFLOP/s | MFU | peak GiB "
           "| SM MHz | W |")
    print("\n" + hdr + "\n|" + "---|" * 13)

    def label(r):
        notes = ["no host counts"] if r["model"] == "mosaic_bert" and not r.get("host_counts") else []
        notes += [f"{k}={v}" for k, v in (r.get("config_overrides") or {}).items()]
        return r["model"] + (f" ({', '.join(notes)})" if notes else "")

    def mode_of(r):
        return ("compiled" + (f" {r['compile_mode']}" if r.get("compile_mode") else "")) if r["compiled"] else "eager"

    for r in rows:
        if "error" in r:
            print(f"| {label(r)} | {mode_of(r)} | {args.seq} | failed: {r['error'][:120]} |||||||||| ")
            continue
        clock = f"{r['sm_clock_mhz']:.0f} | {r['power_w']:.0f}" if "sm_clock_mhz" in r else "- | -"
        print(f"| {label(r)} | {mode_of(r)} | {r['seq']} | {'yes' if r['packing'] else 'no'} | {r['padding']:.1%} | "
              f"{r['ms_per_step']:.1f} | "
              f"{r['seq_per_s']:,.0f} | {r['real_tokens_per_s']:,.0f} | {r['useful_tflops']:.0f} | "
              f"{r['mfu']:.1%} | {r['peak_mem_gib']:.1f} | {clock} |")
    if "sustained_matmul_peak_tflops" in env:
        sustained = env["sustained_matmul_peak_tflops"]
        print(f"matmul peak sustained over {args.sustained_peak_seconds:g} s: {sustained:.0f} TFLOP/s "
              f"(short burst, the MFU denominator: {env['matmul_peak_tflops']:.0f}); useful TFLOP/s against it: "
              + ", ".join(f"{label(r)} {mode_of(r)} {r['useful_tflops'] / sustained:.1%}"
                          for r in rows if "error" not in r))
    for r in rows:
        if r.get("profile_ms_per_step"):
            parts = ", ".join(f"{k} {v:.1f}" for k, v in r["profile_ms_per_step"].items())
            busy = sum(r["profile_ms_per_step"].values())
            print(f"profile {label(r)} {mode_of(r)} (ms/step): {parts}; kernels {busy:.1f} of {r['ms_per_step']:.1f} "
                  f"ms, host issues the step in {r.get('host_ms_per_step', float('nan')):.1f} ms")
    if args.out:
        Path(args.out).write_text(json.dumps(dict(env=env, rows=rows), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
