"""A rollout's optional webhook: every decision, as JSON, POSTed by the one replica
that made it. Retried (tenacity: 3 tries, exponential backoff) and bounded (5 s a try),
in the background: a slow or dead receiver never holds a decision back.

With a secret, each body is signed as Standard Webhooks sign theirs: ``webhook-id`` (one
per decision, the same on every retry), ``webhook-timestamp`` (epoch seconds) and
``webhook-signature: v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``. The
timestamp is inside the MAC, so a receiver that refuses timestamps older than
:data:`TOLERANCE_S` (:func:`verify` does) cannot be fed a recorded decision again, and
one that remembers ids drops duplicates. The former ``X-Router-Signature-256:
sha256=<HMAC of the body>`` is still sent for receivers written against it; it carries
no time, so it replays — receivers should move to ``verify``."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

import httpx
import orjson
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

__all__ = ["TOLERANCE_S", "Webhooks", "sign", "verify"]

log = logging.getLogger("router.rollouts")
TIMEOUT_S = 5.0
MAX_PENDING = 64
TOLERANCE_S = 300  # Standard Webhooks' receivers allow 5 minutes of clock skew and delivery


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value of ``body`` sent as ``msg_id`` at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, now: float | None = None, tolerance_s: int = TOLERANCE_S
) -> bool:
    """What a receiver checks: a timestamp within ``tolerance_s`` of ``now`` and one of
    the space-separated signatures matching (compared in constant time)."""
    msg_id, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not msg_id or not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        return False
    if abs((time.time() if now is None else now) - int(stamp)) > tolerance_s:
        return False
    expected = sign(secret, msg_id, int(stamp), body).encode()
    return any(hmac.compare_digest(given.encode(), expected) for given in headers.get("webhook-signature", "").split())


class Webhooks:
    def __init__(self) -> None:
        self._client: httpx.AsyncClient | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.sent = 0
        self.failed = 0

    def post(self, url: str, payload: dict[str, Any], secret: str | None = None) -> None:
        if len(self._tasks) >= MAX_PENDING:
            self.failed += 1
            log.warning("rollout webhook %s: too many pending, decision not sent", url)
            return
        body = orjson.dumps(payload)
        headers = {"Content-Type": "application/json"}
        if secret:
            msg_id, stamp = f"msg_{secrets.token_hex(12)}", int(time.time())
            headers["webhook-id"] = msg_id
            headers["webhook-timestamp"] = str(stamp)
            headers["webhook-signature"] = sign(secret, msg_id, stamp, body)
            digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Router-Signature-256"] = f"sha256={digest}"  # the former scheme: replays
        task = asyncio.get_running_loop().create_task(self._send(url, body, headers))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, url: str, body: bytes, headers: dict[str, str]) -> None:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=TIMEOUT_S)
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(3),
                wait=wait_exponential(multiplier=0.5, max=4),
                retry=retry_if_exception_type((httpx.HTTPError, TimeoutError)),
                reraise=True,
            ):
                # the whole try within TIMEOUT_S: httpx's timeout bounds each read, so a
                # receiver trickling its answer a byte at a time would hold a try for ever
                with attempt:
                    async with asyncio.timeout(TIMEOUT_S):
                        response = await self._client.post(url, content=body, headers=headers)
                        response.raise_for_status()
            self.sent += 1
        except (httpx.HTTPError, TimeoutError) as exc:
            self.failed += 1
            log.warning("rollout webhook %s failed: %s: %s", url, type(exc).__name__, exc)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=TIMEOUT_S)
        if self._client is not None:
            await self._client.aclose()
