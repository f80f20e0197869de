"""`gancli report`: run folders built by hand (fast), one real tiny run, and the sweep callback."""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from conftest import is_png, read_json, run_gancli
from omegaconf import OmegaConf

from gancli import report
from gancli.errors import GancliError

SHARED = ["model.g_width=8", "train.steps=6", "device=cpu"]


def make_run(folder: Path, overrides: list[str] | None = SHARED, steps: int = 6,
             summary: dict[str, Any] | None = None, metrics: list[dict[str, Any]] | None = None) -> Path:
    """A run folder as gancli train writes it: overrides, timing rows every 2 steps up to `steps`, a summary."""
    (folder / ".hydra").mkdir(parents=True)
    if overrides is not None:
        (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    rows = [{"step": s, "elapsed_s": 0.1 * s, "img_per_s": 100.0 * s, "loss_d": 1.0 / s, "loss_g": 2.0 / s}
            for s in range(2, steps + 1, 2)]
    (folder / "timing.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if metrics is not None:
        (folder / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if summary is not None:
        (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def completed(steps: int = 6, **extra: Any) -> dict[str, Any]:
    return {"status": "completed", "steps": steps, "target_steps": steps, "wall_s": 1.5, "train_s": 1.0,
            "img_per_s": 400.0, "loss_d": 0.5, "loss_g": 0.9, "metrics": None, **extra}


def by_run(out: Path) -> dict[str, dict[str, Any]]:
    return {row["run"]: row for row in read_json(out / "report.json")}


def test_sweep_gives_one_row_per_job_with_the_overrides_that_differ(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    for job, lr in enumerate(["1e-4", "2e-4", "3e-4", "4e-4", "5e-4", "6e-4", "7e-4", "8e-4", "9e-4", "1e-3", "2e-3"]):
        make_run(sweep / str(job), overrides=[*SHARED, f"optimizer.lr={lr}", "hydra.sweep.dir=x"],
                 summary=completed())
    (sweep / "multirun.yaml").write_text("hydra: {}\n")

    report.main([str(sweep)])

    rows = read_json(sweep / "report.json")
    assert [row["run"] for row in rows] == [str(job) for job in range(11)]  # 10 after 9
    assert [row["overrides"] for row in rows][:2] == ["optimizer.lr=1e-4", "optimizer.lr=2e-4"]
    assert {row["status"] for row in rows} == {"completed"}
    first = rows[0]
    assert (first["steps"], first["target_steps"], first["wall_s"], first["img_per_s"]) == (6, 6, 1.5, 400.0)
    assert (first["loss_d"], first["loss_g"], first["notes"]) == (0.5, 0.9, None)
    with open(sweep / "report.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 11 and list(table[0]) == report.COLUMNS + ["notes"]
    assert table[0]["overrides"] == "optimizer.lr=1e-4" and table[0]["steps"] == "6"
    assert is_png(sweep / "loss.png") and is_png(sweep / "img_per_s.png")
    assert not (sweep / "metrics.png").exists()  # no run was evaluated
    printed = capsys.readouterr().out
    assert "optimizer.lr=2e-3" in printed and "every run also has: model.g_width=8" in printed


def test_one_run_shows_all_its_overrides_and_defaults_when_none(tmp_path):
    run = make_run(tmp_path / "run", summary=completed())
    report.main([str(run), f"out={tmp_path / 'out'}"])
    assert by_run(tmp_path / "out")["run"]["overrides"] == " ".join(SHARED)

    make_run(tmp_path / "two" / "a", overrides=[], summary=completed())
    make_run(tmp_path / "two" / "b", overrides=["train.steps=6"], summary=completed())
    rows = report.report([tmp_path / "two"])
    assert [row["overrides"] for row in rows] == ["(defaults)", "train.steps=6"]


def test_broken_runs_are_reported_with_the_rest(tmp_path):
    root = tmp_path / "runs"
    make_run(root / "good", summary=completed())
    corrupt = make_run(root / "corrupt", steps=4)
    (corrupt / "summary.json").write_text('{"status": "compl')
    with open(corrupt / "timing.jsonl", "a") as f:
        f.write('{"step": 6, "elapsed_s": 0.')  # killed mid-line
    make_run(root / "no_hydra", overrides=None, steps=2)
    bad_yaml = make_run(root / "bad_yaml", summary=completed())
    (bad_yaml / ".hydra" / "overrides.yaml").write_text("- [unclosed\n")
    (root / "empty").mkdir()
    (root / "empty" / "timing.jsonl").write_text("")
    (root / "not_a_run" / "deeper").mkdir(parents=True)

    report.main([str(root)])

    rows = by_run(root)
    assert sorted(rows) == ["bad_yaml", "corrupt", "empty", "good", "no_hydra"]
    assert rows["good"]["status"] == "completed" and rows["good"]["notes"] is None
    assert rows["corrupt"]["status"] == "broken" and rows["corrupt"]["steps"] == 4
    assert "summary.json unreadable" in rows["corrupt"]["notes"] and "1 unreadable line" in rows["corrupt"]["notes"]
    assert rows["corrupt"]["loss_d"] == 0.25  # the last timing row that parsed
    assert rows["no_hydra"]["status"] == "incomplete" and rows["no_hydra"]["overrides"] is None
    assert "overrides.yaml missing" in rows["no_hydra"]["notes"]
    assert rows["bad_yaml"]["status"] == "completed" and "overrides.yaml unreadable" in rows["bad_yaml"]["notes"]
    assert rows["empty"]["status"] == "broken" and rows["empty"]["steps"] is None
    assert is_png(root / "loss.png")


def test_failed_interrupted_and_incomplete_runs_show_their_last_step(tmp_path, capsys):
    root = tmp_path / "runs"
    make_run(root / "failed", steps=4, summary={"status": "failed", "error": "CUDA out of memory"})
    make_run(root / "interrupted", steps=4, summary={**completed(), "status": "interrupted", "steps": 5,
                                                     "target_steps": 10})
    incomplete = make_run(root / "incomplete", steps=6)
    (incomplete / "config.yaml").write_text("train:\n  steps: 20\n")

    report.main([str(root)])

    rows = by_run(root)
    assert rows["failed"]["status"] == "failed" and rows["failed"]["steps"] == 4  # from timing.jsonl
    assert rows["failed"]["notes"] == "CUDA out of memory" and rows["failed"]["loss_g"] == 0.5
    assert rows["interrupted"]["status"] == "interrupted" and rows["interrupted"]["steps"] == 5
    assert rows["incomplete"]["status"] == "incomplete" and rows["incomplete"]["steps"] == 6
    assert rows["incomplete"]["target_steps"] == 20 and rows["incomplete"]["wall_s"] == pytest.approx(0.6)
    assert rows["incomplete"]["img_per_s"] == 400.0  # mean of the timing rows
    printed = capsys.readouterr().out
    assert "5/10" in printed and "6/20" in printed and "CUDA out of memory" in printed


def test_metric_columns_are_the_union_over_runs(tmp_path):
    root = tmp_path / "runs"
    protocol = {"protocol": {"feature_extractor": "none"}, "note": "a string is not a metric"}
    make_run(root / "a", summary=completed(), metrics=[{"step": 3, "fd": 2.0, "modes": 5, **protocol},
                                                       {"step": 6, "fd": 1.0, "modes": 7, **protocol}])
    make_run(root / "b", summary=completed(metrics={"step": 6, "kl": 0.25, **protocol}))
    make_run(root / "c", summary=completed())

    report.main([str(root)])

    with open(root / "report.csv", newline="") as f:
        header = next(csv.reader(f))
    assert header == [*report.COLUMNS, "fd", "modes", "kl", "notes"]
    rows = by_run(root)
    assert (rows["a"]["fd"], rows["a"]["modes"], rows["a"]["kl"]) == (1.0, 7, None)
    assert (rows["b"]["fd"], rows["b"]["kl"]) == (None, 0.25)
    assert rows["c"]["fd"] is rows["c"]["kl"] is None
    assert is_png(root / "metrics.png")


def test_mistakes_are_one_line_errors(tmp_path, capsys):
    proc = run_gancli("report", str(tmp_path / "no" / "such" / "dir"), cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("gancli: error: ") and proc.stderr.count("\n") == 1
    assert "does not exist" in proc.stderr

    with pytest.raises(GancliError, match="no run folders"):
        report.main([str(tmp_path)])
    make_run(tmp_path / "run", summary=completed())
    with pytest.raises(GancliError, match="unknown argument 'colour=red'"):
        report.main([str(tmp_path / "run"), "colour=red"])
    with pytest.raises(GancliError, match="no folder given"):
        report.main([])
    report.main(["--help"])
    assert capsys.readouterr().out.startswith("usage: gancli report")


def test_sweep_callback_writes_the_report_into_the_sweep_folder(tmp_path, caplog):
    sweep = tmp_path / "sweep"
    for job in range(2):
        make_run(sweep / str(job), overrides=[*SHARED, f"seed={job}"], summary=completed())
    callback = report.SweepReport()

    callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep)}}}))
    assert [row["overrides"] for row in read_json(sweep / "report.json")] == ["seed=0", "seed=1"]
    assert is_png(sweep / "loss.png")

    with caplog.at_level(logging.WARNING):  # a report problem never fails a finished sweep
        callback.on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "gone")}}}))
    assert "no report for the sweep" in caplog.text


