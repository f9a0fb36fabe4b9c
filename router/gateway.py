"""The protocol-agnostic data plane: route, pick an arm, dispatch.

Every front end (OpenAI Images, the JSON API, KServe v2) turns its request into
:class:`~router.policy.match.RequestFacts` plus an
:class:`~router.backends.base.ImageRequest` and calls :meth:`Gateway.generate`, so the
three protocols cannot drift apart in routing behaviour.

The active table is one reference, replaced whole by :meth:`Gateway.swap`; a request
reads it once on arrival and finishes on that table even if a reload happens.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from router.backends import ImageBackend, ImageRequest, make_backend
from router.backends.base import consecutive_seeds
from router.backends.pool import BackendPool
from router.cache import ResultCache, derive_seeds, open_store
from router.cache.hitters import HeavyHitters
from router.config.table import Backend, CacheConfig, Model, Route, RoutingTable, Tenant
from router.dispatch import CachePlan, Dispatcher, Served
from router.errors import Forbidden, InvalidRequest, RateLimited, RouterError, Unauthorized
from router.fill import UPGRADE_REASONS, Filler, FillJob
from router.policy.explain import explain
from router.policy.match import RequestFacts, select_route
from router.policy.size import MAX_UPSCALED_SIDE
from router.policy.split import Choice, choose_arm, sticky_key
from router.policy.tenants import Decision, TenantState, bearer_key, find_tenant, limit_args, shared_decision
from router.rollouts import RolloutController
from router.stats import LatencyStats
from router.telemetry import Metrics, Tracing

__all__ = ["Gateway"]


_LIMIT_NAMES = {"rate": "request rate", "images": "daily images", "concurrency": "concurrency"}


def _tenant_steering(
    tenant: Tenant, facts: RequestFacts, canary: str | None, priority: int | None
) -> tuple[RequestFacts, str | None, int | None]:
    """What a tenant may steer: X-Canary and X-Priority only when allowed (ignored
    otherwise), an X-Intent header only when allowed, and never a priority above its
    ceiling (a smaller number is a higher priority)."""
    if "x-canary" not in tenant.overrides:
        canary = None
    if "x-priority" not in tenant.overrides:
        priority = None
    if tenant.priority_ceiling is not None and priority is not None:
        priority = max(priority, tenant.priority_ceiling)
    if "x-intent" not in tenant.overrides and facts.intent and facts.intent == facts.headers.get("x-intent"):
        facts = dataclasses.replace(facts, intent=None, fields={**facts.fields, "intent": ""})
    # its sticky identity: the tenant, and the OpenAI user within it (users of two
    # tenants never share a cohort by sharing a name)
    user = facts.fields.get("user")
    identity = {"tenant": tenant.name, "user": f"{tenant.name}:{user}" if user else tenant.name}
    facts = dataclasses.replace(facts, fields={**facts.fields, **identity})
    return facts, canary, priority


def _on_route(route: Route, request: ImageRequest) -> ImageRequest:
    """``request`` checked against ``route``'s limits, and marked for upscaling where the
    route upscales: what every generation on a route (answer or preview) starts with."""
    _check_limits(route, request)
    if route.resize == "upscale" and not request.upscale:
        return dataclasses.replace(request, upscale=True)
    return request


def _check_limits(route: Route, request: ImageRequest) -> None:
    limits = route.limits
    if route.resize == "upscale":
        for name in ("width", "height"):
            value = getattr(request, name)
            if value is not None and value > MAX_UPSCALED_SIDE:
                raise InvalidRequest(f"{name} must be at most {MAX_UPSCALED_SIDE} (upscaled)", field=name)
    if len(request.prompts) > limits.max_n:
        raise InvalidRequest(f"n must be at most {limits.max_n} on route {route.name!r}", field="n")
    if limits.max_steps is not None and request.steps is not None and request.steps > limits.max_steps:
        raise InvalidRequest(f"steps must be at most {limits.max_steps}", field="steps")
    if limits.max_side is not None:
        for name in ("width", "height"):
            value = getattr(request, name)
            if value is not None and value > limits.max_side:
                raise InvalidRequest(f"{name} must be at most {limits.max_side}", field=name)


class Gateway:
    def __init__(
        self,
        table: RoutingTable,
        *,
        backend_factory: Callable[[Backend], ImageBackend] = make_backend,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        metrics: Metrics | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.clock = clock
        self.rng = rng or random.Random()
        self.metrics = metrics
        self.stats = LatencyStats(clock)
        self.pool = BackendPool(backend_factory)
        self.dispatcher = Dispatcher(self.pool, self.stats, clock, metrics=metrics, tracing=tracing)
        self._table = table
        self.pool.sync(table.backends)
        self.cache: ResultCache | None = None
        self.fill = Filler(self.dispatcher, lambda: self._table)
        self.hitters = HeavyHitters()
        self._tenant_state: dict[str, TenantState] = {}
        self._tenant_counts: dict[tuple[str, str], int] = {}
        self._sync_cache(table.cache)
        self.rollouts = RolloutController(
            lambda: self._table, lambda: self.cache.store if self.cache else None, self.dispatcher, clock=clock
        )

    def _sync_cache(self, config: CacheConfig | None) -> None:
        """Open the table's store (raising :class:`~router.errors.CacheStoreError`
        before anything changes when it cannot be used); close a replaced one."""
        old = self.cache
        if old is not None and config is not None and _same_store(old.config, config):
            self.cache = ResultCache(config, old.store, old.wall_clock)
            self.cache.stats, self.cache.hot = old.stats, old.hot
            self.cache.hot.max_bytes = config.memory_bytes
        else:
            self.cache = ResultCache(config, open_store(config)) if config is not None else None
            if old is not None:
                with contextlib.suppress(RuntimeError):  # no loop (tests, shutdown): nothing to close
                    asyncio.get_running_loop().create_task(old.aclose())
        self.dispatcher.cache = self.cache

    @property
    def table(self) -> RoutingTable:
        return self._table

    def swap(self, table: RoutingTable) -> None:
        """Make ``table`` active; requests already running keep theirs."""
        self._sync_cache(table.cache)  # first: a store that cannot be opened refuses the table
        self.pool.sync(table.backends)
        self._table = table
        self.rollouts.sync(table)

    async def generate(
        self,
        facts: RequestFacts,
        request: ImageRequest,
        *,
        query: Mapping[str, str] | None = None,
        canary: str | None = None,
        priority: int | None = None,
        started: float | None = None,
        cache_control: str | None = None,
        random_seeds: bool = True,
        budget_s: float | None = None,
        tenant: Tenant | None = None,
    ) -> Served:
        """Route, pick an arm and serve. A request without seeds gets them here, once
        the route is known: derived from the prompt on a ``seedless: share`` cache
        route, random where ``random_seeds`` (the OpenAI and JSON APIs), else left to
        the model (KServe, as Triton would)."""
        table = self._table
        if tenant is not None:  # what a tenant may not steer is ignored, its ceiling kept
            facts, canary, priority = _tenant_steering(tenant, facts, canary, priority)
        route = select_route(table, facts)
        if tenant is not None and tenant.routes is not None and not ({route.name, facts.model} & tenant.routes):
            self._count_tenant(tenant.name, "forbidden")
            raise Forbidden(f"tenant {tenant.name!r} may not use route {route.name!r}", route=route.name)
        request = _on_route(route, request)
        if tenant is not None:
            return await self._as_tenant(tenant, len(request.prompts), lambda: self._generate(
                table, route, facts, request, query, canary, priority, started, cache_control, random_seeds, budget_s,
                tenant.name,
            ))  # fmt: skip
        return await self._generate(
            table, route, facts, request, query, canary, priority, started, cache_control, random_seeds, budget_s
        )

    def _count_tenant(self, tenant: str, outcome: str) -> None:
        """Per tenant and outcome: labels bounded by the configured tenants (+ unknown)."""
        key = (tenant, outcome)
        self._tenant_counts[key] = self._tenant_counts.get(key, 0) + 1
        if self.metrics is not None:
            self.metrics.tenant_requests.labels(tenant, outcome).inc()

    def tenant_status(self) -> list[dict[str, Any]]:
        """What the status page shows per tenant: its limits, in flight, and outcomes."""
        out = []
        for tenant in self._table.tenants:
            state = self._tenant_state.get(tenant.name)
            counts = {o: n for (t, o), n in self._tenant_counts.items() if t == tenant.name}
            out.append({
                "name": tenant.name, "requests_per_s": tenant.requests_per_s, "burst": tenant.burst,
                "images_per_day": tenant.images_per_day, "max_concurrency": tenant.max_concurrency,
                "inflight": state.inflight if state else 0, "images_today": state.images_today if state else 0,
                **counts,
            })  # fmt: skip
        return out

    async def _as_tenant(self, tenant: Tenant, images: int, call: Callable[[], Awaitable[Served]]) -> Served:
        """``call`` within ``tenant``'s limits on this replica; its answer carries them."""
        state = self._tenant_state.setdefault(tenant.name, TenantState())
        decision = await self._shared_limits(tenant, images, state)
        if decision is None:  # no shared store, or it did not answer: this replica counts
            decision = state.admit(tenant, images, self.clock(), time.time())
        if not decision.allowed:
            self._count_tenant(tenant.name, "rate_limited")
            raise RateLimited(
                f"tenant {tenant.name!r} is over its {_LIMIT_NAMES[decision.reason]} limit",
                retry_after_s=max(1, math.ceil(decision.retry_after_s)),
                headers=decision.headers,
            )
        try:
            served = await call()
        finally:
            state.done()
        self._count_tenant(tenant.name, "served")
        return dataclasses.replace(served, tenant=tenant.name, limit_headers=decision.headers)

    async def _shared_limits(self, tenant: Tenant, images: int, state: TenantState) -> Decision | None:
        """``tenant``'s rate and daily images counted for every replica at once in the
        shared store (Redis), in one round trip; ``None`` when there is none or it did
        not answer within its bound — a store fault never fails a request."""
        if (
            self.cache is None
            or self.cache.store.kind != "redis"
            or not (tenant.requests_per_s or tenant.images_per_day)
        ):
            return None
        if state.busy(tenant):
            return Decision(False, "concurrency", 1.0)
        wall = time.time()
        keys = [f"t:{tenant.name}:rate", f"t:{tenant.name}:images:{int(wall // 86400)}"]
        reply = await self.cache.store.limit(keys, limit_args(tenant, images))
        if reply is None:
            return None
        decision = shared_decision(tenant, reply, wall)
        if decision.allowed:
            state.enter()
        return decision

    def authenticate(self, authorization: str | None) -> Tenant | None:
        """The tenant an ``Authorization: Bearer <key>`` names. In ``keys`` mode a missing,
        malformed or unknown key is a 401; in ``open`` mode a request without a known key
        is anonymous (``None``)."""
        table = self._table
        key = bearer_key(authorization)
        tenant = find_tenant(table.tenants, key) if key is not None else None
        if tenant is None and table.tenant_mode == "keys":
            self._count_tenant("unknown", "unauthorized")
            if not authorization:
                raise Unauthorized("an API key is required: send Authorization: Bearer <key>")
            raise Unauthorized("the API key is not valid")
        return tenant

    async def _generate(
        self,
        table: RoutingTable,
        route: Route,
        facts: RequestFacts,
        request: ImageRequest,
        query: Mapping[str, str] | None,
        canary: str | None,
        priority: int | None,
        started: float | None,
        cache_control: str | None,
        random_seeds: bool,
        budget_s: float | None,
        tenant: str = "",
    ) -> Served:
        plan = None
        if route.cache is not None and self.cache is not None and request.init_image is None:
            plan, request = _cache_plan(route, request, cache_control)
        elif request.seeds is None and random_seeds:
            request = dataclasses.replace(request, seeds=_random_seeds(len(request.prompts)))
        rollout = route.name in self.rollouts.live
        if rollout:
            route = self.rollouts.route_for(route)  # the rollout's live weight
        key = sticky_key(route, facts.headers, query or {}, facts.fields)
        choice = choose_arm(route, key, self.rng, canary)
        if self.metrics is not None and route.is_split:
            self.metrics.canary.labels(route.name, choice.arm.model, "true" if choice.arm.canary else "false").inc()
        if self.cache is not None:  # background work exists only with a cache: it paces by this
            self.fill.note_live(choice.arm.model, *route.fallback)
        try:
            served = await self.dispatcher.serve(
                table,
                route,
                choice,
                request,
                priority or route.priority,
                started=started,
                cache=plan,
                budget_s=budget_s,
                tenant=tenant,
            )
        except RouterError as exc:
            if rollout:
                self.rollouts.observe(route, choice.arm, None, exc, request.prompts[0])
            raise
        if rollout:
            self.rollouts.observe(route, choice.arm, served, prompt=request.prompts[0])
            self.rollouts.mirror(route, choice.arm, request, served)
        if plan is not None and self.cache is not None:
            self.cache.stats.count(route.name, served.model_tag, served.cache or "MISS")
            self.hitters.add(route.name, request.prompts[0])
            # an upgrade only pays if an identical request can come: not for random seeds
            if plan.store and plan.repeatable and route.cache is not None and route.cache.upgrade:
                self._upgrade(route, choice.arm.model, served, request)
        return served

    # -- progressive previews (a stream: the faster tiers' images first) ----------------

    def with_seeds(self, facts: RequestFacts, request: ImageRequest) -> ImageRequest:
        """``request`` with its seeds decided now, by the rules :meth:`generate` applies
        (derived from the prompt on a ``seedless: share`` route, else random), so a
        preview and the final image are made from the same seed."""
        if request.seeds is not None:
            return request
        route = select_route(self._table, facts)
        if route.cache is not None and route.cache.seedless == "share":
            return dataclasses.replace(
                request, seeds=derive_seeds(request.prompts, request.steps, request.width, request.height)
            )
        return dataclasses.replace(request, seeds=_random_seeds(len(request.prompts)))

    def preview_tiers(self, facts: RequestFacts, count: int) -> list[str]:
        """Up to ``count`` tiers below the one ``facts`` route to, fastest first: the
        models of its fallback chain, from the end."""
        route = select_route(self._table, facts)
        return list(reversed(route.fallback))[:count]

    async def preview(
        self, facts: RequestFacts, request: ImageRequest, model: str, *, started: float | None = None
    ) -> Served:
        """``request`` made by ``model`` alone, on the route ``facts`` select (its budget,
        cache and priority, no fallback): a progressive preview of what that route serves."""
        table = self._table
        route = select_route(table, facts)
        request = _on_route(route, request)
        route = route.alone(model)
        plan = None
        if route.cache is not None and self.cache is not None:
            plan, request = _cache_plan(route, request, None)
        return await self.dispatcher.serve(
            table, route, Choice(route.arms[0], False), request, route.priority, started=started, cache=plan
        )

    def _upgrade(self, route: Route, intended: str, served: Served, request: ImageRequest) -> None:
        """Served below the intended tier because it was slow, busy or full: make the
        intended tier's image on idle capacity, for the next identical request."""
        if served.model.name == intended or not any(
            model == intended and why in UPGRADE_REASONS for model, why in served.fallback
        ):
            return
        model = self._table.models[intended]
        key = self.dispatcher.cache_key(route, model, request)
        self.fill.submit(FillJob("upgrade", route, intended, request, str(key)))

    def pregenerate(self, items: list[dict[str, Any]]) -> dict[str, int]:
        """Queue each item (``prompt``, optional ``route``, ``intent``, ``seed``,
        ``steps``, ``width``, ``height``, ``n``) for every arm of the route it selects.
        Items on routes without a cache, or with ``seedless: fresh`` and no seed (they
        would never be looked up), are counted and skipped; ``pending`` is how many jobs
        now wait for idle capacity."""
        table = self._table
        counts = {"queued": 0, "duplicate": 0, "not_cached": 0, "fresh": 0}
        for item in items:
            facts = RequestFacts.of(item["prompt"], item.get("intent"), item.get("route"), {})
            route = select_route(table, facts)
            if route.cache is None or self.cache is None:
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
            _check_limits(route, request)
            _, request = _cache_plan(route, request, None)
            for arm in self.rollouts.route_for(route).arms:
                if arm.weight <= 0:
                    continue
                key = self.dispatcher.cache_key(route, table.models[arm.model], request)
                queued = self.fill.submit(FillJob("pregen", route, arm.model, request, str(key)))
                counts["queued" if queued else "duplicate"] += 1
        counts["pending"] = self.fill.pending()
        return counts

    def explain(self, facts: RequestFacts, query: Mapping[str, str] | None = None) -> dict[str, Any]:
        """What the active table would do with ``facts``, with live forecasts (no backend call)."""
        table = self._table

        def forecast_s(name: str) -> float | None:
            forecast = self.dispatcher.forecast(table.models[name])
            return None if forecast is None else forecast.expected_s

        return explain(table, facts, forecast_s, query, self.rollouts.route_for)

    # -- what the KServe front doors (HTTP and gRPC) ask besides inference --------------

    def resolve(self, alias: str) -> Model:
        """The concrete model behind a logical name, by the same rules as inference (the
        route it selects, first arm); an unknown name is a 404 ``model_not_found``."""
        table = self._table
        return table.models[select_route(table, RequestFacts(prompt="", model=alias)).arms[0].model]

    def aliases(self) -> list[str]:
        return self._table.aliases()

    async def model_ready(self, alias: str) -> bool:
        model = self.resolve(alias)
        return await self.pool.get(model.backend).model_ready(model)

    async def model_metadata(self, alias: str) -> dict[str, Any]:
        """The resolved model's metadata, under the logical name it was asked by."""
        model = self.resolve(alias)
        meta = await self.pool.get(model.backend).model_metadata(model)
        return {**meta, "name": alias}

    async def model_config(self, alias: str) -> dict[str, Any]:
        model = self.resolve(alias)
        config = await self.pool.get(model.backend).model_config(model)
        return {**config, "name": alias}

    async def model_statistics(self, alias: str) -> dict[str, Any]:
        model = self.resolve(alias)
        stats = await self.pool.get(model.backend).model_statistics(model)
        return {"model_stats": [{**entry, "name": alias} for entry in stats.get("model_stats", [])]}

    # -- what the admin API and the status page read ---------------------------------

    def latency(self) -> dict[str, Any]:
        """Answered latencies and outcomes per model over the last minute."""
        return self.stats.snapshot()

    def models(self) -> dict[str, Any]:
        """Per model: in flight, queued for admission, and the live forecast."""
        return self.dispatcher.snapshot()

    def recent_downgrades(self, limit: int = 20) -> list[dict[str, Any]]:
        """The latest downgrades, newest first."""
        return list(self.dispatcher.recent_downgrades)[::-1][:limit]

    async def cache_status(self, top: int | None = None) -> dict[str, Any] | None:
        """The cache's store, counts and background work (``top``: also the most asked
        prompts); ``None`` without a cache."""
        if self.cache is None:
            return None
        status = {**await self.cache.describe(), "fill": self.fill.describe()}
        if top is not None:
            status["top_prompts"] = self.hitters.top(top)
        return status

    def backend_snapshots(self) -> dict[str, list[dict[str, Any]]]:
        return {name: backend.snapshot() for name, backend in self.pool.items()}

    def state(self) -> dict[str, Any]:
        """What the metrics collector and the status page read (no I/O)."""
        return {
            "models": self.dispatcher.snapshot(),
            "backends": self.backend_snapshots(),
            "retries": {name: getattr(b, "retries", 0) for name, b in self.pool.items()},
            "digest": self._table.digest,
            "cache": self._cache_state(),
            "rollouts": self.rollouts.state(),
        }

    def _cache_state(self) -> dict[str, Any] | None:
        if self.cache is None:
            return None
        return {**self.cache.counters(), "coalesced": self.dispatcher.flights.coalesced, "fill": self.fill.describe()}

    async def ready(self) -> bool:
        """Ready when at least one configured backend answers ready."""
        for _, backend in self.pool.items():
            if await backend.ready():
                return True
        return False

    async def aclose(self) -> None:
        await self.rollouts.aclose()
        await self.fill.aclose()
        await self.pool.aclose()
        if self.cache is not None:
            await self.cache.aclose()


