"""The embedded state store (one SQLite file): leases, compare-and-swap, counters and
the tenants' limits, on a clock the test moves; several processes sharing the file keep
one count; nothing is lost when the store is closed and opened again (a restart)."""

from __future__ import annotations

import asyncio
import multiprocessing
from pathlib import Path

import pytest

from image_router.errors import StateStoreError
from image_router.state import SqliteState
from image_router.state.redis import judge_config


class Wall:
    """A wall clock the test moves, kept in whole microseconds (no float drift)."""

    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.us = round(now * 1_000_000)

    @property
    def now(self) -> float:
        return self.us / 1_000_000

    @now.setter
    def now(self, value: float) -> None:
        self.us = round(value * 1_000_000)

    def __call__(self) -> float:
        return self.now


def store_at(tmp_path: Path, wall: Wall | None = None) -> SqliteState:
    return SqliteState(tmp_path / "state" / "state.db", wall or Wall())


def test_a_lease_has_one_holder_renews_for_it_and_expires(tmp_path: Path) -> None:
    wall = Wall()
    store = store_at(tmp_path, wall)

    async def run() -> None:
        assert await store.lease("k", "a", 3.0)
        assert not await store.lease("k", "b", 3.0)
        wall.now += 2.0
        assert await store.lease("k", "a", 3.0), "the holder asking again renews its lease"
        wall.now += 2.0
        assert not await store.lease("k", "b", 3.0), "renewed: still a's"
        await store.release("k", "b")  # not b's to release
        assert not await store.lease("k", "b", 3.0)
        await store.release("k", "a")
        assert await store.lease("k", "b", 1.0)
        wall.now += 1.5
        assert await store.lease("k", "a", 1.0), "an expired lease is free"
        await store.aclose()

    asyncio.run(run())


def test_a_swap_needs_the_value_it_expects_and_only_a_ttl_expires_a_key(tmp_path: Path) -> None:
    wall = Wall()
    store = store_at(tmp_path, wall)

    async def run() -> None:
        assert await store.swap("s", None, b"v1", None)
        assert not await store.swap("s", None, b"other", None), "absent was expected: it is not"
        assert not await store.swap("s", b"v0", b"v2", None)
        assert await store.swap("s", b"v1", b"v2", None)
        assert await store.swap("t", None, b"short", 10.0)
        wall.now += 365 * 86400.0
        assert await store.get_many(["s", "t", "missing"]) == [b"v2", None, None], "no ttl: kept a year"
        assert await store.swap("t", None, b"again", 10.0), "an expired key reads as absent"
        await store.delete(["s"])
        assert await store.get_many(["s"]) == [None]
        await store.aclose()

    asyncio.run(run())


def test_counts_add_up_under_concurrency_and_expire_as_one_key(tmp_path: Path) -> None:
    wall = Wall()
    store = store_at(tmp_path, wall)

    async def run() -> None:
        await store.add_counts("c", {"requests": 2, "h3": 1}, 60.0)
        await asyncio.gather(*(store.add_counts("c", {"requests": 1, "errors": 1}, 60.0) for _ in range(5)))
        assert await store.counts("c") == {"requests": 7, "h3": 1, "errors": 5}
        assert await store.counts("missing") == {}
        wall.now += 59.0
        await store.add_counts("c", {"errors": 1}, 60.0)  # the ttl covers the key: h3 lives on too
        wall.now += 59.0
        assert await store.counts("c") == {"requests": 7, "h3": 1, "errors": 6}
        wall.now += 2.0
        assert await store.counts("c") == {}
        await store.add_counts("c", {"errors": 1}, 60.0)
        assert await store.counts("c") == {"errors": 1}, "an expired key starts again from zero"
        await store.aclose()

    asyncio.run(run())


def test_expired_rows_are_swept_through_an_index_a_batch_per_write(tmp_path: Path) -> None:
    """The sweep deletes what has expired without reading what has not: by an index on
    ``expires``, at most ``SWEEP_AT_MOST`` rows of a table per write, and it goes on at
    the next write while a batch comes back full. Live rows are never touched."""
    import sqlite3

    from image_router.state.sqlite import _SWEEP, SWEEP_AT_MOST, SWEEP_EVERY_S

    wall = Wall()
    store = store_at(tmp_path, wall)
    path = tmp_path / "state" / "state.db"
    for statement in _SWEEP.values():
        with sqlite3.connect(path) as db:
            plan = " ".join(str(row[-1]) for row in db.execute("EXPLAIN QUERY PLAN " + statement, (0.0,)))
        assert "USING COVERING INDEX" in plan and "SCAN" not in plan, plan
    expired = 2 * SWEEP_AT_MOST + 10

    def left(pattern: str) -> int:
        with sqlite3.connect(path) as db:
            return int(db.execute("SELECT count(*) FROM kv WHERE key LIKE ?", (pattern,)).fetchone()[0])

    async def run() -> None:
        for i in range(expired):
            await store.swap(f"old:{i}", None, b"1", 10.0)
        await store.add_counts("ledger:old", {f"f{i}": 1 for i in range(expired)}, 10.0)
        await store.swap("live", None, b"1", 10 * SWEEP_EVERY_S)
        wall.now += SWEEP_EVERY_S + 1  # all of old:* expired, and the sweep is due
        await store.swap("w", None, b"1", None)
        assert left("old:%") == expired - SWEEP_AT_MOST, "one batch per write"
        await store.swap("w", b"1", b"2", None)
        await store.swap("w", b"2", b"3", None)
        assert left("old:%") == 0 and left("live") == 1
        with sqlite3.connect(path) as db:
            assert db.execute("SELECT count(*) FROM counts").fetchone()[0] == 0
        await store.aclose()

    asyncio.run(run())


