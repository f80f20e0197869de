"""The model families, and the one place where a (G, D) pair is built and G's noise is drawn.

A family is one module with a `Config` dataclass (its schema, whose `name` is the family's
name), its `TRAITS` and `build(cfg, shape, n_classes) -> (G, D)`. G maps z of shape
(B, G.z_dim) and class labels c (B,) or None to samples of shape (B, *shape); D maps samples
and c to logits of shape (B,). n_classes = 0 builds an unconditional pair, which ignores c.
Networks are rebuilt from the family's name and config, never unpickled.
"""

from __future__ import annotations

import math
from types import ModuleType
from typing import Any, Optional

import torch
from torch import nn
from torch.nn.utils import parametrizations

from gancli.errors import GancliError
from gancli.models import classic, dcgan, mlp, residual, resnet, stylegan2
from gancli.models.base import ConditionalBatchNorm, ModelConfig, Packed, SpectralNorm, Traits, check_shape

FAMILIES: dict[str, ModuleType] = {m.Config.name: m for m in (classic, dcgan, mlp, resnet, residual, stylegan2)}
# earlier names of a family, so that checkpoints written under them still load
RENAMED = {"seed": "classic"}

_NORMALISED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)


def family(name: str) -> ModuleType:
    """The family module called `name` (or by an earlier name)."""
    name = RENAMED.get(name, name)
    if name not in FAMILIES:
        raise GancliError(f"unknown model '{name}'; known: {', '.join(FAMILIES)}")
    return FAMILIES[name]


def traits(cfg: ModelConfig) -> Traits:
    return family(cfg.name).TRAITS


def build_models(cfg: Any, shape: tuple, n_classes: int = 0) -> tuple[nn.Module, nn.Module]:
    """(G, D) for a model config and a data shape: (C, H, W) images or (2,) points; conditional on
    n_classes classes when the config says so."""
    fam = family(cfg.name)
    shape = tuple(shape)
    check_shape(cfg.name, fam.TRAITS, shape)
    if cfg.spectral_norm is not SpectralNorm.none and not fam.TRAITS.spectral_norm:
        raise GancliError(f"model={cfg.name} has equalised learning rates, which spectral norm would undo; "
                          "set model.spectral_norm=none")
    if cfg.conditional and n_classes < 1:
        raise GancliError("model.conditional=true needs the number of classes of a labelled data set")
    n_classes = n_classes if cfg.conditional else 0
    G, D = fam.build(cfg, shape, n_classes)
    if cfg.pack > 1:  # D for m samples side by side: m times the channels (images) or features (points)
        _, D = fam.build(cfg, (shape[0] * cfg.pack, *shape[1:]), n_classes)
        D = Packed(D, cfg.pack)
    if cfg.spectral_norm in (SpectralNorm.g, SpectralNorm.both):
        spectral_norm(G)
    if cfg.spectral_norm in (SpectralNorm.d, SpectralNorm.both):
        spectral_norm(D)
    return G, D


def spectral_norm(net: nn.Module) -> nn.Module:
    """Divide the weight of every conv and linear layer of `net` by its largest singular value,
    estimated by one power iteration per training forward (Miyato et al. 2018). Conditional batch
    norm's maps are left alone: they start at zero, which has no direction to normalise."""
    skip = {id(m) for cbn in net.modules() if isinstance(cbn, ConditionalBatchNorm) for m in cbn.modules()}
    for module in list(net.modules()):
        if isinstance(module, _NORMALISED_LAYERS) and id(module) not in skip:
            parametrizations.spectral_norm(module)  # ConvTranspose2d: along its output dim, as torch chooses
    return net


def latents(G: nn.Module, n: int, device: torch.device,
            gen: Optional[torch.Generator] = None) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(z (n, z_dim), c (n,) class labels or None) for G or a DistributedDataParallel wrapper of
    it; a conditional G's classes are drawn uniformly. gen=None draws on the device, which CUDA
    graphs can capture; a CPU generator gives the same noise on every device."""
    G = getattr(G, "module", G)  # DistributedDataParallel keeps the network as .module
    n_classes = getattr(G, "n_classes", 0)
    if gen is None:
        z = torch.randn(n, G.z_dim, device=device)
        c = torch.randint(n_classes, (n,), device=device) if n_classes else None
    else:
        z = torch.randn(n, G.z_dim, generator=gen).to(device)
        c = torch.randint(n_classes, (n,), generator=gen).to(device) if n_classes else None
    return z, c


def truncate_noise(z: torch.Tensor, psi: float) -> torch.Tensor:
    """The truncation trick for G's noise (Brock et al. 2019), for the families without a W space:
    each N(0, 1) value is sent through its quantile onto the normal truncated to [-t, t], t =
    psi / (1 - psi) standard deviations (psi 0.5: 1; psi 0.7: 2.33), so that it keeps its rank
    and a sample changes smoothly with psi. psi = 1 returns z, the raw sample; psi = 0 gives
    zeros, G's sample at the centre of its noise. Built from erf and `erfinv` below, which export
    to ONNX (torch's ndtri and erfinv do not)."""
    if psi >= 1:
        return z
    if psi <= 0:
        return torch.zeros_like(z)
    t = psi / (1 - psi)
    edge = math.erf(t / math.sqrt(2))  # the normal's mass within [-t, t]
    return math.sqrt(2) * erfinv(torch.erf(z.float() / math.sqrt(2)) * edge).to(z.dtype)


def erfinv(x: torch.Tensor) -> torch.Tensor:
    """The inverse error function on (-1, 1) in float32 from basic operations: Giles's
    polynomial approximation (2012, "Approximating the erfinv function"; relative error below
    4e-7), a branch for the centre and one for the tails."""
    w = -torch.log((1 - x) * (1 + x))
    centre, tail = w - 2.5, torch.sqrt(w.clamp(min=5.0)) - 3
    p_centre = torch.full_like(x, 2.81022636e-08)
    for coef in (3.43273939e-07, -3.5233877e-06, -4.39150654e-06, 0.00021858087, -0.00125372503,
                 -0.00417768164, 0.246640727, 1.50140941):
        p_centre = coef + p_centre * centre
    p_tail = torch.full_like(x, -0.000200214257)
    for coef in (0.000100950558, 0.00134934322, -0.00367342844, 0.00573950773, -0.0076224613,
                 0.00943887047, 1.00167406, 2.83297682):
        p_tail = coef + p_tail * tail
    return torch.where(w < 5, p_centre, p_tail) * x


def class_rows(n_classes: int, n: int, max_rows: int = 10) -> tuple[torch.Tensor, int]:
    """Labels for a sample grid with one class per row: (rows * cols,) labels and cols, for at
    most n images and the first min(n_classes, max_rows, n) classes."""
    rows = max(1, min(n_classes, max_rows, n))
    cols = max(1, n // rows)
    return torch.arange(rows).repeat_interleave(cols), cols
