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
import math
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from image_router.errors import StateStoreError
from image_router.state.base import Committed
from image_router.state.gcra import DAY_KEY_TTL_S, step
from image_router.state.spend import PURGE_AT_MOST, choose, parse_record, record
from image_router.state.txn import Txn

__all__ = ["SqliteState"]

T = TypeVar("T")
BUSY_TIMEOUT_MS = 5000
SCHEMA_BUSY_TIMEOUT_MS = 600_000
SWEEP_EVERY_S = 60.0  # expired rows are deleted at most this often (reads skip them anyway)
SWEEP_AT_MOST = 500  # rows of each table one sweep deletes; a full batch sweeps again next write

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, expires REAL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS ix (
    name TEXT NOT NULL, member TEXT NOT NULL, score REAL NOT NULL, PRIMARY KEY (name, member)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ix_score ON ix (name, score);
CREATE TABLE IF NOT EXISTS counts (
    key TEXT NOT NULL, field TEXT NOT NULL, n INTEGER NOT NULL, expires REAL, PRIMARY KEY (key, field)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS kv_expires ON kv (expires) WHERE expires IS NOT NULL;
CREATE INDEX IF NOT EXISTS counts_expires ON counts (expires) WHERE expires IS NOT NULL;
"""
# The sweep finds what has expired through the indexes above, a batch at a time. Without
# them it scanned both tables whole (~60 ns a row: a week of settled-request markers at
# 100 requests a second, 60M rows, is 3.6 s) inside some request's write transaction, on
# the store's one thread, and every state call queued behind it missed its bound.
_SWEEP = {
    table: f"DELETE FROM {table} WHERE ({pk}) IN (SELECT {pk} FROM {table} WHERE expires <= ? LIMIT {SWEEP_AT_MOST})"
    for table, pk in (("kv", "key"), ("counts", "key, field"))
}
_LIVE = "(expires IS NULL OR expires > ?)"


class SqliteState:
    kind = "sqlite"
    shared = True  # by the gateway processes of this machine

    def __init__(self, path: Path, wall: Callable[[], float] = time.time) -> None:
        """Opens (creating) the file now: an unusable path is a
        :class:`~image_router.errors.StateStoreError` at start, not at the first request."""
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
        # the schema may have to build an index over a big file from before it (minutes at
        # tens of millions of rows): the other workers opening the file wait that out
        db.execute(f"PRAGMA busy_timeout = {SCHEMA_BUSY_TIMEOUT_MS}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = NORMAL")
        db.executescript(_SCHEMA)
        db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
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
                    if max(db.execute(_SWEEP[table], (now,)).rowcount for table in _SWEEP) >= SWEEP_AT_MOST:
                        self._swept = -math.inf  # more expired than one batch: on, next write
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

    @staticmethod
    def _count(db: sqlite3.Connection, key: str, name: str, now: float) -> int:
        row = db.execute(f"SELECT n FROM counts WHERE key = ? AND field = ? AND {_LIVE}", (key, name, now)).fetchone()
        return int(row[0]) if row is not None else 0

    @staticmethod
    def _bump(db: sqlite3.Connection, key: str, name: str, n: int, expires: float | None) -> None:
        db.execute(
            "INSERT INTO counts (key, field, n, expires) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (key, field) DO UPDATE SET n = n + excluded.n, expires = excluded.expires",
            (key, name, n, expires),
        )

    @staticmethod
    def _unreserve(db: sqlite3.Connection, index: str, member: str, raw: bytes | None) -> None:
        """Give back what the reservation ``member`` (its record ``raw``) holds in its
        windows, and forget it: on settlement, and when it expired unsettled."""
        if raw is not None:
            _, amount, windows = parse_record(raw)
            for window in windows:
                db.execute("UPDATE counts SET n = n - ? WHERE key = ? AND field = 'reserved'", (amount, window))
        db.execute("DELETE FROM kv WHERE key = ?", (member,))
        db.execute("DELETE FROM ix WHERE name = ? AND member = ?", (index, member))

    def _purge(self, db: sqlite3.Connection, index: str, now: float) -> None:
        """Give back what expired reservations of ``index`` held (a replica that died
        between reserving and settling)."""
        rows = db.execute(
            "SELECT member FROM ix WHERE name = ? AND score <= ? ORDER BY score LIMIT ?", (index, now, PURGE_AT_MOST)
        ).fetchall()
        for (member,) in rows:
            raw = self._get(db, member, now)
            self._unreserve(db, index, member, raw)

    async def reserve(self, keys: list[str], args: list[int]) -> list[int]:
        """See :mod:`image_router.state.spend`; on this machine's clock."""
        index, held, windows = keys[0], keys[1], keys[2:]
        ttl_ms, n = args[0], args[1]
        limits, ttls, quotes = args[2 : 2 + n], args[2 + n : 2 + 2 * n], args[2 + 2 * n :]

        def take(db: sqlite3.Connection, now: float) -> list[int]:
            self._purge(db, index, now)
            spent = [self._count(db, w, "spent", now) for w in windows]
            reserved = [self._count(db, w, "reserved", now) for w in windows]
            raw = self._get(db, held, now)
            if raw is not None:  # asked again (a retry): the first answer stands
                first, amount, _ = parse_record(raw)
                return [first, amount, *(lim - s - r for lim, s, r in zip(limits, spent, reserved, strict=True))]
            got = choose(limits, spent, reserved, quotes)
            if got.tier >= 0:
                self._put(db, held, record(got.tier, got.amount, windows), None)
                db.execute(
                    "INSERT OR REPLACE INTO ix (name, member, score) VALUES (?, ?, ?)",
                    (index, held, now + ttl_ms / 1000),
                )
                for window, ttl in zip(windows, ttls, strict=True):
                    self._bump(db, window, "reserved", got.amount, now + ttl)
                    self._bump(db, window, "spent", 0, now + ttl)
            return [got.tier, got.amount, *got.available]

        return await self._run(take)

    async def settle(self, keys: list[str], args: list[int]) -> int:
        """See :mod:`image_router.state.spend`: counted once per ``done`` key."""
        index, held, done, windows = keys[0], keys[1], keys[2], keys[3:]
        actual, done_ttl, ttls = args[0], args[1], args[2:]

        def apply(db: sqlite3.Connection, now: float) -> int:
            if self._get(db, done, now) is not None:
                return 0
            raw = self._get(db, held, now)
            if raw is not None:
                self._unreserve(db, index, held, raw)
            for window, ttl in zip(windows, ttls, strict=True):
                self._bump(db, window, "spent", actual, now + ttl)
                self._bump(db, window, "reserved", 0, now + ttl)
            self._put(db, done, b"1", now + done_ttl)
            return 1

        return await self._run(apply)

    async def commit(self, txn: Txn) -> Committed:
        def apply(db: sqlite3.Connection, now: float) -> Committed:
            for key, expected in txn.expect:
                if self._get(db, key, now) != expected:
                    return "changed"
            for index, most in txn.room:
                (held,) = db.execute("SELECT COUNT(*) FROM ix WHERE name = ?", (index,)).fetchone()
                new = {m for i, m, _ in txn.add if i == index}
                if new:
                    marks = ",".join("?" * len(new))
                    (old,) = db.execute(
                        f"SELECT COUNT(*) FROM ix WHERE name = ? AND member IN ({marks})", (index, *new)
                    ).fetchone()
                    held += len(new) - old
                if held > most:
                    return "full"
            for key, value, ttl_s in txn.put:
                self._put(db, key, value, None if ttl_s is None else now + ttl_s)
            db.executemany("DELETE FROM kv WHERE key = ?", [(k,) for k in txn.delete])
            db.executemany("INSERT OR REPLACE INTO ix (name, member, score) VALUES (?, ?, ?)", txn.add)
            db.executemany("DELETE FROM ix WHERE name = ? AND member = ?", txn.remove)
            return "ok"

        return await self._run(apply)

    async def scan(
        self, index: str, lo: float = float("-inf"), hi: float = float("inf"), limit: int = 100, reverse: bool = False
    ) -> list[tuple[str, float]]:
        order = "DESC" if reverse else "ASC"
        query = (
            "SELECT member, score FROM ix WHERE name = ? AND score >= ? AND score <= ? "
            f"ORDER BY score {order}, member {order} LIMIT ?"
        )

        def read(db: sqlite3.Connection, now: float) -> list[tuple[str, float]]:
            return [(str(m), float(s)) for m, s in db.execute(query, (index, lo, hi, limit)).fetchall()]

        return await self._run(read, write=False)

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
