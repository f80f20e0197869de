"""`gancli train`: `main` is the Hydra entry point; `train` is the whole loop, top to bottom."""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import math
import platform
import signal
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

import gancli
from gancli import checkpoint, data as data_sets, runfolder, runtime, tracking
from gancli.console import progress_bar
from gancli.config import (LABELLED, MIXTURES, LossName, NanPolicy, TrainApp, to_plain, to_typed,
                           train_config_from_plain)
from gancli.data import Data, class_names, data_shape, load_data
from gancli.errors import Diverged, GancliError, user_errors
from gancli.evaluate import evaluate, generate
from gancli.inception import find_weights
from gancli.files import keep_copy, write_json, write_text
from gancli.images import save_grid, save_scatter
from gancli.models import build_models, check_pack, class_rows, latents
from gancli.models.base import SpectralNorm
from gancli.runtime import AccelPlan
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
    with user_errors():
        try:
            summary = train(to_typed(cfg), run_dir)
        except GancliError as exc:
            if not in_sweep:
                raise
            # one failed job (a diverging learning rate, say) is a result of the sweep, not its end:
            # the report marks it, and a sweeper sees NaN, which Optuna records as a failed trial
            log.error("gancli: error: %s", exc)
            return float("nan")
        except Exception as exc:  # a crash (out of memory, a bug) ends this job, and a sweep goes on
            if not in_sweep:
                raise
            log.error("gancli: job failed: %s: %s", type(exc).__name__, exc, exc_info=True)
            return float("nan")
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


def check(cfg: TrainApp) -> torch.device:
    """Every start-up check that needs no data: device, precision, model and augmentation
    against the data shape, resume and evaluation settings, the logger."""
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


def as_planned(cfg: TrainApp, plan: AccelPlan) -> TrainApp:
    """`cfg` with the precision its plan computes in (`auto` made concrete), so that config.yaml,
    checkpoints and summary.json record what ran."""
    return dataclasses.replace(cfg, precision=dataclasses.replace(cfg.precision, name=plan.precision))


def claim_run_dir(cfg: TrainApp, run_dir: Path) -> runfolder.RunFolder:
    """Claim the run folder for this process (see runfolder.claim) and check that the checkpoint
    a resume would read fits this config; held until the process ends or the claim is left."""
    folder = runfolder.claim(run_dir, cfg.train.resume)
    if not folder.fresh:  # checked when this process first claimed it
        return folder
    try:
        resume_from = _resume_path(cfg.train.resume, run_dir / runfolder.CHECKPOINT_DIR)
        if resume_from is not None:  # the config only: the tensors are mapped, not read
            _check_resumable(checkpoint.load(resume_from, mmap=True), to_plain(cfg), {}, resume_from)
    except BaseException:
        runfolder.release(run_dir)
        raise
    return folder


def train(cfg: TrainApp, run_dir: Path) -> dict[str, Any]:
    """Train G and D as `cfg` says, writing everything under `run_dir`; returns the summary. The
    folder is claimed for the run, and a run that an exception ends is marked there."""
    if not runtime.Ranks.current().is_main:  # rank 0 alone writes the run folder
        return _train(cfg, run_dir, None)
    with claim_run_dir(cfg, run_dir) as folder:
        return _train(cfg, run_dir, folder)


