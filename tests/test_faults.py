"""Faults a run must survive without losing work: kill -9 at any moment (random and injected
inside each kind of write), two writers in one folder, diverging runs, a full disk or read-only
folder, and hostile files. docs/reliability.md lists what each test guarantees.

Training runs in forked children of this process (torch already imported, one thread), which
are killed with SIGKILL: a kill costs milliseconds, not an interpreter start.
`GANCLI_FAULT_KILLS=200 pytest tests/test_faults.py -k random` raises the number of random kills.
"""

from __future__ import annotations

import errno
import json
import multiprocessing
import os
import pickle
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Optional

import pytest
import torch

from conftest import TIMEOUT, TINY, Running, child_env, read_json, run_gancli
from gancli import checkpoint, files, flops, runfolder, step as step_module
from gancli.errors import Diverged, GancliError
from gancli.train import train
from test_config import compose_train

# A tiny DCGAN that writes everything at every step: a checkpoint, a grid, a timing row (steps: per test).
EVERY_STEP = [a for a in TINY if not a.startswith("train.")] + [
    "train.batch_size=16", "train.log_every=1", "train.sample_every=1", "train.ckpt_every=1",
    "train.sample_n=16", "train.resume=auto"]
KILLS = int(os.environ.get("GANCLI_FAULT_KILLS", "12"))
FORK = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
pytestmark = pytest.mark.skipif(FORK is None, reason="the fault tests fork the test process")


def _fork_train(overrides: list[str], run_dir: Path, inject: Optional[Callable[[], None]] = None):
    """Start `train` in a forked child; `inject` runs there first (to plant a fault)."""

    def child() -> None:
        code = 0
        try:
            torch.set_num_threads(1)
            if inject is not None:
                inject()
            train(compose_train(*overrides), run_dir)
        except BaseException as exc:  # noqa: BLE001 (the parent reads the exit code)
            print(f"child: {type(exc).__name__}: {exc}", flush=True)
            code = 1
        os._exit(code)  # no pytest teardown in the child

    proc = FORK.Process(target=child)
    proc.start()
    return proc


def _run_to_end(overrides: list[str], run_dir: Path, inject: Optional[Callable[[], None]] = None) -> int:
    proc = _fork_train(overrides, run_dir, inject)
    proc.join(timeout=600)
    return proc.exitcode


def _kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _temp_files(run_dir: Path) -> list[Path]:
    return sorted(run_dir.rglob(f"*{files.TMP_SUFFIX}"))


def _rows(run_dir: Path, name: str = "timing.jsonl") -> list[dict]:
    """The rows of a JSON-lines file without the wall-clock fields, which differ run to run."""
    clock = {"elapsed_s", "train_s", "img_per_s", "d_step_ms", "g_step_ms", "data_ms", "peak_mem_mb", "mfu"}
    return [{k: v for k, v in json.loads(line).items() if k not in clock}
            for line in (run_dir / name).read_text().splitlines()]


def _assert_same_run(run_dir: Path, reference: Path) -> None:
    """`run_dir` ended where the uninterrupted `reference` did: same weights and optimizer state,
    same timing rows, same sample grids, byte for byte."""
    ours = checkpoint.load(run_dir / "checkpoints" / "last.pt")
    theirs = checkpoint.load(reference / "checkpoints" / "last.pt")
    assert ours["step"] == theirs["step"]
    for part in ("G", "D"):
        for key, value in theirs[part].items():
            assert torch.equal(ours[part][key], value), f"{part}.{key} differs from the uninterrupted run"
    for part in ("opt_g", "opt_d"):
        for index, state in theirs[part]["state"].items():
            for key, value in state.items():
                assert torch.equal(ours[part]["state"][index][key], value), f"{part} state {index}.{key} differs"
    assert _rows(run_dir) == _rows(reference)
    grids = sorted(p.name for p in (reference / "samples").iterdir())
    assert sorted(p.name for p in (run_dir / "samples").iterdir()) == grids
    for name in grids:
        assert (run_dir / "samples" / name).read_bytes() == (reference / "samples" / name).read_bytes(), name
    assert read_json(run_dir / "summary.json")["status"] == "completed"
    assert _temp_files(run_dir) == []


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Callable[[int], tuple[Path, float]]:
    """The uninterrupted run of EVERY_STEP at a number of steps, and its wall time, made once."""
    flops.peak_flops(torch.device("cpu"), compose_train().precision.name)  # measured once, inherited by children
    root, made = tmp_path_factory.mktemp("faults"), {}

    def run(steps: int) -> tuple[Path, float]:
        if steps not in made:
            t0 = time.perf_counter()
            assert _run_to_end([*EVERY_STEP, f"train.steps={steps}"], root / f"reference_{steps}") == 0
            made[steps] = root / f"reference_{steps}", time.perf_counter() - t0
        return made[steps]

    return run


