"""Embedding evaluation metrics: STS (Spearman correlation of cosine similarity with gold scores) and retrieval
(recall@k, nDCG@k over a corpus, binary relevance), computed with scipy and torchmetrics."""

from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from torchmetrics.functional.retrieval import retrieval_normalized_dcg, retrieval_recall

RETRIEVAL_METRICS = ("ndcg@10", "recall@1", "recall@10")


def sts_spearman(emb1: torch.Tensor, emb2: torch.Tensor, gold: Sequence[float]) -> float:
    """Spearman's rank correlation between cos(emb1[i], emb2[i]) and gold[i] (ties share their average rank)."""
    if emb1.shape != emb2.shape or emb1.shape[0] != len(gold):
        raise ValueError(f"need two [N, H] tensors and N gold scores, got {tuple(emb1.shape)}, {tuple(emb2.shape)} "
                         f"and {len(gold)}")
    if len(gold) < 2:
        raise ValueError("Spearman's correlation needs at least two pairs")
    cos = F.cosine_similarity(emb1.double(), emb2.double(), dim=-1)
    return float(spearmanr(cos.numpy(), list(gold)).statistic)


def parse_metric(name: str) -> tuple:
    """'recall@10' -> ('recall', 10); 'ndcg@10' -> ('ndcg', 10)."""
    kind, _, k = name.partition("@")
    if kind not in ("recall", "ndcg") or not k.isdigit() or int(k) < 1:
        raise ValueError(f"unknown retrieval metric {name!r}: use recall@<k> or ndcg@<k>, e.g. "
                         f"{list(RETRIEVAL_METRICS)}")
    return kind, int(k)


def retrieval_metrics(query_emb: torch.Tensor, doc_emb: torch.Tensor, relevant: Sequence[Sequence[int]],
                      metrics: Sequence[str] = RETRIEVAL_METRICS) -> Dict[str, float]:
    """Each query ranks every document by cosine similarity; relevant[q] lists the documents that are right for
    query q. Returns the mean over queries of each metric: recall@k = the share of q's relevant documents in its
    top k; ndcg@k = DCG@k / ideal DCG@k with DCG = sum of 1 / log2(rank + 1) over the relevant documents in the
    top k."""
    if len(relevant) != query_emb.shape[0]:
        raise ValueError(f"{query_emb.shape[0]} queries but {len(relevant)} lists of relevant documents")
    if any(not rel for rel in relevant):
        raise ValueError("every query needs at least one relevant document")
    parsed = {name: parse_metric(name) for name in metrics}
    scores = F.normalize(query_emb.float(), dim=-1) @ F.normalize(doc_emb.float(), dim=-1).T  # [Q, D]
    totals = dict.fromkeys(parsed, 0.0)
    target = torch.zeros(scores.shape[1], dtype=torch.bool)
    for q, rel in enumerate(relevant):
        target.zero_()
        target[list(rel)] = True
        for name, (kind, k) in parsed.items():
            fn = retrieval_recall if kind == "recall" else retrieval_normalized_dcg
            totals[name] += float(fn(scores[q], target, top_k=k))
    return {name: total / len(relevant) for name, total in totals.items()}


def pairs_corpus(anchors: Sequence[str], positives: Sequence[str], negatives: Sequence[Sequence[str]] = ()
                 ) -> tuple:
    """A retrieval task from held-out pairs: the queries are the anchors, the corpus is every distinct positive and
    hard-negative text, query i's relevant document is its positive. -> (queries, corpus, relevant)."""
    corpus: List[str] = []
    index: Dict[str, int] = {}

    def doc(text: str) -> int:
        if text not in index:
            index[text] = len(corpus)
            corpus.append(text)
        return index[text]

    relevant = [[doc(p)] for p in positives]
    for column in negatives:
        for text in column:
            doc(text)
    return list(anchors), corpus, relevant
