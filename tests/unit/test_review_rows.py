"""docs/cache.md "background work": upgrades and pre-generation run at the lowest
priority (review tests-2026-12, "NOT COVERED" 6). ``tests/unit/test_fill.py``'s stand-in
dispatcher ignores the priority; here it is recorded, first at the filler's hand-off to
the dispatcher, then where it leaves the gateway: the priority each backend call gets,
beside a live request's on the same tier (the real walk on virtual time, fake backends,
an in-memory store)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import pytest

from image_router.backends.base import ImageRequest, ImageResult
from image_router.cache.store import GuardedStore
from image_router.config import compile_text
from image_router.config.table import Model
from image_router.decide import DEFAULT_PRIORITY, Decision
from image_router.fill import Filler, FillJob
from image_router.gateway import Gateway
from image_router.inference import PRIORITY_LEVELS
from image_router.policy.match import RequestFacts
from tests.unit.test_cache_dispatch import MemoryStore
from tests.unit.test_dispatch import FakeBackend
from tests.unit.test_fill import ROUTE, Stored, table
from tests.unit.test_upgrade_reasons import CAT, ROUTES
from tests.virtual_time import virtual_time

LOWEST = PRIORITY_LEVELS  # 1 is the highest admission level; the gateway has this many
LIVE: int | None = None  # a live request that names no priority sends none (the backend's default)


@dataclass
class RecordingDispatcher:
    """Idle, answers at once, and keeps every decision it is asked to serve."""

    decisions: list[Decision] = field(default_factory=list)

    def idle(self, model: Model) -> bool:
        return True

    async def serve(self, decision: Decision) -> Stored:
        self.decisions.append(decision)
        return Stored()


@virtual_time
async def test_the_filler_hands_every_job_to_the_dispatcher_at_the_lowest_priority() -> None:
    dispatcher = RecordingDispatcher()
    tbl = table()
    fill = Filler(dispatcher, lambda: tbl, clock=lambda: asyncio.get_running_loop().time())  # type: ignore[arg-type]
    for kind in ("upgrade", "pregen"):
        fill.submit(FillJob(kind, ROUTE, "quality", ImageRequest((f"a {kind}",), seeds=(1,)), f"k-{kind}"))
    await asyncio.sleep(1.0)
    assert len(dispatcher.decisions) == 2
    assert [d.priority for d in dispatcher.decisions] == [LOWEST, LOWEST]
    assert LOWEST > DEFAULT_PRIORITY  # below what a request that names none gets
    await fill.aclose()


class PriorityBackend(FakeBackend):
    """:class:`FakeBackend` that notes the priority of every call, per model."""

    def __init__(self, behaviour: dict[str, Any], clock: Any) -> None:
        super().__init__(behaviour, clock)
        self.priorities: list[tuple[str, int | None]] = []

    async def generate(
        self, model: Model, request: ImageRequest, timeout_s: float, priority: int | None = None
    ) -> ImageResult:
        self.priorities.append((model.name, priority))
        result: ImageResult = await super().generate(model, request, timeout_s, priority)
        return result


@virtual_time
async def test_upgrades_and_pregeneration_reach_the_backend_at_the_lowest_priority(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request downgraded because quality is too slow for its budget is served by
    draft at the default priority and queues quality's image as an upgrade; a
    pre-generation item on the roomy route queues quality too. Both background calls go
    to the backend at the lowest priority; live calls send none (the backend's default)."""
    clock = asyncio.get_running_loop().time
    store = MemoryStore()
    monkeypatch.setattr("image_router.gateway.open_store", lambda config: GuardedStore(store, config.timeout_s, clock))
    backend = PriorityBackend({"quality": 0.15, "draft": 0.01}, clock)
    gw = Gateway(compile_text(ROUTES, env={}), backend_factory=lambda spec: backend, clock=clock)  # type: ignore[arg-type,return-value]
    try:
        served = await gw.generate(RequestFacts("a cat", intent="slow"), CAT)
        assert served.model.name == "draft"
        await asyncio.sleep(5.0)  # the tier is idle: the upgrade runs
        assert gw.fill.counts["upgrade"].done == 1
        assert backend.priorities == [("draft", LIVE), ("quality", LOWEST)]

        live = await gw.generate(RequestFacts("a dog", intent="roomy"), ImageRequest(("a dog",), seeds=(8,)))
        assert live.model.name == "quality" and backend.priorities[-1] == ("quality", LIVE)
        assert gw.pregenerate([{"prompt": "a fox", "route": "roomy", "seed": 9}])["queued"] == 1
        await asyncio.sleep(60.0)  # quality had live traffic: jobs are paced (background_share)
        assert gw.fill.counts["pregen"].done == 1
        assert backend.priorities[-1] == ("quality", LOWEST)
    finally:
        await gw.aclose()
