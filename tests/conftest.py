"""Shared helpers: run the real `gancli` entry point in a subprocess, and compose configs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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
]


def run_gancli(*args: str, cwd: Path, check: bool = True, timeout: float = 300,
               env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m gancli <args>` in `cwd`, with output captured (and `env` added to the environment)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2"),
           **(env or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "gancli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"gancli {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def run_torchrun(nproc: int, *args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc-per-node=<nproc> -m gancli <args>` in `cwd` (gloo on the CPU)."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
         "-m", "gancli", *args],
        cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if proc.returncode != 0:
        raise AssertionError(f"torchrun gancli {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def read_json(path: Path):
    return json.loads(path.read_text())


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One finished tiny training run, shared by the tests that only read it."""
    root = tmp_path_factory.mktemp("tiny")
    run_gancli("train", *TINY, f"hydra.run.dir={root / 'run'}", cwd=root)
    return root / "run"


@pytest.fixture(scope="session")
def shared_cache_dir(tmp_path_factory) -> Path:
    """A reference-classifier cache for the tests that do not care who trained the classifier."""
    return tmp_path_factory.mktemp("classifier-cache")
