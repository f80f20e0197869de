"""Where a training step's time goes: torch.profiler over a few steps of one variant, after the
same warm-up as `gancli bench` (graph capture and compilation happen there).

    python docs/profile_step.py [gancli bench overrides ...] [--steps 20] [--out profile_out]

Writes <out>/ops.txt (operators by self time on the device, CUDA kernels included, else on the
CPU), <out>/shapes.txt (the same, split by input shape) and <out>/trace.json (for Perfetto or
chrome://tracing), and prints the ten most expensive operators.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from hydra import compose, initialize_config_module
from torch.profiler import ProfilerActivity, profile

from gancli import runtime
from gancli.bench import prepare
from gancli.config import to_typed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--out", default="profile_out")
    args = parser.parse_intermixed_args()
    with initialize_config_module("gancli.configs", version_base="1.3"):
        cfg = to_typed(compose("bench", overrides=args.overrides))
    run = prepare(cfg, args.warmup, {})
    device, plan, cfg = run.device, run.plan, run.cfg
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    runtime.synchronize(device)
    with profile(activities=activities, record_shapes=True) as prof:
        for _ in range(args.steps):
            run.execute()
        runtime.synchronize(device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    title = (f"{cfg.model.name}, batch {cfg.train.batch_size}, {cfg.precision.name.value}, accel={plan.name}"
             f"{' (CUDA graphs)' if plan.cuda_graphs else ''}, {runtime.describe(device)}, "
             f"torch {torch.__version__}: {args.steps} steps\n")
    table = prof.key_averages().table(sort_by=key, row_limit=60, max_name_column_width=60)
    (out / "ops.txt").write_text(title + table)
    shapes = prof.key_averages(group_by_input_shape=True).table(sort_by=key, row_limit=60,
                                                                 max_name_column_width=40, max_shapes_column_width=100)
    (out / "shapes.txt").write_text(title + shapes)
    prof.export_chrome_trace(str(out / "trace.json"))
    print(title + prof.key_averages().table(sort_by=key, row_limit=10, max_name_column_width=60))
    print(f"ops.txt, shapes.txt and trace.json in {out}")


if __name__ == "__main__":
    main()
