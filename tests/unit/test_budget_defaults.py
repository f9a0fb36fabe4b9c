"""``tenants.budget_defaults``: the budget of every tenant that gives none of its own; a
tenant's own budget wins whole (never merged field by field), ``budget: null`` opts
out; its mistakes are config errors at their lines (in a tenants file, that file's);
and a defaulted tenant is held to the default by the gate (SQLite store)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from image_router.billing.gate import BudgetGate
from image_router.billing.spec import Budget, BudgetLimit
from image_router.config import compile_text
from image_router.config.compile import compile_sources
from image_router.config.sources import gather
from image_router.errors import ConfigError
from image_router.state import SqliteState
from image_router.state.guard import GuardedState

SAT = dt.datetime(2026, 12, 5, 13, 30, tzinfo=dt.UTC).timestamp()
KEYS = {name: f"{name}-0123456789abcdef" for name in ("plain", "own", "free")}
HEAD = """
backends:
  triton: {url: "http://127.0.0.1:8000"}
billing: {quote_margin: 1.0}
models:
  quality: {backend: triton, latency_hint_ms: 2000, price: {per_image: 0.04}}
  draft: {backend: triton, latency_hint_ms: 100, price: {per_image: 0.004}}
default_route: {name: default, model: quality, fallback: [draft]}
"""
TENANTS = f"""
tenants:
  mode: keys
  budget_defaults:
    limits: [{{per: day, amount: 0.05}}, {{per: month, amount: 1}}]
    on_exhausted: downgrade
    warn_at: 0.5
  tenants:
    plain: {{keys: ["{KEYS["plain"]}"]}}
    own:
      keys: ["{KEYS["own"]}"]
      budget: {{limits: [{{per: 1h, amount: 10}}]}}
    free:
      keys: ["{KEYS["free"]}"]
      budget: null
"""


def test_a_tenant_without_a_budget_gets_the_defaults_and_its_own_wins_whole() -> None:
    table = compile_text(HEAD + TENANTS, env={})
    budgets = {t.name: t.budget for t in table.tenants}
    assert budgets["plain"] == Budget(
        (BudgetLimit("day", 0.05), BudgetLimit("month", 1.0)), warn_at=0.5, on_exhausted="downgrade"
    )
    assert budgets["own"] == Budget((BudgetLimit("3600s", 10.0),)), "its own: no default field merged in"
    assert budgets["free"] is None, "budget: null opts out of the defaults"
    assert table.state is not None, "a defaulted budget needs the state store"


def test_the_defaults_hold_a_defaulted_tenant(tmp_path: Path) -> None:
    """plain's default $0.05/day, downgrade: quality ($0.04) once, then only draft, then
    nothing; own ($10/h) is not held to it."""
    table = compile_text(HEAD + TENANTS, env={})
    chain = [table.models["quality"], table.models["draft"]]
    tenants = {t.name: t for t in table.tenants}
    assert table.billing is not None

    async def run() -> list[int]:
        store = GuardedState(SqliteState(tmp_path / "s.db"), 1.0)
        gate = BudgetGate(lambda: store, wall=lambda: SAT)
        tiers = []
        for name in ("plain", "plain", "plain", "plain", "own", "own"):
            held = await gate.hold(tenants[name], table.billing, chain, 1, None, 5.0)  # type: ignore[arg-type]
            assert held is not None
            tiers.append(held.tier)
        await store.aclose()
        return tiers

    # quality holds 0.04 (max of the chain), draft 0.004 twice, then 0.002 left: nothing
    assert asyncio.run(run()) == [0, 1, 1, -1, 0, 0]


@pytest.mark.parametrize(
    ("tenants", "issue"),
    [
        (
            "tenants:\n  budget_defaults:\n    limits: [{per: fortnight, amount: 5}]\n",
            "routes.yaml:11:15 tenants.budget_defaults.limits[0].per: String should match pattern "
            "'^(day|week|month|[0-9]+[smhd])$'",
        ),
        (
            "tenants:\n  budget_defaults:\n    limits: [{per: day, amount: 5}]\n    downgrade_to: [draft, nope]\n",
            "routes.yaml:12:27 tenants.budget_defaults.downgrade_to[1]: unknown model 'nope' "
            "(downgrade_to names models a brownout may serve)",
        ),
        (
            "tenants:\n  budget_defaults: {limits: []}\n",
            "routes.yaml:10:21 tenants.budget_defaults.limits: List should have at least 1 item after validation, "
            "not 0",
        ),
    ],
)
def test_bad_defaults_are_refused_at_their_line(tenants: str, issue: str) -> None:
    with pytest.raises(ConfigError) as info:
        compile_text(HEAD + tenants, env={})
    assert [str(i) for i in info.value.issues] == [issue]


def test_defaults_without_billing_are_refused() -> None:
    text = HEAD.replace("billing: {quote_margin: 1.0}\n", "") + TENANTS
    with pytest.raises(ConfigError) as info:
        compile_text(text, env={})
    got = [str(i) for i in info.value.issues if "budget_defaults" in str(i)]
    assert got == ["routes.yaml:11:3 tenants.budget_defaults: a budget needs a billing block to price images"]


def test_defaults_in_a_tenants_file_are_read_and_refused_at_that_files_line(tmp_path: Path) -> None:
    routes = tmp_path / "routes.yaml"
    routes.write_text(HEAD + "tenants: {file: tenants.yaml}\n")
    (tmp_path / "tenants.yaml").write_text(TENANTS.replace("tenants:\n  mode", "mode", 1).replace("\n  ", "\n"))
    table = compile_sources(gather(routes.read_text(), str(routes), {}), {})
    assert {t.name: t.budget is not None for t in table.tenants} == {"plain": True, "own": True, "free": False}
    (tmp_path / "tenants.yaml").write_text(
        f"mode: keys\nbudget_defaults:\n  limits: [{{per: day, amount: 1}}]\n  downgrade_to: [nope]\n"
        f'tenants:\n  plain: {{keys: ["{KEYS["plain"]}"]}}\n'
    )
    with pytest.raises(ConfigError) as info:
        compile_sources(gather(routes.read_text(), str(routes), {}), {})
    assert [str(i) for i in info.value.issues] == [
        f"{tmp_path / 'tenants.yaml'}:4:18 budget_defaults.downgrade_to[0]: unknown model 'nope' "
        "(downgrade_to names models a brownout may serve)"
    ]
