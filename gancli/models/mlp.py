"""Dense generator and discriminator, for 2-D points and small images."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Optional

import torch
from torch import nn

from gancli.errors import at_least
from gancli.models.base import ModelConfig, Traits


class Activation(Enum):
    relu = "relu"
    leaky_relu = "leaky_relu"
    tanh = "tanh"
    gelu = "gelu"
    silu = "silu"


@dataclass
class Config(ModelConfig):
    """Dense G and D of configurable depth and width."""

    name: str = "mlp"
    z_dim: int = 64
    depth: int = 3  # hidden layers in each network
    width: int = 256
    activation: Activation = Activation.relu
    batch_norm: bool = False  # batch norm after each hidden layer of G

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, "model", 1, "depth", "width")


TRAITS = Traits(convolutional=False, points=True)

_ACTIVATIONS = {
    Activation.relu: nn.ReLU,
    Activation.leaky_relu: lambda: nn.LeakyReLU(0.2),
    Activation.tanh: nn.Tanh,
    Activation.gelu: nn.GELU,
    Activation.silu: nn.SiLU,
}


def _hidden(n_in: int, cfg: Config, batch_norm: bool) -> tuple[list[nn.Module], int]:
    layers: list[nn.Module] = []
    for _ in range(cfg.depth):
        layers.append(nn.Linear(n_in, cfg.width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(cfg.width))
        layers.append(_ACTIVATIONS[cfg.activation]())
        n_in = cfg.width
    return layers, n_in


class Generator(nn.Module):
    n_classes = 0  # unconditional

    def __init__(self, cfg: Config, shape: tuple):
        super().__init__()
        self.z_dim = cfg.z_dim
        self.shape = shape
        layers, width = _hidden(cfg.z_dim, cfg, cfg.batch_norm)
        layers.append(nn.Linear(width, math.prod(shape)))
        if len(shape) == 3:
            layers.append(nn.Tanh())  # images live in [-1, 1]; points are unbounded
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.shape)


class Discriminator(nn.Module):
    def __init__(self, cfg: Config, shape: tuple):
        super().__init__()
        layers, width = _hidden(math.prod(shape), cfg, batch_norm=False)
        self.net = nn.Sequential(nn.Flatten(), *layers, nn.Linear(width, 1))

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.net(x).squeeze(1)  # (B,) logits


def build(cfg: Config, shape: tuple) -> tuple[nn.Module, nn.Module]:
    return Generator(cfg, shape), Discriminator(cfg, shape)
