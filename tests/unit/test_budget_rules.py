"""A budget's rules as pure decisions (``warn_at``, ``downgrade_at``/``downgrade_to``,
``on_exhausted``, stored tiers for an exhausted tenant), the share of a window a store
reply says is used, and the gate's hit reservation and charge cap on a SQLite store."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from pathlib import Path
from typing import NamedTuple

import pytest

from image_router.ask import Ask
from image_router.backends import ImageRequest
from image_router.billing.budget import hit_quote, used_share, window
from image_router.billing.gate import BudgetGate, Reservation, Spend
from image_router.billing.price import Cost
from image_router.billing.spec import Billing, Budget, BudgetLimit
from image_router.billing.usage import Usage
from image_router.cache.store import GuardedStore
from image_router.config import compile_text
from image_router.config.table import Tenant
from image_router.decide import Afforded, Decision, budget_rules
from image_router.errors import InsufficientQuota
from image_router.gateway import Gateway
from image_router.policy.match import RequestFacts
from image_router.policy.split import Choice
from image_router.served import Served
from image_router.state import SqliteState
from image_router.state.guard import GuardedState

SAT = dt.datetime(2026, 12, 5, 13, 30, tzinfo=dt.UTC).timestamp()
ROUTES = """
backends:
  triton: {url: "http://127.0.0.1:8000"}
billing: {}
models:
  quality: {backend: triton, latency_hint_ms: 2000, price: {per_image: 0.04}}
  preview: {backend: triton, latency_hint_ms: 500, price: {per_image: 0.01}}
  draft: {backend: triton, latency_hint_ms: 100, price: {per_image: 0.004}}
default_route: {name: default, model: quality, fallback: [preview, draft]}
routes:
  - {name: lone, match: {model: lone}, model: quality}
