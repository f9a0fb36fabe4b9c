"""``POST /v1/images/generations`` (OpenAI Images API) and ``POST /api/v1/generate``.

The OpenAI endpoint accepts what the official SDK sends — ``prompt``, ``n``, ``size``,
``response_format`` (``b64_json``; URLs are not hosted here, so ``url`` is a clear
400), ``model`` as a logical name — and ignores the SDK's other optional fields.
Routing extras may come in the body (``extra_body={"intent": ...}``) or as headers.
"""

from __future__ import annotations

import re
import time
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from router.backends.base import ImageRequest
from router.errors import InvalidRequest
from router.http.common import (
    MAX_PROMPT_CHARS,
    b64_png,
    encode_png,
    facts_for,
    parse_json_model,
    pick_seeds,
    read_body,
    serve,
    served_headers,
)
from router.http.encode import encode_off_loop

__all__ = ["generate", "openai_images"]

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")


class OpenAIImagesRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = None
    n: int = Field(default=1, ge=1, le=16)
    size: str | None = None
    response_format: Literal["b64_json", "url"] | None = None
    intent: str | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**62)
    steps: int | None = Field(default=None, ge=1, le=1000)
    user: str | None = None


class GenerateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    intent: str | None = None
    model: str | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**62)
    steps: int | None = Field(default=None, ge=1, le=1000)
    width: int | None = Field(default=None, ge=8, le=4096)
    height: int | None = Field(default=None, ge=8, le=4096)
    n: int = Field(default=1, ge=1, le=16)
    response: Literal["png", "json"] | None = None


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
    if body.response_format == "url":
        raise InvalidRequest("response_format 'url' is not supported; use b64_json", field="response_format")
    width, height = _size(body.size)
    facts = facts_for(request, body.prompt, body.intent, body.model)
    image_request = ImageRequest(
        prompts=(body.prompt,) * body.n,
        seeds=pick_seeds(body.seed, body.n),
        steps=body.steps,
        width=width,
        height=height,
    )
    served = await serve(request, facts, image_request, started)
    images = served.result.images
    data = await encode_off_loop(images, lambda: [{"b64_json": b64_png(image)} for image in images])
    return JSONResponse({"created": int(time.time()), "data": data}, headers=served_headers(served))


async def generate(request: Request) -> Response:
    started = time.monotonic()
    body = parse_json_model(await read_body(request), GenerateRequest, request.headers.get("content-type"))
    as_json = body.response == "json" or (
        body.response is None and "application/json" in request.headers.get("accept", "")
    )
    if not as_json and body.n != 1:
        raise InvalidRequest("n > 1 needs a JSON response (response: json)", field="n")
    seeds = pick_seeds(body.seed, body.n)
    facts = facts_for(request, body.prompt, body.intent, body.model)
    image_request = ImageRequest((body.prompt,) * body.n, seeds, body.steps, body.width, body.height)
    served = await serve(request, facts, image_request, started)
    headers = served_headers(served)
    results = served.result.images
    if not as_json:
        headers["X-Router-Seed"] = str(seeds[0])
        png = await encode_off_loop(results[:1], lambda: encode_png(results[0]))
        return Response(png, media_type="image/png", headers=headers)
    images = await encode_off_loop(
        results,
        lambda: [{"b64_png": b64_png(image), "seed": seed} for image, seed in zip(results, seeds, strict=False)],
    )
    payload = {"images": images, "route": served.route.name, "model": served.model_tag}
    return JSONResponse(payload, headers=headers)
