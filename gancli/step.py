"""How one training step runs (data -> D update(s) -> G update), and everything it owns: the
networks, their optimizers and gradient scalers, G's moving average, the augmentation, the
batches, and the accel plan that says how it runs.

What a step computes is losses.py's `d_objective` and `g_objective`; this module knows no GAN
math. Every accel variant runs the same objective; they differ in where the data lives, how
often the host waits for the device, which optimizer kernels run, and whether each update is a
CUDA graph.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from gancli import runtime
from gancli.augment import Augment
from gancli.config import OptimizerConfig, OptimizerName, TrainApp
from gancli.data import Batch, Batches, Data, LoaderBatches, class_names
from gancli.ema import EMA, ema_beta
from gancli.losses import Stats, d_objective, g_objective
from gancli.models import build_models, traits
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
    """The accel plan for this run: what its accel config asks, less what its model family, loss,
    device and precision rule out, with the precision it computes in (`auto` resolved, once)."""
    precision, why = runtime.resolve_precision(device, cfg.precision.name)  # `auto` as this device runs it
    return runtime.plan_accel(cfg.accel, device, precision, has_convs=traits(cfg.model).convolutional,
                              data_parallel=data_parallel, double_backward=cfg.loss.double_backward,
                              precision_reason=why)


class Running:
    """The sums of one update's stats on the device. They are added inside the update, so that a
    CUDA graph captures the add; `n`, how many updates the sums hold, is counted on the host."""

    def __init__(self) -> None:
        self.keys: tuple[str, ...] = ()
        self.sums: Optional[torch.Tensor] = None  # (len(keys),) float32
        self.n = 0

    def add(self, stats: Stats) -> None:
        values = torch.stack([v.detach().float() for v in stats.values()])
        if self.sums is None:  # the first, eager call (graphs warm up before they capture)
            self.keys, self.sums = tuple(stats), torch.zeros_like(values)
        self.sums.add_(values)


class TrainStep:
    """Call with the step index to run one training step; its stats add up on the device."""

    def __init__(self, cfg: TrainApp, data: Data, device: torch.device, plan: AccelPlan, timer: SectionTimer,
                 ranks: Optional[Ranks] = None):
        self.ranks = ranks = ranks or Ranks()  # rank 0 of 1: no data parallelism
        self.device, self.plan, self.timer = device, plan, timer
        self.precision = plan.precision
        self.loss_cfg, self.ema_cfg, self.augment_cfg = cfg.loss, cfg.ema, cfg.augment
        self.batch_size, self.d_steps = cfg.train.batch_size, cfg.train.d_steps
        self.images_per_step = cfg.train.batch_size * ranks.world_size  # G's samples per update, every rank

        # Networks, optimizers, gradient scalers, G's moving average and the augmentation.
        self.G, self.D = build_models(cfg.model, data.shape, len(data.classes or []))
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
        self._skipped = torch.zeros((), dtype=torch.long, device=device)  # steps the scalers skipped
        self.ema = EMA(self.G) if cfg.ema.active else None
        self.augment = Augment(cfg.augment).to(device) if cfg.augment.active else None

        batches_cls = LoaderBatches if plan.dataloader else Batches
        layout = torch.channels_last if plan.channels_last else torch.contiguous_format
        labelled = self.G.n_classes > 0
        self.batches = batches_cls(data, self.batch_size, cfg.seed, device, rank=ranks.rank,
                                   world_size=ranks.world_size, labels=labelled, memory_format=layout)

        # Each network as the updates call it. Compiled wrappers share their weights with G and D,
        # which are what checkpoints save. The network being updated runs through DDP, whose
        # backward all-reduces its gradients; the other runs bare (G under no_grad in D's update,
        # D frozen in G's update).
        self.G_fixed, self.D_fixed = self._runner(self.G), self._runner(self.D)
        self.G_train, self.D_train = self.G_fixed, self.D_fixed
        if ranks.data_parallel:
            self.G_train, self.D_train = self._runner(ranks.wrap(self.G, device)), self._runner(ranks.wrap(self.D, device))

        # The updates: D's with and without its penalties (lazy regularisation), then G's. Each
        # sums its stats in its own Running; as CUDA graphs, each reads one static batch.
        self._d_stats = {True: Running(), False: Running()}  # by "penalties on"
        self._g_stats = Running()
        self._d: dict[bool, Callable] = {reg: functools.partial(self._d_update, reg=reg) for reg in (True, False)}
        self._g: Callable = self._g_update
        self.static: Optional[Batch] = None
        if plan.cuda_graphs:
            x = torch.zeros((self.batch_size, *data.shape), device=device)
            if plan.channels_last:  # copy_ keeps the destination's layout: make it the one D wants
                x = x.contiguous(memory_format=torch.channels_last)
            c = torch.zeros(self.batch_size, dtype=torch.long, device=device) if labelled else None
            self.static = static = Batch(x, c)
            pool = torch.cuda.graph_pool_handle()  # the graphs share one memory pool
            self._d = {reg: GraphedStep(functools.partial(self._d_update, static, reg), plan.warmup_steps, pool,
                                        f"D's update{' with its penalties' if reg else ''}", plan.notes)
                       for reg in (True, False)}
            self._g = GraphedStep(functools.partial(self._g_update, static), plan.warmup_steps, pool,
                                  "G's update", plan.notes)
        self._compiling = bool(plan.compile)  # the first call compiles: set-up, not training
        self.setup_s = 0.0
        self.host_stats: dict[str, float] = {}  # the baseline's per-step readings

    def _runner(self, net: nn.Module) -> nn.Module:
        return torch.compile(net, mode=self.plan.compile) if self.plan.compile else net

    @property
    def G_sample(self) -> nn.Module:
        """The generator that grids, evaluation and checkpoints' users sample from."""
        return self.ema.G if self.ema is not None else self.G

    def modules(self) -> list[nn.Module]:
        """Every network the step keeps: G, D and G_ema. A data-parallel run averages their buffers
        (batch-norm statistics) and checks that their weights agree across ranks."""
        return [self.G, self.D] + ([self.ema.G] if self.ema is not None else [])

    # ---- the updates: objective, then zero_grad, (scaled) backward, optimizer step ----

    def _d_update(self, batch: Batch, reg: bool) -> None:
        self.D.requires_grad_(True)
        with runtime.autocast(self.device, self.precision, cache=not self.plan.cuda_graphs):
            objective, stats = d_objective(self.loss_cfg, self.G_fixed, self.D_train, batch, self.augment, reg,
                                           self._grad_scale(self.scaler_d) if reg else 1.0)
        self._apply(objective, self.opt_d, self.scaler_d)
        self._d_stats[reg].add(stats)
        self._read(stats)

    def _g_update(self, batch: Batch) -> None:
        self.D.requires_grad_(False)  # G's update needs no gradients of D's weights
        with runtime.autocast(self.device, self.precision, cache=not self.plan.cuda_graphs):
            loss, stats = g_objective(self.loss_cfg, self.G_train, self.D_fixed, batch, self.augment)
        self._apply(loss, self.opt_g, self.scaler_g)
        if self.ema is not None:
            self.ema.update()  # inside G's graph, where there is one
        self._g_stats.add(stats)
        self._read(stats)

    def _apply(self, objective: torch.Tensor, opt: torch.optim.Optimizer, scaler: torch.amp.GradScaler) -> None:
        opt.zero_grad(set_to_none=True)
        scaler.scale(objective).backward()
        scaler.step(opt)
        if not scaler.is_enabled():
            return
        # The scaler skips a step whose gradients hold inf or NaN, and then halves its scale: count
        # the halvings on the device, so that no step waits for the host. `_scale` is the device
        # tensor that update() rewrites in place.
        before = scaler._scale.clone()
        scaler.update()
        self._skipped += scaler._scale < before

    def _grad_scale(self, scaler: torch.amp.GradScaler) -> float:
        """fp16's loss scale, which a penalty's own gradient needs too (one host read, fp16 only)."""
        return scaler.get_scale() if scaler.is_enabled() and self.loss_cfg.double_backward else 1.0

    def _read(self, stats: Stats) -> None:
        if self.plan.host_syncs:  # what the usual loop prints every step: one wait per value
            self.host_stats.update({key: value.item() for key, value in stats.items()})

    # ---- one step ----

    def _regularised(self, d_index: int) -> bool:
        """Whether D update number `d_index` (counted over the run) adds the penalties."""
        return self.loss_cfg.penalised and d_index % self.loss_cfg.reg_every == 0

    def __call__(self, step: int) -> bool:
        """Run step `step`; False when its time was set-up (compile, capture) rather than training."""
        first = step * self.d_steps  # the index of this step's first D update
        regs = [self._regularised(first + k) for k in range(self.d_steps)]
        updates = [self._d[reg] for reg in regs] + [self._g]
        setup = self._compiling or any(isinstance(f, GraphedStep) and not f.ready for f in updates)
        if setup:
            runtime.synchronize(self.device)
            t0 = time.perf_counter()
        with self.timer.section("data"):
            batches = [self.batches(first + k) for k in range(self.d_steps)]
        with self.timer.section("d_step"):
            for batch, reg in zip(batches, regs):
                if self.static is not None:
                    self._copy_into_static(batch)
                    self._d[reg]()
                else:
                    self._d[reg](batch)
                self._d_stats[reg].n += 1
        with self.timer.section("g_step"):
            if self.ema is not None:
                self.ema.set_beta(ema_beta(self.ema_cfg.half_life_kimg, self.ema_cfg.rampup, self.images_per_step,
                                           step * self.images_per_step))
            if self.static is not None:  # it holds the last D batch, which G's update takes
                self._g()
            else:
                self._g(batches[-1])
            self._g_stats.n += 1
        if self.augment is not None and (step + 1) % self.augment_cfg.interval == 0:
            self.augment.adjust(self.ranks.all_reduce if self.ranks.data_parallel else None)
        if setup:
            runtime.synchronize(self.device)
            self.setup_s += time.perf_counter() - t0
            self._compiling = False
        return not setup

    def _copy_into_static(self, batch: Batch) -> None:
        self.static.x.copy_(batch.x)
        if self.static.c is not None:
            self.static.c.copy_(batch.c)

    def take_stats(self) -> dict[str, float]:
        """The mean of each stat over the updates since the last call (one host sync), then start
        again: the D stats over D's updates, the G stats over G's."""
        means = self.peek_stats()
        for run in (self._d_stats[True], self._d_stats[False], self._g_stats):
            if run.n:
                run.sums.zero_()  # in place: a captured graph keeps adding into this tensor
                run.n = 0
        return means

    def peek_stats(self) -> dict[str, float]:
        """The means `take_stats` would return, without starting again (one host sync)."""
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        runs = [r for r in (self._d_stats[True], self._d_stats[False], self._g_stats) if r.n]
        for run in runs:
            for i, key in enumerate(run.keys):
                sums[key] = run.sums[i] if key not in sums else sums[key] + run.sums[i]
                counts[key] = counts.get(key, 0) + run.n
        means = torch.stack([sums[key] / counts[key] for key in sums]).tolist() if sums else []
        return dict(zip(sums, means))

    def weights_finite(self) -> bool:
        """Whether every weight and buffer of G, D and G_ema is finite (one host sync)."""
        checks = [torch.isfinite(t).all() for m in self.modules() for t in m.state_dict().values()
                  if t.is_floating_point()]
        return bool(torch.stack(checks).all()) if checks else True

    def skipped_updates(self) -> int:
        """Updates that fp16's gradient scalers skipped (gradients with inf or NaN) since the run
        began; 0 without a scaler (one host sync with one)."""
        return int(self._skipped) if self.scaler_d.is_enabled() else 0

    # ---- checkpoints: everything a resumed run needs, and nothing it can derive ----

    def state_dict(self) -> dict[str, Any]:
        state = {
            "G": self.G.state_dict(),
            "D": self.D.state_dict(),
            "opt_g": self.opt_g.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "scaler_g": self.scaler_g.state_dict(),
            "scaler_d": self.scaler_d.state_dict(),
        }
        if self.ema is not None:
            state["G_ema"] = self.ema.G.state_dict()
        if self.augment is not None and self.augment.adaptive:  # p and the evidence toward its next move
            state["augment"] = self.augment.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Load a checkpoint's state; a part that does not fit this step (other shapes, another
        optimizer's state) raises ValueError naming the part."""
        parts: list[tuple[str, Any]] = [("G", self.G), ("D", self.D), ("opt_g", self.opt_g), ("opt_d", self.opt_d),
                                        ("scaler_g", self.scaler_g), ("scaler_d", self.scaler_d)]
        if self.ema is not None:
            parts.append(("G_ema", self.ema.G))
        if self.augment is not None and self.augment.adaptive:
            parts.append(("augment", self.augment))
        for key, part in parts:
            try:
                part.load_state_dict(state[key])
                if isinstance(part, torch.optim.Optimizer):
                    _check_optimizer_state(part)
            except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as exc:
                reason = " ".join(str(exc).split())[:240] or type(exc).__name__  # torch's is several lines
                raise ValueError(f"its {key} does not fit this run ({reason})") from None


def _check_optimizer_state(opt: torch.optim.Optimizer) -> None:
    """Each per-parameter state tensor (Adam's moments, momentum buffers) has its parameter's shape:
    torch loads an optimizer's state without looking, and a wrong shape would fail mid-step."""
    for group in opt.param_groups:
        for p in group["params"]:
            for name, value in opt.state.get(p, {}).items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape != p.shape:
                    raise ValueError(f"state {name} has shape {tuple(value.shape)}, its parameter {tuple(p.shape)}")


def step_flops(cfg: TrainApp, shape: tuple) -> int:
    """FLOPs of one training step: the forward and backward passes of its D and G updates, with
    their penalties and augmentation, counted once on weightless meta tensors, so nothing is
    computed and no state changes. FlopCounterMode counts matrix products and convolutions,
    so the optimizers and G_ema's update (elementwise) count nothing. With lazy regularisation
    the penalties count on 1 in loss.reg_every D updates."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        G, D = build_models(cfg.model, shape, len(class_names(cfg.data) or []))
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
    return round(cfg.train.d_steps * (d_plain + (d_reg - d_plain) / cfg.loss.reg_every) + g)
