"""Budget arithmetic: how long an attempt at a tier may take, or whether to skip it.

A request's deadline is fixed on arrival (now + the route's budget). Before each
attempt we know the time left and a live p95 latency for every remaining tier.

* A tier whose p95 exceeds the time left is skipped: it would most likely miss.
* Otherwise the attempt's timeout leaves room for the viable tiers after it to finish
  (the sum of their p95s, each plus a small dispatch margin), so a slow answer can
  still be replaced by a faster one in time — and the tier after it, planned by the
  same rule, still finds the room it was promised.
* If that leaves the tier less than its own p95, and a next tier exists, the tier is
  skipped in favour of one that fits; the last viable tier gets all the time left.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

__all__ = ["Attempt", "Plan", "chain_for", "plan_attempt"]


@dataclass(frozen=True, slots=True)
class Attempt:
    model: str
    timeout_s: float


@dataclass(frozen=True, slots=True)
class Plan:
    """The next attempt (or ``None``) and the tiers skipped to reach it, with reasons."""

    attempt: Attempt | None
    skipped: tuple[tuple[str, str], ...] = ()


def chain_for(primary: str, fallback: Sequence[str]) -> tuple[str, ...]:
    """The primary then the fallback chain, without repeats."""
    return tuple(dict.fromkeys([primary, *fallback]))


def plan_attempt(
    chain: Sequence[str], remaining_s: float, p95_s: Callable[[str], float], margin_s: float = 0.0
) -> Plan:
    """Choose the first tier of ``chain`` that can answer within ``remaining_s``.

    ``margin_s`` is added to the reserve kept for the next tier: the gateway's own
    time between giving up on one attempt and starting the next.
    """
    skipped: list[tuple[str, str]] = []
    viable = [m for m in chain if p95_s(m) <= remaining_s]
    for m in chain:
        if m not in viable:
            skipped.append((m, "slow"))
    for i, model in enumerate(viable):
        following = viable[i + 1 :]
        reserve = sum(p95_s(m) + margin_s for m in following)
        timeout = remaining_s - reserve
        if timeout >= p95_s(model):
            return Plan(Attempt(model, timeout), tuple(skipped))
        if not following:
            return Plan(Attempt(model, remaining_s), tuple(skipped))
        skipped.append((model, "no_room"))
    return Plan(None, tuple(skipped))
