"""Data parallelism: torchrun starts one process per device, and they meet in one process group."""

from __future__ import annotations

import gc
import inspect
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from gancli.config import DeviceType
from gancli.errors import GancliError


def launched() -> bool:
    """Whether torchrun (or another launcher that sets its variables) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def init_distributed(device_type: DeviceType) -> None:
    """Join the process group torchrun describes: NCCL for CUDA, gloo for the CPU."""
    if dist.is_initialized() or not launched():
        return
    cuda = device_type is DeviceType.cuda or (device_type is DeviceType.auto and torch.cuda.is_available())
    mps_auto = device_type is DeviceType.auto and not cuda and torch.backends.mps.is_available()
    if device_type is DeviceType.mps or mps_auto:
        raise GancliError("data-parallel training runs on device=cuda (NCCL) or device=cpu (gloo), not on MPS")
    if cuda:
        if not torch.cuda.is_available():
            raise GancliError("device=cuda but no CUDA GPU is visible to this torchrun process; use device=cpu")
        torch.cuda.set_device(local_rank())
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