"""
DAY = (BudgetLimit("day", 1.0),)


def _decision(route: str = "default") -> Decision:
    table = compile_text(ROUTES, env={})
    chosen = table.default if route == "default" else next(r for r in table.routes if r.name == route)
    return Decision(table, chosen, Choice(chosen.arms[0], False), ImageRequest(("a",)), None, None, "acme")


def _served(budget: Budget, afforded: Afforded, route: str = "default") -> tuple[str | None, tuple[str, ...], str]:
    """Which model serves, what follows it, and the state."""
    got = budget_rules(_decision(route), budget, afforded)
    if got.decision is None:
        assert got.skipped == ()
        return None, (), got.state
    return got.decision.intended, got.decision.route.fallback, got.state


def test_below_every_threshold_the_affordable_tier_serves_and_says_ok() -> None:
    budget = Budget(DAY, warn_at=0.8, downgrade_at=0.9, on_exhausted="downgrade")
    decision = _decision()
    got = budget_rules(decision, budget, Afforded(0, 0.79))
    assert got.decision is decision and (got.skipped, got.state) == ((), "ok")
    assert _served(budget, Afforded(1, 0.5)) == ("preview", ("draft",), "ok")


def test_warn_at_is_said_at_its_share_and_changes_no_tier() -> None:
    budget = Budget(DAY, warn_at=0.8, on_exhausted="downgrade")
    assert _served(budget, Afforded(0, 0.8)) == ("quality", ("preview", "draft"), "warn")
    assert _served(budget, Afforded(0, 0.7999)) == ("quality", ("preview", "draft"), "ok")
    assert _served(Budget(DAY), Afforded(0, 0.99)) == ("quality", ("preview", "draft"), "ok"), "no warn_at: ok"


def test_downgrade_at_serves_only_the_downgrade_tiers_tagged_budget() -> None:
    """Brownout: the fallbacks by default (the first at or after the affordable tier),
    or the named ``downgrade_to`` tiers; the tiers before are skipped as ``budget``."""
    budget = Budget(DAY, warn_at=0.5, downgrade_at=0.9)  # reject on exhaustion: brownout still downgrades
    got = budget_rules(_decision(), budget, Afforded(0, 0.9))
    assert got.decision is not None
    assert (got.decision.intended, got.decision.route.fallback, got.state) == ("preview", ("draft",), "brownout")
    assert got.skipped == (("quality", "budget"),) and got.decision.rollout is False
    named = dataclasses.replace(budget, downgrade_to=("draft",))
    got = budget_rules(_decision(), named, Afforded(0, 0.95))
    assert got.decision is not None and got.decision.intended == "draft"
    assert got.skipped == (("quality", "budget"), ("preview", "budget")) and got.state == "brownout"
    assert _served(named, Afforded(0, 0.89)) == ("quality", ("preview", "draft"), "warn"), "below: as usual"


def test_brownout_with_nothing_cheaper_on_the_chain() -> None:
    """A route of one tier has nothing cheaper: by default it serves as it would; a
    ``downgrade_to`` naming no tier of the chain refuses (429)."""
    budget = Budget(DAY, downgrade_at=0.9)
    assert _served(budget, Afforded(0, 0.95), "lone") == ("quality", (), "brownout")
    named = dataclasses.replace(budget, downgrade_to=("draft",))
    assert _served(named, Afforded(0, 0.95), "lone") == (None, (), "exhausted")


def test_reject_takes_no_exhaustion_downgrade_but_downgrade_mode_does() -> None:
    """The store may answer a later tier (a brownout budget quotes the whole chain):
    without a brownout, ``reject`` refuses it and ``downgrade`` serves it."""
    reject = Budget(DAY, downgrade_at=0.99)
    assert _served(reject, Afforded(1, 0.5)) == (None, (), "exhausted")
    downgrade = dataclasses.replace(reject, on_exhausted="downgrade")
    assert _served(downgrade, Afforded(1, 0.5)) == ("preview", ("draft",), "ok")


def test_an_exhausted_tenant_is_served_what_is_stored_alone() -> None:
    """Nothing affordable: the first stored tier serves, with no fallback (a miss there
    must not generate); ``reject`` only its intended tier; nothing stored: refused."""
    downgrade = Budget(DAY, on_exhausted="downgrade")
    got = budget_rules(_decision(), downgrade, Afforded(-1, 1.0, frozenset({"preview", "draft"})))
    assert got.decision is not None and got.state == "exhausted"
    assert (got.decision.intended, got.decision.route.fallback) == ("preview", ())
    assert got.skipped == (("quality", "budget"),)
    assert _served(downgrade, Afforded(-1, 1.0, frozenset({"quality"}))) == ("quality", (), "exhausted")
    assert _served(downgrade, Afforded(-1, 1.0)) == (None, (), "exhausted")
    reject = Budget(DAY)
    assert _served(reject, Afforded(-1, 1.0, frozenset({"preview"}))) == (None, (), "exhausted")
    assert _served(reject, Afforded(-1, 1.0, frozenset({"quality"}))) == ("quality", (), "exhausted")


def test_used_share_is_the_fullest_window_before_this_request() -> None:
    day = window("acme", BudgetLimit("day", 1.0), SAT)
    month = window("acme", BudgetLimit("month", 10.0), SAT)
    # day: 1.0 - 0.1 held by this one - 0.2 left = 0.7 used before; month: 10 - 0.1 - 9.5 = 0.4 -> 0.04
    assert used_share([day, month], [200_000, 9_500_000], 100_000) == pytest.approx(0.7)
    assert used_share([], [], 0) == 0.0


def _usage(total_per_image: int) -> Usage:
    return Usage(1, 1, 0, "cache", Cost(cache_hits=total_per_image), "USD")


def test_spend_headers_and_the_charge_cap() -> None:
    held = Reservation("acme", "bres:x", [window("acme", BudgetLimit("day", 1), SAT)], 0, 10, [250_000])
    assert Spend(held, (), "warn").headers()["x-router-budget"] == "warn"
    assert Spend(dataclasses.replace(held, available=[], local=True), (), "warn").headers() == {}
    assert Spend(held, ()).charge(_usage(500)).cost.total == 500, "no cap"
    assert Spend(held, (), "exhausted", 500).charge(_usage(500)).cost.total == 500
    assert Spend(held, (), "exhausted", 499).charge(_usage(500)).cost == Cost(), "over the cap: free"


def test_the_gate_reserves_a_hit_and_refuses_with_the_exhausted_state(tmp_path: Path) -> None:
    """A tenant with 0.001 left: the chain does not fit (tier -1, nothing held); a hit
    priced 0.0005 (quote 0.000625) does and is held; one priced 0.002 does not: cap 0.
    The refusal says ``exhausted`` and gives back what a refused hold held."""
    table = compile_text(ROUTES, env={})
    chain = [table.models[name] for name in ("quality", "preview", "draft")]
    tenant = Tenant("acme", (), budget=Budget((BudgetLimit("day", 0.001),), on_exhausted="downgrade"))
    cheap, dear = Billing(cache_hit_price=0.0005), Billing(cache_hit_price=0.002)
    assert hit_quote(cheap, 1) == 625 and hit_quote(Billing(), 3) == 0

    async def run() -> None:
        store = GuardedState(SqliteState(tmp_path / "s.db"), 1.0)
        gate = BudgetGate(lambda: store, wall=lambda: SAT)
        held = await gate.hold(tenant, cheap, chain, 1, None, 5.0)
        assert held is not None and (held.tier, held.amount, held.available) == (-1, 0, [1_000])
        assert held.used == pytest.approx(0.0)
        hit, cap = await gate.hold_hit(tenant, held, cheap, 1, 5.0)
        assert (hit.tier, hit.amount, cap, hit.available) == (0, 625, 625, [375])
        none, cap = await gate.hold_hit(tenant, held, dear, 1, 5.0)
        assert (none.tier, cap) == (-1, 0)
        free, cap = await gate.hold_hit(tenant, held, Billing(), 1, 5.0)
        assert (free.amount, cap) == (0, 0)
        error = gate.refusal(hit)
        assert isinstance(error, InsufficientQuota) and error.headers["x-router-budget"] == "exhausted"
        assert error.headers["x-ratelimit-remaining-spend"] == "0.001000", "what was held is given back"
        await gate.drain()
        assert await store.read_counts("b:acme:day:20261205") == {"spent": 0, "reserved": 0}
        await store.aclose()

    asyncio.run(run())


def test_a_brownout_budget_with_reject_quotes_the_whole_chain(tmp_path: Path) -> None:
    """``reject`` quotes only the intended tier, unless ``downgrade_at`` may serve a
    later one: then the store sees the chain and answers the share used."""
    table = compile_text(ROUTES, env={})
    chain = [table.models[name] for name in ("quality", "preview", "draft")]
    plain = Tenant("acme", (), budget=Budget((BudgetLimit("day", 0.03),)))
    brown = Tenant("acme", (), budget=Budget((BudgetLimit("day", 0.03),), downgrade_at=0.5))

    async def run() -> None:
        store = GuardedState(SqliteState(tmp_path / "s.db"), 1.0)
        gate = BudgetGate(lambda: store, wall=lambda: SAT)
        held = await gate.hold(plain, Billing(), chain, 1, None, 5.0)
        assert held is not None and held.tier == -1, "quality's 0.05 does not fit 0.03"
        held = await gate.hold(brown, Billing(), chain, 1, None, 5.0)
        assert held is not None and (held.tier, held.amount) == (1, 12_500)  # max(preview, draft) x 1.25
        assert held.used == pytest.approx(0.0)
        again = await gate.hold(brown, Billing(), chain, 1, None, 5.0)
        assert again is not None and again.used == pytest.approx(12_500 / 30_000)
        await store.aclose()

    asyncio.run(run())


# -- the budget at the gateway: an in-process gateway on fake backends, a SQLite state
# store and an in-memory result store (review findings on `Gateway._spend`)

GATE_ROUTES = """
backends: {{fake: {{url: "http://fake:1"}}}}
billing: {{quote_margin: 1.0, cache_hit_price: 0.001}}
state: {{store: "sqlite://{state}", timeout_ms: 5000}}  # the budget's rules, not the store's bound
cache: {{store: "disk:///unused", timeout_ms: 500}}
models:
  quality: {{backend: fake, latency_hint_ms: 50, version: "1", price: {{per_image: 0.01}}}}
  draft: {{backend: fake, latency_hint_ms: 10, version: "1", price: {{per_image: 0.002}}}}
  other: {{backend: fake, latency_hint_ms: 10, version: "1", price: {{per_image: 0.001}}}}
