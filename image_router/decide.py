"""What the data plane decides for one request: pure steps, in one order, over one table.

Every way in — each edge, the stream's previews, ``explain``, background work — calls
these functions, so no path can decide differently from another:

1. :func:`route_phase` — the tenant's steering rules (what of ``X-Canary``,
   ``X-Priority`` and ``X-Intent`` it may send), the route, the tenant's route
   permission, the route's limits, and the *effective* priority: the one asked for,
   else the route's, never above the tenant's ceiling.
2. (the gateway admits the tenant: its limits are reserved there, before any await)
3. :func:`arm_phase` — seeds and the cache plan, a rollout's live weights, the sticky
   key and the arm. Seeds are decided here only.
4. (the gateway reserves the tenant's spend budget in the state store) then
   :func:`budget_rules` — warn, brownout, exhaustion and stored tiers over that reply —
   and :func:`budget_phase`: the decision served, earlier tiers skipped as ``budget``.
5. :func:`previews` — the progressive previews of a stream, from the same decision.

Each is a function of (table, request value, facts, RNG, seed source) returning a value:
no clock, no I/O, no ``random`` module (the RNG and the seed source are injected), so
they are tested without a loop and ``explain`` says exactly what serving does.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any, NamedTuple

from image_router.ask import Ask
from image_router.backends.base import ImageRequest
from image_router.billing.spec import Budget
from image_router.cache.keys import derive_seeds
from image_router.config.table import Arm, Route, RoutingTable, Tenant
from image_router.errors import Forbidden, InvalidRequest
from image_router.policy.budget import chain_for
from image_router.policy.hints import FAST, FIELD, downgrades, downsized
from image_router.policy.match import RequestFacts, select_route
from image_router.policy.size import MAX_UPSCALED_SIDE, upscale_refusal
from image_router.policy.split import Choice, Rng, choose_arm, sticky_key
from image_router.served import CachePlan

__all__ = [
    "DEFAULT_PRIORITY",
    "Afforded",
    "Budgeted",
    "Decision",
    "Routed",
    "Serving",
    "arm_phase",
    "background",
    "budget_chain",
    "budget_phase",
    "budget_rules",
    "cache_plan",
    "cache_scope",
    "check_limits",
    "explain",
    "hint_forecast",
    "on_route",
    "previews",
    "route_phase",
    "steer",
]

DEFAULT_PRIORITY = 2  # the admission level of a request that names none (1 = highest, 3 = lowest)


SeedDraw = Callable[[int], tuple[int, ...]]  # n fresh random seeds
Serving = Callable[[Route], Route]  # a route as served now (a rollout's live weights)


class Routed(NamedTuple):
    """Step 1's value: where the request goes and what it may steer. (The request's
    values are named tuples: immutable, and built in a fraction of a frozen
    dataclass's time — three of those cost ~8 µs a request.)"""

    table: RoutingTable
    route: Route
    facts: RequestFacts  # after the tenant's steering rules
    request: ImageRequest  # within the route's limits, marked for upscaling where it upscales
    canary: str | None
    priority: int | None  # the effective admission level (None: the default)
    tenant: Tenant | None

    @property
    def images(self) -> int:
        return len(self.request.prompts)


class Decision(NamedTuple):
    """Everything the dispatcher's walk needs for one request, decided up front."""

    table: RoutingTable
    route: Route  # as served now: a rollout's live weights
    choice: Choice
    request: ImageRequest  # with its seeds, where they are decided by the gateway
    priority: int | None
    cache: CachePlan | None
    tenant: str = ""
    started: float | None = None
    budget_s: float | None = None  # the client's deadline, capping the route's budget
    rollout: bool = False  # the route is in a live rollout: its answer is counted

    @property
    def intended(self) -> str:
        """The model the arm chose (what a downgrade was a downgrade from)."""
        return self.choice.arm.model


def steer(
    tenant: Tenant, facts: RequestFacts, canary: str | None, priority: int | None
) -> tuple[RequestFacts, str | None, int | None]:
    """What a tenant may steer: ``X-Canary`` and ``X-Priority`` only when allowed
    (ignored otherwise), an ``X-Intent`` header only when allowed; and its sticky identity
    (the tenant, and the OpenAI ``user`` within it: users of two tenants never share a
    cohort by sharing a name). The priority ceiling is applied later, to the effective
    priority, in :func:`route_phase`."""
    if "x-canary" not in tenant.overrides:
        canary = None
    if "x-priority" not in tenant.overrides:
        priority = None
    if "x-intent" not in tenant.overrides and facts.intent and facts.intent == facts.headers.get("x-intent"):
        facts = replace(facts, intent=None, fields={**facts.fields, "intent": ""})
    user = facts.fields.get("user")
    identity = {"tenant": tenant.name, "user": f"{tenant.name}:{user}" if user else tenant.name}
    return replace(facts, fields={**facts.fields, **identity}), canary, priority


