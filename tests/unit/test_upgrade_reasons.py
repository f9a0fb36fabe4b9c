"""docs/cache.md "Background upgrade": an answer served below its intended tier because
that tier was ``slow``, ``busy``, ``full``, timed out or had no room queues the intended
tier's image for the same request — each reason made to happen by the real walk (the
gateway on virtual time, fake backends, an in-memory store), not written into a fake
answer; and a tier that was merely broken queues nothing (an upgrade would fail too).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from image_router.backends.base import ImageRequest
from image_router.cache.store import GuardedStore
from image_router.config import compile_text
from image_router.errors import BackendUnavailable
from image_router.fill import FillJob
from image_router.gateway import Gateway
from image_router.policy.match import RequestFacts
from image_router.served import Served
from tests.unit.test_cache_dispatch import MemoryStore
from tests.unit.test_dispatch import FakeBackend
from tests.virtual_time import virtual_time

# quality's hint is 150 ms; draft's 10 ms and the walk's margin 20 ms are kept for draft
ROUTES = """
backends: {fake: {url: "http://fake:1"}}
cache: {store: "disk:///unused", timeout_ms: 20}
models:
  quality: {backend: fake, latency_hint_ms: 150, version: "1", max_concurrency: 1}
  draft: {backend: fake, latency_hint_ms: 10, version: "1"}
routes:
  - {name: slow, match: slow, model: quality, budget_ms: 100, fallback: [draft], cache: {upgrade: true}}
  - {name: no_room, match: no_room, model: quality, budget_ms: 170, fallback: [draft], cache: {upgrade: true}}
  - {name: roomy, match: roomy, model: quality, budget_ms: 250, fallback: [draft], cache: {upgrade: true}}
  - {name: gated, match: gated, model: quality, budget_ms: 1000, fallback: [draft], cache: {upgrade: true}}
default_route: draft
"""

CAT = ImageRequest(("a cat",), seeds=(7,))
DOG = ImageRequest(("a dog",), seeds=(8,))  # another request, to keep a tier occupied


def gateway(behaviour: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> tuple[Gateway, list[FillJob]]:
    """A cached gateway whose upgrade submissions are recorded (and still queued)."""
    clock = asyncio.get_running_loop().time
    store = MemoryStore()
    monkeypatch.setattr("image_router.gateway.open_store", lambda config: GuardedStore(store, config.timeout_s, clock))
    gw = Gateway(compile_text(ROUTES, env={}), backend_factory=lambda spec: FakeBackend(behaviour, clock), clock=clock)  # type: ignore[arg-type,return-value]
    jobs: list[FillJob] = []
    submit = gw.fill.submit

    def recording(job: FillJob) -> bool:
        jobs.append(job)
        return submit(job)

    monkeypatch.setattr(gw.fill, "submit", recording)
    return gw, jobs


async def alone(gw: Gateway, route: str) -> Served:
    return await gw.generate(RequestFacts("a cat", intent=route), CAT)


async def behind_another(gw: Gateway, route: str) -> Served:
    """The request arrives 10 ms after another one took the intended tier."""
    first = asyncio.create_task(gw.generate(RequestFacts("a dog", intent=route), DOG))
    await asyncio.sleep(0.01)
    served = await gw.generate(RequestFacts("a cat", intent=route), CAT)
    assert (await first).fallback == ()
    return served


Scenario = Callable[[Gateway, str], Awaitable[Served]]
CASES: dict[str, tuple[str, str, dict[str, Any], Scenario]] = {
    # 150 ms does not fit a 100 ms budget even on an idle tier
    "slow": ("slow", "quality", {"quality": 5.0, "draft": 0.01}, alone),
    # 150 ms fits 170, but not with draft's reserve (10 + 20 ms) kept
    "no_room": ("no_room", "quality", {"quality": 5.0, "draft": 0.01}, alone),
    # tried with 220 ms, it does not answer in them
    "timeout": ("roomy", "quality", {"quality": 5.0, "draft": 0.01}, alone),
    # one instance, occupied: the work ahead makes it miss
    "busy": ("roomy", "quality", {"quality": 0.1, "draft": 0.01}, behind_another),
    # a budget with time to wait behind the other, but this gateway's gate (one at once)
    # is full, and only the last tier of a chain waits in its queue
    "full": ("gated", "quality", {"quality": 0.1, "draft": 0.01}, behind_another),
}


@pytest.mark.parametrize("reason", list(CASES))
@virtual_time
async def test_a_downgrade_for_each_reason_queues_the_intended_tiers_image(
    reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    route, intended, behaviour, scenario = CASES[reason]
    gw, jobs = gateway(behaviour, monkeypatch)
    served = await scenario(gw, route)
    assert served.model.name == "draft" and served.fallback == ((intended, reason),), served.fallback
    assert [(j.kind, j.route.name, j.model, j.request) for j in jobs] == [("upgrade", route, intended, CAT)]
    assert jobs[0].key == str(gw.dispatcher.cache_key(jobs[0].route, gw.table.models[intended], CAT, ""))
    assert gw.fill.counts["upgrade"].queued == 1
    await gw.aclose()


@virtual_time
async def test_a_tier_that_failed_rather_than_missed_queues_no_upgrade(monkeypatch: pytest.MonkeyPatch) -> None:
    gw, jobs = gateway({"quality": BackendUnavailable("refused"), "draft": 0.01}, monkeypatch)
    served = await alone(gw, "roomy")
    assert served.model.name == "draft" and served.fallback == (("quality", "unavailable"),)
    assert jobs == [] and gw.fill.counts["upgrade"].queued == 0
    await gw.aclose()
