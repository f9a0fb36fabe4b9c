"""Wasted compute: every call the gateway gives up on is counted on its replica, by
reason — a replica hedge's loser (``TritonBackend._hedged``), a tier hedge's loser
(``Attempts.hedged``), a timed-out attempt, one abandoned because the client left —
exported as ``router_compute_wasted_seconds_total{model,reason}``, and never billed
(only the answer's own compute is). On virtual time, the HTTP call replaced by a sleep
per model (no sockets)."""

from __future__ import annotations

import asyncio
import contextlib

import numpy as np
import pytest

from image_router.backends.base import ImageRequest, ImageResult
from image_router.backends.replicas import Replica
from image_router.backends.triton import TritonBackend, given_up_because
from image_router.config import compile_text
from image_router.config.table import Backend, Model, RetryPolicy
from image_router.gateway import Gateway
from image_router.policy.hedge import FACTOR, SLACK_S
from image_router.policy.match import RequestFacts
from image_router.telemetry import Metrics
from tests.virtual_time import virtual_time

DRAFT = Model("draft", "t", "draft", None, 100.0)
REQ = ImageRequest(("a cat",), seeds=(1,))
OVERDUE_S = FACTOR * 0.1 + SLACK_S
ROUTES = """
backends: {t: {url: "http://t0:1"}}
models:
  quality: {backend: t, latency_hint_ms: 150}
  preview: {backend: t, latency_hint_ms: 40}
routes:
  - {name: hq, match: hq, model: quality, budget_ms: 300, fallback: [preview]}
  - {name: hedged, match: hedged, model: quality, budget_ms: 1000, fallback: [preview], hedge: {after_ms: 50}}
  - {name: alone, match: alone, model: quality, budget_ms: 1000}
default_route: preview
"""


def now() -> float:
    return asyncio.get_running_loop().time()


def fake_calls(b: TritonBackend, delay: dict[str, float]) -> None:
    """A call takes ``delay`` seconds (by replica URL, else by model) and reports that
    as its compute (COMPUTE_NS)."""
    b.replicas.start = lambda: None  # type: ignore[method-assign]  # no health checks here

    async def call(replica: Replica, model: Model, request: ImageRequest, timeout_s: float, priority: int | None):  # type: ignore[no-untyped-def]
        seconds = delay.get(replica.url, delay.get(model.name, 0.0))
        await asyncio.sleep(seconds)
        return ImageResult(np.zeros((1, 2, 2, 3), np.uint8), "1", compute_ns=(round(seconds * 1e9),))

    b._call_http = call  # type: ignore[method-assign]


def two_replicas(delays: dict[str, float]) -> TritonBackend:
    spec = Backend("t", "triton", "http://r0:1", replicas=("http://r0:1", "http://r1:1"), retry=RetryPolicy())
    b = TritonBackend(spec, asyncio.get_running_loop().time)
    fake_calls(b, delays)
    return b


@virtual_time
async def test_a_replica_hedges_loser_is_wasted_on_its_replica_and_the_winner_answered() -> None:
    b = two_replicas({"http://r0:1": 3600.0, "http://r1:1": 0.1})
    await b.generate(DRAFT, REQ, timeout_s=1.5)
    await asyncio.sleep(0)  # the loser's cancellation lands
    r0, r1 = b.replicas.replicas
    assert r0.wasted_s == pytest.approx({("draft", "hedge"): OVERDUE_S + 0.1})
    assert r0.answered_ns == {} and r1.answered_ns == {"draft": 100_000_000} and r1.wasted_s == {}
    metrics = Metrics()
    metrics.watch(lambda: {"backends": {"t": b.snapshot()}})
    wasted = metrics.registry.get_sample_value(
        "router_compute_wasted_seconds_total", {"model": "draft", "reason": "hedge"}
    )
    assert wasted == pytest.approx(OVERDUE_S + 0.1)


@virtual_time
async def test_a_hedged_pair_the_client_leaves_is_abandoned_not_a_hedge() -> None:
    b = two_replicas({"http://r0:1": 3600.0, "http://r1:1": 3600.0})
    call = asyncio.ensure_future(b.generate(DRAFT, REQ, timeout_s=10.0))
    await asyncio.sleep(OVERDUE_S + 0.5)  # both replicas are computing
    call.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await call
    await asyncio.sleep(0)
    r0, r1 = b.replicas.replicas
    assert r0.wasted_s == pytest.approx({("draft", "abandoned"): OVERDUE_S + 0.5})
    assert r1.wasted_s == pytest.approx({("draft", "abandoned"): 0.5})


