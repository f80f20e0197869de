"""gancli: train generative adversarial networks fast on the hardware you have.

    import gancli
    G = gancli.load("outputs/<run>")          # a run folder or a checkpoint file
    images = G.sample(16, psi=0.7, seed=0)    # uint8 (16, C, H, W)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing gancli stays light: torch is imported by load()
    from pathlib import Path

    import torch

    from gancli.generator import Generator

__version__ = "0.1.0"


def load(source: "str | Path", device: "str | torch.device" = "auto", use_ema: bool = True) -> "Generator":
    """The trained generator of a run folder or checkpoint file, ready to sample from
    (gancli.generator.Generator): `G.sample(n, classes=None, psi=1.0, seed=0)` gives uint8
    images (n, C, H, W); `G.net` is the torch.nn.Module. `device`: auto, cpu, cuda, cuda:1, mps;
    `use_ema`: G's moving average where the run kept one."""
    from gancli.generator import load as load_generator

    return load_generator(source, device, use_ema)
