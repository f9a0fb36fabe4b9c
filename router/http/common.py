"""Helpers shared by the front ends: bounded body reads, facts, tags, image encoding."""

from __future__ import annotations

import base64
import hashlib
import io
import json
from typing import Any, TypeVar

from numpy.typing import NDArray
from PIL import Image
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from router.backends.base import ImageRequest
from router.cache import image_id
from router.dispatch import Served
from router.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from router.gateway import Gateway
from router.http.encode import encode_off_loop
from router.policy.match import RequestFacts

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_PROMPT_CHARS",
    "b64_png",
    "canary_override",
    "client_seeds",
    "encode_png",
    "etag",
    "facts_for",
    "gateway_of",
    "parse_json_model",
    "priority_of",
    "read_body",
    "serve",
    "served_headers",
    "tag_images",
]

MAX_BODY_BYTES = 1 << 20
MAX_PROMPT_CHARS = 4000  # every API; the models themselves refuse more than 4096 bytes
M = TypeVar("M", bound=BaseModel)


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The request body, refusing (413) anything over ``limit`` before buffering it."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise InvalidRequest("Content-Length is not a number", field="Content-Length")
        if int(declared) > limit:
            raise PayloadTooLarge(f"body of {declared} bytes is over the {limit}-byte limit", limit=limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"body is over the {limit}-byte limit", limit=limit)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_json_model(body: bytes, model: type[M], content_type: str | None) -> M:
    """Decode a JSON body into ``model``; errors name the first offending field."""
    if content_type and "json" not in content_type and "text/plain" not in content_type:
        raise UnsupportedMediaType(f"expected application/json, got {content_type}")
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRequest(f"body is not valid JSON: {exc}") from None
    except RecursionError:  # json's decoder recurses per nesting level
        raise InvalidRequest("body is not valid JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise InvalidRequest("body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(f"{field}: {first['msg']}", field=field) from None


def facts_for(request: Request, prompt: str, intent: str | None, model: str | None) -> RequestFacts:
    return RequestFacts.of(prompt, intent, model, request.headers)


def served_headers(served: Served) -> dict[str, str]:
    """The ``X-Router-*`` tags and ``Server-Timing`` for a served request, and on a
    cached route ``X-Cache`` and ``Age`` (``ETag`` needs the pixels: :func:`etag`)."""
    headers = {
        "X-Router-Route": served.route.name,
        "X-Router-Model": served.model_tag,
        "X-Router-Attempts": str(served.attempts),
        "X-Router-Canary": "true" if served.canary else "false",
        "Server-Timing": (
            f"queue;dur={served.queue_s * 1000:.1f}, backend;dur={served.backend_s * 1000:.1f}, "
            f"total;dur={served.total_s * 1000:.1f}"
        ),
    }
    if served.fallback:
        headers["X-Router-Fallback"] = ", ".join(f"{m}:{why}" for m, why in served.fallback)
    if served.hedged:
        headers["X-Router-Hedged"] = "true"
    if served.cache is not None:
        headers["X-Cache"] = served.cache
        headers["Age"] = str(int(served.age_s))
    return headers


def etag(images: NDArray[Any]) -> str:
    """A strong validator of the images: their content hash (one image: its URL id)."""
    ids = [image_id(image) for image in images]
    if len(ids) == 1:
        return f'"{ids[0]}"'
    return '"' + hashlib.blake2b("".join(ids).encode(), digest_size=16).hexdigest() + '"'


async def tag_images(served: Served, headers: dict[str, str]) -> None:
    """Add the ``ETag`` of a cached route's answer (hashed off the loop when large)."""
    if served.cache is not None:
        images = served.result.images
        headers["ETag"] = await encode_off_loop(images, lambda: etag(images))


def encode_png(image: NDArray[Any]) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def b64_png(image: NDArray[Any]) -> str:
    return base64.b64encode(encode_png(image)).decode()


def client_seeds(seed: int | None, n: int) -> tuple[int, ...] | None:
    """``n`` consecutive seeds from the client's; ``None`` when it sent none (the
    gateway then picks them by the route's rules, and the answer reports them)."""
    return None if seed is None else tuple(seed + i for i in range(n))


def gateway_of(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


async def serve(
    request: Request, facts: RequestFacts, image_request: ImageRequest, started: float, random_seeds: bool = True
) -> Served:
    """Hand a decoded request to the gateway with the routing extras every API shares:
    query parameters (for ``sticky: query:...``), ``X-Canary`` and ``X-Priority``."""
    return await gateway_of(request).generate(
        facts,
        image_request,
        query=request.query_params,
        canary=canary_override(request),
        priority=priority_of(request),
        started=started,
        cache_control=request.headers.get("cache-control"),
        random_seeds=random_seeds,
    )


def canary_override(request: Request) -> str | None:
    value = request.headers.get("x-canary", "").strip().lower()
    return value if value in ("always", "never") else None


def priority_of(request: Request) -> int | None:
    value = request.headers.get("x-priority")
    if value is None:
        return None
    if value not in ("1", "2", "3"):
        raise InvalidRequest("X-Priority must be 1 (highest), 2 or 3", field="X-Priority")
    return int(value)