def _rows_written(run_dir: Path) -> int:
    try:
        return (run_dir / "timing.jsonl").read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def test_kill_9_at_random_moments_loses_nothing(reference, tmp_path):
    """SIGKILL again and again: a quarter of the kills at a random moment of start-up, the rest at a
    random moment of the first or second step after it (each step writes a checkpoint, a grid and
    a timing row). After each, last.pt loads, at most one temporary file per folder exists
    (removed at the next start), and resuming reaches the uninterrupted run's exact state."""
    steps = max(48, 3 * KILLS)  # more than the kills move the run on: it is under way at every kill
    ref_dir, ref_s = reference(steps)
    step_s = ref_s / steps
    overrides = [*EVERY_STEP, f"train.steps={steps}"]
    run_dir = tmp_path / "run"
    rng = random.Random(0)
    loadable = most_temp = cut_writes = 0
    for _ in range(KILLS):
        rows = _rows_written(run_dir)
        proc = _fork_train(overrides, run_dir)
        if rng.random() < 0.25:
            time.sleep(rng.uniform(0.0, 0.3))
        else:  # training: wait for 1 or 2 more rows, then a random part of a step
            target, deadline = rows + rng.randint(1, 2), time.monotonic() + 120
            while _rows_written(run_dir) < target and proc.is_alive() and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rng.uniform(0.0, step_s))
        proc.kill()
        proc.join()
        last = run_dir / "checkpoints" / "last.pt"
        if last.exists():  # absent only when the kill came before the first checkpoint
            assert checkpoint.load(last)["step"] >= 0
            loadable += 1
        temp = len(_temp_files(run_dir))
        cut_writes += temp > 0  # the kill came inside an atomic write
        most_temp = max(most_temp, temp)
        assert most_temp <= 3  # one cut-short write per folder at most: none piles up
    reached = checkpoint.load(run_dir / "checkpoints" / "last.pt")["step"]
    assert _run_to_end(overrides, run_dir) == 0
    _assert_same_run(run_dir, ref_dir)
    print(f"kill -9 at {KILLS} random moments of a {steps}-step run (stopped at step {reached} by then): {loadable} "
          f"after the first checkpoint, each leaving a loadable last.pt; {cut_writes} inside an atomic write (a "
          f"temporary file left, at most {most_temp} at once, removed at the next start, 0 at the end); the resumed "
          "run equals the uninterrupted one")


def _partial_torch_save(nth: int) -> Callable[[], None]:
    """The nth checkpoint write stops half-way: a zip header and some bytes, then SIGKILL."""
    calls = {"n": 0}
    real = torch.save

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            f.write(b"PK\x03\x04" + b"\0" * 512)
            f.flush()
            _kill_self()
        return real(obj, f, *args, **kwargs)

    return lambda: setattr(checkpoint.torch, "save", save)


def _partial_grid(nth: int) -> Callable[[], None]:
    """The nth sample grid stops half-way: a PNG header, then SIGKILL."""
    from gancli import images

    calls = {"n": 0}
    real = images._write_png

    def write_png(pixels, path):
        calls["n"] += 1
        if calls["n"] == nth:
            Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
            _kill_self()
        return real(pixels, path)

    return lambda: setattr(images, "_write_png", write_png)


