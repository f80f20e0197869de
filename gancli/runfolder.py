"""A run folder: its format in one place. The names of its files; where its checkpoint is; the
claim that makes it one process's to write; the writer of everything a run puts there (config,
log rows, evaluations, sample grids, checkpoints, the summary); and the reader that
`gancli report` uses.

One writer at a time, a finished run never overwritten, and nothing left behind by a writer
that was killed: a job claims its folder before it writes anything there (a single run's is
claimed by the command line before Hydra starts; `.hydra/` is written by gancli once the job
holds its folder, so a refused job, a sweep's too, changes nothing there). The
claim is an exclusive `flock` on `.gancli.lock`, which the kernel releases when the process
ends, however it ends: a killed run never leaves its folder locked (the file may stay, unlocked;
a process that ends normally removes it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import yaml
from omegaconf import OmegaConf

from gancli import checkpoint
from gancli.errors import Diverged, GancliError
from gancli.files import TMP_SUFFIX, keep_copy, write_error, write_json, write_text
from gancli.images import save_grid, save_scatter

try:  # POSIX; where there is no flock (Windows) two writers are not detected
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

# where in training an evaluation row (metrics.jsonl) was taken: not metrics
EVAL_WHEN = ("step", "train_s", "elapsed_s")

# What a run folder holds
CONFIG = "config.yaml"  # the run's whole config, every check passed (Hydra's own is in .hydra/)
OVERRIDES = ".hydra/overrides.yaml"  # the command line's overrides, as Hydra wrote them
TIMING = "timing.jsonl"  # one row per log interval: step, times, img/s, losses, stats
METRICS = "metrics.jsonl"  # one row per evaluation (eval.every)
SUMMARY = "summary.json"  # how the run ended, and its totals
CHECKPOINT_DIR = "checkpoints"  # last.pt and step_<step>.pt
LAST = "last.pt"  # the checkpoint a resume reads
SAMPLES_DIR = "samples"  # step_<step>.png sample grids
LOCK_NAME = ".gancli.lock"  # held while a process trains here


def last_checkpoint(run_dir: Path) -> Path:
    return run_dir / CHECKPOINT_DIR / LAST


def find_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a run folder's checkpoints/last.pt (or a checkpoints folder's last.pt)."""
    path = Path(path).expanduser()
    if path.is_dir():
        candidate = last_checkpoint(path)
        if not candidate.is_file() and (path / LAST).is_file():
            candidate = path / LAST  # the checkpoints folder itself
        if not candidate.is_file():
            raise GancliError(f"no checkpoint in {path}: expected {last_checkpoint(path)}")
        return candidate
    if not path.is_file():
        raise GancliError(f"no checkpoint at {path}: give a .pt file or a run folder")
    return path


def run_dir_of(path: Path) -> Path:
    """The run folder a checkpoint file belongs to (the parent of checkpoints/)."""
    return path.parent.parent if path.parent.name == CHECKPOINT_DIR else path.parent


# ---- the claim: one writing process per folder ----


_held: dict[Path, "RunFolder"] = {}  # the folders this process has claimed, by resolved path


def held(run_dir: Path) -> Optional["RunFolder"]:
    """This process's claim of `run_dir`, if it holds one (the command line claims a single run's
    folder before Hydra starts the job, which then trains under that claim)."""
    return _held.get(run_dir.resolve())


def _lock(run_dir: Path, key: str = "hydra.run.dir", doing: str = "training") -> int:
    """Hold `run_dir`'s lock: the open descriptor, flock-ed, with this process's pid in the file.
    The holder removes the file when it lets go (see release): a lock taken on a file that was
    removed meanwhile is no lock, so it is taken again on the file the path now names."""
    path = run_dir / LOCK_NAME
    while True:
        fd = _lock_once(run_dir, path, key, doing)
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


def _lock_once(run_dir: Path, path: Path, key: str, doing: str) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise GancliError(f"cannot write in the folder {run_dir} ({exc.strerror}); choose a writable {key}") from None
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise GancliError(f"another gancli process (pid {owner}) is {doing} in {run_dir}; wait for it to end, "
                              f"or choose another {key}") from None
        except OSError as exc:  # a file system without locks (some network mounts): train, and say so
            log.warning("cannot lock %s (%s): a second gancli writing there would not be noticed", path, exc.strerror)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def release(run_dir: Path) -> None:
    """Drop this process's claim of `run_dir`, if it holds one."""
    folder = _held.pop(run_dir.resolve(), None)
    if folder is not None:
        with contextlib.suppress(OSError):  # removed while held: no one else can have it meanwhile
            (run_dir / LOCK_NAME).unlink()
        os.close(folder.fd)  # closing the descriptor releases the flock


