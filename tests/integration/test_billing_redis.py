"""Spend budgets on a real ``redis-server``: the Lua reserve/settle behave as the SQLite
store does (one scenario, tests/unit/test_billing_store.py), and concurrent callers
never reserve past a limit."""

from __future__ import annotations

import asyncio

import pytest
import redis as syncredis

from image_router.state import RedisState
from tests.procs import RedisProcess
from tests.unit.test_billing_store import INDEX, WINDOWS, scenario

pytestmark = pytest.mark.integration


def test_reserve_and_settle_on_redis(state_redis: RedisProcess) -> None:
    async def run() -> None:
        store = RedisState(state_redis.url, 0.5)
        await scenario(store, asyncio.sleep)
        await store.aclose()

    asyncio.run(run())
    with syncredis.Redis.from_url(state_redis.url) as client:
        assert 0 < client.ttl(WINDOWS[1]) <= 7200, "a window key expires after its period"
        assert "cmdstat_eval" not in client.info("commandstats"), "scripts registered once, called by sha"


def test_concurrent_reservations_from_two_clients_never_pass_the_limit(state_redis: RedisProcess) -> None:
    async def run() -> list[list[int]]:
        a, b = RedisState(state_redis.url, 0.5), RedisState(state_redis.url, 0.5)
        calls = [
            (a if i % 2 else b).reserve([INDEX, f"bres:c{i}", WINDOWS[0]], [1000, 1, 10_000, 3600, 1000])
            for i in range(40)
        ]
        replies = await asyncio.gather(*calls)
        await a.aclose()
        await b.aclose()
        return replies

    replies = asyncio.run(run())
    assert sum(1 for r in replies if r[0] == 0) == 10
    with syncredis.Redis.from_url(state_redis.url) as client:
        assert client.hgetall(WINDOWS[0]) == {b"spent": b"0", b"reserved": b"10000"}
