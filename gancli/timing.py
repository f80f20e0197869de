"""Time and throughput without stalling the device: CUDA events per section of a step, and the
meter that turns a log interval's steps, paused time and stats into one row, with one host sync
and one cross-rank reduction per interval."""

from __future__ import annotations

import contextlib
import math
import time
from collections import defaultdict
from typing import Any, Iterator

import torch

from gancli import runtime
from gancli.distributed import Ranks

clock = time.perf_counter  # what the meter reads: seconds, host time (tests put a fake clock here)


class SectionTimer:
    """Accumulates milliseconds per named section (data, d_step, g_step) between reads."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self._pending: list[tuple[str, torch.cuda.Event, torch.cuda.Event]] = []
        self._ms: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        if self.cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            yield
            end.record()
            self._pending.append((name, start, end))
        else:
            t0 = time.perf_counter()
            yield
            self._ms[name] += (time.perf_counter() - t0) * 1e3

    def read(self) -> dict[str, float]:
        """Total ms per section since the last read (the caller has synchronised the device)."""
        for name, start, end in self._pending:
            self._ms[name] += start.elapsed_time(end)
        totals, self._pending, self._ms = dict(self._ms), [], defaultdict(float)
        return totals


class Meter:
    """Steps, paused time and throughput over a run: each log interval's img/s, MFU and section
    times, and the run's totals for its summary.

    The loop tells it of each step (`count`) and wraps file writes and evaluations in `paused`,
    so that their time stays out of img/s; a step that compiled or captured graphs counts as
    set-up, not training. `read` makes the interval's one host sync and one cross-rank reduction.
    Training seconds and images add up over a run's sessions (the checkpoint keeps them)."""

    def __init__(self, device: torch.device, ranks: Ranks, timer: SectionTimer, batch_size: int,
                 flops_per_step: float, peak_flops: tuple[float, str], t_start: float):
        self.device, self.ranks, self.timer = device, ranks, timer
        self.batch_size = batch_size  # per process
        self.global_batch = batch_size * ranks.world_size
        self.flops_per_step = flops_per_step  # FLOPs of one step on one rank (flops.step_flops)
        self.peak_flops, self.peak_source = peak_flops  # FLOP/s of this device, and where the figure comes from
        self.t_start = t_start  # when the command began (set-up included): elapsed_s counts from here
        self.train_s = 0.0  # training seconds of this session, over the intervals read
        self.images = 0  # images trained on in those seconds, every rank
        self.train_s_before = 0.0  # training seconds of earlier sessions of this run
        self.begin()

    def begin(self) -> None:
        """Start an interval now: what came before (set-up, a rollback) is not training."""
        self._start = clock()
        self._paused = 0.0
        self._mark = self._start  # the end of the last step or pause
        self._steps = self._timed = 0

    def count(self, trained: bool) -> None:
        """One step done; `trained` False: its time was set-up (compile, capture), paused."""
        now = clock()
        self._steps += 1
        if trained:
            self._timed += 1
        else:
            self._paused += now - self._mark
        self._mark = now

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Time in this block is not training time."""
        t0 = clock()
        try:
            yield
        finally:
            self._mark = clock()
            self._paused += self._mark - t0

    def training_seconds(self) -> float:
        """Training seconds of the whole run so far, this interval included (no sync: host time)."""
        interval = clock() - self._start - self._paused
        return self.train_s_before + self.train_s + max(interval, 0.0)

    def reduce(self, values: dict[str, float]) -> dict[str, float]:
        """Each value's mean over the ranks, in one all-reduce (a no-op in one process)."""
        sums = self.ranks.sum(list(values.values()), self.device)
        return {key: total / self.ranks.world_size for key, total in zip(values, sums)}

    def read(self, step: int, stats: dict[str, float],
             flags: dict[str, float]) -> tuple[dict[str, Any], dict[str, bool]]:
        """The interval's row for timing.jsonl (step, times, img/s over every rank, MFU, each stat's
        mean over the ranks) and each flag, true when any rank raised it; then a new interval.
        `stats` are the interval's means on this rank, read after this call's sync."""
        runtime.synchronize(self.device)
        interval_s = max(clock() - self._start - self._paused, 1e-9)
        ms = self.timer.read()
        steps_per_s = self._timed / interval_s
        means = self.reduce({**stats, "img_per_s": steps_per_s * self.global_batch, "interval_s": interval_s, **flags})
        interval_s = means.pop("interval_s")  # one figure on every rank: what the schedules and checkpoints see
        n = max(self._steps, 1)
        if self._timed:
            self.train_s += interval_s
            self.images += self._timed * self.global_batch
        row = {
            "step": step,
            "elapsed_s": round(clock() - self.t_start, 3),
            "train_s": round(self.train_s_before + self.train_s, 3),
            "img_per_s": round(means.pop("img_per_s"), 1),
            "d_step_ms": round(ms.get("d_step", 0.0) / n, 3),
            "g_step_ms": round(ms.get("g_step", 0.0) / n, 3),
            "data_ms": round(ms.get("data", 0.0) / n, 3),
            "peak_mem_mb": round(runtime.peak_memory_mb(self.device), 1),
            "mfu": round(self.flops_per_step * steps_per_s / self.peak_flops, 5),
            **{key: means[key] for key in stats},
        }
        raised = {key: means[key] > 0 for key in flags}
        self.begin()
        return row, raised

    def img_per_s(self) -> float | None:
        """Images per second over this session's training time, every rank; None before any was timed."""
        return self.images / self.train_s if self.train_s > 0 else None

    def images_by(self, budget_s: float, images_seen: float) -> float:
        """The images the run will have seen when its training time reaches `budget_s`: those seen
        so far plus this session's throughput times the seconds left (math.inf before a step has
        been timed). Read at a log line, from the intervals read: figures every rank agrees on, so
        that their schedules stay equal."""
        img_per_s = self.img_per_s()
        if img_per_s is None:
            return math.inf
        return images_seen + img_per_s * max(budget_s - self.train_s_before - self.train_s, 0.0)

    def totals(self) -> dict[str, Any]:
        """This session's training time, throughput and MFU, for the summary."""
        img_per_s = self.img_per_s()
        return {
            "train_s": round(self.train_s, 3),
            "img_per_s": round(img_per_s, 1) if img_per_s else None,
            "mfu": round(self.flops_per_step * img_per_s / self.global_batch / self.peak_flops, 5)
            if img_per_s else None,
        }

    def state_dict(self) -> dict[str, float]:
        return {"train_s": self.train_s_before + self.train_s}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Continue a run: its earlier sessions' training seconds count toward its time budget."""
        self.train_s_before = float(state.get("train_s", 0.0))
