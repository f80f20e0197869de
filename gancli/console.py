"""What a person watches: log lines and the training progress bar, sharing one rich console."""

from __future__ import annotations

import logging
import sys
from typing import Any, Optional

from rich import get_console
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def console_handler() -> logging.Handler:
    """Rich log lines on a terminal (printed above the progress bar); plain lines elsewhere."""
    if get_console().is_terminal:
        return RichHandler(console=get_console(), show_path=False)
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("[%(asctime)s] %(message)s", "%H:%M:%S"))
    return handler


def table_console() -> Console:
    """Where tables print: the terminal, or a wide console so that logs keep every column."""
    return get_console() if get_console().is_terminal else Console(width=160)


class progress_bar:
    """A progress bar (step, losses, img/s, ETA; or files prepared) on a terminal; nothing
    otherwise, or when `show` is false (every rank of a data-parallel run but the first)."""

    def __init__(self, total: Optional[int], start: int, show: bool = True, name: str = "train"):
        console = get_console()
        self.progress = Progress(
            TextColumn(f"[bold]{name}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[stats]}"),
            TimeRemainingColumn(),
            console=console,
            disable=not (show and console.is_terminal),
        )
        self.task = self.progress.add_task(name, total=total, completed=start, stats="")

    def __enter__(self) -> "progress_bar":
        self.progress.__enter__()
        return self

    def update(self, step: int, stats: str | None = None, total: Optional[int] = None) -> None:
        """Move to `step`, with a new stats text and a new total (an estimate, under a time budget)."""
        fields: dict[str, Any] = {} if stats is None else {"stats": stats}
        if total is not None:
            fields["total"] = total
        self.progress.update(self.task, completed=step, **fields)

    def __exit__(self, *exc: Any) -> None:
        self.progress.__exit__(*exc)


def count(n: int, noun: str) -> str:
    """`n` and its noun, singular for one: "1 step", "2 steps"."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"
