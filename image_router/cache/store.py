"""Where cached results live: local disk (one machine) or Redis (gateway replicas).

Both implement :class:`Store`; :class:`GuardedStore` wraps either with what makes a
cache safe in front of a latency budget: every call is bounded (``timeout_s``, 20 ms by
default) and failures open a circuit, so a slow or dead store turns into misses —
counted, never an error and never more than the bound of delay.

The disk store is ``diskcache`` (SQLite index + files, LRU eviction under a byte
bound, survives restarts, safe across processes). Its calls are synchronous, so they
run on a small thread pool of their own, never on the event loop. The Redis store
uses ``redis.asyncio``; entries expire by ttl and the server's own ``maxmemory`` policy
evicts (``allkeys-lru`` is the setting to use; the docs say so).

Only the cache lives here: what must not be evicted (rollouts, tenants' limits) has a
store of its own, :mod:`image_router.state`, which also holds the guard both share.
"""

from __future__ import annotations

import asyncio
import fnmatch
import functools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import diskcache

from image_router.config.table import CacheConfig
from image_router.errors import CacheStoreError
from image_router.policy.circuit import CircuitBreaker
from image_router.state.guard import CIRCUIT, Bounded
from image_router.state.redis import connect

__all__ = ["DiskStore", "GuardedStore", "RedisStore", "Store", "open_store"]

log = logging.getLogger("router.cache")
T = TypeVar("T")


class Store(Protocol):
    kind: str

    async def get_many(self, keys: list[str]) -> list[bytes | None]: ...

    async def set(self, key: str, value: bytes, ttl_s: float) -> None: ...

    async def delete(self, keys: list[str]) -> None: ...

    async def keys(self, pattern: str) -> list[str]:
        """Keys matching a glob ``pattern`` (admin use: purge; not on the request path)."""
        ...

    async def lease(self, key: str, owner: str, ttl_s: float) -> bool:
        """Take ``key`` for ``ttl_s`` unless someone else holds it (atomic across
        replicas). Re-entrant: the holder asking again renews it, so a call that timed
        out here but took effect in the store is not read as another's lease on retry."""
        ...

    async def release(self, key: str, owner: str) -> None: ...

    async def stats(self) -> dict[str, Any]: ...

    async def aclose(self) -> None: ...


class DiskStore:
    kind = "disk"

    def __init__(self, path: Path, max_bytes: int) -> None:
        self.path = path
        self._cache = diskcache.Cache(
            str(path), size_limit=max_bytes, eviction_policy="least-recently-used", statistics=False
        )
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="cache-disk")
        self.evictions = 0  # entries culled to stay under max_bytes (or expired) while writing

    async def _run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        def read() -> list[bytes | None]:
            return [self._cache.get(k) for k in keys]

        return await self._run(read)

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        def write() -> None:
            before = len(self._cache) + (0 if key in self._cache else 1)
            self._cache.set(key, value, expire=ttl_s)  # culls least recently used over size_limit
            self.evictions += max(0, before - len(self._cache))

        await self._run(write)

    async def delete(self, keys: list[str]) -> None:
        def remove() -> None:
            for key in keys:
                self._cache.delete(key)

        await self._run(remove)

    async def keys(self, pattern: str) -> list[str]:
        def scan() -> list[str]:
            return [str(k) for k in self._cache.iterkeys() if fnmatch.fnmatchcase(str(k), pattern)]

        return await self._run(scan)

    async def lease(self, key: str, owner: str, ttl_s: float) -> bool:
        def take() -> bool:
            with self._cache.transact():
                if self._cache.add(key, owner, expire=ttl_s):
                    return True
                if self._cache.get(key) == owner:
                    self._cache.set(key, owner, expire=ttl_s)
                    return True
                return False

        return await self._run(take)

    async def release(self, key: str, owner: str) -> None:
        def drop() -> None:
            if self._cache.get(key) == owner:
                self._cache.delete(key)

        await self._run(drop)

    async def stats(self) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            return {"entries": len(self._cache), "bytes": self._cache.volume(), "path": str(self.path)}

        return await self._run(read)

    async def aclose(self) -> None:
        await self._run(self._cache.close)
        self._pool.shutdown(wait=False)


_LEASE = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
return 0
"""
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end"


class RedisStore:
    kind = "redis"

    def __init__(self, url: str, timeout_s: float) -> None:
        self.url = url
        self._redis = connect(url, timeout_s)

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        values = [await self._redis.get(keys[0])] if len(keys) == 1 else await self._redis.mget(keys)
        return [v if isinstance(v, bytes) else None for v in values]  # decode_responses is off

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._redis.set(key, value, px=max(1, int(ttl_s * 1000)))

    async def delete(self, keys: list[str]) -> None:
        if keys:
            await self._redis.delete(*keys)

    async def keys(self, pattern: str) -> list[str]:
        return [
            k.decode() if isinstance(k, bytes) else str(k) async for k in self._redis.scan_iter(pattern, count=1000)
        ]

    async def lease(self, key: str, owner: str, ttl_s: float) -> bool:
        return bool(await self._redis.eval(_LEASE, 1, key, owner, max(1, int(ttl_s * 1000))))

    async def release(self, key: str, owner: str) -> None:
        await self._redis.eval(_RELEASE, 1, key, owner)

    async def stats(self) -> dict[str, Any]:
        info = await self._redis.info("memory")
        return {"entries": int(await self._redis.dbsize()), "bytes": int(info.get("used_memory", 0))}

    async def aclose(self) -> None:
        await self._redis.aclose()


WORKERS_ENV = "ROUTER_WORKERS"  # set for the workers of `router serve --workers N`: how many there are


def shares_store() -> bool:
    """Whether this process is one of several workers on one machine, which share a disk
    store as replicas share Redis: identical misses then take the store's lease."""
    return int(os.environ.get(WORKERS_ENV, "1") or "1") > 1


