"""When a replica may start a job, and which one (pure: the clock is passed in).

Jobs run below interactive traffic, but never starve:

- **idle**: the tier has nothing ahead of a request in its forecast and a free
  admission slot (``Dispatcher.idle``, the background filler's rule): the job runs at
  the lowest priority (3), so no interactive request waits behind its admission;
- **share**: the tier is busy, but jobs are owed their ``min_share`` of its time: after
  a job of ``d`` seconds this replica's next share-mode job on the tier waits
  ``d * (1 / min_share - 1)`` — so under saturating interactive load jobs still take
  about ``min_share`` of the tier; they run at priority 1 (their slot is owed);
- **urgent**: a queued job whose deadline is near (``now + 1.5 * expected + margin``)
  goes first, whatever the fair order, at priority 1 (aging).

Among the rest the queue's fair order (weighted fair tags, :mod:`image_router.jobs.store`)
decides. A tenant already running its ``max_running`` jobs is passed over (its claim
would be refused), so another tenant's job starts instead of the tier idling.

**Estimates** (what a client polling a job sees, computed on read: nothing is written
per tick): a running job's share done is its time so far over its tier's usual service
time — the forecast's ``service_s``, learnt from answers, or the model's
``latency_hint_ms`` — times its images, at most 95 % until it ends; a queued job's
wait plays its tier's ``max_running`` places forward, each running job freeing its
place when its estimate says and each job ahead of it taking one service time. Both
are approximate: the models answer once, at the end (no denoising steps are reported),
and a job ahead may have more images or steps than the typical request.
"""

from __future__ import annotations

import heapq
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from image_router.jobs.model import Job

__all__ = ["Pacer", "pick", "run_estimate", "wait_estimate"]

PRIORITY = {"idle": 3, "share": 1, "urgent": 1}
ESTIMATE_CAP = 0.95  # a running job's estimate stays below done until it is


def pick(
    jobs: Sequence[Job], now: float, expected_s: float, margin_s: float, capped: Collection[str] = ()
) -> tuple[Job, str] | None:
    """The job to start and whether it is ``urgent`` (else ``fair``), or ``None``;
    ``capped``: tenants at their ``max_running``, whose jobs wait (urgent or not);
    ``expected_s``: one image's time on the tier (a job of ``n`` needs ``n`` of them, and
    is urgent that much sooner)."""
    live = [j for j in jobs if j.deadline_at > now and j.tenant not in capped]
    if not live:
        return None
    urgent = [j for j in live if now + expected_s * j.asked * 1.5 + margin_s >= j.deadline_at]
    if urgent:
        return min(urgent, key=lambda j: (j.deadline_at, j.id)), "urgent"
    return min(live, key=lambda j: (j.tag, j.id)), "fair"


@dataclass
class Pacer:
    """A tier's share-mode pacing on this replica."""

    min_share: float
    rest_until: float = 0.0
    running: set[str] = field(default_factory=set)

    def mode(self, idle: bool, urgent: bool, now: float) -> str | None:
        """``idle``, ``share``, ``urgent``, or ``None`` (not now)."""
        if urgent:
            return "urgent"
        if idle:
            return "idle"
        if self.min_share > 0 and now >= self.rest_until:
            return "share"
        return None

    def ran(self, mode: str, started: float, ended: float) -> None:
        """After a share-mode job, the tier is left to interactive traffic for a while."""
        if mode == "share" and 0 < self.min_share < 1:
            self.rest_until = ended + (ended - started) * (1 / self.min_share - 1)


def run_estimate(elapsed_s: float, expected_s: float) -> tuple[float, float]:
    """A running job's share done (0 to 0.95) and the seconds it likely has left. Past
    its expected time nothing says when it ends: the share stays at 0.95 and the rest
    at 5 % of the expected time."""
    expected_s = max(expected_s, 1e-3)
    done = min(ESTIMATE_CAP, max(0.0, elapsed_s) / expected_s)
    return done, max(expected_s - elapsed_s, (1 - ESTIMATE_CAP) * expected_s)


def wait_estimate(position: int, running_elapsed_s: Sequence[float], slots: int, service_s: float) -> float:
    """Seconds until the job at ``position`` (1: next) of its tier's queue likely
    starts: ``slots`` (the tier's ``max_running``) places, each running job's freeing
    when :func:`run_estimate` says, then every job ahead taking ``service_s``. With more
    running than places (``max_running`` lowered) a place frees only as the excess ends."""
    left = sorted(run_estimate(e, service_s)[1] for e in running_elapsed_s)
    frees = left[max(0, len(left) - slots) :] + [0.0] * max(0, slots - len(left))
    heapq.heapify(frees)
    for _ in range(max(0, position - 1)):
        heapq.heapreplace(frees, frees[0] + service_s)
    return frees[0]


def service_estimate(forecast_service_s: float | None, hint_ms: float | None) -> float:
    """One request's usual service time on a tier: the live forecast's (learnt from
    answers), else the model's ``latency_hint_ms``."""
    return float(forecast_service_s) if forecast_service_s is not None else (hint_ms or 1000) / 1000


def running_progress(job: Job, service_s: float, now: float) -> dict[str, Any] | None:
    """While ``job`` runs: the share of its expected time (``service_s`` per image) gone
    by, at most 95 % until it ends, the seconds left, and which image is being made at
    an even pace — the one estimate its view, its event stream and its ``progress``
    webhooks give. ``None`` while it does not run."""
    if job.status not in ("in_progress", "cancelling") or job.started_at is None:
        return None
    images = int(job.request.get("n", 1))
    done, eta_s = run_estimate(now - job.started_at, service_s * images)
    image = min(images, 1 + int(done * images))
    return {"percent": int(100 * done), "eta_s": round(eta_s, 1), "image": image, "images": images,
            "source": "estimate"}  # fmt: skip
