"""Accepting a job: the same decisions a synchronous request gets, made now and stored.

At submission the gateway routes the request (:func:`~image_router.decide.route_phase`:
tenant steering, permission, the route's limits), counts it against the tenant's rate
and daily images (the tenant gate, whose concurrency slot is given back at once —
``max_concurrency`` is for interactive requests), and decides seeds and arm
(:func:`~image_router.decide.arm_phase`, the only place seeds are decided). What it decided
is stored with the job, so every attempt, on any replica, makes the same image.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from image_router.ask import Ask
from image_router.errors import InvalidRequest, StoreUnavailable, WebhookSecretMissing
from image_router.jobs.model import Job, fingerprint, new_id
from image_router.jobs.store import JobStore, Submitted
from image_router.jobs.webhook_url import resolve_target

if TYPE_CHECKING:
    from image_router.gateway import Gateway

__all__ = ["JobOptions", "submit_job"]


@dataclass(frozen=True, slots=True)
class JobOptions:
    """What a job adds to a generation request, and how its answer is encoded."""

    deadline_s: int | None = None
    allow_downgrade: bool = False
    metadata: dict[str, str] = field(default_factory=dict)
    webhook: str | None = None
    webhook_events: tuple[str, ...] = ("completed",)
    output_format: str = "png"
    output_compression: int | None = None
    response_format: str = "url"
    described: dict[str, str] = field(default_factory=dict)  # quality, background: repeated in the answer


def job_store(gateway: Gateway) -> JobStore | None:
    table, state = gateway.table, gateway.state_store
    return None if table.jobs is None or state is None else JobStore(state, table.jobs)


async def submit_job(
    gateway: Gateway,
    ask: Ask,
    options: JobOptions,
    asked: dict[str, Any],
    key: str | None,
    wall: Callable[[], float] = time.time,
) -> Submitted:
    """Decide, count and store the job ``ask`` describes (``asked``: the normalised
    request the fingerprint covers)."""
    table = gateway.table
    store = job_store(gateway)
    if store is None or table.jobs is None:
        raise StoreUnavailable("jobs are not configured")
    config = table.jobs
    deadline_s = config.default_deadline_s if options.deadline_s is None else options.deadline_s
    if not 10 <= deadline_s <= config.max_deadline_s:
        raise InvalidRequest(f"deadline_s: must be 10 to {config.max_deadline_s:g}", field="deadline_s")
    printed = fingerprint({**asked, "job": _job_fields(options)})
    if options.webhook is not None:
        tenant = ask.tenant.name if ask.tenant is not None else ""
        if not config.secrets(tenant):
            raise WebhookSecretMissing("webhook: no webhook secret is configured to sign it", field="webhook")
        await asyncio.to_thread(resolve_target, options.webhook, config.webhook_allow_cidrs)
    decision = await gateway.decide_later(ask._replace(max_n=config.max_n))
    request = decision.request
    seeds = request.seeds or gateway.draw(len(request.prompts))
    now = wall()
    job = Job(
        id=new_id(now, os.urandom(10)),
        tenant=decision.tenant,
        tier=decision.choice.arm.model,
        route=decision.route.name,
        request={
            "prompt": request.prompts[0],
            "n": len(request.prompts),
            "seeds": list(seeds),
            "steps": ask.request.steps,
            "width": ask.request.width,
            "height": ask.request.height,
            "output_format": options.output_format,
            "output_compression": options.output_compression,
            "response_format": options.response_format,
            **options.described,
        },
        created_at=now,
        deadline_at=now + deadline_s,
        expires_at=now + max(config.retention_s, deadline_s + 600),
        allow_downgrade=options.allow_downgrade,
        fingerprint=printed,
        metadata=dict(options.metadata),
        webhook={"url": options.webhook, "events": list(options.webhook_events)} if options.webhook else None,
    )
    return await store.submit(job, key)


def _job_fields(options: JobOptions) -> dict[str, Any]:
    return {
        "deadline_s": options.deadline_s,
        "allow_downgrade": options.allow_downgrade,
        "metadata": options.metadata,
        "webhook": options.webhook,
        "webhook_events": list(options.webhook_events),
        "response_format": options.response_format,
    }