def _partial_timing_row(nth: int) -> Callable[[], None]:
    calls = {"n": 0}
    real = runfolder.JsonLines.write

    def write(self, row):
        calls["n"] += 1
        if calls["n"] == nth:
            line = json.dumps(row)
            self._file.write(line[: len(line) // 2])
            self._file.flush()
            _kill_self()
        return real(self, row)

    return lambda: setattr(runfolder.JsonLines, "write", write)


def _partial_summary() -> Callable[[], None]:
    def write_json(path, obj):
        if path.name == "summary.json":
            with files.atomic(path) as tmp:
                tmp.write_text(json.dumps(obj)[:40])
                _kill_self()
        return files.write_json(path, obj)

    return lambda: setattr(runfolder, "write_json", write_json)


@pytest.mark.parametrize("inject", [
    pytest.param(_partial_torch_save(5), id="checkpoint"),
    pytest.param(_partial_grid(7), id="sample-grid"),
    pytest.param(_partial_timing_row(9), id="timing-row"),
    pytest.param(_partial_summary(), id="summary"),
])
def test_kill_9_inside_each_write(reference, tmp_path, inject):
    """The process dies half-way through a write: the file it was replacing is intact (or, for
    an append, the cut line is dropped on resume), and the resumed run equals the uninterrupted one."""
    run_dir = tmp_path / "run"
    overrides = [*EVERY_STEP, "train.steps=16"]
    assert _run_to_end(overrides, run_dir, inject) == -signal.SIGKILL
    last = run_dir / "checkpoints" / "last.pt"
    assert checkpoint.load(last)["step"] >= 1  # the previous checkpoint, whole
    assert _run_to_end(overrides, run_dir) == 0
    _assert_same_run(run_dir, reference(16)[0])


# ---- two writers, one folder ----

def _cli_error(args: list[str], capsys) -> str:
    """`gancli <args>` through the dispatcher in this process: its one error line (exit status 2)."""
    from gancli import cli

    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    return line


def test_a_second_writer_is_refused_and_a_dead_one_leaves_no_lock(tmp_path, capsys):
    run_dir = tmp_path / "run"
    long_run = [*TINY[:3], "train.steps=100000", "train.log_every=1", "device=cpu", f"hydra.run.dir={run_dir}"]
    with Running("train", *long_run, cwd=tmp_path) as first:
        first.wait_for("step 2/")
        overrides = (run_dir / ".hydra" / "overrides.yaml").read_bytes()
        busy = f"another gancli process (pid {first.proc.pid}) is training in {run_dir}"
        proc = run_gancli("train", *long_run, cwd=tmp_path, check=False)  # the real command line
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [f"gancli: error: {busy}; wait for it "
                                                                              "to end, or choose another hydra.run.dir"]
        assert busy in _cli_error(["train", *long_run, "train.resume=auto"], capsys)  # resuming it, too
        with pytest.raises(GancliError, match="another gancli process"):
            runfolder.claim(run_dir, "auto")
        assert (run_dir / ".hydra" / "overrides.yaml").read_bytes() == overrides  # the running job's folder
        assert (run_dir / runfolder.LOCK_NAME).read_text().strip() == str(first.proc.pid)
        first.proc.send_signal(signal.SIGKILL)
        first.finish()
    # the kernel dropped the dead process's lock (its file stays): the run starts again at once
    summary = train(compose_train(*TINY, "train.resume=auto"), run_dir)
    assert summary["status"] == "completed" and not (run_dir / runfolder.LOCK_NAME).exists()


def test_a_finished_run_is_never_overwritten(tiny_run, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    before = {p: p.read_bytes() for p in tiny_run.rglob("*") if p.is_file()}
    assert not (tiny_run / runfolder.LOCK_NAME).exists()  # held only while a process trains there
    line = _cli_error(["train", *TINY, f"hydra.run.dir={tiny_run}"], capsys)
    assert "already holds a run (6 steps); continue it with train.resume=auto" in line
    # a resume that is refused (another model) leaves the finished run as it was, too
    assert "model.g_width 8 -> 16 would change the model" in _cli_error(
        ["train", *TINY, "model.g_width=16", "train.resume=auto", f"hydra.run.dir={tiny_run}"], capsys)
    with pytest.raises(GancliError, match="model.g_width 8 -> 16 would change"):
        train(compose_train(*TINY, "model.g_width=16", "train.resume=auto"), tiny_run)
    after = {p: p.read_bytes() for p in tiny_run.rglob("*") if p.is_file()}
    assert after == before  # not one byte, and no lock file left behind


def test_resuming_a_finished_run_trains_nothing_and_rewrites_nothing(tiny_run, tmp_path, caplog):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    kept = [run_dir / "summary.json", *(run_dir / "checkpoints").iterdir(), *(run_dir / "samples").iterdir()]
    before = {p: p.read_bytes() for p in kept}
    with caplog.at_level("INFO", logger="gancli.train"):
        summary = train(compose_train(*TINY, "train.resume=auto"), run_dir)
    assert summary == read_json(run_dir / "summary.json") and summary["img_per_s"] is not None
    assert {p: p.read_bytes() for p in kept} == before
    assert any("already at step 6 of 6: nothing to train" in r.getMessage() for r in caplog.records)
    assert not any("None img/s" in r.getMessage() for r in caplog.records)


# ---- diverging runs ----

def _poison_d_update(at: set[int], factor: float = float("nan")) -> None:
    """D's objective and loss are multiplied by `factor` (NaN, or a huge finite number) on the
    given calls, counted over the process."""
    real, calls = step_module.d_objective, {"n": 0}

    def d_objective(loss_cfg, G, D, batch, *args, **kwargs):
        objective, stats = real(loss_cfg, G, D, batch, *args, **kwargs)
        if batch.x.device.type == "meta":  # FLOP counting, not training
            return objective, stats
        calls["n"] += 1
        if calls["n"] in at:
            objective = objective * factor
            stats = {**stats, "loss_d": stats["loss_d"] * factor}
        return objective, stats

    step_module.d_objective = d_objective


def _all_checkpoints_finite(run_dir: Path) -> int:
    paths = sorted((run_dir / "checkpoints").glob("*.pt"))
    for path in paths:
        state = checkpoint.load(path)
        for part in ("G", "D"):
            assert all(torch.isfinite(v).all() for v in state[part].values() if v.is_floating_point()), path
    return len(paths)


BASE = [a for a in TINY if not a.startswith("train.")] + ["train.batch_size=16", "train.sample_n=16", "train.steps=12"]


@pytest.mark.parametrize("factor, overrides, problem", [
    # a finite blow-up in step 5 (loss ~1e20, beyond train.divergence_limit), seen at the log line of step 6
    (1e20, ["train.log_every=2", "train.ckpt_every=2"], "step 6 (loss_d"),
    # NaN in step 5, between log lines (every 4), caught at the checkpoint of step 6, which is not written
    (float("nan"), ["train.log_every=4", "train.ckpt_every=3"], "step 6 (loss_d nan"),
], ids=["finite-blow-up", "nan"])
def test_a_diverging_run_stops_and_keeps_its_last_good_checkpoint(tmp_path, monkeypatch, factor, overrides, problem):
    monkeypatch.setattr(step_module, "d_objective", step_module.d_objective)  # restored afterwards
    _poison_d_update({5}, factor)
    run_dir = tmp_path / "run"
    with pytest.raises(Diverged, match=re.escape(f"diverged by {problem}")) as info:
        train(compose_train(*BASE, *overrides), run_dir)
    assert "\n" not in str(info.value) and "the last good checkpoint is" in str(info.value)
    summary = read_json(run_dir / "summary.json")
    assert summary["status"] == "diverged" and summary["error"] == str(info.value)
    assert _all_checkpoints_finite(run_dir) >= 1


def test_rollback_reloads_the_last_good_checkpoint_and_counts(tmp_path, monkeypatch):
    monkeypatch.setattr(step_module, "d_objective", step_module.d_objective)
    _poison_d_update({7})  # one NaN in D's update of step 7
    run_dir = tmp_path / "run"
    summary = train(compose_train(*BASE, "train.log_every=4", "train.ckpt_every=3", "train.nan_policy=rollback"),
                    run_dir)
    assert summary["status"] == "completed" and summary["steps"] == 12
    assert summary["rollbacks"] == 1 and summary["skipped_updates"] == 0
    rows = _rows(run_dir)
    assert [(r["step"], r["rollbacks"]) for r in rows] == [(4, 0), (8, 0), (8, 1), (12, 1)]  # 8 rolled back to 6
    assert _all_checkpoints_finite(run_dir) == 5  # step 3, 6, 9, 12 and last.pt
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["counters"] == {"rollbacks": 1, "skipped_updates": 0}


def test_rollback_gives_up_after_max_rollbacks(tmp_path):
    cfg = compose_train(*BASE, "train.log_every=2", "optimizer.lr=1e9", "train.nan_policy=rollback",
                        "train.max_rollbacks=2")
    with pytest.raises(Diverged, match=r"after 2 rollback\(s\)"):
        train(cfg, tmp_path / "run")
    assert read_json(tmp_path / "run" / "summary.json")["status"] == "diverged"
    assert checkpoint.load(tmp_path / "run" / "checkpoints" / "last.pt")["step"] == 0  # what it rolled back to


def test_fp16_skipped_updates_are_counted_on_the_device():
    from gancli.run import setup

    run = setup(compose_train(*TINY, "accel=eager"))
    state = run.state
    state.scaler_d = torch.amp.GradScaler("cpu", init_scale=2.0**10)  # an enabled scaler, as fp16 has
    weight = next(state.D.parameters())
    before = weight.detach().clone()
    run.execute._apply(weight.sum() * float("inf"), state.opt_d, state.scaler_d)  # inf gradients: the step is skipped
    assert torch.equal(weight, before) and state.counters()["skipped_updates"] == 1
    run.execute._apply(weight.sum(), state.opt_d, state.scaler_d)
    assert not torch.equal(weight, before) and state.counters()["skipped_updates"] == 1


# ---- a full disk, a read-only folder ----

def _fail_on(nth: int, exc: OSError, replace: bool = False):
    """The nth checkpoint write fails like a full disk (after some bytes: torch.save), or the nth
    rename of a checkpoint into place fails like a read-only folder (os.replace)."""
    calls = {"n": 0}
    real_save, real_replace = torch.save, os.replace

    def save(obj, f, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            f.write(b"PK\x03\x04")
            raise exc
        return real_save(obj, f, *args, **kwargs)

    def replace_(src, dst):
        if Path(dst).suffix == ".pt":
            calls["n"] += 1
            if calls["n"] == nth:
                raise exc
        return real_replace(src, dst)

    return (files.os, "replace", replace_) if replace else (checkpoint.torch, "save", save)


@pytest.mark.parametrize("fault, expected", [
    # the second checkpoint write, last.pt at step 6
    (_fail_on(2, OSError(errno.ENOSPC, "No space left on device")), "last.pt (No space left on device)"),
    # the third rename: last.pt at 3, step_000003.pt, then last.pt at 6
    (_fail_on(3, PermissionError(errno.EROFS, "Read-only file system"), replace=True),
     "last.pt (Read-only file system)"),
], ids=["disk-full", "read-only"])
def test_a_write_that_fails_mid_run_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, fault, expected):
    monkeypatch.setattr(*fault)
    run_dir = tmp_path / "run"
    with pytest.raises(GancliError) as info:
        train(compose_train(*TINY), run_dir)  # checkpoints at steps 3 and 6
    line = str(info.value)
    assert "\n" not in line and f"cannot write {run_dir / 'checkpoints' / expected}" in line
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["step"] == 3  # intact
    assert _temp_files(run_dir) == []
    assert read_json(run_dir / "summary.json") | {"wall_s": 0} == {"status": "failed", "error": line, "wall_s": 0}


def _file_size_limit(limit: int) -> Callable[[], None]:
    """For a child process: the operating system refuses any write past `limit` bytes of a file
    (EFBIG), as a full disk refuses it (ENOSPC), in the middle of whatever writes it."""
    import resource

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def _limited(args: list[str], limit: int, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gancli", *args], cwd=cwd, env=child_env(), capture_output=True,
                          text=True, timeout=TIMEOUT, preexec_fn=_file_size_limit(limit))


def test_a_real_failed_write_inside_torch_save_is_one_line_and_keeps_the_last_checkpoint(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run, run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    before = last.read_bytes()
    assert len(before) > 100_000  # the limit stops the checkpoint, not the log lines and grids before it
    proc = _limited(["train", *TINY, "train.steps=9", "train.resume=auto", f"hydra.run.dir={run_dir}"], 100_000,
                    tmp_path)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in out, out
    (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
    assert f"cannot write {last} (File too large)" in line  # torch.save's RuntimeError, in the OS's words
    assert last.read_bytes() == before and _temp_files(run_dir) == []


def test_gancli_sample_into_a_failing_disk_leaves_no_partial_image(tiny_run, tmp_path):
    out = tmp_path / "samples"
    proc = _limited(["sample", f"ckpt={tiny_run}", "n=4", f"out={out}"], 100, tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stdout + proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
    assert f"cannot write {out / '000000.png'} (File too large)" in line
    assert sorted(p.name for p in out.iterdir()) == []  # neither a 0-byte image nor a temporary file


# ---- hostile files ----

class _Evil:
    """A pickle whose loading would run a command."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_malicious_checkpoint_is_refused_and_runs_nothing(tmp_path, tiny_run, capsys):
    marker = tmp_path / "ran"
    zipped, raw = tmp_path / "evil.pt", tmp_path / "evil.pkl"
    state = checkpoint.load(tiny_run / "checkpoints" / "last.pt")
    torch.save({**state, "payload": _Evil(marker)}, zipped)  # a real checkpoint, plus the payload
    raw.write_bytes(pickle.dumps(_Evil(marker)))
    for path in (zipped, raw):
        with pytest.raises(GancliError, match="not a gancli checkpoint|cannot be read"):
            checkpoint.load(path)
    with pytest.raises(GancliError, match="pickled Python objects"):
        train(compose_train(*TINY, f"train.resume={zipped}"), tmp_path / "resumed")
    assert "pickled Python objects" in _cli_error(["sample", f"ckpt={zipped}", f"out={tmp_path / 'out'}"], capsys)
    assert not marker.exists()


@pytest.mark.parametrize("part, tamper, expected", [
    ("G", lambda t: torch.zeros(t.shape[0] + 1, *t.shape[1:]), "its G does not fit this run"),
    ("opt_d", None, "its opt_d does not fit this run"),
])
def test_a_tampered_checkpoint_is_one_line(tiny_run, tmp_path, part, tamper, expected):
    state = checkpoint.load(tiny_run / "checkpoints" / "last.pt")
    if part == "G":
        key = next(iter(state["G"]))
        state["G"][key] = tamper(state["G"][key])
    else:  # an optimizer moment of the wrong shape, which torch itself would load without a word
        first = next(iter(state["opt_d"]["state"].values()))
        first["exp_avg"] = torch.zeros(3)
    state = {k: v for k, v in state.items() if k not in ("format", "version")}
    path = tmp_path / "tampered.pt"
    checkpoint.save(state, path)
    with pytest.raises(GancliError, match=expected) as info:
        train(compose_train(*TINY, f"train.resume={path}", "train.steps=8"), tmp_path / "run")
    assert "\n" not in str(info.value)


def test_a_directory_where_last_pt_should_be_is_one_line(tmp_path):
    (tmp_path / "run" / "checkpoints" / "last.pt").mkdir(parents=True)
    with pytest.raises(GancliError, match="last.pt is not a file"):
        train(compose_train(*TINY, "train.resume=auto"), tmp_path / "run")


def test_a_resume_with_another_optimizer_is_one_line(tiny_run, tmp_path, capsys):
    line = _cli_error(["train", *TINY, "optimizer=sgd", f"train.resume={tiny_run}",
                       f"hydra.run.dir={tmp_path / 'run'}"], capsys)
    assert "optimizer.name adam -> sgd would change the model, data or optimizer it was trained with" in line
    assert not (tmp_path / "run" / ".hydra").exists()  # refused before Hydra wrote anything


def test_a_run_folder_that_is_a_file_is_one_line(tmp_path, capsys):
    (tmp_path / "taken").write_text("a file")
    line = _cli_error(["train", *TINY, f"hydra.run.dir={tmp_path / 'taken'}"], capsys)
    assert f"hydra.run.dir={tmp_path / 'taken'} is a file, not a folder" in line
    assert (tmp_path / "taken").read_text() == "a file"


def test_a_file_system_without_locks_still_trains_and_says_so(tmp_path, monkeypatch, caplog):
    fcntl = pytest.importorskip("fcntl")

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with caplog.at_level("WARNING", logger="gancli.runfolder"):
        with runfolder.claim(tmp_path / "run", None):
            pass
    assert "a second gancli writing there would not be noticed" in caplog.text
