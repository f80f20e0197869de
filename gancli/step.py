"""One training step (data -> D update(s) -> G update) and everything it owns: the networks,
their optimizers and gradient scalers, the batches, and the accel plan that says how it runs.

Every accel variant runs the same math; they differ in where the data lives, how often the
host waits for the device, which optimizer kernels run, and whether the step is a CUDA graph.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Iterable, Optional

import torch
from torch import nn

from gancli import runtime
from gancli.config import OptimizerConfig, OptimizerName, TrainApp
from gancli.data import Batches, Data, LoaderBatches
from gancli.losses import LOSSES, r1_penalty
from gancli.models import build_models
from gancli.runtime import AccelPlan, GraphedStep, Ranks
from gancli.timing import SectionTimer

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
        return torch.optim.RMSprop(params, lr=lr, alpha=cfg.alpha, momentum=cfg.momentum, weight_decay=cfg.weight_decay, **kw)

    try:
        return build(**kernels)
    except RuntimeError as exc:  # this torch has no fused kernels for the device
        if not kernels.pop("fused", False):
            raise
        log.info("fused %s kernels unavailable here (%s); using foreach kernels", cfg.name.value, exc)
        return build(foreach=True, **kernels)


def plan_for(cfg: TrainApp, device: torch.device, data_parallel: bool = False) -> AccelPlan:
    """The accel plan for this run: what its accel config asks, less what its model, loss,
    device and precision rule out."""
    return runtime.plan_accel(cfg.accel, device, cfg.precision.name, has_convs=cfg.model.name != "mlp",
                              data_parallel=data_parallel, double_backward=cfg.loss.r1_gamma > 0)


def d_forward(G: nn.Module, D: nn.Module, real: torch.Tensor, z: torch.Tensor, d_loss_fn,
              r1_gamma: float = 0.0) -> tuple[torch.Tensor, ...]:
    """D's objective on a real batch and on G(z), G held fixed -> (objective, adversarial loss,
    real logits, fake logits); the objective adds the R1 penalty when `r1_gamma` > 0."""
    with torch.no_grad():
        fake = G(z)
    if r1_gamma > 0:
        real_leaf = real.detach().requires_grad_(True)
        # D gets a view, not the leaf: FlopCounterMode's module hooks refuse a leaf input to autograd.grad
        real = real_leaf.view_as(real_leaf)
    real_logits, fake_logits = D(real), D(fake)
    loss = d_loss_fn(real_logits, fake_logits)
    objective = loss + r1_gamma / 2 * r1_penalty(real_logits, real_leaf) if r1_gamma > 0 else loss
    return objective, loss, real_logits, fake_logits


def g_forward(G: nn.Module, D: nn.Module, z: torch.Tensor, g_loss_fn) -> tuple[torch.Tensor, torch.Tensor]:
    """G's loss on D(G(z)) -> (loss, fake logits)."""
    fake_logits = D(G(z))
    return g_loss_fn(fake_logits), fake_logits


