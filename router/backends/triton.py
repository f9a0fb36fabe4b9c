"""A Triton server over KServe v2 HTTP.

Health, readiness and metadata go through ``tritonclient.http.aio`` (the sync client
is not thread-safe). Inference, the hot path, sends binary tensors (images as JSON are
~3.6x larger) over :mod:`router.backends._http1` and reads the answer with
``tritonclient``'s own ``InferResult``. The remaining
time is sent as Triton's per-request ``timeout`` (µs) so work still queued when the
gateway has given up is dropped by Triton instead of computed for nobody; the
gateway enforces its own deadline around the call, because Triton cannot stop a
request that is already executing.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote, urlsplit

import aiohttp
import numpy as np
import tritonclient.http as httpclient
import tritonclient.http.aio as aioclient
from numpy.typing import NDArray
from tritonclient.utils import InferenceServerException

from router.backends._http1 import Http1Pool
from router.backends.base import ImageRequest, ImageResult
from router.config.table import Backend, Model
from router.errors import BackendError, BackendRejected, BackendTimeout, BackendUnavailable
from router.kserve import encode_request

__all__ = ["TritonBackend", "map_triton_error"]


def map_triton_error(exc: BaseException) -> BackendError:
    """Translate a tritonclient/aiohttp failure into the gateway's error tree."""
    if isinstance(exc, InferenceServerException):
        status = str(exc.status() or "")
        message = exc.message() or str(exc)
        if status == "400":
            return BackendRejected(message)
        if status in ("503", "502", "500") and "timeout" in message.lower():
            return BackendTimeout(message)
        if status in ("503", "502", "429", "404"):
            return BackendUnavailable(message, upstream_status=int(status))
        return BackendError(message, upstream_status=status or None)
    if isinstance(exc, aiohttp.ClientConnectionError | ConnectionError | OSError):
        return BackendUnavailable(f"connection failed: {exc}")
    if isinstance(exc, aiohttp.ClientError):
        return BackendError(f"transport error: {exc}")
    return BackendError(f"{type(exc).__name__}: {exc}")


def _inputs(request: ImageRequest) -> list[tuple[str, str, NDArray[Any]]]:
    batch = len(request.prompts)
    inputs: list[tuple[str, str, NDArray[Any]]] = [
        ("PROMPT", "BYTES", np.array([p.encode() for p in request.prompts], dtype=np.object_).reshape(batch, 1))
    ]
    if request.seeds is not None:
        inputs.append(("SEED", "INT64", np.array(request.seeds, dtype="<i8").reshape(batch, 1)))
    for name, value in (("STEPS", request.steps), ("WIDTH", request.width), ("HEIGHT", request.height)):
        if value is not None:
            inputs.append((name, "INT32", np.full((batch, 1), value, dtype="<i4")))
    return inputs


def _error_message(body: bytes) -> str:
    try:
        message = json.loads(body).get("error")
    except (ValueError, AttributeError):
        message = None
    return str(message) if message else body[:200].decode("utf-8", "replace")


class TritonBackend:
    """One Triton endpoint; one pooled aio client per backend, shared by all requests."""

    def __init__(self, spec: Backend) -> None:
        self.spec = spec
        self._lazy: aioclient.InferenceServerClient | None = None
        self._pool: Http1Pool | None = None

    @property
    def _client(self) -> aioclient.InferenceServerClient:
        """Created on first use: aiohttp's connector must be made inside the event loop."""
        if self._lazy is None:
            self._lazy = aioclient.InferenceServerClient(
                self.spec.url.split("://", 1)[1],
                conn_limit=self.spec.max_connections,
                # tritonclient turns this into aiohttp's *total* timeout, which would cut
                # off slow tiers; every attempt already runs under the dispatcher's own
                # deadline, which bounds connecting as well.
                conn_timeout=None,
                ssl=self.spec.url.startswith("https://"),
            )
        return self._lazy

    def _pool_for_infer(self) -> Http1Pool:
        if self._pool is None:
            parsed = urlsplit(self.spec.url)
            tls = parsed.scheme == "https"
            port = parsed.port or (443 if tls else 80)
            self._pool = Http1Pool(parsed.hostname or "127.0.0.1", port, self.spec.max_connections, tls)
        return self._pool

    async def generate(
        self, model: Model, request: ImageRequest, timeout_s: float, priority: int | None = None
    ) -> ImageResult:
        parameters: dict[str, Any] = {"timeout": max(1, int(timeout_s * 1_000_000))}
        if priority:
            parameters["priority"] = priority
        body, header_length = encode_request(_inputs(request), parameters, ["IMAGE"])
        path = f"/v2/models/{quote(model.remote_name, safe='')}"
        if model.version:
            path += f"/versions/{model.version}"
        headers = {
            "Content-Type": "application/octet-stream",
            "Inference-Header-Content-Length": str(header_length),
        }
        try:
            response = await self._pool_for_infer().request(path + "/infer", body, headers)
        except OSError as exc:
            raise map_triton_error(exc) from exc
        if response.status != 200:
            failure = InferenceServerException(_error_message(response.body), status=str(response.status))
            raise map_triton_error(failure)
        try:
            length = response.headers.get("inference-header-content-length")
            result = httpclient.InferResult.from_response_body(
                response.body, header_length=int(length) if length else None
            )
            images = result.as_numpy("IMAGE")
        except Exception as exc:
            raise BackendError(f"{model.remote_name} sent an answer that is not KServe v2: {exc}") from exc
        if images is None or images.dtype != np.uint8 or images.ndim != 4:
            raise BackendError(f"{model.remote_name} returned no valid IMAGE tensor")
        version = result.get_response().get("model_version", model.version or "")
        return ImageResult(images, str(version))

    async def ready(self) -> bool:
        try:
            return bool(await self._client.is_server_ready())
        except Exception:  # noqa: BLE001 - unreachable means not ready
            return False

    async def model_ready(self, model: Model) -> bool:
        try:
            return bool(await self._client.is_model_ready(model.remote_name, model.version or ""))
        except Exception:  # noqa: BLE001
            return False

    async def model_metadata(self, model: Model) -> dict[str, Any]:
        try:
            meta = await self._client.get_model_metadata(model.remote_name, model.version or "")
        except Exception as exc:
            raise map_triton_error(exc) from exc
        return dict(meta)

    async def aclose(self) -> None:
        if self._pool is not None:
            await self._pool.aclose()
        if self._lazy is not None:
            await self._lazy.close()
            self._lazy = None