def test_report_on_a_real_run(tiny_run, tmp_path):
    out = tmp_path / "out"
    proc = run_gancli("report", str(tiny_run), f"out={out}", cwd=tmp_path)
    assert "completed" in proc.stdout
    [row] = read_json(out / "report.json")
    summary = read_json(tiny_run / "summary.json")
    assert row["run"] == tiny_run.name and row["status"] == "completed" and row["steps"] == 6
    assert row["img_per_s"] == summary["img_per_s"] and row["loss_g"] == summary["loss_g"]
    assert "train.steps=6" in row["overrides"] and "hydra." not in row["overrides"]
    assert all(is_png(out / name) for name in ("loss.png", "img_per_s.png"))


def test_over_seed_gives_means_and_standard_errors(tmp_path, capsys):
    sweep = tmp_path / "sweep"
    modes = {("1", "0"): 6, ("1", "1"): 8, ("1", "2"): 7, ("2", "0"): 8, ("2", "1"): 8}
    for job, ((pack, seed), m) in enumerate(modes.items()):
        make_run(sweep / str(job), overrides=[*SHARED, f"model.pack={pack}", f"seed={seed}"],
                 summary=completed(metrics={"modes": m}))
    make_run(sweep / "5", overrides=[*SHARED, "model.pack=2", "seed=2"], summary={"status": "failed", "error": "x"})
    report.main([str(sweep), "over=seed"])
    groups = {g["overrides"]: g for g in read_json(sweep / "report_over_seed.json")}
    assert set(groups) == {"model.pack=1", "model.pack=2"}
    one, two = groups["model.pack=1"], groups["model.pack=2"]
    assert (one["runs"], one["left_out"], two["runs"], two["left_out"]) == (3, 0, 2, 1)
    assert one["modes"] == pytest.approx(7.0) and one["modes_se"] == pytest.approx(1 / 3 ** 0.5)  # s.d. 1 over 3 runs
    assert two["modes"] == 8 and two["modes_se"] == 0
    out = capsys.readouterr().out
    assert "means over seed" in out and "7 ± 0.58" in out and "(+1 failed)" in out
    with open(sweep / "report_over_seed.csv") as f:
        assert next(csv.reader(f))[:5] == ["overrides", "runs", "left_out", "steps", "steps_se"]
    with pytest.raises(GancliError, match="over=a b"):
        report.main([str(sweep), "over=a b"])


