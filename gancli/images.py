"""Writing what G makes: image grids, single images and scatter plots of 2-D points.

PNGs are written with Pillow directly; torchvision's helpers would import all of torchvision,
which takes seconds at every start."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from gancli.files import atomic

PADDING = 2  # pixels of black between the images of a grid, and around them


def quantise(images: torch.Tensor) -> torch.Tensor:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, C, H, W) on the CPU, rounded to the nearest level."""
    x = images.detach().float().cpu().clamp(-1, 1).add(1).mul(127.5).add(0.5)  # [0.5, 255.5]: truncation rounds
    return x.to(torch.uint8)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (N, H, W, C), rounded to the nearest level."""
    return quantise(images).permute(0, 2, 3, 1).numpy()


def grid(images: torch.Tensor, nrow: int) -> np.ndarray:
    """float (N, C, H, W) in [-1, 1] -> uint8 (rows * (H + PADDING) + PADDING, nrow * (W + PADDING) + PADDING, C)."""
    tiles = to_uint8(images)
    n, h, w, c = tiles.shape
    rows = math.ceil(n / nrow)
    out = np.zeros((rows * (h + PADDING) + PADDING, nrow * (w + PADDING) + PADDING, c), np.uint8)
    for i, tile in enumerate(tiles):
        top, left = PADDING + (i // nrow) * (h + PADDING), PADDING + (i % nrow) * (w + PADDING)
        out[top : top + h, left : left + w] = tile
    return out


def _write_png(pixels: np.ndarray, path: Path) -> None:
    """uint8 (H, W, 1 or 3) -> a grey or RGB PNG at `path` (a temporary name of `atomic`, say)."""
    from PIL import Image

    Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels).save(path, format="png")


def save_grid(images: torch.Tensor, path: Path, nrow: Optional[int] = None) -> None:
    """float (N, C, H, W) in [-1, 1] -> one PNG grid, about square."""
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    with atomic(path) as tmp:
        _write_png(grid(images, nrow), tmp)


def save_singles(images: torch.Tensor, folder: Path, start: int = 0) -> None:
    """float (N, C, H, W) in [-1, 1] -> 000000.png, 000001.png, ... from `start`."""
    for i, pixels in enumerate(to_uint8(images)):
        with atomic(folder / f"{start + i:06d}.png") as tmp:  # whole or not at all, like every file
            _write_png(pixels, tmp)


def save_scatter(points: torch.Tensor, path: Path, real: Optional[torch.Tensor] = None, title: str = "") -> None:
    """float (N, 2) generated points, over (M, 2) real ones if given -> a scatter plot PNG."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 5), dpi=100)
    if real is not None:
        r = real.detach().float().cpu().numpy()
        ax.scatter(r[:, 0], r[:, 1], s=4, c="#bbbbbb", label="real", linewidths=0)
    p = points.detach().float().cpu().numpy()
    ax.scatter(p[:, 0], p[:, 1], s=4, c="#d62728", label="generated", linewidths=0)
    ax.set_aspect("equal")
    ax.legend(loc="upper right", fontsize=8)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    with atomic(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
