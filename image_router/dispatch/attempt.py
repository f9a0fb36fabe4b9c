"""Attempts: the admission wait, one timed call, and the hedged pair.

An attempt is the only place the gateway waits on a backend, so it is where the
budget is enforced: Triton cannot stop a running request, so on timeout the call is
cancelled and its connection dropped. A failure is returned as a fallback reason (a
string) for the walk to move on with; only a model that rejects the input raises
(:class:`~image_router.errors.BackendRejected`): the input would be just as bad on the next
tier. Every answered call feeds ``stats`` (the status page, canary verdicts and
``hedge: {after: p95}``); the backend's lanes learn service times from the same call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import NamedTuple

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode, Tracer

from image_router.admission import AdmissionGate
from image_router.backends.base import ImageRequest, ImageResult
from image_router.backends.pool import BackendPool
from image_router.config.table import Model
from image_router.decide import DEFAULT_PRIORITY
from image_router.dispatch.outcome import Answer, Progress
from image_router.errors import BackendError, BackendRejected, BackendTimeout
from image_router.imaging import upscaled
from image_router.policy.budget import Attempt
from image_router.policy.size import fitted_size
from image_router.stats import LatencyStats

__all__ = ["Attempts", "Job"]

log = logging.getLogger("router.dispatch")


class Job(NamedTuple):
    """What every attempt of one request carries: the request, its admission level and
    the request's tally (attempts, time at backends, the deadline)."""

    request: ImageRequest
    priority: int | None
    progress: Progress


class Attempts:
    """Attempts on this replica's backends, behind its admission gates (``gate``)."""

    def __init__(
        self,
        pool: BackendPool,
        stats: LatencyStats,
        clock: Callable[[], float],
        gate: Callable[[Model], AdmissionGate],
        tracer: Tracer | None = None,
    ) -> None:
        self.pool, self.stats, self.clock, self.gate, self.tracer = pool, stats, clock, gate, tracer

    async def admit(self, model: Model, attempt: Attempt, job: Job) -> str | None:
        """Take an admission slot; ``None`` when admitted, else the reason to skip. Only
        the last tier waits, and only while its fastest service time still fits."""
        gate, progress = self.gate(model), job.progress
        priority = job.priority or DEFAULT_PRIORITY
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

    async def admitted(self, model: Model, attempt: Attempt, job: Job) -> ImageResult | str:
        """Take an admission slot (or the reason there is none), then make the call."""
        refused = await self.admit(model, attempt, job)
        if refused is not None:
            return refused
        timeout = min(attempt.timeout_s, job.progress.deadline - self.clock())
        return await self.timed(model, timeout, job)

    async def timed(self, model: Model, timeout_s: float, job: Job) -> ImageResult | str:
        """One call, counted in the request's tally, in an attempt span when traced."""
        progress = job.progress
        progress.attempts += 1
        t0 = self.clock()
        if progress.first_attempt_at is None:
            progress.first_attempt_at = t0
        try:
            if self.tracer is None or not trace.get_current_span().is_recording():
                # tracing off, or this request's trace not sampled: an attempt span would not
                # be sampled either (same trace id, unsampled parent), so none is made; the
                # backend still gets the unsampled traceparent
                return await self.call(model, job.request, timeout_s, job.priority)
            return await self._spanned(self.tracer, model, timeout_s, job)
        finally:
            progress.backend_s += self.clock() - t0

    async def _spanned(self, tracer: Tracer, model: Model, timeout_s: float, job: Job) -> ImageResult | str:
        attributes: dict[str, str | int | float] = {
            "router.attempt": job.progress.attempts,
            "router.model": model.name,
            "router.model.remote": model.remote_name,
            "router.model.version": model.version or "",
            "router.backend": model.backend,
            "router.timeout_ms": round(timeout_s * 1000, 1),
        }
        # started and made current by hand: the backend's traceparent must carry this
        # span's id, and start_as_current_span's context manager costs more per request
        span = tracer.start_span(f"attempt {model.name}", kind=SpanKind.CLIENT, attributes=attributes)
        token = otel_context.attach(trace.set_span_in_context(span))
        outcome: ImageResult | str = "cancelled"  # a hedge's loser
        try:
            outcome = await self.call(model, job.request, timeout_s, job.priority)
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

    async def call(
        self, model: Model, request: ImageRequest, timeout_s: float, priority: int | None
    ) -> ImageResult | str:
        """One call under its own timeout, the admission slot already held (and given
        back here): the result, or why it failed (a fallback reason). A rejected input
        is raised instead. A request marked for upscaling is made at the tier's native
        size, then upscaled to what was asked."""
        name = model.name
        t0 = self.clock()
        target = None
        if request.upscale and model.native_side and request.width and request.height:
            fitted = fitted_size(request.width, request.height, model.native_side)
            if fitted is not None:
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

    async def hedged(
        self, first: Model, timeout_s: float, backups: Sequence[Model], delay_s: float, job: Job
    ) -> Answer | None:
        """Run ``first`` (its slot already held); if it has not answered after
        ``delay_s``, also run the first of ``backups`` that can take a slot at once. The
        first success wins and the other is cancelled; failures go to the tally's reasons.

        The loser is cancelled saying ``"hedge"``, which the backend counts its time under
        (``router_compute_wasted_seconds_total{reason="hedge"}``); when the request itself
        is given up, both go for its reason. Never billed: only the answer's result is."""
        tasks = {asyncio.ensure_future(self.timed(first, timeout_s, job)): first}
        hedged = False
        why: str | None = "hedge"  # a task still running when the pair ends lost the race
        try:
            done, _ = await asyncio.wait(tasks, timeout=delay_s)
            if not done:
                for backup in backups:
                    if self.pool.get(backup.backend).available(backup) and self.gate(backup).try_acquire():
                        remaining = job.progress.deadline - self.clock()
                        tasks[asyncio.ensure_future(self.timed(backup, remaining, job))] = backup
                        hedged = True
                        break
            while tasks:
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    model = tasks.pop(task)
                    outcome = task.result()
                    if isinstance(outcome, str):
                        job.progress.reasons.append((model.name, outcome))
                    else:
                        return Answer(model, outcome, job.request.seeds, hedged)
            return None
        except asyncio.CancelledError as exc:  # the request given up (its client left): not a hedge
            why = exc.args[0] if exc.args and isinstance(exc.args[0], str) else None
            raise
        except BaseException:  # a failure ended the pair, not a hedge: the other call is simply given up
            why = None
            raise
        finally:
            for task in tasks:
                task.cancel(why)
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
