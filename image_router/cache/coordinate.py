"""The result cache's part in a request's walk: never generate the same image twice.

This implements :class:`~image_router.dispatch.stored.StoredTiers`, the seam the dispatcher's
walk calls, so the walk knows that a tier is stored, not how:

* **Version trust.** A key names the model version that made the pixels. A pinned
  version is known; an unpinned one is read from an answer or the model's metadata
  and trusted for :data:`VERSION_TRUST_S` (re-read in the background half way). An
  unknown or stale version is read now, waiting at most :data:`VERSION_WAIT_S`; still
  unknown means no lookup — a stale version must not serve hits forever.
* **One round trip for the chain.** Every trusted tier is looked up at once on arrival,
  bounded by the store's timeout; a tier whose result is stored answers at once.
* **Flights.** A tier about to be generated is matched against identical generations
  in flight on this replica (:class:`~image_router.cache.flight.Flights`) and, with a shared
  store, on other replicas through a short lease: one replica generates, the others
  poll for its entry. A generation runs as a task of its own, so a waiter that leaves
  never cancels it, and its result is stored whoever is still waiting.

One instance per replica (it holds the flights, the served versions and the lease
owner id); the gateway wires it into the dispatcher and points :attr:`cache` at the
table's :class:`~image_router.cache.service.ResultCache` (``None``: no cache configured).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace

from image_router.backends.base import ImageRequest, ImageResult
from image_router.backends.pool import BackendPool
from image_router.cache.entry import Entry
from image_router.cache.flight import Flights
from image_router.cache.keys import CacheKey, lease_key
from image_router.cache.service import ResultCache
from image_router.config.table import Model, Route
from image_router.dispatch.stored import Flight, Lookup, Stored
from image_router.served import CachePlan

__all__ = ["LEASE_POLL_S", "VERSION_TRUST_S", "VERSION_WAIT_S", "Coordinator"]

VERSION_TRUST_S = 10.0  # an unpinned model's served version is re-read after this long
VERSION_WAIT_S = 0.05  # the most a request waits to learn an unpinned model's version
LEASE_POLL_S = 0.025  # how often a replica waiting on another's generation looks for it


def _result(entry: Entry) -> ImageResult:
    return ImageResult(entry.images, entry.version, stored_at=entry.created, memo=entry.meta)


class Coordinator:
    def __init__(
        self, pool: BackendPool, clock: Callable[[], float], wall_clock: Callable[[], float] = time.time
    ) -> None:
        self.pool = pool
        self.clock = clock
        self.wall_clock = wall_clock
        self.cache: ResultCache | None = None  # the table's, set by the gateway on every swap
        self.flights: Flights[ImageResult] = Flights()
        self.owner = f"{os.getpid():x}-{id(self):x}-{time.time_ns():x}"  # this replica, in store leases
        self._versions: dict[str, tuple[str, float]] = {}  # lane key -> (served version, seen at)
        self._refreshing: dict[str, asyncio.Task[None]] = {}

    def key(self, route: Route, model: Model, request: ImageRequest, scope: str = "") -> CacheKey:
        """What ``model``'s result for ``request`` on ``route`` is stored under, in
        ``scope`` (``""``: shared; a scope's entries are never read by another)."""
        assert request.seeds is not None
        key = CacheKey.of(
            route.name, model.name, model.remote_name, self._version(model), request.prompts, request.seeds,
            request.steps, request.width, request.height,
        )  # fmt: skip
        return replace(key, scope=scope) if scope else key

    def warm(self, models: Iterable[Model]) -> None:
        """Learn the version each unpinned model serves now, in the background: a replica
        that starts (or reloads) must not meet its first burst of identical requests not
        knowing it — its keys would name no version, and it could not find the entry
        another replica made for it (CI saw two generations of one image)."""
        if self.cache is None:
            return
        for model in models:
            if not model.version and model.lane_key not in self._refreshing:
                self._refresh(model)

    def _refresh(self, model: Model) -> asyncio.Task[None]:
        lane = model.lane_key
        task = self._refreshing[lane] = asyncio.ensure_future(self._refresh_version(model))
        task.add_done_callback(lambda _: self._refreshing.pop(lane, None))
        return task

    def versioned(self, key: CacheKey, model: Model) -> CacheKey:
        """``key`` naming the version ``model`` is known to serve, when it named none."""
        return key if key.version else replace(key, version=self._version(model))

    def _version(self, model: Model) -> str:
        """The version ``model`` is pinned to or was last seen serving (``""``: unknown)."""
        return model.version or self._versions.get(model.lane_key, ("", 0.0))[0]

    # -- StoredTiers ---------------------------------------------------------------------

    async def lookup_chain(
        self,
        route: Route,
        tiers: Sequence[Model],
        request: ImageRequest,
        plan: CachePlan,
        deadline: float,
        count: bool = True,
    ) -> Lookup | None:
        """The chain's keys and what the store holds of them (``count=False``: a look
        that serves nothing, not counted as a hit)."""
        cache = self.cache
        if cache is None or request.seeds is None:
            return None
        trusted: set[str] = set()
        if plan.lookup:
            trusted = {model.name for model in tiers if self._known_version(model)}
            unsure = [model for model in tiers if model.name not in trusted]
            if unsure:  # rare: at start, or a stale unpinned version (no gather per request)
                wait = min(VERSION_WAIT_S, deadline - self.clock())
                checks = await asyncio.gather(*(self._trusted(model, wait) for model in unsure))
                trusted |= {model.name for model, ok in zip(unsure, checks, strict=True) if ok}
        keys = {model.name: self.key(route, model, request, plan.scope) for model in tiers}
        if self.flights.running(lease_key(keys[tiers[0].name])) is not None:
            trusted = set()  # the intended tier is being made here: join it, no store call
        hits: dict[str, Stored] = {}
        if trusted:
            lookups = {name: key for name, key in keys.items() if name in trusted}
            found = await cache.lookup(lookups, deadline - self.clock(), count=count)
            hits = {name: Stored(_result(entry), entry.seeds) for name, entry in found.items()}
        return Lookup(keys, hits, plan.skipped or "MISS")

    async def through_flight(self, key: object, flight: Flight) -> tuple[ImageResult | str, bool]:
        """The first request claims the key *before* awaiting anything and runs
        :meth:`_obtain` as a task of its own (given to ``flight.hold``); the others wait
        for that task, each at most its own time. When it fails, a waiter makes its own
        attempt if time is left."""
        assert isinstance(key, CacheKey)
        running = self.flights.running(lease_key(key))  # the lease's identity: one flight whatever the version
        if running is None:
            task = self.flights.start(lease_key(key), lambda: self._obtain(key, flight))
            if flight.hold is not None:
                flight.hold(task)
            outcome = await self.flights.wait(task, flight.deadline - self.clock())
            # stored_at: another replica made it while this one held back
            return outcome, isinstance(outcome, ImageResult) and outcome.stored_at is not None
        self.flights.coalesced += 1
        outcome = await self.flights.wait(running, flight.deadline - self.clock())
        if isinstance(outcome, ImageResult):
            return outcome, True
        if outcome == "timeout" or flight.deadline - self.clock() <= flight.margin_s:
            return outcome, False
        return await flight.generate(), False  # the leader failed: on our own

    def keep(self, key: object, model: Model, result: ImageResult, request: ImageRequest, plan: CachePlan) -> None:
        assert isinstance(key, CacheKey)
        if self.cache is not None:
            self._store(self.cache, key, model, result, request, plan)

    # -- one generation, once across replicas ---------------------------------------------

    async def _obtain(self, key: CacheKey, flight: Flight) -> ImageResult | str:
        """The flight's work: with a shared store, hold back while another replica holds
        the key's lease (and take its stored result); else admit, generate, store."""
        cache = self.cache
        held: bool | None = None
        write: asyncio.Task[None] | None = None
        if cache is not None and cache.store.shared:
            held, entry = await self._coordinate(cache, key, flight)
            if entry is not None:
                if held:
                    await cache.release(key, self.owner)
                return _result(entry)
        try:
            outcome = await flight.generate()
            if not isinstance(outcome, str) and cache is not None:  # the store it looked up and leased in
                await outcome.pixels()  # a hosted result arrives encoded: decoded off the loop
                write = self._store(cache, key, flight.model, outcome, flight.request, flight.plan)
            return outcome
        finally:
            if held and cache is not None:  # released where it was taken, whatever a reload swapped since
                cache.release_after(write, key, self.owner)

    async def _coordinate(self, cache: ResultCache, key: CacheKey, flight: Flight) -> tuple[bool | None, Entry | None]:
        """Take the key's lease, or wait for the replica that holds it: whether this
        replica holds the lease, and the entry when it is already stored."""
        # coordinating is worth waiting for, up to a quarter of a generation
        bound = max(cache.store.wait_bound_s, 0.25 * flight.own_s)
        model = flight.model
        if not key.version:  # the entry the lease holder stores names the served version: learn it
            await self._trusted(model, bound)
            key = self.versioned(key, model)
        held: bool | None = None
        for _ in range(2):  # None: the store could not tell (busy, not down), so ask once more
            held = await cache.lease(key, self.owner, max(0.05, flight.deadline - self.clock()), bound)
            if held is not None:
                break
        if held is False:
            give_up_at = flight.deadline - flight.own_s - flight.margin_s
            return held, await self._wait_for_replica(cache, model, key, give_up_at)
        if held:  # another replica may have finished between our lookup and the lease
            if not key.version:  # ... under the version it serves: worth up to a generation's time to learn
                await self._trusted(model, min(flight.own_s, flight.deadline - self.clock()))
                key = self.versioned(key, model)
            found = await cache.lookup({model.name: key}, flight.deadline - self.clock())
            return held, found.get(model.name)
        return held, None

    async def _wait_for_replica(
        self, cache: ResultCache, model: Model, key: CacheKey, give_up_at: float
    ) -> Entry | None:
        """Another replica is making ``key``: poll the store for its entry until it
        lands, the lease goes (that replica gave up: generate here), or ``give_up_at`` —
        the last moment this request can still make the image itself in its budget."""
        cache.stats.lease_waits += 1
        bound = cache.store.wait_bound_s  # a waiting path: a busy store is not a miss here
        while self.clock() + LEASE_POLL_S < give_up_at:
            await asyncio.sleep(LEASE_POLL_S)
            key = self.versioned(key, model)  # a version learnt meanwhile
            found = await cache.lookup({model.name: key}, bound, bound)
            if model.name in found:
                return found[model.name]
            if not await cache.leased(key):
                if key.version or self.clock() >= give_up_at:
                    break
                # the holder is done, under a version this replica cannot name yet: learn it, look again
                await self._trusted(model, give_up_at - self.clock())
                if not self.versioned(key, model).version:
                    break
        return None

    def _store(
        self,
        cache: ResultCache,
        key: CacheKey,
        model: Model,
        result: ImageResult,
        request: ImageRequest,
        plan: CachePlan,
    ) -> asyncio.Task[None] | None:
        """Keep a generated result (in the background), under the version that made it."""
        served_version = result.model_version or model.version or ""
        if not model.version:
            self._seen_version(model, served_version)
        if not plan.store:
            return None
        kept = {k: v for k, v in result.memo.items() if k == "upscaled_from"}  # a hit is tagged the same
        entry = Entry(
            result.images, model.name, served_version, key.route, request.seeds or (), self.wall_clock(), kept
        )
        return cache.save(replace(key, version=served_version), entry, plan.ttl_s)

    # -- which version a key names ------------------------------------------------------

    def _known_version(self, model: Model) -> bool:
        """Pinned, or seen in the first half of its trust period: no await needed."""
        if model.version:
            return True
        seen = self._versions.get(model.lane_key)
        return seen is not None and self.clock() - seen[1] < VERSION_TRUST_S / 2

    async def _trusted(self, model: Model, wait_s: float) -> bool:
        """Whether ``model``'s key names the version the backend serves now (see the
        module's docstring), reading it now for at most ``wait_s`` when unsure."""
        if self._known_version(model):
            return True
        seen = self._versions.get(model.lane_key)
        age = self.clock() - seen[1] if seen is not None else math.inf
        task = self._refreshing.get(model.lane_key) or self._refresh(model)
        if age < VERSION_TRUST_S:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, wait_s)):
                await asyncio.shield(task)
        seen = self._versions.get(model.lane_key)
        return seen is not None and self.clock() - seen[1] < VERSION_TRUST_S

    async def _refresh_version(self, model: Model) -> None:
        try:
            async with asyncio.timeout(2.0):
                meta = await self.pool.get(model.backend).model_metadata(model)
        except Exception:  # noqa: BLE001 - unknown stays unknown: no lookups until an answer says
            return
        versions = [str(v) for v in meta.get("versions", []) if str(v).isdigit()]
        if versions:
            self._seen_version(model, max(versions, key=int))

    def _seen_version(self, model: Model, version: str) -> None:
        self._versions[model.lane_key] = (version, self.clock())
