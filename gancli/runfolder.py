"""The run folder a training job writes: one writer at a time, a finished run never overwritten,
and nothing left behind by a writer that was killed.

A job claims its folder before it writes anything there: `gancli train` claims it before Hydra
makes `.hydra/`, so a refused job changes nothing in the folder. The claim is an exclusive
`flock` on `.gancli.lock`, which the kernel releases when the process ends, however it ends: a
killed run never leaves its folder locked.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Optional

from gancli.errors import Diverged, GancliError
from gancli.files import TMP_SUFFIX, write_json

try:  # POSIX; where there is no flock (Windows) two writers are not detected
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

LOCK_NAME = ".gancli.lock"
CHECKPOINT_DIR = "checkpoints"
SUMMARY = "summary.json"


class _Lock:
    """An open, flock-ed lock file and how many claims of this process hold it."""

    def __init__(self, fd: int):
        self.fd, self.holders = fd, 1


_held: dict[Path, _Lock] = {}  # the folders this process has claimed


def _lock(run_dir: Path) -> bool:
    """Hold `run_dir`'s lock; False when this process held it already (one more claim of it)."""
    key = run_dir.resolve()
    if key in _held:
        _held[key].holders += 1
        return False
    path = run_dir / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise GancliError(f"cannot write in the run folder {run_dir} ({exc.strerror}); choose a writable "
                          "hydra.run.dir") from None
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise GancliError(f"another gancli process (pid {owner}) is training in {run_dir}; wait for it to end, "
                              "or choose another hydra.run.dir") from None
        except OSError as exc:  # a file system without locks (some network mounts): train, and say so
            log.warning("cannot lock %s (%s): a second gancli writing there would not be noticed", path, exc.strerror)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[key] = _Lock(fd)
    return True


def release(run_dir: Path) -> None:
    """Drop one claim of `run_dir`; the lock goes when the last claim of this process does."""
    key = run_dir.resolve()
    lock = _held.get(key)
    if lock is None:
        return
    lock.holders -= 1
    if lock.holders <= 0:
        del _held[key]
        os.close(lock.fd)  # closing the descriptor releases the flock


def claim(run_dir: Path, resume: Optional[str]) -> "RunFolder":
    """Make `run_dir` this process's to write, or fail in one line: it is a file, another process
    trains there, or it holds a run that `train.resume` does not continue. Temporary files left
    by a killed writer are removed. A folder this process holds already (the command line claimed
    it before Hydra started) is claimed once more, without checking it again."""
    if run_dir.exists() and not run_dir.is_dir():
        raise GancliError(f"hydra.run.dir={run_dir} is a file, not a folder; choose another hydra.run.dir")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GancliError(f"cannot make the run folder {run_dir} ({exc.strerror}); choose a writable "
                          "hydra.run.dir") from None
    if not _lock(run_dir):
        return RunFolder(run_dir, fresh=False)
    try:
        _check_contents(run_dir, resume)
    except BaseException:
        release(run_dir)
        raise
    for folder in (run_dir, run_dir / CHECKPOINT_DIR, run_dir / "samples"):
        for tmp in folder.glob(f".*{TMP_SUFFIX}") if folder.is_dir() else ():
            tmp.unlink(missing_ok=True)  # a write that a kill cut short; the file it was to replace is intact
    return RunFolder(run_dir, fresh=True)


class RunFolder:
    """A claimed run folder, as a context: leaving it releases the claim and, when an exception
    ends the run, marks summary.json failed, diverged or interrupted, so that `gancli report` can
    tell the run from one still running. A job that stopped before it trained (`started` still
    false) leaves an earlier run's summary as it was."""

    def __init__(self, path: Path, fresh: bool):
        self.path = path
        self.fresh = fresh  # this claim took the lock and checked the folder (not a repeat claim)
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
    last = run_dir / CHECKPOINT_DIR / "last.pt"
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
