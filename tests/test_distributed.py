"""Data-parallel training under torchrun, two processes over gloo on the CPU."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import TIMEOUT, TINY, child_env, read_json, run_gancli, run_torchrun
from gancli import checkpoint


# the modern recipe's pieces that a data-parallel run must keep in step: penalties, G_ema, ADA
RECIPE = ["loss=rpgan", "loss.r1_gamma=1", "loss.r2_gamma=1", "ema.half_life_kimg=0.1", "augment=ada",
          "augment.interval=2", "augment.speed_kimg=1"]


def timing_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "timing.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """Two processes, 6 steps, Hydra's default run folder: the folder they share. Their batches
    stream from host memory (each rank its own slice; see test_data)."""
    root = tmp_path_factory.mktemp("ddp")
    run_torchrun(2, "train", *TINY, *RECIPE, "data.on_device=false", cwd=root)
    return root


def test_two_processes_share_one_run_folder_and_stay_in_sync(ddp_run):
    runs = [p for p in (ddp_run / "outputs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1  # Hydra made no folder per rank
    run_dir = runs[0]
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert (summary["world_size"], summary["batch_size"], summary["global_batch_size"]) == (2, 16, 32)
    first, second = summary["replica_checksums"]
    assert first == second  # every parameter of G, D and G_ema equal on both ranks
    # rank 0 alone writes: one log line per event, one timing row per interval
    log = (run_dir / "train.log").read_text()
    assert log.count("data parallel over 2 processes (gloo)") == 1
    assert log.count("data: 1797 images in 10 classes; streamed from host memory") == 1
    assert [row["step"] for row in timing_rows(run_dir)] == [2, 4, 6]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["last.pt", "step_000003.pt",
                                                                          "step_000006.pt"]


def test_resume_at_a_different_world_size_with_the_data_on_the_device(ddp_run, tmp_path):
    (shared,) = [p for p in (ddp_run / "outputs").glob("*/*") if p.is_dir()]
    run_dir = tmp_path / "run"
    shutil.copytree(shared, run_dir)  # a copy: the shared run stays as the other tests read it
    saved = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    run_gancli("train", *TINY, *RECIPE, "train.steps=8", "train.resume=auto", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    summary = read_json(run_dir / "summary.json")
    assert summary["steps"] == 8 and summary["world_size"] == 1 and summary["resumed_from"].endswith("last.pt")
    resumed = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    assert resumed["step"] == 8 and resumed["config"]["model"] == saved["config"]["model"]
    assert any(not torch.equal(resumed["G"][k], saved["G"][k]) for k in saved["G"])  # it went on training


@pytest.mark.slow
def test_one_process_under_torchrun_trains_the_plain_run_s_model(tmp_path):
    # DDP over one rank all-reduces nothing away: the same batches, noise and updates
    run_torchrun(1, "train", *TINY, *RECIPE, f"hydra.run.dir={tmp_path / 'ddp'}", cwd=tmp_path)
    run_gancli("train", *TINY, *RECIPE, f"hydra.run.dir={tmp_path / 'plain'}", cwd=tmp_path)
    ddp, plain = timing_rows(tmp_path / "ddp"), timing_rows(tmp_path / "plain")
    for key in ("loss_d", "loss_g", "r1", "r2", "augment_p"):
        assert [row[key] for row in ddp] == pytest.approx([row[key] for row in plain], rel=1e-5)
    assert plain[-1]["augment_p"] > 0  # ADA moved p, through its all-reduce under torchrun
    assert read_json(tmp_path / "ddp" / "summary.json")["world_size"] == 1


# One torchrun process, played in-process: after `gancli.cli.main` returns, list the threads
# left. A process group still alive then keeps gloo's threads running into interpreter
# shutdown, where one can abort the finished run's process (SIGABRT). torchrun's agent holds
# the rendezvous store, so no port is picked here; a thread that was just joined may linger in
# /proc for a moment, so the check waits a little for the names to go.
_THREADS_LEFT = """
import os, sys, time
from gancli.cli import main
names = lambda: {open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")}
main(sys.argv[1:])
deadline = time.monotonic() + 10
while any(n.startswith(("gloo", "pt_gloo", "pt_tcpstore")) for n in names()) and time.monotonic() < deadline:
    time.sleep(0.1)
print("threads", ",".join(sorted(names())))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="lists threads in Linux's /proc")
def test_a_finished_data_parallel_run_leaves_no_communication_threads(tmp_path):
    script = tmp_path / "threads_left.py"
    script.write_text(_THREADS_LEFT)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=1", str(script),
         "train", *TINY, f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=TIMEOUT,
    )
    assert proc.returncode == 0, proc.stderr
    assert read_json(tmp_path / "run" / "summary.json")["world_size"] == 1  # it ran in a process group
    (line,) = [line for line in proc.stdout.splitlines() if line.startswith("threads ")]
    left = line.split()[1].split(",")
    assert not [name for name in left if name.startswith(("gloo", "pt_gloo", "pt_tcpstore"))], left


def test_a_sweep_under_torchrun_is_one_line(tmp_path):
    torchrun_env = {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    proc = run_gancli("train", "-m", *TINY, "seed=1,2", cwd=tmp_path, check=False, env=torchrun_env)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "gancli: error: torchrun runs one training job: drop -m (to sweep, run torchrun once per job)"]


def test_each_torchrun_process_takes_its_local_gpu(monkeypatch):
    from gancli.config import DeviceConfig, DeviceType
    from gancli.errors import GancliError
    from gancli.runtime import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert resolve_device(DeviceConfig(type=DeviceType.cuda)) == torch.device("cuda", 1)
    assert resolve_device(DeviceConfig(type=DeviceType.auto)) == torch.device("cuda", 1)
    monkeypatch.setenv("LOCAL_RANK", "2")
    with pytest.raises(GancliError, match="--nproc-per-node=2"):
        resolve_device(DeviceConfig(type=DeviceType.cuda))


def test_a_repeated_ctrl_c_quits_at_once_only_outside_torchrun():
    import signal

    from gancli.train import _StopSignals

    alone = _StopSignals()
    alone._handle(signal.SIGINT, None)
    with pytest.raises(KeyboardInterrupt):
        alone._handle(signal.SIGINT, None)
    rank = _StopSignals(repeat_quits=False)  # torchrun sends its workers the terminal's Ctrl-C again
    rank._handle(signal.SIGINT, None)
    rank._handle(signal.SIGINT, None)
    assert rank.requested and rank.signum == signal.SIGINT
    terminated = _StopSignals()  # SIGTERM (SLURM's time limit) never quits before the save
    terminated._handle(signal.SIGTERM, None)
    terminated._handle(signal.SIGTERM, None)
    assert terminated.requested and terminated.signum == signal.SIGTERM


def test_a_time_budget_stops_every_rank_at_the_same_step(tmp_path):
    """Each rank reads its own clock; they stop together at the first log line where any rank is
    past the budget, with their replicas equal and the schedule spanning the budget."""
    run_dir = tmp_path / "run"
    run_torchrun(2, "train", *TINY, "train.minutes=0.02", "train.log_every=2", "schedule.lr_g.shape=linear",
                 "schedule.lr_g.end=0", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "completed" and summary["ended_by"] == "train.minutes"
    # the steps end at a log line; rank 0's own clock may read under the budget where rank 1's is past it
    assert summary["steps"] % 2 == 0 and summary["steps"] > 0
    first, second = summary["replica_checksums"]
    assert first == second
    rows = timing_rows(run_dir)
    assert rows[-1]["step"] == summary["steps"] and all(0 <= row["lr_g"] <= 2e-4 for row in rows)
