"""Sweeps: the joblib, SLURM and Optuna plugins, a sweep's failed jobs, and the TensorBoard logger."""

from __future__ import annotations

import csv
import json
import math

import pytest
import yaml
from hydra import compose, initialize_config_module
from hydra.core.config_store import ConfigStore
from hydra.core.plugins import Plugins

import gancli.train
from conftest import TINY, is_png, read_json, run_gancli
from gancli.cli import preflight
from gancli.errors import GancliError


def compose_with_hydra(*overrides: str):
    with initialize_config_module("gancli.configs", version_base="1.3"):
        return compose("train", overrides=list(overrides), return_hydra_config=True)


def test_slurm_launcher_config_composes_with_its_cluster_keys():
    cfg = compose_with_hydra("hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30")
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.partition, launcher.timeout_min) == ("gpu", 30)
    assert launcher.gpus_per_node == 1 and launcher.mem_gb == 32 and launcher.tasks_per_node == 1


def test_optuna_search_config_composes_and_turns_evaluation_on():
    cfg = compose_with_hydra("hparams_search=optuna_lr", "train.steps=300")
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "minimize"
    assert set(sweeper.params) == {"optimizer.lr_g", "optimizer.lr_d", "optimizer.beta1"}
    assert cfg.eval.every == 300  # one evaluation, at the last step, gives the objective


@pytest.mark.parametrize(
    "group,name,args,extra",
    [
        ("launcher", "joblib", ["-m", "hydra/launcher=joblib", "seed=1,2"], "joblib"),
        ("launcher", "submitit_slurm", ["-m", "hydra/launcher=slurm"], "slurm"),
        ("sweeper", "optuna", ["-m", "hparams_search=optuna_lr"], "optuna"),
    ],
)
def test_a_missing_plugin_is_one_line_naming_the_extra(group, name, args, extra):
    Plugins.instance()  # the plugins register their configs on discovery; hide one as if not installed
    store = ConfigStore.instance().repo["hydra"][group]
    node = store.pop(f"{name}.yaml")
    try:
        with pytest.raises(GancliError) as info:
            preflight(gancli.train, args)
    finally:
        store[f"{name}.yaml"] = node
    message = str(info.value)
    assert "\n" not in message and f'pip install "gancli[{extra}]"' in message


