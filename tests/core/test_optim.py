"""The fused optimizer follows Composer's DecoupledAdamW update rule exactly (up to float rounding)."""

import torch
from composer.optim import DecoupledAdamW

from mosaicbert.core.trainer import FusedDecoupledAdamW


def test_fused_decoupled_adamw_matches_composer():
    torch.manual_seed(0)
    ref = [torch.nn.Parameter(torch.randn(7, 5)), torch.nn.Parameter(torch.randn(5))]
    fused = [torch.nn.Parameter(p.detach().clone()) for p in ref]
    kw = dict(lr=5e-3, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.1)
    opt_ref, opt_fused = DecoupledAdamW(ref, **kw), FusedDecoupledAdamW(fused, **kw)
    for step in range(8):
        scale = 0.3 + 0.1 * step  # a schedule: lr changes every step, weight decay must follow lr / lr_0
        for opt in (opt_ref, opt_fused):
            for group in opt.param_groups:
                group["lr"] = kw["lr"] * scale
        grads = [torch.randn_like(p) for p in ref]
        for p, q, g in zip(ref, fused, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt_ref.step()
        opt_fused.step()
    for p, q in zip(ref, fused):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
