"""Operating budgets without sockets: ``downgrade_to`` checked against the models at its
line, a window's state, the Spend card, the billing metrics' families, and credits on
a real SQLite store (never below zero, even when two race)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from image_router.billing.accounts import credit, windows_of
from image_router.billing.budget import standing, window
from image_router.billing.gate import BudgetGate
from image_router.billing.spec import Billing, Budget, BudgetLimit, Price
from image_router.config import compile_text
from image_router.config.table import Model, Tenant
from image_router.errors import ConfigError, StoreUnavailable
from image_router.http.status_page import spend_card
from image_router.state import SqliteState
from image_router.state.guard import GuardedState
from image_router.telemetry import Metrics

ROUTES = """
backends:
  triton: {url: "http://127.0.0.1:8000"}
billing: {currency: USD}
models:
  draft: {backend: triton, price: {per_image: 0.01}}
  noop: {backend: triton, price: {per_image: 0.001}}
default_route: {name: default, model: draft, fallback: [noop]}
tenants:
  mode: keys
  tenants:
    acme:
      keys: ["0123456789abcdefXYZ"]
      budget:
        limits: [{per: day, amount: 1}]
        downgrade_at: 0.5
        downgrade_to: [noop, nope]
"""
WALL = 1_800_000_000.0
BUDGET = Budget((BudgetLimit("day", 0.01), BudgetLimit("month", 1.0)), warn_at=0.5, downgrade_at=0.8)


def test_downgrade_to_names_no_model_refused_at_its_line() -> None:
    """A name that is no model of the table would never match: a brownout would refuse
    every request. The error points at the list item."""
    with pytest.raises(ConfigError) as info:
        compile_text(ROUTES, env={})
    assert [str(issue) for issue in info.value.issues] == [
        "routes.yaml:17:30 tenants.tenants.acme.budget.downgrade_to[1]: unknown model 'nope' "
        "(downgrade_to names models a brownout may serve)"
    ]
    table = compile_text(ROUTES.replace(", nope]", "]"), env={})
    assert table.tenants[0].budget is not None and table.tenants[0].budget.downgrade_to == ("noop",)


@pytest.mark.parametrize(
    ("spent", "reserved", "state"),
    [(0, 0, "ok"), (4999, 0, "ok"), (3000, 2000, "warn"), (8000, 0, "brownout"), (9000, 1000, "exhausted")],
)
def test_a_windows_state_is_its_share_spent_or_held(spent: int, reserved: int, state: str) -> None:
    assert standing(BUDGET, 10_000, spent, reserved) == state


def test_the_spend_card_sums_today_per_tenant_and_model_and_lists_full_windows() -> None:
    rows = [
        {"tenant": "a", "route": "r1", "model": "draft", "images": 2, "cost_micros": 20_000},
        {"tenant": "a", "route": "r2", "model": "draft", "images": 1, "cost_micros": 10_000},
        {"tenant": "b", "route": "r1", "model": "noop", "images": 5, "cost_micros": 5_000},
    ]
    win = {"per": "day", "limit": 1.0, "spent": 0.1, "reserved": 0.0, "remaining": 0.9, "resets_at": 1, "state": "ok"}
    budgets = [
        {"tenant": "a", "windows": [{**win, "used": 0.1}, {**win, "per": "month", "used": 0.85}]},
        {"tenant": "b", "windows": [{**win, "used": 0.6, "state": "warn"}]},
    ]
    card = spend_card({"currency": "USD", "read_at": 5.0, "today": rows, "budgets": budgets})
    assert [(r["tenant"], r["model"], r["images"], r["cost"]) for r in card["today"]] == [
        ("a", "draft", 3, 0.03),
        ("b", "noop", 5, 0.005),
    ]
    assert card["total"] == 0.035 and card["budgets"] == 3
    assert [(w["tenant"], w["per"]) for w in card["near_limit"]] == [("a", "month"), ("b", "day")]


def test_billing_metrics_export_spend_decisions_and_windows() -> None:
    """Spend counters summed over compute sources, images split by cache, decisions,
    and each window's gauges, all from one state read."""
    metrics = Metrics()
    spend = {"tenant": "a", "route": "r", "model": "m", "images": 2, "cached_images": 0}
    state: dict[str, Any] = {
        "billing": {
            "currency": "USD",
            "spend": [
                {**spend, "source": "model", "compute_ns": 1_500_000_000, "cost_micros": 20_000},
                {**spend, "source": "cache", "images": 1, "cached_images": 1, "compute_ns": 0, "cost_micros": 0},
            ],
            "decisions": [{"tenant": "a", "decision": "warn", "count": 3}],
            "budgets": [
                {
                    "tenant": "a",
                    "windows": [{"per": "day", "limit": 1.0, "spent": 0.25, "reserved": 0.1, "remaining": 0.65}],
                }
            ],
        }
    }
    metrics.watch(lambda: state)
    got = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }
    base = (("model", "m"), ("route", "r"), ("tenant", "a"))
    assert got[("router_cost_total", (("currency", "USD"), *base))] == 0.02
    assert got[("router_images_total", (("cache", "miss"), *base))] == 2
    assert got[("router_images_total", (("cache", "hit"), *base))] == 1
    assert got[("router_compute_seconds_total", (*base[:2], ("source", "model"), base[2]))] == 1.5
    assert got[("router_budget_decisions_total", (("decision", "warn"), ("tenant", "a")))] == 3
    window_labels = (("per", "day"), ("tenant", "a"))
    assert [got[(f"router_budget_{k}", window_labels)] for k in ("limit", "spent", "reserved", "remaining")] == [
        1.0,
        0.25,
        0.1,
        0.65,
    ]


