"""A read-only account of what the table would do with a request (CLI and admin API)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import Any

from router.config.table import Route, RoutingTable
from router.policy.budget import chain_for
from router.policy.match import RequestFacts, select_route
from router.policy.split import choose_arm, sticky_key

__all__ = ["explain"]


def explain(
    table: RoutingTable,
    facts: RequestFacts,
    forecast_s: Callable[[str], float | None],
    query: Mapping[str, str] | None = None,
    serving: Callable[[Route], Route] | None = None,
) -> dict[str, Any]:
    """Matched route, candidate models with weights, the sticky choice and the chain,
    with each tier's forecast: seconds until a request sent now would finish there
    (``None``: no usable endpoint). ``serving`` gives the route as served now (a
    rollout's live weights instead of the file's)."""
    route = select_route(table, facts)
    if serving is not None:
        route = serving(route)
    key = sticky_key(route, facts.headers, query or {}, facts.fields)
    choice = choose_arm(route, key, random.Random(0), facts.headers.get("x-canary"))
    total = sum(a.weight for a in route.arms) or 1.0
    return {
        "route": route.name,
        "budget_ms": route.budget_ms,
        "candidates": [
            {
                "model": a.model,
                "weight": a.weight,
                "share": round(a.weight / total, 4),
                "canary": a.canary,
                "rollout": a.rollout is not None,
            }
            for a in route.arms
        ],
        "sticky": None if route.sticky is None else ":".join(route.sticky),
        "chosen": choice.arm.model if key is not None or len(route.arms) == 1 else None,
        "fallback": list(route.fallback),
        "chain_forecast_ms": {m: _ms(forecast_s(m)) for m in chain_for(choice.arm.model, route.fallback)},
        "config_digest": table.digest,
    }


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def hint_forecast(table: RoutingTable) -> Callable[[str], float | None]:
    """Forecasts from the operator's hints alone (no live traffic, e.g. in the CLI)."""
    return lambda name: table.models[name].latency_hint_ms / 1000
