"""The request path's defects, each reproduced on virtual time with fake backends (pure
timing logic, no sockets; the same promises against real processes are in
tests/integration/test_edge_parity.py):

- a tenant's concurrency limit with a shared store held under a burst (the check, the
  store's round trip and the count once let 12 requests through a limit of 2);
- a reload that removes a route's intended model while a downgraded request runs does
  not turn its served image into a 500 (the upgrade read the *live* table);
- on a cached route, the tenant's slot stays taken while the generation its client left
  goes on."""

from __future__ import annotations

import asyncio

import pytest

from image_router.backends.base import ImageRequest
from image_router.config import compile_text
from image_router.config.table import Tenant
from image_router.errors import RateLimited
from image_router.policy.match import RequestFacts
from tests.unit.test_cache_dispatch import ROUTES as CACHED_ROUTES
from tests.unit.test_cache_dispatch import cached_gateway
from tests.unit.test_dispatch import gateway
from tests.virtual_time import virtual_time


class SlowSharedLimits:
    """A shared store that allows every request, after a round trip."""

    shared = True

    def __init__(self) -> None:
        self.calls = 0

    async def limit(self, keys: list[str], args: list[int]) -> list[int] | None:
        self.calls += 1
        await asyncio.sleep(0.005)
        return [1, 0, 0, 1]


@virtual_time
async def test_a_tenants_concurrency_limit_holds_while_the_shared_store_answers() -> None:
    gw, _ = gateway({"quality": 0.5, "preview": 0.5, "draft": 0.5})
    store = SlowSharedLimits()
    gw.tenants.shared = lambda: store
    tenant = Tenant("acme", (), requests_per_s=1000.0, burst=100, max_concurrency=2)
    calls = [gw.generate(RequestFacts("a"), ImageRequest(("a",)), tenant=tenant) for _ in range(12)]
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    served = [o for o in outcomes if not isinstance(o, BaseException)]
    refused = [o for o in outcomes if isinstance(o, RateLimited)]
    assert (len(served), len(refused)) == (2, 10), outcomes
    assert store.calls == 2, "a refused request never reaches the store"
    again = await asyncio.gather(
        *(gw.generate(RequestFacts("a"), ImageRequest(("a",)), tenant=tenant) for _ in range(2))
    )
    assert len(again) == 2, "the refused never held a slot, the served gave theirs back"


UPGRADE_ROUTES = CACHED_ROUTES.replace(
    "  - name: roomy\n", "  - name: up\n    match: up\n    model: quality\n    budget_ms: 100\n"
    "    fallback: [preview]\n    cache: {upgrade: true}\n  - name: roomy\n"
)  # fmt: skip


@virtual_time
async def test_a_reload_during_a_downgraded_request_does_not_break_its_answer(monkeypatch: pytest.MonkeyPatch) -> None:
    """The request downgrades from quality (too slow) to preview; meanwhile a reload
    removes quality. The upgrade job is decided on the request's own table: the answer is
    the preview image, not a 500 (``KeyError: 'quality'`` on the live table)."""
    gw, _, _ = cached_gateway({"quality": 5.0, "preview": 0.05, "draft": 0.01}, monkeypatch)
    gw.swap(compile_text(UPGRADE_ROUTES, env={}))
    running = asyncio.ensure_future(gw.generate(RequestFacts("a cat", intent="up"), ImageRequest(("a cat",), (7,))))
    await asyncio.sleep(0.02)
    without_quality = UPGRADE_ROUTES.replace("model: quality", "model: preview").replace(
        '  quality: {backend: fake, latency_hint_ms: 150, version: "1"}\n', ""
    )
    gw.swap(compile_text(without_quality, env={}))
    served = await running
    assert served.model.name == "preview" and ("quality", "slow") in served.fallback
    await asyncio.sleep(0.2)  # the upgrade job was queued from the request's table; the live one lacks it
    assert gw.fill.counts["upgrade"].failed == 1
    await gw.aclose()


