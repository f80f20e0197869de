"""A run's training state: everything a checkpoint saves and a resume or a rollback restores.

G, D, G's moving average, both optimizers and gradient scalers, the augmentation's state, the
path-length penalty's target, the step, the random number state and the run's counters live
here; how a step runs over them (eager, compiled, CUDA graphs, DDP) is step.py's business.
`load_state_dict` writes into the tensors that exist, so that an executor built once, its CUDA
graphs included, goes on running over the loaded state.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import torch
from torch import nn

from gancli import runtime
from gancli.accel import AccelPlan
from gancli.augment import Augment
from gancli.config import OptimizerConfig, OptimizerName, RampShape, TrainApp
from gancli.ema import EMA
from gancli.losses import PathLengthTarget
from gancli.models import build_models

log = logging.getLogger(__name__)


def make_optimizer(
    cfg: OptimizerConfig, params: Iterable[nn.Parameter], lr: float, fused: bool = False, capturable: bool = False
) -> torch.optim.Optimizer:
    """The configured optimizer; `fused` asks for fused kernels (foreach where there are none)."""
    params = list(params)
    kernels: dict[str, Any] = {}
    if fused:
        kernels = {"fused": True} if cfg.name in (OptimizerName.adam, OptimizerName.sgd) else {"foreach": True}
    if capturable and cfg.name in (OptimizerName.adam, OptimizerName.rmsprop):
        kernels["capturable"] = True

    def build(**kw: Any) -> torch.optim.Optimizer:
        if cfg.name is OptimizerName.adam:
            return torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay, **kw)
        if cfg.name is OptimizerName.sgd:
            return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **kw)
        return torch.optim.RMSprop(params, lr=lr, alpha=cfg.alpha, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay, **kw)

    try:
        return build(**kernels)
    except RuntimeError as exc:  # this torch has no fused kernels for the device
        if not kernels.pop("fused", False):
            raise
        log.info("fused %s kernels unavailable here (%s); using foreach kernels", cfg.name.value, exc)
        return build(foreach=True, **kernels)


class TrainState:
    """The networks, their optimizers, scalers and moving average, the augmentation, the step and
    the counters of one run, built for data of `shape` with `n_classes` classes (0: none)."""

    def __init__(self, cfg: TrainApp, shape: tuple, n_classes: int, device: torch.device, plan: AccelPlan):
        self.device = device
        self.step = 0  # the next step to run; every step before it is done
        self.G, self.D = build_models(cfg.model, shape, n_classes)
        self.G.to(device)
        self.D.to(device)
        if plan.channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        opt, sched = cfg.optimizer, cfg.schedule
        kernels = {"fused": plan.fused_optimizer, "capturable": plan.cuda_graphs}
        self.opt_g = make_optimizer(opt, self.G.parameters(), opt.lr_g or opt.lr, **kernels)
        self.opt_d = make_optimizer(opt, self.D.parameters(), opt.lr_d or opt.lr, **kernels)
        if plan.cuda_graphs:  # what a schedule moves, as device tensors that the captured steps read
            for ramp, optimizer, key in ((sched.lr_g, self.opt_g, "lr"), (sched.lr_d, self.opt_d, "lr"),
                                         (sched.beta2, self.opt_g, "betas"), (sched.beta2, self.opt_d, "betas")):
                if ramp.shape is not RampShape.constant:
                    _tensor_hyperparameter(optimizer, key, device)
        self.scaler_g = runtime.grad_scaler(device, plan.precision)
        self.scaler_d = runtime.grad_scaler(device, plan.precision)
        self.ema = EMA(self.G) if cfg.ema.active else None
        self.augment = Augment(cfg.augment).to(device) if cfg.augment.active else None
        self.path_length = PathLengthTarget().to(device) if cfg.loss.pl_weight > 0 else None
        # updates fp16's gradient scalers skipped since this state was built or loaded, counted
        # on the device so that no step waits for the host; earlier ones are in `skipped_before`
        self.skipped = torch.zeros((), dtype=torch.long, device=device)
        self.skipped_before = 0
        self.rollbacks = 0  # returns to the last good checkpoint after a divergence, over the whole run

    @property
    def G_sample(self) -> nn.Module:
        """The generator that grids, evaluation and checkpoints' users sample from."""
        return self.ema.G if self.ema is not None else self.G

    def modules(self) -> list[nn.Module]:
        """Every network kept: G, D and G_ema. A data-parallel run averages their buffers
        (batch-norm statistics) and checks that their weights agree across ranks."""
        return [self.G, self.D] + ([self.ema.G] if self.ema is not None else [])

    def parts(self) -> list[tuple[str, Any]]:
        """(checkpoint key, object with state_dict/load_state_dict) for every part a resume needs."""
        parts: list[tuple[str, Any]] = [("G", self.G), ("D", self.D), ("opt_g", self.opt_g), ("opt_d", self.opt_d),
                                        ("scaler_g", self.scaler_g), ("scaler_d", self.scaler_d)]
        if self.ema is not None:
            parts.append(("G_ema", self.ema.G))
        if self.augment is not None and self.augment.adaptive:  # p and the evidence toward its next move
            parts.append(("augment", self.augment))
        if self.path_length is not None:  # the path-length penalty's moving target
            parts.append(("path_length", self.path_length))
        return parts

    def counters(self) -> dict[str, int]:
        """Rollbacks and fp16's skipped updates over the whole run (one host sync with a scaler)."""
        skipped = int(self.skipped) if self.scaler_d.is_enabled() else 0
        return {"rollbacks": self.rollbacks, "skipped_updates": self.skipped_before + skipped}

    def set_counters(self, counters: dict[str, int]) -> None:
        self.rollbacks = int(counters.get("rollbacks", 0))
        self.skipped_before = int(counters.get("skipped_updates", 0))
        self.skipped.zero_()

    def weights_finite(self) -> bool:
        """Whether every weight and buffer of G, D and G_ema is finite (one host sync)."""
        checks = [torch.isfinite(t).all() for m in self.modules() for t in m.state_dict().values()
                  if t.is_floating_point()]
        return bool(torch.stack(checks).all()) if checks else True

    # ---- checkpoints: everything a resumed run needs, and nothing it can derive ----

    def state_dict(self) -> dict[str, Any]:
        """The state as plain data: each part's state, the step, the RNG state and the counters."""
        runtime.synchronize(self.device)
        parts = {key: part.state_dict() for key, part in self.parts()}
        for key in ("opt_g", "opt_d"):  # hyperparameters as numbers, whatever device they were read from
            parts[key]["param_groups"] = [{name: _number(value) for name, value in group.items()}
                                          for group in parts[key]["param_groups"]]
        return {"step": self.step, **parts, "rng": runtime.rng_state(self.device), "counters": self.counters()}

    def load_state_dict(self, state: dict[str, Any], rng: bool = True) -> None:
        """Load a checkpoint's state into this one, tensor by tensor; a part that does not fit
        (other shapes, another optimizer's state) raises ValueError naming the part. `rng`:
        restore the random number state too."""
        for key, part in self.parts():
            try:
                if isinstance(part, torch.optim.Optimizer):
                    _load_optimizer(part, state[key])
                else:
                    part.load_state_dict(state[key])
            except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
                reason = " ".join(str(exc).split())[:240] or type(exc).__name__  # torch's is several lines
                raise ValueError(f"its {key} does not fit this run ({reason})") from None
        self.step = int(state["step"])
        self.set_counters(state.get("counters") or {})
        if rng:
            runtime.set_rng_state(state["rng"], self.device)


