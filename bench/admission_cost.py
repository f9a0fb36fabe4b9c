"""What a request's look at a model's admission queue costs as the queue grows (issue 36:
no per-request surprise).

Every request on a model with ``max_concurrency`` asks its gate whether it may go now
(``try_acquire``); while the model is full, its forecast asks how many waiters it would
wait behind (``ahead_of``), and a full queue whether it may displace the last in line
(``can_queue``). This holds the gate's slot, queues ``waiting`` requests from a few
tenants at three priorities, and times those three looks together, for each queue length.
``--tree`` imports ``image_router`` from another source tree (a ``git worktree`` of an
older commit), so the same script measures before and after.

    .venv/bin/python bench/admission_cost.py [--tree PATH] [--number 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import timeit
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WAITING = [0, 32, 300, 1000, 5000]


async def measure(waiting: int, number: int) -> float:
    from image_router.admission import AdmissionGate

    gate = AdmissionGate(limit=1, max_queue=waiting)
    assert gate.try_acquire()  # the slot a long call holds
    tasks = [asyncio.create_task(gate.acquire(1 + i % 3, f"tenant-{i % 7}")) for i in range(waiting)]
    await asyncio.sleep(0)
    assert gate.queued == waiting

    def look() -> None:
        gate.try_acquire()
        gate.ahead_of(2, "light")
        gate.can_queue(2, "light")

    best = min(timeit.repeat(look, number=number, repeat=3))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return best / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tree", type=Path, default=ROOT, help="the source tree to import image_router from")
    parser.add_argument("--number", type=int, default=2000)
    args = parser.parse_args()
    sys.path.insert(0, str(args.tree.resolve()))
    print("| requests waiting | one request's looks at the queue |")
    print("|---|---|")
    for waiting in WAITING:
        seconds = asyncio.run(measure(waiting, args.number))
        print(f"| {waiting} | {seconds * 1e6:.1f} µs |")


if __name__ == "__main__":
    main()
