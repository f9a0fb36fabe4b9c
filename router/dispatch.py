"""Carrying out a routing decision within the request's latency budget.

The dispatcher owns the I/O side of the budget: it fixes the deadline on arrival,
asks each tier's backend for a live :class:`~router.policy.forecast.Forecast` (when a
request sent now would finish on its best endpoint, from what is queued there),
folds in its own admission queue, asks :func:`router.policy.budget.plan_attempt`
which tier to try with what timeout, enforces that timeout itself (Triton cannot
stop a running request; on timeout the call is cancelled and its connection
dropped), and walks down the fallback chain on timeouts, 5xx and unavailability. A
model that rejects the input (4xx) is not retried elsewhere: the input would be just
as bad.

A tier whose backend reports no endpoint with a closed circuit is skipped at once
(reason ``circuit_open``; the circuits live in the backends, per replica and per
model on each). Per model the dispatcher keeps an admission gate
(``max_concurrency``): a full tier is skipped when a later tier can still answer
(``full``); the last tier may wait in its bounded priority queue, but only as long
as its fastest service time still fits. When nothing was tried because the work
already queued made every tier miss (``busy``, ``full``, ``queue_timeout``), that is
load shedding and says so: ``429 overloaded`` with a ``Retry-After`` of when the
queue should have drained, not a ``504`` that blames the budget. With ``hedge`` on a
route, the next tier is asked too when the first has not answered in time, and the
first good answer wins.

On a route with a ``cache`` block, the result cache takes part (see
:mod:`router.cache`): every tier of the chain is looked up at once on arrival (one
store round trip, bounded), and a tier whose result is stored is a tier that answers
at once — its forecast is zero, so the budget policy serves it wherever the walk down
the chain reaches it. A tier about to be generated is first matched against identical
generations in flight (this replica's, and through a lease in a shared store, other
replicas'); a generation runs as a task of its own, so a waiter that leaves never
cancels it, and its result is stored whoever is still waiting.

Guarantee: a call returns or raises no later than ``budget + one scheduling tick``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from router.admission import AdmissionGate
from router.backends.base import ImageRequest, ImageResult
from router.backends.pool import BackendPool
from router.cache import CacheKey, Entry, ResultCache
from router.cache.flight import Flights
from router.config.table import Model, Route, RoutingTable
from router.errors import AllTiersFailed, BackendError, BackendRejected, BackendTimeout, BudgetExhausted, Overloaded
from router.imaging import upscaled
from router.policy.budget import OVERLOAD_REASONS, Attempt, chain_for, plan_attempt
from router.policy.forecast import Forecast
from router.policy.size import fitted_size
from router.policy.split import Choice
from router.stats import LatencyStats
from router.telemetry import Metrics, Tracing

__all__ = ["CachePlan", "Dispatcher", "Served"]

log = logging.getLogger("router.dispatch")
DEFAULT_PRIORITY = 2
INSTANT = Forecast(0.0, 0.0, 0.0, 0.0, 0.0, 0)  # a stored result: it answers at once
VERSION_TRUST_S = 10.0  # an unpinned model's served version is re-read after this long
VERSION_WAIT_S = 0.05  # the most a request waits to learn an unpinned model's version
LEASE_POLL_S = 0.025  # how often a replica waiting on another's generation looks for it


@dataclass(frozen=True, slots=True)
class CachePlan:
    """What one request may do with the result cache (the gateway decides it from the
    route's ``cache`` block, the seedless policy and ``Cache-Control``)."""

    lookup: bool
    store: bool
    ttl_s: float
    skipped: str | None = None  # why the lookup was skipped: the answer's X-Cache then
    repeatable: bool = True  # False: its seeds were drawn at random, no identical request can follow


@dataclass(frozen=True, slots=True)
class Served:
    """A successful answer and everything needed to tag it."""

    result: ImageResult
    route: Route
    model: Model
    attempts: int
    fallback: tuple[tuple[str, str], ...]
    canary: bool
    queue_s: float
    backend_s: float
    total_s: float
    hedged: bool = False
    cache: str | None = None  # X-Cache: HIT, MISS, COALESCED, BYPASS (None: route not cached)
    age_s: float = 0.0  # of a stored result
    seeds: tuple[int, ...] | None = None  # what the images were made with
    tenant: str | None = None  # who asked (a tenant's name; None: open mode, no key)
    limit_headers: dict[str, str] = field(default_factory=dict)  # the tenant's x-ratelimit-*

    @property
    def stored(self) -> bool:
        """The image came from the result store (a hit, or a flight another request or
        replica made), not from a model for this request."""
        return self.cache in ("HIT", "COALESCED")

    @property
    def model_tag(self) -> str:
        version = self.result.model_version or self.model.version
        return f"{self.model.name}@{version}" if version else self.model.name


@dataclass
class _Progress:
    """What one request has done so far (for tags and the final error)."""

    start: float
    deadline: float
    reasons: list[tuple[str, str]] = field(default_factory=list)
    tenant: str = ""  # whose request: the admission queue shares fairly between tenants

    @property
    def budget_ms(self) -> float:
        return round((self.deadline - self.start) * 1000, 1)

    attempts: int = 0
    backend_s: float = 0.0
    first_attempt_at: float | None = None
    drain_s: float | None = None  # when an overloaded tier should have room again
    cache: str | None = None  # X-Cache of the answer

    def skip(self, skipped: tuple[tuple[str, str], ...], forecasts: dict[str, Forecast], remaining_s: float) -> None:
        """Note skipped tiers; for overloaded ones, how long until their queue drains
        enough for this budget (the ``Retry-After`` of a shed request)."""
        self.reasons.extend(skipped)
        for name, why in skipped:
            if why in OVERLOAD_REASONS and name in forecasts:
                wait = max(0.0, forecasts[name].expected_s - remaining_s)
                self.drain_s = wait if self.drain_s is None else min(self.drain_s, wait)


@dataclass(frozen=True, slots=True)
class _Try:
    """One tier about to be tried for one request."""

    model: Model
    attempt: Attempt
    request: ImageRequest
    priority: int | None
    progress: _Progress


class Dispatcher:
    def __init__(
        self,
        pool: BackendPool,
        stats: LatencyStats,
        clock: Callable[[], float],
        margin_s: float = 0.02,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.tracer = tracing.tracer if tracing is not None else None
        self.wall_clock = wall_clock
        self.recent_downgrades: deque[dict[str, object]] = deque(maxlen=50)
        self.pool = pool
        self.stats = stats
        self.clock = clock
        self.margin_s = margin_s
        self._gates: dict[str, AdmissionGate] = {}
        self.cache: ResultCache | None = None  # set by the gateway from the table
        self.flights: Flights[ImageResult] = Flights()
        self.owner = f"{id(self):x}-{time.time_ns():x}"  # this replica, in store leases
        self._versions: dict[str, tuple[str, float]] = {}  # lane key -> (served version, seen at)
        self._refreshing: dict[str, asyncio.Task[None]] = {}

    # -- per-model state ---------------------------------------------------------------

    def gate(self, model: Model) -> AdmissionGate:
        gate = self._gates.get(model.name)
        if gate is None:
            gate = self._gates[model.name] = AdmissionGate(model.max_concurrency, model.max_queue)
        gate.limit, gate.max_queue = model.max_concurrency, model.max_queue  # follow reloads
        return gate

    def available(self, model: Model) -> bool:
        """Some endpoint of the model's backend has a closed (or probing) circuit."""
        return self.pool.get(model.backend).available(model)

    def inflight(self) -> dict[str, int]:
        return {m: g.inflight for m, g in self._gates.items() if g.inflight}

    def snapshot(self) -> dict[str, dict[str, object]]:
        """Per model: in flight and queued (circuits are per endpoint, in the backends)."""
        return {name: {"inflight": g.inflight, "queued": g.queued} for name, g in sorted(self._gates.items())}

    def p95_s(self, table: RoutingTable) -> Callable[[str], float]:
        """Recent p95 of answered attempts (the hint until there are some): what a
        ``hedge: {after: p95}`` waits for. Budget decisions use :meth:`forecast`."""

        def p95(name: str) -> float:
            model = table.models[name]
            return self.stats.p95(name, model.latency_hint_ms / 1000)

        return p95

    def idle(self, model: Model) -> bool:
        """Nothing ahead of a new request on ``model`` and a free admission slot nobody
        waits for: background work sent now takes no slot a live request was waiting for."""
        gate = self.gate(model)
        free = gate.limit is None or (gate.inflight < gate.limit and gate.queued == 0)
        forecast = self.forecast(model)
        return free and forecast is not None and forecast.ahead == 0

    def forecast(self, model: Model, priority: int | None = None, tenant: str | None = None) -> Forecast | None:
        """The backend's forecast for ``model``, behind this gateway's own admission
        queue when the model's gate is full (``None``: no usable endpoint). Given the
        request's priority and tenant, only the waiters it would not overtake count."""
        gate = self.gate(model)
        full = gate.limit is not None and (gate.inflight >= gate.limit or gate.queued > 0)
        if not full:
            return self.pool.get(model.backend).forecast(model, 0)
        ahead = gate.queued if priority is None or tenant is None else gate.ahead_of(priority, tenant)
        return self.pool.get(model.backend).forecast(model, ahead + 1)

    # -- one attempt -----------------------------------------------------------------

    async def _call(
        self, model: Model, request: ImageRequest, timeout_s: float, priority: int | None
    ) -> ImageResult | str:
        """One call under its own timeout, the admission slot already held: the result,
        or why it failed (a fallback reason). A rejected input is raised instead. The
        backend's lanes learn service times from the same call; ``stats`` keeps the
        answered latencies for the status page, the canary verdict and hedging."""
        name = model.name
        t0 = self.clock()
        target = None
        if request.upscale and model.native_side and request.width and request.height:
            fitted = fitted_size(request.width, request.height, model.native_side)
            if fitted is not None:  # made at the tier's native size, then upscaled to what was asked
                target = (request.width, request.height)
                request = replace(request, width=fitted[0], height=fitted[1])
        try:
            async with asyncio.timeout(timeout_s):
                result = await self.pool.get(model.backend).generate(model, request, timeout_s, priority)
                if target is not None:
                    result = await upscaled(result, *target)
        except (TimeoutError, BackendTimeout):
            self.stats.record_outcome(name, False)
            return "timeout"
        except BackendRejected:
            raise
        except BackendError as exc:
            log.warning("attempt at %s failed: %s %s", name, exc.code, exc.message)
            self.stats.record_outcome(name, False)
            return exc.code.removeprefix("backend_")
        except Exception:  # a backend bug must not cost the client its fallback
            log.exception("attempt at %s failed unexpectedly", name)
            self.stats.record_outcome(name, False)
            return "error"
        finally:
            self.gate(model).release()
        self.stats.record(name, self.clock() - t0)
        self.stats.record_outcome(name, True)
        return result

    async def _admit(self, model: Model, priority: int, attempt: Attempt, progress: _Progress) -> str | None:
        """Take an admission slot; ``None`` when admitted, else the reason to skip. Only
        the last tier waits, and only while its fastest service time still fits."""
        gate = self.gate(model)
        if gate.try_acquire():
            return None
        if not attempt.last or not gate.can_queue(priority, progress.tenant):
            return "full"
        floor = attempt.forecast.service_floor_s if attempt.forecast is not None else 0.0
        try:
            async with asyncio.timeout(max(0.0, progress.deadline - self.clock() - floor)):
                if not await gate.acquire(priority, progress.tenant):
                    return "full"  # displaced from the queue by a request that goes ahead
        except TimeoutError:
            return "queue_timeout"
        return None

    # -- the request -------------------------------------------------------------------

    async def serve(
        self,
        table: RoutingTable,
        route: Route,
        choice: Choice,
        request: ImageRequest,
        priority: int | None = None,
        started: float | None = None,
        cache: CachePlan | None = None,
        budget_s: float | None = None,
        tenant: str = "",
    ) -> Served:
        """``budget_s`` caps the route's budget: a client's own deadline (a gRPC
        deadline, KServe's ``timeout`` parameter) when it is the shorter."""
        start = self.clock() if started is None else started
        budget = route.budget_ms / 1000 if budget_s is None else max(0.0, min(route.budget_ms / 1000, budget_s))
        progress = _Progress(start, start + budget, tenant=tenant)
        chain = list(chain_for(choice.arm.model, route.fallback))
        hedge = route.hedge_after_ms is not None or route.hedge_p95
        keys: dict[str, CacheKey] = {}
        hits: dict[str, Entry] = {}
        if cache is not None and self.cache is not None and request.seeds is not None:
            progress.cache = cache.skipped or "MISS"
            trusted: set[str] = set()
            if cache.lookup:
                trusted = {name for name in chain if self._known_version(table.models[name])}
                unsure = [name for name in chain if name not in trusted]
                if unsure:  # rare: at start, or a stale unpinned version (no gather per request)
                    wait = min(VERSION_WAIT_S, progress.deadline - self.clock())
                    checks = await asyncio.gather(*(self._trusted(table.models[n], wait) for n in unsure))
                    trusted |= {name for name, ok in zip(unsure, checks, strict=True) if ok}
            keys = {name: self.cache_key(route, table.models[name], request) for name in chain}
            if self.flights.running(str(keys[chain[0]])) is not None:
                trusted = set()  # the intended tier is being made here: join it, no store call
            if trusted:
                lookups = {name: key for name, key in keys.items() if name in trusted}
                hits = await self.cache.lookup(lookups, progress.deadline - self.clock())
        while chain:
            remaining = progress.deadline - self.clock()
            known: dict[str, Forecast] = {}
            for name in list(chain):
                forecast = (
                    INSTANT
                    if name in hits
                    else self.forecast(table.models[name], priority or DEFAULT_PRIORITY, progress.tenant)
                )
                if forecast is None:
                    chain.remove(name)
                    progress.reasons.append((name, "circuit_open"))
                else:
                    known[name] = forecast
            plan = plan_attempt(chain, remaining, known.__getitem__, self.margin_s)
            progress.skip(plan.skipped, known, remaining)
            if plan.attempt is None:
                break
            attempt = plan.attempt
            chain = chain[chain.index(attempt.model) + 1 :]
            model = table.models[attempt.model]
            if model.name in hits:
                return self._stored(route, choice, model, hits[model.name], progress, "HIT")
            key = keys.get(model.name)
            later = [m for m in chain if known[m].floor_s <= remaining]
            if key is not None and cache is not None and not (hedge and later):
                outcome = await self._through_flight(_Try(model, attempt, request, priority, progress), key, cache)
                if isinstance(outcome, ImageResult):
                    return self._served(route, choice, model, outcome, progress, request.seeds)
                if outcome in OVERLOAD_REASONS:
                    progress.skip(((model.name, outcome),), known, remaining)
                else:
                    progress.reasons.append((model.name, outcome))
                continue
            refused = await self._admit(model, priority or DEFAULT_PRIORITY, attempt, progress)
            if refused is not None:
                progress.skip(((model.name, refused),), known, remaining)
                continue
            if hedge and later:
                served = await self._hedged(table, route, choice, request, priority, attempt, later, progress)
                if served is not None:
                    if cache is not None and cache.store and self.cache is not None and served.model.name in keys:
                        self._store(keys[served.model.name], served.model, served.result, request, cache)
                    return served
                chain = [m for m in chain if m not in {r[0] for r in progress.reasons}]
                continue
            timeout = min(attempt.timeout_s, progress.deadline - self.clock())  # after any queueing
            outcome = await self._timed(model, request, timeout, priority, progress)
            if not isinstance(outcome, str):
                return self._served(route, choice, model, outcome, progress, request.seeds)
            progress.reasons.append((model.name, outcome))
        raise self._failure(route, progress)

    # -- the result cache ------------------------------------------------------------

    def cache_key(self, route: Route, model: Model, request: ImageRequest) -> CacheKey:
        version = model.version or self._versions.get(model.lane_key, ("", 0.0))[0]
        assert request.seeds is not None
        return CacheKey.of(
            route.name, model.name, model.remote_name, version, request.prompts, request.seeds,
            request.steps, request.width, request.height,
        )  # fmt: skip

    def _known_version(self, model: Model) -> bool:
        """Pinned, or seen in the first half of its trust period: no await needed."""
        if model.version:
            return True
        seen = self._versions.get(model.lane_key)
        return seen is not None and self.clock() - seen[1] < VERSION_TRUST_S / 2

    async def _trusted(self, model: Model, wait_s: float) -> bool:
        """Whether ``model``'s key names the version the backend serves now: pinned in
        routes.yaml, or read from an answer or the model's metadata in the last
        :data:`VERSION_TRUST_S` (re-read in the background half way). An unknown or
        stale version is read now, waiting at most ``wait_s``; still unknown means no
        lookup — a stale version must not serve hits forever."""
        if self._known_version(model):
            return True
        seen = self._versions.get(model.lane_key)
        age = self.clock() - seen[1] if seen is not None else math.inf
        task = self._refreshing.get(model.lane_key)
        if task is None:
            task = self._refreshing[model.lane_key] = asyncio.ensure_future(self._refresh_version(model))
            task.add_done_callback(lambda _: self._refreshing.pop(model.lane_key, None))
        if age < VERSION_TRUST_S:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, wait_s)):
                await asyncio.shield(task)
        seen = self._versions.get(model.lane_key)
        return seen is not None and self.clock() - seen[1] < VERSION_TRUST_S

    async def _refresh_version(self, model: Model) -> None:
        try:
            meta = await asyncio.wait_for(self.pool.get(model.backend).model_metadata(model), 2.0)
        except Exception:  # noqa: BLE001 - unknown stays unknown: no lookups until an answer says
            return
        versions = [str(v) for v in meta.get("versions", []) if str(v).isdigit()]
        if versions:
            self._seen_version(model, max(versions, key=int))

    def _seen_version(self, model: Model, version: str) -> None:
        self._versions[model.lane_key] = (version, self.clock())

    def _stored(
        self, route: Route, choice: Choice, model: Model, entry: Entry, progress: _Progress, how: str
    ) -> Served:
        progress.cache = how
        result = ImageResult(entry.images, entry.version, stored_at=entry.created, memo=entry.meta)
        return self._served(route, choice, model, result, progress, entry.seeds)

    async def _admitted_call(self, t: _Try) -> ImageResult | str:
        """Take an admission slot (or the reason there is none), then make the call."""
        refused = await self._admit(t.model, t.priority or DEFAULT_PRIORITY, t.attempt, t.progress)
        if refused is not None:
            return refused
        timeout = min(t.attempt.timeout_s, t.progress.deadline - self.clock())
        return await self._timed(t.model, t.request, timeout, t.priority, t.progress)

    async def _through_flight(self, t: _Try, key: CacheKey, plan: CachePlan) -> ImageResult | str:
        """This tier's image for ``key``, made once however many ask at the same time.

        The first request claims the key *before* awaiting anything and runs
        :meth:`_obtain` as a task of its own; the others wait for that task (each at most
        its own time). When it fails, a waiter makes its own attempt if time is left."""
        progress = t.progress
        running = self.flights.running(str(key))
        if running is None:
            task = self.flights.start(str(key), lambda: self._obtain(t, key, plan))
            outcome = await self.flights.wait(task, progress.deadline - self.clock())
            if isinstance(outcome, ImageResult) and outcome.stored_at is not None:
                progress.cache = "COALESCED"  # another replica made it while we held back
            return outcome
        self.flights.coalesced += 1
        outcome = await self.flights.wait(running, progress.deadline - self.clock())
        if isinstance(outcome, ImageResult):
            progress.cache = "COALESCED"
            return outcome
        if outcome == "timeout" or progress.deadline - self.clock() <= self.margin_s:
            return outcome
        return await self._admitted_call(t)  # the leader failed: on our own

    async def _obtain(self, t: _Try, key: CacheKey, plan: CachePlan) -> ImageResult | str:
        """The flight's work: with a shared store, hold back while another replica holds
        the key's lease (and take its stored result); else admit, generate, store."""
        model, progress = t.model, t.progress
        held: bool | None = None
        write: asyncio.Task[None] | None = None
        own_s = t.attempt.forecast.service_s if t.attempt.forecast is not None else 0.0
        if self.cache is not None and self.cache.store.kind == "redis":
            # coordinating is worth waiting for, up to a quarter of a generation
            bound = max(self.cache.store.wait_bound_s, 0.25 * own_s)
            for _ in range(2):  # None: the store could not tell (busy, not down), so ask once more
                held = await self.cache.lease(key, self.owner, max(0.05, progress.deadline - self.clock()), bound)
                if held is not None:
                    break
            entry = None
            if held is False:
                entry = await self._wait_for_replica(model, key, progress.deadline - own_s - self.margin_s)
            elif held:  # another replica may have finished between our lookup and the lease
                entry = (await self.cache.lookup({model.name: key}, progress.deadline - self.clock())).get(model.name)
            if entry is not None:
                if held:
                    await self.cache.release(key, self.owner)
                return ImageResult(entry.images, entry.version, stored_at=entry.created, memo=entry.meta)
        try:
            outcome = await self._admitted_call(t)
            if not isinstance(outcome, str) and self.cache is not None:
                await outcome.pixels()  # a hosted result arrives encoded: decoded off the loop
                write = self._store(key, model, outcome, t.request, plan)
            return outcome
        finally:
            if held and self.cache is not None:
                self.cache.release_after(write, key, self.owner)

    def _store(
        self, key: CacheKey, model: Model, result: ImageResult, request: ImageRequest, plan: CachePlan
    ) -> asyncio.Task[None] | None:
        """Keep a generated result (in the background), under the version that made it."""
        assert self.cache is not None
        served_version = result.model_version or model.version or ""
        if not model.version:
            self._seen_version(model, served_version)
        if not plan.store:
            return None
        kept = {k: v for k, v in result.memo.items() if k == "upscaled_from"}  # a hit is tagged the same
        entry = Entry(
            result.images, model.name, served_version, key.route, request.seeds or (), self.wall_clock(), kept
        )
        return self.cache.save(replace(key, version=served_version), entry, plan.ttl_s)

    async def _wait_for_replica(self, model: Model, key: CacheKey, give_up_at: float) -> Entry | None:
        """Another replica is making ``key``: poll the store for its entry until it
        lands, the lease goes (that replica gave up: generate here), or ``give_up_at`` —
        the last moment this request can still make the image itself in its budget."""
        assert self.cache is not None
        self.cache.stats.lease_waits += 1
        bound = self.cache.store.wait_bound_s  # a waiting path: a busy store is not a miss here
        while self.clock() + LEASE_POLL_S < give_up_at:
            await asyncio.sleep(LEASE_POLL_S)
            found = await self.cache.lookup({model.name: key}, bound, bound)
            if model.name in found:
                return found[model.name]
            if not await self.cache.leased(key):
                break
        return None

    async def _timed(
        self,
        model: Model,
        request: ImageRequest,
        timeout_s: float,
        priority: int | None,
        progress: _Progress,
    ) -> ImageResult | str:
        progress.attempts += 1
        t0 = self.clock()
        if progress.first_attempt_at is None:
            progress.first_attempt_at = t0
        try:
            if self.tracer is None or not trace.get_current_span().is_recording():
                # tracing off, or this request's trace not sampled: an attempt span would not
                # be sampled either (same trace id, unsampled parent), so none is made; the
                # backend still gets the unsampled traceparent
                return await self._call(model, request, timeout_s, priority)
            attributes: dict[str, str | int | float] = {
                "router.attempt": progress.attempts,
                "router.model": model.name,
                "router.model.remote": model.remote_name,
                "router.model.version": model.version or "",
                "router.backend": model.backend,
                "router.timeout_ms": round(timeout_s * 1000, 1),
            }
            # started and made current by hand: the backend's traceparent must carry this
            # span's id, and start_as_current_span's context manager costs more per request
            span = self.tracer.start_span(f"attempt {model.name}", kind=SpanKind.CLIENT, attributes=attributes)
            token = otel_context.attach(trace.set_span_in_context(span))
            outcome: ImageResult | str = "cancelled"  # a hedge's loser
            try:
                outcome = await self._call(model, request, timeout_s, priority)
                return outcome
            except Exception as exc:  # a 4xx from the model: the client's error, no next tier
                outcome = str(getattr(exc, "code", "error"))
                raise
            finally:
                otel_context.detach(token)
                span.set_attribute("router.outcome", outcome if isinstance(outcome, str) else "ok")
                if isinstance(outcome, str):
                    span.set_status(Status(StatusCode.ERROR, outcome))
                span.end()
        finally:
            progress.backend_s += self.clock() - t0

    async def _hedged(
        self,
        table: RoutingTable,
        route: Route,
        choice: Choice,
        request: ImageRequest,
        priority: int | None,
        first: Attempt,
        later: list[str],
        progress: _Progress,
    ) -> Served | None:
        """Run ``first``; if it has not answered after the hedge delay, also run the next
        tier that can take a slot at once. The first success wins; the other is cancelled."""
        primary = table.models[first.model]
        delay = (route.hedge_after_ms or 0) / 1000 or self.p95_s(table)(primary.name)
        tasks = {asyncio.ensure_future(self._timed(primary, request, first.timeout_s, priority, progress)): primary}
        done, _ = await asyncio.wait(tasks, timeout=delay)
        hedged = False
        if not done:
            for name in later:
                backup = table.models[name]
                if self.available(backup) and self.gate(backup).try_acquire():
                    remaining = progress.deadline - self.clock()
                    task = asyncio.ensure_future(self._timed(backup, request, remaining, priority, progress))
                    tasks[task] = backup
                    hedged = True
                    break
        try:
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    model = tasks.pop(task)
                    outcome = task.result()
                    if isinstance(outcome, str):
                        progress.reasons.append((model.name, outcome))
                    else:
                        if hedged and self.metrics is not None:
                            self.metrics.hedges.labels(route.name, model.name).inc()
                        served = self._served(route, choice, model, outcome, progress, request.seeds)
                        return replace(served, hedged=hedged)
            return None
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _served(
        self,
        route: Route,
        choice: Choice,
        model: Model,
        result: ImageResult,
        progress: _Progress,
        seeds: tuple[int, ...] | None,
    ) -> Served:
        now = self.clock()
        passed_over = tuple(r for r in progress.reasons if r[0] != model.name)
        if passed_over:
            self._note_downgrades(route, passed_over, model.name)
        return Served(
            result=result,
            route=route,
            model=model,
            attempts=progress.attempts,
            fallback=passed_over,
            canary=choice.arm.canary and model.name == choice.arm.model,
            queue_s=(progress.first_attempt_at or now) - progress.start,
            backend_s=progress.backend_s,
            total_s=now - progress.start,
            cache=progress.cache,
            age_s=0.0 if result.stored_at is None else max(0.0, self.wall_clock() - result.stored_at),
            seeds=seeds,
        )

    def _note_downgrades(self, route: Route, reasons: tuple[tuple[str, str], ...], served_by: str | None) -> None:
        if self.metrics is not None:
            for model, why in reasons:
                self.metrics.downgrades.labels(route.name, model, why).inc()
        self.recent_downgrades.append(
            {
                "at": self.wall_clock(),
                "route": route.name,
                "served_by": served_by,
                "reasons": [list(r) for r in reasons],
            }
        )

    def _failure(self, route: Route, progress: _Progress) -> Exception:
        reasons = progress.reasons
        self._note_downgrades(route, tuple(reasons), None)
        detail = ", ".join(f"{m}:{why}" for m, why in reasons)
        if progress.attempts == 0 and any(why in OVERLOAD_REASONS for _, why in reasons):
            retry_after = max(1, math.ceil(progress.drain_s or 0.0))
            return Overloaded(
                f"shed: the work queued ahead would make every tier miss the {progress.budget_ms:g} ms budget "
                f"({detail})",
                retry_after_s=retry_after,
                route=route.name,
            )
        timed_out = any(why in ("timeout", "slow", "no_room") for _, why in reasons)
        if timed_out or progress.deadline - self.clock() <= 0:
            if self.metrics is not None:
                self.metrics.budget_exhausted.labels(route.name).inc()
            return BudgetExhausted(
                f"no tier could answer within the {progress.budget_ms:g} ms budget ({detail})",
                route=route.name,
                attempts=progress.attempts,
            )
        return AllTiersFailed(f"every tier failed ({detail})", route=route.name, attempts=progress.attempts)
