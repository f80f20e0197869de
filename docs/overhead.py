"""The cost of the timing instrumentation: the same training step with its sections timed (CUDA
events on a GPU, perf_counter elsewhere) and with a timer that records nothing, alternated.

    python docs/overhead.py [gancli train overrides ...] [--rounds 5]

Prints the median ms/step of each and the overhead in percent of the untimed step. Where the
machine's run-to-run noise is larger than the overhead, that difference is noise; so it also
times the instrumentation alone (three timed sections per step and one read per 50 steps, with
no work inside) and gives that as a share of the step.
"""

import argparse
import contextlib
import statistics
import time

import torch

from hydra import compose, initialize_config_module

from gancli import runtime
from gancli.bench import time_variant
from gancli.config import to_typed
from gancli.timing import SectionTimer


class NullTimer(SectionTimer):
    """Times nothing: the reference against which SectionTimer's own cost is measured."""

    _none = contextlib.nullcontext()

    def section(self, name: str) -> contextlib.AbstractContextManager:  # type: ignore[override]
        return self._none


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_intermixed_args()
    with initialize_config_module("gancli.configs", version_base="1.3"):
        cfg = to_typed(compose("bench", overrides=args.overrides))
    cache: dict = {}
    ms = {"timed": [], "untimed": []}
    for _ in range(args.rounds):  # alternate, so drifts in machine speed hit both alike
        for name, timer in (("timed", SectionTimer), ("untimed", NullTimer)):
            row = time_variant(cfg, warmup=10, steps=args.steps, repeats=3, data_cache=cache, timer_cls=timer)
            ms[name].append(row["ms_per_step"])
    timed, untimed = statistics.median(ms["timed"]), statistics.median(ms["untimed"])
    print(f"device {row['device']}, torch {row['torch']}, {cfg.model.name} batch {cfg.train.batch_size}, "
          f"{cfg.precision.name.value}, accel={row['variant']}")
    print(f"timed   {timed:.3f} ms/step  (rounds: {ms['timed']})")
    print(f"untimed {untimed:.3f} ms/step  (rounds: {ms['untimed']})")
    print(f"overhead {100 * (timed - untimed) / untimed:+.2f}% (difference of medians)")
    alone = instrumentation_ms(runtime.resolve_device(cfg.device))
    print(f"instrumentation alone {alone * 1e3:.1f} us/step = {100 * alone / untimed:.3f}% of the untimed step")


def instrumentation_ms(device: torch.device, steps: int = 5000, log_every: int = 50) -> float:
    """ms per step of SectionTimer's own work: three empty sections a step, a read per interval."""
    timer = SectionTimer(device)
    runtime.synchronize(device)
    t0 = time.perf_counter()
    for step in range(1, steps + 1):
        for name in ("data", "d_step", "g_step"):
            with timer.section(name):
                pass
        if step % log_every == 0:
            runtime.synchronize(device)  # the interval's one sync, which training needs for its losses anyway
            timer.read()
    runtime.synchronize(device)
    return (time.perf_counter() - t0) * 1e3 / steps


if __name__ == "__main__":
    main()
