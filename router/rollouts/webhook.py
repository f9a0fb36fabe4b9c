"""A rollout's optional webhook: every decision, as JSON, POSTed by the one replica
that made it. Retried (tenacity: 3 tries, exponential backoff) and bounded (5 s a try),
in the background: a slow or dead receiver never holds a decision back. With a secret,
each body is signed as GitHub signs its webhooks (``X-Router-Signature-256:
sha256=<HMAC-SHA256 of the body>``), so a receiver can tell a decision from a forgery."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
from typing import Any

import httpx
import orjson
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

__all__ = ["Webhooks"]

log = logging.getLogger("router.rollouts")
TIMEOUT_S = 5.0
MAX_PENDING = 64


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
            digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
            headers["X-Router-Signature-256"] = f"sha256={digest}"
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
                retry=retry_if_exception_type(httpx.HTTPError),
                reraise=True,
            ):
                with attempt:
                    response = await self._client.post(url, content=body, headers=headers)
                    response.raise_for_status()
            self.sent += 1
        except httpx.HTTPError as exc:
            self.failed += 1
            log.warning("rollout webhook %s failed: %s: %s", url, type(exc).__name__, exc)

    async def aclose(self) -> None:
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=TIMEOUT_S)
        if self._client is not None:
            await self._client.aclose()
