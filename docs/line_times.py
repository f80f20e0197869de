"""Time a training script by its output: the seconds between consecutive lines that match a
pattern, read from stdin as they arrive (for a peer's script that prints one line per step).

    python main.py --dataset fake ... | python docs/line_times.py --match "Loss_D" --skip 3

prints the median, mean and count of the intervals after the first `--skip` lines."""

from __future__ import annotations

import argparse
import statistics
import sys
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--match", default="", help="count only lines holding this text")
    parser.add_argument("--skip", type=int, default=3, help="intervals to leave out at the start (warm-up)")
    args = parser.parse_args()
    stamps = []
    for line in sys.stdin:
        if args.match in line:
            stamps.append(time.perf_counter())
    intervals = [b - a for a, b in zip(stamps, stamps[1:])][args.skip:]
    if not intervals:
        sys.exit(f"line_times: fewer than {args.skip + 2} lines held {args.match!r}")
    print(f"{len(intervals)} intervals: median {1e3 * statistics.median(intervals):.1f} ms, "
          f"mean {1e3 * statistics.fmean(intervals):.1f} ms")


if __name__ == "__main__":
    main()
