"""Dense generator and discriminator, for 2-D points and small images."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Optional

import torch
from torch import nn

from gancli.errors import GancliError, at_least
from gancli.models.base import ModelConfig, Projection, Traits


class Activation(Enum):
    relu = "relu"
    leaky_relu = "leaky_relu"
    tanh = "tanh"
    gelu = "gelu"
    silu = "silu"
    maxout = "maxout"  # the largest of `maxout_pieces` linear units (Goodfellow et al. 2013); D only


@dataclass
class Config(ModelConfig):
    """Dense G and D of configurable depth and width; D's may differ from G's."""

    name: str = "mlp"
    z_dim: int = 64
    depth: int = 3  # hidden layers in G, and in D unless d_depth is set
    width: int = 256  # units per hidden layer of G, and of D unless d_width is set
    activation: Activation = Activation.relu
    batch_norm: bool = False  # batch norm after each hidden layer of G
    d_depth: Optional[int] = None  # D's hidden layers (null: depth)
    d_width: Optional[int] = None  # D's hidden units (null: width)
    d_activation: Optional[Activation] = None  # D's activation (null: activation)
    maxout_pieces: int = 5  # linear pieces per unit of a maxout layer
    init_std: Optional[float] = None  # weights drawn from N(0, init_std), biases 0; null: torch's default

    def __post_init__(self) -> None:
        super().__post_init__()
        at_least(self, "model", 1, "depth", "width", "maxout_pieces")
        for key in ("d_depth", "d_width"):
            if getattr(self, key) is not None:
                at_least(self, "model", 1, key)
        if self.init_std is not None and not self.init_std > 0:
            raise GancliError(f"model.init_std={self.init_std} must be a number > 0, or null for torch's default")
        if self.activation is Activation.maxout:
            raise GancliError("model.activation=maxout is for D only: set model.d_activation=maxout and a G activation")


TRAITS = Traits(convolutional=False, points=True)

_ACTIVATIONS = {
    Activation.relu: nn.ReLU,
    Activation.leaky_relu: lambda: nn.LeakyReLU(0.2),
    Activation.tanh: nn.Tanh,
    Activation.gelu: nn.GELU,
    Activation.silu: nn.SiLU,
}


class Maxout(nn.Module):
    """(B, n_in) -> (B, n_out): each unit is the largest of `pieces` linear functions of the input."""

    def __init__(self, n_in: int, n_out: int, pieces: int):
        super().__init__()
        self.pieces = pieces
        self.linear = nn.Linear(n_in, n_out * pieces)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).unflatten(1, (-1, self.pieces)).amax(2)


def _hidden(n_in: int, depth: int, width: int, activation: Activation, pieces: int,
            batch_norm: bool) -> tuple[list[nn.Module], int]:
    layers: list[nn.Module] = []
    for _ in range(depth):
        if activation is Activation.maxout:
            layers.append(Maxout(n_in, width, pieces))
        else:
            layers.append(nn.Linear(n_in, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(_ACTIVATIONS[activation]())
        n_in = width
    return layers, n_in


def _init(std: Optional[float]):
    def init(module: nn.Module) -> None:
        if std is not None and isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, 0.0, std)
            if getattr(module, "bias", None) is not None:
                nn.init.zeros_(module.bias)
    return init


class Generator(nn.Module):
    def __init__(self, cfg: Config, shape: tuple, n_classes: int = 0):
        super().__init__()
        self.z_dim, self.n_classes = cfg.z_dim, n_classes
        self.shape = shape
        # a conditional G reads [z, embedding of c]: (B, 2 z_dim)
        self.embed = nn.Embedding(n_classes, cfg.z_dim) if n_classes else None
        n_in = cfg.z_dim * (2 if n_classes else 1)
        layers, width = _hidden(n_in, cfg.depth, cfg.width, cfg.activation, cfg.maxout_pieces, cfg.batch_norm)
        layers.append(nn.Linear(width, math.prod(shape)))
        if len(shape) == 3:
            layers.append(nn.Tanh())  # images live in [-1, 1]; points are unbounded
        self.net = nn.Sequential(*layers)
        self.apply(_init(cfg.init_std))

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.embed is not None:
            z = torch.cat([z, self.embed(c)], 1)
        return self.net(z).view(z.shape[0], *self.shape)


class Discriminator(nn.Module):
    def __init__(self, cfg: Config, shape: tuple, n_classes: int = 0):
        super().__init__()
        layers, width = _hidden(math.prod(shape), cfg.d_depth or cfg.depth, cfg.d_width or cfg.width,
                                cfg.d_activation or cfg.activation, cfg.maxout_pieces, batch_norm=False)
        self.net = nn.Sequential(nn.Flatten(), *layers, nn.Linear(width, 1))
        self.project = Projection(n_classes, width) if n_classes else None
        self.apply(_init(cfg.init_std))

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        if self.project is None:
            return self.net(x).squeeze(1)  # (B,) logits
        h = self.net[:-1](x)  # (B, width) features
        return self.net[-1](h).squeeze(1) + self.project(h, c)


def build(cfg: Config, shape: tuple, n_classes: int = 0) -> tuple[nn.Module, nn.Module]:
    return Generator(cfg, shape, n_classes), Discriminator(cfg, shape, n_classes)
