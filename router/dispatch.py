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
from router.config.table import Model, Route, RoutingTable
from router.errors import AllTiersFailed, BackendError, BackendRejected, BackendTimeout, BudgetExhausted, Overloaded
from router.policy.budget import OVERLOAD_REASONS, Attempt, chain_for, plan_attempt
from router.policy.forecast import Forecast
from router.policy.split import Choice
from router.stats import LatencyStats
from router.telemetry import Metrics, Tracing

__all__ = ["Dispatcher", "Served"]

log = logging.getLogger("router.dispatch")
DEFAULT_PRIORITY = 2


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
    attempts: int = 0
    backend_s: float = 0.0
    first_attempt_at: float | None = None
    drain_s: float | None = None  # when an overloaded tier should have room again

    def skip(self, skipped: tuple[tuple[str, str], ...], forecasts: dict[str, Forecast], remaining_s: float) -> None:
        """Note skipped tiers; for overloaded ones, how long until their queue drains
        enough for this budget (the ``Retry-After`` of a shed request)."""
        self.reasons.extend(skipped)
        for name, why in skipped:
            if why in OVERLOAD_REASONS and name in forecasts:
                wait = max(0.0, forecasts[name].expected_s - remaining_s)
                self.drain_s = wait if self.drain_s is None else min(self.drain_s, wait)


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

    def forecast(self, model: Model) -> Forecast | None:
        """The backend's forecast for ``model``, behind this gateway's own admission
        queue when the model's gate is full (``None``: no usable endpoint)."""
        gate = self.gate(model)
        full = gate.limit is not None and (gate.inflight >= gate.limit or gate.queued > 0)
        return self.pool.get(model.backend).forecast(model, gate.queued + 1 if full else 0)

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
        try:
            async with asyncio.timeout(timeout_s):
                result = await self.pool.get(model.backend).generate(model, request, timeout_s, priority)
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
        if not attempt.last or not gate.can_queue():
            return "full"
        floor = attempt.forecast.service_floor_s if attempt.forecast is not None else 0.0
        try:
            async with asyncio.timeout(max(0.0, progress.deadline - self.clock() - floor)):
                await gate.acquire(priority)
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
    ) -> Served:
        start = self.clock() if started is None else started
        progress = _Progress(start, start + route.budget_ms / 1000)
        chain = list(chain_for(choice.arm.model, route.fallback))
        hedge = route.hedge_after_ms is not None or route.hedge_p95
        while chain:
            remaining = progress.deadline - self.clock()
            known: dict[str, Forecast] = {}
            for name in list(chain):
                forecast = self.forecast(table.models[name])
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
            refused = await self._admit(model, priority or DEFAULT_PRIORITY, attempt, progress)
            if refused is not None:
                progress.skip(((model.name, refused),), known, remaining)
                continue
            later = [m for m in chain if known[m].floor_s <= remaining]
            if hedge and later:
                served = await self._hedged(table, route, choice, request, priority, attempt, later, progress)
                if served is not None:
                    return served
                chain = [m for m in chain if m not in {r[0] for r in progress.reasons}]
                continue
            timeout = min(attempt.timeout_s, progress.deadline - self.clock())  # after any queueing
            outcome = await self._timed(model, request, timeout, priority, progress)
            if not isinstance(outcome, str):
                return self._served(route, choice, model, outcome, progress)
            progress.reasons.append((model.name, outcome))
        raise self._failure(route, progress)

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
                        return replace(self._served(route, choice, model, outcome, progress), hedged=hedged)
            return None
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _served(self, route: Route, choice: Choice, model: Model, result: ImageResult, progress: _Progress) -> Served:
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
                f"shed: the work queued ahead would make every tier miss the {route.budget_ms:g} ms budget ({detail})",
                retry_after_s=retry_after,
                route=route.name,
            )
        timed_out = any(why in ("timeout", "slow", "no_room") for _, why in reasons)
        if timed_out or progress.deadline - self.clock() <= 0:
            if self.metrics is not None:
                self.metrics.budget_exhausted.labels(route.name).inc()
            return BudgetExhausted(
                f"no tier could answer within the {route.budget_ms:g} ms budget ({detail})",
                route=route.name,
                attempts=progress.attempts,
            )
        return AllTiersFailed(f"every tier failed ({detail})", route=route.name, attempts=progress.attempts)
