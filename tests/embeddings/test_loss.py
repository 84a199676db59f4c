"""The in-batch negatives loss against a hand-computed value and against sentence-transformers'
MultipleNegativesRankingLoss; gradient caching against the plain full-batch gradient."""

import math

import pytest
import torch
from helpers import tiny_config

from mosaicbert.embeddings.encode import embed_batch, pad_batch
from mosaicbert.embeddings.loss import InBatchNegativesLoss, embed_columns
from mosaicbert.model import MosaicBertModel


def test_loss_matches_a_hand_computed_value():
    # cosines: anchor 0 vs (p0, p1) = (1, 0.6); anchor 1 vs (p0, p1) = (0, 0.8); scale 2
    anchors = torch.tensor([[1.0, 0.0], [0.0, 5.0]])  # the loss normalises: length does not matter
    positives = torch.tensor([[3.0, 0.0], [0.6, 0.8]])
    loss = InBatchNegativesLoss(scale=2.0)(anchors, positives)
    row0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2)))
    row1 = -math.log(math.exp(1.6) / (math.exp(0.0) + math.exp(1.6)))
    assert float(loss) == pytest.approx((row0 + row1) / 2, rel=1e-6)
    # a hard-negative column adds B candidates: anchor 0 vs (n0, n1) = (0, 1); anchor 1 vs (n0, n1) = (1, 0)
    negatives = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    loss = InBatchNegativesLoss(scale=2.0)(anchors, positives, [negatives])
    row0 = -math.log(math.exp(2.0) / (math.exp(2.0) + math.exp(1.2) + math.exp(0.0) + math.exp(2.0)))
    row1 = -math.log(math.exp(1.6) / (math.exp(0.0) + math.exp(1.6) + math.exp(2.0) + math.exp(0.0)))
    assert float(loss) == pytest.approx((row0 + row1) / 2, rel=1e-6)


@pytest.mark.parametrize("negatives", [0, 2])
def test_loss_equals_sentence_transformers_multiple_negatives_ranking_loss(negatives):
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss

    g = torch.Generator().manual_seed(0)
    emb = [torch.randn(6, 16, generator=g) for _ in range(2 + negatives)]
    ours = InBatchNegativesLoss(scale=13.0)(emb[0], emb[1], emb[2:])
    theirs = MultipleNegativesRankingLoss(model=None, scale=13.0).compute_loss_from_embeddings(emb, None)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-5)


def test_learnable_scale_is_trained_and_clamped():
    loss_fn = InBatchNegativesLoss(scale=10.0, learnable_scale=True, max_scale=12.0)
    emb = torch.randn(4, 8)
    loss_fn(emb, emb + 0.1 * torch.randn(4, 8)).backward()
    assert loss_fn.log_scale.grad is not None and loss_fn.log_scale.grad != 0
    with torch.no_grad():
        loss_fn.log_scale.fill_(math.log(50.0))
    assert float(loss_fn.scale.detach()) == pytest.approx(12.0)
    with pytest.raises(ValueError):
        InBatchNegativesLoss(scale=200.0, max_scale=100.0)


def _batch(n, seqlen, vocab, seed):
    g = torch.Generator().manual_seed(seed)
    rows = [torch.randint(5, vocab, (int(torch.randint(3, seqlen, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]
    return pad_batch(rows, 0, torch.device("cpu"))


def test_gradient_caching_gives_the_full_batch_gradient():
    cfg = tiny_config()  # no dropout: chunked and whole-batch forwards compute the same embeddings
    torch.manual_seed(0)
    model = MosaicBertModel(cfg, add_pooling_layer=False).train()
    columns = [_batch(8, 12, cfg.vocab_size, s) for s in range(3)]
    loss_fn = InBatchNegativesLoss(scale=20.0, learnable_scale=True)

    def embed(b):
        return embed_batch(model, b, "mean", normalize=False)

    def grads(chunk_size):
        model.zero_grad(set_to_none=True)
        loss_fn.zero_grad(set_to_none=True)
        out = embed_columns(embed, columns, chunk_size)
        loss = loss_fn(out[0], out[1], out[2:])
        loss.backward()
        return loss.item(), {n: p.grad.clone() for n, p in [*model.named_parameters(), *loss_fn.named_parameters()]}

    loss_plain, plain = grads(None)
    loss_cached, cached = grads(3)  # chunks of 3, 3, 2 rows
    assert loss_cached == pytest.approx(loss_plain, rel=1e-5)
    assert plain.keys() == cached.keys() and "log_scale" in plain
    for name, g in plain.items():
        torch.testing.assert_close(cached[name], g, rtol=1e-4, atol=1e-6, msg=name)


def test_gradient_caching_replays_the_dropout_masks():
    """With dropout, the cached backward must equal the gradient of the cached forward's own loss: rebuild that loss
    with autograd from the same RNG state and compare."""
    cfg = tiny_config(hidden_dropout_prob=0.2)
    torch.manual_seed(0)
    model = MosaicBertModel(cfg, add_pooling_layer=False).train()
    columns = [_batch(6, 10, cfg.vocab_size, s) for s in range(2)]
    loss_fn = InBatchNegativesLoss()

    def embed(b):
        return embed_batch(model, b, "mean", normalize=False)

    def chunked_with_autograd():  # the same chunks in the same order: the same dropout draws
        out = []
        for b in columns:
            out.append(torch.cat([embed({k: v[s:s + 4] for k, v in b.items()}) for s in range(0, 6, 4)]))
        return out

    torch.manual_seed(7)
    out = embed_columns(embed, columns, 4)
    loss_fn(out[0], out[1]).backward()
    cached = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    torch.manual_seed(7)
    ref = chunked_with_autograd()
    loss_fn(ref[0], ref[1]).backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(cached[n], p.grad, rtol=1e-4, atol=1e-6, msg=n)
