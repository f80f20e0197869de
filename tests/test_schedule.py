"""Schedules (values that ramp during training) and training for a time budget, in-process."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import TINY, read_json
from gancli import checkpoint, timing
from gancli.config import Ramp, RampShape
from gancli.run import setup
from gancli.schedule import Schedule, ramp_value
from gancli.step import Executor
from test_config import compose_train

COSINE, LINEAR = RampShape.cosine, RampShape.linear


@pytest.mark.parametrize("ramp, images, length, expected", [
    (Ramp(), 500, 1000, 2.0),  # constant: the key's own value
    (Ramp(shape=LINEAR), 0, 1000, 2.0),
    (Ramp(shape=LINEAR), 250, 1000, 2.0 + (10.0 - 2.0) * 0.25),
    (Ramp(shape=LINEAR), 1000, 1000, 10.0),
    (Ramp(shape=LINEAR), 5000, 1000, 10.0),  # past its end, the end holds
    (Ramp(shape=COSINE), 250, 1000, 2.0 + 8.0 * (1 - math.cos(math.pi / 4)) / 2),  # 2 + 8 x 0.1464
    (Ramp(shape=COSINE), 500, 1000, 6.0),  # half way along a cosine is half way
    (Ramp(shape=COSINE, kimg=0.1), 50, 1000, 6.0),  # its own length: 100 images
    (Ramp(shape=LINEAR, warmup_kimg=0.2, warmup_start=1.0), 100, 1000, 1.5),  # half the warm-up: 1 -> 2
    (Ramp(shape=LINEAR, warmup_kimg=0.2, warmup_start=1.0), 600, 1000, 2.0 + 8.0 * 0.5),  # 400 of the 800 after it
    (Ramp(shape=COSINE), 10_000, math.inf, 2.0),  # no length known yet (a time budget's start): the start holds
])
def test_ramp_values_against_hand_computed_ones(ramp, images, length, expected):
    assert ramp_value(ramp, 2.0, 10.0, images, length) == pytest.approx(expected, rel=1e-12)


def test_a_schedule_starts_and_ends_at_its_keys_values_where_it_names_none():
    cfg = compose_train(*TINY, "optimizer.lr=4e-4", "schedule.lr_g.shape=cosine", "schedule.lr_g.end=1e-4",
                        "schedule.lr_d.shape=linear", "schedule.lr_d.start=0.001")
    schedule = Schedule(cfg, images_per_step=16)
    assert schedule.length_images == 6 * 16 and set(schedule.ramps) == {"lr_g", "lr_d"}
    assert schedule.at(0) == pytest.approx({"lr_g": 4e-4, "lr_d": 1e-3})
    assert schedule.at(3 * 16) == pytest.approx({"lr_g": 2.5e-4, "lr_d": 7e-4})
    assert schedule.at(6 * 16) == pytest.approx({"lr_g": 1e-4, "lr_d": 4e-4})


SCHEDULED = ["experiment=none", "model.g_width=8", "model.d_width=8", "train.batch_size=16", "device=cpu",
             "precision=fp32",
             "optimizer.lr=4e-4", "schedule.lr_g.shape=linear", "schedule.lr_g.end=1e-4",
             "schedule.lr_d.shape=cosine", "schedule.lr_d.end=2e-4",
             "schedule.beta2.shape=linear", "schedule.beta2.start=0.9",
             "loss.r1_gamma=2", "schedule.r1_gamma.shape=linear", "schedule.r1_gamma.end=0",
             "ema.half_life_kimg=0.5", "schedule.ema_half_life_kimg.shape=linear",
             "schedule.ema_half_life_kimg.start=0",
             "augment=diffaug", "augment.p=0.5", "schedule.augment_p.shape=linear", "schedule.augment_p.start=0"]


def test_each_step_reads_its_scheduled_values(monkeypatch):
    """Before step k's updates the optimizers, the penalty's weight, G_ema's beta and the
    augmentation's p hold the values of k x batch images."""
    seen = []
    run = setup(compose_train(*SCHEDULED, "train.steps=4"))
    real_update = run.execute._d_update

    def d_update(batch, reg=True):  # what D's update of this step reads
        seen.append((run.state.opt_d.param_groups[0]["lr"], run.state.opt_d.param_groups[0]["betas"][1],
                     float(run.execute.gammas["r1_gamma"]), float(run.state.augment.p)))
        real_update(batch, reg)

    monkeypatch.setattr(run.execute, "_d", {True: d_update, False: d_update})
    for _ in range(4):
        run.execute()
    for k, (lr_d, beta2, gamma, p) in enumerate(seen):
        t = k / 4  # k steps of the 4 the schedules span
        assert lr_d == pytest.approx(4e-4 + (2e-4 - 4e-4) * (1 - math.cos(math.pi * t)) / 2)
        assert beta2 == pytest.approx(0.9 + (0.999 - 0.9) * t) and gamma == pytest.approx(2 * (1 - t), abs=1e-7)
        assert p == pytest.approx(0.5 * t)
    assert run.state.opt_g.param_groups[0]["lr"] == pytest.approx(4e-4 + (1e-4 - 4e-4) * 3 / 4)
    # G_ema's weight for step 3: half-life 0.5 x 3/4 kimg, 16 images a step
    assert float(run.state.ema.weight) == pytest.approx(1 - 0.5 ** (16 / (0.5 * 3 / 4 * 1000)), rel=1e-5)


