"""What one forecast costs as the line before a model grows (issue 36: no per-request surprise).

Every request reads its tiers' forecasts (`Lane.forecast`: expected, floor and ceiling,
each the line ahead played forward). This fills a lane with ``servers`` slots busy and
the rest of the requests queued behind them, and times one forecast, for each line
length. ``--tree`` imports ``image_router`` from another source tree (a ``git worktree``
of an older commit), so the same script measures before and after.

    .venv/bin/python bench/forecast_cost.py [--tree PATH] [--number 20000]
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CASES = [(1, 1), (1, 32), (1, 300), (2, 32), (4, 300), (4, 1000)]  # (slots, requests in flight)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the source tree to import image_router from")
    parser.add_argument("--number", type=int, default=20000)
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    from image_router.policy.forecast import Lane

    print("| slots | requests in flight | one forecast |")
    print("|---|---|---|")
    for servers, in_flight in CASES:
        lane = Lane(0.002, servers=servers)
        for i in range(in_flight):
            lane.send(i * 1e-4, units=1.0 + i % 3)
        best = min(timeit.repeat(lambda lane=lane: lane.forecast(0.01, extra_ahead=2), number=args.number, repeat=3))
        print(f"| {servers} | {in_flight} | {best / args.number * 1e6:.1f} µs |")


if __name__ == "__main__":
    main()