def test_state_outlives_the_process_that_wrote_it(tmp_path: Path) -> None:
    """A restart (the store closed, the file opened again) finds every value and count."""

    async def write() -> None:
        store = store_at(tmp_path)
        await store.swap("ro:pictures:abc", None, b"step 2", None)
        await store.add_counts("ro:pictures:abc:w1:b", {"requests": 40}, 3600.0)
        await store.limit(["t:acme:rate", "t:acme:images:1"], [0, 0, 3, 10])
        await store.aclose()

    async def read() -> tuple[list[bytes | None], dict[str, int], list[int]]:
        store = store_at(tmp_path)
        got = await store.get_many(["ro:pictures:abc"]), await store.counts("ro:pictures:abc:w1:b")
        reply = await store.limit(["t:acme:rate", "t:acme:images:1"], [0, 0, 0, 10])
        await store.aclose()
        return got[0], got[1], reply

    asyncio.run(write())
    assert asyncio.run(read()) == ([b"step 2"], {"requests": 40}, [1, 0, 0, 3])


def test_an_unusable_path_is_a_state_store_error_naming_it(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(StateStoreError) as info:
        SqliteState(tmp_path / "file" / "state.db")
    assert "state.store" in info.value.message and str(tmp_path / "file") in info.value.message


def test_5000_per_second_is_exact_to_the_microsecond(tmp_path: Path) -> None:
    """An interval of 200 µs: in milliseconds it rounded to 0, which was no limit."""
    wall = Wall(1_800_000_000.0)
    store = store_at(tmp_path, wall)
    keys = ["t:fast:rate", "t:fast:images:0"]
    args = [200, 200 * 10, 1, -1]  # limit_args of 5000/s, burst 10

    async def run() -> tuple[int, int, int]:
        at_once = [await store.limit(keys, args) for _ in range(100)]
        burst = sum(r[0] for r in at_once)
        wall.now += 1.0  # a second later: the bucket is full again
        spaced = []
        for _ in range(5000):  # one every 200 µs for a second: every one fits
            wall.us += 200
            spaced.append((await store.limit(keys, args))[0])
        wall.now += 1.0
        twice = []
        for _ in range(1000):  # twice the rate for 0.1 s: the burst, then one in two
            wall.us += 100
            twice.append((await store.limit(keys, args))[0])
        await store.aclose()
        return burst, sum(spaced), sum(twice)

    burst, spaced, twice = asyncio.run(run())
    assert burst == 10
    assert spaced == 5000
    # from the first at t1 to the last at t1 + 99,900 µs: the n-th is allowed once
    # 200 (n - 1) - 1,800 <= 99,900, so n = 509 — exactly, not about
    assert twice == 509


def _spend(path: str, n: int, out: multiprocessing.Queue[int]) -> None:
    async def run() -> int:
        store = SqliteState(Path(path))
        allowed = 0
        for _ in range(n):
            allowed += (await store.limit(["t:acme:rate", "t:acme:images:1"], [0, 0, 1, 50]))[0]
        await store.aclose()
        return allowed

    out.put(asyncio.run(run()))


def test_two_processes_sharing_one_file_keep_one_limit(tmp_path: Path) -> None:
    """Two gateway workers on one machine: 2 x 40 requests for 50 images a day — exactly
    50 pass, however the two interleave (each check-and-count is one transaction)."""
    path = tmp_path / "state.db"
    SqliteState(path)  # created before the race
    ctx = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[int] = ctx.Queue()
    workers = [ctx.Process(target=_spend, args=(str(path), 40, out)) for _ in range(2)]
    for w in workers:
        w.start()
    allowed = [out.get(timeout=60) for _ in workers]
    for w in workers:
        w.join(10)
    assert sum(allowed) == 50, allowed
    assert min(allowed) > 0, "both processes were counted against the one limit"


@pytest.mark.parametrize(
    ("config", "refused", "warned"),
    [
        ({"maxmemory-policy": "noeviction", "save": "3600 1", "appendonly": "no"}, None, False),
        ({"maxmemory-policy": "noeviction", "save": "", "appendonly": "yes"}, None, False),
        ({"maxmemory-policy": "noeviction", "save": "", "appendonly": "no"}, None, True),
        ({"maxmemory-policy": "allkeys-lru", "save": "", "appendonly": "yes"}, "maxmemory-policy allkeys-lru", False),
        ({"maxmemory-policy": "volatile-ttl", "save": "", "appendonly": "yes"}, "maxmemory-policy volatile-ttl", False),
        (None, "assume_noeviction", False),
    ],
)
def test_a_redis_that_may_evict_is_refused_naming_the_setting(
    config: dict[str, str] | None, refused: str | None, warned: bool
) -> None:
    problem, warnings = judge_config("h:6379/0", config, assume_noeviction=False)
    assert (problem is None) == (refused is None) and (refused is None or refused in (problem or "")), problem
    assert refused is None or "noeviction" in (problem or ""), "the message says how to fix it"
    assert bool(warnings) == warned, warnings


def test_a_managed_redis_without_config_is_taken_on_the_operators_word() -> None:
    problem, warnings = judge_config("h:6379/0", None, assume_noeviction=True)
    assert problem is None and warnings and "assume_noeviction" in warnings[0]
