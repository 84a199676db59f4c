"""Data-path throughput on C4-like documents: conversion documents/s at 1, 2, ... workers, and loader samples/s of one
loader worker (one core) on raw-text and pre-tokenized shards.

    python benchmarks/data_throughput.py --out benchmarks/throughput_results/data-throughput-<date>-<machine>.json
    python benchmarks/data_throughput.py --documents 2000 --workers 1 --loader_samples 2000   # a quick look

Documents: `c4_like.py` (seeded, lengths like C4 en's: ~2,000 characters on average), written once as a JSON-lines
file. Conversion: `mosaicbert.pretrain.convert` in ``--mode`` (default truncate, the published recipe) at 128 tokens,
raw text (the README's recipe) and tokenized, at each ``--workers`` count, wall time including the start of the
workers and the merge of their indexes (``--repeat K``: the documents K times, a conversion long enough that those
fixed costs weigh as little as on C4). Tokenization alone on one core: whole documents against the prefix that
truncate mode tokenizes.
Loader: ``build_mlm_dataloader`` with ``num_workers=0``, so the one process that iterates is exactly the work of one
DataLoader worker (reading, tokenizing raw text, masking at 30%, collating batches of 256); samples/s after one warm-up
batch. The tokenizer's own thread pool is off (TOKENIZERS_PARALLELISM=false), so every process uses one core.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

os.environ["TOKENIZERS_PARALLELISM"] = "false"

from c4_like import c4_like_documents, write_jsonl  # noqa: E402  (benchmarks/ is the script's folder)

from mosaicbert.core.tokenizer import load_tokenizer  # noqa: E402
from mosaicbert.pretrain.config import DataConfig  # noqa: E402
from mosaicbert.pretrain.convert import PrefixTokenizer, convert, usable_cores  # noqa: E402
from mosaicbert.pretrain.mlm import build_mlm_dataloader  # noqa: E402

SHARED_VOCAB = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "vocab" / "bert-base-uncased"


def _default_tokenizer() -> str:
    for folder in (SHARED_VOCAB, Path(__file__).resolve().parents[1] / "shared" / "data" / "vocab" /
                   "bert-base-uncased"):
        if (folder / "vocab.txt").is_file():
            return str(folder)
    return "bert-base-uncased"


def tokenize_rates(tok, docs: list[str], max_seq_len: int) -> dict:
    """Documents/s of whole-document tokenization (what truncate mode did before) and of the prefix, one core."""
    prefix = PrefixTokenizer(tok, max_seq_len - 2)
    out = {}
    for name, fn in (("whole", prefix.encode), ("prefix", prefix.encode_prefixes)):
        start = time.perf_counter()
        for i in range(0, len(docs), 256):
            fn(docs[i:i + 256])
        out[f"{name}_documents_per_s"] = len(docs) / (time.perf_counter() - start)
    return out


def conversion_rate(tok, docs_file: Path, work: Path, workers: int, mode: str, tokenize: bool,
                    max_seq_len: int) -> dict:
    out = work / f"convert-{mode}-{'tok' if tokenize else 'raw'}-{workers}"
    cpu = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    stats = convert(out_root=out, source="local", train_files=str(docs_file), val_files=str(docs_file),
                    splits=["train"], mode=mode, tokenize=tokenize, max_seq_len=max_seq_len, tokenizer=tok,
                    progress=False, workers=workers, overwrite=True)
    seconds = time.perf_counter() - start
    main_cpu, workers_cpu = (_cpu_seconds(resource.getrusage(who)) - _cpu_seconds(before) for who, before in
                             zip((resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN), cpu))
    shutil.rmtree(out, ignore_errors=True)
    # CPU seconds of the reading process and of the (finished) workers: where the time goes when scaling is not linear
    return {"workers": workers, "mode": mode, "tokenized": tokenize, "documents": stats["train"].documents,
            "seconds": seconds, "documents_per_s": stats["train"].documents / seconds,
            "main_cpu_s": main_cpu, "workers_cpu_s": workers_cpu}


def _cpu_seconds(usage) -> float:
    return usage.ru_utime + usage.ru_stime


def loader_rate(tok, folder: Path, samples: int, batch: int, max_seq_len: int) -> dict:
    data = DataConfig(local=str(folder), max_seq_len=max_seq_len, mlm_probability=0.3, num_workers=0)
    loader = build_mlm_dataloader(data, tok, train=True, batch_size=batch, seed=17)
    it = iter(loader)
    next(it)  # warm-up: opening shards, first decompression
    n, start = 0, time.perf_counter()
    while n < samples:
        try:
            b = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        n += int(b["input_ids"].shape[0])
    seconds = time.perf_counter() - start
    return {"samples": n, "seconds": seconds, "samples_per_s": n / seconds}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--documents", type=int, default=20_000, help="C4-like documents converted per measurement")
    p.add_argument("--repeat", type=int, default=1,
                   help="the conversion input holds the documents this many times: a longer conversion, so that the "
                        "fixed costs (starting the workers, merging the indexes) weigh as little as they do on C4")
    p.add_argument("--workers", default=None,
                   help="comma-separated worker counts (default: 1, 2, 4, ... up to the usable cores)")
    p.add_argument("--mode", default="truncate")
    p.add_argument("--max_seq_len", type=int, default=128)
    p.add_argument("--tokenizer", default=_default_tokenizer())
    p.add_argument("--loader_samples", type=int, default=20_000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--work_dir", default=None, help="scratch folder (default: a temporary one)")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    args = p.parse_args()

    cores = usable_cores()
    if args.workers:
        counts = [int(w) for w in args.workers.split(",")]
    else:
        counts, w = [], 1
        while w < cores:
            counts.append(w)
            w *= 2
        counts.append(cores)
    tok = load_tokenizer(args.tokenizer)
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="data-throughput-"))
    work.mkdir(parents=True, exist_ok=True)
    docs = list(c4_like_documents(tok, args.documents, seed=0))
    docs_file = work / "c4-like.jsonl"
    write_jsonl(docs_file, (d for _ in range(args.repeat) for d in docs))
    loader_docs = docs_file
    if args.repeat > 1:  # (the loader's shards need each document once)
        loader_docs = work / "c4-like-once.jsonl"
        write_jsonl(loader_docs, iter(docs))
    results: dict = {
        "date": date.today().isoformat(), "machine": platform.node(), "cpu": platform.processor() or platform.machine(),
        "usable_cores": cores, "load_average": os.getloadavg(), "tokenizer": args.tokenizer,
        "documents": len(docs), "repeat": args.repeat, "mean_characters": sum(map(len, docs)) / len(docs),
        "max_seq_len": args.max_seq_len,
        "command": "python benchmarks/data_throughput.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if v is not None and k not in ("out", "work_dir")),
    }
    results["tokenize_one_core"] = tokenize_rates(tok, docs[:5000], args.max_seq_len)
    print(f"tokenize, one core: {results['tokenize_one_core']}", flush=True)
    results["conversion"] = []
    for tokenize in (False, True):
        for w in counts:
            r = conversion_rate(tok, docs_file, work, w, args.mode, tokenize, args.max_seq_len)
            results["conversion"].append(r)
            print(f"convert {args.mode} {'tokenized' if tokenize else 'raw text'}, {w} workers: "
                  f"{r['documents_per_s']:,.0f} documents/s (CPU s: main {r['main_cpu_s']:.1f}, "
                  f"workers {r['workers_cpu_s']:.1f})", flush=True)
    results["loader_one_worker"] = {}
    for tokenize in (False, True):
        name = "tokenized" if tokenize else "raw"
        folder = work / f"loader-{name}"
        convert(out_root=folder, source="local", train_files=str(loader_docs), val_files=str(loader_docs),
                splits=["train"], mode="truncate", tokenize=tokenize, max_seq_len=args.max_seq_len, tokenizer=tok,
                progress=False, overwrite=True)
        r = loader_rate(tok, folder, args.loader_samples, args.batch, args.max_seq_len)
        results["loader_one_worker"][name] = r
        print(f"loader, one worker, {name} shards: {r['samples_per_s']:,.0f} samples/s", flush=True)
    if not args.work_dir:
        shutil.rmtree(work, ignore_errors=True)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=1))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
