"""Preparing a folder of photos: gancli's prepare (every core, JPEG draft decoding) against decoding
each file in full, one at a time (what `data=folder` did before prepared sets), and the time from
`gancli train` to its first step once the folder is prepared.

    python docs/data_bench.py --n 2000 --out /tmp/photos    # writes the folder once, then times

The folder holds `n` photo-like JPEGs of 512x512: random crops of the two photographs that ship
with scikit-learn, enlarged. Each timing starts from files in the page cache (the folder was just
written or read), so it measures decoding, not the disk.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_photos(folder: Path, n: int, side: int = 512) -> None:
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder.mkdir(parents=True, exist_ok=True)
    have = len(list(folder.glob("*.jpg")))
    photos = load_sample_images().images  # two, 427 x 640
    rng = np.random.default_rng(0)
    for i in range(n):
        crop = int(rng.integers(192, 400))
        photo = photos[i % 2]
        y, x = rng.integers(0, photo.shape[0] - crop), rng.integers(0, photo.shape[1] - crop)
        if i < have:
            continue  # drawn all the same, so the folder is the same whoever made it
        image = Image.fromarray(photo[y : y + crop, x : x + crop]).resize((side, side), Image.BICUBIC)
        image.save(folder / f"{i:06d}.jpg", quality=90)


def time_one_by_one(files: list[Path], size: int) -> float:
    """Images per second decoding each file in full and resizing it, in this process."""
    from gancli.decode import read_image, square

    t0 = time.perf_counter()
    for path in files:
        square(read_image(path, "RGB"), size)
    return len(files) / (time.perf_counter() - t0)


def time_prepare(folder: Path, size: int, cache: Path) -> float:
    """Images per second of a first prepare (fresh cache), worker start-up included."""
    from gancli.config import DataConfig, DataName
    from gancli.data import load_data

    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    data = load_data(DataConfig(name=DataName.folder, path=str(folder), image_size=size, channels=3,
                                cache_dir=str(cache)), seed=0)
    return len(data.x) / (time.perf_counter() - t0)


def time_to_first_step(folder: Path, size: int, cache: Path, run: Path) -> tuple[float, float]:
    """Seconds from `gancli train` (on the prepared set) to its `data:` log line, written when the
    set-up (data, model, executor) is done, and to its `step 1` line, after the first step."""
    shutil.rmtree(run, ignore_errors=True)
    t0 = time.perf_counter()
    child = subprocess.Popen([sys.executable, "-m", "gancli", "train", "data=folder", f"data.path={folder}",
                              f"data.image_size={size}", "data.channels=3", f"data.cache_dir={cache}",
                              "model=dcgan" if size <= 64 else "model=residual",
                              "train.batch_size=8", "train.steps=1", "train.log_every=1", "train.sample_every=0",
                              "train.ckpt_every=0", f"hydra.run.dir={run}"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    data_s = step_s = float("nan")
    for line in child.stdout:
        if "data: " in line and data_s != data_s:
            data_s = time.perf_counter() - t0
        if "step 1/1" in line:
            step_s = time.perf_counter() - t0
    if child.wait() != 0:
        raise SystemExit(f"gancli train exited {child.returncode}")
    return data_s, step_s


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("data_bench"))
    parser.add_argument("--sizes", default="64,256")
    parser.add_argument("--sample", type=int, default=300, help="files decoded one by one (a sample of the folder)")
    args = parser.parse_args()
    folder = args.out / "photos"
    make_photos(folder, args.n)
    files = sorted(folder.glob("*.jpg"))[: args.n]
    rows = []
    for size in map(int, args.sizes.split(",")):
        cache = args.out / f"cache{size}"
        one = time_one_by_one(files[: args.sample], size)
        prep = time_prepare(folder, size, cache)
        data_s, step_s = time_to_first_step(folder, size, cache, args.out / f"run{size}")
        rows.append({"size": size, "files": len(files), "one_by_one_img_per_s": round(one, 1),
                     "prepare_img_per_s": round(prep, 1), "ratio": round(prep / one, 2),
                     "train_to_data_s": round(data_s, 2), "train_to_step_1_s": round(step_s, 2)})
        print(json.dumps(rows[-1]), flush=True)
    (args.out / "data_bench.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
