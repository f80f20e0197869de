"""How one training step runs over a run's state (step -> batches -> D update(s) -> G update):
the runners (compiled, DDP-wrapped), the CUDA graphs and their static batch, the batches, and
the device-side sums of each update's stats. What a checkpoint saves is state.py's TrainState;
the executor is built once per run and runs over whatever state is loaded into it.

What a step computes is losses.py's `d_objective` and `g_objective`; this module knows no GAN
math. Every accel variant runs the same objective; they differ in where the data lives, how
often the host waits for the device, which optimizer kernels run, and whether each update is a
CUDA graph.
"""

from __future__ import annotations

import functools
import time
from typing import Callable, Optional

import torch
from torch import nn

from gancli import data as data_sets, runtime
from gancli.accel import AccelPlan, GraphedStep
from gancli.config import TrainApp
from gancli.data import Batch, Batches, Data, LoaderBatches, StreamBatches
from gancli.distributed import Ranks
from gancli.ema import ema_beta
from gancli.losses import Stats, d_objective, g_objective
from gancli.schedule import Schedule
from gancli.state import TrainState
from gancli.timing import SectionTimer


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


class Executor:
    """Call to run step `state.step` over `state` and advance it; each update's stats add up on
    the device until `take_stats` reads them."""

    def __init__(self, cfg: TrainApp, state: TrainState, data: Data, plan: AccelPlan, timer: SectionTimer,
                 ranks: Optional[Ranks] = None):
        self.state = state
        self.ranks = ranks = ranks or Ranks()  # rank 0 of 1: no data parallelism
        device = state.device
        self.device, self.plan, self.timer = device, plan, timer
        self.precision = plan.precision
        self.loss_cfg, self.ema_cfg, self.augment_cfg = cfg.loss, cfg.ema, cfg.augment
        self.batch_size, self.d_steps = cfg.train.batch_size, cfg.train.d_steps
        self.images_per_step = cfg.train.batch_size * ranks.world_size  # G's samples per update, every rank
        # values that ramp (schedule.py); the penalties' weights as device scalars that graphs read
        self.schedule = Schedule(cfg, self.images_per_step)
        self.gammas = {key: torch.tensor(getattr(cfg.loss, key), device=device)
                       for key in ("r1_gamma", "r2_gamma") if key in self.schedule}

        resident, why = data_sets.on_device(cfg.data, data)
        batches_cls = LoaderBatches if plan.dataloader else Batches if resident else StreamBatches
        layout = torch.channels_last if plan.channels_last else torch.contiguous_format
        labelled = state.G.n_classes > 0
        self.batches = batches_cls(data, self.batch_size, cfg.seed, device, rank=ranks.rank,
                                   world_size=ranks.world_size, labels=labelled, memory_format=layout,
                                   xflip=cfg.data.xflip)
        self.data_path = self.batches.where + ("" if plan.dataloader else f" ({why})")  # for the log

        # Each network as the updates call it. Compiled wrappers share their weights with G and D,
        # which are what checkpoints save. The network being updated runs through DDP, whose
        # backward all-reduces its gradients; the other runs bare (G under no_grad in D's update,
        # D frozen in G's update).
        self.G_fixed, self.D_fixed = self._runner(state.G), self._runner(state.D)
        self.G_train, self.D_train = self.G_fixed, self.D_fixed
        if ranks.data_parallel:
            self.G_train = self._runner(ranks.wrap(state.G, device))
            self.D_train = self._runner(ranks.wrap(state.D, device))

        # The updates: D's with and without its penalties (lazy regularisation), then G's with
        # and without its path-length penalty. Each sums its stats in its own Running; as CUDA
        # graphs, each reads one static batch.
        self._d_stats = {True: Running(), False: Running()}  # by "penalties on"
        self._g_stats = {True: Running(), False: Running()}
        self._d: dict[bool, Callable] = {reg: functools.partial(self._d_update, reg=reg) for reg in (True, False)}
        self._g: dict[bool, Callable] = {reg: functools.partial(self._g_update, reg=reg) for reg in (True, False)}
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
            self._g = {reg: GraphedStep(functools.partial(self._g_update, static, reg), plan.warmup_steps, pool,
                                        f"G's update{' with its penalty' if reg else ''}", plan.notes)
                       for reg in (True, False)}
        self._compiling = bool(plan.compile)  # the first call compiles: set-up, not training
        self.setup_s = 0.0

    def _runner(self, net: nn.Module) -> nn.Module:
        return torch.compile(net, mode=self.plan.compile) if self.plan.compile else net

    def close(self) -> None:
        """Stop what runs beside the steps (a streaming reader)."""
        self.batches.close()

    def captures(self) -> int:
        """CUDA graphs captured so far (0 without graphs): one per update, however often state is loaded."""
        graphs = [*self._d.values(), *self._g.values()]
        return sum(1 for f in graphs if isinstance(f, GraphedStep) and f.graph is not None)

    # ---- the updates: objective, then zero_grad, (scaled) backward, optimizer step ----

    def _d_update(self, batch: Batch, reg: bool) -> None:
        state = self.state
        state.D.requires_grad_(True)
        with runtime.autocast(self.device, self.precision, cache=not self.plan.cuda_graphs):
            objective, stats = d_objective(self.loss_cfg, self.G_fixed, self.D_train, batch, state.augment, reg,
                                           self._grad_scale(state.scaler_d) if reg else 1.0, **self.gammas)
        self._apply(objective, state.opt_d, state.scaler_d)
        self._d_stats[reg].add(stats)
        self._read(stats)

    def _g_update(self, batch: Batch, reg: bool) -> None:
        state = self.state
        state.D.requires_grad_(False)  # G's update needs no gradients of D's weights
        pl_target = state.path_length.value if state.path_length is not None else None
        with runtime.autocast(self.device, self.precision, cache=not self.plan.cuda_graphs):
            objective, stats = g_objective(self.loss_cfg, self.G_train, self.D_fixed, batch, state.augment, reg,
                                           self._grad_scale(state.scaler_g) if reg else 1.0, pl_target)
        self._apply(objective, state.opt_g, state.scaler_g)
        if state.ema is not None:
            state.ema.update()  # inside G's graph, where there is one
        self._g_stats[reg].add(stats)
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
        self.state.skipped += scaler._scale < before

    def _grad_scale(self, scaler: torch.amp.GradScaler) -> float:
        """fp16's loss scale, which a penalty's own gradient needs too (one host read, fp16 only)."""
        return scaler.get_scale() if scaler.is_enabled() and self.loss_cfg.double_backward else 1.0

    def _read(self, stats: Stats) -> None:
        if self.plan.host_syncs:  # what the usual loop prints every step: one wait per value
            for value in stats.values():
                value.item()

    # ---- one step ----

    def _regularised(self, d_index: int) -> bool:
        """Whether D update number `d_index` (counted over the run) adds the penalties."""
        return self.loss_cfg.penalised and d_index % self.loss_cfg.reg_every == 0

    def _g_regularised(self, step: int) -> bool:
        """Whether G's update at `step` adds the path-length penalty."""
        return self.loss_cfg.pl_weight > 0 and step % self.loss_cfg.pl_every == 0

    def __call__(self) -> bool:
        """Run step `state.step` and advance it; False when its time was set-up (compile, capture)
        rather than training."""
        state = self.state
        step = state.step
        first = step * self.d_steps  # the index of this step's first D update
        regs = [self._regularised(first + k) for k in range(self.d_steps)]
        g_reg = self._g_regularised(step)
        updates = [self._d[reg] for reg in regs] + [self._g[g_reg]]
        setup = self._compiling or any(isinstance(f, GraphedStep) and not f.ready for f in updates)
        if setup:
            runtime.synchronize(self.device)
            t0 = time.perf_counter()
        values = self.schedule.at(step * self.images_per_step)
        self._set(values)
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
            if state.ema is not None:
                half_life = values.get("ema_half_life_kimg", self.ema_cfg.half_life_kimg)
                state.ema.set_beta(ema_beta(half_life, self.ema_cfg.rampup, self.images_per_step,
                                            step * self.images_per_step))
            if self.static is not None:  # it holds the last D batch, which G's update takes
                self._g[g_reg]()
            else:
                self._g[g_reg](batches[-1])
            self._g_stats[g_reg].n += 1
        if state.augment is not None and (step + 1) % self.augment_cfg.interval == 0:
            state.augment.adjust(self.ranks.all_reduce if self.ranks.data_parallel else None)
        state.step = step + 1
        if setup:
            runtime.synchronize(self.device)
            self.setup_s += time.perf_counter() - t0
            self._compiling = False
        return not setup

    def _set(self, values: dict[str, float]) -> None:
        """Write this step's scheduled values where the updates read them: the optimizers' groups
        (as device tensors under CUDA graphs), the penalties' weights and the augmentation's p."""
        state = self.state
        for key, opt in (("lr_g", state.opt_g), ("lr_d", state.opt_d)):
            if key in values:
                for group in opt.param_groups:
                    group["lr"] = _write(group["lr"], values[key])
        if "beta2" in values:
            for group in (*state.opt_g.param_groups, *state.opt_d.param_groups):
                beta1, beta2 = group["betas"]
                group["betas"] = (beta1, _write(beta2, values["beta2"]))
        for key, gamma in self.gammas.items():
            gamma.fill_(values[key])
        if "augment_p" in values:
            state.augment.p.fill_(values["augment_p"])

    def _copy_into_static(self, batch: Batch) -> None:
        self.static.x.copy_(batch.x)
        if self.static.c is not None:
            self.static.c.copy_(batch.c)

    def take_stats(self) -> dict[str, float]:
        """The mean of each stat over the updates since the last call (one host sync), then start
        again: the D stats over D's updates, the G stats over G's."""
        means = self.peek_stats()
        for run in self._runs():
            if run.n:
                run.sums.zero_()  # in place: a captured graph keeps adding into this tensor
                run.n = 0
        return means

    def _runs(self) -> list[Running]:
        return [*self._d_stats.values(), *self._g_stats.values()]

    def peek_stats(self) -> dict[str, float]:
        """The means `take_stats` would return, without starting again (one host sync)."""
        sums: dict[str, torch.Tensor] = {}
        counts: dict[str, int] = {}
        runs = [r for r in self._runs() if r.n]
        for run in runs:
            for i, key in enumerate(run.keys):
                sums[key] = run.sums[i] if key not in sums else sums[key] + run.sums[i]
                counts[key] = counts.get(key, 0) + run.n
        means = torch.stack([sums[key] / counts[key] for key in sums]).tolist() if sums else []
        return dict(zip(sums, means))


def _write(old: float | torch.Tensor, value: float) -> float | torch.Tensor:
    """`value` in place of `old`: into it where it is a tensor (a captured graph reads that memory)."""
    if isinstance(old, torch.Tensor):
        return old.fill_(value)
    return value
