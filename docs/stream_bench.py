"""Training on a folder of photos at scale: prepare 70,000 JPEGs once, then the peak memory of runs
that stream their batches from the prepared file (10,000 and 70,000 images) against the same
model's own, and training img/s streaming against the data kept on the device.

    python docs/stream_bench.py --out /tmp/db70 --rounds 3  # writes the folder once (about 4 GB), then times
    python docs/stream_bench.py --out /tmp/db70 --interleaved  # img/s of both paths inside one run

The folder is docs/data_bench.py's: photo-like JPEGs of 512x512, random crops of the two
photographs that ship with scikit-learn. Each run is a `gancli train` process; its peak resident
memory is the kernel's count for that process (wait4's ru_maxrss), which includes pages of
memory-mapped files it touched but not the page cache that plain reads fill.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from data_bench import make_photos, time_one_by_one

RESIDUAL_256 = ["model=residual", "model.width=4", "model.width_max=32", "model.group_size=4", "model.blocks=1",
                "model.expansion=1", "precision=fp32"]  # a small net, so that 256 px runs steps on 2 cores
DCGAN_64 = ["model=dcgan", "model.g_width=16", "model.d_width=16"]


def gancli(args: list[str], log: Path) -> dict:
    """Run `gancli <args>`; its wall time, peak RSS and the output it wrote."""
    t0 = time.perf_counter()
    with open(log, "w") as out:
        child = subprocess.Popen([sys.executable, "-m", "gancli", *args], stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - t0
    if status != 0:
        raise SystemExit(f"gancli {' '.join(args)} failed; see {log}")
    return {"wall_s": round(wall, 2), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def prepare(folder: Path, size: int, cache: Path, log: Path) -> dict:
    shutil.rmtree(cache, ignore_errors=True)
    row = gancli(["prepare", "data=folder", f"data.path={folder}", f"data.image_size={size}", "data.channels=3",
                  f"data.cache_dir={cache}"], log)
    n = len(list(folder.iterdir()))
    return {**row, "files": n, "img_per_s": round(n / row["wall_s"], 1)}


def train(name: str, data: list[str], model: list[str], steps: int, out: Path, batch: int = 32) -> dict:
    run = out / "runs" / name
    shutil.rmtree(run, ignore_errors=True)
    row = gancli(["train", "experiment=none", *data, *model, f"train.batch_size={batch}", f"train.steps={steps}",
                  "train.log_every=10", "train.sample_every=0", "train.ckpt_every=0", f"hydra.run.dir={run}"],
                 out / f"{name}.log")
    summary = json.loads((run / "summary.json").read_text())
    line = next(x for x in (run / "train.log").read_text().splitlines() if "data: " in x)
    return {"run": name, **row, "img_per_s": summary["img_per_s"], "steps": summary["steps"],
            "data_line": line.split("data: ", 1)[1]}


def interleaved(folder: Path, size: int, cache: Path, model: list[str], segments: int, steps: int) -> dict:
    """img/s of one run, in this process, whose batches come in turn from the data kept on the
    device and from the file streamed (`steps` steps each, alternating which goes first): the
    same model, weights and machine state for both, so the ratio is the data path's alone."""
    import statistics

    import torch
    from hydra import compose, initialize_config_module

    from gancli.config import to_typed
    from gancli.data import Batches, StreamBatches, load_data
    from gancli.run import setup

    with initialize_config_module("gancli.configs", version_base="1.3"):
        cfg = to_typed(compose("train", overrides=[
            "experiment=none", "data=folder", f"data.path={folder}", f"data.image_size={size}", "data.channels=3",
            f"data.cache_dir={cache}", *model, "train.batch_size=32"]))
    data = load_data(cfg.data, 0)
    run = setup(cfg, data=data)
    layout = torch.channels_last if run.plan.channels_last else torch.contiguous_format
    paths = {"resident": Batches(data, 32, 0, run.device, memory_format=layout),
             "stream": StreamBatches(data, 32, 0, run.device, memory_format=layout)}
    for _ in range(3):
        run.execute()
    img_s: dict[str, list[float]] = {name: [] for name in paths}
    for segment in range(segments):
        for name in (["resident", "stream"] if segment % 2 == 0 else ["stream", "resident"]):
            run.execute.batches = paths[name]
            t0 = time.perf_counter()
            for _ in range(steps):
                run.execute()
            img_s[name].append(steps * 32 / (time.perf_counter() - t0))
    ratios = [s / r for s, r in zip(img_s["stream"], img_s["resident"])]
    return {"what": f"interleaved at {size} px, {segments} x {steps} steps each", "model": " ".join(model),
            **{f"{name}_img_per_s": round(statistics.median(v), 1) for name, v in img_s.items()},
            "ratio_median": round(statistics.median(ratios), 3),
            "ratio_quartiles": [round(q, 3) for q in statistics.quantiles(ratios, n=4)]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("stream_bench"))
    parser.add_argument("--n", type=int, default=70000)
    parser.add_argument("--small", type=int, default=10000)
    parser.add_argument("--steps-256", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds of the img/s comparison at 64 px")
    parser.add_argument("--interleaved", action="store_true",
                        help="only the comparison inside one run, on the sets already prepared")
    args = parser.parse_args()
    out = args.out
    if args.interleaved:
        rows = [interleaved(out / "photos", 64, out / "cache64", DCGAN_64, 30, 50),
                interleaved(out / f"photos{args.small}", 256, out / "cache256s", RESIDUAL_256, 8, 5)]
        for row in rows:
            print(json.dumps(row), flush=True)
        (out / "stream_bench_interleaved.json").write_text(json.dumps(rows, indent=1) + "\n")
        return
    folder, small = out / "photos", out / f"photos{args.small}"
    make_photos(folder, args.n)
    if not small.is_dir():  # the first files, hard-linked: the same bytes, no more disk
        small.mkdir()
        for path in sorted(folder.glob("*.jpg"))[: args.small]:
            os.link(path, small / path.name)
    rows: list[dict] = []

    def emit(row: dict) -> None:
        rows.append(row)
        print(json.dumps(row), flush=True)
        (out / "stream_bench.json").write_text(json.dumps(rows, indent=1) + "\n")

    files = sorted(folder.glob("*.jpg"))
    for size in (256, 64):
        emit({"what": f"decode one by one at {size}", "img_per_s": round(time_one_by_one(files[:300], size), 1)})
        emit({"what": f"prepare {args.n} at {size}", **prepare(folder, size, out / f"cache{size}",
                                                                out / f"prepare{size}.log")})
    emit({"what": f"prepare {args.small} at 256", **prepare(small, 256, out / "cache256s", out / "prepare256s.log")})

    def folder_data(path: Path, size: int, cache: str, where: str) -> list[str]:
        return ["data=folder", f"data.path={path}", f"data.image_size={size}", "data.channels=3",
                f"data.cache_dir={out / cache}", f"data.on_device={where}"]

    # peak memory at 256 px: the model alone (64 random images on the device), then streamed runs
    fake = ["data=fake", "data.n=64", "data.image_size=256", "data.channels=3"]
    emit(train("model_alone_256", fake, RESIDUAL_256, args.steps_256, out))
    emit(train(f"stream_{args.small}_256", folder_data(small, 256, "cache256s", "false"), RESIDUAL_256,
               args.steps_256, out))
    emit(train(f"stream_{args.n}_256", folder_data(folder, 256, "cache256", "false"), RESIDUAL_256,
               args.steps_256, out))
    emit(train(f"auto_{args.n}_256", folder_data(folder, 256, "cache256", "auto"), RESIDUAL_256, 3, out))

    # img/s at 64 px, a fast model (data matters most), one epoch of all images each, alternated
    epoch = args.n // 32
    for r in range(args.rounds):
        for where in ("true", "false"):
            emit(train(f"{'resident' if where == 'true' else 'stream'}_{args.n}_64_r{r}",
                       folder_data(folder, 64, "cache64", where), DCGAN_64, epoch, out))


if __name__ == "__main__":
    main()