@virtual_time
async def test_a_tenants_slot_is_held_while_a_generation_its_client_left_goes_on(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw, fake, _ = cached_gateway({"quality": 1.0, "preview": 0.05, "draft": 0.01}, monkeypatch)
    tenant = Tenant("acme", (), max_concurrency=1)
    facts = RequestFacts("a cat", intent="roomy")
    request = ImageRequest(("a cat",), (7,))
    first = asyncio.ensure_future(gw.generate(facts, request, tenant=tenant))
    await asyncio.sleep(0.1)
    first.cancel()  # the client left; the generation goes on, to be stored
    await asyncio.sleep(0.1)
    with pytest.raises(RateLimited):
        await gw.generate(RequestFacts("a dog", intent="roomy"), ImageRequest(("a dog",), (7,)), tenant=tenant)
    await asyncio.sleep(1.0)  # the generation ended: the slot is free again
    served = await gw.generate(facts, request, tenant=tenant)
    assert served.cache == "HIT" and fake.cancelled == []
    await gw.aclose()


@virtual_time
async def test_a_streams_previews_count_as_the_tenants_images_and_hold_its_slot() -> None:
    """A stream with two previews on a quality route sends three images: they count
    toward ``images_per_day`` (they once did not count at all), and the tenant's slot is
    held until the last of them ends."""
    from image_router.ask import Ask

    gw, _ = gateway({"quality": 0.2, "preview": 0.05, "draft": 0.01})
    tenant = Tenant("acme", (), images_per_day=4, max_concurrency=1)
    ask = Ask(RequestFacts("a", intent="hq"), ImageRequest(("a",)), None, tenant)
    main, partials = await gw.stream(ask, 2)
    with pytest.raises(RateLimited):  # one stream at a time: its slot is taken while it runs
        await gw.generate(RequestFacts("b", intent="hq"), ImageRequest(("b",)), tenant=tenant)
    served = await main
    await asyncio.gather(*partials)
    assert served.model.name == "quality" and [p.result().model.name for p in partials] == ["draft", "preview"]
    await gw.generate(RequestFacts("c", intent="hq"), ImageRequest(("c",)), tenant=tenant)  # the 4th image
    with pytest.raises(RateLimited, match="daily images"):
        await gw.generate(RequestFacts("d", intent="hq"), ImageRequest(("d",)), tenant=tenant)


async def test_the_status_page_shows_the_shared_daily_count() -> None:
    """With shared limits the replica's own count was never updated: the status page
    said 0 images today whatever every replica had served."""
    from image_router.config import compile_text as compiled
    from image_router.tenancy import TenantGate

    class Counted:
        async def limit(self, keys: list[str], args: list[int]) -> list[int]:
            return [1, 0, 0, 41]  # allowed; 41 images today, across every replica

    table = compiled(
        "backends: {fake: {url: 'http://fake:1'}}\nmodels: {draft: {backend: fake}}\ndefault_route: draft\n"
        "tenants: {mode: keys, tenants: {acme: {keys: [sk-acme-0123456789abcdef], images_per_day: 100}}}\n",
        env={},
    )
    gate = TenantGate(lambda: Counted())
    (await gate.admit(table.tenants[0], 1)).release()
    assert gate.status(table)[0]["images_today"] == 41


async def test_a_tenants_slot_is_given_back_when_its_client_leaves_during_the_store_round_trip() -> None:
    """Cancelled while the shared store answered, a request once kept its slot for good;
    and a store fault followed by a local refusal gave a slot back twice."""
    from image_router.tenancy import TenantGate

    class Slow:
        async def limit(self, keys: list[str], args: list[int]) -> list[int] | None:
            await asyncio.sleep(10)
            return [1, 0, 0, 0]

    class Down:
        async def limit(self, keys: list[str], args: list[int]) -> list[int] | None:
            return None  # did not answer within its bound

    tenant = Tenant("acme", (), requests_per_s=1.0, burst=1, max_concurrency=1)
    slow = TenantGate(lambda: Slow())
    leaving = asyncio.ensure_future(slow.admit(tenant, 1))
    await asyncio.sleep(0.01)
    leaving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert slow._state["acme"].inflight == 0

    down = TenantGate(lambda: Down())
    held = await down.admit(tenant, 1)  # counted locally: the slot is taken
    with pytest.raises(RateLimited):  # locally refused (burst 1): it must not give back the held slot
        await down.admit(Tenant("acme", (), requests_per_s=1.0, burst=1), 1)
    assert down._state["acme"].inflight == 1
    held.release()
    assert down._state["acme"].inflight == 0
