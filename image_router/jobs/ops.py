"""What an operator reads about the jobs: counts by state, the oldest queued job, what
runs where, and one access-log line per attempt.

The counts come from the store's indexes — the ones the runner claims from (see
:mod:`image_router.jobs.store`) — so every replica sharing the store sees the same numbers:

- ``qa`` (every queued job, scored by creation): the queued count and the oldest;
- ``q:{m}`` (a tier's queue): queued per tier;
- ``run`` (every running job): read, to tell ``in_progress`` from ``cancelling`` and
  count per tier — there are at most the tiers' ``max_running`` together;
- ``wq`` (webhook deliveries waiting): the delivery backlog.

Finished jobs have no index of their own (they are found by id, or by tenant), so
terminal counts are not in a census: a replica reports what its own attempts ended
with since it started (:class:`~image_router.jobs.runner.JobRunner`'s ``finished``).

A census is a few index reads of at most ``max_queued`` members each (the state
store's protocol has no "how many" of an index, so a count reads the members; with
nothing queued the tiers' queues are not read at all): cheap for an admin call, but
not for every scrape, so the runner keeps one refreshed every few seconds and the
metrics and the status page read that (:data:`CENSUS_EVERY_S`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from image_router.errors import StoreUnavailable
from image_router.jobs.model import Job
from image_router.state import GuardedState

__all__ = [
    "CENSUS_EVERY_S",
    "OUTCOMES",
    "Census",
    "active",
    "attempt_line",
    "result_status",
    "summary",
    "take_census",
    "tally",
]

CENSUS_EVERY_S = 5.0  # how stale the metrics' and the status page's counts may be
# how an attempt ended: the job's terminal state, or it went on elsewhere (``lost``: its
# lease was gone or the job deleted; ``handed_back``: this replica was shutting down)
OUTCOMES = ("completed", "failed", "cancelled", "expired", "lost", "handed_back")


@dataclass(frozen=True, slots=True)
class Census:
    """The jobs in the store as one replica read them at ``at`` (wall clock)."""

    at: float
    queued: int = 0
    in_progress: int = 0
    cancelling: int = 0
    queued_by_tier: dict[str, int] = field(default_factory=dict)
    running_by_tier: dict[str, int] = field(default_factory=dict)
    oldest_queued_at: float | None = None  # the created_at of the oldest queued job
    webhook_backlog: int = 0

    def counts(self) -> dict[str, int]:
        return {"queued": self.queued, "in_progress": self.in_progress, "cancelling": self.cancelling}

    def oldest_age_s(self, now: float) -> float:
        """Seconds the oldest queued job has waited since its submission (0: none queued)."""
        return 0.0 if self.oldest_queued_at is None else max(0.0, now - self.oldest_queued_at)

    def describe(self, now: float) -> dict[str, Any]:
        return {
            "counts": self.counts(),
            "oldest_queued_age_s": round(self.oldest_age_s(now), 3),
            "queued_by_tier": self.queued_by_tier,
            "running_by_tier": self.running_by_tier,
            "webhook_backlog": self.webhook_backlog,
            "read_at": self.at,
        }


def tally(running: Iterable[Job]) -> tuple[dict[str, int], dict[str, int]]:
    """Running jobs by status (``in_progress``, ``cancelling``) and by tier."""
    by_status = {"in_progress": 0, "cancelling": 0}
    by_tier: dict[str, int] = {}
    for job in running:
        if job.status in by_status:
            by_status[job.status] += 1
            by_tier[job.tier] = by_tier.get(job.tier, 0) + 1
    return by_status, by_tier


async def _scan(state: GuardedState, index: str, limit: int) -> list[tuple[str, float]]:
    rows = await state.scan(index, limit=limit)
    if rows is None:
        raise StoreUnavailable("the state store did not answer: try again")
    return rows


async def take_census(state: GuardedState, tiers: Iterable[str], limit: int, now: float) -> Census:
    """Read the counts from the store (``limit``: the most members read of one index —
    the global ``max_queued`` bounds the queues). :class:`StoreUnavailable` when the
    store does not answer."""
    queued = await _scan(state, "qa", limit)
    by_tier = {tier: len(await _scan(state, f"q:{tier}", limit)) for tier in tiers} if queued else {}
    running_ids = [job_id for job_id, _ in await _scan(state, "run", limit)]
    raws = await state.get_many([f"job:{job_id}" for job_id in running_ids]) if running_ids else []
    if raws is None:
        raise StoreUnavailable("the state store did not answer: try again")
    by_status, running_by_tier = tally(Job.load(raw) for raw in raws if raw is not None)
    backlog = await _scan(state, "wq", limit)
    return Census(
        at=now,
        queued=len(queued),
        in_progress=by_status["in_progress"],
        cancelling=by_status["cancelling"],
        queued_by_tier={tier: n for tier, n in by_tier.items() if n},
        running_by_tier=running_by_tier,
        oldest_queued_at=queued[0][1] if queued else None,
        webhook_backlog=len(backlog),
    )


async def active(state: GuardedState, limit: int) -> list[Job]:
    """Up to ``limit`` queued jobs (the oldest first), then up to ``limit`` running."""
    ids = [job_id for job_id, _ in await _scan(state, "qa", limit)]
    ids += [job_id for job_id, _ in await _scan(state, "run", limit)]
    raws = await state.get_many([f"job:{job_id}" for job_id in ids]) if ids else []
    if raws is None:
        raise StoreUnavailable("the state store did not answer: try again")
    return [Job.load(raw) for raw in raws if raw is not None]


def summary(job: Job, now: float) -> dict[str, Any]:
    """One line of an operator's listing (any tenant's job)."""
    return {
        "id": job.id,
        "status": job.status,
        "tenant": job.tenant,
        "tier": job.tier,
        "route": job.route,
        "attempts": job.attempts,
        "age_s": round(max(0.0, now - job.created_at), 3),
        "owner": job.owner,
    }


def result_status(job: Job, outcome: str) -> int:
    """The HTTP status ``GET /v1/images/jobs/{id}/result`` answers for how the attempt
    ended (503 for an attempt that did not end the job: it goes on elsewhere)."""
    if outcome == "completed":
        return 200
    if outcome == "cancelled":
        return 409  # job_cancelled
    if outcome == "expired":
        return 504  # deadline_exceeded
    if outcome == "failed":
        return int((job.error or {}).get("status", 500))
    return 503


def attempt_line(job: Job, outcome: str, mode: str, run_s: float, now: float) -> dict[str, Any]:
    """The access-log line of one attempt of ``job`` (as it was claimed, or as it ended),
    shaped like a request's line so one pipeline reads both: ``request_id`` is the
    job's id, ``api`` is ``job``, tags are strings as the request lines' are."""
    wait_s = max(0.0, (job.started_at or now) - job.created_at)
    line: dict[str, Any] = {
        "ts": round(now, 3),
        "request_id": job.id,
        "api": "job",
        "status": result_status(job, outcome),
        "outcome": outcome,
        "latency_ms": round(run_s * 1000, 2),
        "wait_ms": round(wait_s * 1000, 2),
        "route": job.route,
        "model": job.model_version or job.tier,
        "tier": job.tier,
        "attempts": str(job.attempts),
        "mode": mode,
    }
    if job.tenant:
        line["tenant"] = job.tenant
    if job.error and outcome in ("failed", "expired"):
        line["error"] = str(job.error.get("code", ""))
    return line