def _train(cfg: TrainApp, run_dir: Path, folder: Optional[runfolder.RunFolder]) -> dict[str, Any]:
    """The run, top to bottom: set-up, resume, the loop, the last checkpoint and the summary."""
    t_start = time.perf_counter()
    device = check(cfg)
    ranks = runtime.Ranks.current()  # rank 0 of 1 unless torchrun started this process
    main_rank = ranks.is_main  # the one process that writes files and logs
    plan = plan_for(cfg, device, data_parallel=ranks.data_parallel)
    cfg, precision = as_planned(cfg, plan), plan.precision
    runtime.configure_backends(device, precision)
    runtime.seed_everything(cfg.seed)
    steps, batch_size = cfg.train.steps, cfg.train.batch_size

    # Data, networks, optimizers and the step that runs them.
    data = load_data(cfg.data, cfg.seed)
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
    ckpt_dir, samples_dir = run_dir / runfolder.CHECKPOINT_DIR, run_dir / "samples"
    last_ckpt = ckpt_dir / "last.pt"

    # Resume.
    start = 0
    counters = {"rollbacks": 0, "skipped_updates": 0}  # over the whole run, resumes included
    resume_from = _resume_path(cfg.train.resume, ckpt_dir)
    if resume_from is not None:
        state = checkpoint.load(resume_from)
        _check_resumable(state, plain_cfg, train_step.state_dict(), resume_from)
        _load(train_step, state, resume_from)
        runtime.set_rng_state(state["rng"], device)
        start = state["step"]
        counters.update(state.get("counters") or {})
        log.info("resumed from %s at step %d", resume_from, start)
    if ranks.rank:  # each rank draws its own noise; rank 0 keeps the single-process stream
        torch.manual_seed((cfg.seed * 1_000_003 + start) * 1_000_003 + ranks.rank)
    if main_rank:
        write_text(run_dir / "config.yaml", OmegaConf.to_yaml(plain_cfg))  # every check has passed
        folder.started = True

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
            "counters": run_counters(),
        }

    def run_counters() -> dict[str, int]:
        """Rollbacks and fp16's skipped updates over the whole run (earlier steps' skips included)."""
        return {"rollbacks": counters["rollbacks"],
                "skipped_updates": counters["skipped_updates"] + train_step.skipped_updates()}

    def save_checkpoint(step: int, keep: bool) -> None:
        """last.pt first, the file a resume reads; then, if `keep`, step_<step>.pt beside it."""
        checkpoint.save(state_at(step), last_ckpt)
        if keep:
            keep_copy(last_ckpt, ckpt_dir / f"step_{step:06d}.pt")

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
    log.info("precision %s: %s", precision.value, plan.precision_reason)
    for note in plan.notes:
        log.info(note)
    if cfg.loss.name is LossName.wasserstein and not cfg.loss.gp_lambda and cfg.model.spectral_norm in (
            SpectralNorm.none, SpectralNorm.g):
        log.warning("loss=wasserstein with neither loss.gp_lambda nor spectral norm on D: nothing bounds the critic's "
                    "slope, so its scores can grow without limit (experiment=wgan_gp sets a gradient penalty)")
    rollback = cfg.train.nan_policy is NanPolicy.rollback
    if rollback and main_rank and not last_ckpt.is_file():  # something to roll back to, from the start
        save_checkpoint(start, keep=False)
    flops_per_step = step_flops(cfg, data.shape)
    peak, peak_source = runtime.peak_flops(device, precision)
    timing = JsonLines(run_dir / "timing.jsonl", start) if main_rank else None
    metrics_log = JsonLines(run_dir / "metrics.jsonl", start) if cfg.eval.every and main_rank else None
    metrics: Optional[dict[str, Any]] = None
    n_interval = n_timed = 0
    train_s, images_done = 0.0, 0
    stats: dict[str, float] = {"loss_d": float("nan"), "loss_g": float("nan")}  # the last interval's means
    t_interval, pause_s = time.perf_counter(), 0.0
    step = start
    status = "completed"
    with progress_bar(steps, start, show=main_rank) as bar, _StopSignals(repeat_quits=not ranks.data_parallel) as stop, \
            _closing(timing, metrics_log, tracker):  # closed however the run ends
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

            sample_now = cfg.train.sample_every and step % cfg.train.sample_every == 0
            ckpt_now = cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0
            eval_now = cfg.eval.every and step % cfg.eval.every == 0

            # Once per interval: the one host sync and, data-parallel, the one all-reduce.
            problems: list[str] = []
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
                    **run_counters(),
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
                problems = _divergence(stats, cfg.train.divergence_limit)
                n_interval = n_timed = 0
                if ranks.data_parallel and stops and not problems:
                    status = "interrupted"
                    break
                t_interval, pause_s = time.perf_counter(), 0.0
            elif ckpt_now:  # a checkpoint between log lines: what it would save must be sound too
                means = train_step.peek_stats()
                sums = ranks.sum(list(means.values()), device)
                problems = _divergence({k: v / ranks.world_size for k, v in zip(means, sums)},
                                       cfg.train.divergence_limit)
            if ckpt_now and not problems and not train_step.weights_finite():
                problems = ["non-finite weights"]

            # A diverged run stops, or rolls back to its last good checkpoint.
            if problems:
                where = f"diverged by step {step} ({', '.join(problems)})"
                if not rollback or counters["rollbacks"] >= cfg.train.max_rollbacks:
                    tried = f" after {counters['rollbacks']} rollback(s)" if rollback else ""
                    raise _diverged(where + tried, last_ckpt)
                counters.update(run_counters(), rollbacks=counters["rollbacks"] + 1)  # the discarded step's skips count
                del train_step, G
                train_step, step = _roll_back(cfg, data, device, plan, timer, ranks, last_ckpt, counters["rollbacks"])
                G = train_step.G_sample
                log.warning("training %s; rolled back to step %d of %s with fresh noise, nothing else changed "
                            "(rollback %d of at most %d)", where, step, last_ckpt, counters["rollbacks"],
                            cfg.train.max_rollbacks)
                n_interval = n_timed = 0
                timer.read()
                t_interval, pause_s = time.perf_counter(), 0.0
                continue

            # Samples, checkpoints, metrics: file time stays out of img/s.
            t_write = time.perf_counter()
            if sample_now or ckpt_now or eval_now:
                ranks.average_buffers(*train_step.modules())  # one set of batch-norm statistics to save and sample with
            if sample_now and main_rank:
                write_samples(step)
            if ckpt_now and main_rank:
                save_checkpoint(step, keep=True)
            if eval_now and main_rank:
                fake, asked = generate(G, cfg.eval.n, device, cfg.seed)
                metrics = {"step": step, **evaluate(fake, data, cfg.data, device, cfg.seed, cfg.eval.cache_dir,
                                                   cfg.eval.inception_weights, asked)}
                metrics_log.write(metrics)
                tracker.scalars(step, metrics, prefix="eval/")
                log.info("step %d metrics: %s", step, ", ".join(
                    f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and k != "step"))
            pause_s += time.perf_counter() - t_write

        # The end: one set of batch-norm statistics, the last checkpoint and grid.
        if step == start and resume_from is not None and status == "completed":
            log.info("the checkpoint is already at step %d of %d: nothing to train", step, steps)
        ranks.average_buffers(*train_step.modules())
        checksums = ranks.checksums(*train_step.modules()) if ranks.data_parallel else None  # equal when ranks agree
        if not main_rank:
            # pairs with rank 0's barrier below: torchrun ends every rank when one exits badly, so no
            # rank leaves before rank 0's last files are written
            ranks.barrier()
            return {"status": status, "steps": step, "loss_d": stats["loss_d"], "loss_g": stats["loss_g"],
                    "objective": objective({"loss_g": stats["loss_g"]})}
        if not train_step.weights_finite():  # stopped between checks (Ctrl-C, say): keep the last good checkpoint
            raise _diverged(f"diverged by step {step} (non-finite weights)", last_ckpt)
        save_checkpoint(step, keep=False)
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
        **run_counters(),  # rollbacks after a divergence, and updates fp16's gradient scaler skipped
        "metrics": metrics,  # the last evaluation, when eval.every is on
        "model": cfg.model.name,
        "data": cfg.data.name.value,
        "batch_size": batch_size,  # per process
        "world_size": ranks.world_size,
        "global_batch_size": global_batch,
        "replica_checksums": checksums,
        "device": runtime.describe(device),
        "precision": precision.value,
        "precision_reason": plan.precision_reason,  # why precision=auto chose it, or "asked for"
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
    """A run may change its schedule or optimizer settings, not what it trains or the optimizer
    whose state it carries on; `expected` is the state this run's step saves, whose keys the
    checkpoint must have."""
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
    was, now = (saved.get("optimizer") or {}).get("name"), plain_cfg["optimizer"]["name"]
    if was is not None and was != now:
        raise GancliError(f"cannot resume from {path}: it was trained with optimizer={was}, whose state "
                          f"optimizer={now} cannot take; resume with optimizer={was} or start a new run")
    missing = [key for key in (*expected, "rng") if key not in state]
    if missing:
        raise GancliError(f"cannot resume from {path}: it lacks {', '.join(missing)}; resume with the ema and augment "
                          "settings it was trained with, or start a new run")