def _same_store(a: CacheConfig, b: CacheConfig) -> bool:
    return (a.store, a.max_bytes, a.timeout_s) == (b.store, b.max_bytes, b.timeout_s)


def _random_seeds(n: int) -> tuple[int, ...]:
    return consecutive_seeds(secrets.randbelow(2**31), n)


def _cache_plan(route: Route, request: ImageRequest, cache_control: str | None) -> tuple[CachePlan, ImageRequest]:
    """What this request may do with the cache, and its seeds (see ``seedless``).
    ``Cache-Control: no-cache`` skips the lookup and stores the fresh result;
    ``no-store`` does neither."""
    assert route.cache is not None
    directives = {d.strip().split("=", 1)[0].lower() for d in (cache_control or "").split(",")}
    lookup, store, skipped, repeatable = True, True, None, True
    if request.seeds is None:
        if route.cache.seedless == "share":
            request = dataclasses.replace(
                request, seeds=derive_seeds(request.prompts, request.steps, request.width, request.height)
            )
        else:  # fresh: a new image every time, kept under its random seed
            request = dataclasses.replace(request, seeds=_random_seeds(len(request.prompts)))
            lookup, repeatable = False, False
    if "no-store" in directives:
        lookup, store, skipped = False, False, "BYPASS"
    elif "no-cache" in directives:
        lookup, skipped = False, "BYPASS"
    return CachePlan(lookup, store, route.cache.ttl_s, skipped, repeatable), request
