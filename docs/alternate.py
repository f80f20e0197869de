"""Time variants of one training step in alternation, so that a noisy machine's drifts hit them all
alike: round after round, each variant is built, warmed up and timed, and the median per variant
is printed.

    python docs/alternate.py "<common gancli bench overrides>" name="<its overrides>" name="..." \
        [--rounds 8] [--steps 5] [--warmup 2]

For example, channels_last on the CPU:

    python docs/alternate.py "model=dcgan data=fake data.image_size=64 data.channels=3 data.n=2048 device=cpu" \
        nchw="accel.channels_last=false" nhwc="accel.channels_last=true" --rounds 8 --steps 5
"""

from __future__ import annotations

import argparse
import statistics

from hydra import compose, initialize_config_module

from gancli.bench import time_variant
from gancli.config import to_typed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("common", help="overrides every variant shares, in one string")
    parser.add_argument("variants", nargs="+", help='name="overrides" for each variant')
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    args = parser.parse_args()
    variants = dict(v.split("=", 1) for v in args.variants)
    with initialize_config_module("gancli.configs", version_base="1.3"):
        cfgs = {name: to_typed(compose("bench", overrides=[*args.common.split(), *extra.split()]))
                for name, extra in variants.items()}
    ms: dict[str, list[float]] = {name: [] for name in cfgs}
    cache: dict = {}
    for _ in range(args.rounds):
        for name, cfg in cfgs.items():
            ms[name].append(time_variant(cfg, args.warmup, args.steps, 1, cache)["ms_per_step"])
    for name, values in ms.items():
        print(f"{name:20s} median {statistics.median(values):8.1f} ms  {values}")


if __name__ == "__main__":
    main()
