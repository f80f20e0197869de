from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from gancli import cli, config, sample, train
from gancli.config import DataName, LossName, OptimizerName, Precision, TrainApp, to_plain, to_typed
from gancli.errors import GancliError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def compose_train(*overrides: str) -> TrainApp:
    with initialize_config_module("gancli.configs", version_base="1.3"):
        return to_typed(compose("train", overrides=list(overrides)))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_default_config():
    cfg = compose_train()
    assert isinstance(cfg, TrainApp)
    assert cfg.model.name == "dcgan" and cfg.data.name is DataName.digits
    assert cfg.optimizer.name is OptimizerName.adam
    assert (cfg.optimizer.lr, cfg.optimizer.beta1, cfg.optimizer.beta2) == (2e-4, 0.5, 0.999)
    assert cfg.loss.name is LossName.ns and cfg.precision.name is Precision.fp32


def test_top_level_keys_are_frozen():
    # A change here is a change of the config surface people script against.
    cfg = to_plain(compose_train())
    assert list(cfg) == [
        "model", "data", "optimizer", "loss", "augment", "ema", "device", "precision", "accel", "train", "eval", "logger",
        "seed",
    ]
    assert list(cfg["train"]) == [
        "steps", "batch_size", "d_steps", "log_every", "sample_every", "ckpt_every", "sample_n", "resume",
    ]


@pytest.mark.parametrize(
    "group,names",
    [
        ("model", ["classic", "dcgan", "mlp", "residual", "resnet"]),
        ("data", ["cifar10", "digits", "fake", "fashion_mnist", "folder", "grid", "mnist", "ring", "stacked_mnist"]),
        ("optimizer", ["adam", "rmsprop", "sgd"]),
        ("loss", ["hinge", "lsgan", "minimax", "ns", "rpgan", "wasserstein"]),
        ("device", ["auto", "cpu", "cuda", "mps"]),
        ("precision", ["bf16", "fp16", "fp32", "tf32"]),
        ("accel", ["baseline", "eager", "fast"]),
        ("logger", ["none", "tensorboard"]),
    ],
)
def test_every_group_option_composes(group, names):
    assert options(group) == names
    for name in names:
        extra = ["data.path=/tmp"] if (group, name) == ("data", "folder") else []
        cfg = compose_train(f"{group}={name}", *extra)
        node = getattr(cfg, group)
        value = getattr(node, "name", None) or getattr(node, "type", None)
        assert getattr(value, "value", value) == name


@pytest.mark.parametrize("name", options("experiment"))
def test_every_experiment_changes_the_defaults_and_trains(name, tmp_path):
    preset = to_plain(compose_train(f"experiment={name}"))
    assert preset != to_plain(compose_train())  # the preset wins over train.yaml
    # one tiny step of it, on the bundled digits where it names a data set to download
    data = ["data=digits"] if preset["data"]["name"] in ("mnist", "fashion_mnist", "cifar10") else []
    cfg = compose_train(f"experiment={name}", *data, "device=cpu", "train.steps=1", "train.batch_size=8",
                        "train.sample_every=0", "train.ckpt_every=0", "train.log_every=1")
    for key, small in (("g_width", 8), ("d_width", 8), ("d_dense", 16), ("width", 16)):
        if hasattr(cfg.model, key):
            setattr(cfg.model, key, small)
    summary = train.train(cfg, tmp_path / "run")
    assert summary["status"] == "completed" and summary["steps"] == 1
    assert (tmp_path / "run" / "checkpoints" / "last.pt").is_file()


def test_experiment_sets_groups_and_keys_and_the_command_line_wins():
    cfg = compose_train("experiment=ring")
    assert cfg.model.name == "mlp" and cfg.data.name is DataName.ring and cfg.train.batch_size == 256
    assert cfg.loss.name.value == "rpgan" and cfg.ema.active and cfg.train.steps == 24000  # docs/mode-collapse.md
    grid = compose_train("experiment=grid")
    assert grid.data.name is DataName.grid and grid.loss == cfg.loss and grid.train.steps == 48000
    assert compose_train("experiment=debug", "train.steps=7").train.steps == 7


