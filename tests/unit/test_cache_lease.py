"""The shared-store paths of the result cache that only a Redis store takes (docs/cache.md
"a generation in flight on another replica"), on virtual time with a store that says it
is shared and whose leases another replica can hold:

- another replica holds the key's lease and stores its entry: this replica waits for it
  (polling the store) and answers with it, generating nothing;
- the holder gives up (its lease goes, no entry): this replica generates at once;
- the holder never finishes: this replica waits only while it can still make the image
  itself in its budget, then generates and answers in time;
- a lease call the store cannot answer in its bound (busy, not down) is asked once more.

The in-memory fake of ``test_cache_dispatch`` says ``kind = "memory"`` and its lease
always succeeds, so none of this ran in a unit test before.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from image_router.cache import CacheKey, Entry
from image_router.cache.coordinate import VERSION_WAIT_S
from image_router.cache.keys import key_digest, lease_key
from image_router.cache.store import GuardedStore
from image_router.config import compile_text
from image_router.config.table import Model
from image_router.gateway import Gateway
from image_router.policy.match import RequestFacts
from tests.unit.test_cache_dispatch import REQ, ROUTES, MemoryStore, cached_gateway
from tests.unit.test_dispatch import FakeBackend
from tests.virtual_time import virtual_time

QUALITY_S = 0.15  # quality as its latency hint says (the roomy route: quality only, 2 s budget)


class SharedStore(MemoryStore):
    """A store shared between replicas: leases are keys another replica may hold, and a
    lease call can be slow (``lease_delays``, one per call, in seconds)."""

    kind = "redis"

    def __init__(self) -> None:
        super().__init__()
        self.lease_calls = 0
        self.lease_delays: list[float] = []

    async def lease(self, key: str, owner: str, ttl_s: float) -> bool:
        self.lease_calls += 1
        if self.lease_delays:
            await asyncio.sleep(self.lease_delays.pop(0))
        holder = self.data.setdefault(key, owner.encode())
        return holder == owner.encode()

    async def release(self, key: str, owner: str) -> None:
        if self.data.get(key) == owner.encode():
            del self.data[key]


KEY = CacheKey.of("roomy", "quality", "quality", "1", REQ.prompts, (7,), None, None, None)
FACTS = RequestFacts("a cat", intent="roomy")


def shared_gateway(monkeypatch: pytest.MonkeyPatch) -> tuple[object, object, SharedStore]:
    monkeypatch.setattr("tests.unit.test_cache_dispatch.MemoryStore", SharedStore)
    return cached_gateway({"quality": QUALITY_S, "preview": 0.03, "draft": 0.01}, monkeypatch)


def entry(value: int) -> bytes:
    images = np.full((1, 2, 2, 3), value, np.uint8)
    return Entry(images, "quality", "1", "roomy", (7,), 0.0, key=key_digest(str(KEY))).to_bytes()


async def other_replica(store: SharedStore, after_s: float, stores: bool) -> None:
    """Holds ``KEY``'s lease; after ``after_s`` stores its entry (or not) and lets go."""
    await asyncio.sleep(after_s)
    if stores:
        store.data[str(KEY)] = entry(42)
    store.data.pop(lease_key(KEY), None)


def now() -> float:
    return asyncio.get_running_loop().time()


@virtual_time
async def test_a_key_another_replica_is_making_is_waited_for_and_not_made_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw, fake, store = shared_gateway(monkeypatch)
    store.data[lease_key(KEY)] = b"other-replica"
    holder = asyncio.create_task(other_replica(store, 0.3, stores=True))
    t0 = now()
    served = await gw.generate(FACTS, REQ)  # type: ignore[attr-defined]
    await holder
    assert fake.calls == []  # type: ignore[attr-defined]
    assert served.cache == "COALESCED" and int(served.result.images[0, 0, 0, 0]) == 42
    assert 0.3 <= now() - t0 <= 0.3 + 0.03  # found within one poll of it landing
    assert gw.cache.stats.lease_waits == 1  # type: ignore[attr-defined]


@virtual_time
async def test_when_the_holder_gives_up_this_replica_generates_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    gw, fake, store = shared_gateway(monkeypatch)
    store.data[lease_key(KEY)] = b"other-replica"
    holder = asyncio.create_task(other_replica(store, 0.2, stores=False))
    t0 = now()
    served = await gw.generate(FACTS, REQ)  # type: ignore[attr-defined]
    await holder
    assert [m for m, _ in fake.calls] == ["quality"]  # type: ignore[attr-defined]
    assert served.cache == "MISS" and served.model.name == "quality"
    assert 0.2 + QUALITY_S <= now() - t0 <= 0.2 + 0.03 + QUALITY_S


