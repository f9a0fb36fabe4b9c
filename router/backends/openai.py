"""A hosted, OpenAI-compatible image API as a tier (``POST {base}/images/generations``).

The API key comes from the config (``${ENV}``-interpolated) as a ``SecretStr`` and
is only ever put in the ``Authorization`` header: never in logs, errors or the admin
view. Only the configured base URL is contacted.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from typing import Any

import httpx
import numpy as np
from PIL import Image

from router.backends.base import ImageRequest, ImageResult
from router.config.table import Backend, Model
from router.errors import BackendError, BackendRejected, BackendTimeout, BackendUnavailable
from router.policy.circuit import CircuitBreaker
from router.policy.forecast import Forecast, Lane

__all__ = ["OpenAIImagesBackend", "map_httpx_error"]


def map_httpx_error(exc: BaseException) -> BackendError:
    if isinstance(exc, httpx.TimeoutException):
        return BackendTimeout(f"upstream timed out: {type(exc).__name__}")
    if isinstance(exc, httpx.TransportError):
        return BackendUnavailable(f"connection failed: {type(exc).__name__}")
    return BackendError(f"{type(exc).__name__}")


class OpenAIImagesBackend:
    def __init__(self, spec: Backend) -> None:
        self.spec = spec
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lanes: dict[str, Lane] = {}
        headers = {}
        if spec.api_key is not None:
            headers["Authorization"] = f"Bearer {spec.api_key.get_secret_value()}"
        self._client = httpx.AsyncClient(
            base_url=spec.url,
            headers=headers,
            timeout=httpx.Timeout(None, connect=spec.connect_timeout_s),
            follow_redirects=False,
        )

    async def generate(
        self, model: Model, request: ImageRequest, timeout_s: float, priority: int | None = None
    ) -> ImageResult:
        if len(set(request.prompts)) > 1:
            raise BackendRejected("a hosted backend takes one prompt per request")
        breaker = self._breaker(model)
        if not breaker.allow(time.monotonic()):
            raise BackendUnavailable(f"circuit open for {model.name}")
        lane = self._lane(model)
        ticket = lane.send(time.monotonic())
        try:
            result = await self._generate(model, request, timeout_s)
        except BackendRejected:
            lane.done(ticket, time.monotonic(), ok=False)
            breaker.record(time.monotonic(), True)
            raise
        except asyncio.CancelledError:
            lane.abandon(ticket, time.monotonic())
            breaker.record(time.monotonic(), False)
            raise
        except BaseException:
            lane.done(ticket, time.monotonic(), ok=False)
            breaker.record(time.monotonic(), False)
            raise
        lane.done(ticket, time.monotonic(), ok=True)
        breaker.record(time.monotonic(), True)
        return result

    def _lane(self, model: Model) -> Lane:
        """A hosted API runs requests side by side: its lane has no queue to model."""
        lane = self._lanes.get(model.lane_key)
        if lane is None:
            lane = self._lanes[model.lane_key] = Lane(model.latency_hint_ms / 1000, servers=None)
        return lane

    def forecast(self, model: Model, extra_ahead: int = 0) -> Forecast | None:
        if not self.available(model):
            return None
        return self._lane(model).forecast(time.monotonic(), extra_ahead)

    def _breaker(self, model: Model) -> CircuitBreaker:
        breaker = self._breakers.get(model.name)
        if breaker is None:
            breaker = self._breakers[model.name] = CircuitBreaker(self.spec.circuit)
        return breaker

    def available(self, model: Model) -> bool:
        return self._breaker(model).would_allow(time.monotonic())

    async def _generate(self, model: Model, request: ImageRequest, timeout_s: float) -> ImageResult:
        body: dict[str, Any] = {
            "model": model.remote_name,
            "prompt": request.prompts[0],
            "n": len(request.prompts),
            "response_format": "b64_json",
        }
        if request.width and request.height:
            body["size"] = f"{request.width}x{request.height}"
        try:
            response = await self._client.post("/images/generations", json=body, timeout=timeout_s)
        except Exception as exc:
            raise map_httpx_error(exc) from exc
        if response.status_code >= 400:
            kind: type[BackendError] = BackendRejected if response.status_code in (400, 422) else BackendUnavailable
            if response.status_code not in (400, 422, 429) and response.status_code < 500:
                kind = BackendError
            raise kind(f"upstream answered {response.status_code}", upstream_status=response.status_code)
        try:
            images = [
                np.asarray(Image.open(io.BytesIO(base64.b64decode(item["b64_json"]))).convert("RGB"))
                for item in response.json()["data"]
            ]
            return ImageResult(np.stack(images).astype(np.uint8), "")
        except Exception as exc:
            raise BackendError(f"upstream answer not understood: {type(exc).__name__}") from exc

    async def ready(self) -> bool:
        return True

    async def model_ready(self, model: Model) -> bool:
        return True

    async def model_metadata(self, model: Model) -> dict[str, Any]:
        return {"name": model.name, "versions": [], "platform": "openai", "inputs": [], "outputs": []}

    def snapshot(self) -> list[dict[str, Any]]:
        circuits = {m: b.state for m, b in self._breakers.items()}
        return [{"url": self.spec.url, "healthy": True, "model_circuits": circuits}]

    async def aclose(self) -> None:
        await self._client.aclose()
