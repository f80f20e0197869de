"""The classic MNIST GAN: a dense generator and a two-conv discriminator."""

from __future__ import annotations

import math

import torch
from torch import nn

from gancli.config import SeedModel
from gancli.errors import GancliError


class Generator(nn.Module):
    def __init__(self, cfg: SeedModel, shape: tuple):
        super().__init__()
        self.z_dim = cfg.z_dim
        self.shape = shape
        self.net = nn.Sequential(
            nn.Linear(cfg.z_dim, cfg.g_width),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.g_width, cfg.g_width),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.g_width, math.prod(shape)),
            nn.Tanh(),  # images live in [-1, 1]
        )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.shape)  # (B, C, H, W)


class Discriminator(nn.Module):
    def __init__(self, cfg: SeedModel, shape: tuple):
        super().__init__()
        c, h, w = shape
        h4, w4 = (h + 3) // 4, (w + 3) // 4  # two stride-2 convs with padding 2
        self.net = nn.Sequential(
            nn.Conv2d(c, cfg.d_width, 5, stride=2, padding=2),  # (B, 64, H/2, W/2)
            nn.LeakyReLU(0.2),
            nn.Conv2d(cfg.d_width, 2 * cfg.d_width, 5, stride=2, padding=2),  # (B, 128, H/4, W/4)
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(2 * cfg.d_width * h4 * w4, cfg.d_dense),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.d_dense, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)  # (B,) logits


def build(cfg: SeedModel, shape: tuple) -> tuple[nn.Module, nn.Module]:
    if len(shape) != 3:
        raise GancliError("model=seed needs image data; for 2-D points (data=ring, data=grid) use model=mlp")
    return Generator(cfg, shape), Discriminator(cfg, shape)