def _tensor_hyperparameter(opt: torch.optim.Optimizer, key: str, device: torch.device) -> None:
    """Each group's `key` (lr, or the betas) as device tensors, which a schedule writes in place."""
    for group in opt.param_groups:
        value = group[key]
        group[key] = (tuple(torch.tensor(float(v), device=device) for v in value) if isinstance(value, tuple)
                      else torch.tensor(float(value), device=device))


def _number(value: Any) -> Any:
    """A tensor hyperparameter (or a tuple of them) as Python floats; anything else as it is."""
    if isinstance(value, torch.Tensor):
        return float(value)
    if isinstance(value, tuple) and any(isinstance(v, torch.Tensor) for v in value):
        return tuple(float(v) for v in value)
    return value


def _load_optimizer(opt: torch.optim.Optimizer, state: dict[str, Any]) -> None:
    """`opt.load_state_dict(state)`, then each loaded tensor copied into the one it replaced, so
    that a CUDA graph which captured the optimizer's step reads the loaded values. torch loads an
    optimizer's state without looking at shapes: a wrong one is refused here, not mid-step."""
    before = {p: dict(s) for p, s in opt.state.items()}
    groups_before = [dict(g) for g in opt.param_groups]
    opt.load_state_dict(state)
    for group in opt.param_groups:
        for p in group["params"]:
            for name, value in opt.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != p.shape:
                    raise ValueError(f"state {name} has shape {tuple(value.shape)}, its parameter {tuple(p.shape)}")
    for p, loaded in opt.state.items():
        for name, value in loaded.items():
            old = before.get(p, {}).get(name)
            if isinstance(old, torch.Tensor) and isinstance(value, torch.Tensor) and old.shape == value.shape:
                old.copy_(value)
                loaded[name] = old
    for group, old_group in zip(opt.param_groups, groups_before):
        for name, old in old_group.items():  # a scheduled learning rate or beta2, held as tensors
            if isinstance(old, torch.Tensor):
                group[name] = old.fill_(float(group[name]))
            elif isinstance(old, tuple) and all(isinstance(v, torch.Tensor) for v in old):
                group[name] = tuple(t.fill_(float(v)) for t, v in zip(old, group[name]))
