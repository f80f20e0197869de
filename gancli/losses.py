"""GAN losses as pure functions of D's logits, computed in fp32 so they are safe under autocast.

With D(x) = sigmoid(l), log D(x) = -softplus(-l) and log(1 - D(x)) = -softplus(l).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from gancli.config import LossName


def d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    # -log D(x) - log(1 - D(G(z))), averaged over the batch
    return F.softplus(-real_logits.float()).mean() + F.softplus(fake_logits.float()).mean()


def g_loss_ns(fake_logits: torch.Tensor) -> torch.Tensor:
    # non-saturating: -log D(G(z))
    return F.softplus(-fake_logits.float()).mean()


def g_loss_minimax(fake_logits: torch.Tensor) -> torch.Tensor:
    # the original minimax objective: log(1 - D(G(z))), which G minimises
    return -F.softplus(fake_logits.float()).mean()


def r1_penalty(real_logits: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """E ||d logit / d x||^2 over the batch, at the real images `real` (which must require grad
    and be what `real_logits` came from); differentiable, so D's update can lower it."""
    (grad,) = torch.autograd.grad(real_logits.float().sum(), real, create_graph=True)  # (B, C, H, W)
    return grad.float().pow(2).flatten(1).sum(1).mean()


Loss = Callable[..., torch.Tensor]

# name -> (discriminator loss, generator loss)
LOSSES: dict[LossName, tuple[Loss, Loss]] = {
    LossName.ns: (d_loss, g_loss_ns),
    LossName.minimax: (d_loss, g_loss_minimax),
}
