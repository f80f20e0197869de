"""The GAN objective: what one D update and one G update compute.

The losses and penalties are pure functions of D's logits (and of the images those came
from), computed in fp32 so that they are safe under autocast. `d_objective` and `g_objective`
compose them: they draw G's noise, run G and D (through the augmentation, when there is one)
and return the value to minimise with the named device-side stats to log. How an update runs
(zero_grad, gradient scaling, backward, the optimizer step, graphs, DDP) is step.py's business.

With D(x) = sigmoid(l), log D(x) = -softplus(-l) and log(1 - D(x)) = -softplus(l).
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional

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


def d_loss_hinge(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    # Lim & Ye 2017: E relu(1 - D(x)) + E relu(1 + D(G(z))); D stops pushing past a margin of 1
    return F.relu(1 - real_logits.float()).mean() + F.relu(1 + fake_logits.float()).mean()


def g_loss_critic(fake_logits: Tensor) -> Tensor:
    # hinge and Wasserstein G: -E D(G(z)), G raises the critic's score of its samples
    return -fake_logits.float().mean()


def d_loss_wasserstein(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    # Arjovsky et al. 2017: the critic maximises E D(x) - E D(G(z)); meaningful only with a
    # Lipschitz constraint (loss.gp_lambda or spectral norm)
    return fake_logits.float().mean() - real_logits.float().mean()


def d_loss_lsgan(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    # Mao et al. 2017 with targets 0 (fake) and 1 (real): 1/2 E (D(x) - 1)^2 + 1/2 E D(G(z))^2
    return 0.5 * (real_logits.float() - 1).pow(2).mean() + 0.5 * fake_logits.float().pow(2).mean()


def g_loss_lsgan(fake_logits: Tensor) -> Tensor:
    # 1/2 E (D(G(z)) - 1)^2: G pulls its scores onto the real target
    return 0.5 * (fake_logits.float() - 1).pow(2).mean()


def d_loss_rpgan(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    # relativistic pairing (Jolicoeur-Martineau 2019; R3GAN): E softplus(D(G(z)) - D(x)) over pairs
    return F.softplus(fake_logits.float() - real_logits.float()).mean()


def g_loss_rpgan(fake_logits: Tensor, real_logits: Tensor) -> Tensor:
    # G's side of the pairing: E softplus(D(x) - D(G(z))); it needs a real batch too
    return F.softplus(real_logits.float() - fake_logits.float()).mean()


def input_gradient(logits: Tensor, x: Tensor, grad_scale: float = 1.0) -> Tensor:
    """d sum(logits) / d x in float32, differentiable (so that D's update can lower a penalty on
    it); `x` must require grad and be what `logits` came from. Under fp16, `grad_scale` is the
    gradient scaler's scale, so that small input gradients do not underflow on the way back."""
    outputs = logits.float().sum() if grad_scale == 1.0 else logits.float().sum() * grad_scale
    (grad,) = torch.autograd.grad(outputs, x, create_graph=True)  # (B, C, H, W) or (B, 2)
    return grad.float() if grad_scale == 1.0 else grad.float() / grad_scale


def r1_penalty(logits: Tensor, x: Tensor, grad_scale: float = 1.0) -> Tensor:
    """E ||d logit / d x||^2 over the batch, at `x`: R1 at real images, R2 at G's samples."""
    return input_gradient(logits, x, grad_scale).pow(2).flatten(1).sum(1).mean()


def gradient_penalty(logits: Tensor, x_hat: Tensor, grad_scale: float = 1.0) -> Tensor:
    """WGAN-GP (Gulrajani et al. 2017): E (||d logit / d x_hat|| - 1)^2 at the interpolates `x_hat`."""
    return (input_gradient(logits, x_hat, grad_scale).flatten(1).norm(dim=1) - 1).pow(2).mean()


