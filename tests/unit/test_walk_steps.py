"""The walk's pure parts — how a planned tier is tried (``dispatch/steps.py``) and how a
walk ends (``dispatch/outcome.py``) — as plain functions over values; then the two
things a caller gets from :meth:`Dispatcher.serve` beyond the answer, on virtual time
with a fake backend and an in-memory store: cache scopes that never read each other's
entries, and the ``hold`` hook that outlives a request that left."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from image_router.backends.base import ImageRequest, ImageResult
from image_router.backends.pool import BackendPool
from image_router.cache.coordinate import Coordinator
from image_router.cache.service import ResultCache
from image_router.cache.store import GuardedStore
from image_router.config import compile_text
from image_router.config.table import Route
from image_router.decide import Decision
from image_router.dispatch import CachePlan, Dispatcher
from image_router.dispatch.outcome import Answer, Progress, failure, served
from image_router.dispatch.steps import Step, later_tiers, next_step
from image_router.errors import AllTiersFailed, BudgetExhausted, Overloaded
from image_router.policy.forecast import Forecast
from image_router.policy.split import Choice
from image_router.stats import LatencyStats
from tests.unit.test_cache_dispatch import ROUTES, MemoryStore
from tests.unit.test_dispatch import FakeBackend
from tests.virtual_time import virtual_time

TABLE = compile_text(ROUTES, env={})


def forecast(floor_s: float, expected_s: float | None = None) -> Forecast:
    expected = floor_s if expected_s is None else expected_s
    return Forecast(expected, floor_s, expected, expected, floor_s, 0)


# -- steps -------------------------------------------------------------------------------


def test_a_stored_tier_is_a_hit_whatever_else_holds() -> None:
    assert next_step("q", {"q"}, {"q"}, True, ["p"]) is Step.HIT
    assert next_step("q", {"q"}, set(), False, []) is Step.HIT


def test_a_keyed_tier_is_made_in_a_flight_unless_the_route_can_hedge_it() -> None:
    assert next_step("q", set(), {"q"}, False, ["p"]) is Step.FLIGHT
    assert next_step("q", set(), {"q"}, True, []) is Step.FLIGHT  # nothing left to hedge with
    assert next_step("q", set(), {"q"}, True, ["p"]) is Step.HEDGE


def test_an_unkeyed_tier_is_hedged_only_with_a_later_tier_left() -> None:
    assert next_step("q", {"p"}, {"p"}, True, ["p"]) is Step.HEDGE
    assert next_step("q", set(), set(), True, []) is Step.SINGLE
    assert next_step("q", set(), set(), False, ["p"]) is Step.SINGLE


def test_later_tiers_are_those_the_budget_policy_would_not_call_a_sure_miss() -> None:
    known = {"p": forecast(0.05, expected_s=0.4), "d": forecast(0.2), "x": forecast(0.1)}
    # p's typical time does not fit, but its fastest does: still a hedge target
    assert later_tiers(["p", "d", "x"], known, 0.1) == ["p", "x"]
    assert later_tiers(["p", "d", "x"], known, 0.01) == []
    assert later_tiers([], known, 1.0) == []


# -- outcome -----------------------------------------------------------------------------


def route(name: str) -> Route:
    found = TABLE.route_named(name)
    assert found is not None
    return found


def decision(canary: bool = False) -> Decision:
    r = route("tight")
    choice = Choice(replace(r.arms[0], canary=canary), False)
    return Decision(TABLE, r, choice, ImageRequest(("a cat",), seeds=(7,)), None, None)


def result(stored_at: float | None = None) -> ImageResult:
    return ImageResult(np.zeros((1, 2, 2, 3), np.uint8), "1", stored_at=stored_at)


def test_an_answer_passes_over_only_the_other_tiers_and_reports_its_times() -> None:
    progress = Progress(10.0, 10.1, reasons=[("quality", "slow"), ("preview", "timeout")])
    progress.attempts, progress.first_attempt_at, progress.backend_s, progress.cache = 2, 10.02, 0.05, "MISS"
    answer = Answer(TABLE.models["preview"], result(), (7,), hedged=True)
    out, downgrade = served(decision(), answer, progress, now=10.08, wall_now=500.0)
    assert out.model.name == "preview" and out.fallback == (("quality", "slow"),)
    assert out.attempts == 2 and out.hedged and out.cache == "MISS" and out.seeds == (7,)
    assert out.queue_s == pytest.approx(0.02) and out.total_s == pytest.approx(0.08) and out.age_s == 0.0
    assert downgrade is not None and downgrade.served_by == "preview" and downgrade.reasons == (("quality", "slow"),)


def test_the_intended_tier_answering_is_no_downgrade_and_a_stored_result_has_an_age() -> None:
    progress = Progress(10.0, 10.1)
    out, downgrade = served(
        decision(canary=True), Answer(TABLE.models["quality"], result(stored_at=480.0), (7,)), progress, 10.0, 500.0
    )
    assert downgrade is None and out.fallback == () and out.canary
    assert out.queue_s == 0.0 and out.age_s == 20.0  # never attempted: no queueing either


def test_nothing_tried_because_of_queued_work_is_shedding_with_a_retry_after() -> None:
    progress = Progress(0.0, 0.1, reasons=[("quality", "busy"), ("draft", "slow")], drain_s=1.2)
    error, downgrade = failure("tight", progress, now=0.0)
    assert isinstance(error, Overloaded) and error.retry_after_s == 2
    assert "100 ms budget" in error.message and "quality:busy, draft:slow" in error.message
    assert downgrade.served_by is None and downgrade.reasons == (("quality", "busy"), ("draft", "slow"))


def test_a_timeout_or_a_spent_budget_is_budget_exhausted_anything_else_all_tiers_failed() -> None:
    timed_out = Progress(0.0, 0.1, reasons=[("quality", "timeout")], attempts=1)
    assert isinstance(failure("tight", timed_out, now=0.05)[0], BudgetExhausted)
    spent = Progress(0.0, 0.1, reasons=[("quality", "unavailable")], attempts=1)
    assert isinstance(failure("tight", spent, now=0.1)[0], BudgetExhausted)
    failed, _ = failure("tight", spent, now=0.05)
    assert isinstance(failed, AllTiersFailed) and failed.details["attempts"] == 1
    tried = Progress(0.0, 0.1, reasons=[("quality", "full"), ("draft", "unavailable")], attempts=1)
    assert isinstance(failure("tight", tried, now=0.05)[0], AllTiersFailed)  # an attempt was made: not shed


def test_an_overloaded_skip_notes_the_soonest_drain() -> None:
    progress = Progress(0.0, 1.0)
    known = {"q": forecast(0.5, expected_s=3.0), "p": forecast(0.5, expected_s=1.5), "d": forecast(0.1)}
    progress.skip((("p", "full"), ("q", "busy"), ("d", "slow")), known, 1.0)
    assert progress.drain_s == pytest.approx(0.5) and len(progress.reasons) == 3


# -- Dispatcher.serve: scopes and hold ------------------------------------------------------


def dispatcher(behaviour: dict[str, Any]) -> tuple[Dispatcher, FakeBackend, MemoryStore, ResultCache]:
    clock = asyncio.get_running_loop().time
    fake = FakeBackend(behaviour, clock)
    pool = BackendPool(lambda spec: fake)  # type: ignore[arg-type,return-value]
    pool.sync(TABLE.backends)
    store = MemoryStore()
    assert TABLE.cache is not None
    cache = ResultCache(TABLE.cache, GuardedStore(store, TABLE.cache.timeout_s, clock))  # type: ignore[arg-type]
    coordinator = Coordinator(pool, clock)
    coordinator.cache = cache
    return Dispatcher(pool, LatencyStats(clock), clock, stored=coordinator), fake, store, cache


def cached(scope: str = "", name: str = "roomy") -> Decision:
    r = route(name)
    plan = CachePlan(lookup=True, store=True, ttl_s=60.0, scope=scope)
    return Decision(TABLE, r, Choice(r.arms[0], False), ImageRequest(("a cat",), seeds=(7,)), None, plan)


@virtual_time
async def test_entries_of_one_scope_are_never_read_by_another() -> None:
    d, fake, store, cache = dispatcher({"quality": 0.1, "preview": 0.03, "draft": 0.01})
    first = await d.serve(cached(scope="acme"))
    await cache.drain()
    shared = await d.serve(cached())
    await cache.drain()
    again = await d.serve(cached(scope="acme"))
    other = await d.serve(cached(scope="globex"))
    assert (first.cache, shared.cache, again.cache, other.cache) == ("MISS", "MISS", "HIT", "MISS")
    assert len(fake.calls) == 3
    await cache.drain()
    assert sorted(key.rsplit("@1|", 1)[1].count("|") for key in store.data) == [1, 2, 2]  # shared, acme, globex
    assert sum(key.endswith("|acme") for key in store.data) == 1


@virtual_time
async def test_hold_gets_the_flight_a_request_leads_and_it_outlives_the_request() -> None:
    d, fake, store, cache = dispatcher({"quality": 0.5, "preview": 0.03, "draft": 0.01})
    held: list[asyncio.Future[Any]] = []
    follower_held: list[asyncio.Future[Any]] = []
    leader = asyncio.ensure_future(d.serve(cached(), hold=held.append))
    await asyncio.sleep(0)
    follower = asyncio.ensure_future(d.serve(cached(), hold=follower_held.append))
    await asyncio.sleep(0.1)
    leader.cancel()  # the client left
    with pytest.raises(asyncio.CancelledError):
        await leader
    assert len(held) == 1 and not held[0].done() and follower_held == []
    await held[0]  # the generation goes on for the follower, and for the store
    assert isinstance(held[0].result(), ImageResult) and (await follower).cache == "COALESCED"
    await cache.drain()
    assert [m for m, _ in fake.calls] == ["quality"] and len(store.data) == 1


@virtual_time
async def test_an_uncached_route_holds_nothing() -> None:
    d, _fake, _store, _cache = dispatcher({"quality": 0.01, "preview": 0.01, "draft": 0.01})
    held: list[asyncio.Future[Any]] = []
    r = route("roomy")
    plain = Decision(TABLE, r, Choice(r.arms[0], False), ImageRequest(("a cat",), seeds=(7,)), None, None)
    out = await d.serve(plain, hold=held.append)
    assert out.cache is None and held == []