def route_phase(table: RoutingTable, ask: Ask) -> Routed:
    """Step 1: steering, route, permission, limits (then a constrained client's size
    capped where the route opts in: :func:`hinted`), effective priority. Raises
    :class:`Forbidden` (a route the tenant may not use) or :class:`InvalidRequest`."""
    facts, canary, priority, tenant = ask.facts, ask.canary, ask.priority, ask.tenant
    if tenant is not None:
        facts, canary, priority = steer(tenant, facts, canary, priority)
    route = select_route(table, facts)
    if tenant is not None and not may_use(tenant, route, facts.model):
        raise Forbidden(f"tenant {tenant.name!r} may not use route {route.name!r}", route=route.name)
    request = hinted(table, route, facts, on_route(route, ask.request, ask.max_n))
    level = priority if priority is not None else route.priority
    if tenant is not None and tenant.priority_ceiling is not None:  # a larger number is a lower priority
        level = max(DEFAULT_PRIORITY if level is None else level, tenant.priority_ceiling)
    return Routed(table, route, facts, request, canary, level, tenant)


def may_use(tenant: Tenant, route: Route, asked: str | None) -> bool:
    """Whether ``tenant`` may be served by ``route`` when it asked for ``asked`` (its
    ``model`` field): its ``routes`` name the route or the name it asked for, or it has
    no such restriction."""
    return tenant.routes is None or bool({route.name, asked} & tenant.routes)


def on_route(route: Route, request: ImageRequest, max_n: int | None = None) -> ImageRequest:
    """``request`` checked against ``route``'s limits (``max_n``: the images it may ask
    for instead of the route's, as for a job), and marked for upscaling where the route
    upscales: what every generation on a route (answer or preview) starts with."""
    check_limits(route, request, max_n)
    if route.resize == "upscale" and not request.upscale:
        return replace(request, upscale=True)
    return request


def hinted(table: RoutingTable, route: Route, facts: RequestFacts, request: ImageRequest) -> ImageRequest:
    """``request`` made smaller where ``route`` caps its size on the client's link (the
    link an edge that adapts put in ``facts``: only ``/api/v1/generate`` does; see
    :mod:`image_router.policy.hints`). The native side is the first tier's the chain
    will start at. Before the cache plan, so seeds and keys are of the size made."""
    link = facts.fields.get(FIELD, FAST)
    if route.client_hints is None or link == FAST:
        return request
    chain = chain_for(route.arms[0].model, route.fallback)
    first = chain[1] if downgrades(route.client_hints, link, len(chain)) else chain[0]
    size = downsized(route.client_hints, link, request.width, request.height, table.models[first].native_side)
    return request if size is None else replace(request, width=size[0], height=size[1])


def check_limits(route: Route, request: ImageRequest, max_n: int | None = None) -> None:
    limits = route.limits
    most = limits.max_n if max_n is None else max_n
    if route.resize == "upscale":
        for name in ("width", "height"):
            value = getattr(request, name)
            if value is not None and value > MAX_UPSCALED_SIDE:
                raise InvalidRequest(f"{name} must be at most {MAX_UPSCALED_SIDE} (upscaled)", field=name)
        if request.width and request.height:  # bounded before any generation, not after it
            refusal = upscale_refusal(request.width, request.height, len(request.prompts))
            if refusal is not None:
                raise InvalidRequest(refusal, field="n")
    if len(request.prompts) > most:
        where = f"on route {route.name!r}" if max_n is None else "for a job"
        raise InvalidRequest(f"n must be at most {most} {where}", field="n")
    if limits.max_steps is not None and request.steps is not None and request.steps > limits.max_steps:
        raise InvalidRequest(f"steps must be at most {limits.max_steps}", field="steps")
    if limits.max_side is not None:
        for name in ("width", "height"):
            value = getattr(request, name)
            if value is not None and value > limits.max_side:
                raise InvalidRequest(f"{name} must be at most {limits.max_side}", field=name)


