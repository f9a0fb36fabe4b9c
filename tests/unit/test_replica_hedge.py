"""A call overdue on one replica is also sent to another (image_router/backends/triton.py,
``TritonBackend._hedged``), on virtual time with the HTTP call replaced by a sleep per
replica — pure logic: which replica answers, when, and what the retry budget allows.

The chaos suite's frozen-replica scenario is the same promise against real Tritons."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from image_router.backends.base import ImageRequest, ImageResult
from image_router.backends.replicas import Replica
from image_router.backends.triton import TritonBackend
from image_router.config.table import Backend, Model, RetryPolicy
from image_router.errors import BackendTimeout
from image_router.policy.hedge import FACTOR, SLACK_S
from tests.virtual_time import virtual_time

DRAFT = Model("draft", "t", "draft", None, 100.0)  # a 100 ms hint: the lane's prior
REQ = ImageRequest(("a cat",), seeds=(1,))


def backend(delays: dict[str, float], retry: RetryPolicy | None = None) -> tuple[TritonBackend, list[str]]:
    """Two replicas; a call to ``url`` takes ``delays[url]`` seconds (or times out)."""
    spec = Backend("t", "triton", "http://r0:1", replicas=("http://r0:1", "http://r1:1"), retry=retry or RetryPolicy())
    b = TritonBackend(spec, asyncio.get_running_loop().time)
    b.replicas.start = lambda: None  # type: ignore[method-assign]  # no health checks here
    calls: list[str] = []

    async def call(replica: Replica, model: Model, request: ImageRequest, timeout_s: float, priority: int | None):  # type: ignore[no-untyped-def]
        calls.append(replica.url)
        delay = delays[replica.url]
        await asyncio.sleep(min(delay, timeout_s))
        if delay > timeout_s:
            raise BackendTimeout(f"{replica.url} timed out")
        return ImageResult(np.full((1, 1, 1, 3), int(replica.url[-3]), np.uint8), "1")

    b._call_http = call  # type: ignore[method-assign]
    return b, calls


def now() -> float:
    return asyncio.get_running_loop().time()


OVERDUE_S = FACTOR * 0.1 + SLACK_S


@virtual_time
async def test_a_frozen_replicas_call_is_answered_by_the_other_soon_after_it_is_overdue() -> None:
    b, calls = backend({"http://r0:1": 3600.0, "http://r1:1": 0.1})
    t0 = now()
    result = await b.generate(DRAFT, REQ, timeout_s=1.5)
    assert int(result.images[0, 0, 0, 0]) == 1  # from r1
    assert calls == ["http://r0:1", "http://r1:1"] and b.hedges == 1
    assert now() - t0 == pytest.approx(OVERDUE_S + 0.1, abs=1e-3)
    r0 = b.replicas.replicas[0]
    await asyncio.sleep(0)  # the loser's cancellation lands
    assert r0.outstanding == 0 and r0.lane(DRAFT).ahead(now()) <= 1  # given up, counted as abandoned
    # beaten while still waiting: counted against the frozen replica's model circuit, and
    # the winner's replica is not blamed for anything
    assert r0.model_breaker("draft").failures_in_a_row == 1
    assert b.replicas.replicas[1].model_breaker("draft").failures_in_a_row == 0


@virtual_time
async def test_a_call_answered_in_time_is_never_hedged() -> None:
    b, calls = backend({"http://r0:1": 0.2, "http://r1:1": 0.1})
    result = await b.generate(DRAFT, REQ, timeout_s=1.5)  # 0.2 s: slower than the hint, not overdue
    assert int(result.images[0, 0, 0, 0]) == 0 and calls == ["http://r0:1"] and b.hedges == 0


@virtual_time
async def test_the_first_to_answer_wins_even_when_it_is_the_overdue_one() -> None:
    b, calls = backend({"http://r0:1": OVERDUE_S + 0.05, "http://r1:1": 1.0})
    t0 = now()
    result = await b.generate(DRAFT, REQ, timeout_s=1.5)
    assert int(result.images[0, 0, 0, 0]) == 0 and b.hedges == 1 and calls == ["http://r0:1", "http://r1:1"]
    assert now() - t0 == pytest.approx(OVERDUE_S + 0.05, abs=1e-3)


@virtual_time
async def test_hedges_spend_the_retry_budget_and_stop_when_it_is_spent() -> None:
    """Budget: 20% of requests, at least 3, in 10 s. With r0 frozen for good, the first
    3 requests are rescued by r1; the 4th waits out its timeout on r0 (then the budget
    walk falls back, outside this class)."""
    b, calls = backend({"http://r0:1": 3600.0, "http://r1:1": 0.01}, RetryPolicy(attempts=0))
    b.replicas.choose = lambda model, exclude: next(  # type: ignore[method-assign]
        (r for r in b.replicas.replicas if r not in exclude), None
    )  # r0 first every time, as a replica that has not been taken out yet would be
    for _ in range(3):
        await b.generate(DRAFT, REQ, timeout_s=1.0)
    assert b.hedges == 3
    t0 = now()
    with pytest.raises(BackendTimeout):
        await b.generate(DRAFT, REQ, timeout_s=1.0)
    assert b.hedges == 3 and now() - t0 == pytest.approx(1.0, abs=1e-3)
    assert calls == ["http://r0:1", "http://r1:1"] * 3 + ["http://r0:1"]


@virtual_time
async def test_no_hedge_is_sent_that_could_not_answer_before_the_deadline() -> None:
    """r1's recent answers take 1 s; 0.25 s after sending to a frozen r0 only 0.35 s are
    left: a hedge there would be a second computation for nothing."""
    b, calls = backend({"http://r0:1": 3600.0, "http://r1:1": 1.0})
    r1 = b.replicas.replicas[1]
    lane = r1.lane(DRAFT)
    for _ in range(3):  # r1's recent service time: 1 s
        t = lane.send(now())
        lane.done(t, now() + 1.0, ok=True)
    b.replicas.choose = lambda model, exclude: next(  # type: ignore[method-assign]
        (r for r in b.replicas.replicas if r not in exclude), None
    )
    with pytest.raises(BackendTimeout):
        await b.generate(DRAFT, REQ, timeout_s=0.6)
    assert calls == ["http://r0:1"] and b.hedges == 0


@virtual_time
async def test_a_fault_of_our_own_leaves_no_ticket_in_the_lane() -> None:
    """Anything raised that is not a backend's answer (an encoding bug, a closed channel)
    still gives the lane its ticket back: a stuck ``ahead`` would keep the backend busy
    for background work for good."""
    b, _calls = backend({"http://r0:1": 0.01, "http://r1:1": 0.01})

    async def broken(*args: object, **kwargs: object) -> ImageResult:
        raise KeyError("IMAGE")

    b._call_http = broken  # type: ignore[assignment,method-assign]
    with pytest.raises(KeyError):
        await b.generate(DRAFT, REQ, timeout_s=1.0)
    assert all(r.lane(DRAFT).ahead(now()) == 0 for r in b.replicas.replicas) and not b.busy()