def test_a_resumed_run_continues_its_schedules_exactly(tmp_path, monkeypatch):
    """A 6-step run stopped (Ctrl-C) after step 3 and resumed ends where 6 straight steps end:
    weights, optimizer state and every logged scheduled value."""
    import os
    import signal

    from gancli.train import train

    common = [*SCHEDULED, "train.steps=6", "train.log_every=1", "train.sample_every=0", "train.ckpt_every=0"]
    train(compose_train(*common), tmp_path / "straight")
    real_call = Executor.__call__

    def stop_after_3(self):
        trained = real_call(self)
        if self.state.step == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return trained

    monkeypatch.setattr(Executor, "__call__", stop_after_3)
    assert train(compose_train(*common), tmp_path / "resumed")["steps"] == 3
    monkeypatch.setattr(Executor, "__call__", real_call)
    train(compose_train(*common, "train.resume=auto"), tmp_path / "resumed")
    straight = checkpoint.load(tmp_path / "straight" / "checkpoints" / "last.pt")
    resumed = checkpoint.load(tmp_path / "resumed" / "checkpoints" / "last.pt")
    for part in ("G", "D", "G_ema"):
        for key, value in straight[part].items():
            assert torch.equal(resumed[part][key], value), (part, key)
    assert straight["opt_d"]["param_groups"] == resumed["opt_d"]["param_groups"]
    keys = ("lr_g", "lr_d", "beta2", "r1_gamma", "ema_half_life_kimg", "augment_p", "loss_d", "loss_g")

    def rows(name):
        return [{k: r[k] for k in ("step", *keys)} for r in map(json.loads, open(tmp_path / name / "timing.jsonl"))]

    assert rows("straight") == rows("resumed") and len(rows("straight")) == 6


