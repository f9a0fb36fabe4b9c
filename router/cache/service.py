"""The result cache as the data plane uses it: look up a chain's tiers at once, store
answers in the background, keep image records for URLs and their encoded variants,
purge.

Store keys (see :mod:`router.cache.keys`): ``r:…`` results, ``i:{id}`` one image for
its URL (any replica serves it), ``v:{id}.{format}.{quality}`` an encoded variant,
``l:…`` a short generation lease (one replica generates, the others wait for its
entry).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from router.cache.entry import CorruptEntry, Entry
from router.cache.hot import HotEntries
from router.cache.keys import CacheKey, prompt_hash
from router.cache.store import GuardedStore
from router.config.table import CacheConfig

__all__ = ["CacheStats", "ResultCache", "redact"]


def redact(url: str) -> str:
    """A store URL without its password (``redis://:secret@host`` → ``redis://***@host``)."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        return f"{scheme}{sep}***@{rest.rsplit('@', 1)[1]}"
    return url


log = logging.getLogger("router.cache")
MAX_PENDING_WRITES = 256  # background writes beyond this are dropped (counted), not queued
SHARED_MEMORY_TTL_S = 5.0  # how stale a purge may leave another replica's memory


@dataclass
class CacheStats:
    results: dict[tuple[str, str, str], int] = field(default_factory=dict)  # (route, model, X-Cache) -> n
    writes: int = 0
    write_bytes: int = 0
    dropped_writes: int = 0
    too_large: int = 0
    corrupt: int = 0
    lease_waits: int = 0

    def count(self, route: str, model: str, result: str) -> None:
        key = (route, model, result)
        self.results[key] = self.results.get(key, 0) + 1


class ResultCache:
    def __init__(self, config: CacheConfig, store: GuardedStore, wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.wall_clock = wall_clock
        self.stats = CacheStats()
        self._writes: set[asyncio.Task[None]] = set()
        memory_ttl = SHARED_MEMORY_TTL_S if store.kind == "redis" else config.ttl_s
        self.hot = HotEntries(config.memory_bytes, memory_ttl, time.monotonic)

    # -- results -----------------------------------------------------------------------

    async def lookup(
        self, keys: dict[str, CacheKey], timeout_s: float | None = None, bound_s: float | None = None
    ) -> dict[str, Entry]:
        """The cached entries among ``keys`` (tier name → key), in one store round trip
        bounded by the store's timeout (``bound_s`` instead, on a path that is waiting
        anyway), or ``timeout_s`` when less time is left."""
        found: dict[str, Entry] = {}
        names = []
        for name, key in keys.items():
            entry = self.hot.get(str(key))
            if entry is not None:
                found[name] = entry
            else:
                names.append(name)
        if not names or (found and next(iter(keys)) in found):
            return found  # the first tier is in memory: nothing below it can be better
        bound = self.store.timeout_s if bound_s is None else bound_s
        timeout = bound if timeout_s is None else min(timeout_s, bound)
        if timeout <= 0:
            return found
        values = await self.store.get_many([str(keys[n]) for n in names], timeout)
        corrupt: list[str] = []
        for name, value in zip(names, values, strict=True):
            if value is None:
                continue
            try:
                found[name] = entry = Entry.from_bytes(value)
                self.hot.put(str(keys[name]), entry, self.config.ttl_s)
            except CorruptEntry as exc:
                self.stats.corrupt += 1
                log.warning("corrupt cache entry %s removed: %s", keys[name], exc)
                corrupt.append(str(keys[name]))
        if corrupt:
            self._background(self.store.delete(corrupt))
        return found

    def save(self, key: CacheKey, entry: Entry, ttl_s: float) -> asyncio.Task[None] | None:
        """Store ``entry`` after the answer has gone (never delays it); the write's task."""
        data = entry.to_bytes()
        if len(data) > self.config.max_entry_bytes:
            self.stats.too_large += 1
            return None
        self.hot.put(str(key), entry, ttl_s)
        return self._write(str(key), data, ttl_s)

    def _write(self, key: str, data: bytes, ttl_s: float) -> asyncio.Task[None] | None:
        async def write() -> None:
            if await self.store.set(key, data, ttl_s):
                self.stats.writes += 1
                self.stats.write_bytes += len(data)

        return self._background(write())

    def _background(self, coro: Any) -> asyncio.Task[None] | None:
        if len(self._writes) >= MAX_PENDING_WRITES:
            self.stats.dropped_writes += 1
            coro.close()
            return None
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)
        return task

    def release_after(self, write: asyncio.Task[None] | None, key: CacheKey, owner: str) -> None:
        """Give the lease back once the entry is written, so a replica waiting on it
        finds the entry rather than an empty key it would generate again."""

        async def release() -> None:
            if write is not None:
                await asyncio.wait([write])
            await self.release(key, owner)

        self._background(release())

    async def drain(self) -> None:
        """Wait for the background writes (tests, shutdown)."""
        while self._writes:
            await asyncio.gather(*list(self._writes), return_exceptions=True)

    # -- leases: one replica generates a key -------------------------------------------

    async def lease(self, key: CacheKey, owner: str, ttl_s: float, bound_s: float | None = None) -> bool | None:
        return await self.store.lease(f"l:{key}", owner, ttl_s, bound_s)

    async def release(self, key: CacheKey, owner: str) -> None:
        await self.store.release(f"l:{key}", owner)

    async def leased(self, key: CacheKey) -> bool:
        """Whether someone holds ``key``'s lease; a store that cannot tell says yes
        (the caller keeps waiting for the holder rather than generating twice)."""
        values = await self.store.try_get_many([f"l:{key}"], self.store.wait_bound_s, circuit=False)
        return values is None or values[0] is not None

    # -- images by URL -----------------------------------------------------------------

    def save_image(self, image_id: str, entry: Entry, ttl_s: float) -> None:
        self._write(f"i:{image_id}", entry.to_bytes(), ttl_s)

    async def image(self, image_id: str) -> Entry | None:
        (value,) = await self.store.get_many([f"i:{image_id}"], max(self.store.timeout_s, 0.5))
        if value is None:
            return None
        try:
            return Entry.from_bytes(value)
        except CorruptEntry:
            self.stats.corrupt += 1
            self._background(self.store.delete([f"i:{image_id}"]))
            return None

    async def variant(self, image_id: str, fmt: str, quality: int) -> bytes | None:
        (value,) = await self.store.get_many([f"v:{image_id}.{fmt}.{quality}"], max(self.store.timeout_s, 0.5))
        return value

    def save_variant(self, image_id: str, fmt: str, quality: int, data: bytes, ttl_s: float) -> None:
        if len(data) <= self.config.max_entry_bytes:
            self._write(f"v:{image_id}.{fmt}.{quality}", data, ttl_s)

    # -- purge ---------------------------------------------------------------------------

    async def purge(
        self,
        *,
        model: str | None = None,
        version: str | None = None,
        route: str | None = None,
        prompt: str | None = None,
    ) -> int:
        """Remove results (and, for a model or everything, its image records and their
        variants) matching every given condition; nothing given purges everything.
        Returns how many keys were removed. Admin use: it scans keys."""
        self.hot.clear()
        store = self.store.store
        everything = model is None and route is None and prompt is None
        pattern = "r:{}|{}|*@{}|{}|*".format(
            route or "*",
            model or "*",
            version if version is not None else "*",
            prompt_hash((prompt,)) if prompt else "*",
        )
        doomed = await store.keys("*" if everything else pattern)
        if not everything and model is not None and route is None and prompt is None:
            for key in await store.keys("i:*"):
                (value,) = await store.get_many([key])
                try:
                    entry = Entry.from_bytes(value) if value is not None else None
                except CorruptEntry:
                    entry = None
                if entry is None or (entry.model == model and (version is None or entry.version == version)):
                    doomed.append(key)
                    doomed += await store.keys(f"v:{key[2:]}.*")
        for start in range(0, len(doomed), 500):
            await store.delete(doomed[start : start + 500])
        return len(doomed)

    def counters(self) -> dict[str, Any]:
        """The counts kept in this process (no store call): for metrics and the admin API."""
        return {
            "store_errors": dict(self.store.counts),
            "circuit": self.store.state,
            "writes": self.stats.writes,
            "write_bytes": self.stats.write_bytes,
            "dropped_writes": self.stats.dropped_writes,
            "too_large": self.stats.too_large,
            "corrupt": self.stats.corrupt,
            "lease_waits": self.stats.lease_waits,
            "evictions": getattr(self.store.store, "evictions", 0),  # the disk store's; Redis keeps its own
        }

    async def describe(self) -> dict[str, Any]:
        try:
            stored = await asyncio.wait_for(self.store.store.stats(), 2.0)
        except Exception as exc:  # noqa: BLE001 - the status page shows a store that is down
            stored = {"error": f"{type(exc).__name__}: {exc}"}
        return {
            "store": redact(self.config.store),
            "kind": self.store.kind,
            "stored": stored,
            "memory": {"entries": len(self.hot), "bytes": self.hot.bytes, "hits": self.hot.hits},
            **self.counters(),
            "results": [
                {"route": r, "model": m, "result": x, "count": n} for (r, m, x), n in sorted(self.stats.results.items())
            ],
        }

    async def aclose(self) -> None:
        await self.drain()
        await self.store.aclose()
