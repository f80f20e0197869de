"""Every device and precision decision: device choice, the precision a run computes in and its
dtype, autocast, gradient scalers, backend settings, seeding, RNG state, synchronisation and
memory readings. How a step runs fast is accel.py; peak rates and FLOP counts are flops.py;
the data-parallel process group is distributed.py."""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import random
import resource
import sys
from typing import Optional

import torch

from gancli.config import DeviceConfig, DeviceType, Precision
from gancli.distributed import launched, local_rank
from gancli.errors import GancliError

log = logging.getLogger(__name__)

_COMPUTE_DTYPES = {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}  # fp32 and tf32: float32


def compute_dtype(precision: Precision) -> torch.dtype:
    """The dtype matrix products and convolutions compute in under this precision."""
    return _COMPUTE_DTYPES.get(precision, torch.float32)


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(cfg: DeviceConfig) -> torch.device:
    """The torch.device a config names; an absent device is an error, never a fallback."""
    if cfg.type is DeviceType.auto:
        if cfg.index is not None:
            raise GancliError("device.index needs device=cuda; device=auto picks the current GPU")
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank() if launched() else torch.cuda.current_device())
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
        index = cfg.index
        if index is None:  # under torchrun, each process takes the GPU of its local rank
            index = local_rank() if launched() else torch.cuda.current_device()
            if index >= count:
                raise GancliError(f"torchrun started more processes on this node than the {count} visible CUDA "
                                  f"GPU(s); use --nproc-per-node={count}")
        if index >= count:
            raise GancliError(f"device.index={index} but only {count} CUDA GPU(s) are visible (0..{count - 1})")
        return torch.device("cuda", index)
    # mps
    if cfg.index is not None:
        raise GancliError("device.index applies to device=cuda only")
    if not _mps_available():
        raise GancliError("device=mps but no Apple GPU (MPS) is available here; use device=cpu or device=auto")
    return torch.device("mps")


def resolve_precision(device: torch.device, precision: Precision) -> tuple[Precision, str]:
    """The precision a run uses, and why: `auto` is bf16 autocast where the device computes bf16
    natively and fast, else fp32; any other precision is itself."""
    if precision is not Precision.auto:
        return precision, "asked for"
    if device.type == "cuda":
        try:
            major, minor = torch.cuda.get_device_capability(device)
        except (RuntimeError, AssertionError):  # no GPU to ask (a plan made on a machine without one)
            return Precision.fp32, "no CUDA GPU here to ask for its compute capability"
        if (major, minor) >= (8, 0):
            return Precision.bf16, f"CUDA compute capability {major}.{minor} has bf16 tensor cores"
        return Precision.fp32, f"CUDA compute capability {major}.{minor} is older than 8.0 (no bf16 tensor cores)"
    if device.type == "cpu":
        feature = cpu_bf16_feature()
        if feature:
            return Precision.bf16, f"this CPU computes bf16 natively ({feature})"
        return Precision.fp32, "this CPU has neither AMX nor AVX512-BF16, so bf16 would be emulated"
    return Precision.fp32, f"bf16 on {device.type} has not been measured faster than fp32"


@functools.lru_cache(maxsize=None)
def cpu_bf16_feature() -> Optional[str]:
    """The CPU feature that computes bf16 natively, AMX or AVX512-BF16, or None. torch's own
    probes (torch.cpu, as oneDNN sees the CPU) where it has them, else Linux's CPU flags."""
    probes = (("AMX", "_is_amx_tile_supported", "amx_bf16"),
              ("AVX512-BF16", "_is_avx512_bf16_supported", "avx512_bf16"))
    flags: Optional[set[str]] = None
    for name, probe, flag in probes:
        fn = getattr(torch.cpu, probe, None)
        if fn is not None:
            if fn():
                return name
            continue
        if flags is None:
            try:
                text = open("/proc/cpuinfo", encoding="utf-8").read()
            except OSError:
                text = ""
            flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":", 1)[1].split()}
        if flag in flags:
            return name
    return None


def check_precision(device: torch.device, precision: Precision) -> None:
    """Refuse a device/precision pair that would not run as asked."""
    if precision is Precision.fp16 and device.type == "cpu":
        raise GancliError("precision=fp16 needs a CUDA or MPS device; on the CPU use precision=bf16 or fp32")
    if precision is Precision.tf32:
        if device.type != "cuda":
            raise GancliError("precision=tf32 needs a CUDA GPU (TF32 is an NVIDIA tensor-core format); "
                              f"on {device.type} use fp32 or bf16")
        if torch.cuda.get_device_capability(device) < (8, 0):
            raise GancliError(f"precision=tf32 needs an Ampere or newer GPU, not {torch.cuda.get_device_name(device)}; "
                              "use fp32")
    if precision is Precision.bf16:
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise GancliError(f"precision=bf16 is not supported by {torch.cuda.get_device_name(device)}; "
                              "use fp16 or fp32")
        if device.type == "mps" and not _mps_supports_bf16():
            raise GancliError("precision=bf16 on MPS needs macOS 14 or newer; use fp16 or fp32")


def _mps_supports_bf16() -> bool:
    check = getattr(torch.backends.mps, "is_macos_or_newer", None)
    return bool(check and check(14, 0))


def configure_backends(device: torch.device, precision: Precision) -> None:
    """fp32 is strict (no TF32 in matmuls or convolutions); tf32 turns TF32 on for both. On the
    CPU, one thread per physical core unless OMP_NUM_THREADS says otherwise: a second thread on
    a core's sibling only competes for the same units."""
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(physical_cores())
    if device.type == "cuda":
        tf32 = precision is Precision.tf32
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        torch.backends.cudnn.benchmark = True  # shapes never change within a run


def physical_cores() -> int:
    """Physical cores among the CPUs this process may run on (Linux's topology files; elsewhere,
    or when they cannot be read, the CPU count)."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1
    cores = set()
    for cpu in cpus:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology"
        try:
            with open(f"{topology}/physical_package_id") as package, open(f"{topology}/core_id") as core:
                cores.add((package.read().strip(), core.read().strip()))
        except OSError:
            return len(cpus)
    return max(1, len(cores))


def autocast(device: torch.device, precision: Precision, cache: bool = True) -> contextlib.AbstractContextManager:
    """The forward-pass context for this precision (a no-op for fp32 and tf32). Inside a CUDA
    graph capture the cast-weight cache must be off (`cache=False`)."""
    if precision in (Precision.fp32, Precision.tf32):
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=compute_dtype(precision), cache_enabled=cache)


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
    if device.type == "cpu":
        threads = torch.get_num_threads()
        return f"cpu ({threads} thread{'s' if threads > 1 else ''})"
    return str(device)
