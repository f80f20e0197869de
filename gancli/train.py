"""`gancli train`: `main` is the Hydra entry point; `train` is the whole loop, top to bottom."""

from __future__ import annotations

import logging
import math
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Optional

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

import gancli
from gancli import checkpoint, runtime
from gancli.console import progress_bar
from gancli.config import OptimizerConfig, OptimizerName, TrainApp, to_plain, to_typed
from gancli.data import Batches, data_shape, load_data
from gancli.errors import GancliError, user_errors
from gancli.files import write_json, write_text
from gancli.images import save_grid, save_scatter
from gancli.losses import LOSSES
from gancli.models import build_models
from gancli.timing import JsonLines, SectionTimer

log = logging.getLogger(__name__)

CONFIG_NAME = "train"
POINTS_PLOTTED = 2000  # generated points in each scatter plot of 2-D data


@hydra.main(version_base="1.3", config_path="pkg://gancli.configs", config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> Optional[float]:
    with user_errors():
        summary = train(to_typed(cfg), Path(HydraConfig.get().runtime.output_dir))
    if summary["status"] == "interrupted":
        sys.exit(130)
    return summary["loss_g"]


def check(cfg: TrainApp) -> torch.device:
    """Every start-up check that needs no data: device, precision, model against data shape."""
    device = runtime.resolve_device(cfg.device)
    runtime.check_precision(device, cfg.precision.name)
    with torch.device("meta"):  # builds the networks without allocating their weights
        build_models(cfg.model, data_shape(cfg.data))
    if cfg.train.resume not in (None, "auto"):
        checkpoint.find(cfg.train.resume)
    return device


def make_optimizer(cfg: OptimizerConfig, params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
    if cfg.name is OptimizerName.adam:
        return torch.optim.Adam(params, lr=lr, betas=(cfg.beta1, cfg.beta2), weight_decay=cfg.weight_decay)
    if cfg.name is OptimizerName.sgd:
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.RMSprop(params, lr=lr, alpha=cfg.alpha, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def train(cfg: TrainApp, run_dir: Path) -> dict[str, Any]:
    """Train G and D as `cfg` says, writing everything under `run_dir`; returns the summary."""
    t_start = time.perf_counter()
    device = check(cfg)
    precision = cfg.precision.name
    runtime.configure_precision(device, precision)
    runtime.seed_everything(cfg.seed)
    steps, batch_size, d_steps = cfg.train.steps, cfg.train.batch_size, cfg.train.d_steps

    data = load_data(cfg.data, cfg.seed)
    batches = Batches(data, batch_size, cfg.seed, device)
    G, D = build_models(cfg.model, data.shape)
    G.to(device)
    D.to(device)
    opt_g = make_optimizer(cfg.optimizer, G.parameters(), cfg.optimizer.lr_g or cfg.optimizer.lr)
    opt_d = make_optimizer(cfg.optimizer, D.parameters(), cfg.optimizer.lr_d or cfg.optimizer.lr)
    scaler_g, scaler_d = runtime.grad_scaler(device, precision), runtime.grad_scaler(device, precision)
    d_loss_fn, g_loss_fn = LOSSES[cfg.loss.name]
    # one latent batch for every sample grid, drawn from its own generator so that writing
    # grids never shifts the training noise
    n_fixed = cfg.train.sample_n if data.is_image else POINTS_PLOTTED
    fixed_z = torch.randn(n_fixed, G.z_dim, generator=torch.Generator().manual_seed(cfg.seed + 1)).to(device)

    plain_cfg = to_plain(cfg)
    ckpt_dir, samples_dir = run_dir / "checkpoints", run_dir / "samples"

    start = 0
    resume_from = _resume_path(cfg.train.resume, ckpt_dir)
    if resume_from is not None:
        state = checkpoint.load(resume_from)
        _check_resumable(state, plain_cfg, resume_from)
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        scaler_g.load_state_dict(state["scaler_g"])
        scaler_d.load_state_dict(state["scaler_d"])
        runtime.set_rng_state(state["rng"], device)
        start = state["step"]
        log.info("resumed from %s at step %d", resume_from, start)
    write_text(run_dir / "config.yaml", OmegaConf.to_yaml(plain_cfg))  # every check has passed

    def state_at(step: int) -> dict[str, Any]:
        return {
            "step": step,
            "G": G.state_dict(),
            "D": D.state_dict(),
            "opt_g": opt_g.state_dict(),
            "opt_d": opt_d.state_dict(),
            "scaler_g": scaler_g.state_dict(),
            "scaler_d": scaler_d.state_dict(),
            "rng": runtime.rng_state(device),
            "config": plain_cfg,
            "data_shape": list(data.shape),
        }

    def write_samples(step: int) -> None:
        G.eval()  # batch norm from running statistics, so a grid does not depend on its batch
        with torch.no_grad(), runtime.autocast(device, precision):
            fake = G(fixed_z)
        G.train()
        path = samples_dir / f"step_{step:06d}.png"
        if data.is_image:
            save_grid(fake, path)
        else:
            save_scatter(fake, path, real=data.x[:POINTS_PLOTTED], title=f"step {step}")

    log.info(
        "training %s on %s (%s) for %d steps, batch %d, %s, %s; run folder %s",
        cfg.model.name, cfg.data.name.value, "x".join(map(str, data.shape)), steps, batch_size,
        runtime.describe(device), precision.value, run_dir,
    )
    timer = SectionTimer(device)
    timing = JsonLines(run_dir / "timing.jsonl")
    sum_d = torch.zeros((), device=device)  # losses add up on the device, read once per interval
    sum_g = torch.zeros((), device=device)
    n_interval, train_s, images_done = 0, 0.0, 0
    loss_d_mean = loss_g_mean = float("nan")
    t_interval, pause_s = time.perf_counter(), 0.0
    step = start
    status = "completed"
    with progress_bar(steps, start) as bar, _CtrlC() as ctrl_c:
        while step < steps:
            if ctrl_c.requested:
                status = "interrupted"
                break
            with timer.section("data"):
                reals = [batches(step * d_steps + k) for k in range(d_steps)]

            with timer.section("d_step"):
                D.requires_grad_(True)
                for real in reals:
                    z = torch.randn(batch_size, G.z_dim, device=device)
                    with runtime.autocast(device, precision):
                        with torch.no_grad():
                            fake = G(z)
                        loss_d = d_loss_fn(D(real), D(fake))
                    opt_d.zero_grad(set_to_none=True)
                    scaler_d.scale(loss_d).backward()
                    scaler_d.step(opt_d)
                    scaler_d.update()

            with timer.section("g_step"):
                D.requires_grad_(False)  # G's update needs no gradients of D's weights
                z = torch.randn(batch_size, G.z_dim, device=device)
                with runtime.autocast(device, precision):
                    loss_g = g_loss_fn(D(G(z)))
                opt_g.zero_grad(set_to_none=True)
                scaler_g.scale(loss_g).backward()
                scaler_g.step(opt_g)
                scaler_g.update()

            sum_d += loss_d.detach()
            sum_g += loss_g.detach()
            n_interval += 1
            step += 1
            bar.update(step)

            if step % cfg.train.log_every == 0 or step == steps:
                runtime.synchronize(device)  # the one sync per interval
                interval_s = time.perf_counter() - t_interval - pause_s
                ms = timer.read()
                loss_d_mean, loss_g_mean = (sum_d / n_interval).item(), (sum_g / n_interval).item()
                row = {
                    "step": step,
                    "elapsed_s": round(time.perf_counter() - t_start, 3),
                    "img_per_s": round(n_interval * batch_size / interval_s, 1),
                    "d_step_ms": round(ms.get("d_step", 0.0) / n_interval, 3),
                    "g_step_ms": round(ms.get("g_step", 0.0) / n_interval, 3),
                    "data_ms": round(ms.get("data", 0.0) / n_interval, 3),
                    "peak_mem_mb": round(runtime.peak_memory_mb(device), 1),
                    "loss_d": loss_d_mean,
                    "loss_g": loss_g_mean,
                }
                timing.write(row)
                train_s += interval_s
                images_done += n_interval * batch_size
                stats = f"loss_d {loss_d_mean:.3f}  loss_g {loss_g_mean:.3f}  {row['img_per_s']:.0f} img/s"
                bar.update(step, stats)
                log.info("step %d/%d  %s  (d %.1f ms, g %.1f ms, data %.1f ms)", step, steps, stats,
                         row["d_step_ms"], row["g_step_ms"], row["data_ms"])
                if not (math.isfinite(loss_d_mean) and math.isfinite(loss_g_mean)):
                    timing.close()
                    raise GancliError(
                        f"the losses became non-finite by step {step} (loss_d {loss_d_mean}, loss_g {loss_g_mean}); "
                        "lower optimizer.lr or use precision=fp32"
                    )
                sum_d.zero_()
                sum_g.zero_()
                n_interval, pause_s, t_interval = 0, 0.0, time.perf_counter()

            t_write = time.perf_counter()  # writing files is kept out of the interval's time
            if cfg.train.sample_every and step % cfg.train.sample_every == 0:
                write_samples(step)
            if cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0:
                checkpoint.save(state_at(step), ckpt_dir / f"step_{step:06d}.pt")
                checkpoint.save(state_at(step), ckpt_dir / "last.pt")
            pause_s += time.perf_counter() - t_write
    timing.close()

    if step == start and resume_from is not None and status == "completed":
        log.info("the checkpoint is already at step %d of %d: nothing to train", step, steps)
    checkpoint.save(state_at(step), ckpt_dir / "last.pt")
    if not (run_dir / "samples" / f"step_{step:06d}.png").exists():
        write_samples(step)

    summary = {
        "status": status,
        "steps": step,
        "target_steps": steps,
        "wall_s": round(time.perf_counter() - t_start, 3),
        "train_s": round(train_s, 3),
        "img_per_s": round(images_done / train_s, 1) if train_s > 0 else None,
        "loss_d": loss_d_mean,
        "loss_g": loss_g_mean,
        "model": cfg.model.name,
        "data": cfg.data.name.value,
        "batch_size": batch_size,
        "device": runtime.describe(device),
        "precision": precision.value,
        "resumed_from": str(resume_from) if resume_from else None,
        "run_dir": str(run_dir),
        "versions": {
            "gancli": gancli.__version__,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "hydra": hydra.__version__,
        },
    }
    write_json(run_dir / "summary.json", summary)
    if status == "interrupted":
        log.warning(
            "interrupted at step %d; checkpoint saved. Continue with: gancli train <same overrides> "
            "train.resume=auto hydra.run.dir=%s", step, run_dir,
        )
    else:
        log.info("done: %d steps in %.1f s (%s img/s); %s", step, summary["wall_s"], summary["img_per_s"], run_dir)
    return summary


def _resume_path(resume: Optional[str], ckpt_dir: Path) -> Optional[Path]:
    if resume is None:
        return None
    if resume == "auto":
        last = ckpt_dir / "last.pt"
        return last if last.is_file() else None
    return checkpoint.find(resume)


def _check_resumable(state: dict[str, Any], plain_cfg: dict[str, Any], path: Path) -> None:
    """A run may change its schedule or optimizer settings, not what it trains."""
    saved = state["config"]
    for key in ("model", "data"):
        if saved.get(key) != plain_cfg[key]:
            raise GancliError(
                f"cannot resume from {path}: it was trained with a different {key} config "
                f"({saved.get(key)}); use the same {key} settings or start a new run"
            )
    missing = [key for key in ("D", "opt_g", "opt_d", "scaler_g", "scaler_d", "rng") if key not in state]
    if missing:
        raise GancliError(f"cannot resume from {path}: it lacks {', '.join(missing)}")


class _CtrlC:
    """The first Ctrl-C asks the loop to stop after the current step and save; a second one quits."""

    requested = False

    def __enter__(self) -> "_CtrlC":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning("Ctrl-C: stopping after this step and saving a checkpoint (press again to quit at once)")

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
