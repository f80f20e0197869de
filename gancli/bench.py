"""`gancli bench`: time the step of every accel x precision x batch-size variant in one process."""

from __future__ import annotations

import contextlib
import gc
import importlib.resources
import logging
import statistics
import time
import traceback
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import hydra
import torch
from hydra import compose
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from rich.table import Table

from gancli import runtime
from gancli.accel import AccelPlan
from gancli.config import BenchApp, Precision, to_typed
from gancli.console import table_console
from gancli.data import load_data
from gancli.errors import GancliError, user_errors
from gancli.files import write_csv, write_json
from gancli.run import Run, check as check_run, setup
from gancli.timing import SectionTimer

log = logging.getLogger(__name__)

CONFIG_NAME = "bench"
AXES = {"accel": "accel", "precision": "precision", "train.batch_size": "batch_size"}  # override -> bench key
COLUMNS = ["variant", "batch_size", "precision", "ms_per_step", "img_per_s", "speedup", "mfu", "peak_mem_mb"]


@hydra.main(version_base="1.3", config_path="pkg://gancli.configs", config_name=CONFIG_NAME)
def main(cfg: DictConfig) -> None:
    # the user's training overrides, to compose each variant from (the matrix keys are re-added)
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("bench.", "hydra."))]
    with user_errors():
        bench(to_typed(cfg), Path(HydraConfig.get().runtime.output_dir), overrides)


def split_axes(args: list[str]) -> list[str]:
    """`accel=a,b`, `precision=x,y` and `train.batch_size=64,1024` become the bench's lists."""
    out = []
    for arg in args:
        key, sep, value = arg.partition("=")
        if sep and key in AXES and not value.startswith("["):
            out.append(f"bench.{AXES[key]}=[{value}]")
        else:
            out.append(arg)
    return out


def check(cfg: BenchApp) -> None:
    """Every variant must be runnable here before any is timed."""
    accel_options = {p.name[:-5] for p in (importlib.resources.files("gancli.configs") / "accel").iterdir()
                     if p.name.endswith(".yaml")}
    for name in cfg.bench.accel:
        if name not in accel_options:
            raise GancliError(f"accel={name} is not an option; choose from: {', '.join(sorted(accel_options))}")
    for size in cfg.bench.batch_size:
        if size < 1:
            raise GancliError(f"train.batch_size={size} is not allowed: a whole number >= 1")
    for name in cfg.bench.precision:
        if name not in Precision.__members__:
            raise GancliError(f"precision={name} is not an option; choose from: {', '.join(Precision.__members__)}")
        for size in cfg.bench.batch_size:  # the sizes timed, not train.batch_size, which bench does not use
            check_run(replace(cfg, precision=replace(cfg.precision, name=Precision[name]),
                              train=replace(cfg.train, batch_size=size)))


def bench(cfg: BenchApp, run_dir: Path, overrides: list[str]) -> list[dict[str, Any]]:
    """Time each variant; print the table and write bench.json and bench.csv in `run_dir`."""
    check(cfg)
    rows: list[dict[str, Any]] = []
    data_cache: dict[str, Any] = {}
    for batch_size in cfg.bench.batch_size:
        for precision, computes in _precisions(cfg):
            for accel in cfg.bench.accel:
                extra = [f"accel={accel}", f"precision={precision}", f"train.batch_size={batch_size}"]
                variant = to_typed(compose(CONFIG_NAME, overrides=[*overrides, *extra]))
                try:
                    rows.append(time_variant(variant, cfg.bench.warmup, cfg.bench.steps, cfg.bench.repeats,
                                             data_cache))
                except Exception as exc:  # one broken variant (a failed graph capture, say) leaves the rest timed
                    rows.append(_failed_row(accel, batch_size, computes, exc, run_dir / "bench_errors.txt"))
                    log.error("%s batch %d %s failed: %s", accel, batch_size, computes, rows[-1]["error"])
                    continue
                log.info("%s batch %d %s: %.2f ms/step, %.0f img/s", accel, batch_size, computes,
                         rows[-1]["ms_per_step"], rows[-1]["img_per_s"])
    for row in rows:
        row["speedup"] = _speedup(row, rows)
    write_json(run_dir / "bench.json", rows)
    columns = list(dict.fromkeys(key for row in rows for key in row))  # a failed row adds `error`
    write_csv(run_dir / "bench.csv", rows, columns)
    _print_table(rows, cfg, run_dir)
    failed = [r for r in rows if r.get("error")]
    if failed:
        raise GancliError(f"{len(failed)} of {len(rows)} variants failed (rows marked in bench.json); "
                          f"tracebacks in {run_dir / 'bench_errors.txt'}")
    return rows


def _precisions(cfg: BenchApp) -> list[tuple[str, str]]:
    """(name, the precision this device computes it in) for each of bench.precision, each computed
    precision once: `auto` (what `gancli train` runs by default) is left out where it means one
    timed already (fp32, on a device without native bf16)."""
    device = runtime.resolve_device(cfg.device)
    chosen: dict[str, str] = {}  # computed -> name
    for name in cfg.bench.precision:
        concrete, _ = runtime.resolve_precision(device, Precision[name])
        chosen.setdefault(concrete.value, name)
    return [(name, computes) for computes, name in chosen.items()]


