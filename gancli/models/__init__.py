"""Model registry: a model family is rebuilt from its name and config, never unpickled.

Each builder takes (model config, data shape) and returns (G, D): G maps z of shape
(B, G.z_dim) to samples of shape (B, *shape); D maps samples to logits of shape (B,).
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from gancli.errors import GancliError
from gancli.models import dcgan, mlp, seed

Builder = Callable[[Any, tuple], "tuple[nn.Module, nn.Module]"]

MODELS: dict[str, Builder] = {"seed": seed.build, "dcgan": dcgan.build, "mlp": mlp.build}


def build_models(cfg: Any, shape: tuple) -> tuple[nn.Module, nn.Module]:
    """(G, D) for a model config and a data shape: (C, H, W) images or (2,) points."""
    if cfg.name not in MODELS:
        raise GancliError(f"unknown model '{cfg.name}'; known: {', '.join(MODELS)}")
    return MODELS[cfg.name](cfg, tuple(shape))
