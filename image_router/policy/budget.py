"""Budget arithmetic: which tier to try next, with what timeout, or why none.

A request's deadline is fixed on arrival (now + the route's budget). Before each
attempt every remaining tier has a :class:`~image_router.policy.forecast.Forecast`: when a
request sent now would finish on its best endpoint, from the live queue there —
``expected`` at the typical service time, ``floor`` at the fastest recent one.

* A tier whose *floor* exceeds the time left is skipped: even at its best it would
  almost surely miss. The reason says why: ``slow`` when its service time alone does
  not fit (it would miss on an idle endpoint), ``busy`` when the work queued ahead of
  it does (that is overload, and refusing it is load shedding, not a budget failure).
* Otherwise a tier with tiers after it is tried when its *expected* finish fits the
  time left minus a reserve for those later tiers (each one's finish at its slowest
  recent service time, plus a small dispatch margin), so a late answer can still be
  replaced in time — and the tier after it, planned by the same rule, finds the room
  it was promised even when the machine is loaded. (Reserving only the typical time
  let a fallback to draft start with 60 ms left during a burst, and miss.) If it does
  not fit, it is skipped (``slow``/``busy`` when it does not fit the whole time left,
  ``no_room`` when only the reserve is in the way) — unless its estimate is stale (no
  sample for a while, idle): then it is tried as a *probe* with the time the later
  tiers leave it, so a tier skipped on a bad estimate comes back within seconds
  instead of never producing the fresh sample that would clear it.
* The last tier that is not a sure miss gets all the time left: it is refused only
  when it would almost surely miss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from image_router.policy.forecast import Forecast

__all__ = ["OVERLOAD_REASONS", "Attempt", "Plan", "chain_for", "plan_attempt"]

# A stale estimate is the one not to trust: a probe gets the time the later tiers leave
# it, if that is at least this share of its fastest recent service time.
_PROBE_SHARE = 0.5
# Skip reasons that mean "too much work queued", not "too slow for this budget".
OVERLOAD_REASONS = frozenset({"busy", "full", "queue_timeout"})


@dataclass(frozen=True, slots=True)
class Attempt:
    model: str
    timeout_s: float
    last: bool = False  # no viable tier after it: it may wait in its admission queue
    probe: bool = False  # tried on a stale estimate that says it would not fit
    forecast: Forecast | None = None


@dataclass(frozen=True, slots=True)
class Plan:
    """The next attempt (or ``None``) and the tiers skipped to reach it, with reasons."""

    attempt: Attempt | None
    skipped: tuple[tuple[str, str], ...] = ()


def chain_for(primary: str, fallback: Sequence[str]) -> tuple[str, ...]:
    """The primary then the fallback chain, without repeats."""
    return tuple(dict.fromkeys([primary, *fallback]))


def _miss_reason(forecast: Forecast, available_s: float) -> str:
    return "slow" if forecast.service_floor_s > available_s else "busy"


def plan_attempt(
    chain: Sequence[str],
    remaining_s: float,
    forecast: Callable[[str], Forecast],
    margin_s: float = 0.0,
) -> Plan:
    """Choose the first tier of ``chain`` that can answer within ``remaining_s``.

    ``margin_s`` is added to the reserve kept for each later tier: the gateway's own
    time between giving up on one attempt and starting the next.
    """
    skipped: list[tuple[str, str]] = []
    viable: list[tuple[str, Forecast]] = []
    for name in chain:
        f = forecast(name)
        if f.floor_s > remaining_s:
            skipped.append((name, _miss_reason(f, remaining_s)))
        else:
            viable.append((name, f))
    for i, (name, f) in enumerate(viable):
        following = viable[i + 1 :]
        if not following:
            return Plan(Attempt(name, remaining_s, last=True, forecast=f), tuple(skipped))
        timeout = remaining_s - sum(g.ceiling_s + margin_s for _, g in following)
        if timeout >= f.expected_s:
            return Plan(Attempt(name, timeout, forecast=f), tuple(skipped))
        if f.probe and timeout >= _PROBE_SHARE * f.service_floor_s:
            return Plan(Attempt(name, timeout, probe=True, forecast=f), tuple(skipped))
        if f.expected_s > remaining_s:
            skipped.append((name, "slow" if f.service_s > remaining_s else "busy"))
        else:
            skipped.append((name, "no_room"))
    return Plan(None, tuple(skipped))
