"""What a request's steps cost as the state they look at grows (issue 36: no per-request
surprise). Every case fills one piece of state to each size and times one request's
step on it; a step that is O(1) amortised stays flat down its column.

- **admission**: a model's gate holds its slot and ``n`` requests wait (3 priorities, 7
  tenants); a new request asks whether it may go (``try_acquire``), how many it would wait
  behind (``ahead_of``) and whether it may displace the last (``can_queue``);
- **tenant key**: ``n`` tenants with two keys each, ``keys`` mode; the last tenant's key
  is authenticated (``TenantGate.authenticate``);
- **circuit**: a breaker whose window holds ``n`` outcomes (one in ten failed) records
  one more failure;
- **hosted lane**: a hosted API's lane with ``n`` calls in flight; one sent in the middle
  of them is answered and a new one sent;
- **state store sweep**: the SQLite store's write that sweeps expired rows, with ``n``
  live rows in the file;
- **replica choice**: a model's forecast over a Triton backend's replicas (by design it
  compares them all, so it grows with them: the cost of each is what changes);
- **retry budget**: not a time: how many entries it keeps after ``n`` requests at 100 a
  second with no retry (its window is 10 s: 1,000 at most is right).

``--tree`` imports ``image_router`` from another source tree (a ``git worktree`` of an
older commit), so the same script measures before and after.

    .venv/bin/python bench/growth.py [--tree PATH] [--number 2000]
"""

from __future__ import annotations

import asyncio
import timeit
from collections.abc import Callable
from pathlib import Path

from common import tree_args

SIZES = [10, 100, 1000, 5000]


def best(step: Callable[[], object], number: int) -> float:
    """µs per call, the best of three runs."""
    return min(timeit.repeat(step, number=number, repeat=3)) / number * 1e6


async def admission(waiting: int, number: int) -> float:
    from image_router.admission import AdmissionGate

    gate = AdmissionGate(limit=1, max_queue=waiting)
    assert gate.try_acquire()  # the slot a long call holds
    tasks = [asyncio.create_task(gate.acquire(1 + i % 3, f"tenant-{i % 7}")) for i in range(waiting)]
    await asyncio.sleep(0)

    def look() -> None:
        gate.try_acquire()
        gate.ahead_of(2, "light")
        gate.can_queue(2, "light")

    took = best(look, number)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return took


def tenant_key(tenants: int, number: int) -> float:
    from image_router.config import compile_text
    from image_router.tenancy import TenantGate

    listed = "".join(f"    t{i}: {{keys: [sk-bench-key-{i:06d}-a, sk-bench-key-{i:06d}-b]}}\n" for i in range(tenants))
    table = compile_text(
        'backends: {triton: {url: "http://t:8000"}}\nmodels: {noop: {backend: triton}}\ndefault_route: noop\n'
        "tenants:\n  mode: keys\n  tenants:\n" + listed
    )
    gate = TenantGate(lambda: None)
    header = f"Bearer sk-bench-key-{tenants - 1:06d}-b"
    assert gate.authenticate(table, header) is not None
    return best(lambda: gate.authenticate(table, header), number)


def circuit(outcomes: int, number: int) -> float:
    from image_router.policy.circuit import CircuitBreaker, CircuitPolicy

    policy = CircuitPolicy(consecutive_failures=10**9, failure_ratio=0.99, min_requests=10**9, window_s=10**9)
    breaker = CircuitBreaker(policy)
    for i in range(outcomes):
        breaker.record(float(i), i % 10 != 0)
    clock = [float(outcomes)]

    def fail() -> None:
        breaker.record(clock[0], False)
        breaker.failures_in_a_row = 0
        _, ok = breaker.outcomes.popleft()  # the window keeps its size
        if not ok and hasattr(breaker, "failed"):  # the running count, where there is one
            breaker.failed -= 1

    return best(fail, number)


