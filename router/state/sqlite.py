"""The embedded state store: one SQLite file, for the gateway processes of one machine.

No server to run, and nothing is ever evicted: a row goes only when its key was given a
ttl and the ttl has passed (or when it is deleted). Several gateway workers on one
machine open the same file and share it (``shared = True``, for that machine only;
replicas on several machines need ``state: {store: redis://...}``):

- WAL, so readers never wait for a writer and a writer never waits for readers;
- every read-modify-write (a lease, a compare-and-swap, counters, a tenant's limits)
  runs in ``BEGIN IMMEDIATE``: the write lock is taken before the read, so two
  processes cannot both read the old value; ``busy_timeout`` makes the other wait;
- ``synchronous=NORMAL``: a committed step survives the process being killed; the
  last few may be lost on a power cut (WAL's documented trade).

sqlite3 is synchronous, so every call runs on this store's own single thread (the
connection lives there), never on the event loop.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from router.errors import StateStoreError
from router.state.gcra import DAY_KEY_TTL_S, step

__all__ = ["SqliteState"]

T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000
SWEEP_EVERY_S = 60.0  # expired rows are deleted at most this often (reads skip them anyway)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counts (
    key TEXT NOT NULL, field TEXT NOT NULL, n INTEGER NOT NULL, expires REAL, PRIMARY KEY (key, field)
) WITHOUT ROWID;
"""
_LIVE = "(expires IS NULL OR expires > ?)"


class SqliteState:
    kind = "sqlite"
    shared = True  # by the gateway processes of this machine

    def __init__(self, path: Path, wall: Callable[[], float] = time.time) -> None:
        """Opens (creating) the file now: an unusable path is a
        :class:`~router.errors.StateStoreError` at start, not at the first request."""
        self.path = path
        self.wall = wall
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="state-sqlite")
        self._db: sqlite3.Connection | None = None
        self._swept = 0.0
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._pool.submit(self._connect).result()
        except (OSError, sqlite3.Error) as exc:
            self._pool.shutdown(wait=False)
            raise StateStoreError(f"state.store: cannot use {path} for state: {exc}", path=str(path)) from None

    def _connect(self) -> None:
        db = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(_SCHEMA)
        self._db = db

    async def _run(self, fn: Callable[[sqlite3.Connection, float], T], write: bool = True) -> T:
        """``fn(db, now)`` on the store's thread; in ``BEGIN IMMEDIATE`` when it writes."""

        def call() -> T:
            db = self._db
            if db is None:
                raise StateStoreError("state store is closed")
            now = self.wall()
            if not write:
                return fn(db, now)
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db, now)
                if now - self._swept > SWEEP_EVERY_S:
                    self._swept = now
                    db.execute("DELETE FROM kv WHERE expires <= ?", (now,))
                    db.execute("DELETE FROM counts WHERE expires <= ?", (now,))
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    @staticmethod
    def _get(db: sqlite3.Connection, key: str, now: float) -> bytes | None:
        row = db.execute(f"SELECT value FROM kv WHERE key = ? AND {_LIVE}", (key, now)).fetchone()
        return bytes(row[0]) if row is not None else None

    @staticmethod
    def _put(db: sqlite3.Connection, key: str, value: bytes, expires: float | None) -> None:
        db.execute("INSERT OR REPLACE INTO kv (key, value, expires) VALUES (?, ?, ?)", (key, value, expires))

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        return await self._run(lambda db, now: [self._get(db, k, now) for k in keys], write=False)

    async def swap(self, key: str, expected: bytes | None, value: bytes, ttl_s: float | None) -> bool:
        def cas(db: sqlite3.Connection, now: float) -> bool:
            if self._get(db, key, now) != expected:
                return False
            self._put(db, key, value, None if ttl_s is None else now + ttl_s)
            return True

        return await self._run(cas)

    async def lease(self, key: str, owner: str, ttl_s: float) -> bool:
        def take(db: sqlite3.Connection, now: float) -> bool:
            holder = self._get(db, key, now)
            if holder is not None and holder != owner.encode():
                return False
            self._put(db, key, owner.encode(), now + ttl_s)
            return True

        return await self._run(take)

    async def release(self, key: str, owner: str) -> None:
        await self._run(lambda db, now: db.execute("DELETE FROM kv WHERE key = ? AND value = ?", (key, owner.encode())))

    async def add_counts(self, key: str, counts: dict[str, int], ttl_s: float | None) -> None:
        def add(db: sqlite3.Connection, now: float) -> None:
            expires = None if ttl_s is None else now + ttl_s
            db.execute(f"DELETE FROM counts WHERE key = ? AND NOT {_LIVE}", (key, now))
            db.executemany(
                "INSERT INTO counts (key, field, n, expires) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (key, field) DO UPDATE SET n = n + excluded.n",
                [(key, name, n, expires) for name, n in counts.items()],
            )
            db.execute("UPDATE counts SET expires = ? WHERE key = ?", (expires, key))  # the ttl covers the key

        await self._run(add)

    async def counts(self, key: str) -> dict[str, int]:
        def read(db: sqlite3.Connection, now: float) -> dict[str, int]:
            rows = db.execute(f"SELECT field, n FROM counts WHERE key = ? AND {_LIVE}", (key, now)).fetchall()
            return {str(name): int(n) for name, n in rows}

        return await self._run(read, write=False)

    async def limit(self, keys: list[str], args: list[int]) -> list[int]:
        """Checked and counted in one transaction on this machine's clock (every process
        sharing the file reads the same one)."""
        rate_key, day_key = keys

        def check(db: sqlite3.Connection, now: float) -> list[int]:
            tat, used = self._get(db, rate_key, now), self._get(db, day_key, now)
            result = step(int(tat or 0), int(used or 0), round(now * 1_000_000), args)
            interval, tolerance = args[0], args[1]
            if result.tat_us is not None:
                self._put(db, rate_key, str(result.tat_us).encode(), now + (tolerance + interval) / 1_000_000)
            if result.used is not None:
                self._put(db, day_key, str(result.used).encode(), now + DAY_KEY_TTL_S)
            return result.reply

        return await self._run(check)

    async def delete(self, keys: list[str]) -> None:
        def remove(db: sqlite3.Connection, now: float) -> None:
            db.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in keys])
            db.executemany("DELETE FROM counts WHERE key = ?", [(k,) for k in keys])

        await self._run(remove)

    def verify(self) -> None:
        """Nothing to refuse: SQLite never evicts (an unusable file failed at open)."""

    async def check(self) -> None:
        """A file that still answers (nothing here can evict)."""
        await self._run(lambda db, now: db.execute("SELECT 1").fetchone(), write=False)

    async def aclose(self) -> None:
        def close() -> None:
            if self._db is not None:
                self._db.close()
                self._db = None

        await asyncio.get_running_loop().run_in_executor(self._pool, close)
        self._pool.shutdown(wait=False)
