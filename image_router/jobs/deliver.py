"""Webhook deliveries from a durable queue in the state store, by any replica.

A job's terminal event is queued for delivery in the same step that writes the terminal
state (:meth:`JobStore.transition`), so no event is lost between them and a job that
ends once is announced once: the message id ``msg_<job>_<sequence>`` is fixed by the
event, unchanged on every retry (the receiver's idempotency key, ``webhook-id``).

Each replica's runner calls :meth:`Deliverer.tick`: deliveries that are due are leased
(one replica delivers an attempt), signed (:mod:`image_router.jobs.sign`), checked again
against the SSRF policy (the name may resolve elsewhere now) and sent to the vetted
address, following no redirect and reading no proxy from the environment. 2xx (or 410,
"gone": stop) ends a delivery; anything else schedules the next attempt per
``jobs.webhook_schedule_s`` with ±10 % jitter, until the schedule or the job's
retention runs out. Because the queue and the attempt count live in the store, a
gateway restart between attempts changes nothing but who sends the next one.

A job's view carries its deliveries (:func:`deliveries`: state, attempts, the last
outcome), and an operator can send a job's last terminal event again
(:func:`redeliver`, ``POST /admin/jobs/{id}/redeliver``): a new round of attempts under
the same ``webhook-id``, so a receiver that did get it once ignores it.

``progress`` events (:meth:`Deliverer.progress`) are sent by the replica running the
job at each lease renewal, once, never queued or retried — as Replicate and Standard
Webhooks' users expect of intermediate events: the next one supersedes it.

The payload is thin — ``{type, timestamp, data}`` with the job's id, status, sequence,
error, metadata and the path of its result — so it never carries images (receivers'
body limits) and a receiver fetches what it needs.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson

from image_router.errors import Conflict, RouterError, StoreUnavailable
from image_router.jobs.model import Job
from image_router.jobs.sign import webhook_headers
from image_router.jobs.webhook_url import Resolver, resolve_target, system_resolver
from image_router.state import GuardedState, Txn

__all__ = ["Deliverer", "deliveries", "delivery_step", "message_id", "redeliver", "thin"]

log = logging.getLogger("router.jobs")
JITTER = 0.1
DELIVERY_LEASE_S = 60.0
BATCH = 16
REDELIVER = "redeliver"  # the lease owner of an operator's redelivery


def thin(job: Job) -> dict[str, Any]:
    return {
        "id": job.id, "object": "image.job", "status": job.status, "sequence": job.sequence,
        "created_at": int(job.created_at), "completed_at": None if job.completed_at is None else int(job.completed_at),
        "model": job.model_version or job.tier, "error": job.error, "metadata": job.metadata,
        "result_url": f"/v1/images/jobs/{job.id}/result",
    }  # fmt: skip


def message_id(job: Job, sequence: int) -> str:
    """The ``webhook-id`` of the event a job's state ``sequence`` announces."""
    return f"msg_{job.id.removeprefix('imgjob_')}_{sequence}"


async def _records(state: GuardedState, job: Job) -> list[dict[str, Any]] | None:
    """``job``'s delivery records, oldest first (``None``: the store did not answer)."""
    events = await state.scan(f"ev:{job.id}", limit=256)
    if events is None:
        return None
    msgs = [message_id(job, int(score)) for _, score in events]
    raws = await state.get_many([f"job:wh:{m}" for m in msgs]) if msgs else []
    if raws is None:
        return None
    return [orjson.loads(raw) for raw in raws if raw is not None]


async def deliveries(state: GuardedState, job: Job) -> list[dict[str, Any]]:
    """What became of ``job``'s webhook events: ``pending``, ``delivered``, ``gone``
    (410) or ``failed`` (the schedule ran out), with the number of attempts and the
    last outcome and its time. Empty when it asked for no webhook, or the store
    did not answer (the job's view must not fail for it)."""
    if job.webhook is None:
        return []
    records = await _records(state, job) or []
    keep = ("id", "type", "state", "attempts", "last_status", "last_attempt_at")
    return [{k: r.get(k) for k in keep} for r in records]