def test_a_credit_lowers_spent_never_below_zero_even_when_two_race(tmp_path: Path) -> None:
    """$0.008 spent of the day: two credits of $0.005 at once give back $0.008 in all
    (one of them only what the other left), the month only when asked; a window the
    store never saw credits nothing."""

    async def run() -> None:
        store = GuardedState(SqliteState(tmp_path / "s.db"), 1.0)
        try:
            day, month = (window("acme", limit, WALL) for limit in BUDGET.limits)
            for win in (day, month):
                await store.settle(["br:acme", "bres:x", f"bs:x{win.per}", win.key], [8000, 86400, win.ttl_s])
            first, second = await asyncio.gather(
                credit(store, "acme", BUDGET, "day", 5000, WALL), credit(store, "acme", BUDGET, "day", 5000, WALL)
            )
            assert sorted([first[0].amount, second[0].amount]) == [3000, 5000]
            wins = await windows_of(store, "acme", BUDGET, WALL)
            assert wins is not None and [(w.per, w.spent) for w in wins] == [("day", 0), ("month", 8000)]
            (both_day, both_month) = await credit(store, "acme", BUDGET, None, 1000, WALL)
            assert (both_day.amount, both_month.amount, both_month.spent_before) == (0, 1000, 8000)
            assert (await store.read_counts(month.key) or {}).get("spent") == 7000
            fresh = await credit(store, "newco", BUDGET, "day", 1000, WALL)
            assert [(c.amount, c.spent_before) for c in fresh] == [(0, 0)]
        finally:
            await store.aclose()

    asyncio.run(run())


def test_decisions_are_counted_when_the_store_does_not_answer_and_on_refusal() -> None:
    """No store: ``fail: closed`` counts ``fail_closed`` (and refuses); ``fail: open``
    admits from the shadow and counts ``fail_open`` whatever state the rules named; a
    refusal counts ``exhausted``."""
    draft = Model("draft", "triton", "draft", None, 150.0, price=Price(per_image=0.01))

    async def run() -> dict[tuple[str, str], int]:
        gate = BudgetGate(lambda: None, lambda: WALL)
        closed = Tenant("c", (), budget=Budget((BudgetLimit("day", 1.0),), fail="closed"))
        with pytest.raises(StoreUnavailable):
            await gate.hold(closed, Billing(), [draft], 1, None, 1.0)
        opened = Tenant("o", (), budget=Budget((BudgetLimit("day", 1.0),)))
        held = await gate.hold(opened, Billing(), [draft], 1, None, 1.0)
        assert held is not None and held.local
        gate.decided(held, "ok")
        gate.refusal(held)
        return gate.tally.decisions

    assert asyncio.run(run()) == {("c", "fail_closed"): 1, ("o", "fail_open"): 1, ("o", "exhausted"): 1}
