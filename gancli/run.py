"""A training run's set-up, shared by `gancli train`, `gancli bench` and docs/profile_step.py:
the checks that need no data, the accel plan, the data, the training state, the executor that
steps it and the meter that times it; and the resume of a run from a checkpoint."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from omegaconf.errors import OmegaConfBaseException

from gancli import checkpoint, data as data_sets, runfolder, runtime, timing, tracking
from gancli.accel import AccelPlan, plan_for
from gancli.config import TrainApp, to_plain, train_config_from_plain
from gancli.data import Data, class_names, data_shape, load_data
from gancli.distributed import Ranks
from gancli.errors import GancliError
from gancli.flops import peak_flops, step_flops
from gancli.inception import find_weights, obtain_weights
from gancli.models import build_models, traits
from gancli.models.base import check_pack
from gancli.state import TrainState
from gancli.step import Executor
from gancli.timing import Meter, SectionTimer

log = logging.getLogger(__name__)


def check(cfg: TrainApp) -> torch.device:
    """Every start-up check that needs no data: device, precision, model and augmentation
    against the data shape, resume and evaluation settings, the logger. Returns the device."""
    device = runtime.resolve_device(cfg.device)
    runtime.check_precision(device, cfg.precision.name)
    data_sets.check(cfg.data)
    shape = data_shape(cfg.data)
    classes = class_names(cfg.data) if cfg.model.conditional else None
    if cfg.model.conditional and classes is None:
        hint = " (or a data.path folder with one subfolder per class)" if cfg.data.name.value == "folder" else ""
        raise GancliError(f"model.conditional=true needs a data set with classes{hint}, and data={cfg.data.name.value} "
                          "has none; set model.conditional=false")
    with torch.device("meta"):  # builds the networks without allocating their weights
        build_models(cfg.model, shape, len(classes or []))
    check_pack(cfg.model.pack, cfg.train.batch_size)
    if cfg.loss.in_w_space and not traits(cfg.model).w_space:
        keys = cfg.loss.in_w_space
        verb, them = ("work", "them") if len(keys) > 1 else ("works", "it")
        raise GancliError(f"{' and '.join(keys)} {verb} in StyleGAN2's W space, which model={cfg.model.name} lacks; "
                          f"use model=stylegan2 or set {them} to 0")
    if cfg.augment.active and len(shape) != 3:
        raise GancliError(f"augment={cfg.augment.name.value} transforms images, and data={cfg.data.name.value} is "
                          "2-D points; use augment=none")
    if cfg.train.resume not in (None, "auto"):
        runfolder.find_checkpoint(cfg.train.resume)
    if cfg.eval.every and data_sets.unlabelled_images(cfg.data):
        obtain_weights(cfg.eval.inception_weights)  # their quality number: the weights now, or one line how
    else:
        find_weights(cfg.eval.inception_weights)
    tracking.check(cfg.logger)
    return device


def as_planned(cfg: TrainApp, plan: AccelPlan) -> TrainApp:
    """`cfg` with the precision its plan computes in (`auto` made concrete), so that config.yaml,
    checkpoints and summary.json record what ran."""
    return dataclasses.replace(cfg, precision=dataclasses.replace(cfg.precision, name=plan.precision))


@dataclass
class Run:
    """A run, set up: its config (precision made concrete), where and how it runs, its data, its
    state, the executor that steps the state and the meter that times it."""

    cfg: TrainApp
    device: torch.device
    plan: AccelPlan
    ranks: Ranks
    data: Data
    state: TrainState
    execute: Executor
    meter: Meter

    def checkpoint(self) -> dict[str, Any]:
        """What a checkpoint of this run holds: its state, its training time, and what
        `gancli sample` needs to rebuild G without the data (config, data shape, class names)."""
        return {
            **self.state.state_dict(),
            "meter": self.meter.state_dict(),
            "schedule": self.execute.schedule.state_dict(),
            "config": to_plain(self.cfg),
            "data_shape": list(self.data.shape),
            "classes": self.data.classes if self.state.G.n_classes else None,  # the name of each class G draws
        }


def setup(cfg: TrainApp, ranks: Optional[Ranks] = None, data: Optional[Data] = None,
          timer_cls: type = SectionTimer) -> Run:
    """Check `cfg`, plan how it runs, seed, load the data (or take `data`, already loaded for this
    config) and build the state, the executor and the meter."""
    t_start = timing.clock()
    ranks = ranks or Ranks()
    device = check(cfg)
    plan = plan_for(cfg, device, data_parallel=ranks.data_parallel)
    cfg = as_planned(cfg, plan)
    runtime.configure_backends(device, plan.precision)
    runtime.seed_everything(cfg.seed)
    data = data if data is not None else load_data(cfg.data, cfg.seed)
    state = TrainState(cfg, data.shape, len(data.classes or []), device, plan)
    timer = timer_cls(device)
    execute = Executor(cfg, state, data, plan, timer, ranks)
    meter = Meter(device, ranks, timer, cfg.train.batch_size, step_flops(cfg, data.shape, len(data.classes or [])),
                  peak_flops(device, plan.precision), t_start)
    return Run(cfg, device, plan, ranks, data, state, execute, meter)


# ---- resuming a run ----


def resume_path(resume: Optional[str], run_dir: Path) -> Optional[Path]:
    """The checkpoint `train.resume` names: auto, this run folder's last.pt when there is one."""
    if resume is None:
        return None
    if resume == "auto":
        last = runfolder.last_checkpoint(run_dir)
        return last if last.is_file() else None
    return runfolder.find_checkpoint(resume)


