"""SNGAN's ResNet G and D (Miyato et al. 2018, Appendix B; the layouts of Mimicry's SNGAN models)
for 28x28 (MNIST-size, our own layout in the same blocks), 32x32, 48x48, 64x64 and 128x128 images.

G: a dense layer to a base x base map, residual up-blocks (batch norm, ReLU, 2x nearest
upsampling, 3x3 convs; conditional batch norm for a conditional G), then batch norm, ReLU, a 3x3
conv and tanh. D: residual down-blocks (ReLU, 3x3 convs, 2x2 average pooling; the first block
starts with a conv, as in SNGAN), ReLU, a sum over space and a dense logit, plus the projection
term for a conditional D. Spectral norm on D is the family's default (configs/model/resnet.yaml).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from gancli.errors import GancliError
from gancli.models.base import ModelConfig, Projection, Traits, batch_norm

# per image side: (base side, G's channels as multiples of g_width from the dense layer's map to
# the last up-block, D's blocks as (multiple of d_width, downsamples))
LAYOUTS: dict[int, tuple[int, list[int], list[tuple[int, bool]]]] = {
    28: (7, [4, 2, 1], [(1, True), (2, True), (2, False)]),
    32: (4, [1, 1, 1, 1], [(1, True), (1, True), (1, False), (1, False)]),
    48: (6, [8, 4, 2, 1], [(1, True), (2, True), (4, True), (8, True), (16, False)]),
    64: (4, [16, 8, 4, 2, 1], [(1, True), (2, True), (4, True), (8, True), (16, True)]),
    128: (4, [16, 16, 8, 4, 2, 1], [(1, True), (2, True), (4, True), (8, True), (16, True), (16, False)]),
}
# SNGAN's widths: its 32x32 model keeps 256 channels in G and 128 in D throughout
PAPER_WIDTHS = {32: (256, 128)}
DEFAULT_WIDTHS = (64, 64)


@dataclass
class Config(ModelConfig):
    """Residual G and D; widths scale every layer (null: SNGAN's widths for the image size)."""

    name: str = "resnet"
    z_dim: int = 128
    g_width: Optional[int] = None  # channels of G's last up-block (null: 256 at 32x32, else 64)
    d_width: Optional[int] = None  # channels of D's first block (null: 128 at 32x32, else 64)

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("g_width", "d_width"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise GancliError(f"model.{key}={value} must be a whole number >= 1, or null for SNGAN's width")


TRAITS = Traits(convolutional=True, sizes=tuple(LAYOUTS))


def widths(cfg: Config, side: int) -> tuple[int, int]:
    paper_g, paper_d = PAPER_WIDTHS.get(side, DEFAULT_WIDTHS)
    return cfg.g_width or paper_g, cfg.d_width or paper_d


def _init(module: nn.Module) -> None:
    # SNGAN's initialisation: Xavier-uniform weights (gain sqrt 2 in the residual branches, set
    # there), zero biases
    if isinstance(module, (nn.Conv2d, nn.Linear)):
        if getattr(module, "residual", False):
            nn.init.xavier_uniform_(module.weight, math.sqrt(2))
        else:
            nn.init.xavier_uniform_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def _conv(n_in: int, n_out: int, k: int, residual: bool = True) -> nn.Conv2d:
    conv = nn.Conv2d(n_in, n_out, k, padding=k // 2)
    conv.residual = residual  # read by _init
    return conv


class UpBlock(nn.Module):
    """(B, n_in, S, S) -> (B, n_out, 2S, 2S): BN, ReLU, upsample, conv3, BN, ReLU, conv3, plus an
    upsampled 1x1-conv shortcut."""

    def __init__(self, n_in: int, n_out: int, n_classes: int):
        super().__init__()
        self.bn1, self.bn2 = batch_norm(n_in, n_classes), batch_norm(n_out, n_classes)
        self.conv1, self.conv2 = _conv(n_in, n_out, 3), _conv(n_out, n_out, 3)
        self.shortcut = _conv(n_in, n_out, 1, residual=False)

    def _bn(self, bn: nn.Module, x: torch.Tensor, c: Optional[torch.Tensor]) -> torch.Tensor:
        return bn(x, c) if getattr(bn, "takes_class", False) else bn(x)

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = F.interpolate(F.relu(self._bn(self.bn1, x, c)), scale_factor=2, mode="nearest")
        h = self.conv2(F.relu(self._bn(self.bn2, self.conv1(h), c)))
        return h + self.shortcut(F.interpolate(x, scale_factor=2, mode="nearest"))


class DownBlock(nn.Module):
    """(B, n_in, S, S) -> (B, n_out, S/2, S/2) (or S, S without `down`): [ReLU,] conv3, ReLU, conv3,
    average pool, plus a 1x1-conv shortcut where the shape changes. The first block of D has no
    leading ReLU and pools its shortcut before the conv, as SNGAN's does."""

    def __init__(self, n_in: int, n_out: int, down: bool, first: bool):
        super().__init__()
        self.down, self.first = down, first
        self.conv1, self.conv2 = _conv(n_in, n_out, 3), _conv(n_out, n_out, 3)
        self.shortcut = _conv(n_in, n_out, 1, residual=False) if (down or n_in != n_out) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.relu(self.conv1(x if self.first else F.relu(x))))
        if self.down:
            h = F.avg_pool2d(h, 2)
        s = x
        if self.first:
            s = self.shortcut(F.avg_pool2d(s, 2) if self.down else s)
        elif self.shortcut is not None:
            s = self.shortcut(s)
            s = F.avg_pool2d(s, 2) if self.down else s
        return h + s


class Generator(nn.Module):
    def __init__(self, cfg: Config, shape: tuple, n_classes: int = 0):
        super().__init__()
        base, g_mult, _ = LAYOUTS[shape[1]]
        width = widths(cfg, shape[1])[0]
        channels = [m * width for m in g_mult]
        self.z_dim, self.n_classes = cfg.z_dim, n_classes
        self.base, self.c0 = base, channels[0]
        self.dense = nn.Linear(cfg.z_dim, base * base * channels[0])  # (B, z) -> (B, c0 * base * base)
        self.blocks = nn.ModuleList(UpBlock(a, b, n_classes) for a, b in zip(channels[:-1], channels[1:]))
        self.out = nn.Sequential(nn.BatchNorm2d(channels[-1]), nn.ReLU(), _conv(channels[-1], shape[0], 3, False),
                                 nn.Tanh())  # (B, C, H, W) in [-1, 1]
        self.apply(_init)

    def forward(self, z: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = self.dense(z).view(z.shape[0], self.c0, self.base, self.base)
        for block in self.blocks:
            h = block(h, c)
        return self.out(h)


class Discriminator(nn.Module):
    def __init__(self, cfg: Config, shape: tuple, n_classes: int = 0):
        super().__init__()
        _, _, d_layout = LAYOUTS[shape[1]]
        width = widths(cfg, shape[1])[1]
        blocks, n_in = [], shape[0]
        for i, (mult, down) in enumerate(d_layout):
            blocks.append(DownBlock(n_in, mult * width, down, first=i == 0))
            n_in = mult * width
        self.blocks = nn.Sequential(*blocks)
        self.out = nn.Linear(n_in, 1)
        self.project = Projection(n_classes, n_in) if n_classes else None
        self.apply(_init)

    def forward(self, x: torch.Tensor, c: Optional[torch.Tensor] = None) -> torch.Tensor:
        h = F.relu(self.blocks(x)).sum((2, 3))  # (B, channels): global sum pooling
        logits = self.out(h).squeeze(1)  # (B,)
        return logits if self.project is None else logits + self.project(h, c)


def build(cfg: Config, shape: tuple, n_classes: int = 0) -> tuple[nn.Module, nn.Module]:
    return Generator(cfg, shape, n_classes), Discriminator(cfg, shape, n_classes)
