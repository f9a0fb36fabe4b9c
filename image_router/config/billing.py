"""``billing:``, a model's ``price`` and a tenant's ``budget``, compiled into
:mod:`image_router.billing.spec` values, and the rules that span them: with a ``billing``
block, every model a route can serve has a price (Portkey counts an unpriced model as
$0 and LiteLLM bills a new model 0 until someone notices; here it is a config error);
a ``tokens`` price is a hosted tier's, and comes with the per-image price its answers
without ``usage`` are billed and its budget reservations are quoted at (the tokens are
known only after the call: alone, they would quote and bill 0).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from image_router.billing.spec import Billing, Budget, BudgetLimit, Price, PriceRow, TokenPrice
from image_router.config.schema import BillingSpec, BudgetSpec, PriceSpec, TenantSpec
from image_router.config.table import Route

__all__ = ["billing", "budget", "budget_of", "per_seconds", "price", "price_issues", "routable_models"]

_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def price(spec: PriceSpec | None) -> Price | None:
    if spec is None:
        return None
    rows = tuple(PriceRow(r.per_image, r.max_side, r.max_steps, r.size, r.quality) for r in spec.table or ())
    t = spec.tokens
    tokens = TokenPrice(t.input_text, t.input_image, t.output_image, t.output_text) if t is not None else None
    return Price(spec.gpus, spec.per_image, spec.per_compute_second, rows, tokens)


def price_issues(spec: PriceSpec | None, backend_kind: str) -> list[tuple[tuple[str, ...], str]]:
    """What is wrong with a model's ``price`` on a backend of ``backend_kind``, each with
    its path below ``price``."""
    t = spec.tokens if spec is not None else None
    if spec is None or t is None:
        return []
    where: tuple[str, ...] = ("price", "tokens")
    issues: list[tuple[tuple[str, ...], str]] = []
    if backend_kind != "openai":
        issues.append(
            (where, f"token prices are for hosted (type: openai) tiers; this model's backend is {backend_kind}")
        )
    if not (t.input_text or t.input_image or t.output_image or t.output_text):
        issues.append(
            (where, "give at least one token price above 0 (input_text, input_image, output_image, output_text)")
        )
    if not spec.per_image and not spec.table:
        issues.append(
            (where, "give per_image or a table too: answers without usage are billed, and budgets quoted, by it")
        )
    return issues


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


def budget_of(tenant: TenantSpec, defaults: BudgetSpec | None) -> BudgetSpec | None:
    """A tenant's budget: its own when it gives one (``budget: null`` says it has none),
    else ``tenants.budget_defaults`` — one whole budget, never merged field by field,
    so what a tenant wrote is all that applies to it."""
    return tenant.budget if "budget" in tenant.model_fields_set else defaults


def routable_models(routes: Iterable[Route]) -> list[str]:
    """Every model a route can serve (its arms and fallbacks), in the order first named."""
    names: dict[str, None] = {}
    for route in routes:
        for arm in route.arms:
            names[arm.model] = None
        for name in route.fallback:
            names[name] = None
    return list(names)
