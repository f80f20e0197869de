"""DCGAN (Radford et al. 2016) for 28x28 images and square powers of two from 16 to 128."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from gancli.errors import at_least
from gancli.models.base import (ClassSequential, ConvToPoint, ConvTransposeFromPoint, ModelConfig, Projection, Traits,
                                batch_norm)


@dataclass
class Config(ModelConfig):
    """Strided transposed convs with batch norm in G, strided convs in D."""

    name: str = "dcgan"
    g_width: int = 64  # channels of G's last hidden layer; doubles towards the input
    d_width: int = 64  # channels of D's first layer; doubles towards the output

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, "model", 1, "g_width", "d_width")


TRAITS = Traits(convolutional=True, sizes=(16, 28, 32, 64, 128))


def _layout(shape: tuple) -> tuple[int, int]:
    """(side of the smallest feature map, number of 2x up/down-samplings) for an image shape."""
    side = shape[1]
    base = 7 if side == 28 else 4
    return base, (side // base).bit_length() - 1


def _init(module: nn.Module) -> None:
    # DCGAN initialisation: N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d) and module.weight is not None:
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    def __init__(self, cfg: Config, shape: tuple, n_classes: int = 0):
        super().__init__()
        base, ups = _layout(shape)
        self.z_dim, self.n_classes = cfg.z_dim, n_classes
        width = cfg.g_width * 2 ** (ups - 1)
        # a conditional G reads the class twice: an embedding beside z, and per-class batch norms.
        # Through batch norm alone the class took thousands of steps to show (docs/recipes.md).
        self.embed = nn.Embedding(n_classes, cfg.z_dim) if n_classes else None
        n_in = cfg.z_dim * (2 if n_classes else 1)
        # (B, z, 1, 1) -> (B, width, base, base)
        layers: list[nn.Module] = [
            ConvTransposeFromPoint(n_in, width, base, 1, 0, bias=False),  # a matrix product
            batch_norm(width, n_classes),
            nn.ReLU(True),
        ]
        for _ in range(ups - 1):  # each doubles the side and halves the channels
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), batch_norm(width // 2, n_classes),
                       nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, shape[0], 4, 2, 1, bias=False), nn.Tanh()]  # (B, C, H, W)
        self.net = ClassSequential(*layers)
        self.apply(_init)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(c)], 1)
        return self.net(z[:, :, None, None], c)


class Discriminator(nn.Module):
    def __init__(self, cfg: Config, shape: tuple, n_classes: int = 0):
        super().__init__()
        base, downs = _layout(shape)
        width = cfg.d_width
        # (B, C, H, W) -> (B, d_width, H/2, W/2); no batch norm on the input layer
        layers: list[nn.Module] = [nn.Conv2d(shape[0], width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for _ in range(downs - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2),
                       nn.LeakyReLU(0.2, True)]
            width *= 2
        layers += [ConvToPoint(width, 1, base, 1, 0, bias=False)]  # (B, 1, 1, 1) logits, a matrix product
        self.net = nn.Sequential(*layers)
        # the class term reads D's last feature map, summed over space: (B, width)
        self.project = Projection(n_classes, width) if n_classes else None
        self.apply(_init)

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.project is None:
            return self.net(x).flatten()
        h = self.net[:-1](x)  # (B, width, base, base)
        return self.net[-1](h).flatten() + self.project(h.sum((2, 3)), c)


def build(cfg: Config, shape: tuple, n_classes: int = 0) -> tuple[nn.Module, nn.Module]:
    return Generator(cfg, shape, n_classes), Discriminator(cfg, shape, n_classes)
