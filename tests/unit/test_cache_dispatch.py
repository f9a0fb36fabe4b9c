"""The result cache inside the budget walk, on virtual time with fake backends and an
in-memory store (pure logic; the real stores are tested with real processes in
``tests/integration/test_cache*.py``)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from image_router.backends.base import ImageRequest, ImageResult
from image_router.cache import CacheKey, Entry
from image_router.cache.keys import key_digest
from image_router.cache.store import GuardedStore
from image_router.config import compile_text
from image_router.gateway import Gateway
from image_router.policy.match import RequestFacts
from tests.unit.test_dispatch import FakeBackend
from tests.virtual_time import virtual_time

ROUTES = """
backends: {fake: {url: "http://fake:1"}}
cache: {store: "disk:///unused", timeout_ms: 20}
models:
  quality: {backend: fake, latency_hint_ms: 150, version: "1"}
  preview: {backend: fake, latency_hint_ms: 40, version: "1"}
  draft: {backend: fake, latency_hint_ms: 10, version: "1"}
routes:
  - name: tight
    match: tight
    model: quality
    budget_ms: 100
    fallback: [preview, draft]
    cache: {}
  - name: fresh-up
    match: fresh-up
    model: quality
    budget_ms: 100
    fallback: [draft]
    cache: {seedless: fresh, upgrade: true}
  - name: roomy
    match: roomy
    model: quality
    budget_ms: 2000
    cache: {}