@pytest.mark.slow
def test_joblib_sweep_runs_in_parallel_and_a_failed_job_does_not_end_it(tmp_path):
    empty = tmp_path / "no_images"
    empty.mkdir()
    sweep = tmp_path / "sweep"
    proc = run_gancli(
        "train", "-m", *TINY, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
        "data=digits,folder", f"data.path={empty}", "optimizer.lr=1e-4,2e-4", f"hydra.sweep.dir={sweep}",
        cwd=tmp_path,
    )
    summaries = {}
    for job in sweep.iterdir():
        if job.is_dir() and job.name.isdigit():
            overrides = yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text())
            summaries[tuple(o for o in overrides if o.startswith(("data=", "optimizer.lr=")))] = read_json(
                job / "summary.json")
    assert len(summaries) == 4
    for (data, lr), summary in summaries.items():
        if data == "data=digits":
            assert summary["status"] == "completed" and summary["steps"] == 6
            assert summary["objective"] == {"name": "loss_g", "value": summary["loss_g"]}
        else:
            assert summary["status"] == "failed" and "holds no images" in summary["error"]
    assert (proc.stdout + proc.stderr).count("gancli: error:") == 2  # each failed job names its problem, once

    # the sweep ends with the report of its runs
    with open(sweep / "report.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(row["status"] for row in rows) == ["completed", "completed", "failed", "failed"]
    for name in ("loss.png", "img_per_s.png"):
        assert is_png(sweep / name)


def test_optuna_search_minimises_what_train_returns(tmp_path):
    sweep = tmp_path / "search"
    run_gancli(
        "train", "-m", "hparams_search=optuna_lr", "hydra.sweeper.n_trials=3", *TINY, "eval.every=0",
        f"hydra.sweep.dir={sweep}", cwd=tmp_path,
    )
    values = [read_json(sweep / str(k) / "summary.json")["objective"]["value"] for k in range(3)]
    assert all(math.isfinite(v) for v in values)
    result = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert result["best_value"] == pytest.approx(min(values))
    best = read_json(sweep / str(values.index(min(values))) / "summary.json")
    assert best["objective"]["name"] == "loss_g"


def test_tensorboard_logger_writes_curves_and_sample_grids(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "run"
    loop = [arg for arg in TINY if not arg.startswith("model.")]
    run_gancli("train", *loop, "logger=tensorboard", "data=ring", "data.n=512", "model=mlp", "model.width=16",
               "eval.every=3", "eval.n=200", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert [e.step for e in events.Scalars("loss_g")] == [2, 4, 6]
    timing = [json.loads(line) for line in (run_dir / "timing.jsonl").read_text().splitlines()]
    assert [e.value for e in events.Scalars("loss_d")] == pytest.approx([row["loss_d"] for row in timing])
    assert {"img_per_s", "mfu", "eval/modes", "eval/reverse_kl"} <= set(tags["scalars"])
    assert [e.step for e in events.Images("samples")] == [3, 6]


def test_search_intervals_are_checked_at_both_ends_before_any_trial():
    search = ["-m", "hparams_search=optuna_lr", "seed=choice(1,2)"]
    assert len(preflight(gancli.train, [*search, "optimizer.lr=tag(log, interval(1e-5, 1e-3))"])) == 4
    with pytest.raises(GancliError, match=r"optimizer.lr=-1.0 is not allowed"):
        preflight(gancli.train, [*search, "optimizer.lr=interval(-1, 1e-3)"])


def test_a_crashing_job_is_marked_and_the_sweep_reports(tmp_path, monkeypatch, capsys):
    """A job that dies of something other than a gancli error (out of memory, a bug) is marked
    failed with its error, and the sweep goes on to its report; the same sweep folder is not
    reused without train.resume."""
    from gancli import cli
    from gancli import train as train_module

    real = train_module._train

    def crash_on_seed_1(cfg, run_dir, folder):
        if cfg.seed == 1:
            raise RuntimeError("CUDA out of memory (simulated)")
        return real(cfg, run_dir, folder)

    monkeypatch.setattr(train_module, "_train", crash_on_seed_1)
    monkeypatch.chdir(tmp_path)
    sweep = tmp_path / "sweep"
    args = ["train", "-m", *TINY, "seed=0,1", f"hydra.sweep.dir={sweep}"]
    cli.main(args)
    assert read_json(sweep / "1" / "summary.json") == {**read_json(sweep / "1" / "summary.json"), "status": "failed",
                                                       "error": "RuntimeError: CUDA out of memory (simulated)"}
    with open(sweep / "report.csv", newline="") as f:
        assert sorted(row["status"] for row in csv.DictReader(f)) == ["completed", "failed"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == 2
    assert f"hydra.sweep.dir={sweep} already holds a sweep's runs" in capsys.readouterr().err


def test_an_interrupted_sweep_exits_with_the_signal_and_reports_the_jobs_never_started(tmp_path):
    import signal

    from conftest import Running
    from gancli.report import report

    sweep = tmp_path / "sweep"
    long_jobs = ["-m", *TINY[:3], "train.steps=100000", "train.log_every=1", "device=cpu", "seed=1,2,3",
                 f"hydra.sweep.dir={sweep}"]
    with Running("train", *long_jobs, cwd=tmp_path) as sweep_run:
        sweep_run.wait_for("step 2/")  # the first job trains
        planned = (sweep / "multirun.yaml").read_bytes()
        # a second sweep into the same folder: refused before any of its jobs starts
        second = run_gancli("train", "-m", *TINY, "seed=7,8", f"hydra.sweep.dir={sweep}", cwd=tmp_path, check=False)
        assert second.returncode == 2 and second.stderr.strip().splitlines() == [
            f"gancli: error: another gancli process (pid {sweep_run.proc.pid}) is running a sweep in {sweep}; "
            "wait for it to end, or choose another hydra.sweep.dir"]
        assert (sweep / "multirun.yaml").read_bytes() == planned
        sweep_run.proc.send_signal(signal.SIGTERM)  # as a cluster's scheduler stops it
        assert sweep_run.finish() == 128 + signal.SIGTERM  # 143, as a single run exits for SIGTERM
        out = sweep_run.output
    assert "Traceback" not in out and "gancli: interrupted" in out
    assert out.count("not started") == 2  # the sweep's own report, printed on the way out
    assert not (sweep / ".gancli.lock").exists()  # the sweep folder is free again
    rows = report([sweep])  # and `gancli report` later says the same
    assert [(row["status"], row["overrides"]) for row in rows] == [
        ("interrupted", "seed=1"), ("not started", "seed=2"), ("not started", "seed=3")]


def test_a_sweep_job_refused_by_its_folder_changes_not_one_byte_there(tmp_path):
    sweep = tmp_path / "sweep"
    run_gancli("train", "-m", *TINY, "seed=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    first = {p: p.read_bytes() for p in (sweep / "0").rglob("*") if p.is_file()}
    assert (sweep / "0" / ".hydra" / "overrides.yaml").read_text().endswith("- seed=1\n")  # gancli wrote it
    # job 0 would resume the run above with another model: refused; job 1 is new, and trains
    proc = run_gancli("train", "-m", *TINY, "model.g_width=16", "seed=1,2", "train.resume=auto",
                      f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert "model.g_width 8 -> 16 would change the model" in proc.stderr
    assert {p: p.read_bytes() for p in (sweep / "0").rglob("*") if p.is_file()} == first
    assert read_json(sweep / "1" / "summary.json")["status"] == "completed"
    written = (sweep / "1" / ".hydra" / "overrides.yaml").read_text()
    assert "- model.g_width=16\n" in written and "- seed=2\n" in written