def cache_plan(
    route: Route, request: ImageRequest, cache_control: str | None, draw: SeedDraw, scope: str = ""
) -> tuple[CachePlan, ImageRequest]:
    """What this request may do with the cache, and its seeds (see ``seedless``).
    ``Cache-Control: no-cache`` skips the lookup and stores the fresh result;
    ``no-store`` does neither."""
    assert route.cache is not None
    directives = {d.strip().split("=", 1)[0].lower() for d in (cache_control or "").split(",")}
    lookup, store, skipped, repeatable = True, True, None, True
    if request.seeds is None:
        if route.cache.seedless == "share":
            seeds = derive_seeds(request.prompts, request.steps, request.width, request.height)
            request = replace(request, seeds=seeds, drawn=True)
        else:  # fresh: a new image every time, kept under its random seed
            request = replace(request, seeds=draw(len(request.prompts)), drawn=True)
            lookup, repeatable = False, False
    if "no-store" in directives:
        lookup, store, skipped = False, False, "BYPASS"
    elif "no-cache" in directives:
        lookup, skipped = False, "BYPASS"
    return CachePlan(lookup, store, route.cache.ttl_s, skipped, repeatable, scope), request


def cache_scope(routed: Routed) -> str:
    """Whose cache entries this request may read, write and join in flight: its
    tenant's own (``""`` names the shared space). A route's ``cache.scope`` says; by
    default a tenant's in keys mode — a second tenant asking the same prompt must not
    learn, from a hit and its ``Age``, what another asked and when — and shared in open
    mode, where callers have no identity to separate."""
    cache, tenant = routed.route.cache, routed.tenant
    scope = cache.scope if cache is not None and cache.scope is not None else None
    if scope is None:
        scope = "tenant" if routed.table.tenant_mode == "keys" else "shared"
    return tenant.name if scope == "tenant" and tenant is not None else ""


def choose(routed: Routed, route: Route, query: Mapping[str, str], rng: Rng) -> Choice:
    """The arm of ``route`` (``routed.route`` as served now) for this request."""
    facts = routed.facts
    key = sticky_key(route, facts.headers, query, facts.fields)
    return choose_arm(route, key, rng, routed.canary)


def arm_phase(
    routed: Routed,
    ask: Ask,
    rng: Rng,
    draw: SeedDraw,
    *,
    cached: bool,
    serving: Serving | None = None,
) -> Decision:
    """Step 3: seeds and the cache plan (``cached``: the gateway has a result cache), the
    route as served now (``serving``: a live rollout's weights; ``None``: the route is in
    none), and the arm — where the route opts in (``client_hints: {downgrade: true}``), a
    client on a constrained link starts at the chain's first fallback."""
    route, request = routed.route, routed.request
    plan = None
    if route.cache is not None and cached and request.init_image is None:
        plan, request = cache_plan(route, request, ask.cache_control, draw, cache_scope(routed))
    elif request.seeds is None and ask.random_seeds:
        request = replace(request, seeds=draw(len(request.prompts)), drawn=True)
    served_route = serving(route) if serving is not None else route
    decision = Decision(
        routed.table,
        served_route,
        choose(routed, served_route, ask.query, rng),
        request,
        routed.priority,
        plan,
        routed.tenant.name if routed.tenant is not None else "",
        ask.started,
        ask.budget_s,
        serving is not None,
    )
    link = routed.facts.fields.get(FIELD, FAST)
    if link != FAST and downgrades(route.client_hints, link, len(budget_chain(decision))):
        decision, _ = budget_phase(decision, 1)  # a faster tier for a constrained link (route opt-in)
    return decision


def budget_chain(decision: Decision) -> list[str]:
    """The tiers a budget reservation quotes, in order: the arm's, then the fallbacks."""
    return list(chain_for(decision.intended, decision.route.fallback))


def budget_phase(decision: Decision, tier: int, *, alone: bool = False) -> tuple[Decision, tuple[tuple[str, str], ...]]:
    """The decision served from tier ``tier`` of :func:`budget_chain`, and the tiers
    skipped for it (``budget``); ``alone``: with no fallback after it. A budget
    downgrade is not a rollout observation (it says nothing of the canary) and, as the
    skipped tier is no longer the intended one, never queues an upgrade."""
    if tier <= 0 and not alone:
        return decision, ()
    chain = budget_chain(decision)
    route = replace(decision.route, fallback=() if alone else tuple(chain[tier + 1 :]))
    if tier <= 0:
        return decision._replace(route=route), ()
    downgraded = decision._replace(route=route, choice=Choice(Arm(chain[tier], 1.0), False), rollout=False)
    return downgraded, tuple((name, "budget") for name in chain[:tier])


class Afforded(NamedTuple):
    """What the tenant's budget reservation answered, as values."""

    tier: int  # the first tier of :func:`budget_chain` it pays for (-1: none)
    used: float  # the fullest window's share spent or held before this request
    stored: frozenset[str] = frozenset()  # tiers already in the result store (looked up only when refused)


