"""Training on a folder of photos at scale: prepare 70,000 JPEGs once, then the peak memory of runs
that stream their batches from the prepared file (10,000 and 70,000 images) against the same
model's own, and training img/s streaming against the data kept on the device.

    python docs/stream_bench.py --out /tmp/db70            # writes the folder once (about 4 GB), then times

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("stream_bench"))
    parser.add_argument("--n", type=int, default=70000)
    parser.add_argument("--small", type=int, default=10000)
    parser.add_argument("--steps-256", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2, help="alternated rounds of the img/s comparison at 64 px")
    args = parser.parse_args()
    out = args.out
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
