"""Step timing without stalling the device: CUDA events per section, read once per log interval."""

from __future__ import annotations

import contextlib
import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterator

import torch

from gancli.files import write_error, write_text


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
    """Appends one JSON object per line, flushed so a crash keeps what came before.

    Opened for a run that starts at step `start` (0 for a new run, the checkpoint's step for a
    resumed one), it first drops the rows past `start` and a last line that a kill cut short, so
    that the file reads as if the run had never stopped."""

    def __init__(self, path: Path, start: int = 0):
        self.path = path
        try:
            if path.exists():
                self._trim(start)
            path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(path, "a", encoding="utf-8")
        except OSError as exc:
            raise write_error(path, exc) from None

    def _trim(self, start: int) -> None:
        original = self.path.read_text(encoding="utf-8", errors="replace")
        kept = []
        for line in original.splitlines(keepends=True):
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if line.endswith("\n") and isinstance(row, dict) and isinstance(row.get("step"), int) and row["step"] <= start:
                kept.append(line)
        if "".join(kept) != original:
            write_text(self.path, "".join(kept))

    def write(self, row: dict) -> None:
        try:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        except OSError as exc:
            raise write_error(self.path, exc) from None

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._file.close()
