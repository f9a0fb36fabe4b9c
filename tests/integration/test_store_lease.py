"""Leases in both cache stores (a real ``redis-server`` and the disk store): one
holder at a time, re-entrant for the holder, released only by it, gone at expiry; and
the rollouts' counters and compare-and-swap in both state stores (Redis, SQLite).

Re-entrancy matters: a lease call that timed out in the gateway but took effect in the
store is retried; read as someone else's lease, the replica waited on itself and then
generated a second time beside the replica that waited on it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from image_router.cache.store import DiskStore, RedisStore, Store
from image_router.state import RedisState, SqliteState, StateStore
from tests.procs import RedisProcess

pytestmark = pytest.mark.integration


@pytest.fixture(params=["redis", "disk"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "redis":
        server = RedisProcess(tmp_path).start()
        yield RedisStore(server.url, 0.02)
        server.stop()
    else:
        yield DiskStore(tmp_path / "cache", 10_000_000)


def test_a_lease_has_one_holder_renews_for_it_and_expires(store: Store) -> None:
    async def scenario() -> None:
        assert await store.lease("l:k", "a", 0.3)
        assert not await store.lease("l:k", "b", 0.3)
        assert await store.lease("l:k", "a", 0.3), "the holder asking again renews its lease"
        await store.release("l:k", "b")  # not b's to release
        assert not await store.lease("l:k", "b", 0.3)
        await store.release("l:k", "a")
        assert await store.lease("l:k", "b", 0.2)
        await asyncio.sleep(0.35)
        assert await store.lease("l:k", "a", 0.3), "an expired lease is free"
        await store.aclose()

    asyncio.run(scenario())


@pytest.fixture(params=["redis", "sqlite"])
def state(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[StateStore]:
    if request.param == "redis":
        server = RedisProcess(tmp_path, policy="noeviction").start()
        yield RedisState(server.url, 0.02)
        server.stop()
    else:
        yield SqliteState(tmp_path / "state.db")


def test_counts_add_up_and_a_swap_needs_the_value_it_expects(state: StateStore) -> None:
    """What a rollout keeps (in the state store, no longer the cache's): per-window
    counters every replica adds to, and a state only one replica can move from the value
    it read."""

    async def scenario() -> None:
        await state.add_counts("c", {"requests": 2, "h3": 1}, 60)
        await asyncio.gather(*(state.add_counts("c", {"requests": 1, "errors": 1}, 60) for _ in range(5)))
        assert await state.counts("c") == {"requests": 7, "h3": 1, "errors": 5}
        assert await state.counts("missing") == {}
        assert await state.swap("s", None, b"v1", 60)
        assert not await state.swap("s", None, b"other", 60), "absent was expected: it is not"
        assert not await state.swap("s", b"v0", b"v2", 60)
        assert await state.swap("s", b"v1", b"v2", 60)
        assert await state.get_many(["s"]) == [b"v2"]
        await state.aclose()

    asyncio.run(scenario())
