"""What a walk does with the tier its budget plan chose (pure: decided, not done).

:func:`~image_router.policy.budget.plan_attempt` says *which* tier to try and with what
timeout; this says *how*, so that the walk's loop only acts on a value (starlette's
``matches()`` before ``handle()``):

* ``HIT`` — its result is stored: it answers at once;
* ``FLIGHT`` — a cached route: made once however many ask at the same time (and,
  with a shared store, however many replicas), then stored;
* ``HEDGE`` — the route hedges and a later tier can still answer: try this one, and
  the next one too if this one is slow;
* ``SINGLE`` — one timed call.

A hedged route is not coalesced: a hedge races two tiers for the fastest answer,
which a flight of one tier cannot do.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from enum import Enum

from image_router.policy.budget import plan_attempt
from image_router.policy.forecast import Forecast

__all__ = ["Step", "later_tiers", "next_step"]


class Step(Enum):
    HIT = "hit"
    FLIGHT = "flight"
    HEDGE = "hedge"
    SINGLE = "single"


def later_tiers(chain: Sequence[str], forecasts: Mapping[str, Forecast], remaining_s: float) -> list[str]:
    """The tiers of ``chain`` (those after the one being tried) that can still answer in
    ``remaining_s``: the ones a hedge may go to. A tier alone in its chain is planned
    exactly when the budget policy would not call it a sure miss, so its own rule is
    asked rather than restated."""
    return [name for name in chain if plan_attempt((name,), remaining_s, forecasts.__getitem__).attempt is not None]


def next_step(tier: str, stored: Collection[str], keyed: Collection[str], hedge: bool, later: Sequence[str]) -> Step:
    """How to try ``tier``: ``stored`` are the tiers whose result is in the store,
    ``keyed`` those with a cache key (the route is cached and the request has seeds),
    ``hedge`` whether the route hedges and ``later`` :func:`later_tiers`."""
    if tier in stored:
        return Step.HIT
    hedging = hedge and bool(later)
    if tier in keyed and not hedging:
        return Step.FLIGHT
    return Step.HEDGE if hedging else Step.SINGLE
