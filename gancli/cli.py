"""The `gancli` console script: `gancli <command> [hydra overrides]`.

Hydra has no subcommands, so the first word picks an app, each with its own primary config,
`-m`, `--cfg job` and `--help`. Before Hydra starts, the overrides are composed and checked
once (every combination of a `-m` sweep), so a wrong value fails in one line, before any
run folder is made.
"""

from __future__ import annotations

import importlib
import itertools
import os
import re
import sys
from typing import TYPE_CHECKING, Any, NamedTuple, Optional

from gancli.errors import GancliError, fail, user_errors

if TYPE_CHECKING:
    from pathlib import Path

COMMANDS = {
    "train": ("gancli.train", "train a GAN (gancli train model=classic data=mnist device=cuda)"),
    "sample": ("gancli.sample", "images from a checkpoint (gancli sample ckpt=outputs/<run> n=64)"),
    "eval": ("gancli.evaluate", "quality and mode-collapse metrics of a checkpoint (gancli eval ckpt=outputs/<run>)"),
    "export": ("gancli.export", "a generator as ONNX or TorchScript (gancli export ckpt=outputs/<run> format=onnx)"),
    "prepare": ("gancli.prepare", "decode a folder of images once, before training (gancli prepare data.path=~/pics)"),
    "bench": ("gancli.bench", "time accel x precision x batch size (gancli bench train.batch_size=64,256)"),
    "report": ("gancli.report", "table and plots of finished runs and sweeps (gancli report outputs/multirun/<sweep>)"),
}
USAGE = "usage: gancli <command> [key=value ...] [-m] [--cfg job] [--help]\n\ncommands:\n" + "".join(
    f"  {name:<8} {about}\n" for name, (_, about) in COMMANDS.items()
)
# Hydra flags after which nothing is run (--cfg prints the config, `???` for what is missing),
# or whose config we could not see beforehand
_NO_PREFLIGHT = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc", "--cfg", "-c",
                 "--config-path", "-cp", "--config-name", "-cn"}


# presets that were renamed with the model family they train (models.RENAMED has the families)
_RENAMED_PRESETS = {"mnist_seed": "mnist_classic"}

# Hydra plugins behind optional extras: config name -> (what it is, the extra that installs it)
_HYDRA_PLUGINS = {
    "joblib": ("joblib launcher", "joblib"),
    "submitit_slurm": ("submitit launcher", "slurm"),
    "submitit_local": ("submitit launcher", "slurm"),
    "optuna": ("Optuna sweeper", "optuna"),
}


def main(argv: Optional[list[str]] = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, end="")
        return
    if argv[0] == "--version":
        from gancli import __version__

        print(f"gancli {__version__}")
        return
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        fail(f"unknown command '{command}'; use one of: {', '.join(COMMANDS)} (gancli --help)")
    module = importlib.import_module(COMMANDS[command][0])
    if command == "report":  # not a Hydra app: plain arguments, nothing to preflight
        with user_errors():
            module.main(rest)
        return
    if command == "bench":  # its matrix keys take comma lists without -m
        rest = module.split_axes(rest)
    torchrun = command == "train" and "RANK" in os.environ  # one of the processes torchrun started
    claimed = None  # the run folder this process holds for its job
    checked: list[Job] = []  # the jobs the command line would run, as the preflight composed them
    try:
        if command == "sample":  # class=3, classes=0,1,2
            rest = module.class_args(rest)
        rest = [quote_path(part) for arg in rest for part in _device_index(arg)]
        _check_modes(rest)
        if not any(arg.split("=")[0] in _NO_PREFLIGHT for arg in rest):
            checked = preflight(module, rest)
            if torchrun:
                rest = join_process_group(rest, checked)
            if command == "train":
                rest, claimed = claim_run_folders(rest, checked)
    except GancliError as exc:
        fail(str(exc))
    sys.argv = [f"gancli {command}", *rest]
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    from yaml import YAMLError

    # Hydra prints its own errors with a traceback; this lets them reach the one-line printer below
    full_error = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        module.main()
    except KeyboardInterrupt as exc:  # a signal in a sweep, a second Ctrl-C, or one before the loop starts
        signum = getattr(exc, "signum", 2)  # SIGINT's number where no other signal is known
        if command == "train" and ("-m" in rest or "--multirun" in rest) and checked:
            from pathlib import Path

            from gancli.report import report_sweep

            report_sweep(Path(checked[0].folder))  # what ran, and the jobs that never started
        print("gancli: interrupted", file=sys.stderr)
        sys.exit(128 + signum)
    except (HydraException, OmegaConfBaseException, YAMLError) as exc:  # a config Hydra could not compose
        fail(one_line(exc))
    finally:
        if claimed is not None:
            from gancli.runfolder import release

            release(claimed)
        if full_error is None:  # as it was: a caller in this process (a test) starts other processes
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = full_error
        if torchrun:
            from gancli.distributed import close_distributed

            close_distributed()


