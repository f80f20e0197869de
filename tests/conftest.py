"""Shared helpers: run the real `gancli` entry point in a subprocess, and compose configs.

Every process of the suite, this one and each it starts, runs one CPU thread: results then agree
to the bit between a subprocess and an in-process check, and two processes never fight over
the cores of a small or loaded machine. Settings that would change what a process prints or
reads (colour forced on, a full-traceback switch, caches in the home folder) are cleared or
pointed at this session's own folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
for _key in ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLUMNS", "LINES", "HYDRA_FULL_ERROR"):
    os.environ.pop(_key, None)
_HOME = Path(tempfile.mkdtemp(prefix="gancli-tests-"))  # caches of this session alone
os.environ.update(GANCLI_CACHE=str(_HOME / "gancli"), TORCH_HOME=str(_HOME / "torch"),
                  MPLCONFIGDIR=str(_HOME / "matplotlib"))

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# A generous bound on any one subprocess: a slow machine must not fail a test, a hung child must
TIMEOUT = float(os.environ.get("GANCLI_TEST_TIMEOUT", "900"))

# A training run small enough for a test: a narrow DCGAN, a few steps, every artefact written.
TINY = [
    "model.g_width=8",
    "model.d_width=8",
    "train.batch_size=16",
    "train.steps=6",
    "train.log_every=2",
    "train.sample_every=3",
    "train.ckpt_every=3",
    "train.sample_n=16",
    "device=cpu",
    "precision=fp32",  # the same numbers on every CPU (precision=auto picks bf16 on some)
]


def child_env(extra: dict | None = None) -> dict:
    """The environment of a process the suite starts: this one's (see above), plus `extra`."""
    return {**os.environ, **(extra or {})}


def run_gancli(*args: str, cwd: Path, check: bool = True, timeout: float = TIMEOUT,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m gancli <args>` in `cwd`, with output captured (and `env` added to the environment)."""
    env = child_env(env)
    proc = subprocess.run(
        [sys.executable, "-m", "gancli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"gancli {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_torchrun(nproc: int, *args: str, cwd: Path, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node=<nproc> -m gancli <args>` in `cwd` (gloo on the CPU)."""
    env = child_env()
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
         "-m", "gancli", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"torchrun gancli {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


class Running:
    """A `gancli` subprocess whose output is read as it comes (by a thread), so that a test can wait
    for a line with a deadline; used as a context, it is killed on the way out if still running."""

    def __init__(self, *args: str, cwd: Path, env: dict | None = None):
        self.proc = subprocess.Popen([sys.executable, "-m", "gancli", *args], cwd=cwd, env=child_env(env),
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True)
        self._reader.start()

    def wait_for(self, text: str, timeout: float = TIMEOUT) -> None:
        """Until a line holding `text` has been printed; fails if the process ends first or time runs out."""
        deadline = time.monotonic() + timeout
        while not any(text in line for line in list(self.lines)):
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"gancli exited {self.proc.returncode} before printing {text!r}:\n{self.output}")
            if time.monotonic() > deadline:
                raise AssertionError(f"no {text!r} from gancli within {timeout} s:\n{self.output}")
            time.sleep(0.05)

    def finish(self, timeout: float = TIMEOUT) -> int:
        """Wait for the exit status (all output read)."""
        self.proc.wait(timeout=timeout)
        self._reader.join(timeout=timeout)
        return self.proc.returncode

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def __enter__(self) -> "Running":
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def read_json(path: Path):
    return json.loads(path.read_text())


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One finished tiny training run, shared by the tests that only read it, in a folder named as
    people name theirs (a space, letters outside ASCII): every command then meets such a path."""
    root = tmp_path_factory.mktemp("tiny") / "my runs größer"
    run_gancli("train", *TINY, f"hydra.run.dir={root / 'run'}", cwd=root.parent)
    return root / "run"


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory) -> Path:
    """A reference-classifier cache for the tests that do not care who trained the classifier."""
    return tmp_path_factory.mktemp("classifier-cache")
