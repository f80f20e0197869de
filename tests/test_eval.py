"""`gancli eval` and evaluation during training, tiny on the CPU."""

import json

import pytest

from conftest import is_png, read_json, run_gancli


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty classifier cache for this test (the subprocesses inherit the variable)."""
    monkeypatch.setenv("GANCLI_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def shared_cache(shared_cache_dir, monkeypatch):
    """A classifier cache shared by the tests that do not care who trained it."""
    monkeypatch.setenv("GANCLI_CACHE", str(shared_cache_dir))
    return shared_cache_dir


def test_eval_of_an_image_run(tiny_run, tmp_path, shared_cache, monkeypatch):
    out = tmp_path / "eval"
    fresh = not any(shared_cache.glob("classifier-*.pt"))
    proc = run_gancli("eval", f"ckpt={tiny_run}", "n=300", f"out={out}", cwd=tmp_path)
    metrics = read_json(out / "metrics.json")
    assert metrics["step"] == 6 and metrics["n_classes"] == 10
    assert metrics["classes_covered"] in range(1, 11) and metrics["class_kl"] >= 0
    assert metrics["fd"] > metrics["fd_real_floor"] > 0  # 6 steps of training are far from real
    assert metrics["classifier_accuracy"] > 0.9 and metrics["classifier_near_chance"] is False
    assert all(0 <= metrics[key] <= 1 for key in ("precision", "recall", "coverage")) and metrics["density"] >= 0
    protocol = metrics["protocol"]
    assert protocol["n_generated"] == 300 and protocol["n_real"] == 300 and protocol["data"] == "digits"
    assert len(protocol["extractor_hash"]) == 16 and protocol["data_split"] == "train"
    assert ("training the reference classifier" in proc.stdout) == fresh
    assert "eval.inception_weights" in metrics["inception_note"]  # no weights here: a note, the rest still runs
    cached = list(shared_cache.glob("classifier-*.pt"))
    assert len(cached) == 1
    # a second evaluation (in this process) reuses the cached classifier and gives the same numbers
    from gancli import classifier
    from gancli.config import EvalApp
    from gancli.evaluate import run_eval

    fits = []
    monkeypatch.setattr(classifier, "_fit", lambda *a: fits.append(1))
    run_eval(EvalApp(ckpt=str(tiny_run), n=300, out=str(tmp_path / "again"), cache_dir=str(shared_cache)))
    assert fits == []
    again = read_json(tmp_path / "again" / "metrics.json")
    assert again["fd"] == pytest.approx(metrics["fd"]) and again["protocol"] == protocol
    # the data's own images, scored as if generated, are realistic and varied where the tiny run is not
    import torch

    from gancli.config import DataConfig, DataName
    from gancli.data import load_data, to_model
    from gancli.quality import evaluate

    data_cfg = DataConfig(name=DataName.digits)
    data = load_data(data_cfg, 0)
    own = evaluate(to_model(data.x[:300]), data, data_cfg, torch.device("cpu"), 0, str(shared_cache))
    assert min(own["precision"], own["recall"], own["coverage"]) > 0.7 and own["density"] > 0.7
    assert max(metrics["precision"], metrics["recall"], metrics["coverage"]) < 0.5


def test_training_evaluates_a_mixture(tmp_path, shared_cache):
    from gancli.config import EvalApp
    from gancli.evaluate import run_eval
    from gancli.train import train
    from test_config import compose_train

    run = tmp_path / "run"
    train(compose_train("experiment=ring", "train.steps=40", "train.log_every=20", "train.sample_every=0",
                        "eval.every=20", "eval.n=500", "device=cpu"), run)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [20, 40]
    for row in rows:
        assert row["n_modes"] == 8 and 0 <= row["modes"] <= 8 and 0 <= row["hq"] <= 1
        assert row["protocol"]["n_generated"] == 500
    assert read_json(run / "summary.json")["metrics"] == rows[-1]
    run_eval(EvalApp(ckpt=str(run), n=400))
    assert read_json(run / "metrics.json")["protocol"]["n_generated"] == 400
    assert is_png(run / "eval_scatter.png")


def test_eval_of_a_missing_checkpoint_is_one_line(tmp_path, shared_cache):
    from gancli import cli, evaluate
    from gancli.errors import GancliError

    with pytest.raises(GancliError, match="none.pt"):
        cli.preflight(evaluate, [f"ckpt={tmp_path / 'none.pt'}", "device=cpu"])


@pytest.mark.slow
def test_stacked_mnist_eval(tmp_path, cache):
    import gzip
    import struct

    import numpy as np

    rng = np.random.default_rng(0)
    for name, array in (("t10k-images-idx3-ubyte", rng.integers(0, 256, size=(100, 28, 28))),
                        ("t10k-labels-idx1-ubyte", np.arange(100) % 10)):
        header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))
    from gancli.config import EvalApp
    from gancli.evaluate import run_eval
    from gancli.train import train
    from test_config import compose_train

    run = tmp_path / "run"
    train(compose_train("data=stacked_mnist", f"data.root={tmp_path}", "data.split=test", "data.n=200",
                        "model.g_width=8", "model.d_width=8", "train.steps=2", "train.batch_size=16",
                        "device=cpu"), run)
    run_eval(EvalApp(ckpt=str(run), n=100, cache_dir=str(cache)))
    metrics = read_json(run / "metrics.json")
    assert metrics["n_modes"] == 1000 and 1 <= metrics["modes"] <= 100
    assert 0 <= metrics["kl"] <= np.log(1000) + 1e-9
    assert metrics["protocol"]["n_real"] == 600 and "single channels" in metrics["protocol"]["feature_extractor"]


@pytest.mark.slow
def test_inception_fid_and_kid_with_weights_on_disk(tiny_run, tmp_path, shared_cache, monkeypatch):
    from torch_fidelity import feature_extractor_inceptionv3 as fidelity

    # A weights file with torch-fidelity's layout and random values: the real code path runs,
    # the numbers mean nothing (the published weights cannot be fetched here).
    with monkeypatch.context() as patch:
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *a, **k: None)
        patch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        import torch

        torch.manual_seed(0)
        weights = tmp_path / "weights-inception-2015-12-05-6726825d.pth"
        torch.save(fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict(), weights)
    out = tmp_path / "eval"
    run_gancli("eval", f"ckpt={tiny_run}", "n=16", f"out={out}", f"inception_weights={weights}", cwd=tmp_path)
    metrics = read_json(out / "metrics.json")
    assert metrics["inception_fid"] >= 0 and "inception_note" not in metrics
    assert metrics["inception_kid_std"] >= 0 and isinstance(metrics["inception_kid"], float)
    assert metrics["inception_protocol"]["n_real"] == metrics["inception_protocol"]["n_generated"] == 16
    from gancli import cli, evaluate
    from gancli.errors import GancliError

    with pytest.raises(GancliError, match="absent.pth"):
        cli.preflight(evaluate, [cli.quote_path(f"ckpt={tiny_run}"), f"inception_weights={tmp_path / 'absent.pth'}"])


def test_a_reference_classifier_near_chance_is_said(tmp_path, caplog):
    """Two 'classes' of the same noise: no classifier can tell them apart, and the metrics say so."""
    import torch

    from gancli.config import DataConfig, DataName
    from gancli.datasets import Data
    from gancli.quality import evaluate, near_chance

    gen = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (200, 1, 16, 16), generator=gen, dtype=torch.uint8)
    data = Data(x=noise, labels=torch.arange(200) % 2, classes=["a", "b"])
    fake = torch.rand(64, 1, 16, 16, generator=gen) * 2 - 1
    cfg = DataConfig(name=DataName.folder, path=str(tmp_path), image_size=16)
    with caplog.at_level("WARNING", logger="gancli.quality"):
        metrics = evaluate(fake, data, cfg, torch.device("cpu"), 0, str(tmp_path / "cache"))
    assert metrics["classifier_accuracy"] < 0.75 and metrics["classifier_near_chance"] is True
    assert any("tells the classes apart in only" in r.getMessage() for r in caplog.records)
    assert near_chance(0.55, 10) is False and near_chance(0.5, 10) is True  # halfway from 10% to 100%


def _random_inception_weights(path, monkeypatch):
    """A weights file with torch-fidelity's layout and random values: the real code path runs, the
    numbers mean nothing (the published weights cannot be fetched here)."""
    import torch
    from torch_fidelity import feature_extractor_inceptionv3 as fidelity

    with monkeypatch.context() as patch:
        patch.setattr(fidelity, "load_state_dict_from_url", lambda *a, **k: None)
        patch.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None)
        torch.manual_seed(0)
        torch.save(fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"]).state_dict(), path)
    return path


def _photo_folder(folder, n=12, size=40):
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder.mkdir(parents=True)
    photo = load_sample_images().images[0]
    for i in range(n):
        Image.fromarray(photo[7 * i : 7 * i + size, 11 * i : 11 * i + size]).save(folder / f"{i}.jpg")
    return folder


def test_an_unlabelled_folder_offline_is_one_line_on_how_to_supply_the_inception_weights(tmp_path):
    photos = _photo_folder(tmp_path / "photos")
    # offline, whatever the machine: every https request goes to a port where nothing listens
    offline = {"https_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9",
               "TORCH_HOME": str(tmp_path / "torch")}
    proc = run_gancli("train", "data=folder", f"data.path={photos}", "data.image_size=16", "data.channels=3",
                      "model=dcgan", "eval.every=2", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path, check=False,
                      env=offline)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr + proc.stdout
    (line,) = [x for x in proc.stderr.splitlines() if x.strip()]
    assert "quality number of images without class labels" in line and "downloading it failed" in line
    assert "eval.inception_weights=<that file>" in line
    assert not (tmp_path / "torch" / "hub" / "checkpoints").is_dir() or not any(
        (tmp_path / "torch" / "hub" / "checkpoints").iterdir())  # nothing half-downloaded
    assert not (tmp_path / "run" / "checkpoints").exists()  # refused before training


@pytest.mark.slow
def test_an_unlabelled_folder_is_measured_by_inception_fid_and_kid(tmp_path, monkeypatch):
    import torch

    from gancli import inception
    from gancli.config import DataConfig, DataName
    from gancli.data import load_data
    from gancli.quality import evaluate

    photos = _photo_folder(tmp_path / "photos")
    cfg = DataConfig(name=DataName.folder, path=str(photos), image_size=32, channels=3,
                     cache_dir=str(tmp_path / "cache"))
    data = load_data(cfg, seed=0)
    assert data.labels is None and data.file is not None  # a prepared set, read from its file
    weights = _random_inception_weights(tmp_path / inception.WEIGHTS_NAME, monkeypatch)
    fake = torch.rand(4, 3, 32, 32) * 2 - 1
    calls = []  # through a wrapper that keeps the real function
    real_fn = inception._features
    monkeypatch.setattr(inception, "_features", lambda *a: calls.append(1) or real_fn(*a))

    metrics = evaluate(fake, data, cfg, torch.device("cpu"), seed=0, cache_dir=None, inception_weights=str(weights))
    assert metrics["inception_fid"] > 0 and metrics["inception_kid_std"] >= 0
    assert metrics["protocol"]["n_real"] == 4 and metrics["protocol"]["n_generated"] == 4
    assert "4 of the data set's 12" in metrics["protocol"]["real_images"]
    again = evaluate(fake, data, cfg, torch.device("cpu"), seed=0, cache_dir=None, inception_weights=str(weights))
    assert again["inception_fid"] == metrics["inception_fid"]
    assert len(calls) == 3  # real, fake, then fake alone: the real images' features are kept for the next evaluation
