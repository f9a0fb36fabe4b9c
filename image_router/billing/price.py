"""What images cost, as pure arithmetic in integer micro-units (no clock, no I/O).

Prices are the operator's floats; a request's cost is turned into micro-units once
(each part rounded once, the total their sum), so the figure in an answer, in the
ledger and in a replica's counters is the same integer, and sums of many requests are
exact. The rules (docs/billing.md):

- an image made by a metered tier: ``per_image + compute_s x rate x overhead_factor``,
  ``rate`` = ``per_compute_second`` if given, else ``gpus x gpu_hour_price / 3600``;
- a tier with a ``table``: the first row whose ``max_side`` (the longer side served),
  ``max_steps``, ``size`` and ``quality`` match (a field the request does not tell —
  a tier's default steps — is taken to match: the default is within any row written
  for it); compute is still measured, never priced;
- a hosted tier with a ``tokens`` price whose upstream reported its token ``usage``:
  the tokens at their prices, instead of the per-image price (:mod:`image_router.billing.tokens`);
- an image from the result store: ``cache_hit_price``, and 0 compute — the request that
  made it paid for the compute.
"""

from __future__ import annotations

from typing import NamedTuple

from image_router.billing.spec import MICROS, Billing, Price, PriceRow
from image_router.billing.tokens import Tokens, token_amount

__all__ = ["Cost", "Shape", "cost", "micros", "quote", "rate_per_s", "row_for"]


class Shape(NamedTuple):
    """What was served, as prices are keyed: the longer side, the steps (None: the
    tier's default), the size and quality the client asked for (None: not said)."""

    side: int | None = None
    steps: int | None = None
    size: str | None = None
    quality: str | None = None


class Cost(NamedTuple):
    """One request's charge in micro-units, by part; ``total`` is their sum."""

    compute: int = 0
    per_image: int = 0
    cache_hits: int = 0
    tokens: int = 0  # a hosted tier priced by its upstream's tokens

    @property
    def total(self) -> int:
        return self.compute + self.per_image + self.cache_hits + self.tokens


def micros(amount: float) -> int:
    """An amount of the currency in micro-units, rounded half away from zero."""
    scaled = amount * MICROS
    return int(scaled + 0.5) if scaled >= 0 else -int(-scaled + 0.5)


def rate_per_s(price: Price, billing: Billing) -> float:
    """The price of one compute-second of the tier, overhead included."""
    base = price.per_compute_second
    if base is None:
        base = price.gpus * billing.gpu_hour_price / 3600
    return base * billing.overhead_factor


def _matches(row: PriceRow, shape: Shape) -> bool:
    if row.max_side is not None and shape.side is not None and shape.side > row.max_side:
        return False
    if row.max_steps is not None and shape.steps is not None and shape.steps > row.max_steps:
        return False
    if row.size is not None and shape.size != row.size:
        return False
    return row.quality is None or shape.quality == row.quality


def row_for(price: Price, shape: Shape) -> PriceRow | None:
    """The first table row that matches (``None``: no table, or no row matches)."""
    return next((row for row in price.table if _matches(row, shape)), None)


def cost(
    billing: Billing,
    price: Price,
    images: int,
    compute_s: float,
    shape: Shape,
    cached: bool,
    tokens: Tokens | None = None,
) -> Cost:
    """What ``images`` images served with ``compute_s`` seconds of compute cost.
    ``cached``: they came from the result store (``compute_s`` is then ignored);
    ``tokens``: the upstream's token counts (priced by them when the tier has a
    ``tokens`` price)."""
    if cached:
        return Cost(cache_hits=micros(billing.cache_hit_price * images))
    if price.tokens is not None and tokens is not None:
        return Cost(tokens=micros(token_amount(price.tokens, tokens)))
    if price.table:
        row = row_for(price, shape)
        per_image = row.per_image if row is not None else price.per_image
        return Cost(per_image=micros(per_image * images))
    return Cost(compute=micros(compute_s * rate_per_s(price, billing)), per_image=micros(price.per_image * images))


def quote(billing: Billing, price: Price, images: int, est_compute_s: float, shape: Shape, cached: bool) -> int:
    """What to reserve before running (micro-units): the cost the estimate gives, times
    ``quote_margin`` so a request a little slower than its estimate stays covered."""
    expected = cost(billing, price, images, est_compute_s, shape, cached).total
    return micros(expected * billing.quote_margin / MICROS)
