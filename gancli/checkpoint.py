"""Checkpoints as plain data (state dicts, step, RNG states, config), written atomically and
read back with `weights_only=True`: nothing in them is ever unpickled as code."""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from gancli.errors import GancliError
from gancli.files import atomic

FORMAT = "gancli-checkpoint"
VERSION = 1


def save(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` via a temporary file and a rename."""
    with atomic(path) as tmp, open(tmp, "wb") as f:
        torch.save({"format": FORMAT, "version": VERSION, **state}, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before the rename makes it visible


def load(path: str | Path, mmap: bool = False) -> dict[str, Any]:
    """Read the gancli checkpoint file at `path` onto the CPU, or fail with one clear line. `mmap`
    maps the tensors instead of reading them, for a caller that only looks at the config.
    (runfolder.find_checkpoint finds a run folder's.)"""
    path = Path(path).expanduser()
    if not path.is_file():
        raise GancliError(f"no checkpoint at {path}: give a .pt file or a run folder")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise GancliError(f"{path} is not a gancli checkpoint: it holds pickled Python objects") from None
        raise GancliError(f"{path} is corrupt or truncated and cannot be read") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile):
        raise GancliError(f"{path} is corrupt or truncated and cannot be read") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise GancliError(f"{path} is not a gancli checkpoint (no '{FORMAT}' marker)")
    missing = [key for key in ("step", "G", "config", "data_shape") if key not in state]
    if missing:
        raise GancliError(f"{path} is an incomplete gancli checkpoint: it lacks {', '.join(missing)}")
    if state.get("version", 0) > VERSION:
        raise GancliError(f"{path} was written by a newer gancli (format {state['version']}); upgrade gancli")
    return state
