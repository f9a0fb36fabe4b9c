"""What a job leaves in the state store after its retention, its webhook deliveries as
its view shows them, an operator's redelivery, and the cluster-wide pause (SQLite, two
connections standing for two gateway processes)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import orjson

from image_router.config.table import JobsConfig, JobTier
from image_router.jobs.deliver import deliveries, redeliver
from image_router.jobs.store import JobStore
from image_router.state import Txn
from tests.unit.test_jobs_store import close, job, stores

CAPPED = JobsConfig(lease_s=0.2, max_running_per_tenant=1, tiers={"draft": JobTier(max_running=4)})
HOOK = {"url": "https://hooks.example.com/in", "events": ["started", "completed"]}
INDEXES = ("q:draft", "qd", "qt:acme", "qa", "r:draft", "rt:acme", "run", "jt:acme", "jx")


async def rows(store: JobStore, job_id: str) -> dict[str, list[str]]:
    """Every index row naming ``job_id`` (its events under ``ev``)."""
    out: dict[str, list[str]] = {}
    for index in INDEXES:
        found = [m for m, _ in await store.state.scan(index, limit=100) or [] if job_id in m]
        if found:
            out[index] = found
    events = await store.state.scan(f"ev:{job_id}", limit=100) or []
    if events:
        out["ev"] = [m for m, _ in events]
    return out


def test_a_job_lost_with_its_key_gives_back_its_tenants_running_place_at_its_retention(tmp_path: Path) -> None:
    """A running job whose key and lease are gone (its retention ran out while its
    replica was lost) held its tenant's only ``max_running`` place for ever; the sweep
    at its retention removes every row it left, and the tenant's next job runs."""

    async def run() -> None:
        a, b = stores(tmp_path, config=CAPPED)
        try:
            lost = (await a.submit(job(), None)).job
            assert await a.claim(lost, "A", 200.0) is not None
            await a.state.commit(Txn(delete=(f"job:{lost.id}", f"job:lease:{lost.id}")))
            nxt = (await b.submit(job(at=86_000.0), None)).job  # its deadline is after the sweep
            assert await b.claim(nxt, "B", 86_001.0) is None, "the lost job still holds acme's place"
            await b.reap(lost.expires_at - 1)
            assert "rt:acme" in await rows(b, lost.id), "not before its retention"
            await b.reap(lost.expires_at + 1)
            assert await rows(b, lost.id) == {}, "every row it left is gone"
            assert await b.claim(nxt, "B", 86_502.0) is not None, "acme's place is free again"
        finally:
            await close(a, b)

    asyncio.run(run())


def test_a_finished_job_leaves_nothing_after_its_retention(tmp_path: Path) -> None:
    """The job's key expires by its ttl; its listing row, its events and images go with
    the sweep (index rows have no ttl: before, every job left them for ever)."""

    async def run() -> None:
        (store,) = stores(tmp_path, 1)
        try:
            made = (await store.submit(job(), None)).job
            running = await store.claim(made, "A", 200.0)
            assert running is not None
            done = await store.finish(running, "A", running.finished("completed", 201.0, images=1), [b"png"], 60)
            assert done is not None
            before = await rows(store, made.id)
            assert set(before) == {"jt:acme", "jx", "ev"}, before
            await store.reap(made.expires_at + 1)
            assert await rows(store, made.id) == {}
            assert await store.get(made.id) is None and await store.image(made.id, 0) is None
        finally:
            await close(store)

    asyncio.run(run())


def test_deliveries_show_in_the_job_and_an_operator_redelivers_the_terminal_event(tmp_path: Path) -> None:
    """The view lists each event's delivery; redeliver queues the last terminal event
    again under the same webhook-id with a fresh count of attempts; a job that has not
    ended has nothing to redeliver."""

    async def run() -> None:
        (store,) = stores(tmp_path, 1)
        try:
            made = (await store.submit(job(webhook=HOOK), None)).job
            assert await deliveries(store.state, made) == [], "nothing announced while queued"
            running = await store.claim(made, "A", 200.0)
            assert running is not None
            assert await redeliver(store.state, running, 200.5) is None, "not finished: nothing to send again"
            done = await store.finish(running, "A", running.finished("completed", 201.0, images=1), [b"png"], 60)
            assert done is not None
            shown = await deliveries(store.state, done)
            assert [(d["type"], d["state"], d["attempts"]) for d in shown] == [
                ("image_job.started", "pending", 0), ("image_job.completed", "pending", 0),
            ]  # fmt: skip
            completed = shown[1]["id"]
            key = f"job:wh:{completed}"
            (raw,) = await store.state.get_many([key]) or [None]
            assert raw is not None
            failed = {**orjson.loads(raw), "state": "failed", "attempts": 10, "last_status": "500"}
            await store.state.commit(Txn(put=((key, orjson.dumps(failed), 60.0),), remove=(("wq", completed),)))
            assert [d["state"] for d in await deliveries(store.state, done)] == ["pending", "failed"]
            sent = await redeliver(store.state, done, 300.0)
            assert sent is not None and sent["id"] == completed, "the same webhook-id"
            again = (await deliveries(store.state, done))[1]
            assert (again["state"], again["attempts"], again["last_status"]) == ("pending", 0, None)
            queue = dict(await store.state.scan("wq", limit=10) or [])
            assert queue.get(completed) == 300.0, "due now"
            quiet = dataclasses.replace(done, webhook=None)
            assert await deliveries(store.state, quiet) == []
        finally:
            await close(store)

    asyncio.run(run())


def test_a_pause_reaches_every_replica_through_the_store(tmp_path: Path) -> None:
    async def run() -> None:
        a, b = stores(tmp_path)
        try:
            assert not await b.paused()
            await a.pause(True, 100.0)
            assert await b.paused(), "another process sees it"
            await b.pause(False, 101.0)
            assert not await a.paused()
        finally:
            await close(a, b)

    asyncio.run(run())


def test_one_replica_sweeps_at_a_time_and_a_reap_sweeps_past_one_batch(tmp_path: Path) -> None:
    """While replica A holds the sweep, B's reap forgets nothing (it would only repeat
    A's work); once free, one reap forgets all 70 due jobs — more than a batch of 64."""

    async def run() -> None:
        many = JobsConfig(max_queued=1000, max_queued_per_tenant=1000)
        a, b = stores(tmp_path, config=many)
        try:
            made = [(await a.submit(job(at=100.0 + i), None)).job for i in range(70)]
            late = made[-1].expires_at + 1
            assert await a.state.lease("job:sweep", "A", 30.0)
            await b.reap(late, "B")
            assert len(await b.state.scan("jx", limit=100) or []) == 70, "A holds the sweep"
            await a.state.release("job:sweep", "A")
            await b.reap(late, "B")
            assert await b.state.scan("jx", limit=100) == [] and await b.state.scan("jt:acme", limit=100) == []
        finally:
            await close(a, b)

    asyncio.run(run())
