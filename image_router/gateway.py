"""The protocol-agnostic data plane: the wiring, and :meth:`Gateway.serve`.

Every way in — the JSON API, OpenAI Images and its stream, KServe v2 over HTTP and
gRPC, pre-generation — builds one :class:`~image_router.ask.Ask` and calls :meth:`serve`
(or :meth:`stream`, which serves the same decision plus its previews). ``serve`` reads
the active table **once**, then: decides the route (:func:`~image_router.decide.route_phase`),
admits the tenant (its slot reserved before any await), decides seeds, cache plan and
arm (:func:`~image_router.decide.arm_phase`), and walks the chain (the dispatcher), with the
hooks around the walk. Everything after the first line works on that table, so a
reload landing mid-request never changes a request already running.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import time
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from image_router.ask import Ask
from image_router.backends import ImageBackend, ImageRequest, make_backend
from image_router.backends.base import consecutive_seeds
from image_router.backends.pool import BackendPool
from image_router.billing.budget import refused_state
from image_router.billing.gate import BudgetGate, Spend
from image_router.billing.meter import bill
from image_router.cache import ResultCache, open_store
from image_router.cache.coordinate import Coordinator
from image_router.cache.hitters import HeavyHitters
from image_router.catalog import Catalog
from image_router.config.table import Backend, CacheConfig, RoutingTable, Tenant
from image_router.decide import (
    Afforded,
    Decision,
    Routed,
    Serving,
    arm_phase,
    budget_chain,
    budget_rules,
    explain,
    previews,
    route_phase,
)
from image_router.dispatch import Dispatcher
from image_router.errors import Forbidden, RouterError
from image_router.fill import Filler
from image_router.hooks import Hooks
from image_router.policy.match import RequestFacts
from image_router.readout import Readout
from image_router.rollouts import RolloutController
from image_router.served import Served
from image_router.state import GuardedState, open_state, reopen_state
from image_router.stats import LatencyStats
from image_router.telemetry import Metrics, Tracing
from image_router.tenancy import Admission, LimitStore, TenantGate

__all__ = ["Gateway"]


class _Taken(NamedTuple):
    """A request decided and admitted, about to be walked."""

    routed: Routed
    decision: Decision
    admission: Admission | None
    spend: Spend | None
    cache: ResultCache | None
    previews: int  # how many previews were admitted with it


class Gateway(Catalog, Readout):
    """The table reference and its swap, and serving. The KServe control reads
    (:class:`~image_router.catalog.Catalog`) and the read models
    (:class:`~image_router.readout.Readout`) are mixed in, each in its own module."""

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
        self.coordinator = Coordinator(self.pool, clock)  # the result cache's part in a walk (one per replica)
        self.dispatcher = Dispatcher(
            self.pool, self.stats, clock, stored=self.coordinator, metrics=metrics, tracing=tracing
        )
        self._table = table
        self.pool.sync(table.backends)
        self.cache: ResultCache | None = None
        self.state_store: GuardedState | None = open_state(table.state) if table.state is not None else None
        self.fill = Filler(self.dispatcher, lambda: self._table, clock=clock)
        self.hitters = HeavyHitters()
        self.tenants = TenantGate(self._limit_store, clock, metrics=metrics)
        self.budgets = BudgetGate(lambda: self.state_store)
        self._sync_cache(table.cache)
        self.rollouts = RolloutController(lambda: self._table, lambda: self.state_store, self.dispatcher, clock=clock)
        self.hooks = Hooks(self.dispatcher, self.fill, self.rollouts, self.hitters, metrics)

    # -- wiring ------------------------------------------------------------------------

    def _sync_cache(self, config: CacheConfig | None) -> None:
        """Open the table's store (raising :class:`~image_router.errors.CacheStoreError`
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
        self.coordinator.cache = self.cache

    def _limit_store(self) -> LimitStore | None:
        """The store the tenants' shared limits use: one every replica sees, else none."""
        store = self.state_store
        return store if store is not None and store.shared else None

    @property
    def table(self) -> RoutingTable:
        return self._table

    def swap(self, table: RoutingTable) -> None:
        """Make ``table`` active; requests already running keep theirs."""
        state = reopen_state(self.state_store, table.state)  # first: a store that cannot be opened
        self._sync_cache(table.cache)  # (or a state store that may evict) refuses the table
        old_state, self.state_store = self.state_store, state
        if old_state is not None and old_state is not state:
            with contextlib.suppress(RuntimeError):  # no loop (tests, shutdown): nothing to close
                asyncio.get_running_loop().create_task(old_state.aclose())
        self.pool.sync(table.backends)
        self._table = table
        self.rollouts.sync(table)
        with contextlib.suppress(RuntimeError):  # no loop (tests): the first lookup learns it
            asyncio.get_running_loop()
            self.coordinator.warm(table.models.values())  # new or re-pointed models: their versions

    def authenticate(self, authorization: str | None) -> Tenant | None:
        return self.tenants.authenticate(self._table, authorization)

    # -- serving -----------------------------------------------------------------------

    async def serve(self, ask: Ask) -> Served:
        """Decide, admit, walk: the one path every request takes."""
        taken = await self._take(ask)
        try:
            return await self._run(taken.decision, taken.admission, taken.cache, taken.spend)
        finally:
            if taken.admission is not None:
                taken.admission.release()

    async def stream(self, ask: Ask, partial_images: int) -> tuple[asyncio.Task[Served], list[asyncio.Task[Served]]]:
        """The routed generation and up to ``partial_images`` previews of it, running:
        one decision (so one route, tenant rule and seed for all of them), one admission
        counting every image sent, its slot held until the last of them ends (previews
        ride on the answer's budget reservation)."""
        taken = await self._take(ask, partial_images)
        admission = taken.admission
        hold = admission.hold if admission is not None else None
        try:
            main = asyncio.ensure_future(self._run(taken.decision, admission, taken.cache, taken.spend))
            shown = previews(taken.routed, taken.decision, taken.previews, self.draw, cached=taken.cache is not None)
            partials = [asyncio.ensure_future(self.dispatcher.serve(preview, hold)) for preview in shown]
            if hold is not None:
                for task in (main, *partials):
                    hold(task)
        finally:
            if admission is not None:
                admission.release()
        return main, partials

    async def decide_later(self, ask: Ask) -> Decision:
        """A request to be served later (an async job), decided now by the same steps:
        routed, its tenant admitted (its rate and images counted at submission), its arm
        and seeds fixed. Neither the concurrency slot nor a budget reservation is held
        while it waits."""
        taken = await self._take(ask)
        if taken.admission is not None:
            taken.admission.release()
        if taken.spend is not None:
            self.budgets.settle(taken.spend.held, 0)
        return taken.decision

    async def _take(self, ask: Ask, partial_images: int = 0) -> _Taken:
        """Everything before the walk, for :meth:`serve` and :meth:`stream` alike. What
        it reads of the gateway — the table, the cache, a rollout's live weights — it
        reads on arrival, before its first await; the rest of the request works on
        those. The tenant is admitted for every image the request will send; a refusal
        after that gives its slot back."""
        table, cache = self._table, self.cache
        routed = self._route(table, ask)
        overlay = self._overlay(routed)
        count = min(partial_images, len(routed.route.fallback))
        if count and routed.tenant is not None and routed.tenant.budget is not None:
            return await self._take_budgeted_stream(routed, ask, overlay, cache, count)
        admission = await self._admit(routed, routed.images * (1 + count))
        try:
            decision = arm_phase(routed, ask, self.rng, self.draw, cached=cache is not None, serving=overlay)
            decision, spend = await self._spend(routed, decision, cache)
        except BaseException:
            if admission is not None:
                admission.release()
            raise
        return _Taken(routed, decision, admission, spend, cache, count)

    async def _take_budgeted_stream(
        self, routed: Routed, ask: Ask, overlay: Serving | None, cache: ResultCache | None, count: int
    ) -> _Taken:
        """A budgeted tenant's stream with previews: its budget is asked *first*, since
        only its answer says whether previews are made at all — they are generated, never
        stored, so a tenant its budget serves only what is stored gets none — and the
        tenant is then admitted for the images that will really be sent (admitting it for
        previews then dropping them counted images it never got). A refused admission
        gives the budget's hold back."""
        decision = arm_phase(routed, ask, self.rng, self.draw, cached=cache is not None, serving=overlay)
        decision, spend = await self._spend(routed, decision, cache)
        if spend is not None and spend.stored_only:
            count = 0
        try:
            admission = await self._admit(routed, routed.images * (1 + count))
        except BaseException:
            if spend is not None:
                self.budgets.settle(spend.held, 0)
            raise
        return _Taken(routed, decision, admission, spend, cache, count)

    def _route(self, table: RoutingTable, ask: Ask) -> Routed:
        try:
            return route_phase(table, ask)
        except Forbidden:
            if ask.tenant is not None:
                self.tenants.count(ask.tenant.name, "forbidden")
            raise

    def _overlay(self, routed: Routed) -> Serving | None:
        """A live rollout's weights for the routed route, read now; ``None`` when it is in none."""
        if routed.route.name not in self.rollouts.live:
            return None
        live = self.rollouts.route_for(routed.route)
        return lambda _route: live

    async def _admit(self, routed: Routed, images: int) -> Admission | None:
        return None if routed.tenant is None else await self.tenants.admit(routed.tenant, images)

    async def _spend(
        self, routed: Routed, decision: Decision, cache: ResultCache | None
    ) -> tuple[Decision, Spend | None]:
        """The tenant's spend budget reserved for the arm's chain (none: no budget), and
        the decision its rules serve (:func:`budget_rules`). Only when they serve
        nothing is the result store asked which tiers are stored: an exhausted tenant
        still gets those, charged the hit price while it fits (:meth:`BudgetGate.hold_hit`)."""
        billing, tenant = decision.table.billing, routed.tenant
        if billing is None or tenant is None or tenant.budget is None:
            return decision, None
        chain = [decision.table.models[name] for name in budget_chain(decision)]
        budget_s = decision.route.budget_ms / 1000
        images, steps = len(decision.request.prompts), decision.request.steps
        held = None
        try:
            held = await self.budgets.hold(tenant, billing, chain, images, steps, budget_s)
            if held is None:
                return decision, None
            afforded = Afforded(held.tier, held.used)
            verdict = budget_rules(decision, tenant.budget, afforded)
            if verdict.decision is None and cache is not None:
                stored = await self._stored(decision)
                if stored:
                    verdict = budget_rules(decision, tenant.budget, afforded._replace(stored=stored))
            # served nothing, or only what is stored: out of money, or a brownout that
            # allows no tier of this chain while money is left — said as what it is
            said = refused_state(tenant.budget, held.tier, held.used) if verdict.state == "exhausted" else None
            if verdict.decision is None:
                raise self.budgets.refusal(held, tenant.budget.downgrade_at if said == "brownout" else None)
            cap, state = None, said or verdict.state
            if said is not None:
                held, cap = await self.budgets.hold_hit(tenant, held, billing, images, budget_s)
        except RouterError:
            self.tenants.count(tenant.name, "over_budget")
            raise
        except BaseException:  # cancelled (the client left) while it held: given back
            if held is not None:
                self.budgets.settle(held, 0)
            raise
        self.budgets.decided(held, state)
        return verdict.decision, Spend(held, verdict.skipped, state, cap)

    async def _stored(self, decision: Decision) -> frozenset[str]:
        """The tiers of the chain already in the result store (one bounded lookup). A
        look only, not counted as a hit: the walk that serves the stored tier looks it up
        again and counts that one."""
        plan = decision.cache
        if plan is None or not plan.lookup:
            return frozenset()
        tiers = [decision.table.models[name] for name in budget_chain(decision)]
        deadline = self.clock() + decision.route.budget_ms / 1000
        found = await self.coordinator.lookup_chain(
            decision.route, tiers, decision.request, plan, deadline, count=False
        )
        return frozenset(found.hits) if found is not None else frozenset()

    async def _run(
        self, decision: Decision, admission: Admission | None, cache: ResultCache | None, spend: Spend | None = None
    ) -> Served:
        self.hooks.before(decision, cache)
        try:
            served = await self.dispatcher.serve(decision, admission.hold if admission is not None else None)
        except RouterError as exc:
            self.hooks.failed(decision, exc)
            if spend is not None:
                self.budgets.settle(spend.held, 0)  # nothing was made: the hold is given back
            raise
        except BaseException:
            if spend is not None:  # cancelled (the client left): whatever ran is not known here
                self.budgets.settle(spend.held, 0)
            raise
        self.hooks.after(decision, served, cache)
        changes: dict[str, Any] = {} if decision.priority is None else {"priority": decision.priority}
        billing = decision.table.billing
        if billing is not None:
            usage = bill(billing, served, decision.request)
            if spend is not None:
                usage = spend.charge(usage)
            self.budgets.record(decision.tenant, decision.route.name, served.model.name, usage)
            if spend is not None:
                self.budgets.settle(spend.held, usage.cost.total)
                changes["fallback"] = spend.skipped + served.fallback
            if billing.usage_in_response:
                changes["usage"] = usage
        if admission is not None:
            self.tenants.count(decision.tenant, "served")
            headers = {**admission.headers, **spend.headers()} if spend is not None else admission.headers
            changes.update(tenant=decision.tenant, limit_headers=headers)
        return dataclasses.replace(served, **changes) if changes else served  # one copy, or none

    @staticmethod
    def draw(n: int) -> tuple[int, ...]:
        """``n`` fresh random seeds (consecutive from one draw). A seed is not a secret
        (answers name it), so Python's own generator draws it, seeded from the OS at
        start and again in every forked or spawned process; ``secrets`` asked the OS on
        every request (1.5 % of a request's CPU)."""
        return consecutive_seeds(random.getrandbits(31), n)

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
        """:meth:`serve` with the request value's fields as keywords (tests, embedders)."""
        ask = Ask(facts, request, started, tenant, canary, priority, cache_control, budget_s, random_seeds, query or {})
        return await self.serve(ask)

    # -- operators ---------------------------------------------------------------------

    def pregenerate(self, items: list[dict[str, Any]]) -> dict[str, int]:
        """Queue each item for every arm of the route it selects (see :mod:`image_router.pregen`)."""
        from image_router.pregen import pregenerate

        return pregenerate(self, items)

    def explain(self, facts: RequestFacts, query: Mapping[str, str] | None = None) -> dict[str, Any]:
        """What the active table would do with ``facts`` — by the same decisions serving
        makes — with live forecasts (no backend call)."""
        table = self._table

        def forecast_s(name: str) -> float | None:
            forecast = self.dispatcher.forecast(table.models[name])
            return None if forecast is None else forecast.expected_s

        ask = Ask.of(facts, ImageRequest((facts.prompt or " ",)), None, query=query)
        serving = self.rollouts.route_for
        return explain(table, ask, forecast_s, serving)

    async def aclose(self) -> None:
        with contextlib.suppress(TimeoutError):  # settlements in flight land first (bounded)
            async with asyncio.timeout(5.0):
                await self.budgets.drain()
        await self.rollouts.aclose()
        await self.fill.aclose()
        await self.pool.aclose()
        if self.cache is not None:
            await self.cache.aclose()
        if self.state_store is not None:
            await self.state_store.aclose()


def _same_store(a: CacheConfig, b: CacheConfig) -> bool:
    return (a.store, a.max_bytes, a.timeout_s) == (b.store, b.max_bytes, b.timeout_s)
