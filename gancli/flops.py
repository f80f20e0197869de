"""FLOPs: a device's peak rate for a precision, and what one training step computes."""

from __future__ import annotations

import functools
import time
from typing import Callable, Optional

import torch
from torch.utils.flop_counter import FlopCounterMode

from gancli import runtime
from gancli.augment import Augment
from gancli.config import Precision, TrainApp
from gancli.data import Batch, class_names
from gancli.losses import d_objective, g_objective
from gancli.models import build_models

# Dense peak rates in TFLOP/s from NVIDIA's data sheets (H100/H200 SXM and PCIe, A100 SXM):
# https://www.nvidia.com/en-us/data-center/h100/ , /h200/ , /a100/ (without sparsity).
_PEAK_TFLOPS = {
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.0, "fp16": 756.0, "tf32": 378.0, "fp32": 51.2},
    "H100": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
}


@functools.lru_cache(maxsize=None)
def peak_flops(device: torch.device, precision: Precision) -> tuple[float, str]:
    """(peak FLOP/s for this device and precision, where the figure comes from)."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, rates in _PEAK_TFLOPS.items():
            if all(part in name for part in key.split()):
                return rates[precision.value] * 1e12, f"{key} data sheet"
    return _measured_matmul_flops(device, precision), "measured matmul"


def _measured_matmul_flops(device: torch.device, precision: Precision, n: int = 1024) -> float:
    """FLOP/s of a square matmul in the precision's compute dtype on this device."""
    dtype = runtime.compute_dtype(precision)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    for _ in range(3):
        a @ b
    runtime.synchronize(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.3:
        a @ b
        reps += 1
    runtime.synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def step_flops(cfg: TrainApp, shape: tuple, n_classes: Optional[int] = None) -> int:
    """FLOPs of one training step: the forward and backward passes of its D and G updates, with
    their penalties and augmentation, counted once on weightless meta tensors, so nothing is
    computed and no state changes. FlopCounterMode counts matrix products and convolutions,
    so the optimizers and G_ema's update (elementwise) count nothing. With lazy regularisation
    the penalties count on 1 in loss.reg_every D updates, the path-length penalty on 1 in
    loss.pl_every G updates. `n_classes`: the loaded data's (None:
    named from the config, which lists a folder's subfolders)."""
    with torch.device("meta"):
        if n_classes is None:
            n_classes = len(class_names(cfg.data) or [])
        G, D = build_models(cfg.model, shape, n_classes)
        augment = Augment(cfg.augment) if cfg.augment.active else None
        c = torch.zeros(cfg.train.batch_size, dtype=torch.long) if G.n_classes else None
        batch = Batch(torch.empty(cfg.train.batch_size, *shape), c)

    def flops(run: Callable[[], torch.Tensor]) -> int:
        with FlopCounterMode(display=False) as counter:
            run().backward()
        return counter.get_total_flops()

    d_plain = flops(lambda: d_objective(cfg.loss, G, D, batch, augment, reg=False)[0])
    d_reg = flops(lambda: d_objective(cfg.loss, G, D, batch, augment, reg=True)[0]) if cfg.loss.penalised else d_plain
    D.requires_grad_(False)
    g = flops(lambda: g_objective(cfg.loss, G, D, batch, augment)[0])
    g_reg = g
    if cfg.loss.pl_weight > 0:
        target = torch.zeros((), device="meta")
        g_reg = flops(lambda: g_objective(cfg.loss, G, D, batch, augment, reg=True, pl_target=target)[0])
    return round(cfg.train.d_steps * (d_plain + (d_reg - d_plain) / cfg.loss.reg_every)
                 + g + (g_reg - g) / cfg.loss.pl_every)
