"""``/admin/jobs``: the async jobs for an operator (the admin token, like the rest of
the admin API; ``router jobs`` is its command line). Without a ``jobs:`` block they
answer ``404 not_found``.

- ``GET /admin/jobs``: counts by state — read from the store now, so the same on every
  replica — the oldest queued job's age, queued and running per tier, the webhook
  backlog; and this replica's own side: whether it drains, what it runs, how its
  attempts ended since it started (finished jobs have no index to count them by).
- ``POST /admin/jobs/drain`` and ``/resume``: this replica stops (starts again)
  claiming jobs; its running attempts finish. **Replica-local** on purpose: draining is
  what an operator does to the one pod about to go down (a node's maintenance, a
  rollout by hand) while the other replicas keep the queue moving; a cluster-wide pause
  would stop every job at once, which nobody asked for. The answer names the replica,
  since through a load-balanced address the call reaches one pod of several: address
  the pod itself (``kubectl port-forward pod/…``). A restarted process claims again.
- ``GET /admin/jobs/list``: the active jobs (queued, oldest first, then running), or
  with ``?tenant=`` one tenant's jobs, newest first; ``?status=`` filters, ``?limit=``.
- ``GET /admin/jobs/{id}``: any tenant's job as stored; ``POST /admin/jobs/{id}/cancel``
  cancels it as its tenant's cancel would; ``POST /admin/jobs/{id}/redeliver`` sends its
  last terminal event again (a new round of attempts, the same ``webhook-id``).

Every change (drain, resume, cancel, redeliver) is an audit line.
"""

from __future__ import annotations

import dataclasses
import time

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from image_router.errors import Conflict, InvalidRequest, JobNotFound, NotFound
from image_router.http.admin_api import audit, check_admin
from image_router.jobs import ops
from image_router.jobs.deliver import deliveries, redeliver
from image_router.jobs.model import STATES
from image_router.jobs.runner import JobRunner
from image_router.jobs.store import JobStore

__all__ = ["ROUTES"]

MAX_LIST = 500


def _jobs(request: Request) -> tuple[JobRunner, JobStore]:
    check_admin(request)
    runner: JobRunner = request.app.state.runtime.jobs
    store = runner.store()
    if store is None:
        raise NotFound("jobs are not enabled on this gateway (no jobs: block in routes.yaml)")
    return runner, store


async def jobs_overview(request: Request) -> Response:
    runner, store = _jobs(request)
    await runner.recount(store)  # fresh for the operator; the metrics read it too
    return JSONResponse(runner.describe())


async def _drain(request: Request, on: bool) -> Response:
    runner, store = _jobs(request)
    scope = request.query_params.get("scope", "replica")
    if scope not in ("replica", "cluster"):
        raise InvalidRequest("scope: replica (this replica, the default) or cluster (every replica)", field="scope")
    if scope == "cluster":
        await store.pause(on, time.time())
        runner.paused = on
        runner.nudge()
        audit(request, "jobs pause" if on else "jobs unpause", replica=runner.owner)
    else:
        runner.drain(on)
        audit(request, "jobs drain" if on else "jobs resume", replica=runner.owner, running=len(runner.running))
    return JSONResponse(runner.describe())


async def jobs_drain(request: Request) -> Response:
    return await _drain(request, True)


async def jobs_resume(request: Request) -> Response:
    return await _drain(request, False)


async def jobs_list(request: Request) -> Response:
    _, store = _jobs(request)
    query = request.query_params
    limit_text = query.get("limit", "50")
    if not limit_text.isdigit() or not 1 <= int(limit_text) <= MAX_LIST:
        raise InvalidRequest(f"limit: an integer from 1 to {MAX_LIST}", field="limit")
    limit = int(limit_text)
    wanted = {s for s in query.get("status", "").split(",") if s}
    if wanted - set(STATES):
        raise InvalidRequest(f"status: one or more of {', '.join(STATES)}", field="status")
    tenant = query.get("tenant")
    if tenant is not None:
        jobs = await store.listing(tenant, limit if not wanted else 1000)
    else:
        jobs = await ops.active(store.state, limit)
    now = time.time()
    data = [ops.summary(j, now) for j in jobs if not wanted or j.status in wanted][:limit]
    return JSONResponse({"object": "list", "data": data})


async def jobs_show(request: Request) -> Response:
    _, store = _jobs(request)
    job = await store.get(request.path_params["job_id"])
    if job is None:
        raise JobNotFound(f"no job {request.path_params['job_id']!r}")
    age_s = round(max(0.0, time.time() - job.created_at), 3)
    return JSONResponse({**dataclasses.asdict(job), "age_s": age_s, "deliveries": await deliveries(store.state, job)})


async def jobs_cancel(request: Request) -> Response:
    runner, store = _jobs(request)
    job_id = request.path_params["job_id"]
    job = await store.update(job_id, "cancel", time.time())
    if job is None:
        raise JobNotFound(f"no job {job_id!r}")
    runner.nudge()  # a queued job's cancel queued its webhook: sent now
    audit(request, "jobs cancel", job=job_id, tenant=job.tenant, status=job.status)
    return JSONResponse(ops.summary(job, time.time()))


async def jobs_redeliver(request: Request) -> Response:
    runner, store = _jobs(request)
    job_id = request.path_params["job_id"]
    job = await store.get(job_id)
    if job is None:
        raise JobNotFound(f"no job {job_id!r}")
    record = await redeliver(store.state, job, time.time())
    if record is None:
        raise Conflict(f"job {job_id!r} has no terminal webhook event to send again (status {job.status})")
    runner.nudge()
    audit(request, "jobs redeliver", job=job_id, tenant=job.tenant, message=record["id"])
    return JSONResponse({"job_id": job_id, "delivery": record})


ROUTES = [  # the fixed paths before /admin/jobs/{job_id}
    Route("/admin/jobs", jobs_overview, methods=["GET"]),
    Route("/admin/jobs/drain", jobs_drain, methods=["POST"]),
    Route("/admin/jobs/resume", jobs_resume, methods=["POST"]),
    Route("/admin/jobs/list", jobs_list, methods=["GET"]),
    Route("/admin/jobs/{job_id}", jobs_show, methods=["GET"]),
    Route("/admin/jobs/{job_id}/cancel", jobs_cancel, methods=["POST"]),
    Route("/admin/jobs/{job_id}/redeliver", jobs_redeliver, methods=["POST"]),
]
