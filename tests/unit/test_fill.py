"""The background filler (image_router/fill.py; docs/cache.md "background work") on virtual
time, against a stand-in dispatcher that says whether a tier is idle and takes a fixed
time per job: identical jobs are one, the queue is bounded (beyond it dropped and
counted), nothing runs while the tier is not idle, and on a tier with live traffic the
jobs take at most ``background_share`` of its time (a tier nobody uses is filled back to
back)."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass, field
from typing import Any

from image_router.backends.base import ImageRequest
from image_router.config.table import Arm, CacheConfig, Matcher, Model, Route, RouteCache, RoutingTable
from image_router.fill import Filler, FillJob
from tests.virtual_time import virtual_time

JOB_S = 2.0  # each job's generation, in virtual seconds
MODEL = Model("quality", "triton", "quality", "1", 2000.0)
ROUTE = Route("hq", Matcher(), (Arm("quality", 1.0),), 4000.0, cache=RouteCache(ttl_s=60.0, seedless="share"))


def table(share: float = 0.25) -> RoutingTable:
    cache = CacheConfig(background_share=share)
    return RoutingTable((ROUTE,), ROUTE, {"quality": MODEL}, {}, "digest", "routes.yaml", cache=cache)


@dataclass
class Stored:
    stored: bool = False


@dataclass
class FakeDispatcher:
    """``idle`` as the test sets it; ``serve`` takes :data:`JOB_S` and notes when it ran."""

    busy: bool = False
    runs: list[tuple[float, float]] = field(default_factory=list)  # (start, end) per job

    def idle(self, model: Model) -> bool:
        return not self.busy

    async def serve(self, *args: Any, **kwargs: Any) -> Stored:
        loop = asyncio.get_running_loop()
        start = loop.time()
        await asyncio.sleep(JOB_S)
        self.runs.append((start, loop.time()))
        return Stored()


def job(key: str, kind: str = "upgrade") -> FillJob:
    return FillJob(kind, ROUTE, "quality", ImageRequest(("a cathedral",), seeds=(1,)), key)


def filler(dispatcher: FakeDispatcher, share: float = 0.25, max_queue: int = 10_000) -> Filler:
    tbl = table(share)
    return Filler(dispatcher, lambda: tbl, max_queue=max_queue, clock=lambda: asyncio.get_running_loop().time())  # type: ignore[arg-type]


@virtual_time
async def test_identical_jobs_are_one() -> None:
    dispatcher = FakeDispatcher()
    fill = filler(dispatcher)
    assert fill.submit(job("k1")) is True
    assert fill.submit(job("k1")) is False  # the same key already waiting
    assert fill.submit(job("k2")) is True
    await asyncio.sleep(10 * JOB_S)
    assert len(dispatcher.runs) == 2
    assert fill.counts["upgrade"].as_dict() == {"queued": 2, "done": 2, "cached": 0, "failed": 0, "dropped": 0,
                                                "duplicate": 1}  # fmt: skip
    assert fill.submit(job("k1")) is True  # done: the same job may be queued again
    await fill.aclose()


@virtual_time
async def test_the_queue_is_bounded_and_what_does_not_fit_is_dropped_and_counted() -> None:
    dispatcher = FakeDispatcher(busy=True)  # nothing drains
    fill = filler(dispatcher, max_queue=3)
    accepted = [fill.submit(job(f"k{i}", "pregen")) for i in range(5)]
    assert accepted == [True, True, True, False, False]
    assert fill.pending() == 3
    assert fill.counts["pregen"].dropped == 2 and fill.counts["pregen"].queued == 3
    await fill.aclose()


@virtual_time
async def test_no_job_runs_while_the_tier_is_not_idle() -> None:
    dispatcher = FakeDispatcher(busy=True)
    fill = filler(dispatcher)
    fill.submit(job("k1"))
    loop = asyncio.get_running_loop()
    await asyncio.sleep(30.0)
    assert dispatcher.runs == [] and fill.pending() == 1 and fill.current is None
    freed = loop.time()
    dispatcher.busy = False
    await asyncio.sleep(5.0)
    assert len(dispatcher.runs) == 1
    start, _ = dispatcher.runs[0]
    assert freed <= start <= freed + 0.1  # picked up within one idle poll (50 ms)
    await fill.aclose()


@virtual_time
async def test_with_live_traffic_jobs_take_at_most_the_background_share() -> None:
    """share 0.25, jobs of 2 s, a live request every second: after each job the tier is
    left alone 2 * (1/0.25 - 1) = 6 s, so the jobs use a quarter of the tier's time."""
    dispatcher = FakeDispatcher()
    fill = filler(dispatcher, share=0.25)

    async def live_requests() -> None:  # one a second, the whole time
        while True:
            fill.note_live("quality")
            await asyncio.sleep(1.0)

    live = asyncio.create_task(live_requests())
    for i in range(4):
        fill.submit(job(f"k{i}"))
    await asyncio.sleep(4 * JOB_S * 4 + 1)
    starts = [start for start, _ in dispatcher.runs]
    assert len(starts) == 4
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    for gap in gaps:
        assert 8.0 - 0.01 <= gap <= 8.0 + 0.06, gaps  # 2 s of work, 6 s of rest, one idle poll
    busy = sum(end - start for start, end in dispatcher.runs[:-1])  # each job and the rest after it
    assert busy / (starts[-1] - starts[0]) <= 0.25 + 0.01
    live.cancel()
    await fill.aclose()


@virtual_time
async def test_a_tier_nobody_uses_is_filled_back_to_back() -> None:
    dispatcher = FakeDispatcher()
    fill = filler(dispatcher, share=0.25)  # no note_live: no live traffic
    for i in range(3):
        fill.submit(job(f"k{i}"))
    await asyncio.sleep(3 * JOB_S + 1)
    assert len(dispatcher.runs) == 3
    ends = [end for _, end in dispatcher.runs]
    assert ends[-1] - dispatcher.runs[0][0] <= 3 * JOB_S + 0.01
    await fill.aclose()


@virtual_time
async def test_a_job_whose_image_is_already_stored_is_counted_as_skipped_not_done() -> None:
    """docs/cache.md: pre-generation skips what is stored (its lookup is a hit)."""

    class StoredDispatcher(FakeDispatcher):
        async def serve(self, *args: Any, **kwargs: Any) -> Stored:
            return Stored(stored=True)

    fill = filler(StoredDispatcher())
    fill.submit(job("k1", "pregen"))
    await asyncio.sleep(1.0)
    assert fill.counts["pregen"].cached == 1 and fill.counts["pregen"].done == 0
    await fill.aclose()
