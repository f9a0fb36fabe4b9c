"""The dispatcher's budget guarantees, with in-memory fake backends (no sockets), on
virtual time (``tests/virtual_time.py``): the loop's clock moves by exactly what is
awaited, and the gateway and the fakes read that clock — so timeouts, hedge delays and
answer times are asserted exactly, and a busy CI host cannot make them flaky."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from image_router.backends.base import ImageRequest, ImageResult, request_units
from image_router.config import compile_text
from image_router.config.table import Backend, Model
from image_router.errors import AllTiersFailed, BackendRejected, BackendUnavailable, BudgetExhausted, Overloaded
from image_router.gateway import Gateway
from image_router.policy.forecast import Forecast, Lane
from image_router.policy.match import RequestFacts
from tests.virtual_time import virtual_time

ROUTES = """
backends: {fake: {url: "http://fake:1"}}
models:
  quality: {backend: fake, latency_hint_ms: 150, max_concurrency: 1}
  preview: {backend: fake, latency_hint_ms: 40, max_concurrency: 1, max_queue: 1}
  draft: {backend: fake, latency_hint_ms: 10}
routes:
  - name: hq
    match: hq
    model: quality
    budget_ms: 300
    fallback: [preview, draft]
  - name: hq-tight
    match: hq-tight
    model: quality
    budget_ms: 250
    fallback: [preview, draft]
  - name: quality-only
    match: quality-only
    model: quality
    budget_ms: 1000
  - name: hedged
    match: hedged
    model: quality
    budget_ms: 1000
    fallback: [preview]
    hedge: {after_ms: 50}
  - name: preview-queued
    match: preview-queued
    model: preview
    budget_ms: 1000
