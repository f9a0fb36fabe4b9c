"""``billing:``, a model's ``price`` and a tenant's ``budget``, compiled into
:mod:`router.billing.spec` values, and the one rule that spans them: with a ``billing``
block, every model a route can serve has a price (Portkey counts an unpriced model as
$0 and LiteLLM bills a new model 0 until someone notices; here it is a config error).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from router.billing.spec import Billing, Budget, BudgetLimit, Price, PriceRow
from router.config.schema import BillingSpec, BudgetSpec, PriceSpec
from router.config.table import Route

__all__ = ["billing", "budget", "per_seconds", "price", "routable_models"]

_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def price(spec: PriceSpec | None) -> Price | None:
    if spec is None:
        return None
    rows = tuple(PriceRow(r.per_image, r.max_side, r.max_steps, r.size, r.quality) for r in spec.table or ())
    return Price(spec.gpus, spec.per_image, spec.per_compute_second, rows)


def billing(spec: BillingSpec | None) -> Billing | None:
    if spec is None:
        return None
    return Billing(
        spec.currency,
        spec.gpu_hour_price,
        spec.overhead_factor,
        spec.cache_hit_price,
        spec.usage_in_response,
        spec.quote_margin,
    )


def per_seconds(per: str) -> str:
    """``day``/``week``/``month`` as they are; a duration (``30s``, ``1h``, ``7d``) as
    seconds (``"3600s"``), so the window arithmetic reads one unit."""
    match = re.fullmatch(r"([0-9]+)([smhd])", per)
    return per if match is None else f"{int(match[1]) * _UNIT_S[match[2]]}s"


def budget(spec: BudgetSpec | None) -> Budget | None:
    if spec is None:
        return None
    limits = tuple(BudgetLimit(per_seconds(lim.per), lim.amount) for lim in spec.limits)
    return Budget(limits, spec.warn_at, spec.downgrade_at, spec.on_exhausted, tuple(spec.downgrade_to), spec.fail)


def routable_models(routes: Iterable[Route]) -> list[str]:
    """Every model a route can serve (its arms and fallbacks), in the order first named."""
    names: dict[str, None] = {}
    for route in routes:
        for arm in route.arms:
            names[arm.model] = None
        for name in route.fallback:
            names[name] = None
    return list(names)
