"""Filling the cache on idle capacity: background upgrades and pre-generation.

Both are jobs — "make this tier's image for this request and store it" — run one at a
time by one worker, at the lowest priority, and only when the tier is idle: nothing
ahead of a request in its forecast (nothing executing or queued at the backend, as
far as this gateway knows) and a free slot in its admission gate. A job whose image is
already stored is skipped, identical jobs are one (deduplicated by cache key), and the
queue is bounded: what does not fit is dropped and counted, never blocks a request.

* **Upgrade**: an answer served downgraded because the intended tier was too slow,
  busy or full (``slow``, ``busy``, ``full``, ``timeout``, ``queue_timeout``,
  ``no_room``) on a route with ``cache: {upgrade: true}`` queues the intended tier's
  image for the same request, so the next identical request gets the intended tier
  from the cache. Not for a seedless request on a ``seedless: fresh`` route: its seed
  was drawn at random, so no identical request can follow.
* **Pre-generation**: prompts an operator lists (``router pregen FILE``, ``POST
  /admin/pregenerate``) are queued for every arm of the route they match.

A job runs through the dispatcher like a request (lookup, coalescing, storing) on a
one-tier copy of its route with a generous budget. Triton cannot stop a running
generation, so a live request that arrives during a job waits for it: on a tier that
has seen live traffic in the last :data:`LIVE_WINDOW_S`, jobs are paced so that they
take at most ``background_share`` of its time (after a job of ``d`` seconds the tier is
left alone for ``d * (1 / share - 1)``); a tier nobody else uses is filled back to
back. Measured in ``bench/cache.py``: the share bounds how many live requests can meet
a job, hence how far their p95 can move.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from image_router.backends.base import ImageRequest
from image_router.config.table import Arm, Route, RoutingTable
from image_router.decide import background
from image_router.dispatch import Dispatcher
from image_router.errors import RouterError
from image_router.served import CachePlan

__all__ = ["UPGRADE_REASONS", "FillJob", "Filler"]

log = logging.getLogger("router.fill")
UPGRADE_REASONS = frozenset({"slow", "busy", "full", "timeout", "queue_timeout", "no_room"})
LOWEST_PRIORITY = 3
IDLE_POLL_S = 0.05
MIN_JOB_BUDGET_S = 30.0
LIVE_WINDOW_S = 10.0  # a tier with live traffic this recently is paced


@dataclass(frozen=True, slots=True)
class FillJob:
    kind: str  # "upgrade" | "pregen"
    route: Route
    model: str
    request: ImageRequest
    key: str


@dataclass
class FillCounts:
    queued: int = 0
    done: int = 0
    cached: int = 0  # already stored when its turn came
    failed: int = 0
    dropped: int = 0  # the queue was full
    duplicate: int = 0  # the same job was already waiting

    def as_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)


@dataclass
class Filler:
    dispatcher: Dispatcher
    table: Callable[[], RoutingTable]
    max_queue: int = 10_000
    counts: dict[str, FillCounts] = field(default_factory=lambda: {"upgrade": FillCounts(), "pregen": FillCounts()})
    _queue: deque[FillJob] = field(default_factory=deque)
    _waiting: set[str] = field(default_factory=set)
    _wake: asyncio.Event | None = None
    _worker: asyncio.Task[None] | None = None
    current: FillJob | None = None
    clock: Callable[[], float] = time.monotonic
    _live: dict[str, float] = field(default_factory=dict)  # model -> last live request
    _rest_until: dict[str, float] = field(default_factory=dict)  # model -> when a job may run again

    def note_live(self, *models: str) -> None:
        now = self.clock()
        for model in models:
            self._live[model] = now

    def pending(self) -> int:
        return len(self._queue)

    def submit(self, job: FillJob) -> bool:
        counts = self.counts[job.kind]
        if job.key in self._waiting:
            counts.duplicate += 1
            return False
        if len(self._queue) >= self.max_queue:
            counts.dropped += 1
            return False
        self._queue.append(job)
        self._waiting.add(job.key)
        counts.queued += 1
        self._start()
        return True

    def _start(self) -> None:
        if self._worker is None or self._worker.done():
            with contextlib.suppress(RuntimeError):  # no running loop: started by the next submit
                self._wake = asyncio.Event()
                self._worker = asyncio.get_running_loop().create_task(self._run())
        if self._wake is not None:
            self._wake.set()

    def _idle(self, job: FillJob) -> bool:
        model = self.table().models.get(job.model)
        if model is None:
            return True  # gone from the table: let the job fail fast
        if self.clock() < self._rest_until.get(job.model, 0.0):
            return False
        return self.dispatcher.idle(model)

    async def _run(self) -> None:
        while True:
            if not self._queue:
                assert self._wake is not None
                self._wake.clear()
                await self._wake.wait()
                continue
            job = self._queue[0]
            if not self._idle(job):
                await asyncio.sleep(IDLE_POLL_S)
                continue
            self._queue.popleft()
            self._waiting.discard(job.key)
            self.current = job
            started = self.clock()
            try:
                await self._one(job)
            finally:
                self.current = None
                self._pace(job.model, started)

    def _pace(self, model: str, started: float) -> None:
        now = self.clock()
        cache = self.table().cache
        share = cache.background_share if cache is not None else 1.0
        if share < 1.0 and now - self._live.get(model, -math.inf) < LIVE_WINDOW_S:
            self._rest_until[model] = now + (now - started) * (1 / share - 1)

    async def _one(self, job: FillJob) -> None:
        counts = self.counts[job.kind]
        table = self.table()
        if job.model not in table.models:  # a reload removed it since the job was queued
            counts.failed += 1
            log.info("%s of %s for route %s skipped: the model is gone", job.kind, job.model, job.route.name)
            return
        route = dataclasses.replace(
            job.route,
            arms=(Arm(job.model, 1.0),),
            fallback=(),
            budget_ms=max(job.route.budget_ms, MIN_JOB_BUDGET_S * 1000),
            hedge_after_ms=None,
            hedge_p95=False,
        )
        ttl = job.route.cache.ttl_s if job.route.cache else 3600.0
        plan = CachePlan(lookup=True, store=True, ttl_s=ttl)
        try:
            served = await self.dispatcher.serve(background(table, route, job.request, LOWEST_PRIORITY, plan))
        except RouterError as exc:
            counts.failed += 1
            log.info("%s of %s for route %s failed: %s", job.kind, job.model, job.route.name, exc.message)
            return
        except Exception:  # a bug here must not stop the worker
            counts.failed += 1
            log.exception("%s job failed", job.kind)
            return
        if served.stored:
            counts.cached += 1
        else:
            counts.done += 1

    def describe(self) -> dict[str, object]:
        return {
            "pending": len(self._queue),
            "running": None if self.current is None else {"kind": self.current.kind, "model": self.current.model,
                                                          "route": self.current.route.name},
            **{kind: c.as_dict() for kind, c in self.counts.items()},
        }  # fmt: skip

    async def aclose(self) -> None:
        if self._worker is not None:
            self._worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._worker
