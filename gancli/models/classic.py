"""The classic MNIST GAN: a dense generator and a two-conv discriminator."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from gancli.errors import at_least
from gancli.models.base import ModelConfig, Projection, Traits


@dataclass
class Config(ModelConfig):
    """G dense 128 -> 128 -> 784, D conv 64 5x5/2 -> conv 128 5x5/2 -> dense 1024 -> 1."""

    name: str = "classic"
    g_width: int = 128  # G's two hidden dense layers
    d_width: int = 64  # D's convs have d_width and 2 * d_width channels
    d_dense: int = 1024  # D's hidden dense layer

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, "model", 1, "g_width", "d_width", "d_dense")


TRAITS = Traits(convolutional=True)  # any image size; D's dense layer follows it


class Generator(nn.Module):
    def __init__(self, cfg: Config, shape: tuple, n_classes: int = 0):
        super().__init__()
        self.z_dim, self.n_classes = cfg.z_dim, n_classes
        self.shape = shape
        # a conditional G reads [z, embedding of c]: (B, 2 z_dim)
        self.embed = nn.Embedding(n_classes, cfg.z_dim) if n_classes else None
        self.net = nn.Sequential(
            nn.Linear(cfg.z_dim * (2 if n_classes else 1), cfg.g_width),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.g_width, cfg.g_width),
            nn.LeakyReLU(0.2),
            nn.Linear(cfg.g_width, math.prod(shape)),
            nn.Tanh(),  # images live in [-1, 1]
        )

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(c)], 1)
        return self.net(z).view(z.shape[0], *self.shape)  # (B, C, H, W)


class Discriminator(nn.Module):
    def __init__(self, cfg: Config, shape: tuple, n_classes: int = 0):
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
        self.project = Projection(n_classes, cfg.d_dense) if n_classes else None

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.project is None:
            return self.net(x).squeeze(1)  # (B,) logits
        h = self.net[:-1](x)  # (B, d_dense) features
        return self.net[-1](h).squeeze(1) + self.project(h, c)


def build(cfg: Config, shape: tuple, n_classes: int = 0) -> tuple[nn.Module, nn.Module]:
    return Generator(cfg, shape, n_classes), Discriminator(cfg, shape, n_classes)