default_route: {{name: default, model: quality, fallback: [draft], budget_ms: 5000, cache: {{}}}}
tenants:
  mode: keys
  tenants:
    acme:
      keys: ["acme-0123456789abcdef"]
      images_per_day: 100
      budget: {{limits: [{{per: day, amount: 0.0105}}]}}
    brown:
      keys: ["brown-0123456789abcdef"]
      budget: {{limits: [{{per: day, amount: 0.02}}], downgrade_at: 0.5, downgrade_to: [other]}}
"""


class _Harness(NamedTuple):
    gateway: Gateway
    tenants: dict[str, Tenant]

    def ask(self, tenant: str, prompt: str, seed: int) -> Ask:
        request = ImageRequest((prompt,), seeds=(seed,))
        return Ask(RequestFacts(prompt=prompt), request, None, self.tenants[tenant])

    async def serve(self, tenant: str, prompt: str, seed: int) -> Served:
        served = await self.gateway.serve(self.ask(tenant, prompt, seed))
        await asyncio.sleep(0.05)  # the result store's write and the settlement land
        await self.gateway.budgets.drain()
        return served


def _harness(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> _Harness:
    from tests.unit.test_cache_dispatch import MemoryStore
    from tests.unit.test_dispatch import FakeBackend

    clock = asyncio.get_running_loop().time
    fake = FakeBackend({"quality": 0.001, "draft": 0.001, "other": 0.001}, clock)
    store = MemoryStore()
    monkeypatch.setattr("image_router.gateway.open_store", lambda config: GuardedStore(store, config.timeout_s, clock))
    table = compile_text(GATE_ROUTES.format(state=tmp_path / "state.db"), env={})
    gateway = Gateway(table, backend_factory=lambda spec: fake, clock=clock)  # type: ignore[arg-type,return-value]
    return _Harness(gateway, {t.name: t for t in table.tenants})


async def test_an_exhausted_stream_is_admitted_without_the_previews_it_does_not_get(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """acme ($0.0105/day, 100 images/day) makes one quality image ($0.01): a stream of it
    again with a preview is served only what is stored, with no preview — and its daily
    images count the one image sent, not the preview it never got."""
    h = _harness(tmp_path, monkeypatch)
    made = await h.serve("acme", "a cat", 7)
    assert made.limit_headers["x-ratelimit-remaining-images"] == "99"
    main, previews = await h.gateway.stream(h.ask("acme", "a cat", 7), 1)
    served = await main
    assert (served.cache, served.limit_headers["x-router-budget"], previews) == ("HIT", "exhausted", [])
    assert served.limit_headers["x-ratelimit-remaining-images"] == "98", "one image sent, one counted"
    await h.gateway.aclose()


async def test_an_exhausted_tenants_stored_image_is_one_memory_hit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget's look at the store and the walk's own are one hit, not two."""
    h = _harness(tmp_path, monkeypatch)
    await h.serve("acme", "a cat", 7)
    assert h.gateway.cache is not None
    before = h.gateway.cache.hot.hits
    for _ in range(3):
        served = await h.serve("acme", "a cat", 7)
        assert (served.cache, served.limit_headers["x-router-budget"]) == ("HIT", "exhausted")
    assert h.gateway.cache.hot.hits - before == 3
    await h.gateway.aclose()