# Hydra's modes, of which a command line may choose one
_MODES = {"-m": "-m", "--multirun": "-m", "--cfg": "--cfg", "-c": "--cfg", "--info": "--info", "-i": "--info",
          "--shell-completion": "--shell-completion", "-sc": "--shell-completion", "--run": "--run", "-r": "--run"}


def _check_modes(args: list[str]) -> None:
    """Hydra runs one mode at a time (a sweep, or a config printout, ...); two are a usage error."""
    modes = sorted({_MODES[arg.split("=")[0]] for arg in args if arg.split("=")[0] in _MODES})
    if len(modes) > 1:
        hint = "; --cfg prints the config of one job: drop -m" if modes == ["--cfg", "-m"] else ""
        raise GancliError(f"{' and '.join(modes)} do not go together: give one of them{hint}")
    if "--resolve" in args and not any(arg.split("=")[0] in ("--cfg", "-c", "--help", "-h") for arg in args):
        raise GancliError("--resolve goes with --cfg (or --help): gancli train --cfg job --resolve")


def claim_run_folders(args: list[str], checked: list[Job]) -> tuple[list[str], Optional["Path"]]:
    """Before Hydra starts, make sure the job may write where it would: claim a single run's
    folder for this process (the caller releases it when the job ends), pinning its resolved path
    so that Hydra uses that very folder; claim a sweep's folder for the sweep, which must not
    already hold a sweep that it would overwrite (each job claims its own folder as it starts).
    Returns the arguments for Hydra and the claimed folder, if any."""
    from pathlib import Path

    from gancli import runfolder
    from gancli.distributed import Ranks
    from gancli.run import claim_run_dir

    folder = Path(checked[0].folder)
    if "-m" in args or "--multirun" in args:  # one sweep per sweep folder, checked under its lock
        runfolder.claim_sweep(folder)
        try:
            if any(job.cfg.train.resume is None for job in checked) and any(
                    runfolder.last_checkpoint(run).exists() or (run / runfolder.SUMMARY).exists()
                    for run in folder.iterdir() if run.is_dir()):
                raise GancliError(f"hydra.sweep.dir={folder} already holds a sweep's runs; choose a new "
                                  "hydra.sweep.dir, or add train.resume=auto to continue its jobs")
        except GancliError:
            runfolder.release(folder)
            raise
        return args, folder
    if not Ranks.current().is_main:  # rank 0 alone writes the folder
        return args, None
    claim_run_dir(checked[0].cfg, folder)
    try:
        return _pin(args, "hydra.run.dir", str(folder)), folder
    except GancliError:
        runfolder.release(folder)
        raise


def _pin(args: list[str], key: str, value: str) -> list[str]:
    """`args` with `key` set to exactly `value` (quoted for Hydra's parser)."""
    if "'" in value:
        raise GancliError(f"the folder {value} has a quote in its name; set {key} to a plainer path")
    return [arg for arg in args if not arg.startswith(f"{key}=")] + [f"{key}='{value}'"]


def join_process_group(args: list[str], checked: list[Job]) -> list[str]:
    """torchrun starts one gancli per device. They join one process group, and all use the run
    folder rank 0 picks: only rank 0 writes Hydra's files and the logs."""
    from gancli.distributed import Ranks, init_distributed

    if len(checked) != 1 or "-m" in args or "--multirun" in args:
        raise GancliError("torchrun runs one training job: drop -m (to sweep, run torchrun once per job)")
    init_distributed(checked[0].cfg.device.type)
    ranks = Ranks.current()
    args = _pin(args, "hydra.run.dir", ranks.broadcast(checked[0].folder if ranks.is_main else None))
    if not ranks.is_main:
        args += ["hydra.output_subdir=null", "hydra/job_logging=disabled", "hydra/hydra_logging=disabled"]
    return args


