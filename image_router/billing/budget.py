"""Spend budgets as pure arithmetic: window keys, quotes, and what a store reply means.

A window is named by its period's start, so a new day is a new key and nothing is
ever reset in place (LiteLLM's reset overwriting concurrent spend, #34733): ``day``
(``b:{t}:day:20261206``), ``week`` (ISO, from Monday: ``b:{t}:week:20261130``),
``month`` (``b:{t}:month:202612``), all UTC, or a duration of ``N`` seconds aligned to the
epoch (``b:{t}:d3600s:492840``). A key lives a week past its period, then expires.

The quote of a tier, reserved before it runs, is its price at the estimated compute
(the model's ``latency_hint_ms`` per image) times ``quote_margin``; the store reserves
``max(quote[i:])`` for the first affordable tier ``i`` so whichever later tier the
latency walk ends on is covered (image_router/state/spend.py).

What the reservation's reply says of the windows — the share of the fullest one already
spent or held by other requests (:func:`used_share`) — is what ``warn_at`` and
``downgrade_at`` are compared with (:func:`image_router.decide.budget_rules`).
"""

from __future__ import annotations

import calendar
import datetime as dt
from typing import NamedTuple

from image_router.billing.price import Shape, quote
from image_router.billing.spec import MICROS, Billing, Budget, BudgetLimit, Price
from image_router.config.table import Model

__all__ = [
    "KEEP_S",
    "Window",
    "hit_quote",
    "quotes",
    "refusal",
    "refused_state",
    "standing",
    "used_share",
    "window",
    "windows",
]

KEEP_S = 7 * 86400  # a window's key outlives its period by this much


class Window(NamedTuple):
    key: str
    limit: int  # micro-units
    resets_at: float  # wall time the period ends
    ttl_s: int  # of the key, from now
    per: str


def window(tenant: str, limit: BudgetLimit, wall: float) -> Window:
    """The key and end of the period ``wall`` falls in."""
    now = dt.datetime.fromtimestamp(wall, dt.UTC)
    if limit.per == "day":
        start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        name, end = f"day:{start:%Y%m%d}", start + dt.timedelta(days=1)
    elif limit.per == "week":
        start = (now - dt.timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
        name, end = f"week:{start:%Y%m%d}", start + dt.timedelta(days=7)
    elif limit.per == "month":
        start = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        days = calendar.monthrange(start.year, start.month)[1]
        name, end = f"month:{start:%Y%m}", start + dt.timedelta(days=days)
    else:  # "<n>s"
        seconds = int(limit.per[:-1])
        slot = int(wall // seconds)
        ends = (slot + 1) * seconds
        return Window(
            f"b:{tenant}:d{seconds}s:{slot}", round(limit.amount * MICROS), ends, int(ends - wall) + KEEP_S, limit.per
        )
    stop = end.timestamp()
    return Window(f"b:{tenant}:{name}", round(limit.amount * MICROS), stop, int(stop - wall) + KEEP_S, limit.per)


def windows(tenant: str, budget: Budget, wall: float) -> list[Window]:
    return [window(tenant, limit, wall) for limit in budget.limits]


def quotes(billing: Billing, chain: list[Model], images: int, steps: int | None) -> list[int]:
    """Each tier's quote in micro-units (a tier without a price quotes 0: compile refuses
    that when billing is on)."""
    out = []
    for model in chain:
        if model.price is None:
            out.append(0)
            continue
        estimate = model.latency_hint_ms / 1000 * images
        out.append(quote(billing, model.price, images, estimate, Shape(model.native_side, steps), False))
    return out


def hit_quote(billing: Billing, images: int) -> int:
    """What ``images`` images from the result store are reserved at: the hit price x
    ``quote_margin`` (0 when hits are free)."""
    return quote(billing, Price(), images, 0.0, Shape(), True)


def used_share(wins: list[Window], available: list[int], held: int) -> float:
    """The largest share of a window spent or held by other requests when this one
    arrived: ``available`` is each window's after this request's ``held`` amount was
    reserved. A window with no amount counts as full."""
    shares = [1.0 if w.limit <= 0 else (w.limit - a - held) / w.limit for w, a in zip(wins, available, strict=True)]
    return max(shares, default=0.0)


def refused_state(budget: Budget, tier: int, used: float) -> str:
    """What a budget that serves nothing says (``X-Router-Budget``, the decision counted):
    ``brownout`` when the windows could still pay for a tier (``tier`` >= 0) but the
    brownout (``downgrade_at``) allows none of the chain's — the tenant has money left,
    and saying ``exhausted`` would send an operator looking for a spent budget; else
    ``exhausted``."""
    if tier >= 0 and budget.downgrade_at is not None and used >= budget.downgrade_at:
        return "brownout"
    return "exhausted"


def refusal(tenant: str, wins: list[Window], available: list[int], brownout: float | None = None) -> tuple[str, Window]:
    """The message of an ``insufficient_quota`` and the window that binds (least left);
    ``brownout``: the ``downgrade_at`` share that refused it while money was left."""
    binding = min(range(len(wins)), key=lambda k: available[k])
    win = wins[binding]
    left = max(0, available[binding]) / MICROS
    stamp = dt.datetime.fromtimestamp(win.resets_at, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if brownout is not None:
        message = (
            f"tenant {tenant!r} is in a brownout (past {brownout:.0%} of its {win.per} budget of "
            f"{win.limit / MICROS:.2f}, {left:.6f} left) and none of this request's tiers is one its "
            f"downgrade_to allows; it resets at {stamp}"
        )
        return message, win
    message = (
        f"tenant {tenant!r} cannot afford this request within its {win.per} budget of "
        f"{win.limit / MICROS:.2f} ({left:.6f} left); it resets at {stamp}"
    )
    return message, win


def standing(budget: Budget, limit: int, spent: int, reserved: int) -> str:
    """How full one window is, by the rules' names (what an operator reads beside it):
    ``exhausted`` with nothing left, ``brownout`` from ``downgrade_at``, ``warn`` from
    ``warn_at`` (shares of what is spent or held), else ``ok``."""
    if limit - spent - reserved <= 0:
        return "exhausted"
    share = (spent + reserved) / limit
    if budget.downgrade_at is not None and share >= budget.downgrade_at:
        return "brownout"
    if budget.warn_at is not None and share >= budget.warn_at:
        return "warn"
    return "ok"
