"""Compare the loss trajectories of two gancli runs (timing.jsonl): do they train the same model?

    python docs/compare_runs.py <run A> <run B> [--early-steps 80] [--early-rtol 0.02] [--tolerance 0.15]

GAN training is chaotic: two runs of the same math whose kernels round differently (fused or
foreach optimizers, graphs, other convolution algorithms) follow one trajectory for the first
steps, then drift apart while staying in the same band of losses. So two things are checked:
  - early: up to `--early-steps`, every logged loss of B is within `--early-rtol` (relative) of A's;
  - late: over the second half of the logged rows, the mean of each loss differs by at most
    `--tolerance`.
Prints the losses side by side, both checks, each run's img/s and last metrics (metrics.jsonl)
where it has them, and exits non-zero when either check fails.
"""

import argparse
import json
import sys
from pathlib import Path

LOSSES = ("loss_d", "loss_g")


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("a", type=Path)
    parser.add_argument("b", type=Path)
    parser.add_argument("--early-steps", type=int, default=80)
    parser.add_argument("--early-rtol", type=float, default=0.02)
    parser.add_argument("--tolerance", type=float, default=0.15)
    args = parser.parse_args()
    a, b = rows(args.a / "timing.jsonl"), rows(args.b / "timing.jsonl")
    pairs = [(x, y) for x, y in zip(a, b) if x["step"] == y["step"]]
    if not pairs:
        print("the runs share no logged step")
        return 1
    print(f"{'step':>6} {'loss_d A':>9} {'loss_d B':>9} {'loss_g A':>9} {'loss_g B':>9}")
    for x, y in pairs:
        print(f"{x['step']:>6} {x['loss_d']:9.4f} {y['loss_d']:9.4f} {x['loss_g']:9.4f} {y['loss_g']:9.4f}")

    early = [(x, y) for x, y in pairs if x["step"] <= args.early_steps]
    early_rel = max((abs(x[k] - y[k]) / max(abs(x[k]), 1e-8) for x, y in early for k in LOSSES), default=0.0)
    early_ok = bool(early) and early_rel <= args.early_rtol
    print(f"early (steps <= {args.early_steps}, {len(early)} rows): largest relative difference "
          f"{early_rel:.4f} (limit {args.early_rtol})" + ("" if early else ": no rows, so not shown"))

    late = pairs[len(pairs) // 2:]
    late_ok = True
    for key in LOSSES:
        mean_a = sum(x[key] for x, _ in late) / len(late)
        mean_b = sum(y[key] for _, y in late) / len(late)
        late_ok &= abs(mean_a - mean_b) <= args.tolerance
        print(f"late (steps {late[0][0]['step']}..{late[-1][0]['step']}): mean {key} A {mean_a:.4f}, "
              f"B {mean_b:.4f}, difference {abs(mean_a - mean_b):.4f} (limit {args.tolerance})")

    for name, run in (("A", args.a), ("B", args.b)):
        summary = json.loads((run / "summary.json").read_text())
        metrics = rows(run / "metrics.jsonl")[-1] if (run / "metrics.jsonl").is_file() else {}
        shown = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()
                 if k in ("step", "fd", "fd_real_floor", "classes_covered", "class_kl")}
        metrics = f"  metrics {shown}" if shown else ""
        print(f"{name}: {run}  {summary['img_per_s']} img/s  accel {summary['accel']}{metrics}")
    ok = early_ok and late_ok
    print("same model: " + ("yes" if ok else "NO (" + ", ".join(
        part for part, good in (("early steps differ", early_ok), ("late means differ", late_ok)) if not good) + ")"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
