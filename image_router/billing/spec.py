"""The compiled ``billing:`` block, a model's ``price`` and a tenant's ``budget``, as
immutable values (what :mod:`image_router.config.compile` makes of routes.yaml).

Money is kept in **micro-units** of the currency (integers) wherever it is added up, so
sums over millions of images are exact and the same on every replica; the floats here
are the operator's prices as written, turned into micro-units once per request by
:mod:`image_router.billing.price`. This module imports nothing of the gateway: the routing
table holds these values, and the pure billing functions read them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MICROS", "Billing", "Budget", "BudgetLimit", "Price", "PriceRow", "TokenPrice"]

MICROS = 1_000_000  # micro-units per currency unit


@dataclass(frozen=True, slots=True)
class PriceRow:
    """One entry of a fixed price list; a field left out matches anything."""

    per_image: float
    max_side: int | None = None  # the longer side served, at most
    max_steps: int | None = None  # the steps run, at most
    size: str | None = None  # what the client asked ("1024x1024")
    quality: str | None = None


@dataclass(frozen=True, slots=True)
class TokenPrice:
    """A hosted tier's price per upstream token, by kind (OpenAI's GPT-image ``usage``:
    input text and image tokens, output image and text tokens)."""

    input_text: float = 0.0
    input_image: float = 0.0
    output_image: float = 0.0
    output_text: float = 0.0


@dataclass(frozen=True, slots=True)
class Price:
    """What one image of a model costs: metered (``per_image`` + compute-seconds at
    ``per_compute_second``, or at ``gpus`` x the GPU-hour price), or a fixed ``table``
    (first match wins; metered compute is still recorded). ``tokens``: a hosted tier's
    answer that reports the upstream's token ``usage`` is priced by it instead (the
    per-image price stays what an answer without ``usage`` costs, and what a budget
    reservation quotes: the tokens are known only after the call)."""

    gpus: float = 1.0
    per_image: float = 0.0
    per_compute_second: float | None = None
    table: tuple[PriceRow, ...] = ()
    tokens: TokenPrice | None = None


@dataclass(frozen=True, slots=True)
class Billing:
    currency: str = "USD"
    gpu_hour_price: float = 0.0
    overhead_factor: float = 1.0  # > 1 recovers idle GPU time in prices
    cache_hit_price: float = 0.0  # per image served from the result store
    usage_in_response: bool = True  # `usage`, X-Router-Usage, router_usage
    quote_margin: float = 1.25  # a budget reservation is the quote x this


@dataclass(frozen=True, slots=True)
class BudgetLimit:
    """One window: ``per`` is ``day``, ``week`` (ISO, from Monday), ``month``
    (calendar) — in UTC — or a duration in seconds aligned to the epoch."""

    per: str  # "day" | "week" | "month" | "<n>s"
    amount: float  # in the billing currency


@dataclass(frozen=True, slots=True)
class Budget:
    limits: tuple[BudgetLimit, ...]
    warn_at: float | None = None  # fraction of a window: the answer says `warn`
    downgrade_at: float | None = None  # fraction: only `downgrade_to` tiers above it
    on_exhausted: str = "reject"  # "reject" | "downgrade"
    downgrade_to: tuple[str, ...] = ()  # () : the route's fallback tiers
    fail: str = "open"  # the state store did not answer: "open" | "closed"