def claim(run_dir: Path, resume: Optional[str]) -> "RunFolder":
    """Make `run_dir` this process's to write, or fail in one line: it is a file, another process
    trains there, or it holds a run that `train.resume` does not continue. Temporary files left
    by a killed writer are removed. A process claims a folder once (see `held`)."""
    if held(run_dir) is not None:
        raise RuntimeError(f"{run_dir} is claimed by this process already")
    if run_dir.exists() and not run_dir.is_dir():
        raise GancliError(f"hydra.run.dir={run_dir} is a file, not a folder; choose another hydra.run.dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GancliError(f"cannot make the run folder {run_dir} ({exc.strerror}); choose a writable "
                          "hydra.run.dir") from None
    fd = _lock(run_dir)
    try:
        _check_contents(run_dir, resume)
    except BaseException:  # refused: the folder is left as it was, without a lock file
        with contextlib.suppress(OSError):
            (run_dir / LOCK_NAME).unlink()
        os.close(fd)
        raise
    for folder in (run_dir, run_dir / CHECKPOINT_DIR, run_dir / SAMPLES_DIR):
        for tmp in folder.glob(f".*{TMP_SUFFIX}") if folder.is_dir() else ():
            tmp.unlink(missing_ok=True)  # a write that a kill cut short; the file it was to replace is intact
    folder = _held[run_dir.resolve()] = RunFolder(run_dir, fd)
    return folder


def claim_sweep(sweep_dir: Path) -> None:
    """Make `sweep_dir` this process's sweep's, with the lock a run folder has (see release): a
    second sweep into it, started at the same time or later, is refused in one line before any
    of its jobs starts. Each job still claims its own folder."""
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GancliError(f"cannot make the sweep folder {sweep_dir} ({exc.strerror}); choose a writable "
                          "hydra.sweep.dir") from None
    fd = _lock(sweep_dir, "hydra.sweep.dir", "running a sweep")
    _held[sweep_dir.resolve()] = RunFolder(sweep_dir, fd)


class RunFolder:
    """A claimed run folder, as a context: leaving it releases the claim and, when an exception
    ends the run, marks summary.json failed, diverged or interrupted, so that `gancli report` can
    tell the run from one still running. A job that stopped before it trained (`started` still
    false) leaves an earlier run's summary as it was."""

    def __init__(self, path: Path, fd: int):
        self.path, self.fd = path, fd
        self.started = False  # set once every check has passed and the run writes its config
        self.t_start = time.perf_counter()

    def __enter__(self) -> "RunFolder":
        return self

    def __exit__(self, kind: Any, exc: Optional[BaseException], tb: Any) -> None:
        try:
            if exc is not None and isinstance(exc, (Exception, KeyboardInterrupt)):
                if isinstance(exc, KeyboardInterrupt):
                    status, error = "interrupted", "interrupted before a checkpoint could be saved"
                elif isinstance(exc, GancliError):
                    status, error = ("diverged" if isinstance(exc, Diverged) else "failed"), str(exc)
                else:
                    status, error = "failed", f"{type(exc).__name__}: {exc}"
                self._mark(status, error)
        finally:
            release(self.path)

    def _mark(self, status: str, error: str) -> None:
        if not self.started and (self.path / SUMMARY).exists():
            return
        try:
            write_json(self.path / SUMMARY, {"status": status, "error": error,
                                             "wall_s": round(time.perf_counter() - self.t_start, 3)})
        except GancliError as exc:  # a full disk, say: the error that ended the run says more
            log.warning("could not mark the run folder: %s", exc)


def _check_contents(run_dir: Path, resume: Optional[str]) -> None:
    last = last_checkpoint(run_dir)
    if last.exists() and not last.is_file():
        raise GancliError(f"{last} is not a file; move it out of the way, or choose another hydra.run.dir")
    if resume is not None:
        return
    summary = read_summary(run_dir)
    if last.exists() or summary.get("status") in ("completed", "interrupted"):
        steps = f" ({summary['steps']} steps)" if isinstance(summary.get("steps"), int) else ""
        raise GancliError(f"{run_dir} already holds a run{steps}; continue it with train.resume=auto, or choose a "
                          "new hydra.run.dir")


