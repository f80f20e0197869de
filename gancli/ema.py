"""An exponential moving average of G's weights (G_ema): grids, evaluation and sampling use it.

The average follows StyleGAN's convention: after each G update it moves towards G with weight
1 - beta, beta = 0.5 ** (images per update / half-life in images), so the old average's share
halves every `half_life_kimg` thousand images. Batch-norm statistics are copied, not averaged.

torch.optim.swa_utils.AveragedModel does the same eagerly, but its update branches on a
counter read on the host (`n_averaged == 0`), which a captured CUDA graph would freeze, and its
decay is fixed, so it has no ramp-up: hence the few lines here.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_beta(half_life_kimg: float, rampup: float, batch_images: int, images_seen: int) -> float:
    """The share of the old average kept by the next update. With `rampup` > 0 the half-life is
    at most rampup x images seen so far, so early averages forget the random start quickly."""
    half_life = half_life_kimg * 1000
    if rampup > 0:
        half_life = min(half_life, images_seen * rampup)
    return 0.5 ** (batch_images / max(half_life, 1e-8))


class EMA:
    """G_ema, a copy of G kept in eval mode, and its update. The update reads its weight from a
    device tensor (`set_beta` writes it before each step), so that a CUDA graph which captured
    the update replays it with each step's own beta."""

    def __init__(self, G: nn.Module):
        self.G = copy.deepcopy(G).eval().requires_grad_(False)
        self.weight = torch.zeros((), device=next(G.parameters()).device)  # 1 - beta
        self._params = list(zip(self.G.parameters(), G.parameters()))
        self._buffers = [(a, b) for a, b in zip(self.G.buffers(), G.buffers())]

    def set_beta(self, beta: float) -> None:
        self.weight.fill_(1.0 - beta)  # a kernel with a scalar argument: no host sync

    @torch.no_grad()
    def update(self) -> None:
        """G_ema <- beta G_ema + (1 - beta) G, one lerp per tensor; buffers copied."""
        for avg, param in self._params:
            avg.lerp_(param, self.weight)
        for avg, buf in self._buffers:
            avg.copy_(buf)
