"""The result cache as the data plane uses it: look up a chain's tiers at once, store
answers in the background, keep image records for URLs and their encoded variants,
purge.

Store keys (see :mod:`image_router.cache.keys`), all under the cache's own ``c:`` prefix:
``c:r:…`` results, ``c:i:{id}`` one image for its URL (any replica serves it),
``c:v:{id}.{format}.{quality}`` an encoded variant, ``c:l:…`` a short generation lease
(one replica generates, the others wait for its entry). A purge scans ``c:`` only.

What comes back from a shared store is checked before it is served: a result must
carry its key's digest, an image must hash to its id. Anything else — unreadable,
moved from another key, altered — is a miss, deleted and counted (``corrupt`` for
what does not parse, ``unverified`` for what parses but is not what was asked for).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from image_router.cache.entry import CorruptEntry, Entry
from image_router.cache.hot import HotEntries
from image_router.cache.keys import (
    NAMESPACE,
    CacheKey,
    image_id,
    image_key,
    key_digest,
    lease_key,
    variant_key,
    variants_of,
)
from image_router.cache.store import GuardedStore
from image_router.config.table import CacheConfig

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
    unverified: int = 0
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
        # every store may be shared (Redis by replicas, a disk directory by processes on one
        # volume) and a purge reaches only this process's memory: the others' memory must
        # forget on its own, soon. Re-reading a hot entry every 5 s costs one store call.
        self.hot = HotEntries(config.memory_bytes, min(config.ttl_s, SHARED_MEMORY_TTL_S), time.monotonic)

    # -- results -----------------------------------------------------------------------

    async def lookup(
        self,
        keys: dict[str, CacheKey],
        timeout_s: float | None = None,
        bound_s: float | None = None,
        count: bool = True,
    ) -> dict[str, Entry]:
        """The cached entries among ``keys`` (tier name → key), in one store round trip
        bounded by the store's timeout (``bound_s`` instead, on a path that is waiting
        anyway), or ``timeout_s`` when less time is left."""
        found: dict[str, Entry] = {}
        names = []
        for name, key in keys.items():
            entry = self.hot.get(str(key), count)
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
        bad: list[str] = []
        for name, value in zip(names, values, strict=True):
            if value is None:
                continue
            stored = str(keys[name])
            digest = key_digest(stored)
            entry = self._verified(stored, value, lambda e: e.key == digest)  # noqa: B023 - called at once
            if entry is None:
                bad.append(stored)
            else:
                found[name] = entry
                self.hot.put(stored, entry, self.config.ttl_s)
        if bad:
            self._background(self.store.delete(bad))
        return found

    def _verified(self, key: str, value: bytes, check: Callable[[Entry], bool]) -> Entry | None:
        """``value`` as an entry if it parses and passes ``check``; else ``None``, counted
        and logged (the caller deletes it): never served."""
        try:
            entry = Entry.from_bytes(value)
        except CorruptEntry as exc:
            self.stats.corrupt += 1
            log.warning("corrupt cache entry %s removed: %s", key, exc)
            return None
        if not check(entry):
            self.stats.unverified += 1
            log.warning("cache entry %s is not what was stored under that key: removed, not served", key)
            return None
        return entry

    def save(self, key: CacheKey, entry: Entry, ttl_s: float) -> asyncio.Task[None] | None:
        """Store ``entry`` after the answer has gone (never delays it); the write's task."""
        entry = replace(entry, key=key_digest(str(key)))
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
        return await self.store.lease(lease_key(key), owner, ttl_s, bound_s)

    async def release(self, key: CacheKey, owner: str) -> None:
        await self.store.release(lease_key(key), owner)

    async def leased(self, key: CacheKey) -> bool:
        """Whether someone holds ``key``'s lease; a store that cannot tell says yes
        (the caller keeps waiting for the holder rather than generating twice)."""
        values = await self.store.try_get_many([lease_key(key)], self.store.wait_bound_s, circuit=False)
        return values is None or values[0] is not None

    # -- images by URL -----------------------------------------------------------------

    async def save_image(self, name: str, entry: Entry, ttl_s: float) -> bool:
        """Store one image (``entry.images[0]``) for its URL, ``name`` being its
        :func:`image_id`; whether the store took it (the caller answers inline if not)."""
        return await self.store.set(image_key(name), entry.to_bytes(), ttl_s)

    async def image(self, name: str) -> Entry | None:
        """The image behind a URL id, only if its pixels still hash to that id (hashed
        off the event loop: an image may be megabytes). One that does not is removed
        with its encoded variants, and counted."""
        key = image_key(name)
        (value,) = await self.store.get_many([key], max(self.store.timeout_s, 0.5))
        if value is None:
            return None
        entry = self._verified(key, value, lambda e: len(e.images) == 1)
        if entry is not None:
            loop = asyncio.get_running_loop()
            if await loop.run_in_executor(None, image_id, entry.images[0]) != name:
                self.stats.unverified += 1
                log.warning("image %s does not hash to its id: removed, not served", name)
                entry = None
        if entry is None:
            await self.store.delete([key])  # before answering: a retry must not find it
            self._background(self._drop_variants(name))
        return entry

    async def _drop_variants(self, name: str) -> None:
        """Tidy up a removed image's encodings (unreachable already: a variant is served
        only after its image record passes)."""
        try:
            async with asyncio.timeout(2.0):
                doomed = await self.store.store.keys(variants_of(name))
        except Exception:  # noqa: BLE001 - a store fault leaves them to expire
            return
        await self.store.delete(doomed)

    async def variant(self, name: str, fmt: str, quality: int) -> bytes | None:
        (value,) = await self.store.get_many([variant_key(name, fmt, quality)], max(self.store.timeout_s, 0.5))
        return value

    def save_variant(self, name: str, fmt: str, quality: int, data: bytes, ttl_s: float) -> None:
        if len(data) <= self.config.max_entry_bytes:
            self._write(variant_key(name, fmt, quality), data, ttl_s)

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
        # only ever a pattern under the cache's own prefix: nothing else in the store
        # (rollouts, tenant counters) can match
        pattern = f"{NAMESPACE}*" if everything else CacheKey.pattern(route, model, version, prompt)
        assert pattern.startswith(NAMESPACE)
        doomed = await store.keys(pattern)
        if not everything and model is not None and route is None and prompt is None:
            for key in await store.keys(image_key("*")):
                (value,) = await store.get_many([key])
                try:
                    entry = Entry.from_bytes(value) if value is not None else None
                except CorruptEntry:
                    entry = None
                if entry is None or (entry.model == model and (version is None or entry.version == version)):
                    doomed.append(key)
                    doomed += await store.keys(variants_of(key.removeprefix(image_key(""))))
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
            "unverified": self.stats.unverified,
            "lease_waits": self.stats.lease_waits,
            "evictions": getattr(self.store.store, "evictions", 0),  # the disk store's; Redis keeps its own
        }

    async def describe(self) -> dict[str, Any]:
        try:
            async with asyncio.timeout(2.0):
                stored = await self.store.store.stats()
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
