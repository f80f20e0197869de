"""The real `gancli` entry points, run tiny on the CPU in subprocesses."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import TIMEOUT, TINY, Running, child_env, is_png, read_json, run_gancli


def test_train_writes_a_complete_run_folder(tiny_run):
    assert (tiny_run / ".hydra" / "config.yaml").is_file()
    assert (tiny_run / "config.yaml").is_file() and (tiny_run / "train.log").is_file()
    kept = sorted(p.name for p in (tiny_run / "checkpoints").iterdir())
    assert kept == ["last.pt", "step_000003.pt", "step_000006.pt"]
    assert sorted(p.name for p in (tiny_run / "samples").iterdir()) == ["step_000003.png", "step_000006.png"]
    assert all(is_png(p) for p in (tiny_run / "samples").iterdir())

    rows = [json.loads(line) for line in (tiny_run / "timing.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [2, 4, 6]
    for row in rows:
        assert set(row) >= {"step", "elapsed_s", "img_per_s", "d_step_ms", "g_step_ms", "data_ms", "peak_mem_mb"}
        assert row["img_per_s"] > 0 and row["d_step_ms"] > 0 and row["g_step_ms"] > 0 and row["peak_mem_mb"] > 0

    summary = read_json(tiny_run / "summary.json")
    assert summary["status"] == "completed" and summary["steps"] == 6
    assert summary["device"] == "cpu (1 thread)" and summary["precision"] == "fp32"
    assert summary["wall_s"] > 0 and summary["img_per_s"] > 0
    assert all(isinstance(summary[k], float) for k in ("loss_d", "loss_g"))
    assert summary["versions"]["torch"] == torch.__version__
    assert summary["data_samples"] == 1797 and summary["data_skipped"] == 0  # the bundled digits, all used
    assert "data: 1797 images in 10 classes" in (tiny_run / "train.log").read_text()

    state = torch.load(tiny_run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 6 and state["config"]["model"]["g_width"] == 8
    assert set(state) >= {"G", "D", "opt_g", "opt_d", "rng", "config", "scaler_g", "scaler_d"}


def test_sample_from_a_run(tiny_run, tmp_path):
    out = tmp_path / "samples"
    run_gancli("sample", f"ckpt={tiny_run / 'checkpoints' / 'last.pt'}", "n=20", f"out={out}", "batch_size=8",
               "interpolate=true", cwd=tmp_path)
    singles = sorted(p.name for p in out.glob("0*.png"))
    assert singles == [f"{i:06d}.png" for i in range(20)]
    assert is_png(out / "grid.png") and is_png(out / "interpolation.png")
    assert all(is_png(out / name) for name in singles)
    assert not (tmp_path / "outputs").exists() and not (tmp_path / ".hydra").exists()


def test_sample_from_a_run_folder_is_seeded(tiny_run, tmp_path):
    from gancli.config import SampleApp
    from gancli.sample import sample

    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        sample(SampleApp(ckpt=str(tiny_run), n=4, out=str(tmp_path / name), seed=seed))
    assert (tmp_path / "a" / "000003.png").read_bytes() == (tmp_path / "b" / "000003.png").read_bytes()
    assert (tmp_path / "a" / "000003.png").read_bytes() != (tmp_path / "c" / "000003.png").read_bytes()


def test_same_seed_same_weights_and_resume_is_exact(tmp_path, caplog):
    # in-process: train() is what the command runs once its config is composed
    from gancli.train import train
    from test_config import compose_train

    base = [a for a in TINY if not a.startswith("train.steps")] + ["train.ckpt_every=0"]
    train(compose_train(*base, "train.steps=8"), tmp_path / "straight")
    train(compose_train(*base, "train.steps=4"), tmp_path / "resumed")
    with caplog.at_level("INFO", logger="gancli.train"):
        train(compose_train(*base, "train.steps=8", "train.resume=auto"), tmp_path / "resumed")
    assert any(" for 4 more steps to step 8, batch 16" in r.getMessage() for r in caplog.records)  # not "8 steps"
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "resumed" / "checkpoints" / "last.pt", weights_only=True)
    assert straight["step"] == resumed["step"] == 8
    for net in ("G", "D"):
        for key, value in straight[net].items():
            assert torch.equal(value, resumed[net][key]), f"{net}.{key} differs after resume"
    summary = read_json(tmp_path / "resumed" / "summary.json")
    assert summary["resumed_from"].endswith("last.pt")


def test_resume_refuses_a_different_model(tiny_run, tmp_path):
    from gancli.errors import GancliError
    from gancli.train import train
    from test_config import compose_train

    with pytest.raises(GancliError, match=r"cannot resume .*: model.g_width 8 -> 16 would change the model"):
        train(compose_train(*TINY, "model.g_width=16", f"train.resume={tiny_run}"), tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_multirun_makes_one_complete_job_per_combination(tmp_path):
    tiny = [a for a in TINY if not a.startswith(("model.", "train.steps"))] + ["train.steps=2"]
    run_gancli("train", "-m", "optimizer.lr=0.0001,0.0002", "model=mlp", "model.width=16", *tiny,
               f"hydra.sweep.dir={tmp_path / 'sweep'}", cwd=tmp_path)
    jobs = sorted(p for p in (tmp_path / "sweep").iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]
    lrs = []
    for job in jobs:
        assert read_json(job / "summary.json")["status"] == "completed"
        assert (job / "checkpoints" / "last.pt").is_file() and is_png(job / "samples" / "step_000002.png")
        lrs.append(torch.load(job / "checkpoints" / "last.pt", weights_only=True)["config"]["optimizer"]["lr"])
    assert lrs == [0.0001, 0.0002]


def test_points_data_gives_scatter_plots(tmp_path):
    from gancli.config import SampleApp
    from gancli.sample import sample
    from gancli.train import train
    from test_config import compose_train

    train(compose_train("data=ring", "model=mlp", "model.width=16", "train.steps=4", "train.batch_size=32",
                        "train.log_every=2", "train.sample_every=2", "device=cpu"), tmp_path / "run")
    assert is_png(tmp_path / "run" / "samples" / "step_000004.png")
    sample(SampleApp(ckpt=str(tmp_path / "run"), n=100, out=str(tmp_path / "out")))
    assert is_png(tmp_path / "out" / "grid.png")
    assert len((tmp_path / "out" / "points.csv").read_text().splitlines()) == 101


def test_cfg_job_prints_the_composed_config(tmp_path):
    proc = run_gancli("train", "model=classic", "precision=bf16", "--cfg", "job", cwd=tmp_path)
    assert "name: classic" in proc.stdout and "name: bf16" in proc.stdout and "steps:" in proc.stdout
    assert not (tmp_path / "outputs").exists()
    proc = run_gancli("sample", "--cfg", "job", cwd=tmp_path)  # prints what must still be given
    assert "ckpt: ???" in proc.stdout


BAD_INPUT = [
    (["train", "precision=bf17"], "precision=bf17"),
    (["train", "train.steps=-5"], "train.steps=-5"),
    (["train", "train.unknown=1"], "train.unknown"),
    (["train", "device=cuda"], "device=cuda"),
    (["train", "device=mps"], "device=mps"),
    (["sample", "ckpt=missing.pt"], "missing.pt"),
    (["sample"], "ckpt"),
    (["fly"], "unknown command"),
    (["export", "ckpt=missing.pt"], "missing.pt"),
    (["export", "ckpt=missing.pt", "format=tflite"], "format"),
]


def _skip_if_present(args):
    if "device=cuda" in args and torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present here")


@pytest.mark.parametrize("args,expected", [BAD_INPUT[0], BAD_INPUT[5]])
def test_bad_input_is_one_clean_line(tmp_path, args, expected):
    """The real command line: exit status 2, one line, no traceback, no run folder."""
    proc = run_gancli(*args, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gancli: error:") and expected in lines[0], proc.stderr
    assert not (tmp_path / "outputs").exists()  # failed before any run folder was made


@pytest.mark.parametrize("args,expected", BAD_INPUT)
def test_bad_input_is_one_clean_line_in_process(tmp_path, monkeypatch, capsys, args, expected):
    """Every case through the dispatcher itself, in this process (no interpreter start each)."""
    from gancli import cli

    _skip_if_present(args)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as info:
        cli.main(args)
    assert info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gancli: error:") and expected in lines[0], lines
    assert not (tmp_path / "outputs").exists()


def _usage_cases(tmp_path: Path) -> list[tuple[list[str], str]]:
    bad_yaml = tmp_path / "configs" / "bad.yaml"
    bad_yaml.parent.mkdir(exist_ok=True)
    bad_yaml.write_text("defaults:\n  - train\nfoo: [1, 2\n")
    return [
        (["train", "-m", "seed=1,2", "--cfg", "hydra"], "--cfg and -m do not go together"),
        (["train", "--info", "--cfg", "job"], "--cfg and --info do not go together"),
        (["train", "--resolve"], "--resolve goes with --cfg"),
        (["train", "--config-dir", str(tmp_path / "configs"), "--config-name", "bad"], "bad.yaml"),
        (["train", "--config-dir", str(tmp_path / "absent")], "absent"),
        (["sample", "ckpt=run", "out=afile"], "out=afile is a file"),
        (["eval", "ckpt=run", "out=afile"], "out=afile is a file"),
        (["export", "ckpt=run", "out=."], "out=. is a folder; give the file to write"),
        (["sample", "ckpt=run", "mix=true", "out=mixed"], "mix=true mixes styles in W"),
        (["sample", "ckpt=run", "psi=1.5"], "psi=1.5"),
    ]


def test_hydra_usage_errors_are_one_line(tiny_run, tmp_path, monkeypatch, capsys):
    """Hydra's own errors (modes that exclude each other, YAML it cannot parse) print a traceback
    unless gancli catches them; each is one line and exit status 2."""
    from gancli import cli

    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").symlink_to(tiny_run)
    (tmp_path / "afile").write_text("a file, not a folder")
    for args, expected in _usage_cases(tmp_path):
        with pytest.raises(SystemExit) as info:
            cli.main(args)
        lines = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and len(lines) == 1 and expected in lines[0], (args, lines)
    assert (tmp_path / "afile").read_text() == "a file, not a folder"


def test_sample_and_eval_help_list_only_their_own_options(tmp_path, capsys):
    from gancli import cli

    for command, key in (("sample", "interpolate"), ("eval", "inception_weights")):
        with pytest.raises(SystemExit):
            cli.main([command, "--help"])
        out = capsys.readouterr().out
        assert f"gancli {command}:" in out and f"{key}:" in out and "device: auto, cpu, cuda, mps" in out
        assert "model:" not in out and "optimizer" not in out and "== Configuration groups ==" not in out
        if command == "sample":  # class=3 is read by gancli, not a schema key, and listed all the same
            assert "\nclasses: null" in out and "\nclass: one class, by index or name" in out


def test_sample_keeps_only_the_grid_s_images_in_memory(tiny_run, tmp_path, monkeypatch):
    """n samples are written in batches; only the first GRID_MAX are kept for grid.png, as copies,
    so no batch stays alive because a view of it was kept."""
    import gc
    import weakref

    from gancli import generator as generator_module, sample as sample_module
    from gancli.config import SampleApp

    batches, alive = [], []
    real_batches, real_grid = generator_module.generate_batches, sample_module.save_grid

    def generate_batches(*args, **kwargs):
        for start, x in real_batches(*args, **kwargs):
            batches.append(weakref.ref(x))
            yield start, x

    def save_grid(images, path, nrow=None):
        gc.collect()
        alive.append(sum(ref() is not None for ref in batches))
        real_grid(images, path, nrow)

    monkeypatch.setattr(generator_module, "generate_batches", generate_batches)
    monkeypatch.setattr(sample_module, "save_grid", save_grid)
    monkeypatch.setattr(sample_module, "GRID_MAX", 20)
    sample_module.sample(SampleApp(ckpt=str(tiny_run), n=96, batch_size=16, out=str(tmp_path / "out")))
    assert len(batches) == 6 and alive == [1]  # the loop's last batch, and no other
    assert len(list((tmp_path / "out").glob("0*.png"))) == 96


def test_corrupt_and_foreign_checkpoints(tiny_run, tmp_path):
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes((tiny_run / "checkpoints" / "last.pt").read_bytes()[:1000])
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {}}, foreign)
    from gancli.config import SampleApp
    from gancli.errors import GancliError
    from gancli.sample import sample

    for path, expected in ((corrupt, "corrupt"), (foreign, "not a gancli checkpoint")):
        with pytest.raises(GancliError, match=expected):  # one line and exit 2: test_bad_input_is_one_clean_line
            sample(SampleApp(ckpt=str(path), out=str(tmp_path / "out")))
        assert not (tmp_path / "out").exists()


def test_installed_console_script(tmp_path):
    script = Path(sys.executable).with_name("gancli")
    if not script.exists():
        pytest.skip("gancli is not installed as a console script in this environment")
    proc = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=tmp_path, env=child_env(),
                          timeout=TIMEOUT)
    assert proc.returncode == 0 and "train" in proc.stdout and "sample" in proc.stdout


def test_train_help_lists_the_groups_and_only_real_options(tmp_path):
    proc = run_gancli("train", "--help", cwd=tmp_path)
    section = proc.stdout.split("== Configuration groups ==")[1].split("== Config ==")[0]
    groups = dict(line.split(": ", 1) for line in section.splitlines() if ": " in line and "(" not in line)
    from gancli.models import FAMILIES

    assert groups["model"] == ", ".join(sorted(FAMILIES))  # the typed schemas behind them are not options
    assert groups["logger"] == "none, tensorboard" and groups["hparams_search"] == "optuna_lr"


@pytest.mark.parametrize("signum,exit_code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_or_sigterm_saves_a_checkpoint_and_the_run_resumes(tmp_path, signum, exit_code):
    run = tmp_path / "run"
    args = [*[a for a in TINY if not a.startswith(("train.steps", "train.log"))], "train.steps=100000",
            "train.log_every=1", f"hydra.run.dir={run}"]
    with Running("train", *args, cwd=tmp_path) as child:
        child.wait_for("step 3/")  # training is under way
        child.proc.send_signal(signum)
        assert child.finish() == exit_code, child.output
        output = child.output
    summary = read_json(run / "summary.json")
    assert summary["status"] == "interrupted" and summary["steps"] >= 3
    assert summary["stopped_by"] == signal.Signals(signum).name
    saved = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert saved["step"] == summary["steps"]
    assert "train.resume=auto" in output and "Traceback" not in output
    run_gancli("train", *TINY, f"train.steps={saved['step'] + 2}", "train.resume=auto", f"hydra.run.dir={run}",
               cwd=tmp_path)
    assert read_json(run / "summary.json")["steps"] == saved["step"] + 2


def test_a_resume_takes_the_run_s_own_config_and_needs_nothing_retyped(tmp_path, caplog):
    from gancli.train import train
    from test_config import compose_train

    run_dir = tmp_path / "run"
    own = ["experiment=none", "data=ring", "data.n=512", "model=mlp", "model.width=16", "train.batch_size=32",
           "train.log_every=2", "train.sample_every=0", "train.ckpt_every=0", "device=cpu"]
    train(compose_train(*own, "train.steps=4"), run_dir)
    # the real command line, as a requeued job or a user has it: the folder, and how far to go
    proc = run_gancli("train", "train.resume=auto", "train.steps=6", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    summary = read_json(run_dir / "summary.json")
    assert summary["steps"] == 6 and summary["steps_run"] == 2 and summary["resumed_from"].endswith("last.pt")
    assert summary["data"] == "ring" and "for 2 more steps to step 6" in proc.stdout
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["model"]["width"] == 16 and config["data"]["n"] == 512 and config["train"]["steps"] == 6
    # what would change the model, its data or the optimizer: each key, old -> new, in one line
    proc = run_gancli("train", "train.resume=auto", "train.steps=8", "model=mlp", "model.width=32", "data.n=64",
                      "optimizer=sgd", f"hydra.run.dir={run_dir}", cwd=tmp_path, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert "model.width 16 -> 32" in line and "data.n 512 -> 64" in line and "optimizer.name adam -> sgd" in line
    assert read_json(run_dir / "summary.json")["steps"] == 6  # refused before it touched the run


def test_resume_auto_in_a_folder_without_a_checkpoint_starts_fresh_and_says_so(tmp_path, caplog):
    from gancli.train import train
    from test_config import compose_train

    with caplog.at_level("INFO", logger="gancli.train"):
        summary = train(compose_train(*TINY, "train.resume=auto"), tmp_path / "new")
    assert summary["steps"] == 6 and summary["resumed_from"] is None
    assert any("train.resume=auto: no checkpoint in" in r.getMessage() and "so this is a new run" in r.getMessage()
               for r in caplog.records)