LEASE_BOUND = 4  # a lease may take this many lookup bounds
# Leases open their circuit only on 10 unanswered in a row, never on a ratio: a burst's
# share of slow answers from a busy (not hung) store must not stop coordination.
LEASE_CIRCUIT = replace(CIRCUIT, failure_ratio=1.0, min_requests=1_000_000)


class GuardedStore(Bounded):
    """A store whose every call on the request path takes at most ``timeout_s`` and
    never raises: a failure, a timeout or an open circuit reads as a miss (or a write
    not made), counted in :attr:`counts` (the bound and circuit: :class:`Bounded`)."""

    def __init__(self, store: Store, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(f"cache store {store.kind}", timeout_s, clock)
        self.store = store
        self.kind = store.kind
        # shared by replicas (Redis) or by this machine's workers (any store): misses take leases
        self.shared = store.kind == "redis" or shares_store()
        # leases have a circuit of their own: a burst's timed-out lookups do not stop
        # coordination, but a store whose leases keep timing out (hung) is not asked on
        # every miss for a lease it will not give
        self.lease_breaker = CircuitBreaker(LEASE_CIRCUIT)

    @property
    def wait_bound_s(self) -> float:
        """The bound of a call on a path that waits anyway (a lease, a replica polling
        for another's entry): a busy store there must not read as an answer."""
        return self.timeout_s * LEASE_BOUND

    async def get_many(self, keys: list[str], timeout_s: float | None = None) -> list[bytes | None]:
        """The values (``None``: a miss), every failure a miss too."""
        return await self.try_get_many(keys, timeout_s) or [None] * len(keys)

    async def try_get_many(
        self, keys: list[str], timeout_s: float | None = None, circuit: bool = True
    ) -> list[bytes | None] | None:
        """Like :meth:`get_many`, but ``None`` when the store could not answer (a miss
        and "could not tell" must differ where the answer decides to generate)."""
        result: list[bytes | None] | None = await self._guard(
            lambda: self.store.get_many(keys), None, timeout_s, circuit
        )
        return result

    async def set(self, key: str, value: bytes, ttl_s: float) -> bool:
        async def write() -> bool:
            await self.store.set(key, value, ttl_s)
            return True

        # off the request path, and asked even with the circuit open: a burst's timed-out
        # lookups open it, and a replica waiting on this entry's lease must find it
        return await self._guard(write, False, max(self.timeout_s, 1.0), circuit=False)

    async def delete(self, keys: list[str]) -> None:
        await self._guard(lambda: self.store.delete(keys), None, max(self.timeout_s, 1.0))

    async def lease(self, key: str, owner: str, ttl_s: float, bound_s: float | None = None) -> bool | None:
        """``None`` when the store cannot say (then nobody coordinates: generate). On
        the generation path, where a burst of identical requests is exactly when the
        store is busiest: bounded by ``bound_s`` (default :attr:`wait_bound_s`), and
        asked even while the lookups' circuit is open (a burst's timed-out lookups open
        it; a second generation costs far more than the bounded wait) — but not while
        the leases' own circuit is (10 leases in a row unanswered: a hung store)."""
        result: bool | None = await self._guard(
            lambda: self.store.lease(key, owner, ttl_s), None, bound_s or self.wait_bound_s, breaker=self.lease_breaker
        )
        return result

    async def release(self, key: str, owner: str) -> None:
        await self._guard(lambda: self.store.release(key, owner), None, max(self.timeout_s, 1.0))

    async def aclose(self) -> None:
        try:
            await self.store.aclose()
        except Exception:
            log.debug("closing the cache store failed", exc_info=True)


def open_store(config: CacheConfig) -> GuardedStore:
    """The store a table configures. An unusable disk path is a :class:`CacheStoreError`
    naming it (``router serve`` exits 2), not a crash at the first request."""
    url = config.store
    if url.startswith("disk://"):
        path = Path(url.removeprefix("disk://")).expanduser()
        try:
            path.mkdir(parents=True, exist_ok=True)
            probe = path / ".write-test"
            probe.write_bytes(b"")
            probe.unlink()
            store: Store = DiskStore(path, config.max_bytes)
        except Exception as exc:  # noqa: BLE001 - sqlite3 and OS errors alike
            raise CacheStoreError(f"cache.store: cannot use {path} for the cache: {exc}", path=str(path)) from None
    else:
        store = RedisStore(url, config.timeout_s)
    return GuardedStore(store, config.timeout_s)