class TrainStep:
    """Call with the step index to run one training step; losses add up on the device."""

    def __init__(self, cfg: TrainApp, data: Data, device: torch.device, plan: AccelPlan, timer: SectionTimer,
                 ranks: Optional[Ranks] = None):
        ranks = ranks or Ranks()  # rank 0 of 1: no data parallelism
        self.device, self.plan, self.timer = device, plan, timer
        self.precision = cfg.precision.name
        self.batch_size, self.d_steps = cfg.train.batch_size, cfg.train.d_steps
        self.d_loss_fn, self.g_loss_fn = LOSSES[cfg.loss.name]
        self.r1_gamma = cfg.loss.r1_gamma

        self.G, self.D = build_models(cfg.model, data.shape)
        self.G.to(device)
        self.D.to(device)
        if plan.channels_last:
            self.G.to(memory_format=torch.channels_last)
            self.D.to(memory_format=torch.channels_last)
        opt = cfg.optimizer
        self.opt_g = make_optimizer(opt, self.G.parameters(), opt.lr_g or opt.lr, plan.fused_optimizer, plan.cuda_graphs)
        self.opt_d = make_optimizer(opt, self.D.parameters(), opt.lr_d or opt.lr, plan.fused_optimizer, plan.cuda_graphs)
        self.scaler_g = runtime.grad_scaler(device, self.precision)
        self.scaler_d = runtime.grad_scaler(device, self.precision)

        batches_cls = LoaderBatches if plan.dataloader else Batches
        self.batches = batches_cls(data, self.batch_size, cfg.seed, device, rank=ranks.rank,
                                   world_size=ranks.world_size)
        self.sum_d = torch.zeros((), device=device)
        self.sum_g = torch.zeros((), device=device)
        self.host_stats: dict[str, float] = {}  # the baseline's per-step readings

        # compiled wrappers share their weights with G and D, which are what checkpoints save
        self.G_run, self.D_run = self.G, self.D
        if plan.compile:
            self.G_run = torch.compile(self.G, mode=plan.compile)
            self.D_run = torch.compile(self.D, mode=plan.compile)
        # the network being updated runs through DDP, whose backward all-reduces its gradients;
        # the other one runs bare (G under no_grad in D's step, D frozen in G's step)
        self.G_sync, self.D_sync = self.G_run, self.D_run
        if ranks.data_parallel:
            self.G_sync, self.D_sync = ranks.wrap(self.G, device), ranks.wrap(self.D, device)
            if plan.compile:
                self.G_sync = torch.compile(self.G_sync, mode=plan.compile)
                self.D_sync = torch.compile(self.D_sync, mode=plan.compile)
        self._d, self._g = self._d_update, self._g_update
        if plan.cuda_graphs:
            self.static_real = torch.zeros((self.batch_size, *data.shape), device=device)
            if plan.channels_last:  # copy_ keeps the destination's layout: make it the one D wants
                self.static_real = self.static_real.contiguous(memory_format=torch.channels_last)
            pool = torch.cuda.graph_pool_handle()  # both graphs share one memory pool
            self._d = GraphedStep(lambda: self._d_update(self.static_real), plan.warmup_steps, pool)
            self._g = GraphedStep(self._g_update, plan.warmup_steps, pool)
        # calls whose time is set-up (compilation, graph warm-up and capture), not training
        self._setup_calls = plan.warmup_steps + 1 if plan.cuda_graphs else (1 if plan.compile else 0)
        self.setup_s = 0.0

    def _d_update(self, real: torch.Tensor) -> None:
        self.D.requires_grad_(True)
        z = torch.randn(self.batch_size, self.G.z_dim, device=self.device)
        with runtime.autocast(self.device, self.precision, cache=not self.plan.cuda_graphs):
            objective, loss, real_logits, fake_logits = d_forward(self.G_run, self.D_sync, real, z, self.d_loss_fn,
                                                                  self.r1_gamma)
        self.opt_d.zero_grad(set_to_none=True)
        self.scaler_d.scale(objective).backward()
        self.scaler_d.step(self.opt_d)
        self.scaler_d.update()
        self.sum_d.add_(loss.detach())
        if self.plan.host_syncs:  # what the usual loop prints every step: three waits here
            self.host_stats["loss_d"] = loss.item()
            self.host_stats["d_real"] = real_logits.sigmoid().mean().item()
            self.host_stats["d_fake"] = fake_logits.sigmoid().mean().item()

    def _g_update(self) -> None:
        self.D.requires_grad_(False)  # G's update needs no gradients of D's weights
        z = torch.randn(self.batch_size, self.G.z_dim, device=self.device)
        with runtime.autocast(self.device, self.precision, cache=not self.plan.cuda_graphs):
            loss, fake_logits = g_forward(self.G_sync, self.D_run, z, self.g_loss_fn)
        self.opt_g.zero_grad(set_to_none=True)
        self.scaler_g.scale(loss).backward()
        self.scaler_g.step(self.opt_g)
        self.scaler_g.update()
        self.sum_g.add_(loss.detach())
        if self.plan.host_syncs:  # and two more here
            self.host_stats["loss_g"] = loss.item()
            self.host_stats["d_fake_after"] = fake_logits.sigmoid().mean().item()

    def __call__(self, step: int) -> bool:
        """Run step `step`; False when its time was set-up (compile, capture) rather than training."""
        setup = self._setup_calls > 0
        if setup:
            runtime.synchronize(self.device)
            t0 = time.perf_counter()
        with self.timer.section("data"):
            reals = [self.batches(step * self.d_steps + k) for k in range(self.d_steps)]
            if self.plan.channels_last:
                reals = [r.contiguous(memory_format=torch.channels_last) for r in reals]
        with self.timer.section("d_step"):
            for real in reals:
                if self.plan.cuda_graphs:
                    self.static_real.copy_(real)
                    self._d()
                else:
                    self._d(real)
        with self.timer.section("g_step"):
            self._g()
        if setup:
            runtime.synchronize(self.device)
            self.setup_s += time.perf_counter() - t0
            self._setup_calls -= 1
        return not setup

    def take_losses(self, n: int) -> tuple[float, float]:
        """Mean D and G losses over the last `n` steps (one host sync), then start again."""
        loss_d, loss_g = (torch.stack([self.sum_d, self.sum_g]) / max(n, 1)).tolist()
        self.sum_d.zero_()
        self.sum_g.zero_()
        return loss_d, loss_g

    def state_dict(self) -> dict[str, Any]:
        return {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.G.load_state_dict(state["G"])
        self.D.load_state_dict(state["D"])
        self.opt_g.load_state_dict(state["opt_g"])
        self.opt_d.load_state_dict(state["opt_d"])
        self.scaler_g.load_state_dict(state["scaler_g"])
        self.scaler_d.load_state_dict(state["scaler_d"])


def step_flops(cfg: TrainApp, shape: tuple) -> int:
    """FLOPs of one training step (forward and backward passes; optimizers left out), counted
    once on weightless meta tensors, so nothing is computed and no state changes."""
    from torch.utils.flop_counter import FlopCounterMode

    d_loss_fn, g_loss_fn = LOSSES[cfg.loss.name]
    batch = cfg.train.batch_size
    with torch.device("meta"):
        G, D = build_models(cfg.model, shape)
        real = torch.empty(batch, *shape)
        z = torch.empty(batch, G.z_dim)
    with FlopCounterMode(display=False) as counter:
        for _ in range(cfg.train.d_steps):
            d_forward(G, D, real, z, d_loss_fn, cfg.loss.r1_gamma)[0].backward()
        D.requires_grad_(False)
        g_forward(G, D, z, g_loss_fn)[0].backward()
    return counter.get_total_flops()