def path_length_penalty(fake: Tensor, ws: Tensor, target: Tensor, decay: float,
                        grad_scale: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
    """StyleGAN2's path-length penalty (Karras et al. 2020): E (||J_w^T y|| - a)^2, the Jacobian
    of the images (B, C, H, W) with respect to their ws (B, L, w_dim) applied to image-space
    noise y ~ N(0, I) / sqrt(H W), a moving average of the lengths. `ws` must be what `fake`
    came from, inside its graph. -> (penalty, the batch's mean length, the target moved `decay`
    toward it), so that G's updates keep one length for every direction in W."""
    noise = torch.randn_like(fake, dtype=torch.float32) / math.sqrt(fake.shape[2] * fake.shape[3])
    outputs = (fake.float() * noise).sum() * grad_scale
    (grad,) = torch.autograd.grad(outputs, ws, create_graph=True)  # (B, L, w_dim)
    lengths = (grad.float() / grad_scale).square().sum(2).mean(1).sqrt()  # (B,)
    moved = target.lerp(lengths.mean().detach(), decay)
    return (lengths - moved).square().mean(), lengths.mean(), moved


class PathLengthTarget(nn.Module):
    """The path-length penalty's moving target a (a device scalar), saved in checkpoints so that
    a resumed run penalises toward the same length."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("value", torch.zeros(()))


def style_mixing(cfg: LossConfig, G: nn.Module, z: Tensor) -> dict[str, Tensor]:
    """G's keyword arguments for style mixing (Karras et al. 2019): with probability
    loss.style_mixing, the layers from a random one on (1..num_ws - 1, one for the batch) read
    the w of a second noise; otherwise none do (mix_from = num_ws). Drawn on the device."""
    if cfg.style_mixing <= 0:
        return {}
    num_ws = getattr(G, "module", G).num_ws
    cut = torch.randint(1, num_ws, (), device=z.device)
    cut = torch.where(torch.rand((), device=z.device) < cfg.style_mixing, cut, torch.full_like(cut, num_ws))
    return {"mix_z": torch.randn_like(z), "mix_from": cut}


class Loss(NamedTuple):
    d: Callable[..., Tensor]  # (real logits, fake logits) -> D's loss
    g: Callable[..., Tensor]  # (fake logits) -> G's loss; (fake logits, real logits) if g_needs_real
    g_needs_real: bool = False


LOSSES: dict[LossName, Loss] = {
    LossName.ns: Loss(d_loss, g_loss_ns),
    LossName.minimax: Loss(d_loss, g_loss_minimax),
    LossName.hinge: Loss(d_loss_hinge, g_loss_critic),
    LossName.wasserstein: Loss(d_loss_wasserstein, g_loss_critic),
    LossName.lsgan: Loss(d_loss_lsgan, g_loss_lsgan),
    LossName.rpgan: Loss(d_loss_rpgan, g_loss_rpgan, g_needs_real=True),
}


def _input_leaf(x: Tensor) -> tuple[Tensor, Tensor]:
    """(a leaf that requires grad, the view of it that D gets) for a penalty at `x`."""
    leaf = x.detach().requires_grad_(True)
    # D gets a view, not the leaf: FlopCounterMode's module hooks refuse a leaf input to autograd.grad
    return leaf, leaf.view_as(leaf)


def _identity(x: Tensor) -> Tensor:
    return x


def d_objective(cfg: LossConfig, G: nn.Module, D: nn.Module, batch: Batch, augment: Optional[nn.Module] = None,
                reg: bool = True, grad_scale: float = 1.0, r1_gamma: Optional[Tensor] = None,
                r2_gamma: Optional[Tensor] = None) -> tuple[Tensor, Stats]:
    """D's loss on a real batch and on a batch of G's, G held fixed, plus the penalties when `reg`
    (weighted by loss.reg_every, which is lazy regularisation) -> (objective, stats). The
    penalties differentiate through the augmentation, with respect to the un-augmented images.
    loss.r1_gamma and loss.r2_gamma turn R1 and R2 on; `r1_gamma` and `r2_gamma`, device scalars
    a schedule writes, weigh them in their stead."""
    aug = augment if augment is not None else _identity
    real, c = batch.x, batch.c  # (B, C, H, W) in [-1, 1] or (B, 2); (B,) labels or None
    z, c_fake = latents(G, len(real), real.device)
    with torch.no_grad():
        fake = G(z, c_fake, **style_mixing(cfg, G, z))
    r1, r2, gp = (reg and cfg.r1_gamma > 0), (reg and cfg.r2_gamma > 0), (reg and cfg.gp_lambda > 0)
    if r1:
        real_leaf, real = _input_leaf(real)
    if r2:
        fake_leaf, fake = _input_leaf(fake)
    real_logits, fake_logits = D(aug(real), c), D(aug(fake), c_fake)  # (B,) each
    loss = LOSSES[cfg.name].d(real_logits, fake_logits)
    stats = {"loss_d": loss, "d_real": real_logits.float().mean(), "d_fake": fake_logits.float().mean()}
    objective = loss
    if r1:  # gamma/2 E||grad_x D(x)||^2 at real images (Mescheder et al. 2018)
        stats["r1"] = r1_penalty(real_logits, real_leaf, grad_scale)
        weight = cfg.r1_gamma / 2 * cfg.reg_every if r1_gamma is None else r1_gamma / 2 * cfg.reg_every
        objective = objective + weight * stats["r1"]
    if r2:  # the same at G's samples (R3GAN pairs it with R1)
        stats["r2"] = r1_penalty(fake_logits, fake_leaf, grad_scale)
        weight = cfg.r2_gamma / 2 * cfg.reg_every if r2_gamma is None else r2_gamma / 2 * cfg.reg_every
        objective = objective + weight * stats["r2"]
    if gp:  # lambda E(||grad D(x_hat)|| - 1)^2 at x_hat = eps x + (1 - eps) G(z), eps ~ U(0, 1) per sample
        eps = torch.rand(len(real), *[1] * (real.dim() - 1), device=real.device)
        hat_leaf, x_hat = _input_leaf(eps * real.detach() + (1 - eps) * fake.detach())
        stats["gp"] = gradient_penalty(D(aug(x_hat), c), hat_leaf, grad_scale)
        objective = objective + cfg.gp_lambda * cfg.reg_every * stats["gp"]
    if augment is not None:
        augment.observe(real_logits, len(real))  # the adaptive probability's evidence: how sure D is of the reals
        stats["augment_p"] = augment.p
    return objective, stats


def g_objective(cfg: LossConfig, G: nn.Module, D: nn.Module, batch: Batch, augment: Optional[nn.Module] = None,
                reg: bool = False, grad_scale: float = 1.0,
                pl_target: Optional[Tensor] = None) -> tuple[Tensor, Stats]:
    """G's loss on D(G(z)), D held fixed (with D's scores of the real batch, for a relativistic
    loss), plus the path-length penalty when `reg` and loss.pl_weight (weighted by loss.pl_every:
    lazy regularisation; `pl_target`, its moving target, is moved in place) -> (objective, stats)."""
    aug = augment if augment is not None else _identity
    loss_fns = LOSSES[cfg.name]
    z, c_fake = latents(G, len(batch.x), batch.x.device)
    fake_logits = D(aug(G(z, c_fake, **style_mixing(cfg, G, z))), c_fake)  # (B,)
    if loss_fns.g_needs_real:
        loss = loss_fns.g(fake_logits, D(aug(batch.x), batch.c))
    else:
        loss = loss_fns.g(fake_logits)
    stats = {"loss_g": loss, "d_fake_after": fake_logits.float().mean()}
    objective = loss
    if reg and cfg.pl_weight > 0:  # on a smaller batch of its own, as StyleGAN2 does
        z, c_pl = latents(G, max(1, len(batch.x) // cfg.pl_batch_shrink), batch.x.device)
        fake, ws = G(z, c_pl, return_ws=True, **style_mixing(cfg, G, z))
        stats["pl"], stats["pl_length"], moved = path_length_penalty(fake, ws, pl_target, cfg.pl_decay, grad_scale)
        pl_target.copy_(moved)
        objective = objective + cfg.pl_weight * cfg.pl_every * stats["pl"]
    return objective, stats
