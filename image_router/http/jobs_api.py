"""Async image jobs over HTTP (docs/jobs.md): submit, poll, stream, result, cancel, delete.

``POST /v1/images/jobs`` takes an OpenAI generations body plus the job's fields and
answers ``202`` with the job; ``POST /v1/images/generations`` and ``/api/v1/generate``
do the same with ``Prefer: respond-async`` (their modules call :func:`respond_async`
first). The job object is a superset of OpenAI's ``ImagesResponse``, so the SDK's
``images.generate`` parses it (``id`` and ``status`` arrive as extra fields).

Every route needs the tenant's key in ``keys`` mode, and a tenant sees only its own
jobs: another's id is ``404 job_not_found``, never ``403``. Answers that tell a client
not to retry carry ``x-should-retry: false`` (the openai SDK honours it).

The module is over 400 lines because it is one resource's eight routes around one view
of the job (estimates included); the event stream is the piece to move out if it grows.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import orjson
from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from image_router.errors import (
    DeadlineExceeded,
    IdempotencyKeyReused,
    InvalidRequest,
    JobCancelled,
    JobNotFinished,
    JobNotFound,
    JobQueueFull,
    NotFound,
    RouterError,
)
from image_router.http.common import (
    FastJSONResponse,
    ask_for,
    facts_for,
    gateway_of,
    header,
    parse_json_model,
    read_body,
    tenant_of,
    validated,
)
from image_router.http.errors import error_response
from image_router.http.formats import MIME
from image_router.http.images_api import OpenAIImagesRequest
from image_router.jobs.deliver import deliveries
from image_router.jobs.model import STATES, Job
from image_router.jobs.runner import JobRunner
from image_router.jobs.schedule import running_progress, wait_estimate
from image_router.jobs.store import JobStore
from image_router.jobs.submit import JobOptions, job_store, submit_job

__all__ = ["ROUTES", "JobRequest", "prefers_async", "respond_async"]

WAIT_POLL_S = 0.25
PROGRESS_CHECK_S = 1.0  # how often an event stream looks at a waiting or running job's estimate
PROGRESS_EVERY_S = 3.0  # an unchanged estimate is sent again this often
MAX_WAIT_S = 60
_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
_WAIT = re.compile(r"(?:^|[,;\s])wait(?:=(\d+))?", re.IGNORECASE)
_NO_RETRY = {"x-should-retry": "false"}
WebhookEvent = Literal["started", "progress", "completed"]


class JobRequest(OpenAIImagesRequest):
    """An OpenAI generations body and what a job adds (``stream`` and
    ``partial_images`` are refused: a job's previews are phase 2)."""

    n: int = Field(default=1, ge=1, le=50)  # jobs.max_n, checked at submission, says how many
    deadline_s: int | None = Field(default=None, ge=10)
    allow_downgrade: bool = False
    webhook: str | None = Field(default=None, max_length=2048)
    webhook_events: list[WebhookEvent] = Field(default_factory=lambda: list[WebhookEvent](["completed"]))
    metadata: dict[str, str] = Field(default_factory=dict, max_length=16)


def prefers_async(request: Request) -> bool:
    return "respond-async" in (header(request, "prefer") or "").lower()


def _wait_s(request: Request) -> float:
    """``Prefer: wait=N`` (bare ``wait``: 60 s), else 0."""
    match = _WAIT.search(header(request, "prefer") or "")
    if match is None:
        return 0.0
    return float(min(MAX_WAIT_S, int(match.group(1)) if match.group(1) else MAX_WAIT_S))


def _store(request: Request) -> JobStore:
    store = job_store(gateway_of(request))
    if store is None:
        raise NotFound("jobs are not enabled on this gateway (no jobs: block in routes.yaml)")
    return store


def _tenant(request: Request) -> str:
    tenant = tenant_of(request)
    return "" if tenant is None else tenant.name


# -- creating ----------------------------------------------------------------------------


def _generate_body(data: dict[str, Any]) -> dict[str, Any]:
    """``/api/v1/generate``'s shape as an OpenAI body (``width``/``height`` → ``size``,
    ``format`` → ``output_format``; ``response`` is a synchronous choice, dropped)."""
    out = {k: v for k, v in data.items() if k not in ("width", "height", "format", "response", "quality")}
    if data.get("width") or data.get("height"):
        out["size"] = f"{data.get('width') or data.get('height')}x{data.get('height') or data.get('width')}"
    if data.get("format"):
        out["output_format"] = data["format"]
    out.setdefault("response_format", "b64_json")
    return out


async def respond_async(request: Request, shape: str = "openai") -> Response:
    """Create a job from the request's body (``shape``: ``openai`` or ``generate``)."""
    started = time.monotonic()
    _tenant(request)  # a caller without a key learns nothing about its body
    store = _store(request)
    raw = await read_body(request)
    if shape == "generate":
        try:
            data = json.loads(raw)
        except ValueError:
            raise InvalidRequest("body is not valid JSON") from None
        if not isinstance(data, dict):
            raise InvalidRequest("body must be a JSON object")
        body = validated(JobRequest, _generate_body(data))
    else:
        body = parse_json_model(raw, JobRequest, header(request, "content-type"))
    if body.stream or body.partial_images:
        field = "stream" if body.stream else "partial_images"
        raise InvalidRequest(f"{field}: a job is not streamed; read GET /v1/images/jobs/{{id}}/events", field=field)
    fmt = body.check()
    key = header(request, "idempotency-key")
    if key is not None and not _KEY.match(key):
        raise InvalidRequest("Idempotency-Key: 1 to 255 visible ASCII characters", field="Idempotency-Key")
    image_request = body.image_request()
    facts = facts_for(request, body.prompt, body.intent, body.model, body.routing_fields())
    ask = ask_for(request, facts, image_request, started)
    options = JobOptions(
        deadline_s=body.deadline_s,
        allow_downgrade=body.allow_downgrade,
        metadata=body.metadata,
        webhook=body.webhook,
        webhook_events=tuple(body.webhook_events),
        output_format=fmt,
        output_compression=body.output_compression,
        response_format=body.response_format or "url",
        described={k: v for k, v in body.described(fmt).items() if k in ("quality", "background")},
    )
    asked = body.model_dump(mode="json", exclude={"deadline_s", "allow_downgrade", "metadata", "webhook",
                                                   "webhook_events", "response_format"})  # fmt: skip
    submitted = await submit_job(gateway_of(request), ask, options, asked, key)
    if submitted.reused:
        return error_response(
            request, IdempotencyKeyReused("this Idempotency-Key was sent with another request"), _NO_RETRY
        )
    if submitted.full:
        raise JobQueueFull("too many queued jobs: try again later", retry_after_s=5)
    if not submitted.replayed:
        _runner(request).nudge()  # this replica looks at once, not at its next idle look
    job = submitted.job
    headers = {"Location": f"/v1/images/jobs/{job.id}", "X-Router-Route": job.route}
    if submitted.replayed:
        headers["Idempotent-Replayed"] = "true"
    wait = _wait_s(request)
    if wait > 0:
        job = await _until(store, job, wait, lambda j: j.terminal)
        headers["Preference-Applied"] = f"wait={int(wait)}"
    status = 200 if submitted.replayed or job.terminal else 202
    return await _answer(request, store, job, status, headers)


# -- reading -----------------------------------------------------------------------------


async def _until(store: JobStore, job: Job, wait_s: float, done: Any) -> Job:
    """Poll the store until ``done(job)`` or ``wait_s`` passes (any replica may change it)."""
    deadline = time.monotonic() + wait_s
    while not done(job) and time.monotonic() < deadline:
        await asyncio.sleep(min(WAIT_POLL_S, max(0.0, deadline - time.monotonic())))
        found = await store.get(job.id)
        if found is None:
            break
        job = found
    return job


async def _own(request: Request, store: JobStore) -> Job:
    job = await store.get(request.path_params["job_id"], _tenant(request))
    if job is None:
        raise JobNotFound(f"no job {request.path_params['job_id']!r}")
    return job


def _image_url(request: Request, job: Job, index: int) -> str:
    ext = str(job.request.get("output_format") or "png")
    return f"{str(request.base_url).rstrip('/')}/v1/images/jobs/{job.id}/images/{index}.{ext}"


async def _data(request: Request, store: JobStore, job: Job) -> list[dict[str, str]]:
    if job.request.get("response_format") == "b64_json":
        images = [await store.image(job.id, i) for i in range(job.images)]
        return [{"b64_json": base64.b64encode(data).decode()} for data in images if data is not None]
    return [{"url": _image_url(request, job, i)} for i in range(job.images)]


async def view(request: Request, store: JobStore, job: Job) -> dict[str, Any]:
    """The job as its tenant sees it."""
    asked = job.request
    out: dict[str, Any] = {
        "id": job.id,
        "object": "image.job",
        "status": job.status,
        "created": int(job.created_at),
        "created_at": int(job.created_at),
        "started_at": None if job.started_at is None else int(job.started_at),
        "completed_at": None if job.completed_at is None else int(job.completed_at),
        "deadline_at": int(job.deadline_at),
        "expires_at": int(job.expires_at),
        "attempts": job.attempts,
        "sequence": job.sequence,
        "route": job.route,
        "model": job.model_version or job.tier,
        "request": {**asked, "allow_downgrade": job.allow_downgrade},
        "queue": await _queue(request, store, job),
        "progress": _progress(request, job),
        "data": await _data(request, store, job) if job.status == "completed" else None,
        "size": job.size,
        "quality": asked.get("quality", "auto"),
        "background": asked.get("background", "opaque"),
        "output_format": asked.get("output_format", "png"),
        "usage": None,
        "error": job.error,
        "cancel_requested_at": job.cancel_requested_at,
        "webhook": None if job.webhook is None else {**job.webhook, "deliveries": await deliveries(store.state, job)},
        "metadata": job.metadata,
    }
    return out


def _service_s(request: Request, tier: str) -> float:
    """:meth:`~image_router.jobs.runner.JobRunner.service_s`: the estimate the runner's
    progress webhooks use too."""
    return _runner(request).service_s(tier)


def _runner(request: Request) -> JobRunner:
    runner: JobRunner = request.app.state.runtime.jobs
    return runner


async def _queue(request: Request, store: JobStore, job: Job) -> dict[str, Any] | None:
    """While queued: its place in its tier's queue (1: next) and the seconds until it
    likely starts (:func:`~image_router.jobs.schedule.wait_estimate`)."""
    if job.status != "queued":
        return None
    position, now = await store.position(job), time.time()
    running = [now - at for at in await store.started(job.tier)]
    ahead_s = wait_estimate(position, running, store.config.tier(job.tier).max_running, _service_s(request, job.tier))
    return {"position": position, "ahead_s": round(ahead_s, 1)}


def _progress(request: Request, job: Job) -> dict[str, Any] | None:
    """While it runs: :func:`~image_router.jobs.schedule.running_progress`."""
    return running_progress(job, _service_s(request, job.tier), time.time())


async def _answer(
    request: Request, store: JobStore, job: Job, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    headers = dict(headers or {})
    if not job.terminal:
        poll_ms = store.config.poll_after_ms
        headers |= {"openai-poll-after-ms": str(poll_ms), "Retry-After": str(max(1, round(poll_ms / 1000)))}
    return FastJSONResponse(await view(request, store, job), status_code=status, headers=headers)


async def get_job(request: Request) -> Response:
    store = _store(request)
    job = await _own(request, store)
    wait = _wait_s(request)
    if wait > 0 and not job.terminal:
        seen = job.sequence
        job = await _until(store, job, wait, lambda j: j.sequence != seen or j.terminal)
    return await _answer(request, store, job)


async def list_jobs(request: Request) -> Response:
    """The tenant's jobs, newest first, in OpenAI's list shape (``after``: a cursor)."""
    store = _store(request)
    tenant = _tenant(request)
    try:
        limit = int(request.query_params.get("limit", "20"))
    except ValueError:
        raise InvalidRequest("limit: an integer from 1 to 100", field="limit") from None
    if not 1 <= limit <= 100:
        raise InvalidRequest("limit: an integer from 1 to 100", field="limit")
    wanted = {s for s in request.query_params.get("status", "").split(",") if s}
    if wanted - set(STATES):
        raise InvalidRequest(f"status: one or more of {', '.join(STATES)}", field="status")
    before = None
    after = request.query_params.get("after")
    if after:
        cursor = await store.get(after, tenant)
        if cursor is None:
            raise InvalidRequest("after: not one of your jobs", field="after")
        before = cursor.created_at
    jobs = await store.listing(tenant, 101 if not wanted else 1000, before)
    jobs = [j for j in jobs if j.id != after and (not wanted or j.status in wanted)]
    page = jobs[:limit]
    data = [await view(request, store, j) for j in page]
    body = {"object": "list", "data": data, "has_more": len(jobs) > limit, "last_id": page[-1].id if page else None}
    return FastJSONResponse(body)


async def job_result(request: Request) -> Response:
    """What the synchronous call would have answered."""
    store = _store(request)
    job = await _own(request, store)
    try:
        if job.status == "completed":
            body = {
                "created": int(job.completed_at or job.created_at),
                "data": await _data(request, store, job),
                "size": job.size,
                "quality": job.request.get("quality", "auto"),
                "background": job.request.get("background", "opaque"),
                "output_format": job.request.get("output_format", "png"),
                "usage": None,
            }
            return FastJSONResponse(body, headers={"X-Router-Model": job.model_version or job.tier})
        if job.status == "cancelled":
            raise JobCancelled(f"job {job.id} was cancelled")
        if job.status == "expired":
            raise DeadlineExceeded(f"job {job.id} passed its deadline before it finished")
        if job.status == "failed":
            error = job.error or {}
            failed = RouterError(str(error.get("message", "the job failed")))
            return _stored_error(request, failed, error)
        raise JobNotFinished(f"job {job.id} is {job.status}: ask again later", status_now=job.status)
    except RouterError as exc:
        return error_response(request, exc, _NO_RETRY)


def _stored_error(request: Request, exc: RouterError, error: dict[str, Any]) -> Response:
    response = error_response(request, exc, _NO_RETRY)
    payload = orjson.loads(bytes(response.body))
    payload["error"]["code"] = error.get("code", "internal_error")
    return Response(orjson.dumps(payload), status_code=int(error.get("status", 500)), headers=dict(_NO_RETRY),
                    media_type="application/json")  # fmt: skip


async def job_image(request: Request) -> Response:
    store = _store(request)
    job = await _own(request, store)
    match = re.match(r"^(\d+)\.([a-z]+)$", request.path_params["name"])
    if match is None or job.status != "completed" or int(match.group(1)) >= job.images:
        raise JobNotFound("no such image of this job")
    data = await store.image(job.id, int(match.group(1)))
    if data is None:
        raise JobNotFound("the image has expired")
    fmt = str(job.request.get("output_format") or "png")
    return Response(data, media_type=MIME[fmt], headers={"Cache-Control": "private, max-age=3600, immutable"})


async def cancel_job(request: Request) -> Response:
    store = _store(request)
    job = await store.update(request.path_params["job_id"], "cancel", time.time(), _tenant(request))
    if job is None:
        raise JobNotFound(f"no job {request.path_params['job_id']!r}")
    _runner(request).nudge()  # a queued job's cancel queued its webhook: sent now
    wait = _wait_s(request)
    if wait > 0:
        job = await _until(store, job, wait, lambda j: j.terminal)
    return await _answer(request, store, job)


async def delete_job(request: Request) -> Response:
    """Cancels it if needed, then removes its record, events and images; idempotent."""
    store = _store(request)
    job_id = request.path_params["job_id"]
    job = await store.update(job_id, "cancel", time.time(), _tenant(request))
    if job is not None:
        await store.delete(job)
        _runner(request).nudge()
    return FastJSONResponse({"id": job_id, "object": "image.job.deleted", "deleted": True})


async def _progress_event(request: Request, store: JobStore, job: Job) -> dict[str, Any]:
    """``image_job.progress``: the job's ``queue`` or ``progress`` now. Made by the stream
    that sends it, never stored (an estimate a second old is worth nothing on replay):
    it has no SSE ``id``, so ``Last-Event-ID`` still names the last stored event, and
    its ``sequence_number`` is that event's."""
    return {"type": "image_job.progress", "sequence_number": job.sequence, "job_id": job.id, "status": job.status,
            "queue": await _queue(request, store, job), "progress": _progress(request, job)}  # fmt: skip


async def job_events(request: Request) -> Response:
    """``text/event-stream`` of the job's events from ``Last-Event-ID`` (or
    ``?starting_after=N``), polled from the store (any replica writes them); ends after
    the terminal event. While the job waits or runs, ``image_job.progress`` follows
    each stored event at once, then comes when its queue position changes (looked at
    every :data:`PROGRESS_CHECK_S`), else every :data:`PROGRESS_EVERY_S`."""
    store = _store(request)
    job = await _own(request, store)
    try:
        after = int(header(request, "last-event-id") or request.query_params.get("starting_after", "0"))
    except ValueError:
        raise InvalidRequest("Last-Event-ID: an event's sequence number", field="Last-Event-ID") from None

    async def progress(seen: int, told: tuple[int, object], told_at: float) -> dict[str, Any] | None:
        """The progress event due now, if one is: only once the stream has sent the
        stored event of the job's current state (a progress never runs ahead of it)."""
        now = await store.get(job.id)
        if now is None or now.terminal or now.sequence != seen:
            return None
        event = await _progress_event(request, store, now)
        moved = (now.sequence, (event["queue"] or {}).get("position")) != told
        return event if moved or time.monotonic() - told_at >= PROGRESS_EVERY_S else None

    async def events() -> AsyncIterator[bytes]:
        seen, idle = after, 0.0
        told: tuple[int, object] = (-1, None)
        told_at = checked_at = float("-inf")
        while True:
            for event in await store.events(job.id, seen):
                seq = int(str(event["sequence_number"]))
                if seq <= seen:
                    continue
                seen, checked_at = seq, float("-inf")  # a new state: its progress follows at once
                now = await store.get(job.id)
                if now is not None and now.sequence == seq and now.terminal:
                    event = {**event, "job": await view(request, store, now)}
                data = orjson.dumps(event).decode()
                yield f"id: {seq}\nevent: {event['type']}\ndata: {data}\n\n".encode()
                if event["type"] in ("image_job.completed", "image_job.failed", "image_job.cancelled",
                                     "image_job.expired"):  # fmt: skip
                    return
            if time.monotonic() - checked_at >= PROGRESS_CHECK_S:
                checked_at = time.monotonic()
                update = await progress(seen, told, told_at)
                if update is not None:
                    told, told_at = (update["sequence_number"], (update["queue"] or {}).get("position")), checked_at
                    yield f"event: image_job.progress\ndata: {orjson.dumps(update).decode()}\n\n".encode()
            await asyncio.sleep(WAIT_POLL_S)
            idle += WAIT_POLL_S
            if idle >= 15:
                idle = 0.0
                yield b": keep-alive\n\n"

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)


async def create_job(request: Request) -> Response:
    return await respond_async(request)


ROUTES = [  # before /v1/images/{name} (app.py): "jobs" is not an image id
    Route("/v1/images/jobs", create_job, methods=["POST"]),
    Route("/v1/images/jobs", list_jobs, methods=["GET"]),
    Route("/v1/images/jobs/{job_id}", get_job, methods=["GET"]),
    Route("/v1/images/jobs/{job_id}", delete_job, methods=["DELETE"]),
    Route("/v1/images/jobs/{job_id}/result", job_result, methods=["GET"]),
    Route("/v1/images/jobs/{job_id}/events", job_events, methods=["GET"]),
    Route("/v1/images/jobs/{job_id}/cancel", cancel_job, methods=["POST"]),
    Route("/v1/images/jobs/{job_id}/images/{name}", job_image, methods=["GET"]),
]
