"""The GAN objective: what one D update and one G update compute.

The losses and penalties are pure functions of D's logits (and of the images those came
from), computed in fp32 so that they are safe under autocast. `d_objective` and `g_objective`
compose them: they draw G's noise, run G and D, and return the value to minimise with the
named device-side stats to log. How an update runs
(zero_grad, gradient scaling, backward, the optimizer step, graphs, DDP) is step.py's business.

With D(x) = sigmoid(l), log D(x) = -softplus(-l) and log(1 - D(x)) = -softplus(l).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gancli.config import LossConfig, LossName
from gancli.data import Batch
from gancli.models import latents

Stats = dict[str, Tensor]  # named scalars, still on the device


def d_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    # -log D(x) - log(1 - D(G(z))), averaged over the batch
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def g_loss_ns(fake_logits: Tensor) -> Tensor:
    # non-saturating: -log D(G(z))
    return F.softplus(-fake_logits.float()).mean()


def g_loss_minimax(fake_logits: Tensor) -> Tensor:
    # the original minimax objective: log(1 - D(G(z))), which G minimises
    return -F.softplus(fake_logits.float()).mean()


def r1_penalty(logits: Tensor, x: Tensor) -> Tensor:
    """E ||d logit / d x||^2 over the batch, at `x` (which must require grad and be what `logits`
    came from). Differentiable, so D's update can lower it."""
    (grad,) = torch.autograd.grad(logits.float().sum(), x, create_graph=True)  # (B, C, H, W) or (B, 2)
    return grad.float().pow(2).flatten(1).sum(1).mean()


class Loss(NamedTuple):
    d: Callable[[Tensor, Tensor], Tensor]  # (real logits, fake logits) -> D's loss
    g: Callable[[Tensor], Tensor]  # (fake logits) -> G's loss


LOSSES: dict[LossName, Loss] = {
    LossName.ns: Loss(d_loss, g_loss_ns),
    LossName.minimax: Loss(d_loss, g_loss_minimax),
}


def _input_leaf(x: Tensor) -> tuple[Tensor, Tensor]:
    """(a leaf that requires grad, the view of it that D gets) for a penalty at `x`."""
    leaf = x.detach().requires_grad_(True)
    # D gets a view, not the leaf: FlopCounterMode's module hooks refuse a leaf input to autograd.grad
    return leaf, leaf.view_as(leaf)


def d_objective(cfg: LossConfig, G: nn.Module, D: nn.Module, batch: Batch) -> tuple[Tensor, Stats]:
    """D's loss on a real batch and on a batch of G's, G held fixed, plus its penalty
    -> (objective, stats)."""
    real, c = batch.x, batch.c  # (B, C, H, W) in [-1, 1] or (B, 2); (B,) labels or None
    z, c_fake = latents(G, len(real), real.device)
    with torch.no_grad():
        fake = G(z, c_fake)
    r1 = cfg.r1_gamma > 0
    if r1:
        real_leaf, real = _input_leaf(real)
    real_logits, fake_logits = D(real, c), D(fake, c_fake)  # (B,) each
    loss = LOSSES[cfg.name].d(real_logits, fake_logits)
    stats = {"loss_d": loss, "d_real": real_logits.float().mean(), "d_fake": fake_logits.float().mean()}
    objective = loss
    if r1:  # gamma/2 E||grad_x D(x)||^2 at real images (Mescheder et al. 2018)
        stats["r1"] = r1_penalty(real_logits, real_leaf)
        objective = objective + cfg.r1_gamma / 2 * stats["r1"]
    return objective, stats


def g_objective(cfg: LossConfig, G: nn.Module, D: nn.Module, batch: Batch) -> tuple[Tensor, Stats]:
    """G's loss on D(G(z)), D held fixed -> (loss, stats)."""
    z, c_fake = latents(G, len(batch.x), batch.x.device)
    fake_logits = D(G(z, c_fake), c_fake)  # (B,)
    loss = LOSSES[cfg.name].g(fake_logits)
    return loss, {"loss_g": loss, "d_fake_after": fake_logits.float().mean()}
