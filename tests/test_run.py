"""A run's homes, in-process: the meter's arithmetic on a fake clock, the run folder's writer,
and a state loaded in place into the executor that was built for it (resume, rollback)."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import TINY, is_png, read_json
from gancli import checkpoint, runfolder, timing
from gancli.distributed import Ranks
from gancli.run import setup
from gancli.step import Executor
from gancli.timing import Meter, SectionTimer
from test_config import compose_train

CPU = torch.device("cpu")


class FakeClock:
    """Seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(timing, "clock", fake)
    return fake


def test_meter_counts_training_time_apart_from_set_up_and_pauses(clock):
    # 2 FLOPs... per step of batch 4 on a device of 10 FLOP/s; the command began 5 s before the loop
    meter = Meter(CPU, Ranks(), SectionTimer(CPU), batch_size=4, flops_per_step=2.0, peak_flops=(10.0, "test"),
                  t_start=clock.now - 5)
    clock.now += 3  # a step that captured graphs: set-up, not training
    meter.count(trained=False)
    clock.now += 1  # two training steps of 0.5 s
    meter.count(trained=True)
    meter.count(trained=True)
    with meter.paused():
        clock.now += 7  # a grid and a checkpoint
    clock.now += 1  # a third training step
    meter.count(trained=True)
    assert meter.training_seconds() == pytest.approx(2.0)
    row, raised = meter.read(4, {"loss_d": 0.5}, {"stop": 0.0})
    # 3 steps of 4 images in 2 s of training; the interval's section times are per step (4 steps)
    assert row["step"] == 4 and row["img_per_s"] == 6.0 and row["train_s"] == 2.0 and row["loss_d"] == 0.5
    assert row["elapsed_s"] == 5 + 3 + 1 + 7 + 1 and row["mfu"] == pytest.approx(2.0 * 1.5 / 10.0)
    assert raised == {"stop": False}
    clock.now += 4  # the next interval: one step of 4 s
    meter.count(trained=True)
    row, raised = meter.read(5, {"loss_d": 0.25}, {"stop": 1.0})
    assert row["img_per_s"] == 1.0 and row["train_s"] == 6.0 and raised == {"stop": True}
    # the run's throughput: 16 images in 6 s of training
    assert meter.totals() == {"train_s": 6.0, "img_per_s": round(16 / 6, 1), "mfu": round(2.0 * (16 / 6) / 4 / 10, 5)}
    resumed = Meter(CPU, Ranks(), SectionTimer(CPU), 4, 2.0, (10.0, "test"), t_start=clock.now)
    resumed.load_state_dict(meter.state_dict())
    clock.now += 2
    resumed.count(trained=True)
    assert resumed.training_seconds() == pytest.approx(8.0)  # earlier sessions count toward a time budget


def test_a_meter_with_no_timed_step_has_no_throughput(clock):
    meter = Meter(CPU, Ranks(), SectionTimer(CPU), 4, 1.0, (1.0, "test"), t_start=clock.now)
    clock.now += 2
    meter.count(trained=False)
    row, _ = meter.read(1, {}, {})
    assert row["img_per_s"] == 0.0 and meter.totals() == {"train_s": 0.0, "img_per_s": None, "mfu": None}


class Recorder:
    """A tracker that keeps what it is given."""

    def __init__(self) -> None:
        self.scalars_seen, self.images, self.closed = [], [], False

    def scalars(self, step, values, prefix=""):
        self.scalars_seen.append((prefix, step))

    def image(self, step, tag, png):
        self.images.append((step, png.name))

    def close(self):
        self.closed = True


