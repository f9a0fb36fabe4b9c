"""How one request's walk ended, as values (pure: no clock, no I/O, no metrics).

The walk keeps a :class:`Progress` — what it has done so far — and ends in one of
two ways: a tier answered (:func:`served`), or none could (:func:`failure`). Both
return the answer or the error *and* the downgrade record, rather than recording
it: the downgrade ring and the metrics outlive the request, so the dispatcher
records them, and these functions stay testable without a loop or a registry.

Which error a failure is decides what the client is told and what it should do:
nothing tried because queued work made every tier miss is load shedding (``429
overloaded`` with a ``Retry-After`` of when the queue should have drained), a
timeout or a spent budget is ``504 budget_exhausted``, anything else
``503 all_tiers_failed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

from image_router.backends.base import ImageResult
from image_router.config.table import Model
from image_router.decide import Decision
from image_router.errors import AllTiersFailed, BudgetExhausted, Overloaded, RouterError
from image_router.policy.budget import OVERLOAD_REASONS
from image_router.policy.forecast import Forecast
from image_router.served import Served

__all__ = ["TIMED_OUT", "Answer", "Downgrade", "Progress", "failure", "served"]

TIMED_OUT = frozenset({"timeout", "slow", "no_room"})  # reasons that mean the budget ran out


@dataclass
class Progress:
    """What one request has done so far (for its tags and its final error). Shared by
    the walk and its attempts; it holds no I/O, only the tally."""

    start: float
    deadline: float
    reasons: list[tuple[str, str]] = field(default_factory=list)
    tenant: str = ""  # whose request: the admission queue shares fairly between tenants
    attempts: int = 0
    backend_s: float = 0.0
    first_attempt_at: float | None = None
    drain_s: float | None = None  # when an overloaded tier should have room again
    cache: str | None = None  # X-Cache of the answer

    @property
    def budget_ms(self) -> float:
        return round((self.deadline - self.start) * 1000, 1)

    def skip(self, skipped: tuple[tuple[str, str], ...], forecasts: dict[str, Forecast], remaining_s: float) -> None:
        """Note skipped tiers; for overloaded ones, how long until their queue drains
        enough for this budget (the ``Retry-After`` of a shed request)."""
        self.reasons.extend(skipped)
        for name, why in skipped:
            if why in OVERLOAD_REASONS and name in forecasts:
                wait = max(0.0, forecasts[name].expected_s - remaining_s)
                self.drain_s = wait if self.drain_s is None else min(self.drain_s, wait)


class Answer(NamedTuple):
    """The tier that answered, with what: its result and the seeds the images were
    made with (a stored result's own)."""

    model: Model
    result: ImageResult
    seeds: tuple[int, ...] | None
    hedged: bool = False  # a hedge was sent (whichever of the pair won)


class Downgrade(NamedTuple):
    """Tiers passed over on one route and why (``served_by`` ``None``: nothing answered)."""

    route: str
    served_by: str | None
    reasons: tuple[tuple[str, str], ...]


def served(
    decision: Decision, answer: Answer, progress: Progress, now: float, wall_now: float
) -> tuple[Served, Downgrade | None]:
    """The answer, tagged, and the tiers passed over to reach it (``None``: none were).
    ``now`` is the request clock's, ``wall_now`` the wall clock's (a stored result's age)."""
    model, result = answer.model, answer.result
    passed_over = tuple(r for r in progress.reasons if r[0] != model.name)
    downgrade = Downgrade(decision.route.name, model.name, passed_over) if passed_over else None
    return Served(
        result=result,
        route=decision.route,
        model=model,
        attempts=progress.attempts,
        fallback=passed_over,
        canary=decision.choice.arm.canary and model.name == decision.choice.arm.model,
        queue_s=(progress.first_attempt_at or now) - progress.start,
        backend_s=progress.backend_s,
        total_s=now - progress.start,
        hedged=answer.hedged,
        cache=progress.cache,
        age_s=0.0 if result.stored_at is None else max(0.0, wall_now - result.stored_at),
        seeds=answer.seeds,
    ), downgrade


def failure(route: str, progress: Progress, now: float) -> tuple[RouterError, Downgrade]:
    """Why no tier answered, as the error the client gets, and the downgrade record."""
    reasons = progress.reasons
    downgrade = Downgrade(route, None, tuple(reasons))
    detail = ", ".join(f"{m}:{why}" for m, why in reasons)
    if progress.attempts == 0 and any(why in OVERLOAD_REASONS for _, why in reasons):
        retry_after = max(1, math.ceil(progress.drain_s or 0.0))
        return Overloaded(
            f"shed: the work queued ahead would make every tier miss the {progress.budget_ms:g} ms budget ({detail})",
            retry_after_s=retry_after,
            route=route,
        ), downgrade
    if any(why in TIMED_OUT for _, why in reasons) or progress.deadline - now <= 0:
        return BudgetExhausted(
            f"no tier could answer within the {progress.budget_ms:g} ms budget ({detail})",
            route=route,
            attempts=progress.attempts,
        ), downgrade
    return AllTiersFailed(f"every tier failed ({detail})", route=route, attempts=progress.attempts), downgrade