@virtual_time
async def test_a_holder_that_never_finishes_is_waited_for_only_while_there_is_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Budget 2 s, quality 0.15 s: the wait ends by 2 - 0.15 - margin, then it generates
    itself and answers inside the budget."""
    gw, fake, store = shared_gateway(monkeypatch)
    store.data[lease_key(KEY)] = b"other-replica"  # held for good
    t0 = now()
    served = await gw.generate(FACTS, REQ)  # type: ignore[attr-defined]
    elapsed = now() - t0
    assert [m for m, _ in fake.calls] == ["quality"] and served.model.name == "quality"  # type: ignore[attr-defined]
    assert 2.0 - 0.1 <= elapsed <= 2.0, elapsed  # waited all it could, and still in time


@virtual_time
async def test_a_lease_the_store_cannot_answer_in_time_is_asked_once_more(monkeypatch: pytest.MonkeyPatch) -> None:
    gw, fake, store = shared_gateway(monkeypatch)
    store.lease_delays = [10.0]  # the first lease call hangs past its bound; the second answers
    served = await gw.generate(FACTS, REQ)  # type: ignore[attr-defined]
    assert store.lease_calls == 2
    assert [m for m, _ in fake.calls] == ["quality"] and served.cache == "MISS"  # type: ignore[attr-defined]
    await gw.cache.drain()  # type: ignore[attr-defined]
    assert lease_key(KEY) not in store.data  # released once the entry is written
    assert str(KEY) in store.data


@virtual_time
async def test_a_store_that_never_answers_a_lease_costs_two_bounds_then_generates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw, fake, store = shared_gateway(monkeypatch)
    store.lease_delays = [10.0, 10.0]
    t0 = now()
    served = await gw.generate(FACTS, REQ)  # type: ignore[attr-defined]
    bound = max(gw.cache.store.wait_bound_s, 0.25 * QUALITY_S)  # type: ignore[attr-defined]
    assert store.lease_calls == 2 and served.model.name == "quality"
    assert now() - t0 == pytest.approx(2 * bound + QUALITY_S, abs=0.01)
    assert [m for m, _ in fake.calls] == ["quality"]  # type: ignore[attr-defined]


class MetadataLater(FakeBackend):
    """A backend whose metadata (the served version) takes ``metadata_s`` to answer."""

    def __init__(self, behaviour: dict[str, float], clock: Callable[[], float], metadata_s: float) -> None:
        super().__init__(behaviour, clock)
        self.metadata_s = metadata_s
        self.metadata_versions = ["1"]

    async def model_metadata(self, model: Model) -> dict[str, Any]:
        await asyncio.sleep(self.metadata_s)
        return await super().model_metadata(model)


@pytest.mark.parametrize("metadata_s", [VERSION_WAIT_S + 0.01, 0.2])
@virtual_time
async def test_a_replica_that_has_not_learnt_the_served_version_still_shares_the_generation(
    monkeypatch: pytest.MonkeyPatch, metadata_s: float
) -> None:
    """Unpinned models: replica A learns the served version at once, replica B only after
    its lookup gave up waiting (> VERSION_WAIT_S), so B's first key names no version —
    learnt before its lease call (60 ms), or only while it waits on A's lease (200 ms,
    past the lease's bound). The same request on both is still one generation (CI saw
    two: the lease key named the version)."""
    clock = asyncio.get_running_loop().time
    store = SharedStore()
    monkeypatch.setattr("image_router.gateway.open_store", lambda config: GuardedStore(store, config.timeout_s, clock))
    text = ROUTES.replace(', version: "1"}', "}")
    replicas = []
    for delay in (0.0, metadata_s):
        fake = MetadataLater({"quality": QUALITY_S, "preview": 0.03, "draft": 0.01}, clock, delay)
        gw = Gateway(compile_text(text, env={}), backend_factory=lambda spec, f=fake: f, clock=clock)  # type: ignore[misc]
        replicas.append((gw, fake))
    (a, fake_a), (b, fake_b) = replicas
    first = asyncio.create_task(a.generate(FACTS, REQ))
    await asyncio.sleep(0.001)  # A takes the lease first
    second = await b.generate(FACTS, REQ)
    served = await first
    assert len(fake_a.calls) + len(fake_b.calls) == 1, (fake_a.calls, fake_b.calls)
    assert (served.cache, second.cache) == ("MISS", "COALESCED")
    assert second.result.model_version == "1"


@virtual_time
async def test_a_replica_that_takes_the_lease_after_the_holder_finished_still_finds_its_entry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """B arrives after A made and stored the image and let the lease go, still not knowing
    the served version (its metadata takes 200 ms, past the lookup's and the lease's
    bounds): holding the lease, it learns the version before looking, and finds A's entry."""
    clock = asyncio.get_running_loop().time
    store = SharedStore()
    monkeypatch.setattr("image_router.gateway.open_store", lambda config: GuardedStore(store, config.timeout_s, clock))
    text = ROUTES.replace(', version: "1"}', "}")
    fakes = [MetadataLater({"quality": QUALITY_S, "preview": 0.03, "draft": 0.01}, clock, d) for d in (0.0, 0.2)]
    a, b = (Gateway(compile_text(text, env={}), backend_factory=lambda spec, f=f: f, clock=clock) for f in fakes)  # type: ignore[misc]
    made = await a.generate(FACTS, REQ)
    await a.cache.drain()  # type: ignore[union-attr]  # stored, and the lease let go
    found = await b.generate(FACTS, REQ)
    assert made.cache == "MISS" and found.cache == "COALESCED"
    assert len(fakes[0].calls) == 1 and fakes[1].calls == []