async def redeliver(state: GuardedState, job: Job, now: float) -> dict[str, Any] | None:
    """Queue ``job``'s last terminal event for a new round of attempts, same
    ``webhook-id``; ``None``: it has none (not finished, or no webhook asked for it).
    Taken under the message's delivery lease, so an attempt in flight on any replica
    cannot write its outcome over the reset (:class:`~image_router.errors.Conflict`:
    one is in flight, try again); :class:`~image_router.errors.StoreUnavailable` when
    the store does not answer."""
    records = await _records(state, job)
    if records is None:
        raise StoreUnavailable("the state store did not answer: try again")
    terminal = [r for r in records if r["type"] != "image_job.started"]
    if not terminal:
        return None
    msg = terminal[-1]["id"]
    held = await state.lease(f"job:whl:{msg}", REDELIVER, DELIVERY_LEASE_S)
    if held is None:
        raise StoreUnavailable("the state store did not answer: try again")
    if not held:
        raise Conflict(f"a delivery of {msg} is in flight: try again in a moment")
    try:
        record = {**terminal[-1], "state": "pending", "attempts": 0, "last_status": None, "last_attempt_at": None}
        ttl = max(1.0, job.expires_at - now)
        done = await state.commit(Txn(put=((f"job:wh:{msg}", orjson.dumps(record), ttl),), add=(("wq", msg, now),)))
        if done is None:
            raise StoreUnavailable("the state store did not answer: try again")
        return record
    finally:
        await state.release(f"job:whl:{msg}", REDELIVER)


def delivery_step(job: Job, now: float) -> Txn:
    """What ``job``'s new state adds to its step: its webhook's delivery, when it asked
    for one and for this event (``started``; ``completed`` stands for every terminal
    state)."""
    hook = job.webhook
    kind = "completed" if job.terminal else "started" if job.status == "in_progress" else None
    if hook is None or kind is None or kind not in hook.get("events", ["completed"]):
        return Txn()
    msg = message_id(job, job.sequence)
    event = f"image_job.{job.status}" if job.terminal else "image_job.started"
    record = {"id": msg, "job_id": job.id, "url": hook["url"], "type": event, "attempts": 0,
              "state": "pending", "last_status": None, "tenant": job.tenant}  # fmt: skip
    ttl = max(1.0, job.expires_at - now)
    return Txn(put=((f"job:wh:{msg}", orjson.dumps(record), ttl),), add=(("wq", msg, now),))


