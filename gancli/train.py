"""`gancli train`: `main` is the Hydra entry point; `train` is the whole loop, top to bottom."""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import platform
import signal
import sys
from pathlib import Path
from typing import Any, Callable, Optional

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

import gancli
from gancli import checkpoint, runtime, timing
from gancli.config import LossName, NanPolicy, TrainApp, to_plain, to_typed
from gancli.console import count, progress_bar
from gancli.distributed import Ranks
from gancli.errors import Diverged, GancliError, SweepInterrupted, user_errors
from gancli.files import write_text
from gancli.generator import generate
from gancli.models import class_rows, latents
from gancli.models.base import SpectralNorm
from gancli.quality import evaluate
from gancli.run import (Run, check, claim_run_dir, load_into, resume, resume_path, resumed_config,  # noqa: F401
                        setup)  # check: the command line's preflight
from gancli.runfolder import RunFolder, Writer, read_summary
from gancli.tracking import make_tracker

log = logging.getLogger(__name__)

CONFIG_NAME = "train"
POINTS_PLOTTED = 2000  # generated points in each scatter plot of 2-D data


@hydra.main(version_base="1.3", config_path="pkg://gancli.configs", config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> Optional[float]:
    """Train one job; return the value a sweeper minimises (see `objective`)."""
    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    in_sweep = hydra_cfg.mode == RunMode.MULTIRUN
    claimed: list[Path] = []  # the folder, once this job holds it and has written Hydra's record there
    with user_errors():
        try:
            summary = train(resolve(to_typed(cfg), list(hydra_cfg.overrides.task), run_dir), run_dir,
                            on_claim=lambda: claimed.append(_write_hydra_files(cfg, run_dir)))
        except GancliError as exc:
            if not in_sweep:
                raise
            # one failed job (a diverging learning rate, say) is a result of the sweep, not its end:
            # the report marks it, and a sweeper sees NaN, which Optuna records as a failed trial.
            # A job its folder refused leaves that folder as it was: its line goes to the console only.
            if claimed:
                log.error("gancli: error: %s", exc)
            else:
                print(f"gancli: error: {exc}", file=sys.stderr)
            return float("nan")
        except Exception as exc:  # a crash (out of memory, a bug) ends this job, and a sweep goes on
            if not in_sweep:
                raise
            log.error("gancli: job failed: %s: %s", type(exc).__name__, exc, exc_info=True)
            return float("nan")
    if summary["status"] == "interrupted":
        signum = signal.Signals[summary.get("stopped_by") or "SIGINT"]
        if in_sweep:  # a signal ends the whole sweep, not just this job
            raise SweepInterrupted(signum)
        sys.exit(128 + signum)  # the shell's convention: 130, 143
    return summary["objective"]["value"]


def _write_hydra_files(cfg: DictConfig, run_dir: Path) -> Path:
    """Hydra's record of the job in `.hydra/` (its config, Hydra's own, the command line's
    overrides), written once this process holds the folder; returns that folder."""
    hydra_cfg = HydraConfig.get()
    folder = run_dir / ".hydra"
    write_text(folder / "config.yaml", OmegaConf.to_yaml(cfg))
    write_text(folder / "hydra.yaml", OmegaConf.to_yaml(OmegaConf.create({"hydra": hydra_cfg})))
    write_text(folder / "overrides.yaml", OmegaConf.to_yaml(hydra_cfg.overrides.task))
    return folder


def resolve(cfg: TrainApp, overrides: list[str], run_dir: Path) -> TrainApp:
    """The config this job trains with: a resume's is its checkpoint's, with the command line's
    own overrides on top (run.resumed_config); a new run's is `cfg`."""
    return resumed_config(cfg, overrides, run_dir)


def sweep_objective(summary: dict[str, Any]) -> dict[str, Any]:
    """What a sweep minimises: the last evaluation's headline distance when eval.every is on
    (Inception FID, else classifier FD, reverse KL of a mixture, KL of stacked modes), else the
    final G loss."""
    metrics = summary.get("metrics") or {}
    for name in ("fid", "fd", "reverse_kl", "kl"):
        if isinstance(metrics.get(name), (int, float)):
            return {"name": name, "value": float(metrics[name])}
    return {"name": "loss_g", "value": float(summary["loss_g"])}


def train(cfg: TrainApp, run_dir: Path, on_claim: Optional[Callable[[], Any]] = None) -> dict[str, Any]:
    """Train G and D as `cfg` says, writing everything under `run_dir`; returns the summary. The
    folder is claimed for the run (then `on_claim` is called), and a run that an exception ends
    is marked there."""
    if not Ranks.current().is_main:  # rank 0 alone writes the run folder
        return _train(cfg, run_dir, None)
    with claim_run_dir(cfg, run_dir) as folder:
        if on_claim is not None:
            on_claim()
        return _train(cfg, run_dir, folder)


def _train(cfg: TrainApp, run_dir: Path, folder: Optional[RunFolder]) -> dict[str, Any]:
    """The run, top to bottom: set-up, resume, the loop, the last checkpoint and the summary."""
    # Set-up: checks, plan, data, state, executor and meter, as `gancli bench` sets them up.
    run = setup(cfg, Ranks.current())  # rank 0 of 1 unless torchrun started this process
    cfg, state, execute, meter, ranks = run.cfg, run.state, run.execute, run.meter, run.ranks
    loop = cfg.train

    # Resume.
    resumed_from = resume_path(loop.resume, run_dir)
    if resumed_from is not None:
        resume(run, resumed_from)
        finished = read_summary(run_dir)  # a run that finished stays as it finished
        if not ranks.data_parallel and not loop.minutes and state.step >= loop.steps and \
                finished.get("status") == "completed" and finished.get("steps") == state.step:
            log.info("the checkpoint is already at step %d of %d: nothing to train (train.steps=<more> trains on); "
                     "%s is left as it was", state.step, loop.steps, run_dir)
            execute.close()
            return finished
    elif loop.resume == "auto":  # the idiom of a requeued job: its first start has nothing to resume
        log.info("train.resume=auto: no checkpoint in %s yet, so this is a new run", run_dir)
    if ranks.rank:  # each rank draws its own noise; rank 0 keeps the single-process stream
        torch.manual_seed((cfg.seed * 1_000_003 + state.step) * 1_000_003 + ranks.rank)
    out = Writer(run_dir, state.step, ranks.is_main, make_tracker(cfg.logger, run_dir if ranks.is_main else None),
                 metrics=bool(cfg.eval.every))
    out.config(to_plain(cfg))  # every check has passed
    if folder is not None:
        folder.started = True
    grid = _Grid(run)
    _log_start(run, run_dir)
    if loop.nan_policy is NanPolicy.rollback and not out.last.is_file():  # something to roll back to, from the start
        out.checkpoint(run.checkpoint(), keep=False)

    # The loop: a step, then what its intervals ask for (a log line, a grid, a checkpoint, an evaluation).
    start, status, ended_by, metrics = state.step, "completed", "train.steps", None
    stats: dict[str, float] = {"loss_d": float("nan"), "loss_g": float("nan")}  # the last interval's means
    budget_s = loop.minutes * 60 if loop.minutes else None  # training seconds, set-up and pauses excluded
    steps = loop.steps if budget_s is None else math.inf
    with progress_bar(loop.steps if budget_s is None else None, start, show=ranks.is_main) as bar, \
            _StopSignals(repeat_quits=not ranks.data_parallel) as stop, contextlib.closing(out), \
            contextlib.closing(execute):
        meter.begin()
        while state.step < steps:
            if stop.requested and not ranks.data_parallel:  # data-parallel ranks agree at a log line
                status, ended_by = "interrupted", "signal"
                break
            meter.count(execute())  # D update(s), then G's; compilation and capture count as set-up
            step = state.step
            bar.update(step)
            # past the time budget: one process stops now, data-parallel ranks together at a log line
            over = budget_s is not None and meter.training_seconds() >= budget_s
            sample_now, ckpt_now, eval_now = (_due(step, every) for every in
                                              (loop.sample_every, loop.ckpt_every, cfg.eval.every))

            # Once per interval: the one host sync and, data-parallel, the one all-reduce.
            problems: list[str] = []
            if step % loop.log_every == 0 or step == steps or (over and not ranks.data_parallel):
                means = execute.take_stats()  # every stat the objective logs, averaged over the interval
                row, raised = meter.read(step, means, {"stop": float(stop.requested), "budget": float(over)})
                stats = {key: row[key] for key in means}
                if budget_s is not None:  # schedules span what the budget holds at the throughput so far
                    execute.schedule.length_images = meter.images_by(budget_s, step * meter.global_batch)
                with meter.paused():
                    out.log({**row, **execute.schedule.at(step * meter.global_batch), **state.counters()})
                    _show(bar, row, stats, execute.schedule.length_images / meter.global_batch)
                problems = _divergence(stats, loop.divergence_limit)
                if (raised["stop"] or raised["budget"]) and not problems:
                    status, ended_by = ("interrupted", "signal") if raised["stop"] else ("completed", "train.minutes")
                    break
            elif ckpt_now:  # a checkpoint between log lines: what it would save must be sound too
                problems = _divergence(meter.reduce(execute.peek_stats()), loop.divergence_limit)
            if ckpt_now and not problems and not state.weights_finite():
                problems = ["non-finite weights"]
            if problems:  # a diverged run stops, or rolls back to its last good checkpoint
                _roll_back(run, f"diverged by step {step} ({', '.join(problems)})", out.last)
                continue

            with meter.paused():  # file time stays out of img/s
                if sample_now or ckpt_now or eval_now:
                    ranks.average_buffers(*state.modules())  # one set of batch-norm statistics to save and sample with
                if sample_now:
                    out.grid(step, *grid.draw(state.G_sample))
                if ckpt_now:
                    out.checkpoint(run.checkpoint(), keep=True)
                if eval_now and ranks.is_main:
                    metrics = _evaluate(run, step)
                    out.evaluation(metrics)

        # The end: one set of batch-norm statistics, the last checkpoint and grid, the summary.
        ranks.average_buffers(*state.modules())
        checksums = ranks.checksums(*state.modules()) if ranks.data_parallel else None  # equal when ranks agree
        if not state.weights_finite():  # stopped between checks (Ctrl-C, say): keep the last good checkpoint
            raise _diverged(f"diverged by step {state.step} (non-finite weights)", out.last)
        out.checkpoint(run.checkpoint(), keep=False)
        if not out.grid_path(state.step).exists():
            out.grid(state.step, *grid.draw(state.G_sample))
        summary = _summary(run, status, ended_by, stop.signum, stats, metrics, checksums, resumed_from, run_dir,
                           start)
        out.summary(summary)
    ranks.barrier()  # every rank leaves once rank 0's last files are written
    if status == "interrupted":
        log.warning("interrupted at step %d; checkpoint saved. Continue with: gancli train train.resume=auto "
                    "hydra.run.dir=%s", state.step, run_dir)
    else:
        speed = f" ({summary['img_per_s']} img/s)" if summary["img_per_s"] is not None else ""
        log.info("done: %s in %.1f s%s; %s", count(state.step, "step"), summary["wall_s"], speed, run_dir)
    return summary


def _due(step: int, every: int) -> bool:
    """Whether an interval of `every` steps (0: never) ends at `step`."""
    return bool(every) and step % every == 0


class _Grid:
    """The sample grids' fixed latents: one batch for every grid of the run, drawn from its own
    generator so that writing grids never shifts the training noise; a conditional G's grid has
    one class per row."""

    def __init__(self, run: Run):
        self.device, self.precision, data = run.device, run.plan.precision, run.data
        n = run.cfg.train.sample_n if data.is_image else POINTS_PLOTTED
        G = run.state.G_sample
        self.z, self.c = latents(G, n, self.device, torch.Generator().manual_seed(run.cfg.seed + 1))
        self.nrow = None  # about square
        if G.n_classes and data.is_image:  # one class per row, the first classes of a long list
            self.c, self.nrow = class_rows(G.n_classes, n)
            self.z, self.c = self.z[: len(self.c)], self.c.to(self.device)
        self.real = None if data.is_image else data.x[:POINTS_PLOTTED]  # 2-D data is plotted over real points

    def draw(self, G: torch.nn.Module) -> tuple[torch.Tensor, Optional[int], Optional[torch.Tensor]]:
        """(G's samples of the fixed latents, the grid's columns, real points to plot them over)."""
        was_training = G.training
        G.eval()  # batch norm from running statistics, so a grid does not depend on its batch
        with torch.no_grad(), runtime.autocast(self.device, self.precision):
            fake = G(self.z, self.c)
        G.train(was_training)
        return fake, self.nrow, self.real


def _log_start(run: Run, run_dir: Path) -> None:
    """What is trained where, how, and why the plan left out what it did."""
    cfg, plan, ranks = run.cfg, run.plan, run.ranks
    if cfg.train.minutes:
        length = f"{cfg.train.minutes:g} minutes of training"
    elif run.state.step:  # resumed: what this process will train
        length = f"{count(max(cfg.train.steps - run.state.step, 0), 'more step')} to step {cfg.train.steps}"
    else:
        length = count(cfg.train.steps, "step")
    log.info(
        "training %s on %s (%s) for %s, batch %d, %s, %s, accel=%s; run folder %s",
        cfg.model.name, cfg.data.name.value, "x".join(map(str, run.data.shape)), length,
        cfg.train.batch_size, runtime.describe(run.device), plan.precision.value, plan.name, run_dir,
    )
    if ranks.data_parallel:
        log.info("data parallel over %d process%s (%s): batch %d per process, %d in all", ranks.world_size,
                 "es" if ranks.world_size > 1 else "", torch.distributed.get_backend(), cfg.train.batch_size,
                 cfg.train.batch_size * ranks.world_size)
    log.info("precision %s: %s", plan.precision.value, plan.precision_reason)
    for note in plan.notes:
        log.info(note)
    classes = f" in {len(run.data.classes)} classes" if run.data.classes else ""
    skipped = f", {count(run.data.skipped, 'file')} skipped" if run.data.skipped else ""
    log.info("data: %s%s%s; %s", count(len(run.data.x), "image" if run.data.is_image else "point"), classes, skipped,
             run.execute.data_path)
    for key, (ramp, start, end) in run.execute.schedule.ramps.items():
        span = f"{ramp.kimg:g} kimg" if ramp.kimg is not None else "the run"
        warmup = f" after a warm-up of {ramp.warmup_kimg:g} kimg" if ramp.warmup_kimg else ""
        log.info("schedule: %s from %g to %g, %s over %s%s", key, start, end, ramp.shape.value, span, warmup)
    if cfg.loss.name is LossName.wasserstein and not cfg.loss.gp_lambda and cfg.model.spectral_norm in (
            SpectralNorm.none, SpectralNorm.g):
        log.warning("loss=wasserstein with neither loss.gp_lambda nor spectral norm on D: nothing bounds the critic's "
                    "slope, so its scores can grow without limit (experiment=wgan_gp sets a gradient penalty)")


def _show(bar: progress_bar, row: dict[str, Any], stats: dict[str, float], steps: float) -> None:
    """A log interval on the progress bar and in the log; `steps`: the run's, or its estimate under
    a time budget (inf before one)."""
    line = f"loss_d {stats['loss_d']:.3f}  loss_g {stats['loss_g']:.3f}  {row['img_per_s']:.0f} img/s"
    total = round(steps) if math.isfinite(steps) else None
    bar.update(row["step"], line, total=total)
    log.info("step %d/%s  %s  (d %.1f ms, g %.1f ms, data %.1f ms, MFU %.1f%%)", row["step"],
             "?" if total is None else total, line, row["d_step_ms"], row["g_step_ms"], row["data_ms"],
             100 * row["mfu"])


def _evaluate(run: Run, step: int) -> dict[str, Any]:
    """The metrics of the generator grids sample from, at `step`, into the log and metrics.jsonl."""
    cfg = run.cfg
    when = {"step": step, "train_s": round(run.meter.training_seconds(), 3),  # quality against training time
            "elapsed_s": round(timing.clock() - run.meter.t_start, 3)}
    fake, asked = generate(run.state.G_sample, cfg.eval.n, run.device, cfg.seed)
    metrics = {**when, **evaluate(fake, run.data, cfg.data, run.device, cfg.seed, cfg.eval.cache_dir,
                                  cfg.eval.inception_weights, asked)}
    log.info("step %d metrics: %s", step, ", ".join(
        f"{k} {v:.4g}" for k, v in metrics.items() if isinstance(v, (int, float)) and k not in when))
    return metrics


def _summary(run: Run, status: str, ended_by: str, signum: int, stats: dict[str, float],
             metrics: Optional[dict[str, Any]], checksums: Optional[list[float]], resumed_from: Optional[Path],
             run_dir: Path, start: int) -> dict[str, Any]:
    """summary.json: how the run ended, its totals, and what ran where."""
    cfg, plan, ranks, meter = run.cfg, run.plan, run.ranks, run.meter
    summary = {
        "status": status,
        "ended_by": ended_by,  # train.steps, train.minutes (the time budget) or a signal
        "stopped_by": signal.Signals(signum).name if status == "interrupted" and signum else None,
        "steps": run.state.step,
        "steps_run": run.state.step - start,  # by this process (a resumed run's earlier ones not counted)
        "target_steps": None if cfg.train.minutes else cfg.train.steps,
        "minutes": cfg.train.minutes,  # the time budget, if any
        "train_s_total": round(meter.state_dict()["train_s"], 3),  # every session's, toward train.minutes
        "wall_s": round(timing.clock() - meter.t_start, 3),
        **meter.totals(),  # train_s, img_per_s, mfu
        "setup_s": round(run.execute.setup_s, 3),  # compilation and graph capture, outside img/s
        "flops_per_step": meter.flops_per_step,
        "peak_flops": meter.peak_flops,
        "peak_flops_source": meter.peak_source,
        "loss_d": stats["loss_d"],
        "loss_g": stats["loss_g"],
        "stats": stats,  # every logged stat of the last interval
        **run.state.counters(),  # rollbacks after a divergence, and updates fp16's gradient scaler skipped
        "metrics": metrics,  # the last evaluation, when eval.every is on
        "model": cfg.model.name,
        "data": cfg.data.name.value,
        "data_samples": len(run.data.x),  # the images (or points) trained on
        "data_skipped": run.data.skipped,  # files of data.path that are not usable images
        "batch_size": cfg.train.batch_size,  # per process
        "world_size": ranks.world_size,
        "global_batch_size": cfg.train.batch_size * ranks.world_size,
        "replica_checksums": checksums,
        "device": runtime.describe(run.device),
        "precision": plan.precision.value,
        "precision_reason": plan.precision_reason,  # why precision=auto chose it, or "asked for"
        "accel": plan.used(),
        "resumed_from": str(resumed_from) if resumed_from else None,
        "run_dir": str(run_dir),
        "versions": {
            "gancli": gancli.__version__,
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "python": platform.python_version(),
            "hydra": hydra.__version__,
        },
    }
    summary["objective"] = sweep_objective(summary)
    return summary


def _diverged(what: str, last_ckpt: Path) -> Diverged:
    """The one line that ends a diverged run: what diverged, where its last good checkpoint is, the fixes."""
    kept = f"the last good checkpoint is {last_ckpt}" if last_ckpt.is_file() else "no checkpoint had been saved"
    return Diverged(f"training {what}; {kept}. Lower optimizer.lr, use precision=fp32, or set "
                    "train.nan_policy=rollback")


def _divergence(stats: dict[str, float], limit: float) -> list[str]:
    """The logged stats that show a diverged run: NaN, inf, or beyond +-limit (0: no limit)."""
    return [f"{key} {value:.3g}" for key, value in stats.items()
            if not math.isfinite(value) or (limit and abs(value) > limit)]


def _roll_back(run: Run, where: str, last_ckpt: Path) -> None:
    """Load the last good checkpoint into the run's state, in place, and go on from its step; or,
    under nan_policy=stop or past max_rollbacks, end the run in one line. The same steps with the
    same noise would diverge the same way, so the noise is drawn afresh, seeded by the rollback's
    number; the learning rates and everything else stay as they were."""
    loop, state = run.cfg.train, run.state
    rollback = loop.nan_policy is NanPolicy.rollback
    if not rollback or state.rollbacks >= loop.max_rollbacks:
        tried = f" after {state.rollbacks} rollback(s)" if rollback else ""
        raise _diverged(where + tried, last_ckpt)
    counters = state.counters()  # the discarded steps' skipped updates count too
    gc.collect()  # the diverged step's tensors go first
    load_into(state, checkpoint.load(last_ckpt), last_ckpt, rng=False)
    state.set_counters({**counters, "rollbacks": counters["rollbacks"] + 1})
    torch.manual_seed((((run.cfg.seed * 1_000_003 + state.step) * 1_000_003 + state.rollbacks) * 1_000_003
                       + run.ranks.rank) % 2**63)
    run.execute.take_stats()  # the diverged interval's stats and times are dropped
    run.execute.timer.read()
    run.meter.begin()
    log.warning("training %s; rolled back to step %d of %s with fresh noise, nothing else changed "
                "(rollback %d of at most %d)", where, state.step, last_ckpt, state.rollbacks, loop.max_rollbacks)


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
