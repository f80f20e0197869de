"""Experiment loggers beyond the run folder's own JSON lines: `logger=none|tensorboard`."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Optional

from gancli.config import LoggerConfig, LoggerName
from gancli.errors import GancliError


def check(cfg: LoggerConfig) -> None:
    """Fail at start-up, in one line, when the chosen logger is not installed."""
    if cfg.name is LoggerName.tensorboard and importlib.util.find_spec("tensorboard") is None:
        raise GancliError('logger=tensorboard needs the tensorboard package: pip install "gancli[tensorboard]" '
                          "(or use logger=none)")


class Tracker:
    """Takes the numbers and images the loop produces; this base class drops them (logger=none)."""

    def scalars(self, step: int, values: dict[str, Any], prefix: str = "") -> None:
        pass

    def image(self, step: int, tag: str, png: Path) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoard(Tracker):
    """Event files straight in the run folder, so `tensorboard --logdir outputs` lists each run
    (and each job of a sweep) by its folder."""

    def __init__(self, run_dir: Path):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir))

    def scalars(self, step: int, values: dict[str, Any], prefix: str = "") -> None:
        for key, value in values.items():
            # numbers only: protocol strings and nested dicts are not curves
            if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                self.writer.add_scalar(f"{prefix}{key}", value, step)

    def image(self, step: int, tag: str, png: Path) -> None:
        from torchvision.io import ImageReadMode, read_image

        self.writer.add_image(tag, read_image(str(png), ImageReadMode.RGB), step)  # (3, H, W) uint8

    def close(self) -> None:
        self.writer.close()


def make_tracker(cfg: LoggerConfig, run_dir: Optional[Path]) -> Tracker:
    """The logger `cfg` names; the no-op one where there is nothing to write (run_dir None)."""
    if cfg.name is LoggerName.tensorboard and run_dir is not None:
        return TensorBoard(run_dir)
    return Tracker()
