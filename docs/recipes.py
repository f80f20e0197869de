"""Train each recipe on one data set at equal steps (or equal minutes of training) and seeds, then
measure it with `gancli eval`.

    python docs/recipes.py digits --seeds 0,1,2 --out recipes_out [--only ns,hinge_sn] [--steps 1000]
    python docs/recipes.py digits --recipes presets --minutes 2 --seeds 0,1 --out presets_out
    python docs/recipes.py digits --recipes r3gan --seeds 0,1,2 --extra eval.every=250 eval.n=1000
    python docs/recipes.py mnist --recipes stylegan2 --minutes 2 --seeds 0,1,2 --out families_out

Data sets: digits (bundled), mnist (the MNIST test split in --mnist-root), ring and grid. Recipe
sets: the recipes (by default: each loss, penalty and augmentation on the default model), the
presets (every experiment preset for images, at the same data), r3gan (experiment=r3gan at a
CPU-sized width, with and without its schedules) and stylegan2 (experiment=stylegan2 at a CPU-sized
width against R3GAN's networks and the default recipe). Every run keeps G's moving average
(`ema.half_life_kimg=10 ema.rampup=0.05`), which does not change training, and is evaluated
twice: as G_ema and as the raw G (`use_ema=false`). Writes <out>/<data>.json with every run's
metrics and prints a markdown table of means over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

EMA = ["ema.half_life_kimg=10", "ema.rampup=0.05"]
# the recipes on the plain groups (experiment=none): the default DCGAN, batch 64, non-saturating loss
IMAGES = {
    "ns": [],
    "lsgan": ["loss=lsgan"],
    "hinge_sn": ["experiment=hinge_sn"],
    "wgan_gp": ["experiment=wgan_gp"],
    "rpgan": ["experiment=rpgan"],
    "diffaug": ["augment=diffaug"],
    "ada": ["augment=ada", "augment.speed_kimg=50"],  # ADA's 500 kimg is for runs of millions of images
    # hinge_sn's two halves apart
    "hinge": ["loss=hinge"],
    "sn": ["model.spectral_norm=d"],
    # the preset's gamma (1) against a tenth and ten times it
    "rpgan_gamma0.1": ["experiment=rpgan", "loss.r1_gamma=0.1", "loss.r2_gamma=0.1"],
    "rpgan_gamma10": ["experiment=rpgan", "loss.r1_gamma=10", "loss.r2_gamma=10"],
}
POINTS = {  # the default MLP, batch 256 (POINTS_BASE), on the plain groups
    "ns": [],
    "lsgan": ["loss=lsgan"],
    "hinge_sn": ["experiment=hinge_sn"],
    "wgan_gp": ["experiment=wgan_gp"],
    "rpgan": ["experiment=rpgan"],
    "pacgan2": ["model.pack=2"],  # PacGAN (Lin et al. 2018): D scores pairs
    "pacgan4": ["model.pack=4"],
}
# experiment=r3gan's networks at a width a CPU trains (its own 64/256 are GPU-sized: 4.6 s a step on 2 cores)
R3GAN_CPU = ["experiment=r3gan", "model.width=16", "model.width_max=64", "model.group_size=8"]
PRESETS = {  # every experiment preset for images, as a user runs it, on the data given
    "ns": ["experiment=none"],  # the plain groups: gancli train's default before experiment=rpgan
    "hinge_sn": ["experiment=hinge_sn"],
    "wgan_gp": ["experiment=wgan_gp"],
    "rpgan": ["experiment=rpgan"],
    "r3gan_cpu": R3GAN_CPU,
    "r3gan_cpu_constant": [*R3GAN_CPU, "schedule=constant"],
    "mnist_classic": ["experiment=mnist_classic", "train.batch_size=64"],
}
R3GAN = {"r3gan_cpu": R3GAN_CPU, "r3gan_cpu_constant": [*R3GAN_CPU, "schedule=constant"]}
# experiment=stylegan2's networks at a width a CPU trains (its auto width at 28 pixels is 512)
STYLEGAN2_CPU = ["experiment=stylegan2", "model.width=32", "model.width_max=128", "model.z_dim=128", "model.w_dim=128"]
FAMILIES = {  # the StyleGAN2 preset against R3GAN's and the default recipe
    "rpgan": ["experiment=rpgan"],  # gancli train's default: DCGAN with R3GAN's objective
    "r3gan_cpu_constant": [*R3GAN_CPU, "schedule=constant"],
    "stylegan2_cpu": STYLEGAN2_CPU,
    # the auto gamma is 0.0049 at 28 pixels and batch 32: R1 as strong as the other presets' instead
    "stylegan2_cpu_gamma1": [*STYLEGAN2_CPU, "loss.r1_gamma=1"],
    # StyleGAN2's networks with the default objective (rpgan: R1 + R2 = 1, Adam 2e-4 betas 0/0.99)
    "stylegan2_cpu_rpgan": ["experiment=rpgan", "model=stylegan2", *STYLEGAN2_CPU[1:]],
}
RECIPE_SETS = {"recipes": None, "presets": PRESETS, "r3gan": R3GAN, "stylegan2": FAMILIES}
# what experiment=ring set when these were measured (it is now the tuned preset of docs/mode-collapse.md)
POINTS_BASE = ["model=mlp", "train.batch_size=256", "train.log_every=100"]
DATA = {
    "digits": (["data=digits"], IMAGES),
    "mnist": (["data=mnist", "data.split=test"], IMAGES),  # data.root from --mnist-root
    "ring": ([*POINTS_BASE, "data=ring"], POINTS),
    "grid": ([*POINTS_BASE, "data=grid"], POINTS),
}
HEADLINE = {"image": ["fd", "fd_real_floor", "classes_covered", "class_kl"], "points": ["modes", "hq", "reverse_kl"]}


def gancli(*args: str, log: Path) -> None:
    with open(log, "a") as f:
        f.write(f"+ gancli {' '.join(args)}\n")
        f.flush()
        proc = subprocess.run([sys.executable, "-m", "gancli", *args], stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"gancli {' '.join(args)} failed (exit {proc.returncode}); see {log}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data", choices=DATA)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--only", default="")
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--minutes", type=float, default=None, help="train.minutes for every run, instead of steps")
    parser.add_argument("--recipes", choices=RECIPE_SETS, default="recipes")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides added to every run")
    parser.add_argument("--out", type=Path, default=Path("recipes_out"))
    parser.add_argument("--mnist-root", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"))
    parser.add_argument("--eval-n", type=int, default=2500)
    args = parser.parse_args()
    data_args, recipes = DATA[args.data]
    if args.recipes == "recipes":  # each recipe on the plain groups (unless it is a preset), as measured
        recipes = {name: overrides if any(o.startswith("experiment=") for o in overrides)
                   else ["experiment=none", *overrides] for name, overrides in recipes.items()}
    elif args.recipes == "presets" and args.data in ("ring", "grid"):  # the presets for 2-D points
        data_args = [f"data={args.data}"]
        recipes = {**{name: [*overrides, *POINTS_BASE] for name, overrides in PRESETS.items()
                      if name in ("ns", "hinge_sn", "wgan_gp", "rpgan")},
                   args.data: [f"experiment={args.data}"],  # the tuned preset of docs/mode-collapse.md
                   "pacgan_2d": ["experiment=pacgan_2d"]}  # PacGAN's own networks and settings
    else:
        recipes = RECIPE_SETS[args.recipes]
    if args.data == "mnist":
        data_args = [*data_args, f"data.root={args.mnist_root}"]
    points = args.data in ("ring", "grid")
    steps = args.steps or (5000 if points else 1000)
    names = args.only.split(",") if args.only else list(recipes)
    out = args.out / args.data
    out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / f"{args.data}.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else []
    done = {(r["recipe"], r["seed"]) for r in results}
    for name in names:
        for seed in map(int, args.seeds.split(",")):
            if (name, seed) in done:
                continue
            run = out / f"{name}_s{seed}"
            length = [f"train.minutes={args.minutes}", "train.sample_every=0"] if args.minutes else [
                f"train.steps={steps}", f"train.sample_every={steps}"]
            # the data after the recipe: a preset's own data (mnist_classic's) gives way to the one measured
            overrides = [*recipes[name], *data_args, *EMA, f"seed={seed}", *length, "train.ckpt_every=0",
                         *args.extra, "device=cpu", f"hydra.run.dir={run}"]
            t0 = time.time()
            gancli("train", *overrides, log=out / "log.txt")
            train_s = time.time() - t0
            summary = json.loads((run / "summary.json").read_text())
            row = {"recipe": name, "seed": seed, "steps": summary["steps"], "overrides": overrides[:-1],
                   "train_s": round(train_s, 1), "training_s": summary["train_s"], "img_per_s": summary["img_per_s"]}
            for generator, use_ema in (("G_ema", "true"), ("G", "false")):
                metrics_out = run / f"eval_{generator}"
                gancli("eval", f"ckpt={run}", f"n={args.eval_n}", f"use_ema={use_ema}", f"out={metrics_out}",
                       "device=cpu",
                       log=out / "log.txt")
                metrics = json.loads((metrics_out / "metrics.json").read_text())
                row[generator] = {k: metrics[k] for k in HEADLINE["points" if points else "image"]}
            results.append(row)
            results_path.write_text(json.dumps(results, indent=1))
            print(name, seed, row["G"], row["G_ema"], f"{train_s:.0f} s", flush=True)
    print(table(results, points))


def table(results: list[dict], points: bool) -> str:
    keys = HEADLINE["points" if points else "image"]
    keys = [k for k in keys if k != "fd_real_floor"]
    lines = ["| recipe | seeds | steps | " + " | ".join(f"{k} (G)" for k in keys) + " | " +
             " | ".join(f"{k} (G_ema)" for k in keys) + " | train s |",
             "|---" * (4 + 2 * len(keys)) + "|"]
    for name in dict.fromkeys(r["recipe"] for r in results):
        rows = [r for r in results if r["recipe"] == name]

        def cell(gen: str, key: str) -> str:
            values = [r[gen][key] for r in rows]
            mean = statistics.mean(values)
            spread = f" ± {statistics.stdev(values):.2g}" if len(values) > 1 else ""
            return f"{mean:.3g}{spread}"

        steps = statistics.mean(r["steps"] for r in rows)
        lines.append(f"| {name} | {len(rows)} | {steps:.0f} | " + " | ".join(cell("G", k) for k in keys) + " | " +
                     " | ".join(cell("G_ema", k) for k in keys) +
                     f" | {statistics.mean(r['train_s'] for r in rows):.0f} |")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