def _device_index(arg: str) -> list[str]:
    """`device=cuda:1`, as torch spells it, is `device=cuda device.index=1`."""
    match = re.fullmatch(r"device=cuda:(\d+)", arg)
    return ["device=cuda", f"device.index={match.group(1)}"] if match else [arg]


# keys whose values are files or folders: written as people type them (~, spaces, any letters)
PATH_KEYS = {"data.path", "data.root", "eval.cache_dir", "eval.inception_weights", "train.resume", "ckpt", "out",
             "cache_dir", "inception_weights", "hydra.run.dir", "hydra.sweep.dir"}


def quote_path(arg: str) -> str:
    """`key=value` for a path key, with a leading `~` expanded and the value quoted for Hydra where
    its override grammar would not take it as written (a space, `~`, a letter outside ASCII)."""
    key, sep, value = arg.partition("=")
    if not sep or key.lstrip("+~") not in PATH_KEYS or not value or value[0] in "'\"":
        return arg
    value = os.path.expanduser(value) if value.startswith("~") else value
    if _hydra_takes(key, value):  # a plain path, null, or a sweep's comma list under -m
        return f"{key}={value}"
    if "'" not in value:
        quote = "'"
    elif '"' not in value:
        quote = '"'
    else:
        raise GancliError(f"{key}={value} has both kinds of quote in it; rename the file or folder")
    trailing = len(value) - len(value.rstrip("\\"))
    value += "\\" * trailing  # a backslash before the closing quote would escape it
    return f"{key}={quote}{value}{quote}"


