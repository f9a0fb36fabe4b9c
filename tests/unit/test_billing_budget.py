"""Budget windows, the budget phase of a decision, and the replica's budget gate with a
store that answers, refuses or does not answer (fail open / closed)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from image_router.backends import ImageRequest
from image_router.billing.budget import quotes, window
from image_router.billing.gate import BudgetGate
from image_router.billing.spec import Billing, Budget, BudgetLimit
from image_router.config import compile_text
from image_router.config.table import Tenant
from image_router.decide import budget_chain, budget_phase
from image_router.errors import InsufficientQuota, StoreUnavailable
from image_router.state import SqliteState
from image_router.state.guard import GuardedState

SAT = dt.datetime(2026, 12, 5, 13, 30, tzinfo=dt.UTC).timestamp()  # a Saturday
BILLING = Billing(quote_margin=1.25)
ROUTES = """
backends:
  triton: {url: "http://127.0.0.1:8000"}
billing: {}
models:
  quality: {backend: triton, latency_hint_ms: 2000, price: {per_image: 0.04}}
  draft: {backend: triton, latency_hint_ms: 100, price: {per_image: 0.004}}
default_route: {name: default, model: quality, fallback: [draft]}
"""


def test_windows_are_named_by_their_period_and_expire_a_week_after_it() -> None:
    day = window("acme", BudgetLimit("day", 50), SAT)
    assert day.key == "b:acme:day:20261205" and day.limit == 50_000_000
    assert day.resets_at == dt.datetime(2026, 12, 6, tzinfo=dt.UTC).timestamp()
    assert day.ttl_s == int(day.resets_at - SAT) + 7 * 86400
    assert window("acme", BudgetLimit("week", 1), SAT).key == "b:acme:week:20261130"  # ISO: from Monday
    month = window("acme", BudgetLimit("month", 1), SAT)
    assert month.key == "b:acme:month:202612" and month.resets_at == dt.datetime(2027, 1, 1, tzinfo=dt.UTC).timestamp()
    short = window("acme", BudgetLimit("3s", 1), 1000.5)
    assert short.key == "b:acme:d3s:333" and short.resets_at == 1002


def test_budget_phase_serves_from_the_affordable_tier_and_tags_the_skipped() -> None:
    from image_router.decide import Decision
    from image_router.policy.split import Choice

    table = compile_text(ROUTES, env={})
    route = table.default
    decision = Decision(table, route, Choice(route.arms[0], False), ImageRequest(("a",)), None, None, "acme")
    assert budget_chain(decision) == ["quality", "draft"]
    same, skipped = budget_phase(decision, 0)
    assert same is decision and skipped == ()
    cheaper, skipped = budget_phase(decision, 1)
    assert cheaper.intended == "draft" and cheaper.route.fallback == () and skipped == (("quality", "budget"),)
    chain = [table.models[name] for name in budget_chain(decision)]
    assert quotes(BILLING, chain, 2, None) == [100_000, 10_000]  # 2 x price x 1.25 margin


def _tenant(amount: float, on_exhausted: str = "downgrade", fail: str = "open") -> Tenant:
    return Tenant("acme", (), budget=Budget((BudgetLimit("day", amount),), on_exhausted=on_exhausted, fail=fail))


class Down:
    """A guarded store whose server does not answer."""

    async def reserve(self, keys: list[str], args: list[int]) -> None:
        return None

    async def settle(self, keys: list[str], args: list[int], bound_s: float = 1.0) -> None:
        return None


def test_the_gate_downgrades_refuses_and_settles_once(tmp_path: Path) -> None:
    """0.1 a day: quality's quote (0.05) fits, settled at its price 0.04; 0.06 left:
    quality again; 0.02 left: draft (quote 0.005) four times; 0.004 left: 429."""
    table = compile_text(ROUTES, env={})
    chain = [table.models["quality"], table.models["draft"]]

    async def run() -> None:
        store = GuardedState(SqliteState(tmp_path / "s.db"), 1.0)
        gate = BudgetGate(lambda: store, wall=lambda: SAT)
        tiers = []
        for _ in range(10):
            try:
                held = await gate.reserve(_tenant(0.1), BILLING, chain, 1, None, 5.0)
            except InsufficientQuota as exc:
                assert exc.headers["x-should-retry"] == "false" and exc.status == 429
                tiers.append(-1)
                break
            assert held is not None
            tiers.append(held.tier)
            gate.settle(held, 40_000 if held.tier == 0 else 4_000)
            gate.settle(held, 40_000 if held.tier == 0 else 4_000)  # a replay: counted once
            await gate.drain()
        assert tiers == [0, 0, 1, 1, 1, 1, -1], tiers
        assert await store.read_counts("b:acme:day:20261205") == {"spent": 96_000, "reserved": 0}
        await store.aclose()

    asyncio.run(run())


def test_store_down_fails_closed_or_open_within_the_last_available() -> None:
    """closed: 503 store_unavailable. open: admitted against this replica's shadow of the
    last available amount the store gave (none seen: admitted), spent down locally."""
    table = compile_text(ROUTES, env={})
    chain = [table.models["draft"]]

    async def run() -> None:
        gate = BudgetGate(lambda: Down(), wall=lambda: SAT)  # type: ignore[arg-type,return-value]
        with pytest.raises(StoreUnavailable):
            await gate.reserve(_tenant(1, fail="closed"), BILLING, chain, 1, None, 5.0)
        held = await gate.reserve(_tenant(1), BILLING, chain, 1, None, 5.0)
        assert held is not None and held.local
        gate._shadow["acme"] = 12_000  # the store's last word: 0.012 left
        for _ in range(2):
            assert await gate.reserve(_tenant(1), BILLING, chain, 1, None, 5.0) is not None
        with pytest.raises(InsufficientQuota):
            await gate.reserve(_tenant(1), BILLING, chain, 1, None, 5.0)

    asyncio.run(run())


def test_a_reservation_made_while_the_store_was_down_has_no_spend_headers() -> None:
    from image_router.billing.gate import Reservation

    held = Reservation("acme", "bres:x", [window("acme", BudgetLimit("day", 1), SAT)], 0, 10, [], local=True)
    assert held.headers() == {}
    held.available = [250_000]
    assert held.headers()["x-ratelimit-remaining-spend"] == "0.250000"
