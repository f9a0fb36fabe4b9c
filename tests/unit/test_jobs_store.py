"""Jobs in the state store (SQLite, two connections standing for two gateway processes):
idempotent creation under concurrency, caps, fair order, claims bounded per tier over
all replicas, leases, the reaper, cancel, listing and events."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

from image_router.config.table import JobsConfig, JobTier
from image_router.jobs.model import Job, new_id
from image_router.jobs.store import JobStore
from image_router.state import GuardedState, SqliteState

CONFIG = JobsConfig(max_queued_per_tenant=3, max_queued=5, lease_s=0.2, max_attempts=2,
                    tiers={"draft": JobTier(max_running=1)})  # fmt: skip


def stores(tmp_path: Path, n: int = 2, config: JobsConfig = CONFIG) -> list[JobStore]:
    return [JobStore(GuardedState(SqliteState(tmp_path / "state.db"), 1.0), config) for _ in range(n)]


async def close(*all: JobStore) -> None:
    for store in all:
        await store.state.aclose()


def job(tenant: str = "acme", n: int = 1, at: float = 100.0, **changes: object) -> Job:
    made = Job(
        id=new_id(at, os.urandom(10)), tenant=tenant, tier="draft", route="default",
        request={"prompt": "p", "n": n, "seeds": [1] * n}, created_at=at, deadline_at=at + 3600,
        expires_at=at + 86400, fingerprint="f1",
    )  # fmt: skip
    return dataclasses.replace(made, **changes)  # type: ignore[arg-type]


def test_twenty_concurrent_submissions_with_one_key_make_one_job(tmp_path: Path) -> None:
    """Across two processes' connections: one job, 19 replays naming it; the same key
    with another request is told so (422 at the edge)."""

    async def run() -> None:
        a, b = stores(tmp_path)
        try:
            answers = await asyncio.gather(*(
                (a if i % 2 else b).submit(job(), "order-42") for i in range(20)
            ))  # fmt: skip
            ids = {s.job.id for s in answers}
            assert len(ids) == 1, ids
            assert sum(not s.replayed for s in answers) == 1
            assert len(await a.candidates("draft")) == 1, "queued once"
            elsewhere = await b.submit(job(tier="noop"), "order-42")
            assert elsewhere.replayed and elsewhere.job.id in ids, "the key, not the queue, makes it one"
            other = await a.submit(job(fingerprint="f2"), "order-42")
            assert other.replayed and other.reused
        finally:
            await close(a, b)

    asyncio.run(run())


def test_queue_caps_and_fair_order_between_tenants(tmp_path: Path) -> None:
    """A tenant's 4th queued job is refused (cap 3), as is the 6th of all (cap 5); a
    tenant that queued three jobs does not keep a tenant with one waiting behind them."""

    async def run() -> None:
        (store,) = stores(tmp_path, 1)
        try:
            heavy = [await store.submit(job("heavy", at=100 + i), None) for i in range(4)]
            assert [s.full for s in heavy] == [False, False, False, True]
            light = await store.submit(job("light", at=110), None)
            assert not light.full
            assert (await store.submit(job("third", at=111), None)).full is False
            assert (await store.submit(job("fourth", at=112), None)).full, "all tenants: 5"
            order = sorted(await store.candidates("draft"), key=lambda j: (j.tag, j.id))
            assert [j.tenant for j in order][:3] == ["heavy", "light", "third"], [(j.tenant, j.tag) for j in order]
        finally:
            await close(store)

    asyncio.run(run())


def test_claims_hold_max_running_over_replicas_and_the_reaper_requeues_a_lost_job(tmp_path: Path) -> None:
    """Two replicas claim two jobs of a tier with max_running 1: one runs. Its lease
    lapses (its replica died): the reaper requeues it, attempts kept; the next loss
    fails it (max_attempts 2); a renewal by the lost owner is refused."""

    async def run() -> None:
        a, b = stores(tmp_path)
        try:
            first, second = [await a.submit(job(at=100 + i), None) for i in range(2)]
            got = [await a.claim(first.job, "A", 200.0), await b.claim(second.job, "B", 200.0)]
            assert got[0] is not None and got[1] is None, "the tier runs one job at a time"
            assert await b.claim(first.job, "B", 200.0) is None, "taken already"
            assert await a.heartbeat(first.job.id, "A") is not None
            await asyncio.sleep(0.3)  # the lease (0.2 s) lapses: A is gone
            assert await b.reap(201.0) >= 1
            requeued = await b.get(first.job.id)
            assert requeued is not None and requeued.status == "queued" and requeued.attempts == 1
            assert await a.heartbeat(first.job.id, "A") is None, "the lost owner must stop"
            again = await b.claim(requeued, "B", 202.0)
            assert again is not None and again.attempts == 2
            await asyncio.sleep(0.3)
            await a.reap(203.0)
            failed = await a.get(first.job.id)
            assert failed is not None and failed.status == "failed" and failed.error is not None
            assert failed.error["code"] == "worker_lost"
            taken = await a.claim(second.job, "A", 204.0)
            assert taken is not None, "its place on the tier is free again"
            assert not await b.hand_back(second.job.id, "B", 205.0), "only its owner hands it back"
            assert await a.hand_back(second.job.id, "A", 205.0), "A shuts down"
            back = await b.get(second.job.id)
            assert back is not None and back.status == "queued" and back.attempts == 0
            assert await b.claim(back, "B", 206.0) is not None, "at once, without waiting out the lease"
        finally:
            await close(a, b)

    asyncio.run(run())


def test_one_terminal_state_cancel_events_listing_and_delete(tmp_path: Path) -> None:
    """The owner finishes once; a replica that lost the job cannot finish it; cancel of a
    running job asks it to stop; the events replay in order; another tenant sees nothing."""

    async def run() -> None:
        a, b = stores(tmp_path)
        try:
            made = (await a.submit(job(), None)).job
            running = await a.claim(made, "A", 200.0)
            assert running is not None
            assert await b.finish(running, "B", running.finished("completed", 201.0, images=1), [b"x"], 60) is None
            cancelling = await b.update(made.id, "cancel", 201.5, "acme")
            assert cancelling is not None and cancelling.status == "cancelling"
            seen = await a.heartbeat(made.id, "A")
            assert seen is not None and seen.status == "cancelling", "the owner hears of it at its next renewal"
            ended = await a.finish(running, "A", running.finished("failed", 202.0), [], 60)
            assert ended is not None and ended.status == "cancelled"
            assert await a.finish(running, "A", running.finished("completed", 203.0, images=1), [b"x"], 60) is None
            types = [e["type"] for e in await b.events(made.id)]
            assert types == ["image_job.queued", "image_job.started", "image_job.cancelling", "image_job.cancelled"]
            assert [e["type"] for e in await b.events(made.id, after=2)] == types[2:]
            assert await b.get(made.id, "other") is None and await b.update(made.id, "cancel", 1.0, "other") is None
            assert [j.id for j in await b.listing("acme", 10)] == [made.id] and await b.listing("other", 10) == []
            await b.delete(ended)
            assert await a.get(made.id) is None and await a.events(made.id) == []
        finally:
            await close(a, b)

    asyncio.run(run())
