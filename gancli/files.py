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


def write_error(path: Path, exc: OSError) -> GancliError:
    """The one line for a file that could not be written."""
    reason = exc.strerror or type(exc).__name__
    return GancliError(f"cannot write {path} ({reason}); free space there or make the folder writable, "
                       "then run again (files already written are intact)")


@contextlib.contextmanager
def atomic(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` if the block succeeds."""
    tmp = path.with_name(f".{path.name}{TMP_SUFFIX}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
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
