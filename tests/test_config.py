import dataclasses
import enum
import typing
from pathlib import Path

import pytest
from hydra import compose, initialize_config_module

from gancli import cli, config, sample, train
from gancli.cli import quote_path
from gancli.config import DataName, LossName, OptimizerName, Precision, TrainApp, to_plain, to_typed
from gancli.datasets import DATASETS
from gancli.errors import GancliError
from gancli.models import FAMILIES

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def compose_train(*overrides: str) -> TrainApp:
    """The train config of these overrides, with paths quoted as the command line quotes them."""
    with initialize_config_module("gancli.configs", version_base="1.3"):
        return to_typed(compose("train", overrides=[quote_path(arg) for arg in overrides]))


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIGS / group).glob("*.yaml"))


def test_default_config():
    cfg = compose_train()
    assert isinstance(cfg, TrainApp)
    assert cfg.model.name == "dcgan" and cfg.data.name is DataName.digits
    assert cfg.optimizer.name is OptimizerName.adam
    # the default recipe, experiment=rpgan (docs/recipes.md, "At equal time"), for 500 steps
    assert (cfg.optimizer.lr, cfg.optimizer.beta1, cfg.optimizer.beta2) == (2e-4, 0.0, 0.99)
    assert cfg.loss.name is LossName.rpgan and (cfg.loss.r1_gamma, cfg.loss.r2_gamma) == (1.0, 1.0)
    assert cfg.precision.name is Precision.auto and cfg.train.steps == 500
    plain = compose_train("experiment=none")  # the groups alone: the non-saturating DCGAN
    assert plain.loss.name is LossName.ns and (plain.optimizer.beta1, plain.optimizer.beta2) == (0.5, 0.999)
    assert not plain.loss.penalised


def test_top_level_keys_are_frozen():
    # A change here is a change of the config surface people script against.
    cfg = to_plain(compose_train())
    assert list(cfg) == [
        "model", "data", "optimizer", "loss", "augment", "ema", "device", "precision", "accel", "train", "eval",
        "logger", "schedule",
        "seed",
    ]
    assert list(cfg["train"]) == [
        "steps", "batch_size", "d_steps", "log_every", "sample_every", "ckpt_every", "sample_n", "minutes", "resume",
        "nan_policy", "max_rollbacks", "divergence_limit",
    ]


