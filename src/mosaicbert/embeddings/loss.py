"""The contrastive loss with in-batch negatives, and gradient caching for batches larger than memory allows.

InBatchNegativesLoss is what sentence-transformers calls MultipleNegativesRankingLoss (InfoNCE): anchor i is scored
against every positive of the batch and every hard negative, B * (1 + number of negative columns) candidates, of
which candidate i (its own positive) is the right one; the loss is the cross-entropy over
`scale * cos(anchor, candidate)`, scale = 1 / temperature.

Gradient caching (Gao et al. 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup"):
the batch's embeddings are first computed chunk by chunk without autograd; the loss over the whole batch is taken on
those; when the backward reaches the embeddings, each chunk is run again with autograd (same dropout masks) and
back-propagated with its slice of the embeddings' gradient. The gradient is the full batch's, while activation
memory is one chunk's.
"""

from __future__ import annotations

import contextlib
import math
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn


class InBatchNegativesLoss(nn.Module):
    """scale = 1 / temperature (sentence-transformers' default: 20, fixed).

    learnable_scale=True makes log(scale) a parameter (as CLIP's logit scale) that starts at `scale` and is clamped
    to at most `max_scale` in the forward, so that it cannot run away.
    """

    def __init__(self, scale: float = 20.0, learnable_scale: bool = False, max_scale: float = 100.0):
        super().__init__()
        if not (0 < scale <= max_scale):
            raise ValueError(f"need 0 < scale ({scale}) <= max_scale ({max_scale})")
        self.max_scale = float(max_scale)
        log_scale = torch.tensor(math.log(scale), dtype=torch.float32)
        if learnable_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale, persistent=False)

    @property
    def scale(self) -> torch.Tensor:
        return self.log_scale.exp().clamp(max=self.max_scale)

    def forward(self, anchors: torch.Tensor, positives: torch.Tensor,
                negatives: Sequence[torch.Tensor] = ()) -> torch.Tensor:
        """anchors, positives: [B, H]; negatives: [B, H] tensors, one per hard-negative column."""
        if anchors.shape != positives.shape or any(n.shape != anchors.shape for n in negatives):
            raise ValueError(f"anchors {tuple(anchors.shape)}, positives {tuple(positives.shape)} and negatives "
                             f"{[tuple(n.shape) for n in negatives]} must have the same shape")
        candidates = torch.cat([positives, *negatives], dim=0)  # [B * (1 + n_neg), H]
        scores = F.normalize(anchors.float(), dim=-1) @ F.normalize(candidates.float(), dim=-1).T
        labels = torch.arange(anchors.shape[0], device=anchors.device)
        return F.cross_entropy(scores * self.scale, labels)


class _ReplayRng:
    """Snapshot of the CPU and CUDA random states, restored inside `with` (and the outer state kept): the cached
    second forward then draws the same dropout masks as the first."""

    def __init__(self, device: torch.device):
        self.devices = [device] if device.type == "cuda" else []
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextlib.contextmanager
    def replay(self):
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for d, state in zip(self.devices, self.cuda):
                torch.cuda.set_rng_state(state, d)
            yield


def _rows(batch: dict, start: int, end: int) -> dict:
    """Rows start:end of a batch of [B, ...] tensors and per-row lists."""
    return {k: v[start:end] if isinstance(v, (torch.Tensor, list)) else v for k, v in batch.items()}


def cached_embeddings(embed: Callable[[dict], torch.Tensor], batch: dict, chunk_size: int) -> torch.Tensor:
    """embed(batch) -> [B, H], computed `chunk_size` rows at a time with gradient caching (module docstring).

    Returns a leaf tensor that requires grad; the backward through it re-runs `embed` on each chunk, with autograd,
    under the autocast state of this call, and accumulates the parameters' gradients. Outside autograd (eval, or
    torch.no_grad) it is a plain chunked forward."""
    n = batch["input_ids"].shape[0]
    chunks = [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]
    device = batch["input_ids"].device
    if not torch.is_grad_enabled():
        return torch.cat([embed(_rows(batch, s, e)) for s, e in chunks])
    rng: List[_ReplayRng] = []
    reps = []
    with torch.no_grad():
        for s, e in chunks:
            rng.append(_ReplayRng(device))
            reps.append(embed(_rows(batch, s, e)))
    autocast = torch.is_autocast_enabled(device.type)
    dtype = torch.get_autocast_dtype(device.type) if autocast else None
    leaf = torch.cat(reps).detach().requires_grad_()

    def replay(grad: torch.Tensor) -> None:
        with torch.enable_grad(), torch.autocast(device.type, dtype=dtype, enabled=autocast):
            for (s, e), state in zip(chunks, rng):
                with state.replay():
                    emb = embed(_rows(batch, s, e))
                # the surrogate's gradient wrt the parameters is the chunk's share of the loss's
                torch.dot(emb.float().flatten(), grad[s:e].float().flatten()).backward()

    leaf.register_hook(replay)
    return leaf


def embed_columns(embed: Callable[[dict], torch.Tensor], columns: Sequence[dict],
                  chunk_size: Optional[int] = None) -> List[torch.Tensor]:
    """The embeddings of each column (anchors, positives, negatives ...), with gradient caching when chunk_size is
    set and smaller than a column."""
    out = []
    for batch in columns:
        if chunk_size is None or chunk_size >= batch["input_ids"].shape[0]:
            out.append(embed(batch))
        else:
            out.append(cached_embeddings(embed, batch, chunk_size))
    return out