def check_resumable(saved: dict[str, Any], plain_cfg: dict[str, Any], parts: list[str], path: Path) -> None:
    """A run may change its schedule or optimizer settings, not what it trains or the optimizer
    whose state it carries on; `parts` are the state's checkpoint keys, which `saved` must have."""
    try:  # keys added to gancli since the checkpoint was written take their defaults
        saved_cfg = to_plain(train_config_from_plain(saved["config"]))
    except (GancliError, TypeError, ValueError, KeyError, OmegaConfBaseException):
        saved_cfg = saved["config"] if isinstance(saved["config"], dict) else {}
    changed = [change for key in ("model", "data") for change in
               _differences(_trained(key, saved_cfg.get(key)), _trained(key, plain_cfg[key]), key)]
    was, now = (saved_cfg.get("optimizer") or {}).get("name"), plain_cfg["optimizer"]["name"]
    if was is not None and was != now:  # its state (Adam's moments, say) is not the other's
        changed.append(f"optimizer.name {was} -> {now}")
    if changed:
        raise GancliError(f"cannot resume from {path}: {', '.join(changed)} would change the model, data or "
                          "optimizer it was trained with; leave them as they were (a resume takes the run's own "
                          "config), or start a new run")
    missing = [key for key in (*parts, "rng") if key not in saved]
    if missing:
        raise GancliError(f"cannot resume from {path}: it lacks {', '.join(missing)}; resume with the ema and augment "
                          "settings it was trained with, or start a new run")


def _differences(old: Any, new: Any, path: str) -> list[str]:
    """`path.key old -> new` for every value that differs between two configs (nested dicts)."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for key in dict.fromkeys([*old, *new])
                for change in _differences(old.get(key), new.get(key), f"{path}.{key}")]
    return [] if old == new else [f"{path} {_shown(old)} -> {_shown(new)}"]


def _shown(value: Any) -> str:
    return "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


# ---- a resumed run's config ----


def _reach(override: str) -> Optional[tuple[str, ...]]:
    """The config path a command-line override sets: `train.steps=9` -> ("train", "steps"),
    `model=dcgan` -> ("model",); () for `experiment=...`, which may set any group; None for
    Hydra's own keys."""
    key = override.split("=", 1)[0].lstrip("+~")
    if key == "hydra" or key.startswith(("hydra.", "hydra/")):
        return None
    if key in ("experiment", "hparams_search"):
        return ()
    return tuple(key.split("."))


def resumed_config(cfg: TrainApp, overrides: list[str], run_dir: Path) -> TrainApp:
    """The config a resumed run trains with: its checkpoint's, with what the command line set
    itself (the values Hydra composed into `cfg`) on top, so that `train.resume=auto
    hydra.run.dir=<run>` needs nothing retyped and `train.steps=...` goes further (check_resumable
    then refuses what would change the model, data or optimizer). `cfg` itself where there is no
    checkpoint to resume: a new run, or `auto` in a folder without one."""
    path = resume_path(cfg.train.resume, run_dir)
    if path is None:
        return cfg
    saved = checkpoint.load(path, mmap=True)  # the config only: the tensors are mapped, not read
    try:
        merged = to_plain(train_config_from_plain(saved["config"]))
    except (GancliError, TypeError, ValueError, KeyError, OmegaConfBaseException):
        return cfg  # a checkpoint of an older gancli: the composed config, which check_resumable compares
    composed = to_plain(cfg)
    for reach in (_reach(override) for override in overrides):
        if reach is None:
            continue
        if reach == ():  # a preset may set any group: the composed config throughout
            merged = dict(composed)
            continue
        source, target = composed, merged
        for part in reach[:-1]:
            if not isinstance(source.get(part), dict):
                break
            source, target = source[part], target.setdefault(part, {})
        else:
            if reach[-1] in source:
                target[reach[-1]] = source[reach[-1]]
    return train_config_from_plain(merged)


# where the data is kept and read from: a resumed run may change them, the samples stay the same
PLACEMENT_KEYS = ("cache_dir", "on_device", "on_device_gb")


def _trained(group: str, values: Any) -> Any:
    """A config group's values that decide what is trained."""
    if group != "data" or not isinstance(values, dict):
        return values
    return {key: value for key, value in values.items() if key not in PLACEMENT_KEYS}


def load_into(state: TrainState, saved: dict[str, Any], path: Path, rng: bool = True) -> None:
    """Load a checkpoint into `state` in place, or fail in one line naming the part that does not fit."""
    try:
        state.load_state_dict(saved, rng=rng)
    except ValueError as exc:
        raise GancliError(f"cannot resume from {path}: {exc}; resume with the settings it was trained with, "
                          "or start a new run") from None


def resume(run: Run, path: Path) -> None:
    """Continue the run from the checkpoint at `path`: its state, RNG and training time."""
    saved = checkpoint.load(path)
    check_resumable(saved, to_plain(run.cfg), [key for key, _ in run.state.parts()], path)
    load_into(run.state, saved, path)
    run.meter.load_state_dict(saved.get("meter") or {})
    run.execute.schedule.load_state_dict(saved.get("schedule"))
    log.info("resumed from %s at step %d", path, run.state.step)


def claim_run_dir(cfg: TrainApp, run_dir: Path) -> runfolder.RunFolder:
    """This process's claim of the run folder (see runfolder.claim), made here unless the command
    line made it before Hydra started; a new claim also checks that the checkpoint a resume would
    read fits this config. Held until the process ends or the claim is left."""
    folder = runfolder.held(run_dir)
    if folder is not None:  # claimed and checked by the command line
        return folder
    folder = runfolder.claim(run_dir, cfg.train.resume)
    try:
        path = resume_path(cfg.train.resume, run_dir)
        if path is not None:  # the config only: the tensors are mapped, not read
            check_resumable(checkpoint.load(path, mmap=True), to_plain(cfg), [], path)
    except BaseException:
        runfolder.release(run_dir)
        raise
    return folder
