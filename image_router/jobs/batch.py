"""Jobs computed together: a job tier's opt-in ``batch_rows`` (pure).

Jobs are the one kind of work here that can wait, so they are where batching's
throughput is worth its latency (issue 34; ``bench/batching.py`` measures the gain per
model: 2.1x images/s for draft at 4 rows a pass on this CPU, nothing for quality).
Interactive requests, the background filler and pre-generation stay singleton: the
filler's and pre-generation's product is a cache entry that answers a singleton
request, and a row computed in a batch is not byte-equal to the row alone.

The runner does the grouping itself rather than a timed batcher in front of Triton:
the queued jobs are already in the store, so a pass is filled from the queue at once,
with no queue delay to tune. When the fair order (:func:`image_router.jobs.schedule.pick`)
names a job to start, :func:`mates` adds, in the same fair order, queued jobs of the
same **shape** — route, downgrade permission, steps and size: what one pipeline pass
must share — while their rows fit in ``batch_rows``. Each job still takes one running
place (``max_running``, the tenant's cap), claimed one by one; a claim refused is
simply not in the pass.

:func:`passes` cuts a group's rows into the calls it makes: all its rows in one pass,
or a job with more rows than ``batch_rows`` (a job may ask for up to 50) in passes of
``batch_rows`` of its own rows. With ``batch_rows: 1`` each image is its own call, the
singleton path: the same bytes as the same request made interactively.

Nothing a pass makes reaches the result cache: a job's images are the job's own
(image_router/jobs/runner.py serves it with no cache plan), so a batched row can never
answer a singleton lookup.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from image_router.backends.base import ImageRequest
from image_router.jobs.model import Job

__all__ = ["mates", "pass_request", "passes", "shape"]


def shape(job: Job) -> tuple[Any, ...]:
    """What the jobs of one pass must share."""
    wanted = job.request
    return (job.route, job.allow_downgrade, wanted.get("steps"), wanted.get("width"), wanted.get("height"))


def mates(first: Job, queued: Sequence[Job], batch_rows: int, now: float, capped: Collection[str] = ()) -> list[Job]:
    """``first`` and, in the queue's fair order, the live queued jobs of its shape
    whose rows fit beside it in ``batch_rows`` (tenants in ``capped`` wait). A pass runs
    on ``first``'s deadline, so no mate's is earlier (an earlier one waits for its own
    pass, urgent in time); a pass that runs out of that time fails ``first`` alone and
    hands its mates back to the queue."""
    group = [first]
    room = batch_rows - first.asked
    if room <= 0:
        return group
    want = shape(first)
    for job in sorted(queued, key=lambda j: (j.tag, j.id)):
        if job.id == first.id or job.deadline_at < first.deadline_at or job.tenant in capped:
            continue
        if job.deadline_at <= now or shape(job) != want:
            continue
        if job.asked <= room:
            group.append(job)
            room -= job.asked
            if room == 0:
                break
    return group


def passes(group: Sequence[Job], batch_rows: int) -> list[list[tuple[int, int]]]:
    """The calls that compute ``group``: each a list of ``(job index, row)``. A group of
    several jobs (their rows fit ``batch_rows``) is one pass; a single job's rows go in
    passes of ``batch_rows``."""
    flat = [(i, r) for i, job in enumerate(group) for r in range(job.asked)]
    step = max(1, batch_rows)
    return [flat[i : i + step] for i in range(0, len(flat), step)]


def pass_request(group: Sequence[Job], cut: Sequence[tuple[int, int]], batch_rows: int, upscale: bool) -> ImageRequest:
    """The one call that computes ``cut``'s rows: each row its job's prompt and seed, the
    group's shared steps and size, ``rows_per_pass`` when the tier batches. ``upscale``
    as :func:`~image_router.decide.on_route` marks it (each job's limits were checked at
    submission; a pass of several jobs is not a client's request)."""
    wanted = group[0].request
    return ImageRequest(
        prompts=tuple(group[i].request["prompt"] for i, _ in cut),
        seeds=tuple(group[i].request["seeds"][r] for i, r in cut),
        steps=wanted.get("steps"),
        width=wanted.get("width"),
        height=wanted.get("height"),
        upscale=upscale,
        rows_per_pass=len(cut) if batch_rows > 1 else 1,
    )
