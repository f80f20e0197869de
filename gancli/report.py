"""`gancli report <folder> [<folder> ...] [out=DIR]`: one table row per training run, and plots.

Each folder is a run folder, a sweep (multirun) folder, or any folder searched for run folders.
A run folder holds `.hydra/overrides.yaml`, `summary.json` or `timing.jsonl`; its own subfolders
are not searched. The table is printed, and report.csv, report.json, loss.png, img_per_s.png and,
when any run was evaluated, metrics.png and metrics_time.png (each metric against steps and
against minutes of training) are written into `out`: by default the one folder given,
or the current directory when several are given.

A run without summary.json is "incomplete" (killed, or still running). Files that cannot be read
are skipped and named in the notes column; a run whose status cannot be read is "broken".
`SweepReport` is a Hydra callback that reports on a sweep when it ends.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig
from rich.markup import escape
from rich.table import Table

from gancli.console import table_console
from gancli.errors import GancliError
from gancli.files import atomic, write_csv, write_json
from gancli.runfolder import EVAL_WHEN, RunRecord, is_run_folder, number, read_run

log = logging.getLogger(__name__)

USAGE = """usage: gancli report <folder> [<folder> ...] [out=DIR] [over=KEY]

One row per training run found in the folders (run folders, sweep folders, or folders that hold
them): overrides that differ between runs, status, steps, wall time, img/s, final losses and the
latest metrics. Writes report.csv, report.json, loss.png, img_per_s.png, metrics.png and
metrics_time.png (the metrics against minutes of training, so runs of different speeds compare) into
out=DIR (default: the one folder given, or the current directory for several). over=seed adds a
table of means and standard errors over the runs that differ only in that override, written to
report_over_seed.csv and .json.
"""
# before the metric columns; `notes` comes last
COLUMNS = ["run", "overrides", "status", "steps", "target_steps", "wall_s", "img_per_s", "loss_d", "loss_g"]
_HEADERS = {"wall_s": "wall s", "img_per_s": "img/s"}
_STATUS_STYLE = {"completed": "green", "interrupted": "yellow", "incomplete": "yellow", "failed": "red",
                 "broken": "bold red"}
_MAX_LEGEND = 12  # runs; a bigger sweep's plots go without a legend


def main(argv: list[str]) -> None:
    """The `gancli report` command."""
    if any(arg in ("-h", "--help") for arg in argv):
        print(USAGE, end="")
        return
    folders: list[Path] = []
    out: Path | None = None
    over: str | None = None
    for arg in argv:
        key, sep, value = arg.partition("=")
        if arg.startswith("-"):
            raise GancliError(f"unknown option '{arg}'; gancli report takes folders and out=DIR (gancli report --help)")
        if sep and key == "out":
            if not value:
                raise GancliError("out= needs a folder, e.g. out=reports")
            out = Path(value).expanduser()
        elif sep and key == "over":
            if not re.fullmatch(r"[\w.]+", value):
                raise GancliError(f"over={value} must name an override key, e.g. over=seed")
            over = value
        elif sep and re.fullmatch(r"[\w.+~]+", key) and not Path(arg).exists():
            raise GancliError(f"unknown argument '{arg}'; gancli report takes folders and out=DIR "
                              "(gancli report --help)")
        else:
            folders.append(Path(arg).expanduser())
    if not folders:
        raise GancliError("no folder given; pass a run or sweep folder, e.g. gancli report outputs/multirun")
    report(folders, out, over)


def report(folders: list[Path], out: Path | None = None, over: str | None = None) -> list[dict[str, Any]]:
    """Print the table of the runs in `folders` and write the report files into `out`, with means
    over the override `over` when given; returns the rows."""
    paths = find_runs(folders)
    runs = [read_run(path) for path in paths]
    unstarted = [run for folder in folders for run in not_started(folder) if run.path not in set(paths)]
    if unstarted:  # an interrupted sweep's jobs that never ran, in job order among the others
        runs = sorted([*runs, *unstarted], key=lambda run: _natural_key(run.path))
        paths = [run.path for run in runs]
    rows, columns = report_rows(runs)
    base = _common_parent(paths)
    shared = shared_overrides(runs)
    if out is None:
        out = folders[0] if len(folders) == 1 else Path.cwd()
    console = table_console()
    console.print(_table(rows, columns, base, shared))
    groups: list[dict[str, Any]] = []
    if over is not None:
        groups, group_columns = group_rows(runs, rows, columns, over)
        console.print(_group_table(groups, group_columns, over, base))
    try:
        write_csv(out / "report.csv", rows, columns)
        write_json(out / "report.json", [{k: _json_value(v) for k, v in row.items()} for row in rows])
        written = ["report.csv", "report.json", *plot_runs(runs, [_label(row) for row in rows], out)]
        if over is not None:
            write_csv(out / f"report_over_{over}.csv", groups, group_columns)
            write_json(out / f"report_over_{over}.json", [{k: _json_value(v) for k, v in g.items()} for g in groups])
            written[2:2] = [f"report_over_{over}.csv", f"report_over_{over}.json"]
    except OSError as exc:
        raise GancliError(f"cannot write the report into {out} ({exc.strerror or exc}); "
                          "choose a writable folder with out=DIR") from None
    console.print(f"{', '.join(written)} in {out}")
    return rows


def find_runs(folders: list[Path]) -> list[Path]:
    """Every run folder in `folders`, once each, sorted by path with job numbers in numeric order."""
    found: dict[Path, None] = {}  # an ordered set
    for folder in folders:
        if not folder.exists():
            raise GancliError(f"{folder} does not exist; pass a run folder, a sweep folder or a folder that holds them")
        if not folder.is_dir():
            raise GancliError(f"{folder} is a file; pass the run folder that holds it")
        found.update(dict.fromkeys(_walk(folder.resolve())))
    if not found:
        raise GancliError(f"no run folders in {', '.join(map(str, folders))}; a run folder holds "
                          ".hydra/overrides.yaml, "
                          "summary.json or timing.jsonl (pass a folder that gancli train wrote)")
    return sorted(found, key=_natural_key)


def not_started(folder: Path) -> list[RunRecord]:
    """The jobs a basic sweep in `folder` planned (its multirun.yaml) that have no run folder:
    an interrupted sweep's jobs that never started."""
    import yaml

    from gancli.cli import _expand_sweeps

    try:
        hydra_cfg = yaml.safe_load((folder / "multirun.yaml").read_text(encoding="utf-8"))["hydra"]
        task, subdir = list(hydra_cfg["overrides"]["task"]), hydra_cfg["sweep"]["subdir"]
        basic = "BasicSweeper" in str(hydra_cfg["sweeper"].get("_target_", ""))
    except (OSError, yaml.YAMLError, KeyError, TypeError, AttributeError):
        return []  # not a sweep folder, or not one gancli can plan again
    if not basic or subdir != "${hydra.job.num}":
        return []
    jobs = _expand_sweeps([override for override in task if not override.startswith("hydra.")])
    return [RunRecord(path=folder.resolve() / str(num), overrides=overrides, status="not started", steps=None,
                      target_steps=None, wall_s=None, img_per_s=None, loss_d=None, loss_g=None, metrics={},
                      timing=[], evaluations=[], notes=["the sweep ended before this job started"])
            for num, overrides in enumerate(jobs) if not is_run_folder(folder / str(num))]


