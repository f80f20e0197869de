"""`gancli eval`: the quality and mode-collapse metrics of a checkpoint's generator (quality.py)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig
from rich.table import Table

from gancli import runtime
from gancli.config import EvalApp, to_typed, train_config_from_plain
from gancli.console import table_console
from gancli.data import load_data
from gancli.files import check_out_folder, write_json
from gancli.generator import generate, load_generator
from gancli.images import save_scatter
from gancli.inception import find_weights
from gancli.errors import user_errors
from gancli.quality import evaluate
from gancli.runfolder import find_checkpoint, run_dir_of

log = logging.getLogger(__name__)

CONFIG_NAME = "eval"


@hydra.main(version_base="1.3", config_path="pkg://gancli.configs", config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> None:
    with user_errors():
        run_eval(to_typed(cfg))


def check(cfg: EvalApp) -> None:
    """Start-up checks that read nothing: the device, the checkpoint and any weights file must exist."""
    runtime.resolve_device(cfg.device)
    find_checkpoint(cfg.ckpt)
    check_out_folder(cfg.out)
    find_weights(cfg.inception_weights)


def run_eval(cfg: EvalApp) -> dict[str, Any]:
    device = runtime.resolve_device(cfg.device)
    G, state, path = load_generator(cfg.ckpt, device, cfg.use_ema)
    train_cfg = train_config_from_plain(state["config"])
    data = load_data(train_cfg.data, train_cfg.seed)
    fake, asked = generate(G, cfg.n, device, cfg.seed)
    metrics = evaluate(fake, data, train_cfg.data, device, cfg.seed, cfg.cache_dir, cfg.inception_weights, asked)
    metrics["step"] = state["step"]
    metrics["checkpoint"] = str(path)
    metrics["protocol"]["generator"] = state["generator"]  # G_ema (the moving average) or G
    out = Path(cfg.out) if cfg.out else run_dir_of(path)
    write_json(out / "metrics.json", metrics)
    if not data.is_image:
        save_scatter(fake, out / "eval_scatter.png", real=data.x[: cfg.n],
                     title=f"{metrics['modes']}/{metrics['n_modes']} modes, hq {metrics['hq']:.3f}")
    table = Table(title=f"gancli eval, step {state['step']}", caption=str(path))
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        if key not in ("protocol", "checkpoint", "inception_protocol", "fd_per_class"):
            table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    table_console().print(table)
    log.info("wrote %s", out / "metrics.json")
    return metrics
