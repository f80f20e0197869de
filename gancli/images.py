"""Writing what G makes: image grids, single images and scatter plots of 2-D points."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import torch
from torchvision.utils import make_grid, save_image

from gancli.files import atomic, write_error


def save_grid(images: torch.Tensor, path: Path, nrow: Optional[int] = None) -> None:
    """float (N, C, H, W) in [-1, 1] -> one PNG grid, about square."""
    nrow = nrow or math.ceil(math.sqrt(len(images)))
    grid = make_grid(images.detach().float().cpu(), nrow=nrow, padding=2, normalize=True, value_range=(-1, 1))
    with atomic(path) as tmp:
        save_image(grid, tmp, format="png")


def save_singles(images: torch.Tensor, folder: Path, start: int = 0) -> None:
    """float (N, C, H, W) in [-1, 1] -> 000000.png, 000001.png, ... from `start`."""
    for i, image in enumerate(images.detach().float().cpu()):
        path = folder / f"{start + i:06d}.png"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            save_image(image, path, normalize=True, value_range=(-1, 1))
        except OSError as exc:
            raise write_error(path, exc) from None


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
