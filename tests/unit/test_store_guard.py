"""The result store's guard (image_router/state/guard.py, docs/cache.md "a store that fails"),
on virtual time: every call takes at most its bound (20 ms), and the circuit opens on
10 failures in a row or on half of at least 20 calls in 10 s, skips the store while open,
and lets one probe through after 2 s."""

from __future__ import annotations

import asyncio

import pytest

from image_router.cache.store import GuardedStore
from tests.unit.test_cache_dispatch import MemoryStore
from tests.virtual_time import virtual_time

BOUND_S = 0.02


def guarded() -> tuple[GuardedStore, MemoryStore]:
    store = MemoryStore()
    return GuardedStore(store, BOUND_S, asyncio.get_running_loop().time), store


async def call(guard: GuardedStore, store: MemoryStore, ok: bool) -> None:
    store.fail = not ok
    await guard.get_many(["k"])


@virtual_time
async def test_a_hung_store_costs_each_call_exactly_its_bound() -> None:
    guard, store = guarded()
    store.delay = 30.0
    loop = asyncio.get_running_loop()
    for _ in range(3):
        t0 = loop.time()
        assert await guard.get_many(["k"]) == [None]  # a miss, never an error
        assert loop.time() - t0 == pytest.approx(BOUND_S, abs=1e-9)
    assert guard.counts["timeouts"] == 3


@virtual_time
async def test_ten_failures_in_a_row_open_the_circuit_nine_do_not() -> None:
    guard, store = guarded()
    for _ in range(9):
        await call(guard, store, ok=False)
    assert guard.state == "closed"
    await call(guard, store, ok=False)
    assert guard.state == "open"
    calls = store.calls
    await call(guard, store, ok=True)
    assert store.calls == calls and guard.counts["skipped"] == 1  # open: the store is not asked


@virtual_time
async def test_half_of_twenty_calls_in_ten_seconds_open_it_without_ten_in_a_row() -> None:
    guard, store = guarded()
    for i in range(19):  # fail, ok, fail, ok...: 10 failures of 19, never two in a row
        await call(guard, store, ok=i % 2 == 1)
        await asyncio.sleep(0.2)
        assert guard.state == "closed", i
    await call(guard, store, ok=False)  # the 20th call, the 11th failure: over half of 20
    assert guard.state == "open"


@virtual_time
async def test_failures_spread_over_more_than_ten_seconds_do_not_open_it() -> None:
    guard, store = guarded()
    for i in range(40):  # half fail, but a call every 0.6 s: under 20 calls in any 10 s
        await call(guard, store, ok=i % 2 == 1)
        await asyncio.sleep(0.6)
    assert guard.state == "closed"


@virtual_time
async def test_one_probe_after_two_seconds_closes_it_when_the_store_answers() -> None:
    guard, store = guarded()
    for _ in range(10):
        await call(guard, store, ok=False)
    assert guard.state == "open"
    calls = store.calls
    await asyncio.sleep(1.9)
    await call(guard, store, ok=True)
    assert store.calls == calls, "probed before the 2 s cooldown"
    await asyncio.sleep(0.1)
    store.fail, store.delay = False, 0.01
    probe = asyncio.ensure_future(guard.get_many(["k"]))
    await asyncio.sleep(0)  # the probe is out
    other = await guard.get_many(["k"])  # while it is, nothing else goes
    await probe
    assert store.calls == calls + 1 and other == [None] and guard.counts["skipped"] == 2
    assert guard.state == "closed"


@virtual_time
async def test_a_failed_probe_opens_it_for_another_two_seconds() -> None:
    guard, store = guarded()
    for _ in range(10):
        await call(guard, store, ok=False)
    await asyncio.sleep(2.0)
    await call(guard, store, ok=False)  # the probe fails
    assert guard.state == "open"
    calls = store.calls
    await asyncio.sleep(1.9)
    await call(guard, store, ok=True)
    assert store.calls == calls
    await asyncio.sleep(0.1)
    await call(guard, store, ok=True)
    assert store.calls == calls + 1 and guard.state == "closed"