def test_separate_learning_rates():
    cfg = compose_train("optimizer.lr=1e-3", "optimizer.lr_d=4e-4")
    assert (cfg.optimizer.lr, cfg.optimizer.lr_g, cfg.optimizer.lr_d) == (1e-3, None, 4e-4)


def test_points_data_shapes():
    cfg = compose_train("data=grid", "model=mlp")
    assert cfg.data.std == 0.05
    assert compose_train("data=ring").data.std == 0.01


def test_plain_round_trip():
    cfg = compose_train("model=mlp", "model.activation=gelu", "precision=bf16", "data=ring")
    plain = to_plain(cfg)
    assert plain["model"]["activation"] == "gelu" and plain["precision"]["name"] == "bf16"
    assert config.train_config_from_plain(plain) == cfg


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["precision=bf17"], ["precision=bf17", "bf16", "fp16", "fp32", "tf32"]),
        (["precision=tf32", "device=cpu"], ["tf32", "CUDA"]),
        (["accel=turbo"], ["accel=turbo", "baseline", "eager", "fast"]),
        (["accel.compile=fastest"], ["accel.compile", "reduce_overhead"]),
        (["train.steps=-5"], ["train.steps=-5", ">= 1"]),
        (["train.batch_size=0"], ["train.batch_size=0"]),
        (["train.foo=1"], ["train.foo", "train.steps"]),
        (["bogus=1"], ["bogus", "model"]),
        (["model=classic", "model.depth=3"], ["model.depth", "model.z_dim"]),
        (["optimizer.name=adamw"], ["optimizer.name", "adam", "sgd", "rmsprop"]),
        (["optimizer.lr=-1"], ["optimizer.lr"]),
        (["optimizer.beta1=1.5"], ["optimizer.beta1"]),
        (["loss.r1_gamma=-1"], ["loss.r1_gamma=-1.0", ">= 0"]),
        (["train.steps=many"], ["train.steps"]),
        (["model=gpt"], ["model=gpt", "classic", "dcgan", "mlp", "residual", "resnet"]),
        (["model=seed"], ["model=seed is now model=classic"]),
        (["experiment=rign"], ["experiment=rign is not an option", "debug", "ring"]),
        (["experiment=[ring,debugg]"], ["experiment=debugg is not an option"]),
        (["experiment=mnist_seed"], ["experiment=mnist_seed is now experiment=mnist_classic"]),
        (["hparams_search=optuna"], ["hparams_search=optuna is not an option", "optuna_lr"]),
        (["model=classic", "data=ring"], ["model=mlp"]),
        (["data.image_size=30"], ["data.image_size"]),
        (["data.channels=2"], ["data.channels"]),
        (["precision=fp16", "device=cpu"], ["fp16", "bf16"]),
        (["device=cpu", "device.index=1"], ["device.index"]),
        (["train.resume=/no/such/checkpoint.pt"], ["/no/such/checkpoint.pt"]),
    ],
)
def test_bad_values_fail_in_one_line(overrides, expected):
    with pytest.raises(GancliError) as info:
        cli.preflight(train, overrides)
    message = str(info.value)
    assert "\n" not in message
    for part in expected:
        assert part in message


def test_bad_value_in_any_sweep_job_fails():
    with pytest.raises(GancliError, match="optimizer.lr"):
        cli.preflight(train, ["-m", "optimizer.lr=1e-4,-1e-4"])
    cli.preflight(train, ["-m", "optimizer.lr=1e-4,2e-4", "model=classic,dcgan", "device=cpu"])


def test_sample_requires_a_checkpoint():
    with pytest.raises(GancliError, match="ckpt"):
        cli.preflight(sample, [])
    with pytest.raises(GancliError, match="n=0"):
        cli.preflight(sample, ["ckpt=x", "n=0"])


def test_the_classic_model_brings_its_r1_penalty():
    assert compose_train("model=classic").loss.r1_gamma == 10
    assert compose_train("model=classic", "loss=minimax").loss.r1_gamma == 10  # the loss group leaves it alone
    assert compose_train("model=classic", "loss.r1_gamma=0").loss.r1_gamma == 0
    assert compose_train("model=dcgan").loss.r1_gamma == 0
    assert compose_train("experiment=mnist_classic").loss.r1_gamma == 10