class Budgeted(NamedTuple):
    """Step 4's value; ``decision`` ``None``: refused (429), unless a tier is stored —
    then ask again with :attr:`Afforded.stored`."""

    decision: Decision | None
    skipped: tuple[tuple[str, str], ...]
    state: str  # X-Router-Budget: ok | warn | brownout | exhausted


def budget_rules(decision: Decision, budget: Budget, afforded: Afforded) -> Budgeted:
    """Step 4: what the tenant's budget lets ``decision`` be served from.

    - at ``downgrade_at`` (brownout) only ``downgrade_to`` tiers (default: the chain's
      fallbacks, or its one tier when it has none) at or after the affordable one;
    - else from the affordable tier, ``warn`` at ``warn_at``; with ``on_exhausted:
      reject`` only the intended tier (a later one is refused);
    - nothing to serve: a stored tier still is, alone (with ``reject`` the intended one).
    """
    chain, tier = budget_chain(decision), afforded.tier
    if tier >= 0 and budget.downgrade_at is not None and afforded.used >= budget.downgrade_at:
        eligible = set(budget.downgrade_to) or {*chain[1:], chain[-1]}
        cheaper = next((i for i in range(tier, len(chain)) if chain[i] in eligible), -1)
        if cheaper >= 0:
            return Budgeted(*budget_phase(decision, cheaper), "brownout")
        tier = -1  # nothing the brownout allows is on this chain
    elif tier > 0 and budget.on_exhausted == "reject":
        tier = -1  # the intended tier does not fit, and this tenant takes no budget downgrade
    if tier >= 0:
        warn = budget.warn_at is not None and afforded.used >= budget.warn_at
        return Budgeted(*budget_phase(decision, tier), "warn" if warn else "ok")
    reachable = chain if budget.on_exhausted == "downgrade" else chain[:1]
    stored = next((i for i, name in enumerate(reachable) if name in afforded.stored), -1)
    if stored < 0:
        return Budgeted(None, (), "exhausted")
    return Budgeted(*budget_phase(decision, stored, alone=True), "exhausted")


def previews(routed: Routed, main: Decision, count: int, draw: SeedDraw, *, cached: bool) -> list[Decision]:
    """Up to ``count`` progressive previews of ``main``, fastest first: the tiers of the
    routed route's fallback chain from its end, each alone on the route (its budget,
    cache and the request's effective priority, no fallback), on ``main``'s seeds — so a
    preview shows what the final image will look like, under the same tenant rules."""
    out = []
    for model in list(reversed(routed.route.fallback))[:count]:
        alone = routed.route.alone(model)
        plan, request = None, main.request
        if alone.cache is not None and cached and request.init_image is None:
            plan, request = cache_plan(alone, request, None, draw, main.cache.scope if main.cache else "")
        out.append(
            Decision(
                routed.table,
                alone,
                Choice(alone.arms[0], False),
                request,
                routed.priority,
                plan,
                main.tenant,
                main.started,
                main.budget_s,
            )
        )
    return out


def background(
    table: RoutingTable, route: Route, request: ImageRequest, priority: int, cache: CachePlan | None = None
) -> Decision:
    """Work nobody waits for (pre-generation, upgrades, a rollout's shadow): ``route``
    served by its one arm at ``priority``."""
    return Decision(table, route, Choice(route.arms[0], False), request, priority, cache)


def explain(
    table: RoutingTable, ask: Ask, forecast_s: Callable[[str], float | None], serving: Serving | None = None
) -> dict[str, Any]:
    """What the table would do with ``ask``, by the same steps serving takes: the
    matched route, candidate arms with weights, the sticky choice and the chain with
    each tier's forecast (seconds until a request sent now would finish there;
    ``None``: no usable endpoint). The RNG is fixed: a non-sticky split names no arm."""
    routed = route_phase(table, ask)
    route = serving(routed.route) if serving is not None else routed.route
    choice = choose(routed, route, ask.query, _FIXED)
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
        "chosen": choice.arm.model if choice.sticky or len(route.arms) == 1 else None,  # sticky: keyed
        "fallback": list(route.fallback),
        "priority": routed.priority,
        "chain_forecast_ms": {m: _ms(forecast_s(m)) for m in chain_for(choice.arm.model, route.fallback)},
        "config_digest": table.digest,
    }


class _Fixed:
    """The RNG ``explain`` draws from: always the same draw (``random.Random(0)``'s first)."""

    def random(self) -> float:
        return 0.8444218515250481


_FIXED = _Fixed()


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def hint_forecast(table: RoutingTable) -> Callable[[str], float | None]:
    """Forecasts from the operator's hints alone (no live traffic, e.g. in the CLI)."""
    return lambda name: table.models[name].latency_hint_ms / 1000