def _hydra_takes(key: str, value: str) -> bool:
    """Whether Hydra reads `key=value` as this very string (or as null, or a sweep's choices)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        override = OverridesParser.create().parse_override(f"{key}={value}")
    except HydraException:
        return False
    return override.is_sweep_override() or override.value() in (None, value)


class Job(NamedTuple):
    """One job a command line would run: its typed config, and the folder Hydra would give it (the
    run folder of a single run, the sweep folder of a sweep's job)."""

    cfg: Any
    folder: str


def preflight(module, args: list[str]) -> list[Job]:
    """Compose and check the app's config for each job the arguments would run (one composition
    each, which also resolves the job's folder)."""
    from hydra import compose, initialize_config_module
    from hydra._internal.utils import get_args_parser
    from hydra.errors import HydraException
    from omegaconf import open_dict
    from omegaconf.errors import OmegaConfBaseException

    from gancli.config import to_typed

    from pathlib import Path

    parsed = get_args_parser().parse_args(args)
    if parsed.config_dir and not Path(parsed.config_dir).is_dir():
        raise GancliError(f"--config-dir {parsed.config_dir}: no such folder; give the folder of your config files")
    # a user's config folder (--config-dir) is searched as Hydra's own run will search it
    searched = [] if not parsed.config_dir else [f"hydra.searchpath=[file://{Path(parsed.config_dir).resolve()}]"]
    checked = []
    try:
        jobs = _expand_sweeps(parsed.overrides) if parsed.multirun else [parsed.overrides]
        with initialize_config_module("gancli.configs", version_base="1.3"):
            for overrides in jobs:
                _check_optional_choices(overrides, parsed.config_dir)
                composed = compose(module.CONFIG_NAME, overrides=[*overrides, *searched], return_hydra_config=True)
                with open_dict(composed):
                    hydra_cfg = composed.pop("hydra")
                folder = str(hydra_cfg.sweep.dir if parsed.multirun else hydra_cfg.run.dir)
                cfg = to_typed(composed)
                if hasattr(module, "resolve") and not parsed.multirun:  # a resume: the run's own config
                    cfg = module.resolve(cfg, overrides, Path(folder))
                module.check(cfg)
                checked.append(Job(cfg, folder))
    except (HydraException, OmegaConfBaseException) as exc:
        raise GancliError(one_line(exc)) from None
    return checked


# groups marked `optional` in the defaults lists, whose missing option Hydra skips without a word
_OPTIONAL_GROUPS = ("experiment", "hparams_search")


def _check_optional_choices(overrides: list[str], config_dir: Optional[str] = None) -> None:
    """`experiment=<typo>` must fail like any other unknown option, not train the defaults (a
    user's config folder may add options)."""
    import importlib.resources
    from pathlib import Path

    for override in overrides:
        key, sep, value = override.partition("=")
        key = key.lstrip("+~")
        if sep and key == "experiment" and value in ("", "null"):
            raise GancliError("experiment=none trains without a preset; experiment=null cannot drop the default "
                              "recipe (experiment=rpgan)")
        if not sep or key not in _OPTIONAL_GROUPS or value in ("", "null"):
            continue
        folders = [importlib.resources.files("gancli.configs") / key]
        if config_dir and (Path(config_dir) / key).is_dir():
            folders.append(Path(config_dir) / key)
        options = sorted({p.name[:-5] for folder in folders for p in folder.iterdir() if p.name.endswith(".yaml")})
        chosen = value[1:-1].split(",") if value.startswith("[") and value.endswith("]") else [value]  # [ring,hinge_sn]
        for name in (name.strip() for name in chosen):
            if name not in options:
                renamed = _RENAMED_PRESETS.get(name) if key == "experiment" else None
                verb = f"is now {key}={renamed}" if renamed else "is not an option"
                raise GancliError(f"{key}={name} {verb}; choose one of: {', '.join(options)}")


def _expand_sweeps(overrides: list[str]) -> list[list[str]]:
    """Every combination a basic `-m` sweep would run, as plain override lists. An interval
    (Optuna's `interval(a, b)`) is checked at both ends."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    choices = []
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_interval_sweep():
            key, interval = override.get_key_element(), override.value()
            choices.append([f"{key}={interval.start}", f"{key}={interval.end}"])
        elif override.is_sweep_override():
            key = override.get_key_element()
            choices.append([f"{key}={value}" for value in override.sweep_string_iterator()])
        else:
            choices.append([override.input_line])
    return [list(combo) for combo in itertools.product(*choices)]


def one_line(exc: BaseException) -> str:
    """Hydra's and OmegaConf's multi-line messages, as one line that names the key and the fix."""
    from hydra.errors import MissingConfigException
    import dataclasses

    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, MissingMandatoryValue, ValidationError

    missing = getattr(exc, "missing_cfg_file", None) or ""
    if isinstance(exc, MissingConfigException) and missing.startswith("hydra/"):
        plugin = _HYDRA_PLUGINS.get(missing.rpartition("/")[2])
        if plugin is not None:
            return f'Hydra\'s {plugin[0]} plugin ({missing}) is not installed: pip install "gancli[{plugin[1]}]"'
    if isinstance(exc, MissingConfigException) and exc.options is not None:
        from gancli.models import RENAMED

        group, _, value = (exc.missing_cfg_file or "").rpartition("/")
        renamed = {"model": RENAMED, "experiment": _RENAMED_PRESETS}.get(group, {}).get(value)
        if renamed:
            return f"{group}={value} is now {group}={renamed}; choose one of: {', '.join(sorted(exc.options))}"
        if group and exc.options:
            return f"{group}={value} is not an option; choose one of: {', '.join(sorted(exc.options))}"
        if group:
            return f"the config group '{group}' has no options here: reinstall gancli (pip install -e .)"
    chain = [exc]  # Hydra keeps OmegaConf's error as the cause or the context
    while (chain[-1].__cause__ or chain[-1].__context__) is not None and len(chain) < 20:
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    cause = next((e for e in chain if getattr(e, "full_key", None)), chain[-1])  # the error that names its key
    key = getattr(cause, "full_key", None)
    where = re.match(r"In '([^']+)'", str(exc))  # the config file Hydra was composing: experiment/mine, say
    origin = f"{where.group(1)}.yaml: " if where else ""
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and key:
        owner = getattr(cause, "object_type", None)
        if dataclasses.is_dataclass(owner):
            parent = key.rpartition(".")[0]
            known = ", ".join(f"{parent}.{f.name}" if parent else f.name for f in dataclasses.fields(owner))
            return f"{origin}unknown key '{key}'; the keys here are: {known}"
        return f"{origin}unknown key '{key}'; `--cfg job` prints every key"
    if isinstance(cause, MissingMandatoryValue) and key:
        return f"{key} must be given, e.g. {key}=<value>"
    if isinstance(cause, ValidationError) and key:
        message = str(getattr(cause, "msg", cause)).splitlines()[0]
        return f"{origin}{key}: {message}"
    lines = [line.strip() for line in (str(exc) or str(cause)).splitlines() if line.strip()]
    text = " ".join(lines) or type(cause).__name__
    return re.sub(r"\s+", " ", text)