def _walk(folder: Path) -> Iterator[Path]:
    if is_run_folder(folder):
        yield folder
        return
    try:
        children = sorted(p for p in folder.iterdir()
                          if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    except OSError:  # unreadable: nothing to report there
        return
    for child in children:
        yield from _walk(child)


def _natural_key(path: Path) -> tuple:
    """Sweep job folders 2 before 10."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts)


def shared_overrides(runs: list[RunRecord]) -> list[str]:
    """The overrides every readable run has; none when fewer than two runs can be compared."""
    readable = [run.overrides for run in runs if run.overrides is not None]
    if len(readable) < 2:
        return []
    common = set(readable[0]).intersection(*readable[1:])
    return [o for o in readable[0] if o in common]


def report_rows(runs: list[RunRecord]) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per run, and the columns: COLUMNS, the union of the metrics in order seen, notes."""
    metric_columns: dict[str, str] = {}  # metric -> column, prefixed where it would clash with ours
    for run in runs:
        for metric in run.metrics:
            metric_columns.setdefault(metric, f"metric.{metric}" if metric in COLUMNS + ["notes"] else metric)
    shared = set(shared_overrides(runs))
    base = _common_parent([run.path for run in runs])
    rows = []
    for run in runs:
        name = os.path.relpath(run.path, base) if len(runs) > 1 else run.path.name
        own = None if run.overrides is None else [o for o in run.overrides if o not in shared]
        rows.append({
            "run": name if name != "." else run.path.name,
            "overrides": None if own is None else " ".join(own) or "(defaults)",
            "status": run.status,
            "steps": run.steps,
            "target_steps": run.target_steps,
            "wall_s": run.wall_s,
            "img_per_s": run.img_per_s,
            "loss_d": run.loss_d,
            "loss_g": run.loss_g,
            **{column: run.metrics.get(metric) for metric, column in metric_columns.items()},
            "notes": "; ".join(run.notes) or None,
        })
    return rows, [*COLUMNS, *metric_columns.values(), "notes"]


def group_rows(runs: list[RunRecord], rows: list[dict[str, Any]], columns: list[str],
               over: str) -> tuple[list[dict[str, Any]], list[str]]:
    """One row per set of runs that differ only in the override `over` (seed, say): for every
    numeric column the mean and the standard error of the mean over those runs, and how many
    there were. Failed and unreadable runs are left out, and counted in `left_out`."""
    groups: dict[tuple[str, ...], list[dict[str, Any]]] = {}
    left_out: dict[tuple[str, ...], int] = {}
    for run, row in zip(runs, rows):
        key = tuple(o for o in (run.overrides or []) if o.partition("=")[0] != over)
        if run.status != "completed":
            left_out[key] = left_out.get(key, 0) + 1
            continue
        groups.setdefault(key, []).append(row)
    numeric = [c for c in columns if c not in ("run", "overrides", "status", "target_steps", "notes")]
    shared = set(shared_overrides(runs))
    out_rows = []
    for key, members in groups.items():
        own = [o for o in key if o not in shared]
        row: dict[str, Any] = {"overrides": " ".join(own) or "(defaults)", "runs": len(members),
                               "left_out": left_out.get(key, 0)}
        for column in numeric:
            values = [float(m[column]) for m in members if number(m[column]) is not None]
            mean = sum(values) / len(values) if values else None
            se = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values))
                  if len(values) > 1 else None)
            row[column], row[f"{column}_se"] = mean, se
        out_rows.append(row)
    out_columns = ["overrides", "runs", "left_out", *(c for col in numeric for c in (col, f"{col}_se"))]
    return out_rows, out_columns


