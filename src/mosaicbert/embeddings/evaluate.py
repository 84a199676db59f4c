"""Evaluate sentence embeddings: STS-B (Spearman correlation of cosine similarity with the gold scores) and retrieval
over held-out pairs (recall@1, recall@10, nDCG@10), for any Hugging Face folder (a MosaicBERT or BERT export, a
finetune.py best_model).

    python -m mosaicbert.embeddings.evaluate <folder> --stsb ../shared/data/glue/STS-B/dev.tsv \\
        --pairs yamls/finetune/data/docstring_pairs_eval.jsonl --out results.json

Pooling, truncation length and normalisation come from the folder's sentence-transformers files (python -m
mosaicbert.export ... --sentence-transformers), else mean pooling over at most 512 tokens.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Dict, Optional, Sequence

import torch

from mosaicbert.embeddings.data import Pairs, StsPairs, read_pairs, read_sts
from mosaicbert.embeddings.encode import encode, load_encoder
from mosaicbert.embeddings.metrics import RETRIEVAL_METRICS, pairs_corpus, retrieval_metrics, sts_spearman


def evaluate_encoder(encoder, tokenizer, *, sts: Optional[StsPairs] = None, pairs: Optional[Pairs] = None,
                     pooling: str = "mean", max_seq_len: int = 512, batch_size: int = 128,
                     retrieval: Sequence[str] = RETRIEVAL_METRICS, show_progress: bool = False) -> Dict[str, float]:
    """{"stsb_spearman": ..., "recall@1": ..., ...} for whichever of `sts` / `pairs` is given."""
    kw = dict(batch_size=batch_size, pooling=pooling, max_seq_len=max_seq_len, show_progress=show_progress)
    out: Dict[str, float] = {}
    if sts is not None:
        emb = encode(encoder, tokenizer, sts.sentences1 + sts.sentences2, **kw)
        n = len(sts.scores)
        out["stsb_spearman"] = sts_spearman(emb[:n], emb[n:], sts.scores)
    if pairs is not None:
        queries, corpus, relevant = pairs_corpus(pairs.anchors, pairs.positives, pairs.negatives)
        emb = encode(encoder, tokenizer, queries + corpus, **kw)
        out.update(retrieval_metrics(emb[:len(queries)], emb[len(queries):], relevant, retrieval))
    return out


def evaluate_folder(folder: str, *, stsb: Optional[str] = None, pairs: Optional[str] = None,
                    anchor: str = "anchor", positive: str = "positive", negatives: Sequence[str] = (),
                    batch_size: int = 128, device: Optional[str] = None, show_progress: bool = False) -> dict:
    if stsb is None and pairs is None:
        raise ValueError("nothing to evaluate: give an STS file (--stsb) and/or held-out pairs (--pairs)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    t0 = time.time()
    encoder, tokenizer, settings = load_encoder(folder, device)
    sts = read_sts(stsb) if stsb else None
    held_out = read_pairs(pairs, anchor, positive, negatives) if pairs else None
    metrics = evaluate_encoder(encoder, tokenizer, sts=sts, pairs=held_out, pooling=settings["pooling"],
                               max_seq_len=settings["max_seq_length"], batch_size=batch_size,
                               show_progress=show_progress)
    return {"model": folder, "pooling": settings["pooling"], "max_seq_length": settings["max_seq_length"],
            "stsb_file": stsb, "stsb_pairs": len(sts.scores) if sts else None, "pairs_file": pairs,
            "pairs": len(held_out) if held_out else None, "metrics": metrics, "device": str(device),
            "duration_s": round(time.time() - t0, 2)}


def format_table(results: Sequence[dict]) -> str:
    """One Markdown row per evaluated model."""
    names = [m for r in results for m in r["metrics"]]
    names = list(dict.fromkeys(names))
    lines = ["| model | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for r in results:
        cells = [f"{r['metrics'][m]:.4f}" if m in r["metrics"] else "" for m in names]
        lines.append(f"| {r['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", nargs="+", help="Hugging Face model folders to evaluate")
    parser.add_argument("--stsb", help="STS file: GLUE STS-B dev.tsv (columns sentence1, sentence2, score)")
    parser.add_argument("--pairs", help="held-out pairs (.csv / .tsv / .jsonl) for the retrieval evaluation")
    parser.add_argument("--anchor-column", default="anchor")
    parser.add_argument("--positive-column", default="positive")
    parser.add_argument("--negative-column", action="append", default=[],
                        help="hard-negative column, added to the corpus (repeatable)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda when available)")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--progress", action="store_true", help="show a progress bar while encoding")
    args = parser.parse_args(argv)
    if not args.stsb and not args.pairs:
        parser.error("give --stsb and/or --pairs")
    results = [evaluate_folder(folder, stsb=args.stsb, pairs=args.pairs, anchor=args.anchor_column,
                               positive=args.positive_column, negatives=args.negative_column,
                               batch_size=args.batch_size, device=args.device, show_progress=args.progress)
               for folder in args.folders]
    print(format_table(results))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
