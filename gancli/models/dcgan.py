"""DCGAN (Radford et al. 2016) for 28x28 images and square powers of two from 16 to 128."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from gancli.errors import at_least
from gancli.models.base import ModelConfig, Traits


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
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


class Generator(nn.Module):
    n_classes = 0  # unconditional

    def __init__(self, cfg: Config, shape: tuple):
        super().__init__()
        base, ups = _layout(shape)
        self.z_dim = cfg.z_dim
        width = cfg.g_width * 2 ** (ups - 1)
        # (B, z, 1, 1) -> (B, width, base, base)
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(cfg.z_dim, width, base, 1, 0, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(True),
        ]
        for _ in range(ups - 1):  # each doubles the side and halves the channels
            layers += [nn.ConvTranspose2d(width, width // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width // 2), nn.ReLU(True)]
            width //= 2
        layers += [nn.ConvTranspose2d(width, shape[0], 4, 2, 1, bias=False), nn.Tanh()]  # (B, C, H, W)
        self.net = nn.Sequential(*layers)
        self.apply(_init)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    def __init__(self, cfg: Config, shape: tuple):
        super().__init__()
        base, downs = _layout(shape)
        width = cfg.d_width
        # (B, C, H, W) -> (B, d_width, H/2, W/2); no batch norm on the input layer
        layers: list[nn.Module] = [nn.Conv2d(shape[0], width, 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for _ in range(downs - 1):
            layers += [nn.Conv2d(width, width * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(width * 2), nn.LeakyReLU(0.2, True)]
            width *= 2
        layers += [nn.Conv2d(width, 1, base, 1, 0, bias=False)]  # (B, 1, 1, 1) logits
        self.net = nn.Sequential(*layers)
        self.apply(_init)

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.net(x).flatten()


def build(cfg: Config, shape: tuple) -> tuple[nn.Module, nn.Module]:
    return Generator(cfg, shape), Discriminator(cfg, shape)