def _group_table(rows: list[dict[str, Any]], columns: list[str], over: str, base: Path) -> Table:
    table = Table(title=f"gancli report: means over {over} (± standard error) in {base}")
    numeric = [c for c in columns if c not in ("overrides", "runs", "left_out") and not c.endswith("_se")]
    shown = [c for c in numeric if any(row[c] is not None for row in rows)]
    table.add_column("overrides", overflow="fold")
    table.add_column("runs", justify="right")
    for column in shown:
        table.add_column(_HEADERS.get(column, column), justify="right")
    for row in rows:
        cells = []
        for column in shown:
            mean, se = row[column], row[f"{column}_se"]
            cells.append("" if mean is None else f"{mean:.4g}" + ("" if se is None else f" ± {se:.2g}"))
        runs = str(row["runs"]) + (f" (+{row['left_out']} failed)" if row["left_out"] else "")
        table.add_row(escape(row["overrides"]), runs, *cells)
    return table


def _common_parent(paths: list[Path]) -> Path:
    return paths[0].parent if len(paths) == 1 else Path(os.path.commonpath(paths))


def _json_value(value: Any) -> Any:
    """JSON has no NaN or infinity: those become null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _label(row: dict[str, Any]) -> str:
    """A plot legend entry: the run and what sets it apart."""
    label = row["run"] if row["overrides"] in (None, "(defaults)") else f"{row['run']} {row['overrides']}"
    return label if len(label) <= 48 else label[:47] + "…"


def _table(rows: list[dict[str, Any]], columns: list[str], base: Path, shared: list[str]) -> Table:
    # a metric every run shares (the real-data floor, the classifier's accuracy) goes under the
    # table, and an empty notes column is left out, so the columns that differ stay readable
    constant = [c for c in columns if c not in COLUMNS and c != "notes" and len(rows) > 1
                and rows[0][c] is not None and all(row[c] == rows[0][c] for row in rows)]
    captions = [f"every run also has: {' '.join(shared)}"] if shared else []
    if constant:
        captions.append("and the same " + ", ".join(f"{c} {_cell(rows[0], c)}" for c in constant))
    table = Table(title=f"gancli report: {len(rows)} run{'s' if len(rows) != 1 else ''} in {base}",
                  caption=escape("; ".join(captions)) if captions else None)
    hidden = {"target_steps", *constant}  # steps reads 6/10 instead of a target column
    if all(row["notes"] is None for row in rows):
        hidden.add("notes")
    shown = [c for c in columns if c not in hidden]
    for column in shown:
        left = column in ("run", "overrides", "status", "notes")
        table.add_column(_HEADERS.get(column, column), justify="left" if left else "right", overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row, column) for column in shown))
    return table


def _cell(row: dict[str, Any], column: str) -> str:
    value = row[column]
    if value is None:
        return ""
    if column == "status":
        return f"[{_STATUS_STYLE[value]}]{value}[/]" if value in _STATUS_STYLE else escape(value)
    if column == "steps" and row["target_steps"] not in (None, value):
        return f"{value}/{row['target_steps']}"
    if column in ("run", "overrides", "notes"):
        return escape(value)  # text, not rich markup
    if isinstance(value, int):
        return str(value)
    if column in ("wall_s", "img_per_s"):
        return f"{value:.1f}"
    if column in ("loss_d", "loss_g"):
        return f"{value:.4f}"
    return f"{value:.4g}"


def plot_runs(runs: list[RunRecord], labels: list[str], out: Path) -> list[str]:
    """loss.png, img_per_s.png and, when any run was evaluated, metrics.png (and metrics_time.png,
    against training time) in `out`; returns their names."""
    # the Agg canvas and a bare Figure: no display, and no pyplot state shared with other code
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    def save(fig: Figure, name: str) -> str:
        FigureCanvasAgg(fig)
        with atomic(out / name) as tmp:
            fig.savefig(tmp, format="png")
        return name

    timings = [run.timing for run in runs]
    fig = Figure(figsize=(11, 4), dpi=100, layout="constrained")
    for ax, key in zip(fig.subplots(1, 2), ("loss_d", "loss_g")):
        _lines(ax, timings, labels, key, legend=key == "loss_d")
    written = [save(fig, "loss.png")]

    fig = Figure(figsize=(7, 4), dpi=100, layout="constrained")
    _lines(fig.subplots(), timings, labels, "img_per_s", legend=True)
    written.append(save(fig, "img_per_s.png"))

    evaluations = [run.evaluations for run in runs]
    metrics = list(dict.fromkeys(k for rows in evaluations for row in rows for k in row if k not in EVAL_WHEN))
    # reference values that never change (the real-data floor, the class count) are not curves
    varying = [m for m in metrics if len({row[m] for rows in evaluations for row in rows if m in row}) > 1]
    metrics = varying or metrics
    if metrics:
        written.append(save(_metric_grid(evaluations, labels, metrics, "step"), "metrics.png"))
        # the same against training time, so that runs of different speeds compare at equal time
        if any("train_s" in row for rows in evaluations for row in rows):
            written.append(save(_metric_grid(evaluations, labels, metrics, "train_s"), "metrics_time.png"))
    return written


def _metric_grid(evaluations: list[list[dict[str, Any]]], labels: list[str], metrics: list[str], x: str) -> Any:
    """A figure of one panel per metric, a line per run against `x` (step, or train_s in minutes)."""
    from matplotlib.figure import Figure

    ncols = min(3, len(metrics))
    nrows = math.ceil(len(metrics) / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows), dpi=100, layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for i, (ax, metric) in enumerate(zip(axes, metrics)):
        _lines(ax, evaluations, labels, metric, legend=i == 0, x=x)
    for ax in axes[len(metrics):]:
        ax.set_visible(False)
    return fig


def _lines(ax: Any, series: list[list[dict[str, Any]]], labels: list[str], key: str, legend: bool,
           x: str = "step") -> None:
    """One line per run of `key` against `x` (step, or train_s shown in minutes); rows without
    either value are left out."""
    drawn = 0
    scale = 1 / 60 if x == "train_s" else 1
    for i, (rows, label) in enumerate(zip(series, labels)):
        points = [(row[x] * scale, row[key]) for row in rows
                  if number(row.get(key)) is not None and number(row.get(x)) is not None]
        if points:
            steps, values = zip(*points)
            # a run keeps its colour across the plots
            ax.plot(steps, values, marker="o", markersize=3, linewidth=1.2, label=label, color=f"C{i % 10}")
            drawn += 1
    ax.set_title(key, fontsize=10)
    ax.set_xlabel("minutes of training" if x == "train_s" else x)
    ax.grid(alpha=0.3)
    if not drawn:
        ax.text(0.5, 0.5, f"no {key} values", ha="center", va="center", transform=ax.transAxes, color="gray")
    elif legend and drawn <= _MAX_LEGEND:
        ax.legend(fontsize=7)


class SweepReport(Callback):
    """Hydra callback: when a sweep ends, print its table and write the report into the sweep folder."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        report_sweep(Path(str(config.hydra.sweep.dir)))


def report_sweep(sweep_dir: Path) -> None:
    """A sweep's table and report, written into its folder, when it ends or is interrupted."""
    try:
        report([sweep_dir], out=sweep_dir)
    except Exception as exc:  # noqa: BLE001 (the sweep is over: a report problem must not fail it or hide why)
        log.warning("no report for the sweep: %s", exc if isinstance(exc, GancliError) else repr(exc))
