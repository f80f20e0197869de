"""`gancli prepare`: a folder of images decoded once into data.cache_dir (prepared.py), ahead of
the runs that train on it (on a login node before a cluster job, say)."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from gancli import data as data_sets
from gancli.config import PrepareApp, to_typed
from gancli.data import load_data
from gancli.errors import GancliError, user_errors

log = logging.getLogger(__name__)

CONFIG_NAME = "prepare"


@hydra.main(version_base="1.3", config_path="pkg://gancli.configs", config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> None:
    with user_errors():
        run_prepare(to_typed(cfg))


def check(cfg: PrepareApp) -> None:
    """Start-up checks that read nothing: a folder data set whose folder exists."""
    if cfg.data.name.value != "folder":
        raise GancliError(f"gancli prepare prepares a folder of images (data=folder data.path=...); "
                          f"data={cfg.data.name.value} loads as it is")
    data_sets.check(cfg.data)


def run_prepare(cfg: PrepareApp) -> None:
    check(cfg)
    data = load_data(cfg.data, seed=0)
    size = cfg.data.image_size
    log.info("data.path=%s is prepared: %d images at %dx%d, %d files skipped", cfg.data.path, len(data.x), size,
             size, data.skipped)