@pytest.mark.parametrize("overrides, expected", [
    (["schedule.r1_gamma.shape=cosine", "schedule.r1_gamma.end=1"], "loss.r1_gamma=0 turns off"),
    (["schedule.ema_half_life_kimg.shape=cosine", "schedule.ema_half_life_kimg.start=0"], "ema.half_life_kimg=0"),
    (["optimizer=sgd", "schedule.beta2.shape=linear", "schedule.beta2.end=0.9"], "optimizer=sgd has none"),
    (["augment=ada", "schedule.augment_p.shape=linear", "schedule.augment_p.start=0"], "keep one"),
    (["schedule.lr_g.shape=cosine"], "give schedule.lr_g.start or schedule.lr_g.end"),
    (["schedule.lr_d.shape=linear", "schedule.lr_d.end=-1"], "schedule.lr_d.end=-1.0 is not allowed"),
    (["schedule.beta2.shape=linear", "schedule.beta2.kimg=0", "schedule.beta2.end=0.9"], "schedule.beta2.kimg=0"),
    (["train.minutes=0"], "train.minutes=0.0 is not allowed"),
])
def test_schedules_that_cannot_apply_are_one_line(overrides, expected):
    from gancli import cli, train
    from gancli.errors import GancliError

    with pytest.raises(GancliError) as info:
        cli.preflight(train, ["experiment=none", "device=cpu", *overrides])
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_r3gan_ramps_its_values_over_the_run_and_trains_without_them_on_request():
    from gancli.schedule import base_values

    cfg = compose_train("experiment=r3gan", "train.steps=100")
    schedule = Schedule(cfg, images_per_step=cfg.train.batch_size)
    start, end = schedule.at(0), schedule.at(100 * cfg.train.batch_size)
    assert start == pytest.approx({"lr_g": 2e-4, "lr_d": 2e-4, "beta2": 0.9, "r1_gamma": 1.0, "r2_gamma": 1.0,
                                   "ema_half_life_kimg": 0.0})
    assert end == pytest.approx({"lr_g": 5e-5, "lr_d": 5e-5, "beta2": 0.99, "r1_gamma": 0.1, "r2_gamma": 0.1,
                                 "ema_half_life_kimg": 10.0})
    assert compose_train("experiment=r3gan", "loss.r1_gamma=0.05").schedule.r1_gamma.end == pytest.approx(0.005)
    plain = compose_train("experiment=r3gan", "schedule=constant")
    assert not Schedule(plain, 64).ramps and base_values(plain) == {**base_values(cfg)}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_time_budget_stops_at_the_first_step_past_it_and_spans_the_schedules(tmp_path, monkeypatch):
    """Each step takes 7 s on a fake clock and nothing else takes any: train.minutes=1 stops after
    step 9 (63 s), with a checkpoint and the reason; the schedules span what the budget holds at
    the throughput seen (at step 4: 4 steps in 28 s, so 60 s hold 60/7 steps)."""
    from gancli.train import train

    clock = FakeClock()
    monkeypatch.setattr(timing, "clock", clock)
    real_call = Executor.__call__

    def seven_seconds(self):
        clock.now += 7.0
        return real_call(self)

    monkeypatch.setattr(Executor, "__call__", seven_seconds)
    run_dir = tmp_path / "run"
    summary = train(compose_train(*TINY, "train.minutes=1", "train.log_every=4", "train.ckpt_every=0",
                                  "schedule.lr_g.shape=linear", "schedule.lr_g.end=0"), run_dir)
    assert summary["status"] == "completed" and summary["ended_by"] == "train.minutes" and summary["steps"] == 9
    assert summary["train_s"] == summary["train_s_total"] == 63.0 and summary["target_steps"] is None
    assert checkpoint.load(run_dir / "checkpoints" / "last.pt")["step"] == 9
    rows = [json.loads(line) for line in (run_dir / "timing.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [4, 8, 9] and [r["train_s"] for r in rows] == [28.0, 56.0, 63.0]
    steps_in_budget = 60 / 7
    assert rows[0]["lr_g"] == pytest.approx(2e-4 * (1 - 4 / steps_in_budget))
    assert read_json(run_dir / "summary.json")["minutes"] == 1
    # resumed with a larger budget, it goes on from its 63 s until 2 minutes
    more = train(compose_train(*TINY, "train.minutes=2", "train.log_every=4", "train.ckpt_every=0",
                               "schedule.lr_g.shape=linear", "schedule.lr_g.end=0", "train.resume=auto"), run_dir)
    assert more["steps"] == 18 and more["train_s_total"] == 126.0 and more["ended_by"] == "train.minutes"
