"""The state store's ``commit`` and ``scan`` (what the job queue stands on), on SQLite.
The same checks run on a real Redis in tests/integration/test_jobs_state_redis.py."""

from __future__ import annotations

import asyncio
from pathlib import Path

from image_router.state import SqliteState, StateStore, Txn


async def commit_and_scan(store: StateStore) -> None:
    """All or nothing; ``changed`` before ``full``; indexes in score order both ways."""
    create = Txn(expect=(("job:1", None),), room=(("q", 2),), put=(("job:1", b"v1", None),), add=(("q", "1", 5.0),))
    assert await store.commit(create) == "ok"
    assert await store.commit(create) == "changed", "the record exists now"
    second = Txn(put=(("job:2", b"v2", None),), add=(("q", "2", 1.5),), room=(("q", 2),))
    assert await store.commit(second) == "ok"
    third = Txn(put=(("job:3", b"v3", None),), add=(("q", "3", 9.0),), room=(("q", 2),))
    assert await store.commit(third) == "full"
    assert await store.get_many(["job:3"]) == [None], "nothing of a refused step is written"
    assert await store.commit(Txn(add=(("q", "2", 0.5),), room=(("q", 2),))) == "ok", "re-scoring takes no room"
    assert await store.scan("q") == [("2", 0.5), ("1", 5.0)]
    assert await store.scan("q", reverse=True, limit=1) == [("1", 5.0)]
    assert await store.scan("q", lo=1.0, hi=6.0) == [("1", 5.0)]
    assert await store.scan("job:1") == [], "an index and a key with one name do not meet"
    move = Txn(
        expect=(("job:1", b"v1"),),
        put=(("job:1", b"v1b", None),),
        remove=(("q", "1"),),
        add=(("running", "1", 100.0),),
        delete=("job:2",),
    )
    assert await store.commit(move) == "ok"
    assert await store.commit(move) == "changed", "the compare-and-set lost: nothing moves twice"
    assert await store.get_many(["job:1", "job:2"]) == [b"v1b", None]
    assert await store.scan("q") == [("2", 0.5)] and await store.scan("running") == [("1", 100.0)]
    assert await store.commit(Txn(put=(("lease", b"me", 0.05),))) == "ok"
    await asyncio.sleep(0.1)
    assert await store.get_many(["lease"]) == [None], "a ttl given in a step expires"


def test_commit_and_scan_on_sqlite(tmp_path: Path) -> None:
    async def run() -> None:
        store = SqliteState(tmp_path / "state.db")
        try:
            await commit_and_scan(store)
        finally:
            await store.aclose()

    asyncio.run(run())
