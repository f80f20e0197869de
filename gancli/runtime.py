"""Every device and precision decision: device choice, autocast, gradient scalers, seeding,
RNG state, synchronisation, memory readings, and the data-parallel process group."""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import logging
import os
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torch import nn

from gancli.config import AccelConfig, CompileMode, DeviceConfig, DeviceType, Precision
from gancli.errors import GancliError

log = logging.getLogger(__name__)

_AUTOCAST_DTYPES = {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}


def _mps_available() -> bool:
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def resolve_device(cfg: DeviceConfig) -> torch.device:
    """The torch.device a config names; an absent device is an error, never a fallback."""
    if cfg.type is DeviceType.auto:
        if cfg.index is not None:
            raise GancliError("device.index needs device=cuda; device=auto picks the current GPU")
        if torch.cuda.is_available():
            return torch.device("cuda", _local_rank() if launched() else torch.cuda.current_device())
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
            index = _local_rank() if launched() else torch.cuda.current_device()
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
    probes = (("AMX", "_is_amx_tile_supported", "amx_bf16"), ("AVX512-BF16", "_is_avx512_bf16_supported", "avx512_bf16"))
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
            raise GancliError(f"precision=tf32 needs a CUDA GPU (TF32 is an NVIDIA tensor-core format); on {device.type} use fp32 or bf16")
        if torch.cuda.get_device_capability(device) < (8, 0):
            raise GancliError(f"precision=tf32 needs an Ampere or newer GPU, not {torch.cuda.get_device_name(device)}; use fp32")
    if precision is Precision.bf16:
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise GancliError(f"precision=bf16 is not supported by {torch.cuda.get_device_name(device)}; use fp16 or fp32")
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
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST_DTYPES[precision], cache_enabled=cache)


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


# ---- the fast path: what applies on this device, and CUDA graph capture ----


@dataclass
class AccelPlan:
    """What a run really does for speed, after the device and precision have had their say."""

    name: str
    dataloader: bool
    host_syncs: bool
    fused_optimizer: bool
    channels_last: bool
    cuda_graphs: bool
    compile: Optional[str]  # a torch.compile mode, or None
    warmup_steps: int
    precision: Precision  # what the step computes in: `auto` made concrete (resolve_precision)
    precision_reason: str  # why: "asked for", or what `auto` saw in the device
    notes: list[str] = field(default_factory=list)  # one line per piece that could not apply

    def used(self) -> dict:
        """The path taken, for summary.json (which records the precision on its own)."""
        return {k: v for k, v in self.__dict__.items() if k not in ("notes", "precision", "precision_reason")} | {
            "notes": list(self.notes)}


def plan_accel(cfg: AccelConfig, device: torch.device, precision: Precision, has_convs: bool,
               data_parallel: bool = False, double_backward: bool = False,
               precision_reason: str = "asked for") -> AccelPlan:
    """Turn the accel config into the plan this device can run, noting every piece left out.
    `double_backward`: D's update differentiates a gradient (a penalty), which CUDA graphs
    capture but torch.compile cannot differentiate."""
    notes = []
    compile_mode = None if cfg.compile is CompileMode.off else cfg.compile.value
    if compile_mode and double_backward:
        compile_mode = None
        notes.append("compile off: torch.compile cannot differentiate D's gradient a second time, which the "
                     "loss's gradient penalty needs")
    graphs = cfg.cuda_graphs
    if graphs and device.type != "cuda":
        graphs = False
        notes.append(f"cuda_graphs off: the device is {device.type}, not CUDA")
    elif graphs and precision is Precision.fp16:
        graphs = False
        notes.append("cuda_graphs off: fp16 gradient scaling checks for inf on the host, which a graph cannot do")
    elif graphs and cfg.host_syncs:
        graphs = False
        notes.append("cuda_graphs off: per-step host syncs cannot run inside a graph")
    elif graphs and compile_mode and compile_mode != CompileMode.default.value:
        graphs = False
        notes.append(f"cuda_graphs off: torch.compile mode {compile_mode} makes CUDA graphs itself")
    elif graphs and data_parallel:
        graphs = False
        notes.append("cuda_graphs off: DistributedDataParallel's gradient all-reduce runs outside a graph")
    channels_last = cfg.channels_last
    if channels_last is None:  # where NHWC measured faster (docs/benchmarks.md): on an H200 bf16 convolutions
        # up to 1.9x, fp32 ones no faster; on a 2-core CPU (oneDNN) DCGAN-64 steps 10% (bf16) to 19% (fp32)
        channels_last = has_convs and (device.type == "cpu" or (
            device.type == "cuda" and precision in (Precision.bf16, Precision.fp16)))
    elif channels_last and not has_convs:
        channels_last = False
        notes.append("channels_last off: the model has no convolutions")
    return AccelPlan(
        name=cfg.name.value,
        dataloader=cfg.dataloader,
        host_syncs=cfg.host_syncs,
        fused_optimizer=cfg.fused_optimizer,
        channels_last=channels_last,
        cuda_graphs=graphs,
        compile=compile_mode,
        warmup_steps=cfg.warmup_steps,
        precision=precision,
        precision_reason=precision_reason,
        notes=notes,
    )


