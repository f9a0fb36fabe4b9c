"""Spend budgets' store steps (reserve, settle) on the SQLite store, on a clock the test
moves; tests/integration/test_billing_redis.py runs the same scenario on a real Redis
(its Lua), so the two implementations are held to one behaviour."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from image_router.state import SqliteState
from image_router.state.spend import choose
from tests.unit.test_state_sqlite import Wall

WINDOWS = ["b:acme:day:20261206", "b:acme:d3600s:500000"]
INDEX, TTL = "br:acme", [172800, 7200]


def reserve_args(quotes: list[int], limits: tuple[int, int] = (10_000, 6_000), ttl_ms: int = 300) -> list[int]:
    return [ttl_ms, 2, *limits, *TTL, *quotes]


def settle_keys(request: str) -> list[str]:
    return [INDEX, f"bres:{request}", f"bs:{request}", *WINDOWS]


async def scenario(store: Any, advance: Callable[[float], Awaitable[None]]) -> None:
    """Reserve the first tier that fits every window; a retried reserve and a replayed
    settle count once; an expired reservation (its replica died) is given back."""
    keys = [INDEX, "bres:r1", *WINDOWS]
    # quality 4000, draft 1000: r = max of the rest, so quality's 4000 is held
    assert await store.reserve(keys, reserve_args([4000, 1000])) == [0, 4000, 6000, 2000]
    assert await store.reserve(keys, reserve_args([4000, 1000])) == [0, 4000, 6000, 2000], "a retry reserves once"
    # a second request no longer fits quality in the hourly window (2000 left): draft
    assert await store.reserve([INDEX, "bres:r2", *WINDOWS], reserve_args([4000, 1000])) == [1, 1000, 5000, 1000]
    # settle r1 for less than reserved: the difference comes back; replayed: once
    assert await store.settle(settle_keys("r1"), [3000, 86400, *TTL]) == 1
    assert await store.settle(settle_keys("r1"), [3000, 86400, *TTL]) == 0, "a replayed settlement counts once"
    assert await store.counts(WINDOWS[1]) == {"spent": 3000, "reserved": 1000}
    # nothing fits: -1, nothing reserved
    assert await store.reserve([INDEX, "bres:r3", *WINDOWS], reserve_args([2500, 2500])) == [-1, 0, 6000, 2000]
    # r2's replica dies: after its ttl the next call gives its 1000 back
    await advance(0.5)
    assert await store.reserve([INDEX, "bres:r4", *WINDOWS], reserve_args([3000])) == [0, 3000, 4000, 0]
    assert await store.counts(WINDOWS[1]) == {"spent": 3000, "reserved": 3000}
    # a settlement after its reservation expired still counts what was spent
    await advance(0.5)
    assert await store.settle(settle_keys("r4"), [500, 86400, *TTL]) == 1
    assert await store.counts(WINDOWS[0]) == {"spent": 3500, "reserved": 0}


def test_reserve_and_settle_on_sqlite(tmp_path: Path) -> None:
    wall = Wall()

    async def advance(seconds: float) -> None:
        wall.now += seconds

    async def run() -> None:
        store = SqliteState(tmp_path / "state.db", wall)
        await scenario(store, advance)
        await store.aclose()

    asyncio.run(run())


def test_concurrent_reservations_never_pass_the_limit(tmp_path: Path) -> None:
    """40 requests at once for a limit of 10 quotes: exactly 10 reserved."""

    async def run() -> None:
        store = SqliteState(tmp_path / "state.db")
        replies = await asyncio.gather(
            *(store.reserve([INDEX, f"bres:c{i}", WINDOWS[0]], [1000, 1, 10_000, 3600, 1000]) for i in range(40))
        )
        assert sum(1 for r in replies if r[0] == 0) == 10
        assert await store.counts(WINDOWS[0]) == {"spent": 0, "reserved": 10_000}
        await store.aclose()

    asyncio.run(run())


def test_choose_picks_the_first_tier_whose_worst_case_fits() -> None:
    assert choose([100], [0], [0], [120, 50, 80]) == (1, 80, [20])
    assert choose([100, 60], [10, 0], [0, 0], [50]) == (0, 50, [40, 10])
    assert choose([10], [5], [5], [1]) == (-1, 0, [0])
