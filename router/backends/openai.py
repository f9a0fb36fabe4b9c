"""A hosted, OpenAI-compatible image API as a tier (``POST {base}/images/generations``).

The API key comes from the config (``${ENV}``-interpolated) as a ``SecretStr`` and
is only ever put in the ``Authorization`` header: never in logs, errors or the admin
view. Only the configured base URL is contacted.

The images come back as the upstream's base64 text (:class:`EncodedImages`), checked
by their magic number but not decoded: an answer in the same format passes them
through untouched, and pixels are made only when something needs them. Decoding and
re-encoding every image cost 2.2-3.4 ms of gateway CPU per request. The call goes
through the same small HTTP/1.1 client as Triton's infer calls (``_http1``), with
the answer parsed by orjson.
"""

from __future__ import annotations

import asyncio
import base64
import time
from typing import Any
from urllib.parse import urlsplit

import orjson

from router.backends._http1 import Http1Pool
from router.backends.base import EncodedImages, ImageRequest, ImageResult, sniff_format
from router.config.table import Backend, Model
from router.errors import BackendError, BackendRejected, BackendTimeout, BackendUnavailable
from router.policy.circuit import CircuitBreaker
from router.policy.forecast import Forecast, Lane

__all__ = ["OpenAIImagesBackend", "parse_images"]


def parse_images(body: bytes) -> EncodedImages:
    """An ``images/generations`` answer as the images it holds, all of one format;
    anything else is a :class:`BackendError` naming what was wrong."""
    try:
        items = orjson.loads(body)["data"]
        texts = tuple(str(item["b64_json"]) for item in items)
    except (ValueError, KeyError, TypeError) as exc:  # orjson's errors are ValueErrors
        raise BackendError(f"upstream answer not understood: {type(exc).__name__}: {exc}") from exc
    if not texts:
        raise BackendError("upstream answer not understood: no images in data")
    formats = set()
    for text in texts:
        try:
            head = base64.b64decode(text[:24], validate=True)  # 18 bytes: every magic number
        except ValueError:
            raise BackendError("upstream answer not understood: b64_json is not base64") from None
        formats.add(sniff_format(head))
    if len(formats) != 1 or None in formats:
        raise BackendError("upstream answer not understood: images are not all PNG, JPEG or WebP of one kind")
    fmt = formats.pop()
    assert fmt is not None
    return EncodedImages(texts, fmt)


class OpenAIImagesBackend:
    def __init__(self, spec: Backend) -> None:
        self.spec = spec
        self._breakers: dict[str, CircuitBreaker] = {}
        self._lanes: dict[str, Lane] = {}
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if spec.api_key is not None:
            self._headers["Authorization"] = f"Bearer {spec.api_key.get_secret_value()}"
        self._path = urlsplit(spec.url).path.rstrip("/") + "/images/generations"
        self._pool = Http1Pool.for_url(spec.url, spec.max_connections, spec.connect_timeout_s)

    async def generate(
        self, model: Model, request: ImageRequest, timeout_s: float, priority: int | None = None
    ) -> ImageResult:
        if len(set(request.prompts)) > 1:
            raise BackendRejected("a hosted backend takes one prompt per request")
        if request.init_image is not None:
            raise BackendRejected("INIT_IMAGE: a hosted backend here makes images from prompts only")
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
            async with asyncio.timeout(timeout_s):
                response = await self._pool.request(self._path, orjson.dumps(body), self._headers)
        except TimeoutError as exc:
            raise BackendTimeout("upstream timed out") from exc
        except OSError as exc:
            raise BackendUnavailable(f"connection failed: {type(exc).__name__}") from exc
        status = response.status
        if status >= 400:
            kind: type[BackendError] = BackendRejected if status in (400, 422) else BackendUnavailable
            if status not in (400, 422, 429) and status < 500:
                kind = BackendError
            raise kind(f"upstream answered {status}", upstream_status=status)
        if status != 200:  # a redirect or an empty answer: not followed, not understood
            raise BackendError(f"upstream answered {status}", upstream_status=status)
        return ImageResult(None, "", encoded=parse_images(response.body))

    async def ready(self) -> bool:
        return True

    async def model_ready(self, model: Model) -> bool:
        return True

    async def model_metadata(self, model: Model) -> dict[str, Any]:
        return {"name": model.name, "versions": [], "platform": "openai", "inputs": [], "outputs": []}

    async def model_config(self, model: Model) -> dict[str, Any]:
        return {"name": model.name, "platform": "openai", "backend": "openai", "max_batch_size": 0}

    async def model_statistics(self, model: Model) -> dict[str, Any]:
        return {"model_stats": []}  # a hosted API publishes none

    def snapshot(self) -> list[dict[str, Any]]:
        circuits = {m: b.state for m, b in self._breakers.items()}
        return [{"url": self.spec.url, "healthy": True, "model_circuits": circuits}]

    async def aclose(self) -> None:
        await self._pool.aclose()
