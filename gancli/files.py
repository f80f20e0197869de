"""Atomic file writes: a reader sees the old file or the new one, never half of one; a write
that fails (a full disk, a read-only folder) is one line that names the file."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterator, Optional

from gancli.errors import GancliError

TMP_SUFFIX = ".tmp"  # `.<name>.tmp` beside the file it will replace


def write_error(path: Path, exc: BaseException) -> GancliError:
    """The one line for a file that could not be written."""
    return GancliError(f"cannot write {path} ({_cause(path, exc)}); free space there or make the folder writable, "
                       "then run again (files already written are intact)")


def _cause(path: Path, exc: BaseException) -> str:
    """Why a write failed, in the operating system's words where it gave any: torch.save reports
    a full disk as a RuntimeError ("unexpected pos ..."), with the OSError as its context."""
    seen: Optional[BaseException] = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.strerror:
            return seen.strerror
        seen = seen.__cause__ or seen.__context__
    with contextlib.suppress(OSError):
        if shutil.disk_usage(path.parent).free < 2**20:
            return "No space left on device"
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


@contextlib.contextmanager
def atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` if the block succeeds."""
    tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:  # RuntimeError: torch.save's word for a write that failed
        raise write_error(path, exc) from None
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def keep_copy(source: Path, path: Path) -> None:
    """`path` becomes a copy of `source`, atomically: a hard link where the file system has them
    (no second write of the bytes), else a real copy."""
    with atomic(path) as tmp:
        tmp.unlink(missing_ok=True)  # os.link will not replace a file
        try:
            os.link(source, tmp)
        except OSError:
            shutil.copyfile(source, tmp)


def write_json(path: Path, obj: Any) -> None:
    with atomic(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def write_text(path: Path, text: str) -> None:
    with atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    """One header line of `columns`, then one line per row; a missing or None value is blank."""
    with atomic(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="", extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def check_out_folder(out: Optional[str]) -> None:
    """`out=` names a folder (made if missing), not a file."""
    if out is not None and Path(out).expanduser().exists() and not Path(out).expanduser().is_dir():
        raise GancliError(f"out={out} is a file; give a folder (it is made if missing), or leave out= out")
