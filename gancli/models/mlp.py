"""Dense generator and discriminator, for 2-D points and small images."""

from __future__ import annotations

import math

import torch
from torch import nn

from gancli.config import Activation, MLPModel

_ACTIVATIONS = {
    Activation.relu: nn.ReLU,
    Activation.leaky_relu: lambda: nn.LeakyReLU(0.2),
    Activation.tanh: nn.Tanh,
    Activation.gelu: nn.GELU,
    Activation.silu: nn.SiLU,
}


def _hidden(n_in: int, cfg: MLPModel, batch_norm: bool) -> tuple[list[nn.Module], int]:
    layers: list[nn.Module] = []
    for _ in range(cfg.depth):
        layers.append(nn.Linear(n_in, cfg.width))
        if batch_norm:
            layers.append(nn.BatchNorm1d(cfg.width))
        layers.append(_ACTIVATIONS[cfg.activation]())
        n_in = cfg.width
    return layers, n_in


class Generator(nn.Module):
    def __init__(self, cfg: MLPModel, shape: tuple):
        super().__init__()
        self.z_dim = cfg.z_dim
        self.shape = shape
        layers, width = _hidden(cfg.z_dim, cfg, cfg.batch_norm)
        layers.append(nn.Linear(width, math.prod(shape)))
        if len(shape) == 3:
            layers.append(nn.Tanh())  # images live in [-1, 1]; points are unbounded
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.net(z).view(z.shape[0], *self.shape)


class Discriminator(nn.Module):
    def __init__(self, cfg: MLPModel, shape: tuple):
        super().__init__()
        layers, width = _hidden(math.prod(shape), cfg, batch_norm=False)
        self.net = nn.Sequential(nn.Flatten(), *layers, nn.Linear(width, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(1)  # (B,) logits


def build(cfg: MLPModel, shape: tuple) -> tuple[nn.Module, nn.Module]:
    return Generator(cfg, shape), Discriminator(cfg, shape)