def _load(train_step: TrainStep, state: dict[str, Any], path: Path) -> None:
    """Load a checkpoint into the step, or fail in one line naming the part that does not fit."""
    try:
        train_step.load_state_dict(state)
    except ValueError as exc:
        raise GancliError(f"cannot resume from {path}: {exc}; resume with the settings it was trained with, "
                          "or start a new run") from None


def _diverged(what: str, last_ckpt: Path) -> Diverged:
    """The one line that ends a diverged run: what diverged, where its last good checkpoint is, the fixes."""
    kept = f"the last good checkpoint is {last_ckpt}" if last_ckpt.is_file() else "no checkpoint had been saved"
    return Diverged(f"training {what}; {kept}. Lower optimizer.lr, use precision=fp32, or set "
                    "train.nan_policy=rollback")


def _divergence(stats: dict[str, float], limit: float) -> list[str]:
    """The logged stats that show a diverged run: NaN, inf, or beyond +-limit (0: no limit)."""
    return [f"{key} {value:.3g}" for key, value in stats.items()
            if not math.isfinite(value) or (limit and abs(value) > limit)]


def _roll_back(cfg: TrainApp, data: Data, device: torch.device, plan: AccelPlan, timer: SectionTimer,
               ranks: runtime.Ranks, path: Path, rollbacks: int) -> tuple[TrainStep, int]:
    """A new step with the state of the checkpoint at `path`, and that checkpoint's step. The same
    steps with the same noise would diverge the same way, so the noise is drawn afresh, seeded by
    the rollback's number; the learning rates and everything else stay as they were. A new step,
    not a reloaded one: its CUDA graphs hold the old optimizer state's tensors."""
    gc.collect()  # the diverged step's tensors and graphs go first
    state = checkpoint.load(path)
    train_step = TrainStep(cfg, data, device, plan, timer, ranks)
    _load(train_step, state, path)
    torch.manual_seed((((cfg.seed * 1_000_003 + state["step"]) * 1_000_003 + rollbacks) * 1_000_003 + ranks.rank)
                      % 2**63)
    return train_step, state["step"]


@contextlib.contextmanager
def _closing(*files: Any) -> Iterator[None]:
    """Close each of `files` (None: skipped) when the block ends, however it ends."""
    try:
        yield
    finally:
        for f in files:
            if f is not None:
                f.close()


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