def hosted_lane(in_flight: int, number: int) -> float:
    from image_router.policy.forecast import Lane

    lane = Lane(0.5, servers=None)
    tickets = [lane.send(0.0) for _ in range(in_flight)]
    clock = [1.0]

    def answer_one() -> None:  # answers come back in any order: here, one sent in the middle
        middle = len(tickets) // 2
        lane.done(tickets[middle], clock[0], ok=True)
        tickets[middle] = lane.send(clock[0])
        clock[0] += 1e-6

    return best(answer_one, number)


def replica_forecast(replicas: int, number: int) -> float:
    """µs: a model's forecast on a Triton backend of ``replicas`` replicas, each with a
    request running and three queued (every request reads it for each tier it weighs)."""
    from image_router.backends.replicas import ReplicaSet
    from image_router.config.table import Backend, Model

    spec = Backend("t", "triton", "http://r0:1", replicas=tuple(f"http://r{i}:1" for i in range(replicas)))
    model = Model("draft", "t", "draft", None, 100.0)
    replica_set = ReplicaSet(spec, lambda: 100.0)
    for i, replica in enumerate(replica_set.replicas):
        for j in range(4):
            replica.lane(model).send(99.0 + i * 1e-3 + j * 1e-4)
    return best(lambda: replica_set.forecast(model, 2), number)


def retry_budget(requests: int) -> int:
    from image_router.policy.retry_budget import RetryBudget

    budget = RetryBudget(ratio=0.2, window_s=10.0)
    for i in range(requests):
        budget.record_request(i / 100)
    return len(budget.requests)


def sweeping_write(live: int) -> float:
    """ms: the state store's write that sweeps, with ``live`` unexpired rows (and 100
    expired ones) in its SQLite file."""
    import sqlite3
    import tempfile
    import time

    from image_router.state.sqlite import SWEEP_EVERY_S, SqliteState

    clock = [1_000_000.0]
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "state.db"
        store = SqliteState(path, wall=lambda: clock[0])
        with sqlite3.connect(path) as db:
            db.executemany("INSERT INTO kv VALUES (?, ?, ?)", ((f"done:{i}", b"1", 1e12) for i in range(live)))
            db.executemany("INSERT INTO kv VALUES (?, ?, ?)", ((f"old:{i}", b"1", 1.0) for i in range(100)))

        async def write() -> float:
            await store.swap("w", None, b"0", None)  # swept here: the store's first write
            clock[0] += SWEEP_EVERY_S + 1
            started = time.perf_counter()
            await store.swap("w", b"0", b"1", None)  # and the sweep is due again
            took = time.perf_counter() - started
            await store.aclose()
            return took * 1000

        return asyncio.run(write())


def main() -> None:
    n = tree_args(__doc__, 2000).number
    print("| n | admission, n waiting | tenant key, n tenants | circuit, n in window | hosted lane, n in flight |")
    print("|---|---|---|---|---|")
    for size in SIZES:
        cells = [
            asyncio.run(admission(size, n)),
            tenant_key(size, n),
            circuit(size, n),
            hosted_lane(size, n),
        ]
        print(f"| {size} | " + " | ".join(f"{c:.1f} µs" for c in cells) + " |")
    swept = [sweeping_write(size) for size in (10_000, 100_000, 1_000_000)]
    print("\nstate store (SQLite), the write that sweeps, with 10k / 100k / 1M live rows:", end=" ")
    print(" / ".join(f"{ms:.1f} ms" for ms in swept))
    forecasts = [replica_forecast(size, n) for size in (2, 8, 32, 128)]
    print("replica choice (grows with the replicas, by design), one forecast at 2 / 8 / 32 / 128:", end=" ")
    print(" / ".join(f"{us:.1f} µs" for us in forecasts))
    kept = [retry_budget(size) for size in (10_000, 100_000, 1_000_000)]
    print("retry budget, entries kept after 10k / 100k / 1M requests at 100/s:", end=" ")
    print(" / ".join(f"{k:,}" for k in kept))


if __name__ == "__main__":
    main()