def test_the_writer_writes_each_file_of_a_run_folder(tmp_path):
    run_dir = tmp_path / "run"
    tracker = Recorder()
    out = runfolder.Writer(run_dir, 0, enabled=True, tracker=tracker, metrics=True)
    out.config({"seed": 3, "model": {"name": "dcgan"}})
    out.log({"step": 2, "loss_d": 0.5})
    out.evaluation({"step": 2, "fd": 1.5})
    out.grid(2, torch.zeros(4, 1, 8, 8), nrow=2)
    out.grid(3, torch.zeros(5, 2), real=torch.ones(5, 2))
    out.checkpoint({"step": 2, "G": {"w": torch.ones(1)}, "config": {}, "data_shape": [1, 8, 8]}, keep=True)
    out.summary({"status": "completed"})
    out.close()
    assert (run_dir / runfolder.CONFIG).read_text().startswith("seed: 3\n")
    assert [json.loads(line) for line in (run_dir / runfolder.TIMING).read_text().splitlines()] == [
        {"step": 2, "loss_d": 0.5}]
    assert [json.loads(line) for line in (run_dir / runfolder.METRICS).read_text().splitlines()] == [
        {"step": 2, "fd": 1.5}]
    assert is_png(out.grid_path(2)) and is_png(out.grid_path(3)) and out.grid_path(2).name == "step_000002.png"
    assert checkpoint.load(runfolder.last_checkpoint(run_dir))["step"] == 2
    assert checkpoint.load(run_dir / runfolder.CHECKPOINT_DIR / "step_000002.pt")["step"] == 2
    assert read_json(run_dir / runfolder.SUMMARY) == {"status": "completed"}
    assert tracker.scalars_seen == [("", 2), ("eval/", 2)] and len(tracker.images) == 2 and tracker.closed
    # opened again at step 1 (a resume from there): the rows past it go
    runfolder.Writer(run_dir, 1, enabled=True, tracker=Recorder(), metrics=True).close()
    assert (run_dir / runfolder.TIMING).read_text() == "" and (run_dir / runfolder.METRICS).read_text() == ""
    # a rank other than the first writes nothing
    quiet = runfolder.Writer(tmp_path / "other", 0, enabled=False, tracker=Recorder(), metrics=True)
    quiet.config({})
    quiet.log({"step": 1})
    quiet.grid(1, torch.zeros(1, 1, 8, 8))
    quiet.checkpoint({"step": 1}, keep=True)
    quiet.summary({})
    quiet.close()
    assert not (tmp_path / "other").exists()


def _weights(state) -> list[torch.Tensor]:
    return [t.detach().clone() for m in (state.G, state.D) for t in m.state_dict().values()]


@pytest.mark.parametrize("overrides", [
    [],
    ["augment=ada", "ema.half_life_kimg=1", "loss.r1_gamma=1", "loss.reg_every=2"],
], ids=["dcgan", "ada_ema_lazy_r1"])
def test_a_checkpoint_loads_into_the_executor_that_runs(tmp_path, monkeypatch, overrides):
    """Steps 4-8 run again after loading step 4's checkpoint end where they ended the first time:
    the executor, built once, runs over the loaded tensors."""
    built = []
    real_init = Executor.__init__
    monkeypatch.setattr(Executor, "__init__", lambda self, *a, **kw: built.append(1) or real_init(self, *a, **kw))
    run = setup(compose_train(*TINY, *overrides))
    for _ in range(4):
        run.execute()
    checkpoint.save(run.checkpoint(), tmp_path / "step_4.pt")
    for _ in range(4):
        run.execute()
    first = _weights(run.state)
    run.state.load_state_dict(checkpoint.load(tmp_path / "step_4.pt"))
    assert run.state.step == 4
    for _ in range(4):
        run.execute()
    assert run.state.step == 8 and built == [1]
    assert all(torch.equal(a, b) for a, b in zip(first, _weights(run.state)))


def test_a_rollback_loads_into_the_same_executor(tmp_path, monkeypatch):
    from gancli import step as step_module
    from gancli.train import train
    from test_faults import BASE, _poison_d_update

    monkeypatch.setattr(step_module, "d_objective", step_module.d_objective)  # restored afterwards
    _poison_d_update({7})  # one NaN in D's update of step 7
    built = []
    real_init = Executor.__init__
    monkeypatch.setattr(Executor, "__init__", lambda self, *a, **kw: built.append(1) or real_init(self, *a, **kw))
    summary = train(compose_train(*BASE, "train.log_every=4", "train.ckpt_every=3", "train.nan_policy=rollback"),
                    tmp_path / "run")
    assert summary["rollbacks"] == 1 and summary["steps"] == 12 and built == [1]
