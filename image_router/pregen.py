"""Pre-generation: an operator's list of prompts made on idle capacity, for every arm of
the route each selects, so the first real request for them is a hit.

It decides with the same functions serving uses (:mod:`image_router.decide`): the route, its
limits and the seeds a request would get, so a pre-generated image is exactly the one a
later identical request looks up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from image_router.backends.base import ImageRequest, consecutive_seeds
from image_router.decide import cache_plan, on_route
from image_router.fill import FillJob
from image_router.policy.match import RequestFacts, select_route

if TYPE_CHECKING:
    from image_router.gateway import Gateway

__all__ = ["pregenerate"]


def pregenerate(gateway: Gateway, items: list[dict[str, Any]]) -> dict[str, int]:
    """Queue each item (``prompt``, optional ``route``, ``intent``, ``seed``, ``steps``,
    ``width``, ``height``, ``n``) for every arm of the route it selects. Items on routes
    without a cache, or with ``seedless: fresh`` and no seed (they would never be looked
    up), are counted and skipped; ``pending`` is how many jobs now wait for idle capacity."""
    table = gateway.table
    counts = {"queued": 0, "duplicate": 0, "not_cached": 0, "fresh": 0}
    for item in items:
        facts = RequestFacts.of(item["prompt"], item.get("intent"), item.get("route"), {})
        route = select_route(table, facts)
        if route.cache is None or gateway.cache is None:
            counts["not_cached"] += 1
            continue
        n = int(item.get("n") or 1)
        seed = item.get("seed")
        request = ImageRequest(
            (item["prompt"],) * n,
            None if seed is None else consecutive_seeds(int(seed), n),
            item.get("steps"),
            item.get("width"),
            item.get("height"),
        )
        if request.seeds is None and route.cache.seedless == "fresh":
            counts["fresh"] += 1
            continue
        request = on_route(route, request)  # as a live request: limits, and the upscale mark
        plan, request = cache_plan(route, request, None, gateway.draw)  # the shared space: public routes
        for arm in gateway.rollouts.route_for(route).arms:
            if arm.weight <= 0:
                continue
            key = gateway.dispatcher.cache_key(route, table.models[arm.model], request, plan.scope)
            queued = gateway.fill.submit(FillJob("pregen", route, arm.model, request, str(key)))
            counts["queued" if queued else "duplicate"] += 1
    counts["pending"] = gateway.fill.pending()
    return counts
