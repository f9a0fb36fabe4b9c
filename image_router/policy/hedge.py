"""When a call on one replica is overdue and worth sending to another (pure: the
forecasts and the time left are passed in).

A replica that froze (SIGSTOP, a hung GPU, a full network buffer) answers nothing and
fails no readiness check for a while; every request caught on it would wait out its
attempt before the budget walk could fall back. So a call is *overdue* once it has
taken :data:`FACTOR` times the slowest recent answer there (its queue played forward)
plus :data:`SLACK_S` — a tier of a few milliseconds is not hedged on jitter — and the
same call then goes to another replica, if that one can still answer before the
deadline: a hedge that cannot finish costs a second computation for nothing.
"""

from __future__ import annotations

from image_router.policy.forecast import Forecast

__all__ = ["FACTOR", "SLACK_S", "overdue_after", "worth_hedging"]

FACTOR = 2.0
SLACK_S = 0.05


def overdue_after(first: Forecast) -> float:
    """Seconds after which a call sent with forecast ``first`` is overdue."""
    return FACTOR * first.ceiling_s + SLACK_S


def worth_hedging(other: Forecast, left_s: float) -> bool:
    """Whether a call sent now to a replica with forecast ``other`` is expected to
    answer within the ``left_s`` seconds the attempt has left."""
    return other.expected_s < left_s