def _failed_row(accel: str, batch_size: int, precision: str, exc: Exception, log_file: Path) -> dict[str, Any]:
    """The row of a variant that raised: no timings, its error, and its traceback appended to `log_file`."""
    with open(log_file, "a") as f:
        f.write(f"== {accel} batch {batch_size} {precision}\n")
        f.write("".join(traceback.format_exception(exc)))
    message = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return {**dict.fromkeys(COLUMNS), "variant": accel, "batch_size": batch_size, "precision": precision,
            "error": f"{type(exc).__name__}: {message}"[:300]}


def warmup_steps(warmup: int, plan: AccelPlan) -> int:
    """The untimed steps before timing: `warmup`, and at least what CUDA graphs need to warm up
    and capture; the timed steps start at this index."""
    return max(warmup, plan.warmup_steps + 2)


def prepare(cfg: BenchApp, warmup: int, data_cache: dict, timer_cls: type = SectionTimer) -> Run:
    """A variant's run, set up as `gancli train` sets it up and stepped through `warmup` untimed
    steps (graph capture and compilation happen there). `data_cache` keeps one data set across
    variants."""
    # the last variant's run, finished or failed, sits in reference cycles: free it first
    gc.collect()
    key = repr(cfg.data)
    if key not in data_cache:
        data_cache.clear()  # one data set in memory at a time
        data_cache[key] = load_data(cfg.data, cfg.seed)
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    run = setup(cfg, data=data_cache[key], timer_cls=timer_cls)
    if run.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(run.device)
    for _ in range(warmup_steps(warmup, run.plan)):
        run.execute()
    return run


def time_variant(cfg: BenchApp, warmup: int, steps: int, repeats: int, data_cache: dict,
                 timer_cls: type = SectionTimer) -> dict[str, Any]:
    """Median time of `repeats` runs of `steps` training steps, after untimed warm-up steps.
    `timer_cls` times the step's sections as training does (a timer that records nothing: not at all)."""
    run = prepare(cfg, warmup, data_cache, timer_cls)
    device, plan, precision = run.device, run.plan, run.plan.precision
    times = []
    with contextlib.closing(run.execute):
        for _ in range(repeats):
            runtime.synchronize(device)
            t0 = time.perf_counter()
            for _ in range(steps):
                run.execute()
            runtime.synchronize(device)
            run.execute.timer.read()  # what training does once per log interval
            times.append((time.perf_counter() - t0) / steps)
    stats = run.execute.take_stats()
    seconds = statistics.median(times)
    batch_size = run.cfg.train.batch_size
    return {
        "variant": plan.name + (f"+compile:{plan.compile}" if plan.compile else ""),
        "batch_size": batch_size,
        "precision": precision.value,
        "ms_per_step": round(seconds * 1e3, 3),
        "img_per_s": round(batch_size / seconds, 1),
        "speedup": None,
        "mfu": round(run.meter.flops_per_step / seconds / run.meter.peak_flops, 5),
        "peak_mem_mb": round(runtime.peak_memory_mb(device), 1),
        "setup_s": round(run.execute.setup_s, 3),
        "cuda_graphs": plan.cuda_graphs,
        "compile": plan.compile,
        "notes": "; ".join(plan.notes),
        "loss_d": round(stats["loss_d"], 4),
        "loss_g": round(stats["loss_g"], 4),
        "device": runtime.describe(device),
        "torch": torch.__version__,
    }


def _speedup(row: dict[str, Any], rows: list[dict[str, Any]]) -> Optional[float]:
    """img/s over `baseline` at the same batch size: its fp32 row if timed, else the same precision."""
    if row["img_per_s"] is None:
        return None
    same_batch = [r for r in rows if r["variant"] == "baseline" and r["batch_size"] == row["batch_size"]
                  and r["img_per_s"] is not None]
    base = next((r for r in same_batch if r["precision"] == "fp32"), None) or next(
        (r for r in same_batch if r["precision"] == row["precision"]), None
    )
    return round(row["img_per_s"] / base["img_per_s"], 2) if base else None


def _print_table(rows: list[dict[str, Any]], cfg: BenchApp, run_dir: Path) -> None:
    device = next((row["device"] for row in rows if row.get("device")), "every variant failed")
    table = Table(title=f"gancli bench: {cfg.model.name} on {cfg.data.name.value}, {device}, torch {torch.__version__}")
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("variant", "precision") else "right")
    for row in rows:
        cells = []
        for column in COLUMNS:
            value = row[column]
            if column == "ms_per_step" and row.get("error"):
                cells.append("failed")
            elif value is None:
                cells.append("-")
            elif column == "mfu":
                cells.append(f"{100 * value:.1f}%")
            elif column == "speedup":
                cells.append(f"{value:.2f}x")
            else:
                cells.append(str(value))
        table.add_row(*cells)
    console = table_console()
    console.print(table)
    console.print(f"bench.json and bench.csv in {run_dir}")