default_route: draft
"""


class MemoryStore:
    """A dict behind the Store protocol; ``delay`` makes every call slow, ``fail`` raise."""

    kind = "memory"

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}
        self.delay = 0.0
        self.fail = False
        self.calls = 0

    async def _io(self) -> None:
        self.calls += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            raise ConnectionError("store down")

    async def get_many(self, keys: list[str]) -> list[bytes | None]:
        await self._io()
        return [self.data.get(k) for k in keys]

    async def set(self, key: str, value: bytes, ttl_s: float) -> None:
        await self._io()
        self.data[key] = value

    async def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.data.pop(key, None)

    async def keys(self, pattern: str) -> list[str]:
        return list(self.data)

    async def lease(self, key: str, owner: str, ttl_s: float) -> bool:
        return True

    async def release(self, key: str, owner: str) -> None:
        return None

    async def stats(self) -> dict[str, Any]:
        return {"entries": len(self.data)}

    async def aclose(self) -> None:
        return None


def cached_gateway(
    behaviour: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> tuple[Gateway, FakeBackend, MemoryStore]:
    clock = asyncio.get_running_loop().time
    fake = FakeBackend(behaviour, clock)
    store = MemoryStore()
    monkeypatch.setattr("image_router.gateway.open_store", lambda config: GuardedStore(store, config.timeout_s, clock))
    gw = Gateway(compile_text(ROUTES, env={}), backend_factory=lambda spec: fake, clock=clock)  # type: ignore[arg-type,return-value]
    return gw, fake, store


REQ = ImageRequest(("a cat",), seeds=(7,))


def put(gw: Gateway, store: MemoryStore, route: str, model: str, value: int) -> None:
    key = CacheKey.of(route, model, model, "1", REQ.prompts, (7,), None, None, None)
    images = np.full((1, 2, 2, 3), value, np.uint8)
    store.data[str(key)] = Entry(images, model, "1", route, (7,), 0.0, key=key_digest(str(key))).to_bytes()


def now() -> float:
    return asyncio.get_running_loop().time()


@virtual_time
async def test_a_cached_tier_answers_at_once_even_when_it_is_too_slow_for_the_budget(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw, _fake, store = cached_gateway({"quality": 5.0, "preview": 0.03, "draft": 0.01}, monkeypatch)
    cold = await gw.generate(RequestFacts("a cat", intent="tight"), REQ)
    assert cold.model.name != "quality" and cold.cache == "MISS"  # 150 ms does not fit 100
    put(gw, store, "tight", "quality", 9)
    t0 = now()
    served = await gw.generate(RequestFacts("a cat", intent="tight"), REQ)
    assert served.model.name == "quality" and served.cache == "HIT"
    assert served.fallback == () and int(served.result.images[0, 0, 0, 0]) == 9
    assert now() - t0 == pytest.approx(0.0, abs=1e-6)


@virtual_time
async def test_a_downgraded_request_prefers_a_cached_preview_to_a_new_draft(monkeypatch: pytest.MonkeyPatch) -> None:
    gw, fake, store = cached_gateway({"quality": 5.0, "preview": 0.03, "draft": 0.01}, monkeypatch)
    put(gw, store, "tight", "preview", 5)
    served = await gw.generate(RequestFacts("a cat", intent="tight"), REQ)
    assert served.model.name == "preview" and served.cache == "HIT"
    assert [m for m, _ in served.fallback] == ["quality"]
    assert fake.calls == []


@virtual_time
async def test_identical_requests_in_flight_are_one_call_and_a_leaving_waiter_cancels_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw, fake, store = cached_gateway({"quality": 0.5, "preview": 0.03, "draft": 0.01}, monkeypatch)
    facts = RequestFacts("a cat", intent="roomy")

    async def impatient() -> None:
        async with asyncio.timeout(0.1):
            await gw.generate(facts, REQ)

    results = await asyncio.gather(*(gw.generate(facts, REQ) for _ in range(10)), impatient(), return_exceptions=True)
    served = [r for r in results if not isinstance(r, BaseException)]
    assert len(served) == 10 and isinstance(results[-1], TimeoutError)
    assert [m for m, _ in fake.calls] == ["quality"] and fake.cancelled == []
    assert sorted(s.cache or "" for s in served) == ["COALESCED"] * 9 + ["MISS"]
    await gw.cache.drain()  # type: ignore[union-attr]
    assert len(store.data) == 1


@virtual_time
async def test_when_the_leader_fails_a_waiter_makes_its_own_attempt(monkeypatch: pytest.MonkeyPatch) -> None:
    gw, fake, _ = cached_gateway({"quality": 0.2, "preview": 0.03, "draft": 0.01}, monkeypatch)
    facts = RequestFacts("a cat", intent="roomy")
    original = fake.generate
    failures = iter([True])

    async def fail_first(*args: Any, **kwargs: Any) -> ImageResult:
        if next(failures, False):
            await asyncio.sleep(0.1)
            from image_router.errors import BackendUnavailable

            raise BackendUnavailable("first call fails")
        return await original(*args, **kwargs)

    fake.generate = fail_first  # type: ignore[method-assign]
    leader, follower = await asyncio.gather(gw.generate(facts, REQ), gw.generate(facts, REQ), return_exceptions=True)
    assert not isinstance(follower, BaseException) and follower.model.name == "quality"
    assert isinstance(leader, BaseException)  # quality-only route: the leader had no other tier


@virtual_time
async def test_a_hanging_store_costs_at_most_its_bound_and_a_failing_one_opens_its_circuit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw, _fake, store = cached_gateway({"quality": 0.5, "preview": 0.03, "draft": 0.01}, monkeypatch)
    store.delay = 10.0
    t0 = now()
    served = await gw.generate(RequestFacts("a cat", intent="roomy"), REQ)
    assert served.cache == "MISS" and now() - t0 == pytest.approx(0.02 + 0.5, abs=1e-6)
    assert gw.cache is not None and gw.cache.store.counts["timeouts"] == 1
    store.delay, store.fail = 0.0, True
    for i in range(8):
        await gw.generate(RequestFacts(f"cat {i}", intent="roomy"), ImageRequest((f"cat {i}",), seeds=(1,)))
    counts = gw.cache.store.counts
    assert counts["errors"] >= 4 and counts["skipped"] >= 1 and gw.cache.store.state == "open"


@virtual_time
async def test_a_version_bump_misses_pinned_or_learned_from_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    gw, fake, store = cached_gateway({"quality": 0.01, "preview": 0.01, "draft": 0.01}, monkeypatch)
    facts = RequestFacts("a cat", intent="roomy")
    assert (await gw.generate(facts, REQ)).cache == "MISS"
    await gw.cache.drain()  # type: ignore[union-attr]
    assert (await gw.generate(facts, REQ)).cache == "HIT"
    # the operator pins quality to version 2 in routes.yaml: the same request misses
    pinned = ROUTES.replace('latency_hint_ms: 150, version: "1"', 'latency_hint_ms: 150, version: "2"')
    gw.swap(compile_text(pinned, env={}))
    assert (await gw.generate(facts, REQ)).cache == "MISS"
    # unpinned: the key follows what the backend says it serves
    gw.swap(compile_text(ROUTES.replace('latency_hint_ms: 150, version: "1"', "latency_hint_ms: 150"), env={}))
    assert any("|quality|quality@1|" in key for key in store.data), "version 1's entry is still stored"
    fake.metadata_versions = ["1", "2", "3"]  # Triton now serves version 3
    served = await gw.generate(facts, REQ)
    assert served.cache == "MISS" and fake.calls[-1][0] == "quality", "version 1's entry must not answer"


@virtual_time
async def test_an_upgrade_is_queued_only_where_an_identical_request_can_follow(monkeypatch: pytest.MonkeyPatch) -> None:
    gw, _fake, _ = cached_gateway({"quality": 5.0, "preview": 0.03, "draft": 0.01}, monkeypatch)
    facts = RequestFacts("a cat", intent="fresh-up")
    seedless = await gw.generate(facts, ImageRequest(("a cat",)))
    assert seedless.model.name == "draft" and gw.fill.counts["upgrade"].queued == 0, "a random seed never repeats"
    seeded = await gw.generate(facts, REQ)
    assert seeded.model.name == "draft" and gw.fill.counts["upgrade"].queued == 1
    await gw.aclose()