def _stamp(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Deliverer:
    def __init__(
        self,
        owner: str,
        resolver: Resolver = system_resolver,
        wall: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self.owner = owner
        self.resolver = resolver
        self.wall = wall
        self.rng = rng or random.Random()
        self.counts = {"delivered": 0, "failed": 0, "gone": 0, "forbidden": 0, "retried": 0, "progress": 0}
        self._client: httpx.AsyncClient | None = None

    def client(self, timeout_s: float) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(trust_env=False, follow_redirects=False, timeout=timeout_s)
        return self._client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()

    async def tick(self, state: GuardedState, secrets: Callable[[str], tuple[str, ...]], allow: tuple[str, ...],
                   schedule: tuple[float, ...], timeout_s: float) -> int:  # fmt: skip
        """Send the webhook messages due now (at most :data:`BATCH`); how many were due."""
        due = await state.scan("wq", hi=self.wall(), limit=BATCH) or []
        for msg, _ in due:
            if await state.lease(f"job:whl:{msg}", self.owner, DELIVERY_LEASE_S):
                await self._one(state, msg, secrets, allow, schedule, timeout_s)
        return len(due)

    async def _one(self, state: GuardedState, msg: str, secrets: Callable[[str], tuple[str, ...]],
                   allow: tuple[str, ...], schedule: tuple[float, ...], timeout_s: float) -> None:  # fmt: skip
        raws = await state.get_many([f"job:wh:{msg}"])
        if not raws or raws[0] is None:
            await state.commit(Txn(remove=(("wq", msg),)))
            return
        raw = raws[0]
        record = orjson.loads(raw)
        jobs = await state.get_many([f"job:{record['job_id']}"])
        job = Job.load(jobs[0]) if jobs and jobs[0] is not None else None
        if job is None:  # deleted or expired: nothing left to announce
            await state.commit(Txn(delete=(f"job:wh:{msg}",), remove=(("wq", msg),)))
            return
        now = self.wall()
        body = orjson.dumps({"type": record["type"], "timestamp": _stamp(now), "data": thin(job)})
        outcome = await self._send(record["url"], secrets(record["tenant"]), msg, int(now), body, allow, timeout_s)
        record["attempts"] += 1
        record["last_status"] = outcome
        record["last_attempt_at"] = int(now)
        if outcome in ("2xx", "gone"):
            record["state"] = "delivered" if outcome == "2xx" else "gone"
            self.counts["delivered" if outcome == "2xx" else "gone"] += 1
            await state.commit(Txn(put=((f"job:wh:{msg}", orjson.dumps(record), max(1.0, job.expires_at - now)),),
                                   remove=(("wq", msg),)))  # fmt: skip
        elif record["attempts"] >= len(schedule) or now + schedule[record["attempts"]] >= job.expires_at:
            record["state"] = "failed"
            self.counts["failed"] += 1
            await state.commit(Txn(put=((f"job:wh:{msg}", orjson.dumps(record), max(1.0, job.expires_at - now)),),
                                   remove=(("wq", msg),)))  # fmt: skip
        else:
            delay = schedule[record["attempts"]] * (1 + self.rng.uniform(-JITTER, JITTER))
            self.counts["retried"] += 1
            await state.commit(Txn(put=((f"job:wh:{msg}", orjson.dumps(record), max(1.0, job.expires_at - now)),),
                                   add=(("wq", msg, now + delay),)))  # fmt: skip
        await state.release(f"job:whl:{msg}", self.owner)

    async def progress(self, url: str, job: Job, progress: dict[str, Any], tick: int, secrets: tuple[str, ...],
                       allow: tuple[str, ...], timeout_s: float) -> str:  # fmt: skip
        """Send ``job``'s ``image_job.progress`` event to ``url`` now, once (``tick``: the
        how-many-th of this attempt, part of its ``webhook-id``); what the receiver said."""
        now = self.wall()
        msg = f"{message_id(job, job.sequence)}_p{tick}"
        body = orjson.dumps({"type": "image_job.progress", "timestamp": _stamp(now),
                             "data": {**thin(job), "progress": progress}})  # fmt: skip
        outcome = await self._send(url, secrets, msg, int(now), body, allow, timeout_s)
        self.counts["progress"] += 1
        return outcome

    async def _send(self, url: str, secrets: tuple[str, ...], msg: str, timestamp: int, body: bytes,
                    allow: tuple[str, ...], timeout_s: float) -> str:  # fmt: skip
        """``2xx``, ``gone`` (410), ``forbidden`` (the SSRF policy refused it now), or
        what failed (a status, ``redirect``, ``timeout``, ``error``)."""
        try:
            target = await asyncio.to_thread(resolve_target, url, allow, self.resolver)
        except RouterError as exc:
            self.counts["forbidden"] += 1
            log.info("webhook %s refused: %s", msg, exc.message)
            return "forbidden"
        host = f"[{target.address}]" if ":" in target.address else target.address
        default_port = 443 if target.scheme == "https" else 80
        host_header = target.host if target.port == default_port else f"{target.host}:{target.port}"
        headers = {**webhook_headers(secrets, msg, timestamp, body), "host": host_header}
        extensions = {"sni_hostname": target.host} if target.scheme == "https" else {}
        try:
            response = await self.client(timeout_s).post(
                f"{target.scheme}://{host}:{target.port}{target.path}", content=body, headers=headers,
                extensions=extensions,
            )  # fmt: skip
        except httpx.TimeoutException:
            return "timeout"
        except httpx.HTTPError as exc:
            log.info("webhook %s to %s failed: %s", msg, target.host, exc)
            return "error"
        if 200 <= response.status_code < 300:
            return "2xx"
        if response.status_code == 410:
            return "gone"
        if 300 <= response.status_code < 400:
            return "redirect"
        return str(response.status_code)