def test_why_a_call_was_given_up() -> None:
    """What the canceller said wins; else running out its time is a timeout, and
    anything sooner is abandoned (a reason nobody knows is not taken)."""
    assert given_up_because(asyncio.CancelledError("hedge"), 0.1, 1.0) == "hedge"
    assert given_up_because(asyncio.CancelledError("cancelled"), 1.0, 1.0) == "cancelled"
    assert given_up_because(asyncio.CancelledError(), 0.95, 1.0) == "timeout"
    assert given_up_because(asyncio.CancelledError("whatever"), 0.2, 1.0) == "abandoned"


def gateway(preview_s: float = 0.01) -> tuple[Gateway, TritonBackend]:
    clock = asyncio.get_running_loop().time
    made: list[TritonBackend] = []

    def factory(spec: Backend) -> TritonBackend:
        b = TritonBackend(spec, clock)
        fake_calls(b, {"quality": 5.0, "preview": preview_s})
        made.append(b)
        return b

    return Gateway(compile_text(ROUTES, env={}), backend_factory=factory, clock=clock), made[0]


@virtual_time
async def test_a_timed_out_attempt_before_a_downgrade_is_wasted_and_not_billed() -> None:
    gw, b = gateway()
    served = await gw.generate(RequestFacts("a", intent="hq"), REQ)
    assert served.model.name == "preview" and served.fallback == (("quality", "timeout"),)
    (replica,) = b.replicas.replicas
    (seconds,) = replica.wasted_s.values()
    assert list(replica.wasted_s) == [("quality", "timeout")] and seconds == pytest.approx(
        0.3 - 0.04 - 0.02
    )  # preview: 40 ms + margin
    assert served.compute == (10_000_000, "model"), "billed: the answer's own compute, not the timed-out call's"
    assert replica.answered_ns == {"preview": 10_000_000}


@virtual_time
async def test_a_tier_hedges_loser_is_wasted_as_hedge_and_not_billed() -> None:
    gw, b = gateway()
    served = await gw.generate(RequestFacts("a", intent="hedged"), REQ)
    await asyncio.sleep(0)
    assert served.hedged and served.model.name == "preview"
    (replica,) = b.replicas.replicas
    assert replica.wasted_s == pytest.approx({("quality", "hedge"): 0.05 + 0.01})
    assert served.compute == (10_000_000, "model")


@virtual_time
async def test_a_request_whose_client_left_is_wasted_as_abandoned() -> None:
    gw, b = gateway()
    request = asyncio.ensure_future(gw.generate(RequestFacts("a", intent="alone"), REQ))
    await asyncio.sleep(0.3)
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request
    (replica,) = b.replicas.replicas
    assert replica.wasted_s == pytest.approx({("quality", "abandoned"): 0.3}) and replica.answered_ns == {}


@pytest.mark.parametrize(("leaves_at", "wasted"), [(0.03, {"quality": 0.03}), (0.2, {"quality": 0.2, "preview": 0.15})])
@virtual_time
async def test_a_tier_hedge_the_client_leaves_is_abandoned_before_and_after_the_hedge_starts(
    leaves_at: float, wasted: dict[str, float]
) -> None:
    """Before the hedge's 50 ms the first attempt is cancelled too (not left running for
    nobody); after it, both are abandoned — neither lost a race."""
    gw, b = gateway(preview_s=5.0)
    request = asyncio.ensure_future(gw.generate(RequestFacts("a", intent="hedged"), REQ))
    await asyncio.sleep(leaves_at)
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request
    await asyncio.sleep(10.0)  # long enough for any attempt left running to answer
    (replica,) = b.replicas.replicas
    assert replica.wasted_s == pytest.approx({(model, "abandoned"): s for model, s in wasted.items()})
    assert replica.answered_ns == {}


@virtual_time
async def test_a_call_given_up_while_queued_wasted_nothing_and_the_running_one_its_run() -> None:
    """One instance: the first call runs, the second queues behind it. Both given up at
    0.5 s: the first wasted its 0.5 s of execution; the second, still queued by the
    lane's account, cost Triton nothing (its wait is not compute)."""
    spec = Backend("t", "triton", "http://r0:1", retry=RetryPolicy())
    b = TritonBackend(spec, asyncio.get_running_loop().time)
    fake_calls(b, {"draft": 10.0})
    calls = [asyncio.ensure_future(b.generate(DRAFT, REQ, timeout_s=30)) for _ in range(2)]
    await asyncio.sleep(0.5)
    for call in calls:
        call.cancel()
    for call in calls:
        with contextlib.suppress(asyncio.CancelledError):
            await call
    (r0,) = b.replicas.replicas
    assert r0.wasted_s == pytest.approx({("draft", "abandoned"): 0.5})
