"""``POST /v1/images/generations`` (OpenAI Images API) and ``POST /api/v1/generate``.

The OpenAI endpoint accepts what the official SDK sends — ``prompt``, ``n``, ``size``,
``response_format`` (``b64_json``, or ``url``: served from the cache store by any
replica, see :mod:`router.http.image_files`), ``output_format`` and
``output_compression``, ``model`` as a logical name — and ignores the SDK's other
optional fields. Routing extras may come in the body (``extra_body={"intent": ...}``)
or as headers. ``/api/v1/generate`` answers one image as its bytes, in the ``format``
asked for or the best one ``Accept`` allows, or JSON.
"""

from __future__ import annotations

import re
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from router.backends.base import ImageRequest
from router.errors import InvalidRequest
from router.http.common import (
    MAX_PROMPT_CHARS,
    FastJSONResponse,
    GenerationFields,
    b64_images,
    client_seeds,
    encode_images,
    facts_for,
    parse_json_model,
    read_body,
    serve,
    served_headers,
    tag_images,
)
from router.http.formats import MIME, canonical, negotiate
from router.http.image_files import publish

__all__ = ["generate", "openai_images"]

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class OpenAIImagesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = None
    n: int = Field(default=1, ge=1, le=16)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: str | None = None
    output_compression: int | None = Field(default=None, ge=0, le=100)
    intent: str | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**62)
    steps: int | None = Field(default=None, ge=1, le=1000)
    user: str | None = None


class GenerateRequest(GenerationFields):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    response: Literal["png", "json", "image"] | None = None
    format: str | None = None
    quality: int | None = Field(default=None, ge=0, le=100)


def _size(size: str | None) -> tuple[int | None, int | None]:
    if size is None or size == "auto":
        return None, None
    match = _SIZE.match(size)
    if match is None:
        raise InvalidRequest("size must look like 256x256 (or auto)", field="size")
    return int(match.group(1)), int(match.group(2))


async def openai_images(request: Request) -> Response:
    started = time.monotonic()
    body = parse_json_model(await read_body(request), OpenAIImagesRequest, request.headers.get("content-type"))
    fmt = canonical(body.output_format, "output_format") if body.output_format else "png"
    if fmt == "avif":  # OpenAI's own set; AVIF is offered by /api/v1/generate and image URLs
        raise InvalidRequest("output_format: must be png, jpeg or webp", field="output_format")
    width, height = _size(body.size)
    facts = facts_for(request, body.prompt, body.intent, body.model)
    image_request = ImageRequest(
        prompts=(body.prompt,) * body.n,
        seeds=client_seeds(body.seed, body.n),
        steps=body.steps,
        width=width,
        height=height,
    )
    served = await serve(request, facts, image_request, started)
    headers = served_headers(served)
    ids = await tag_images(served, headers)
    data: list[dict[str, str]] | None = None
    if body.response_format == "url":
        data = await publish(request, served, fmt, body.output_compression)
    if data is None:  # b64_json, or no store could take the images: inline after all
        texts = await b64_images(request, served.result, ids, fmt, body.output_compression)
        data = [{"b64_json": text} for text in texts]
    return FastJSONResponse({"created": int(time.time()), "data": data, "output_format": fmt}, headers=headers)


async def generate(request: Request) -> Response:
    started = time.monotonic()
    body = parse_json_model(await read_body(request), GenerateRequest, request.headers.get("content-type"))
    accept = request.headers.get("accept", "")
    as_json = body.response == "json" or (body.response is None and "application/json" in accept)
    if not as_json and body.n != 1:
        raise InvalidRequest("n > 1 needs a JSON response (response: json)", field="n")
    if body.format:
        fmt = canonical(body.format, "format")
    elif body.response == "png":
        fmt = "png"
    else:
        fmt = negotiate(None if as_json else accept)
    facts = facts_for(request, body.prompt, body.intent, body.model)
    request_seeds = client_seeds(body.seed, body.n)
    image_request = ImageRequest((body.prompt,) * body.n, request_seeds, body.steps, body.width, body.height)
    served = await serve(request, facts, image_request, started)
    headers = served_headers(served)
    ids = await tag_images(served, headers)
    seeds = served.seeds or ()
    if not as_json:
        if seeds:
            headers["X-Router-Seed"] = str(seeds[0])
        headers["Vary"] = "Accept"
        (data,) = await encode_images(request, served.result, ids, fmt, body.quality, count=1)
        return Response(data, media_type=MIME[fmt], headers=headers)
    key = "b64_png" if fmt == "png" else "b64"
    images: list[dict[str, object]] = []
    for i, text in enumerate(await b64_images(request, served.result, ids, fmt, body.quality)):
        item: dict[str, object] = {key: text}
        if i < len(seeds):
            item["seed"] = seeds[i]
        images.append(item)
    payload = {"images": images, "format": fmt, "route": served.route.name, "model": served.model_tag}
    if served.cache is not None:
        payload["cache"] = served.cache
    return FastJSONResponse(payload, headers=headers)
