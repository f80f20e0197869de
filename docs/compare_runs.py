"""Compare the loss trajectories of two gancli runs (timing.jsonl): do they train the same model?

    python docs/compare_runs.py <run A> <run B> [--tolerance 0.15]

Prints the losses side by side, the mean absolute difference per loss and the img/s of each
run, and exits non-zero when the mean difference of either loss exceeds the tolerance.
"""

import argparse
import json
import sys
from pathlib import Path


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "timing.jsonl").read_text().splitlines()]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--tolerance", type=float, default=0.15)
    args = parser.parse_args()
    a, b = rows(args.a), rows(args.b)
    pairs = [(x, y) for x, y in zip(a, b) if x["step"] == y["step"]]
    print(f"{'step':>6} {'loss_d A':>9} {'loss_d B':>9} {'loss_g A':>9} {'loss_g B':>9}")
    for x, y in pairs:
        print(f"{x['step']:>6} {x['loss_d']:9.4f} {y['loss_d']:9.4f} {x['loss_g']:9.4f} {y['loss_g']:9.4f}")
    worst = 0.0
    for key in ("loss_d", "loss_g"):
        diff = sum(abs(x[key] - y[key]) for x, y in pairs) / len(pairs)
        worst = max(worst, diff)
        print(f"mean |{key} A - {key} B| = {diff:.4f}")
    for name, run in (("A", args.a), ("B", args.b)):
        summary = json.loads((run / "summary.json").read_text())
        print(f"{name}: {run}  {summary['img_per_s']} img/s  accel {summary['accel']}")
    ok = worst <= args.tolerance
    print("same model: " + ("yes" if ok else f"NO (mean difference {worst:.4f} > {args.tolerance})"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
