"""Every device and precision decision: device choice, autocast, gradient scalers, seeding,
RNG state, synchronisation and memory readings."""

from __future__ import annotations

import contextlib
import random
import resource
import sys

import torch

from gancli.config import DeviceConfig, DeviceType, Precision
from gancli.errors import GancliError

_AUTOCAST_DTYPES = {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(cfg: DeviceConfig) -> torch.device:
    """The torch.device a config names; an absent device is an error, never a fallback."""
    if cfg.type is DeviceType.auto:
        if cfg.index is not None:
            raise GancliError("device.index needs device=cuda; device=auto picks the current GPU")
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if cfg.type is DeviceType.cpu:
        if cfg.index is not None:
            raise GancliError("device.index applies to device=cuda only")
        return torch.device("cpu")
    if cfg.type is DeviceType.cuda:
        if not torch.cuda.is_available():
            raise GancliError(
                f"device=cuda but torch {torch.__version__} sees no CUDA GPU here; "
                "use device=cpu or device=auto"
            )
        count = torch.cuda.device_count()
        index = torch.cuda.current_device() if cfg.index is None else cfg.index
        if index >= count:
            raise GancliError(f"device.index={index} but only {count} CUDA GPU(s) are visible (0..{count - 1})")
        return torch.device("cuda", index)
    # mps
    if cfg.index is not None:
        raise GancliError("device.index applies to device=cuda only")
    if not _mps_available():
        raise GancliError("device=mps but no Apple GPU (MPS) is available here; use device=cpu or device=auto")
    return torch.device("mps")


def check_precision(device: torch.device, precision: Precision) -> None:
    """Refuse a device/precision pair that would not run as asked."""
    if precision is Precision.fp16 and device.type == "cpu":
        raise GancliError("precision=fp16 needs a CUDA or MPS device; on the CPU use precision=bf16 or fp32")
    if precision is Precision.bf16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise GancliError(f"precision=bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 or fp32")


def configure_precision(device: torch.device, precision: Precision) -> None:
    """fp32 means strict fp32: no TF32 in matmuls or convolutions."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """The forward-pass context for this precision (a no-op for fp32)."""
    if precision is Precision.fp32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision])


def grad_scaler(device: torch.device, precision: Precision) -> torch.amp.GradScaler:
    """A gradient scaler that does work only for fp16 (one per network)."""
    return torch.amp.GradScaler(device.type, enabled=precision is Precision.fp16)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)  # seeds every device


def rng_state(device: torch.device) -> dict:
    """The RNG state that drives training noise, as plain tensors."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    elif device.type == "mps":
        state["mps"] = torch.mps.get_rng_state()
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
    elif device.type == "mps" and "mps" in state:
        torch.mps.set_rng_state(state["mps"])


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def peak_memory_mb(device: torch.device) -> float:
    """Peak device memory (CUDA, MPS) or peak process RSS (CPU), in MiB."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def describe(device: torch.device) -> str:
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
