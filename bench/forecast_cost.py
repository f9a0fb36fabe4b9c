"""What one forecast costs as the line before a model grows (issue 36: no per-request surprise).

Every request reads its tiers' forecasts (`Lane.forecast`: expected, floor and ceiling,
each the line ahead played forward). This fills a lane with ``servers`` slots busy and
the rest of the requests queued behind them, and times one forecast, for each line
length. ``--tree`` imports ``image_router`` from another source tree (a ``git worktree``
of an older commit), so the same script measures before and after.

    .venv/bin/python bench/forecast_cost.py [--tree PATH] [--number 20000]
"""

from __future__ import annotations

import timeit

from common import tree_args

CASES = [(1, 1), (1, 32), (1, 300), (2, 32), (4, 300), (4, 1000)]  # (slots, requests in flight)


def main() -> None:
    args = tree_args(__doc__, 20000)
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
