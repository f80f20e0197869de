"""How a step runs fast: the accel plan (what an accel config asks, less what the model, loss,
device and precision rule out) and CUDA graph capture of a step's updates."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from gancli import runtime
from gancli.config import AccelConfig, CompileMode, Precision, RampShape, TrainApp
from gancli.models import traits

log = logging.getLogger(__name__)


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
            note = (f"cuda_graphs off for {self.name}: its capture failed ({type(exc).__name__}: {reason}); "
                    "it runs eagerly")
            log.warning(note)
            if self.notes is not None:
                self.notes.append(note)
            self.eager = True
            self.fn()  # this call's update
            return
        torch.cuda.synchronize()
        self.graph = graph
        graph.replay()  # this call's update


def plan_for(cfg: TrainApp, device: torch.device, data_parallel: bool = False) -> AccelPlan:
    """The accel plan for this run: what its accel config asks, less what its model family, loss,
    schedules, device and precision rule out, with the precision it computes in (`auto`
    resolved, once)."""
    precision, why = runtime.resolve_precision(device, cfg.precision.name)  # `auto` as this device runs it
    plan = plan_accel(cfg.accel, device, precision, has_convs=traits(cfg.model).convolutional,
                      data_parallel=data_parallel, double_backward=cfg.loss.double_backward,
                      precision_reason=why)
    if plan.cuda_graphs and plan.fused_optimizer and cfg.schedule.beta2.shape is not RampShape.constant:
        plan.fused_optimizer = False
        plan.notes.append("fused optimizer off: a scheduled beta2 inside CUDA graphs needs the foreach kernels, "
                          "which read it from a device tensor")
    return plan