def read_summary(run_dir: Path) -> dict[str, Any]:
    """The folder's summary.json, or {} when there is none or it cannot be read."""
    try:
        summary = json.loads((run_dir / SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}


# ---- the writer: everything a run puts in its folder ----


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
            whole = line.endswith("\n") and isinstance(row, dict) and isinstance(row.get("step"), int)
            if whole and row["step"] <= start:
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


class Writer:
    """Writes a run's files into `run_dir`, from step `start` on (rows past it, from a run that
    stopped later, are dropped); with `enabled` false (every rank of a data-parallel run but the
    first) it writes nothing. `tracker` gets every row and grid as well (tracking.py)."""

    def __init__(self, run_dir: Path, start: int, enabled: bool, tracker: Any, metrics: bool):
        self.run_dir, self.enabled, self.tracker = run_dir, enabled, tracker
        self.last = last_checkpoint(run_dir)
        self._timing = JsonLines(run_dir / TIMING, start) if enabled else None
        self._metrics = JsonLines(run_dir / METRICS, start) if enabled and metrics else None

    def config(self, plain_cfg: dict[str, Any]) -> None:
        if self.enabled:
            write_text(self.run_dir / CONFIG, OmegaConf.to_yaml(plain_cfg))

    def log(self, row: dict[str, Any]) -> None:
        """A timing.jsonl row (and the tracker's scalars)."""
        if self._timing is not None:
            self._timing.write(row)
        self.tracker.scalars(row["step"], row)

    def evaluation(self, row: dict[str, Any]) -> None:
        """A metrics.jsonl row (and the tracker's scalars, under eval/)."""
        if self._metrics is not None:
            self._metrics.write(row)
        self.tracker.scalars(row["step"], row, prefix="eval/")

    def grid_path(self, step: int) -> Path:
        return self.run_dir / SAMPLES_DIR / f"step_{step:06d}.png"

    def grid(self, step: int, fake: torch.Tensor, nrow: Optional[int] = None,
             real: Optional[torch.Tensor] = None) -> None:
        """samples/step_<step>.png: images (N, C, H, W) as a grid of `nrow` columns, or 2-D points
        (N, 2) as a scatter plot over `real` points."""
        if not self.enabled:
            return
        path = self.grid_path(step)
        if fake.dim() == 4:
            save_grid(fake, path, nrow=nrow)
        else:
            save_scatter(fake, path, real=real, title=f"step {step}")
        self.tracker.image(step, "samples", path)

    def checkpoint(self, state: dict[str, Any], keep: bool) -> None:
        """last.pt first, the file a resume reads; then, if `keep`, step_<step>.pt beside it."""
        if not self.enabled:
            return
        checkpoint.save(state, self.last)
        if keep:
            keep_copy(self.last, self.last.parent / f"step_{state['step']:06d}.pt")

    def summary(self, summary: dict[str, Any]) -> None:
        if self.enabled:
            write_json(self.run_dir / SUMMARY, summary)

    def close(self) -> None:
        for part in (self._timing, self._metrics, self.tracker):
            if part is not None:
                part.close()


# ---- the reader ----


@dataclass
class RunRecord:
    """What could be read from one run folder; None where a value could not be read."""

    path: Path
    overrides: list[str] | None  # command-line overrides, hydra.* left out
    status: str  # completed | interrupted | failed | incomplete | broken | unknown | not started (report.py)
    steps: int | None
    target_steps: int | None
    wall_s: float | None
    img_per_s: float | None
    loss_d: float | None
    loss_g: float | None
    metrics: dict[str, float]  # the latest evaluation, without its step
    timing: list[dict[str, Any]]  # timing.jsonl rows, for the plots
    evaluations: list[dict[str, float]]  # numeric values of each evaluation, step included
    notes: list[str]  # the error of a failed run, and what could not be read


def is_run_folder(folder: Path) -> bool:
    """A folder gancli train wrote: it has any of the files a run starts with or ends with."""
    try:
        return any((folder / name).is_file() for name in (OVERRIDES, SUMMARY, TIMING))
    except OSError:  # unreadable
        return False


def read_run(path: Path) -> RunRecord:
    """Read what can be read of one run folder; a bad file is noted, never raised."""
    notes: list[str] = []
    overrides = _read_overrides(path / OVERRIDES, notes)
    timing = _read_jsonl(path / TIMING, notes)
    if not timing and (path / TIMING).is_file():
        notes.append(f"{TIMING} has no rows")
    evaluations = [_numbers(row) for row in _read_jsonl(path / METRICS, notes)]
    summary_path = path / SUMMARY
    summary = _read_json_object(summary_path, notes)

    if summary is not None:
        status = summary.get("status") if isinstance(summary.get("status"), str) else "unknown"
        if status == "unknown":
            notes.append(f"{SUMMARY} has no status")
        if isinstance(summary.get("error"), str):
            notes.insert(0, summary["error"])
    elif summary_path.exists() or not (timing or evaluations or overrides is not None):
        status = "broken"
    else:
        status = "incomplete"
    summary = summary or {}

    timing.sort(key=lambda row: row["step"])
    evaluations.sort(key=lambda row: row["step"])
    last = timing[-1] if timing else {}
    steps = [s for s in (_int(summary.get("steps")), _int(last.get("step"))) if s is not None]
    timed_img_per_s = [v for v in (number(row.get("img_per_s")) for row in timing) if v is not None]
    metrics = evaluations[-1] if evaluations else _numbers(summary.get("metrics"))
    if not evaluations and "step" in metrics:  # a summary's last evaluation, for the plot
        evaluations = [metrics]
    return RunRecord(
        path=path,
        overrides=overrides,
        status=status,
        steps=max(steps) if steps else None,
        target_steps=_int(summary.get("target_steps")) or (None if summary.get("minutes") else _target_steps(path)),
        wall_s=_first(summary.get("wall_s"), last.get("elapsed_s")),
        img_per_s=_first(summary.get("img_per_s"),
                         round(sum(timed_img_per_s) / len(timed_img_per_s), 1) if timed_img_per_s else None),
        loss_d=_first(summary.get("loss_d"), last.get("loss_d")),
        loss_g=_first(summary.get("loss_g"), last.get("loss_g")),
        metrics={k: v for k, v in metrics.items() if k not in EVAL_WHEN},
        timing=timing,
        evaluations=evaluations,
        notes=notes,
    )


def _read_overrides(path: Path, notes: list[str]) -> list[str] | None:
    try:
        overrides = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        notes.append(f"{OVERRIDES} missing")
        return None
    except (OSError, ValueError, yaml.YAMLError) as exc:
        notes.append(f"{OVERRIDES} unreadable ({_reason(exc)})")
        return None
    if overrides is None:  # an empty file: no overrides
        return []
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        notes.append(f"{OVERRIDES} is not a list of overrides")
        return None
    return [o for o in overrides if not o.lstrip("+~").startswith("hydra.")]


def _read_jsonl(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """The rows that parse and carry a step; a killed run's last line may be cut short."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return []
    except OSError as exc:
        notes.append(f"{path.name} unreadable ({_reason(exc)})")
        return []
    rows, bad = [], 0
    for line in filter(str.strip, text.splitlines()):
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict) and _int(row.get("step")) is not None:
            rows.append(row)
        else:
            bad += 1
    if bad:
        notes.append(f"{path.name}: {bad} unreadable line{'s' if bad > 1 else ''} skipped")
    return rows


def _read_json_object(path: Path, notes: list[str]) -> dict[str, Any] | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        notes.append(f"{path.name} unreadable ({_reason(exc)})")
        return None
    if not isinstance(obj, dict):
        notes.append(f"{path.name} is not a JSON object")
        return None
    return obj


def _target_steps(path: Path) -> int | None:
    """train.steps from the run's config, for a run that ended before its summary; None for a run
    with a time budget (train.minutes), which has no number of steps to reach."""
    for name in (CONFIG, ".hydra/config.yaml"):
        try:
            config = yaml.safe_load((path / name).read_text(encoding="utf-8"))
            return None if config["train"].get("minutes") else _int(config["train"]["steps"])
        except (OSError, ValueError, yaml.YAMLError, TypeError, KeyError):
            continue
    return None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return (str(exc).splitlines() or [type(exc).__name__])[0][:80]


def number(value: Any) -> float | None:
    """`value` if it is a number (not a bool), else None."""
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _int(value: Any) -> int | None:
    value = number(value)
    return int(value) if value is not None and math.isfinite(value) else None


def _first(*values: Any) -> float | None:
    return next((v for v in map(number, values) if v is not None), None)


def _numbers(row: Any) -> dict[str, float]:
    """The numeric values of an evaluation: protocol strings and nested dicts are not metrics."""
    if not isinstance(row, dict):
        return {}
    return {key: value for key, value in row.items() if number(value) is not None}