def test_metrics_are_plotted_against_training_time_where_rows_have_it(tmp_path):
    """Each evaluation row records its minutes of training: a fast and a slow run compare at
    equal time in metrics_time.png; the time columns are not metrics."""
    root = tmp_path / "runs"
    make_run(root / "fast", summary=completed(),
             metrics=[{"step": 100, "train_s": 60.0, "elapsed_s": 70.0, "fd": 3.0},
                      {"step": 200, "train_s": 120.0, "elapsed_s": 140.0, "fd": 2.0}])
    make_run(root / "slow", summary=completed(),
             metrics=[{"step": 100, "train_s": 240.0, "elapsed_s": 250.0, "fd": 2.5}])
    report.main([str(root)])
    with open(root / "report.csv", newline="") as f:
        header = next(csv.reader(f))
    assert "fd" in header and "train_s" not in header and "elapsed_s" not in header
    assert is_png(root / "metrics.png") and is_png(root / "metrics_time.png")


def test_a_time_budget_run_has_no_target_steps(tmp_path):
    """A run that trained for train.minutes reached its steps with no number to reach: the table
    shows them alone, finished or still running."""
    root = tmp_path / "runs"
    make_run(root / "done", summary=completed(steps=6, target_steps=None, minutes=0.5))
    running = make_run(root / "running")
    (running / "config.yaml").write_text("train:\n  steps: 500\n  minutes: 0.5\n")
    report.main([str(root)])
    rows = by_run(root)
    assert rows["done"]["target_steps"] is None and rows["done"]["steps"] == 6
    assert rows["running"]["status"] == "incomplete" and rows["running"]["target_steps"] is None
