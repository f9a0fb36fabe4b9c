"""One request's walk down its fallback chain, within its latency budget.

A :class:`Walk` is made per request and holds that request's state as its fields (the
decision, the deadline and tally, what is left of the chain, the cache's keys and
hits), so the replica-wide :class:`~image_router.dispatch.dispatcher.Dispatcher` holds none.
Each round: every remaining tier's forecast (a stored tier's is zero; a tier with no
usable endpoint is dropped as ``circuit_open``) → :func:`~image_router.policy.budget.plan_attempt`
→ :func:`~image_router.dispatch.steps.next_step` → one act: a stored hit, a flight, a hedged
pair or a single attempt. A failed act notes why and the next round plans again with
the time left; the walk ends in an :class:`Ending` the dispatcher records.

Guarantee: a walk ends no later than ``budget + one scheduling tick``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple, Protocol

from image_router.backends.base import ImageResult, request_units
from image_router.config.table import Model, RoutingTable
from image_router.decide import DEFAULT_PRIORITY, Decision
from image_router.dispatch import outcome
from image_router.dispatch.attempt import Attempts, Job
from image_router.dispatch.outcome import Answer, Downgrade, Progress
from image_router.dispatch.steps import Step, later_tiers, next_step
from image_router.dispatch.stored import Flight, Hold, Stored, StoredTiers
from image_router.errors import RouterError
from image_router.policy.budget import OVERLOAD_REASONS, Attempt, chain_for, plan_attempt
from image_router.policy.forecast import Forecast
from image_router.served import Served

__all__ = ["INSTANT", "Ending", "Replica", "Walk"]

INSTANT = Forecast(0.0, 0.0, 0.0, 0.0, 0.0, 0)  # a stored result: it answers at once


class Replica(Protocol):
    """What a walk uses of the replica it runs on (the dispatcher's shared state)."""

    clock: Callable[[], float]
    wall_clock: Callable[[], float]
    margin_s: float
    attempts: Attempts
    stored: StoredTiers

    def forecast(
        self, model: Model, priority: int | None = None, tenant: str | None = None, units: float = 1.0
    ) -> Forecast | None: ...

    def p95_s(self, table: RoutingTable) -> Callable[[str], float]: ...


class Ending(NamedTuple):
    """How a walk ended: an answer or the error to raise, and the downgrade to record."""

    served: Served | None
    error: RouterError | None
    downgrade: Downgrade | None


class Walk:
    """One request's walk: made by :meth:`Dispatcher.serve`, run once, then dropped."""

    __slots__ = ("chain", "decision", "hedge", "hits", "hold", "job", "keys", "progress", "replica")

    def __init__(self, replica: Replica, decision: Decision, hold: Hold | None = None) -> None:
        self.replica, self.decision, self.hold = replica, decision, hold
        route = decision.route
        start = replica.clock() if decision.started is None else decision.started
        budget = route.budget_ms / 1000
        if decision.budget_s is not None:  # the client's own deadline, when it is the shorter
            budget = max(0.0, min(budget, decision.budget_s))
        self.progress = Progress(start, start + budget, tenant=decision.tenant)
        self.job = Job(decision.request, decision.priority, self.progress)
        self.chain = list(chain_for(decision.choice.arm.model, route.fallback))
        self.hedge = route.hedge_after_ms is not None or route.hedge_p95
        self.keys: Mapping[str, object] = {}
        self.hits: Mapping[str, Stored] = {}

    async def run(self) -> Ending:
        d = self.decision
        if d.cache is not None:  # the cache's part: each tier's key, and the tiers already stored
            tiers = [d.table.models[name] for name in self.chain]
            found = await self.replica.stored.lookup_chain(d.route, tiers, d.request, d.cache, self.progress.deadline)
            if found is not None:
                self.progress.cache, self.keys, self.hits = found.x_cache, found.keys, found.hits
        while self.chain:
            remaining = self.progress.deadline - self.replica.clock()
            known = self._forecasts()
            plan = plan_attempt(self.chain, remaining, known.__getitem__, self.replica.margin_s)
            self.progress.skip(plan.skipped, known, remaining)
            if plan.attempt is None:
                break
            attempt = plan.attempt
            self.chain = self.chain[self.chain.index(attempt.model) + 1 :]
            later = later_tiers(self.chain, known, remaining) if self.hedge else []
            step = next_step(attempt.model, self.hits, self.keys, self.hedge, later)
            if step is Step.HIT:
                answer: Answer | None = self._hit(attempt.model)
            else:
                answer = await self._act(step, attempt, known, remaining, later)
            if answer is not None:
                served, downgrade = outcome.served(
                    d, answer, self.progress, self.replica.clock(), self.replica.wall_clock()
                )
                return Ending(served, None, downgrade)
        error, downgrade = outcome.failure(d.route.name, self.progress, self.replica.clock())
        return Ending(None, error, downgrade)

    def _forecasts(self) -> dict[str, Forecast]:
        """Each remaining tier's forecast; a tier with no usable endpoint leaves the chain."""
        known: dict[str, Forecast] = {}
        priority, tenant = self.decision.priority or DEFAULT_PRIORITY, self.progress.tenant
        for name in list(self.chain):
            if name in self.hits:
                known[name] = INSTANT
                continue
            model = self._model(name)
            forecast = self.replica.forecast(model, priority, tenant, request_units(model, self.decision.request))
            if forecast is None:
                self.chain.remove(name)
                self.progress.reasons.append((name, "circuit_open"))
            else:
                known[name] = forecast
        return known

    def _model(self, name: str) -> Model:
        return self.decision.table.models[name]

    async def _act(
        self, step: Step, attempt: Attempt, known: dict[str, Forecast], remaining: float, later: list[str]
    ) -> Answer | None:
        """Try the planned tier as ``step`` says (not a hit: that needs no await);
        ``None`` when it did not answer (why is noted)."""
        model = self._model(attempt.model)
        if step is Step.FLIGHT:
            return await self._flight(model, attempt, known, remaining)
        refused = await self.replica.attempts.admit(model, attempt, self.job)
        if refused is not None:
            self.progress.skip(((model.name, refused),), known, remaining)
            return None
        if step is Step.HEDGE:
            return await self._hedged(model, attempt, later)
        timeout = min(attempt.timeout_s, self.progress.deadline - self.replica.clock())  # after any queueing
        result = await self.replica.attempts.timed(model, timeout, self.job)
        return self._answered(model, result)

    async def _flight(
        self, model: Model, attempt: Attempt, known: dict[str, Forecast], remaining: float
    ) -> Answer | None:
        """The tier's image made once for every identical request (and stored)."""
        assert self.decision.cache is not None
        flight = Flight(
            model,
            self.decision.request,
            self.decision.cache,
            self.progress.deadline,
            attempt.forecast.service_s if attempt.forecast is not None else 0.0,
            self.replica.margin_s,
            lambda: self.replica.attempts.admitted(model, attempt, self.job),
            self.hold,
        )
        result, coalesced = await self.replica.stored.through_flight(self.keys[model.name], flight)
        if coalesced:
            self.progress.cache = "COALESCED"
        if isinstance(result, ImageResult):
            return Answer(model, result, self.decision.request.seeds)
        if result in OVERLOAD_REASONS:
            self.progress.skip(((model.name, result),), known, remaining)
        else:
            self.progress.reasons.append((model.name, result))
        return None

    async def _hedged(self, model: Model, attempt: Attempt, later: list[str]) -> Answer | None:
        """The tier and, if it is slow, a later one too; a hedge's answer is stored like a
        flight's. When both fail, neither is planned again."""
        d = self.decision
        delay = (d.route.hedge_after_ms or 0) / 1000 or self.replica.p95_s(d.table)(model.name)
        backups = [self._model(name) for name in later]
        answer = await self.replica.attempts.hedged(model, attempt.timeout_s, backups, delay, self.job)
        if answer is None:
            failed = {name for name, _ in self.progress.reasons}
            self.chain = [name for name in self.chain if name not in failed]
            return None
        if d.cache is not None and d.cache.store and answer.model.name in self.keys:
            key = self.keys[answer.model.name]
            self.replica.stored.keep(key, answer.model, answer.result, d.request, d.cache)
        return answer

    def _hit(self, name: str) -> Answer:
        self.progress.cache = "HIT"
        hit = self.hits[name]
        return Answer(self._model(name), hit.result, hit.seeds)

    def _answered(self, model: Model, result: ImageResult | str) -> Answer | None:
        if isinstance(result, str):
            self.progress.reasons.append((model.name, result))
            return None
        return Answer(model, result, self.decision.request.seeds)