class GraphedStep:
    """Runs `fn` eagerly for `warmup` calls (on a side stream, as capture requires), then
    captures it once as a CUDA graph and replays the graph on every later call. A capture that
    fails (an op that a graph cannot hold) is said once, in `notes` and the log, and from then
    on `fn` runs eagerly."""

    def __init__(self, fn: Callable[[], None], warmup: int, pool: Optional[tuple] = None, name: str = "the step",
                 notes: Optional[list[str]] = None):
        self.fn, self.warmup, self.pool, self.name, self.notes = fn, warmup, pool, name, notes
        self.calls = 0
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.eager = False  # its capture failed

    @property
    def ready(self) -> bool:
        """Past warm-up and capture: a call now is a training call."""
        return self.graph is not None or self.eager

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            return
        if self.eager:
            self.fn()
            return
        if self.calls < self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.fn()
            torch.cuda.current_stream().wait_stream(side)
            self.calls += 1
            return
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                self.fn()  # recorded, not run
        except Exception as exc:  # noqa: BLE001 (fn itself runs again below, so its own errors still surface)
            torch.cuda.synchronize()
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            note = f"cuda_graphs off for {self.name}: its capture failed ({type(exc).__name__}: {reason}); it runs eagerly"
            log.warning(note)
            if self.notes is not None:
                self.notes.append(note)
            self.eager = True
            self.fn()  # this call's update
            return
        torch.cuda.synchronize()
        self.graph = graph
        graph.replay()  # this call's update


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
    dtype = {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16}.get(precision, torch.float32)
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device, dtype)
    b = torch.randn(n, n, generator=gen).to(device, dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 0.3:
        a @ b
        reps += 1
    synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


# -- data parallel: torchrun starts one process per device; they meet in one process group --


def launched() -> bool:
    """Whether torchrun (or another launcher that sets its variables) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device_type: DeviceType) -> None:
    """Join the process group torchrun describes: NCCL for CUDA, gloo for the CPU."""
    if dist.is_initialized() or not launched():
        return
    cuda = device_type is DeviceType.cuda or (device_type is DeviceType.auto and torch.cuda.is_available())
    if device_type is DeviceType.mps or (device_type is DeviceType.auto and not cuda and _mps_available()):
        raise GancliError("data-parallel training runs on device=cuda (NCCL) or device=cpu (gloo), not on MPS")
    if cuda:
        if not torch.cuda.is_available():
            raise GancliError("device=cuda but no CUDA GPU is visible to this torchrun process; use device=cpu")
        torch.cuda.set_device(_local_rank())
    try:
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    except (RuntimeError, ValueError) as exc:
        raise GancliError(f"could not join the torchrun process group: {str(exc).splitlines()[0]}") from None


def close_distributed() -> None:
    """Leave the process group, and stop its communication threads before the interpreter exits.

    The DDP wrappers that hold the group sit in reference cycles (the train step holds them),
    so only the cycle collector frees them. Left to interpreter shutdown, a gloo thread still
    running there can abort the process ("terminate called without an active exception") after
    a run that finished. Collecting first lets `destroy_process_group` free the group and join
    its threads now."""
    if dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


@dataclass
class Ranks:
    """This process's place in a data-parallel run: rank 0 of 1 outside torchrun, where every
    collective below is a no-op."""

    rank: int = 0
    world_size: int = 1
    data_parallel: bool = False  # a process group is up (one torchrun process counts too)

    @classmethod
    def current(cls) -> "Ranks":
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size(), data_parallel=True)
        return cls()

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes files and logs."""
        return self.rank == 0

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """`module` in DistributedDataParallel, which all-reduces its gradients in backward.
        Buffers are not broadcast at each forward: D runs twice (real, fake) before its
        backward, and a broadcast between the two would overwrite batch-norm statistics that the
        first forward saved. `average_buffers` keeps the replicas' running statistics together."""
        if not self.data_parallel:
            return module
        ids = [device.index] if device.type == "cuda" else None
        ddp = nn.parallel.DistributedDataParallel
        # newer torch names the per-forward buffer sync apart from the one at start-up
        no_sync = "forward_sync_buffers" if "forward_sync_buffers" in inspect.signature(ddp).parameters \
            else "broadcast_buffers"
        return ddp(module, device_ids=ids, **{no_sync: False})

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Each value summed over the ranks, in one all-reduce."""
        if not self.data_parallel:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def all_reduce(self, t: torch.Tensor) -> None:
        """Sum `t` over the ranks, in place."""
        if self.data_parallel:
            dist.all_reduce(t)

    def average_buffers(self, *modules: nn.Module) -> None:
        """Replace each floating buffer (batch-norm running statistics) by its mean over ranks."""
        if not self.data_parallel:
            return
        for module in modules:
            for buf in module.buffers():
                if buf.is_floating_point():
                    dist.all_reduce(buf, op=dist.ReduceOp.SUM)
                    buf.div_(self.world_size)

    def checksums(self, *modules: nn.Module) -> list[float]:
        """One number per rank summing every parameter: equal when the replicas agree."""
        with torch.no_grad():
            params = [p.detach().double() for m in modules for p in m.parameters()]
            # weighted by position, so that two parameters swapping values changes the sum
            local = sum(float((p.flatten() * torch.linspace(1, 2, p.numel(), device=p.device,
                                                            dtype=torch.float64)).sum()) for p in params)
        if not self.data_parallel:
            return [local]
        out: list = [None] * self.world_size
        dist.all_gather_object(out, local)
        return out

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.data_parallel:
            dist.barrier()

    def broadcast(self, value: object) -> object:
        """Rank 0's `value`, on every rank."""
        if not self.data_parallel:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]
