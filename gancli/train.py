"""`gancli train`: `main` is the Hydra entry point; `train` is the whole loop, top to bottom."""

from __future__ import annotations

import logging
import math
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any, Optional

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import gancli
from gancli import checkpoint, runtime, tracking
from gancli.console import progress_bar
from gancli.config import LABELLED, MIXTURES, LossName, TrainApp, to_plain, to_typed, train_config_from_plain
from gancli.data import class_names, data_shape, load_data
from gancli.errors import GancliError, user_errors
from gancli.evaluate import evaluate, generate
from gancli.inception import find_weights
from gancli.files import write_json, write_text
from gancli.images import save_grid, save_scatter
from gancli.models import build_models, check_pack, class_rows, latents
from gancli.models.base import SpectralNorm
from gancli.step import TrainStep, plan_for, step_flops
from gancli.timing import JsonLines, SectionTimer

log = logging.getLogger(__name__)

CONFIG_NAME = "train"
POINTS_PLOTTED = 2000  # generated points in each scatter plot of 2-D data


@hydra.main(version_base="1.3", config_path="pkg://gancli.configs", config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> Optional[float]:
    """Train one job; return the value a sweeper minimises (see `objective`)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    t_start = time.perf_counter()
    with user_errors():
        try:
            summary = train(to_typed(cfg), run_dir)
        except GancliError as exc:
            _write_failure(run_dir, "failed", str(exc), t_start)
            if not in_sweep:
                raise
            # one failed job (a diverging learning rate, say) is a result of the sweep, not its end:
            # the report marks it, and a sweeper sees NaN, which Optuna records as a failed trial
            log.error("gancli: error: %s", exc)
            return float("nan")
        except KeyboardInterrupt:
            _write_failure(run_dir, "interrupted", "interrupted before a checkpoint could be saved", t_start)
            raise
        except Exception as exc:
            _write_failure(run_dir, "failed", f"{type(exc).__name__}: {exc}", t_start)
            raise
    if summary["status"] == "interrupted":
        if in_sweep:  # Ctrl-C ends the whole sweep, not just this job
            raise KeyboardInterrupt
        sys.exit(128 + signal.Signals[summary.get("stopped_by") or "SIGINT"])  # the shell's convention: 130, 143
    return summary["objective"]["value"]


def objective(summary: dict[str, Any]) -> dict[str, Any]:
    """What a sweep minimises: the last evaluation's headline distance when eval.every is on
    (Inception FID, else classifier FD, reverse KL of a mixture, KL of stacked modes), else the
    final G loss."""
    metrics = summary.get("metrics") or {}
    for name in ("fid", "fd", "reverse_kl", "kl"):
        if isinstance(metrics.get(name), (int, float)):
            return {"name": name, "value": float(metrics[name])}
    return {"name": "loss_g", "value": float(summary["loss_g"])}


def _write_failure(run_dir: Path, status: str, error: str, t_start: float) -> None:
    """Mark a run that stopped early, so `gancli report` can tell it from one still running."""
    if not run_dir.is_dir() or not runtime.Ranks.current().is_main:
        return
    write_json(run_dir / "summary.json",
               {"status": status, "error": error, "wall_s": round(time.perf_counter() - t_start, 3)})


def check(cfg: TrainApp) -> torch.device:
    """Every start-up check that needs no data: device, precision, model and augmentation
    against the data shape, resume and evaluation settings, the logger."""
    device = runtime.resolve_device(cfg.device)
    runtime.check_precision(device, cfg.precision.name)
    shape = data_shape(cfg.data)
    classes = class_names(cfg.data) if cfg.model.conditional else None
    if cfg.model.conditional and classes is None:
        hint = " (or a data.path folder with one subfolder per class)" if cfg.data.name.value == "folder" else ""
        raise GancliError(f"model.conditional=true needs a data set with classes{hint}, and data={cfg.data.name.value} "
                          "has none; set model.conditional=false")
    with torch.device("meta"):  # builds the networks without allocating their weights
        build_models(cfg.model, shape, len(classes or []))
    check_pack(cfg.model.pack, cfg.train.batch_size)
    if cfg.augment.active and len(shape) != 3:
        raise GancliError(f"augment={cfg.augment.name.value} transforms images, and data={cfg.data.name.value} is "
                          "2-D points; use augment=none")
    if cfg.train.resume not in (None, "auto"):
        checkpoint.find(cfg.train.resume)
    if cfg.eval.every and cfg.data.name not in LABELLED | MIXTURES:
        raise GancliError(
            f"eval.every needs a labelled data set ({', '.join(sorted(d.value for d in LABELLED))}) or ring/grid, "
            f"not data={cfg.data.name.value}; set eval.every=0"
        )
    find_weights(cfg.eval.inception_weights)
    tracking.check(cfg.logger)
    return device


def train(cfg: TrainApp, run_dir: Path) -> dict[str, Any]:
    """Train G and D as `cfg` says, writing everything under `run_dir`; returns the summary."""
    t_start = time.perf_counter()
    device = check(cfg)
    precision = cfg.precision.name
    runtime.configure_backends(device, precision)
    runtime.seed_everything(cfg.seed)
    steps, batch_size = cfg.train.steps, cfg.train.batch_size

    ranks = runtime.Ranks.current()  # rank 0 of 1 unless torchrun started this process
    main_rank = ranks.is_main  # the one process that writes files and logs

    # Data, networks, optimizers and the step that runs them.
    data = load_data(cfg.data, cfg.seed)
    plan = plan_for(cfg, device, data_parallel=ranks.data_parallel)
    timer = SectionTimer(device)
    train_step = TrainStep(cfg, data, device, plan, timer, ranks)  # builds G, D, optimizers and batches
    G = train_step.G_sample  # what grids and evaluations sample from: G's moving average, if any
    # one latent batch for every sample grid, drawn from its own generator so that writing
    # grids never shifts the training noise
    n_fixed = cfg.train.sample_n if data.is_image else POINTS_PLOTTED
    fixed_z, fixed_c = latents(G, n_fixed, device, torch.Generator().manual_seed(cfg.seed + 1))
    grid_cols = None  # about square
    if G.n_classes and data.is_image:  # one class per row, the first classes of a long list
        fixed_c, grid_cols = class_rows(G.n_classes, n_fixed)
        fixed_z, fixed_c = fixed_z[: len(fixed_c)], fixed_c.to(device)

    plain_cfg = to_plain(cfg)
    ckpt_dir, samples_dir = run_dir / "checkpoints", run_dir / "samples"

    # Resume.
    start = 0
    resume_from = _resume_path(cfg.train.resume, ckpt_dir)
    if resume_from is not None:
        state = checkpoint.load(resume_from)
        _check_resumable(state, plain_cfg, train_step.state_dict(), resume_from)
        train_step.load_state_dict(state)
        runtime.set_rng_state(state["rng"], device)
        start = state["step"]
        log.info("resumed from %s at step %d", resume_from, start)
    if ranks.rank:  # each rank draws its own noise; rank 0 keeps the single-process stream
        torch.manual_seed((cfg.seed * 1_000_003 + start) * 1_000_003 + ranks.rank)
    if main_rank:
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(plain_cfg))  # every check has passed

    # What the run writes: checkpoints, sample grids, timing and metrics rows, the tracker.
    def state_at(step: int) -> dict[str, Any]:
        runtime.synchronize(device)
        return {
            "step": step,
            **train_step.state_dict(),
            "rng": runtime.rng_state(device),
            "config": plain_cfg,
            "data_shape": list(data.shape),
            "classes": data.classes if G.n_classes else None,  # the name of each class a conditional G draws
        }

    tracker = tracking.make_tracker(cfg.logger, run_dir if main_rank else None)

    def write_samples(step: int) -> None:
        was_training = G.training
        G.eval()  # batch norm from running statistics, so a grid does not depend on its batch
        with torch.no_grad(), runtime.autocast(device, precision):
            fake = G(fixed_z, fixed_c)
        G.train(was_training)
        path = samples_dir / f"step_{step:06d}.png"
        if data.is_image:
            save_grid(fake, path, nrow=grid_cols)
        else:
            save_scatter(fake, path, real=data.x[:POINTS_PLOTTED], title=f"step {step}")
        tracker.image(step, "samples", path)

    global_batch = batch_size * ranks.world_size
    log.info(
        "training %s on %s (%s) for %d steps, batch %d, %s, %s, accel=%s; run folder %s",
        cfg.model.name, cfg.data.name.value, "x".join(map(str, data.shape)), steps, batch_size,
        runtime.describe(device), precision.value, plan.name, run_dir,
    )
    if ranks.data_parallel:
        log.info("data parallel over %d process%s (%s): batch %d per process, %d in all", ranks.world_size,
                 "es" if ranks.world_size > 1 else "", torch.distributed.get_backend(), batch_size, global_batch)
    for note in plan.notes:
        log.info(note)
    if cfg.loss.name is LossName.wasserstein and not cfg.loss.gp_lambda and cfg.model.spectral_norm in (
            SpectralNorm.none, SpectralNorm.g):
        log.warning("loss=wasserstein with neither loss.gp_lambda nor spectral norm on D: nothing bounds the critic's "
                    "slope, so its scores can grow without limit (experiment=wgan_gp sets a gradient penalty)")
    flops_per_step = step_flops(cfg, data.shape)
    peak, peak_source = runtime.peak_flops(device, precision)
    timing = JsonLines(run_dir / "timing.jsonl") if main_rank else None
    metrics_log = JsonLines(run_dir / "metrics.jsonl") if cfg.eval.every and main_rank else None
    metrics: Optional[dict[str, Any]] = None
    n_interval = n_timed = 0
    train_s, images_done = 0.0, 0
    stats: dict[str, float] = {"loss_d": float("nan"), "loss_g": float("nan")}  # the last interval's means
    t_interval, pause_s = time.perf_counter(), 0.0
    step = start
    status = "completed"
    with progress_bar(steps, start, show=main_rank) as bar, _StopSignals(repeat_quits=not ranks.data_parallel) as stop:
        while step < steps:
            # ranks stop together: a data-parallel run agrees on stopping at the interval's sync
            if stop.requested and not ranks.data_parallel:
                status = "interrupted"
                break
            # One step: D update(s), then G's. Compilation and graph capture are timed apart.
            t_step = time.perf_counter()
            if train_step(step):
                n_timed += 1
            else:  # compilation or graph capture: reported apart, kept out of img/s
                pause_s += time.perf_counter() - t_step
            n_interval += 1
            step += 1
            bar.update(step)

            # Once per interval: the one host sync and, data-parallel, the one all-reduce.
            if step % cfg.train.log_every == 0 or step == steps:
                runtime.synchronize(device)
                interval_s = max(time.perf_counter() - t_interval - pause_s, 1e-9)
                ms = timer.read()
                steps_per_s = n_timed / interval_s
                means = train_step.take_stats()  # every stat the objective logs, averaged over the interval
                *sums, img_per_s, stops = ranks.sum(
                    [*means.values(), steps_per_s * batch_size, float(stop.requested)], device)
                stats = {key: total / ranks.world_size for key, total in zip(means, sums)}
                row = {
                    "step": step,
                    "elapsed_s": round(time.perf_counter() - t_start, 3),
                    "img_per_s": round(img_per_s, 1),
                    "d_step_ms": round(ms.get("d_step", 0.0) / n_interval, 3),
                    "g_step_ms": round(ms.get("g_step", 0.0) / n_interval, 3),
                    "data_ms": round(ms.get("data", 0.0) / n_interval, 3),
                    "peak_mem_mb": round(runtime.peak_memory_mb(device), 1),
                    "mfu": round(flops_per_step * steps_per_s / peak, 5),
                    **stats,
                }
                if main_rank:
                    timing.write(row)
                tracker.scalars(step, row)
                if n_timed:
                    train_s += interval_s
                    images_done += n_timed * global_batch
                line = f"loss_d {stats['loss_d']:.3f}  loss_g {stats['loss_g']:.3f}  {row['img_per_s']:.0f} img/s"
                bar.update(step, line)
                log.info("step %d/%d  %s  (d %.1f ms, g %.1f ms, data %.1f ms, MFU %.1f%%)", step, steps, line,
                         row["d_step_ms"], row["g_step_ms"], row["data_ms"], 100 * row["mfu"])
                bad = [key for key, value in stats.items() if not math.isfinite(value)]
                if bad:
                    if timing:
                        timing.close()
                    if metrics_log:
                        metrics_log.close()
                    tracker.close()
                    raise GancliError(
                        f"the losses became non-finite by step {step} ({', '.join(f'{k} {stats[k]}' for k in bad)}); "
                        "lower optimizer.lr or use precision=fp32"
                    )
                n_interval = n_timed = 0
                if ranks.data_parallel and stops:
                    status = "interrupted"
                    break
                t_interval, pause_s = time.perf_counter(), 0.0

            # Samples, checkpoints, metrics: file time stays out of img/s.
            t_write = time.perf_counter()
            sample_now = cfg.train.sample_every and step % cfg.train.sample_every == 0
            ckpt_now = cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0
            eval_now = cfg.eval.every and step % cfg.eval.every == 0
            if sample_now or ckpt_now or eval_now:
                ranks.average_buffers(*train_step.modules())  # one set of batch-norm statistics to save and sample with
            if sample_now and main_rank:
                write_samples(step)
            if ckpt_now and main_rank:
                state = state_at(step)
                checkpoint.save(state, ckpt_dir / f"step_{step:06d}.pt")
                checkpoint.save(state, ckpt_dir / "last.pt")
            if eval_now and main_rank:
                fake, asked = generate(G, cfg.eval.n, device, cfg.seed)
                metrics = {"step": step, **evaluate(fake, data, cfg.data, device, cfg.seed, cfg.eval.cache_dir,
                                                   cfg.eval.inception_weights, asked)}
                metrics_log.write(metrics)
                tracker.scalars(step, metrics, prefix="eval/")
                log.info("step %d metrics: %s", step, ", ".join(
                    f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"))
            pause_s += time.perf_counter() - t_write
    if timing:
        timing.close()
    if metrics_log:
        metrics_log.close()

    if step == start and resume_from is not None and status == "completed":
        log.info("the checkpoint is already at step %d of %d: nothing to train", step, steps)
    ranks.average_buffers(*train_step.modules())
    checksums = ranks.checksums(*train_step.modules()) if ranks.data_parallel else None  # equal when every rank agrees
    if not main_rank:
        # pairs with rank 0's barrier below: torchrun ends every rank when one exits badly, so no
        # rank leaves before rank 0's last files are written
        ranks.barrier()
        return {"status": status, "steps": step, "loss_d": stats["loss_d"], "loss_g": stats["loss_g"],
                "objective": objective({"loss_g": stats["loss_g"]})}
    checkpoint.save(state_at(step), ckpt_dir / "last.pt")
    if not (samples_dir / f"step_{step:06d}.png").exists():
        write_samples(step)

    img_per_s = images_done / train_s if train_s > 0 else None
    summary = {
        "status": status,
        "stopped_by": signal.Signals(stop.signum).name if status == "interrupted" and stop.signum else None,
        "steps": step,
        "target_steps": steps,
        "wall_s": round(time.perf_counter() - t_start, 3),
        "train_s": round(train_s, 3),
        "setup_s": round(train_step.setup_s, 3),  # compilation and graph capture, outside img/s
        "img_per_s": round(img_per_s, 1) if img_per_s else None,
        "mfu": round(flops_per_step * img_per_s / global_batch / peak, 5) if img_per_s else None,
        "flops_per_step": flops_per_step,
        "peak_flops": peak,
        "peak_flops_source": peak_source,
        "loss_d": stats["loss_d"],
        "loss_g": stats["loss_g"],
        "stats": stats,  # every logged stat of the last interval
        "metrics": metrics,  # the last evaluation, when eval.every is on
        "model": cfg.model.name,
        "data": cfg.data.name.value,
        "batch_size": batch_size,  # per process
        "world_size": ranks.world_size,
        "global_batch_size": global_batch,
        "replica_checksums": checksums,
        "device": runtime.describe(device),
        "precision": precision.value,
        "accel": plan.used(),
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
    summary["objective"] = objective(summary)
    tracker.close()
    write_json(run_dir / "summary.json", summary)
    ranks.barrier()  # the other ranks wait here for these files
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


def _check_resumable(state: dict[str, Any], plain_cfg: dict[str, Any], expected: dict[str, Any], path: Path) -> None:
    """A run may change its schedule or optimizer settings, not what it trains; `expected` is the
    state this run's step saves, whose keys the checkpoint must have."""
    try:  # keys added to gancli since the checkpoint was written take their defaults
        saved = to_plain(train_config_from_plain(state["config"]))
    except (GancliError, TypeError, ValueError, KeyError, OmegaConfBaseException):
        saved = state["config"] if isinstance(state["config"], dict) else {}
    for key in ("model", "data"):
        if saved.get(key) != plain_cfg[key]:
            raise GancliError(
                f"cannot resume from {path}: it was trained with a different {key} config "
                f"({saved.get(key)}); use the same {key} settings or start a new run"
            )
    missing = [key for key in (*expected, "rng") if key not in state]
    if missing:
        raise GancliError(f"cannot resume from {path}: it lacks {', '.join(missing)}; resume with the ema and augment "
                          "settings it was trained with, or start a new run")


class _StopSignals:
    """Ctrl-C (SIGINT) or SIGTERM (a SLURM time limit or preemption, `kill`) asks the loop to stop
    after the current step and save. A second Ctrl-C quits at once, unless `repeat_quits` is off:
    torchrun passes the terminal's Ctrl-C on to its workers, who have already had it, and they must
    still reach the interval where all ranks stop together."""

    requested = False
    signum = 0  # the signal that asked

    def __init__(self, repeat_quits: bool = True):
        self.repeat_quits = repeat_quits
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopSignals":
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            if signum == signal.SIGINT and self.repeat_quits:
                raise KeyboardInterrupt
            return
        self.requested, self.signum = True, signum
        name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
        if not self.repeat_quits:
            log.warning("%s: every rank stops at the next log interval, and a checkpoint is saved", name)
        elif signum == signal.SIGINT:
            log.warning("Ctrl-C: stopping after this step and saving a checkpoint (press again to quit at once)")
        else:
            log.warning("%s: stopping after this step and saving a checkpoint", name)

    def __exit__(self, *exc: Any) -> None:
        for signum, previous in self._previous.items():
            signal.signal(signum, previous)