async def test_a_brownout_that_allows_no_tier_says_brownout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """brown ($0.02/day, downgrade_at 0.5, downgrade_to a model on no tier of the chain)
    makes one quality image ($0.01). Then at 50 %: the same request is served from the
    store — ``brownout``, charged the hit price from what its own hold already held, and
    its remaining spend is what is left with only the hit held ($0.009), not less; a new
    request is refused ``429 insufficient_quota`` saying ``brownout`` (money is left),
    counted ``brownout_refused``, not ``exhausted``."""
    h = _harness(tmp_path, monkeypatch)
    first = await h.serve("brown", "a fox", 3)
    assert (first.model.name, first.limit_headers["x-router-budget"]) == ("quality", "ok")
    hit = await h.serve("brown", "a fox", 3)
    assert (hit.cache, hit.limit_headers["x-router-budget"]) == ("HIT", "brownout")
    assert hit.usage is not None and hit.usage.cost.total == 1_000
    assert hit.limit_headers["x-ratelimit-remaining-spend"] == "0.009000"
    with pytest.raises(InsufficientQuota) as refused:
        await h.gateway.serve(h.ask("brown", "a new fox", 4))
    error = refused.value
    assert error.headers["x-router-budget"] == "brownout" and "brownout" in error.message, error.message
    assert error.headers["x-ratelimit-remaining-spend"] == "0.009000"
    assert h.gateway.budgets.tally.decisions_of("brown") == {"brownout": 1, "brownout_refused": 1, "ok": 1}
    await h.gateway.budgets.drain()
    state = h.gateway.state_store
    assert state is not None
    counts = await state.read_counts(window("brown", BudgetLimit("day", 1), time.time()).key)
    assert counts == {"spent": 11_000, "reserved": 0}, "the hit settled once, every hold given back"
    await h.gateway.aclose()
