"""Differentiable augmentation of what D sees (DiffAugment, Zhao et al. 2020), and the adaptive
probability of ADA (Karras et al. 2020).

D's real and generated batches go through the same random ops, so D cannot tell them apart by
the augmentation, and gradients flow through the ops to G. Every random number is drawn on
the device, so the augmentation runs inside CUDA graphs; `p` and ADA's evidence are buffers,
saved in checkpoints with the module's state. Each op is a few tensor lines that never wait
for the host, so no image library (kornia) is needed.
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor, nn

from gancli.config import AugmentConfig, AugmentOp

TRANSLATE = 1 / 8  # largest shift, as a share of the side
CUTOUT = 1 / 2  # side of the cut-out square, as a share of the image side


def _per_sample(x: Tensor, *shape: int) -> Tensor:
    """Uniform [0, 1) numbers, one set per sample of x: (B, *shape), on x's device."""
    return torch.rand(len(x), *shape, device=x.device, dtype=x.dtype)


def color(x: Tensor) -> Tensor:
    """Brightness +U(-0.5, 0.5), saturation xU(0, 2), contrast xU(0.5, 1.5), per sample; (B, C, H, W)."""
    x = x + (_per_sample(x, 1, 1, 1) - 0.5)
    mean = x.mean(dim=1, keepdim=True)  # (B, 1, H, W): grey
    x = (x - mean) * (_per_sample(x, 1, 1, 1) * 2) + mean
    mean = x.mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
    return (x - mean) * (_per_sample(x, 1, 1, 1) + 0.5) + mean


def translation(x: Tensor) -> Tensor:
    """Shift each image by up to 1/8 of its side in each direction, filling with zeros."""
    b, c, h, w = x.shape
    reach_y, reach_x = max(1, round(h * TRANSLATE)), max(1, round(w * TRANSLATE))
    dy = torch.randint(-reach_y, reach_y + 1, (b, 1, 1), device=x.device)
    dx = torch.randint(-reach_x, reach_x + 1, (b, 1, 1), device=x.device)
    src_y = torch.arange(h, device=x.device)[None, :, None] - dy  # (B, H, 1): the row each pixel comes from
    src_x = torch.arange(w, device=x.device)[None, None, :] - dx  # (B, 1, W)
    inside = ((src_y >= 0) & (src_y < h) & (src_x >= 0) & (src_x < w)).to(x.dtype)  # (B, H, W)
    index = (src_y.clamp(0, h - 1) * w + src_x.clamp(0, w - 1)).flatten(1)  # (B, H*W) into the flat image
    moved = x.reshape(b, c, h * w).gather(2, index[:, None, :].expand(b, c, h * w)).view(b, c, h, w)
    return moved * inside[:, None]


def cutout(x: Tensor) -> Tensor:
    """Set a square of half the side, centred anywhere in the image (clipped at its edges), to zero."""
    b, _, h, w = x.shape
    size_y, size_x = max(1, round(h * CUTOUT)), max(1, round(w * CUTOUT))
    top = torch.randint(0, h, (b, 1, 1), device=x.device) - size_y // 2  # the square's first row, maybe < 0
    left = torch.randint(0, w, (b, 1, 1), device=x.device) - size_x // 2
    rows = torch.arange(h, device=x.device)[None, :, None] - top  # (B, H, 1): row within the square
    cols = torch.arange(w, device=x.device)[None, None, :] - left  # (B, 1, W)
    inside = (rows >= 0) & (rows < size_y) & (cols >= 0) & (cols < size_x)  # (B, H, W)
    return x * (~inside).to(x.dtype)[:, None]


OPS: dict[AugmentOp, Callable[[Tensor], Tensor]] = {
    AugmentOp.color: color,
    AugmentOp.translation: translation,
    AugmentOp.cutout: cutout,
}


class Augment(nn.Module):
    """x -> each op of the policy applied to each sample with probability p (B, C, H, W) -> same.

    With `adaptive`, D's updates add sign(D(real)) to `evidence` (`observe`), and `adjust`, run
    every `interval` steps outside any graph, moves p by sign(r_t - target) x (real images seen)
    / (speed_kimg x 1000), where r_t = E[sign(D(real))]: p rises while D is too sure of the reals.
    """

    def __init__(self, cfg: AugmentConfig):
        super().__init__()
        self.ops = [OPS[op] for op in cfg.policy]
        self.adaptive, self.target, self.speed = cfg.adaptive, cfg.target, cfg.speed_kimg * 1000
        self.register_buffer("p", torch.tensor(float(cfg.p)))
        self.register_buffer("evidence", torch.zeros(2))  # (sum of sign(D(real)), count) since the last adjust

    def forward(self, x: Tensor) -> Tensor:
        for op in self.ops:
            chosen = _per_sample(x, *[1] * (x.dim() - 1)) < self.p  # (B, 1, 1, 1)
            x = torch.where(chosen, op(x), x)
        return x

    @torch.no_grad()
    def observe(self, real_logits: Tensor, images: Optional[int] = None) -> None:
        """Add the evidence of D's logits (B / m,) for `images` real images (B; m per logit when D
        scores packs): r_t is their mean sign, and p's speed counts images."""
        if self.adaptive:
            signs = real_logits.detach().float().sign()
            images = images or signs.numel()
            per_logit = images / signs.numel()
            self.evidence[0].add_(signs.sum() * per_logit)
            self.evidence[1].add_(images)  # a constant of the step: no host value enters a graph

    @torch.no_grad()
    def adjust(self, all_reduce: Optional[Callable[[Tensor], None]] = None) -> None:
        """Move p from the evidence gathered since the last call (summed over ranks first)."""
        if not self.adaptive:
            return
        if all_reduce is not None:
            all_reduce(self.evidence)
        total, count = self.evidence[0], self.evidence[1]
        r_t = total / count.clamp(min=1)
        self.p.add_(torch.sign(r_t - self.target) * count / self.speed).clamp_(0, 1)
        self.evidence.zero_()
