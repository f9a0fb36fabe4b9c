"""What an operator reads about the jobs (image_router/jobs/ops.py), without sockets: the census
over the store's indexes (a SQLite state store in a file, as one machine runs it), the
tallies, the access-log line of an attempt, the metrics the census turns into, and the
``router jobs`` lines."""

from __future__ import annotations

import asyncio
import dataclasses
import os
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from image_router.cli_admin import jobs_lines
from image_router.config.table import JobsConfig, JobTier
from image_router.jobs.model import Job, new_id
from image_router.jobs.ops import Census, attempt_line, result_status, take_census, tally
from image_router.jobs.store import JobStore
from image_router.state import GuardedState, SqliteState
from image_router.telemetry.metrics import Metrics

CONFIG = JobsConfig(tiers={"draft": JobTier(max_running=2), "quality": JobTier(max_running=1)})


def job(tier: str = "draft", tenant: str = "acme", at: float = 100.0, **changes: object) -> Job:
    made = Job(
        id=new_id(at, os.urandom(10)), tenant=tenant, tier=tier, route="default",
        request={"prompt": "p", "n": 1, "seeds": [1]}, created_at=at, deadline_at=at + 3600,
        expires_at=at + 86400, fingerprint="f1",
    )  # fmt: skip
    return dataclasses.replace(made, **changes)  # type: ignore[arg-type]


def test_a_census_counts_the_store_s_jobs_by_state_and_tier(tmp_path: Path) -> None:
    """Three queued (two draft, one quality), one running, one cancelling, one finished:
    the census says queued 3 (per tier 2 and 1), in_progress 1, cancelling 1, the oldest
    queued job's submission time — read through the indexes the store itself keeps."""

    async def run() -> None:
        store = JobStore(GuardedState(SqliteState(tmp_path / "state.db"), 1.0), CONFIG)
        try:
            for i, (tier, at) in enumerate([("draft", 90.0), ("draft", 95.0), ("quality", 97.0), ("draft", 99.0),
                                            ("quality", 80.0), ("draft", 85.0)]):  # fmt: skip
                assert not (await store.submit(job(tier, tenant=f"t{i}", at=at), None)).full
            picked = {j.created_at: j for j in await store.candidates("draft")}
            picked |= {j.created_at: j for j in await store.candidates("quality")}
            running = await store.claim(picked[99.0], "replica-a", 120.0)
            cancelling = await store.claim(picked[80.0], "replica-a", 120.0)
            finished = await store.claim(picked[85.0], "replica-b", 120.0)
            assert running and cancelling and finished
            await store.update(cancelling.id, "cancel", 121.0)
            assert await store.finish(finished, "replica-b", finished.finished("completed", 122.0), [b"x"], 60)
            census = await take_census(store.state, ["draft", "quality", "noop"], 100, 130.0)
        finally:
            await store.state.aclose()
        assert census.counts() == {"queued": 3, "in_progress": 1, "cancelling": 1}
        assert census.queued_by_tier == {"draft": 2, "quality": 1}, "a tier with none is left out"
        assert census.running_by_tier == {"draft": 1, "quality": 1}
        assert census.oldest_queued_at == 90.0 and census.oldest_age_s(130.0) == 40.0
        assert census.webhook_backlog == 0

    asyncio.run(run())


def test_tally_counts_only_running_states() -> None:
    """Queued or finished jobs among the running index's reads (a race with their end)
    are not counted."""
    jobs = [job(status="in_progress"), job("quality", status="cancelling"), job(status="completed"),
            job(status="queued"), job(status="in_progress")]  # fmt: skip
    assert tally(jobs) == ({"in_progress": 2, "cancelling": 1}, {"draft": 2, "quality": 1})


def test_an_empty_census_has_no_oldest_age() -> None:
    assert Census(at=10.0).oldest_age_s(50.0) == 0.0
    assert Census(at=10.0, oldest_queued_at=60.0).oldest_age_s(50.0) == 0.0, "a clock behind: never negative"


def test_an_attempt_s_line_reads_like_a_request_s() -> None:
    """request_id = the job's id, api = job, the status /result answers for how it
    ended, wait from submission to start, strings for tags; the tenant only when there
    is one (open mode has none), the error code of a failure."""
    ran = job(tenant="acme", status="completed", started_at=103.5, attempts=2, model_version="draft@1")
    line = attempt_line(ran, "completed", "idle", 1.25, 105.0)
    assert line == {
        "ts": 105.0, "request_id": ran.id, "api": "job", "status": 200, "outcome": "completed",
        "latency_ms": 1250.0, "wait_ms": 3500.0, "route": "default", "model": "draft@1", "tier": "draft",
        "attempts": "2", "mode": "idle", "tenant": "acme",
    }  # fmt: skip
    failed = job(tenant="", status="failed", started_at=101.0,
                 error={"code": "backend_rejected", "message": "no", "status": 422})  # fmt: skip
    line = attempt_line(failed, "failed", "share", 0.5, 102.0)
    assert "tenant" not in line and line["status"] == 422 and line["error"] == "backend_rejected"
    assert [result_status(ran, o) for o in ("cancelled", "expired", "lost", "handed_back")] == [409, 504, 503, 503]


def test_the_census_becomes_metrics() -> None:
    """router_jobs{state}, per tier, the oldest queued age, the backlog, draining — and
    nothing at all when jobs are off."""
    state = {
        "counts": {"queued": 3, "in_progress": 1, "cancelling": 0},
        "queued_by_tier": {"draft": 3}, "running_by_tier": {"quality": 1}, "running_here": {"quality": 1},
        "oldest_queued_age_s": 12.5, "webhook_backlog": 2, "draining": True,
    }  # fmt: skip
    current: dict[str, object] = {"jobs": state}
    metrics = Metrics()
    metrics.watch(lambda: current)
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }
    assert samples[("router_jobs", (("state", "queued"),))] == 3
    assert samples[("router_jobs", (("state", "in_progress"),))] == 1
    assert samples[("router_jobs_tier", (("state", "queued"), ("tier", "draft")))] == 3
    assert samples[("router_jobs_tier", (("state", "running"), ("tier", "quality")))] == 1
    assert samples[("router_jobs_running_here", (("tier", "quality"),))] == 1
    assert samples[("router_job_queue_oldest_seconds", ())] == 12.5
    assert samples[("router_webhook_backlog", ())] == 2
    assert samples[("router_jobs_draining", ())] == 1
    current["jobs"] = None
    assert b"router_jobs{" not in metrics.render(), "no jobs: block, no job series"


def test_router_jobs_prints_counts_per_tier() -> None:
    overview = {
        "replica": "pod-a:1:ab", "draining": True, "running_here": {"quality": 1},
        "finished_here": {"completed": 4, "failed": 0}, "counts": {"queued": 2, "in_progress": 1, "cancelling": 0},
        "oldest_queued_age_s": 7.26, "queued_by_tier": {"draft": 2}, "running_by_tier": {"quality": 1},
        "webhook_backlog": 0,
    }  # fmt: skip
    assert jobs_lines(overview) == [
        "replica pod-a:1:ab: DRAINING (claims no new job)",
        "queued 2 (oldest 7.3 s), in_progress 1, cancelling 0; webhook backlog 0",
        "  draft: queued 2, running 0 (0 here)",
        "  quality: queued 0, running 1 (1 here)",
        "attempts ended here: completed 4",
    ]