default_route: draft
"""


class FakeBackend:
    """Behaviour per model: a delay in seconds per unit of work (one image at the tier's
    own size: :func:`~image_router.backends.base.request_units`), or an exception to raise."""

    def __init__(self, behaviour: dict[str, Any], clock: Callable[[], float]) -> None:
        self.behaviour = behaviour
        self.clock = clock
        self.calls: list[tuple[str, float]] = []
        self.open_circuits: set[str] = set()
        self.cancelled: list[str] = []
        self.lanes: dict[str, Lane] = {}
        self.metadata_versions: list[str] = []

    def lane(self, model: Model) -> Lane:
        return self.lanes.setdefault(model.name, Lane(model.latency_hint_ms / 1000, model.instances))

    async def generate(self, model: Model, request: ImageRequest, timeout_s: float, priority: int | None = None):
        self.calls.append((model.name, timeout_s))
        action = self.behaviour[model.name]
        units = request_units(model, request)
        ticket = self.lane(model).send(self.clock(), units)
        if isinstance(action, Exception):
            self.lane(model).done(ticket, self.clock(), ok=False)
            raise action
        try:
            await asyncio.sleep(action * units)
        except asyncio.CancelledError:
            self.cancelled.append(model.name)
            self.lane(model).abandon(ticket, self.clock())
            raise
        self.lane(model).done(ticket, self.clock(), ok=True)
        return ImageResult(np.zeros((1, 2, 2, 3), np.uint8), "1")

    def forecast(self, model: Model, extra_ahead: int = 0, units: float = 1.0) -> Forecast | None:
        if model.name in self.open_circuits:
            return None
        return self.lane(model).forecast(self.clock(), extra_ahead, units)

    async def ready(self) -> bool:
        return True

    async def model_metadata(self, model: Model) -> dict[str, Any]:
        return {"name": model.name, "versions": self.metadata_versions}

    def snapshot(self) -> list[dict[str, Any]]:
        return []

    def available(self, model: Model) -> bool:
        return model.name not in self.open_circuits

    async def aclose(self) -> None:
        return None


def gateway(behaviour: dict[str, Any]) -> tuple[Gateway, FakeBackend]:
    clock = asyncio.get_running_loop().time
    fake = FakeBackend(behaviour, clock)

    def factory(spec: Backend) -> FakeBackend:
        return fake

    return Gateway(compile_text(ROUTES, env={}), backend_factory=factory, clock=clock), fake  # type: ignore[arg-type]


REQ = ImageRequest(("a cat",))


def now() -> float:
    return asyncio.get_running_loop().time()


@virtual_time
async def test_slow_primary_is_abandoned_and_a_faster_tier_answers_inside_the_budget() -> None:
    gw, fake = gateway({"quality": 5.0, "preview": 0.01, "draft": 0.01})
    t0 = now()
    served = await gw.generate(RequestFacts("a cat", intent="hq"), REQ)
    elapsed = now() - t0
    assert served.model.name == "preview"
    assert served.attempts == 2
    assert served.fallback == (("quality", "timeout"),)
    assert fake.cancelled == ["quality"], "the losing call must be cancelled"
    # quality's timeout left room for preview (40 ms) and draft (10 ms), each + 20 ms margin
    assert fake.calls[0][1] == pytest.approx(0.21)
    # preview, with 90 ms left, keeps draft's 10 ms + 20 ms: a 60 ms timeout
    assert fake.calls[1][0] == "preview" and fake.calls[1][1] == pytest.approx(0.06)
    assert elapsed == pytest.approx(0.21 + 0.01), "quality's timeout, then preview's 10 ms"


@virtual_time
async def test_four_images_are_forecast_as_four_and_go_where_they_fit() -> None:
    """n=4 on ``hq`` (300 ms): quality takes 150 ms an image, so four cannot fit and the
    walk plans preview (4 x 40 ms) at once — counted as one image, quality was tried,
    timed out and its work was wasted; the answer still comes inside the budget."""
    gw, fake = gateway({"quality": 0.15, "preview": 0.04, "draft": 0.01})
    four = ImageRequest(("a cat",) * 4, seeds=(1, 2, 3, 4))
    t0 = now()
    served = await gw.generate(RequestFacts("a cat", intent="hq"), four)
    assert (served.model.name, served.attempts) == ("preview", 1)
    assert [c[0] for c in fake.calls] == ["preview"], "quality was never sent what it could not finish"
    assert now() - t0 == pytest.approx(0.16) and now() - t0 <= 0.3
    one = await gw.generate(RequestFacts("a cat", intent="hq"), REQ)
    assert one.model.name == "quality", "one image still fits quality"


@virtual_time
async def test_a_timed_out_tier_is_still_busy_with_the_abandoned_work_and_is_skipped_meanwhile() -> None:
    """A timeout is not a latency sample of twice the timeout (which skipped a tier for a
    minute): the abandoned request still occupies quality's one instance, so the next
    request is planned behind it and goes to preview without trying quality."""
    gw, fake = gateway({"quality": 5.0, "preview": 0.01, "draft": 0.01})
    # 250 ms leaves quality 160 ms (>= its 150 ms hint) after the reserve: it is tried first
    served = await gw.generate(RequestFacts("a", intent="hq-tight"), REQ)
    assert served.attempts == 2 and served.model.name == "preview"
    assert served.fallback == (("quality", "timeout"),)
    served = await gw.generate(RequestFacts("a", intent="hq-tight"), REQ)
    assert served.attempts == 1 and served.model.name == "preview"
    assert served.fallback == (("quality", "no_room"),)
    assert [c[0] for c in fake.calls].count("quality") == 1
    # one timeout moved the estimate no more than the evidence says (>= 160 ms)
    assert fake.lanes["quality"].estimate.typical_s == pytest.approx(0.15)


@virtual_time
async def test_rejected_input_is_not_retried_elsewhere() -> None:
    gw, fake = gateway({"quality": BackendRejected("PROMPT: bad"), "preview": 0.0, "draft": 0.0})
    with pytest.raises(BackendRejected):
        await gw.generate(RequestFacts("a", intent="hq"), REQ)
    assert [c[0] for c in fake.calls] == ["quality"]


@virtual_time
async def test_every_tier_unavailable_is_503() -> None:
    down = BackendUnavailable("refused")
    gw, fake = gateway({"quality": down, "preview": down, "draft": down})
    with pytest.raises(AllTiersFailed) as info:
        await gw.generate(RequestFacts("a", intent="hq"), REQ)
    assert info.value.status == 503
    assert [c[0] for c in fake.calls] == ["quality", "preview", "draft"]


@virtual_time
async def test_all_tiers_too_slow_is_504_at_the_budget_not_later() -> None:
    gw, _ = gateway({"quality": 5.0, "preview": 5.0, "draft": 5.0})
    t0 = now()
    with pytest.raises(BudgetExhausted) as info:
        await gw.generate(RequestFacts("a", intent="hq"), REQ)
    elapsed = now() - t0
    assert info.value.status == 504
    assert elapsed == pytest.approx(0.3), "every tier tried in turn, and the answer exactly at the budget"


@virtual_time
async def test_an_unexpected_backend_bug_still_falls_back() -> None:
    gw, _ = gateway({"quality": RuntimeError("bug"), "preview": 0.0, "draft": 0.0})
    served = await gw.generate(RequestFacts("a", intent="hq"), REQ)
    assert served.model.name == "preview"
    assert served.fallback == (("quality", "error"),)


@virtual_time
async def test_a_tier_at_its_concurrency_limit_is_skipped_or_refused_with_429() -> None:
    gw, _ = gateway({"quality": 0.1, "preview": 0.0, "draft": 0.0})
    busy = asyncio.create_task(gw.generate(RequestFacts("a", intent="hq"), REQ))
    await asyncio.sleep(0.01)
    served = await gw.generate(RequestFacts("a", intent="hq"), REQ)
    # planned behind the request quality is running (and this gateway's full gate): busy
    assert served.model.name == "preview" and served.fallback == (("quality", "busy"),)
    with pytest.raises(Overloaded) as info:
        await gw.generate(RequestFacts("a", intent="quality-only"), REQ)
    assert info.value.status == 429 and info.value.retry_after_s >= 1
    assert (await busy).model.name == "quality"
    assert gw.dispatcher.inflight() == {}
    assert (await gw.generate(RequestFacts("a", intent="quality-only"), REQ)).model.name == "quality"


@virtual_time
async def test_hedge_asks_the_next_tier_when_the_first_is_late_and_the_first_good_answer_wins() -> None:
    gw, fake = gateway({"quality": 0.5, "preview": 0.01, "draft": 0.0})
    t0 = now()
    served = await gw.generate(RequestFacts("a", intent="hedged"), REQ)
    assert served.hedged and served.model.name == "preview"
    assert now() - t0 == pytest.approx(0.05 + 0.01), "the hedge starts at 50 ms and answers 10 ms later"
    assert fake.cancelled == ["quality"], "the slower call is cancelled"
    assert served.attempts == 2


@virtual_time
async def test_hedge_not_needed_when_the_first_answers_in_time() -> None:
    gw, fake = gateway({"quality": 0.01, "preview": 0.01, "draft": 0.0})
    served = await gw.generate(RequestFacts("a", intent="hedged"), REQ)
    assert not served.hedged and served.model.name == "quality"
    assert [c[0] for c in fake.calls] == ["quality"]


@virtual_time
async def test_last_tier_waits_in_its_queue_and_a_full_queue_is_429() -> None:
    gw, _ = gateway({"quality": 0.0, "preview": 0.1, "draft": 0.0})
    first = asyncio.create_task(gw.generate(RequestFacts("a", intent="preview-queued"), REQ))
    await asyncio.sleep(0.01)
    second = asyncio.create_task(gw.generate(RequestFacts("a", intent="preview-queued"), REQ))
    await asyncio.sleep(0.01)
    with pytest.raises(Overloaded):
        await gw.generate(RequestFacts("a", intent="preview-queued"), REQ)
    assert (await first).model.name == "preview"
    assert (await second).model.name == "preview", "the queued request runs when the slot frees"
    assert gw.dispatcher.inflight() == {}


@virtual_time
async def test_a_tier_whose_circuits_are_all_open_is_skipped_at_once() -> None:
    gw, fake = gateway({"quality": 0.0, "preview": 0.0, "draft": 0.0})
    fake.open_circuits.add("quality")
    served = await gw.generate(RequestFacts("a", intent="hq"), REQ)
    assert served.fallback == (("quality", "circuit_open"),)
    assert [c[0] for c in fake.calls] == ["preview"], "quality was not called"
