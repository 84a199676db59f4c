"""STS Spearman and retrieval metrics against hand-computed values; the retrieval task built from pairs."""

import math

import pytest
import torch

from mosaicbert.embeddings.metrics import pairs_corpus, parse_metric, retrieval_metrics, sts_spearman


def _unit(angles_deg):
    a = torch.tensor(angles_deg, dtype=torch.float64) * math.pi / 180
    return torch.stack([torch.cos(a), torch.sin(a)], dim=-1)


def test_sts_spearman_hand_computed():
    e1 = _unit([0, 0, 0, 0])
    e2 = _unit([10, 80, 40, 60])  # cosines fall with the angle: ranks of cos = 4, 1, 3, 2
    # gold ranks 4, 1, 2, 3 -> d^2 = 0 + 0 + 1 + 1 = 2; rho = 1 - 6 * 2 / (4 * 15) = 0.8
    assert sts_spearman(e1, e2, [5.0, 0.5, 1.0, 2.0]) == pytest.approx(0.8)
    assert sts_spearman(e1, e2, [3.0, 0.0, 2.0, 1.0]) == pytest.approx(1.0)
    # ties in the gold scores share their average rank: gold ranks 3.5, 1.5, 1.5, 3.5 against 4, 1, 3, 2
    # Pearson on the ranks: x = (1.5, -1.5, 0.5, -0.5), y = (1, -1, -1, 1) -> sum xy = 2, sum x^2 = 5, sum y^2 = 4
    assert sts_spearman(e1, e2, [4.0, 1.0, 1.0, 4.0]) == pytest.approx(2 / math.sqrt(20))
    with pytest.raises(ValueError):
        sts_spearman(e1, e2[:3], [1.0, 2.0, 3.0])


def test_retrieval_metrics_hand_computed():
    docs = _unit([0, 30, 60, 90])
    queries = _unit([2, 58, 89])  # nearest first: q0 -> d0 d1 d2 d3; q1 -> d2 d1 d3 d0; q2 -> d3 d2 d1 d0
    relevant = [[0], [1], [0, 2]]
    got = retrieval_metrics(queries, docs, relevant, ["recall@1", "recall@2", "ndcg@2", "ndcg@10"])
    # recall@1: q0 1, q1 0, q2 0 (d3 first) -> 1/3; recall@2: q0 1, q1 1 (rank 2), q2 1/2 (d2 at rank 2) -> 5/6
    assert got["recall@1"] == pytest.approx(1 / 3)
    assert got["recall@2"] == pytest.approx(5 / 6)
    # ndcg@2: q0 1; q1 (1/log2 3) / 1; q2 (1/log2 3) / (1 + 1/log2 3)
    l3 = 1 / math.log2(3)
    assert got["ndcg@2"] == pytest.approx((1 + l3 + l3 / (1 + l3)) / 3)
    # ndcg@10: q2's d0 at rank 4 counts too: (l3 + 1/log2 5) / (1 + l3)
    assert got["ndcg@10"] == pytest.approx((1 + l3 + (l3 + 1 / math.log2(5)) / (1 + l3)) / 3)


def test_retrieval_metric_names_and_checks():
    assert parse_metric("recall@10") == ("recall", 10)
    for bad in ("mrr@10", "recall@0", "ndcg"):
        with pytest.raises(ValueError):
            parse_metric(bad)
    with pytest.raises(ValueError):
        retrieval_metrics(torch.ones(2, 2), torch.ones(3, 2), [[0]])
    with pytest.raises(ValueError):
        retrieval_metrics(torch.ones(1, 2), torch.ones(3, 2), [[]])


def test_pairs_corpus_shares_identical_texts():
    queries, corpus, relevant = pairs_corpus(["a", "b", "c"], ["x", "y", "x"], [["y", "z", "w"]])
    assert queries == ["a", "b", "c"]
    assert corpus == ["x", "y", "z", "w"]
    assert relevant == [[0], [1], [0]]
