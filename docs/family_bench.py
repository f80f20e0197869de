"""img/s of each model family at 32 and 64 pixels (RGB, batch 64) in `gancli bench`: the plain
objective (experiment=none) on each family, and the presets that train their own family
(experiment=r3gan, experiment=stylegan2). DCGAN, the classic GAN and the ResNet at their
default widths; the residual networks and StyleGAN2 at the CPU widths their quality was
measured at in docs/recipes.md (their defaults are sized for a GPU: seconds a step here).
Prints a markdown table.

    python docs/family_bench.py --out family_bench [--sizes 32,64] [--extra device=cpu]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from recipes import R3GAN_CPU, STYLEGAN2_CPU

RESIDUAL_CPU = ["model=residual", *R3GAN_CPU[1:]]
STYLEGAN2_NETS = ["model=stylegan2", *STYLEGAN2_CPU[1:]]
ROWS = {  # name -> overrides
    "dcgan": ["experiment=none", "model=dcgan"],
    "classic": ["experiment=none", "model=classic"],
    "resnet": ["experiment=none", "model=resnet"],
    "residual (CPU width)": ["experiment=none", *RESIDUAL_CPU],
    "stylegan2 (CPU width)": ["experiment=none", *STYLEGAN2_NETS],
    "experiment=rpgan (dcgan, the default)": ["experiment=rpgan"],
    "experiment=r3gan (CPU width)": R3GAN_CPU,
    "experiment=stylegan2 (CPU width)": [*STYLEGAN2_CPU, "train.batch_size=64"],
}
SHORT = ["bench.warmup=3", "bench.steps=10", "bench.repeats=3"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("family_bench"))
    parser.add_argument("--sizes", default="32,64")
    parser.add_argument("--only", default="")
    parser.add_argument("--extra", nargs="*", default=[])
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    names = args.only.split(",") if args.only else list(ROWS)
    table = {}
    for name in names:
        for side in sizes:
            run = args.out / f"{name.split()[0].replace('=', '_')}_{side}"
            if not (run / "bench.json").is_file():
                cmd = [sys.executable, "-m", "gancli", "bench", *ROWS[name], "data=fake", f"data.image_size={side}",
                       "data.channels=3", "data.n=4096", "train.batch_size=64", "accel=fast", "precision=auto",
                       *SHORT, *args.extra, f"hydra.run.dir={run}"]
                print("+", " ".join(cmd[2:]), flush=True)
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            row = json.loads((run / "bench.json").read_text())[0]
            table[name, side] = row
    print("| family | " + " | ".join(f"{s}x{s} img/s (ms/step)" for s in sizes) + " |")
    print("|---|" + "---|" * len(sizes))
    for name in names:
        cells = [f"{table[name, s]['img_per_s']:,.0f} ({table[name, s]['ms_per_step']:.0f})" for s in sizes]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
