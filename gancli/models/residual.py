"""A normalisation-free residual G and D after R3GAN (Huang et al., NeurIPS 2024), for 28x28 and
square powers of two from 32 to 256.

Each stage is a run of inverted-bottleneck blocks, x + conv1x1(act(grouped conv3x3(act(conv1x1(x))))),
that widen the channels by `expansion` inside the block. The last conv of every block starts at
zero and the others are scaled down by (blocks)^(-1/4) (fix-up initialisation, for 3 layers per
branch), so that each network starts as nearly the identity and trains without batch norm.
Between stages G upsamples bilinearly and D averages 2x2 (a box low-pass filter) before halving
the side, with 1x1 convs to change width. G starts from a learned 4x4 (7x7 for 28x28) basis
scaled per channel by a projection of z, and ends in a linear 1x1 conv (no tanh, as in R3GAN);
D ends in a depthwise conv over its last map, which mirrors that basis. A conditional G reads an
embedding of the class beside z; a conditional D adds the projection term.
Trained with the relativistic loss and R1 + R2: `experiment=r3gan`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gancli.errors import at_least
from gancli.models.base import ModelConfig, Projection, Traits

SIZES = (28, 32, 64, 128, 256)


@dataclass
class Config(ModelConfig):
    """Stages of inverted-bottleneck blocks; channels double from the largest map towards 4x4."""

    name: str = "residual"
    z_dim: int = 64
    width: int = 64  # channels at the largest map; they double at each smaller one, up to width_max
    width_max: int = 256
    blocks: int = 2  # blocks per stage
    expansion: int = 2  # the bottleneck widens the channels this many times
    group_size: int = 16  # channels per group of the grouped 3x3 conv

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, "model", 1, "width", "width_max", "blocks", "expansion", "group_size")


TRAITS = Traits(convolutional=True, sizes=SIZES)


def _stages(cfg: Config, side: int) -> tuple[int, list[int]]:
    """(side of the smallest map, channels per stage from the smallest map to the largest)."""
    base = 7 if side == 28 else 4
    n = (side // base).bit_length()  # stages: base, 2 base, ..., side
    return base, [min(cfg.width * 2 ** (n - 1 - i), cfg.width_max) for i in range(n)]


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


class Block(nn.Module):
    """(B, C, S, S) -> (B, C, S, S): x + the inverted bottleneck of x."""

    def __init__(self, channels: int, cfg: Config, n_blocks: int):
        super().__init__()
        inner = channels * cfg.expansion
        groups = max(1, inner // cfg.group_size)
        while inner % groups:  # a group count that divides the channels
            groups -= 1
        self.expand = nn.Conv2d(channels, inner, 1)
        self.spatial = nn.Conv2d(inner, inner, 3, padding=1, groups=groups)
        self.back = nn.Conv2d(inner, channels, 1)
        scale = n_blocks ** -0.25  # fix-up: L^(-1/(2m - 2)) for m = 3 layers per branch
        for conv in (self.expand, self.spatial):
            nn.init.kaiming_normal_(conv.weight, a=0.2, nonlinearity="leaky_relu")
            conv.weight.data.mul_(scale)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.back.weight)  # each block starts as the identity
        nn.init.zeros_(self.back.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.back(_act(self.spatial(_act(self.expand(x)))))


def _stage(channels: int, cfg: Config, n_blocks: int) -> nn.Sequential:
    return nn.Sequential(*(Block(channels, cfg, n_blocks) for _ in range(cfg.blocks)))


class Generator(nn.Module):
    def __init__(self, cfg: Config, shape: tuple, n_classes: int = 0):
        super().__init__()
        base, channels = _stages(cfg, shape[1])
        n_blocks = cfg.blocks * len(channels)
        self.z_dim, self.n_classes = cfg.z_dim, n_classes
        self.embed = nn.Embedding(n_classes, cfg.z_dim) if n_classes else None
        n_in = cfg.z_dim * (2 if n_classes else 1)
        # (B, z) -> (B, C0) channel scales of the learned (C0, base, base) basis
        self.to_basis = nn.Linear(n_in, channels[0])
        self.basis = nn.Parameter(torch.randn(channels[0], base, base))
        self.stages = nn.ModuleList(_stage(ch, cfg, n_blocks) for ch in channels)
        self.widen = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(channels[:-1], channels[1:]))
        self.out = nn.Conv2d(channels[-1], shape[0], 1)  # (B, C, H, W), unbounded

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(c)], 1)
        h = self.to_basis(z)[:, :, None, None] * self.basis  # (B, C0, base, base)
        for i, stage in enumerate(self.stages):
            if i:  # 2x bilinear upsampling, then the next stage's width
                h = self.widen[i - 1](F.interpolate(h, scale_factor=2, mode="bilinear", align_corners=False))
            h = stage(h)
        return self.out(_act(h))


class Discriminator(nn.Module):
    def __init__(self, cfg: Config, shape: tuple, n_classes: int = 0):
        super().__init__()
        base, channels = _stages(cfg, shape[1])
        channels = channels[::-1]  # from the largest map to the smallest
        n_blocks = cfg.blocks * len(channels)
        self.inp = nn.Conv2d(shape[0], channels[0], 1)
        self.stages = nn.ModuleList(_stage(ch, cfg, n_blocks) for ch in channels)
        self.narrow = nn.ModuleList(nn.Conv2d(a, b, 1) for a, b in zip(channels[:-1], channels[1:]))
        # mirrors G's basis: one base x base filter per channel -> (B, C, 1, 1)
        self.basis = nn.Conv2d(channels[-1], channels[-1], base, groups=channels[-1])
        self.out = nn.Linear(channels[-1], 1)
        self.project = Projection(n_classes, channels[-1]) if n_classes else None

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = self.inp(x)
        for i, stage in enumerate(self.stages):
            if i:  # the next stage's width, then a 2x2 average (low-pass) halving the side
                h = F.avg_pool2d(self.narrow[i - 1](h), 2)
            h = stage(h)
        h = self.basis(_act(h)).flatten(1)  # (B, C)
        logits = self.out(h).squeeze(1)
        return logits if self.project is None else logits + self.project(h, c)


def build(cfg: Config, shape: tuple, n_classes: int = 0) -> tuple[nn.Module, nn.Module]:
    return Generator(cfg, shape, n_classes), Discriminator(cfg, shape, n_classes)
