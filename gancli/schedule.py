"""Schedules: values that move during training instead of staying constant (R3GAN ramps its
learning rate, gamma, Adam's beta2, G_ema's half-life and the augmentation probability).

A ramp goes from `start` to `end` (either left out: the value its key sets, e.g. optimizer.lr)
over `kimg` thousand images after an optional linear warm-up, linearly or along half a cosine,
and holds `end` afterwards; without `kimg` it spans the whole run. Each value is a pure function
of the images seen, so a resumed run continues its schedules exactly.
"""

from __future__ import annotations

import math
from typing import Optional

from gancli.config import Ramp, RampShape, TrainApp


def ramp_value(ramp: Ramp, start: float, end: float, images: float, length_images: float) -> float:
    """The value of `ramp` (start and end resolved) after `images` images of a run whose ramps
    span `length_images` images (math.inf: not known yet, the ramp holds its start)."""
    if ramp.shape is RampShape.constant:
        return start
    warmup = ramp.warmup_kimg * 1000
    if images < warmup:  # R3GAN's warm-up: a straight line from warmup_start up to the start
        return ramp.warmup_start + (start - ramp.warmup_start) * images / warmup
    span = ramp.kimg * 1000 if ramp.kimg is not None else length_images - warmup
    t = min(max((images - warmup) / span, 0.0), 1.0) if span > 0 else 1.0
    if ramp.shape is RampShape.cosine:
        t = (1 - math.cos(math.pi * t)) / 2
    return start + (end - start) * t


def base_values(cfg: TrainApp) -> dict[str, float]:
    """The value each schedulable key has when it is not scheduled."""
    opt = cfg.optimizer
    return {
        "lr_g": opt.lr_g or opt.lr,
        "lr_d": opt.lr_d or opt.lr,
        "beta2": opt.beta2,
        "r1_gamma": cfg.loss.r1_gamma,
        "r2_gamma": cfg.loss.r2_gamma,
        "ema_half_life_kimg": cfg.ema.half_life_kimg,
        "augment_p": cfg.augment.p,
    }


class Schedule:
    """The scheduled values of a run (its ramps that are not constant) at a point of training.
    `length_images` is what ramps without a `kimg` of their own span: train.steps' images, or,
    under train.minutes, the loop's estimate of what the budget will hold."""

    def __init__(self, cfg: TrainApp, images_per_step: int):
        base = base_values(cfg)
        self.ramps: dict[str, tuple[Ramp, float, float]] = {}  # key -> (ramp, start, end)
        for key, ramp in vars(cfg.schedule).items():
            if ramp.shape is not RampShape.constant:
                start = base[key] if ramp.start is None else ramp.start
                end = base[key] if ramp.end is None else ramp.end
                self.ramps[key] = (ramp, start, end)
        self.length_images = math.inf if cfg.train.minutes else float(cfg.train.steps * images_per_step)

    def __contains__(self, key: str) -> bool:
        return key in self.ramps

    def at(self, images: float) -> dict[str, float]:
        """Each scheduled value after `images` images (every rank's)."""
        return {key: ramp_value(ramp, start, end, images, self.length_images)
                for key, (ramp, start, end) in self.ramps.items()}

    def state_dict(self) -> dict[str, float]:
        return {"length_images": self.length_images}

    def load_state_dict(self, state: Optional[dict[str, float]]) -> None:
        """Continue a time-budget run with the length its schedules had (train.steps runs take
        theirs from the config, which a resume may extend)."""
        if state and math.isinf(self.length_images):
            self.length_images = float(state.get("length_images", math.inf))
