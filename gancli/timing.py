"""Step timing without stalling the device: CUDA events per section, read once per log interval."""

from __future__ import annotations

import contextlib
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import torch


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


class NullTimer(SectionTimer):
    """Times nothing: the reference against which SectionTimer's own cost is measured."""

    _none = contextlib.nullcontext()

    def section(self, name: str) -> contextlib.AbstractContextManager:  # type: ignore[override]
        return self._none


class JsonLines:
    """Appends one JSON object per line, flushed so a crash keeps what came before."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