@pytest.mark.parametrize(
    "group,names",
    [
        ("model", sorted(FAMILIES)),  # tests/test_models.py pins the families
        ("data", sorted(DATASETS)),  # tests/test_data.py pins the data sets
        ("optimizer", ["adam", "rmsprop", "sgd"]),
        ("loss", ["hinge", "lsgan", "minimax", "ns", "rpgan", "wasserstein"]),
        ("device", ["auto", "cpu", "cuda", "mps"]),
        ("precision", ["auto", "bf16", "fp16", "fp32", "tf32"]),
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
    # every preset but none changes the plain groups (rpgan is also the default recipe)
    assert (preset == to_plain(compose_train("experiment=none"))) == (name == "none")
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
        (["model=gpt"], ["model=gpt", *FAMILIES]),
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
    assert compose_train("experiment=none", "model=classic").loss.r1_gamma == 10
    # the loss group leaves it alone
    assert compose_train("experiment=none", "model=classic", "loss=minimax").loss.r1_gamma == 10
    assert compose_train("experiment=none", "model=classic", "loss.r1_gamma=0").loss.r1_gamma == 0
    assert compose_train("experiment=none", "model=dcgan").loss.r1_gamma == 0
    assert compose_train("experiment=mnist_classic").loss.r1_gamma == 10
    # a recipe, composed after the model, sets its own: the default's R1 and R2 at gamma 1
    assert compose_train("model=classic").loss.r1_gamma == 1.0


# ---- hostile values: every key of every schema, each with values of the wrong type or range ----

# a negative seed is still a seed: torch and Python's random take any integer
NEGATIVE_ALLOWED = {"seed"}


def _leaves(schema: type, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, type) of every leaf field of a config dataclass, Optional unwrapped."""
    hints = typing.get_type_hints(schema)
    out = []
    for f in dataclasses.fields(schema):
        kind = hints[f.name]
        args = [a for a in typing.get_args(kind) if a is not type(None)]
        if typing.get_origin(kind) is typing.Union and len(args) == 1:
            kind = args[0]
        if dataclasses.is_dataclass(kind):
            out += _leaves(kind, f"{prefix}{f.name}.")
        elif kind is not typing.Any:  # the model slot: each family's schema is walked on its own
            out.append((f"{prefix}{f.name}", kind))
    return out


def _hostile(kind: object) -> list[str]:
    if kind is bool:
        return ["maybe"]
    if kind is int:
        return ["abc", "1.5", "-1"]
    if kind is float:
        return ["abc", "-1", "nan", "inf"]
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        return ["no_such_option"]
    if typing.get_origin(kind) is list and isinstance(typing.get_args(kind)[0], type) and issubclass(
            typing.get_args(kind)[0], enum.Enum):
        return ["[no_such_option]"]
    return []  # free text (paths, names): checked where it is used, e.g. test_bad_input_is_one_clean_line


SCHEMAS = [("train", config.TrainApp, "", {"model": config.MODEL_SCHEMAS["dcgan"]}),
           ("sample", config.SampleApp, "", {"ckpt": "run"}), ("eval", config.EvalApp, "", {"ckpt": "run"})]
SCHEMAS += [(f"model={name}", schema, "model.", {}) for name, schema in config.MODEL_SCHEMAS.items()]
SCHEMAS += [("bench", config.BenchConfig, "bench.", {})]


@pytest.mark.parametrize("name, schema, prefix, given", SCHEMAS, ids=[s[0] for s in SCHEMAS])
def test_every_key_refuses_values_of_the_wrong_type_or_range_in_one_line(name, schema, prefix, given):
    """Each value goes through what a command line's value goes through once Hydra has parsed it:
    the typed schema (OmegaConf's type checks) and the range checks of `to_typed`, then the one
    line `gancli` prints. Hydra's own composition of the same values: test_bad_input_is_one_clean_line."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    accepted, unclear = [], []
    for key, kind in _leaves(schema):
        if key == "name" and prefix == "model.":
            continue  # the family's name is chosen by the model group
        for value in _hostile(kind):
            shown = f"{prefix}{key}={value}"
            try:
                base = OmegaConf.merge(OmegaConf.structured(schema), {k: OmegaConf.structured(v) if isinstance(v, type)
                                                                       else v for k, v in given.items()})
                to_typed(OmegaConf.merge(base, OmegaConf.from_dotlist([f"{key}={value}"])))
            except GancliError as exc:
                line = str(exc)
            except OmegaConfBaseException as exc:
                line = cli.one_line(exc)
            else:
                if not (value == "-1" and key in NEGATIVE_ALLOWED):
                    accepted.append(shown)
                continue
            if "\n" in line or key.rpartition(".")[2] not in line:
                unclear.append(f"{shown}: {line}")
    assert not accepted, f"accepted: {accepted}"
    assert not unclear, "not one line naming the key:\n" + "\n".join(unclear)


HOSTILE_COMBINATIONS = [
    (["precision=fp16", "device=cpu"], "precision=fp16 needs a CUDA or MPS device"),
    (["model.conditional=true", "model.pack=2"], "model.pack"),
    (["model.conditional=true", "data=fake"], "model.conditional=true needs a data set with classes"),
    (["augment=diffaug", "data=ring", "model=mlp"], "augment=diffaug transforms images"),
    (["model.pack=3"], "model.pack=3"),
    (["data=folder"], "data=folder needs data.path"),
    (["data=cifar10", "data.channels=1"], "data=cifar10 has 3 channel(s)"),
    (["train.batch_size=4096", "data=digits"], None),  # found when the data is loaded: test_batch_larger_than_data
    (["model=classic", "data=ring"], "classic"),
    (["train.resume=/no/such/run"], "no checkpoint at /no/such/run"),
    (["logger=tensorboard", "precision=tf32", "device=cpu"], "precision=tf32 needs a CUDA GPU"),
]


@pytest.mark.parametrize("overrides, expected", [c for c in HOSTILE_COMBINATIONS if c[1]],
                         ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_hostile_combinations_fail_at_start_up_in_one_line(overrides, expected):
    with pytest.raises(GancliError) as info:
        cli.preflight(train, ["device=cpu", *overrides] if "device=cpu" not in overrides else overrides)
    assert expected in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("app", ["train", "bench", "eval", "sample"])
def test_defaults_live_in_the_schema_once(app):
    """An app's YAML chooses groups and Hydra's settings; every other default is the schema's."""
    import yaml

    assert set(yaml.safe_load((CONFIGS / f"{app}.yaml").read_text())) == {"defaults", "hydra"}


def test_paths_are_taken_as_people_type_them(tmp_path, monkeypatch):
    """`~`, spaces and letters outside ASCII in a path value: Hydra's override grammar takes none
    of them unquoted; the command line expands `~` and quotes the value for it."""
    monkeypatch.setenv("HOME", str(tmp_path))
    photos = tmp_path / "my phötos"
    photos.mkdir()
    cfg = compose_train("data=folder", "data.path=~/my phötos", f"hydra.run.dir={tmp_path / 'runs ü' / 'a'}")
    assert cfg.data.path == str(photos)
    assert quote_path("data.path=~/faces") == f"data.path={tmp_path}/faces"
    assert quote_path("ckpt=it's mine") == '''ckpt="it's mine"'''
    assert quote_path("out=C:\\Läufe\\") == "out='C:\\Läufe\\\\'"  # the closing quote stays a quote
    assert quote_path("out=/runs/x\\ y") == "out='/runs/x\\ y'"  # not Hydra's escaped space
    assert quote_path("train.resume=null") == "train.resume=null"
    assert quote_path("data.path=/a,/b") == "data.path=/a,/b"  # a sweep's list under -m, as written
    assert quote_path("model.name=my model") == "model.name=my model"  # only paths are rewritten
    with pytest.raises(GancliError, match="both kinds of quote"):
        quote_path("""out=a 'b' "c\"""")


def test_a_user_config_folder_is_checked_like_the_shipped_configs(tmp_path, capsys):
    folder = tmp_path / "my configs"
    (folder / "model").mkdir(parents=True)
    (folder / "experiment").mkdir()
    (folder / "model" / "mine.yaml").write_text("name: dcgan\ng_width: 8\nd_width: 8\n")  # no schema named
    (folder / "model" / "typo.yaml").write_text("name: dcgan\ng_widht: 8\n")
    (folder / "experiment" / "stepz.yaml").write_text("# @package _global_\ntrain:\n  stepz: 5\n")
    (folder / "experiment" / "words.yaml").write_text("# @package _global_\ntrain:\n  steps: abc\n")
    (job,) = cli.preflight(train, ["--config-dir", str(folder), "model=mine", "device=cpu"])
    assert type(job.cfg.model) is FAMILIES["dcgan"].Config and job.cfg.model.g_width == 8  # typed, and checked
    run_dir = tmp_path / "run"
    for args, expected in [
        (["model=typo"], "unknown key 'model.g_widht' for model dcgan; its keys are: model.name,"),
        (["experiment=stepz"], "experiment/stepz.yaml: unknown key 'train.stepz'; the keys here are: train.steps,"),
        (["experiment=words"], "experiment/words.yaml: train.steps: Value 'abc' of type 'str' could not be converted"),
        (["experiment=does_not_exist"], "experiment=does_not_exist is not an option; choose one of: debug, grid,"),
    ]:
        with pytest.raises(SystemExit) as info:  # the real dispatcher, before Hydra writes anything
            cli.main(["train", "--config-dir", str(folder), *args, f"hydra.run.dir={run_dir}"])
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2 and expected in line, line
        assert not run_dir.exists()
