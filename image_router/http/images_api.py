"""``POST /v1/images/generations`` (OpenAI Images API) and ``POST /api/v1/generate``.

The OpenAI endpoint accepts what the official SDK sends — ``prompt``, ``n``, ``size``,
``response_format`` (``b64_json``, or ``url``: served from the cache store by any
replica, see :mod:`image_router.http.image_files`), ``output_format`` and
``output_compression``, ``model`` as a logical name — and ignores the SDK's other
optional fields. Routing extras may come in the body (``extra_body={"intent": ...}``)
or as headers. ``/api/v1/generate`` answers one image as its bytes, in the ``format``
asked for or the best one ``Accept`` allows, or JSON; on a slow or data-saving link
(Client Hints) a smaller format and lower quality where the client named none, and on a
route that opts in a smaller size and a faster tier (:mod:`image_router.policy.hints`,
docs/client-hints.md). The OpenAI answers keep OpenAI's semantics: never adapted.
"""

from __future__ import annotations

import re
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import Response

from image_router.backends.base import ImageRequest
from image_router.errors import BackendRejected, InvalidRequest
from image_router.http.common import (
    MAX_PROMPT_CHARS,
    FastJSONResponse,
    GenerationFields,
    ask_for,
    b64_images,
    client_seeds,
    encode_images,
    facts_for,
    header,
    parse_json_model,
    read_body,
    serve,
    served_headers,
    tag_images,
    tenant_of,
)
from image_router.http.formats import MIME, accepted, available, canonical, negotiate, tell_hints
from image_router.http.image_files import network_of, publish
from image_router.http.stream import stream_images, wants_stream
from image_router.policy.hints import FAST, FIELD, VARY, choose_format, choose_quality, downgrades, downsized
from image_router.policy.match import RequestFacts
from image_router.served import Served

__all__ = ["OpenAIImagesRequest", "generate", "openai_answer", "openai_images", "openai_size"]

_SIZE = re.compile(r"^(\d{1,5})x(\d{1,5})$")
_OPENAI_FIELDS = {
    "WIDTH": "size",
    "HEIGHT": "size",
    "STEPS": "steps",
    "SEED": "seed",
    "PROMPT": "prompt",
    "INIT_IMAGE": "image",  # an edit's picture (a hosted backend refuses it)
    "MASK": "mask",
    "STRENGTH": "strength",
}


class OpenAIImagesRequest(BaseModel):
    """Every field of OpenAI's ``images/generations`` (SDK 3.54), and this gateway's
    extras (``intent``, ``seed``, ``steps``). A field is honoured, or refused by name;
    unknown fields are refused too, so nothing a client sends is silently ignored. The
    table is in docs/openai.md."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: str | None = None
    n: int = Field(default=1, ge=1, le=10)
    size: str | None = None
    quality: Literal["auto", "low", "medium", "high", "xhigh", "max", "standard", "hd"] | None = None
    background: Literal["auto", "opaque", "transparent"] | None = None
    moderation: Literal["auto", "low"] | None = None
    output_format: str | None = None
    output_compression: int | None = Field(default=None, ge=0, le=100)
    response_format: Literal["b64_json", "url"] | None = None
    stream: bool | None = None
    partial_images: int | None = Field(default=None, ge=0, le=3)
    user: str | None = Field(default=None, max_length=256)
    safety_identifier: str | None = Field(default=None, max_length=256)
    # OpenAI's GIF, SVG and planning controls and the retired models' `style`: refused
    style: Any = None
    complexity: Any = None
    frame_count: Any = None
    frame_duration_ms: Any = None
    svg: Any = None
    # this gateway's extras
    intent: str | None = None
    seed: int | None = Field(default=None, ge=0, lt=2**62)
    steps: int | None = Field(default=None, ge=1, le=1000)

    def check(self) -> str:
        """Refuse what cannot be honoured here, naming the field; the output format."""
        refused = {
            "style": "style is for retired models; describe the style in the prompt",
            "complexity": "complexity is not supported: a route's tiers decide the work per image",
            "frame_count": "GIF output is not supported",
            "frame_duration_ms": "GIF output is not supported",
            "svg": "SVG output is not supported",
        }
        for name, why in refused.items():
            if getattr(self, name) is not None:
                raise InvalidRequest(f"{name}: {why}", field=name)
        if self.background == "transparent":
            raise InvalidRequest(
                "background: transparent is not supported: the tiers make opaque images", field="background"
            )
        fmt = canonical(self.output_format, "output_format") if self.output_format else "png"
        if fmt == "avif":  # OpenAI's own set; AVIF is offered by /api/v1/generate and image URLs
            raise InvalidRequest("output_format: must be png, jpeg or webp", field="output_format")
        if fmt == "png" and self.output_compression is not None:
            raise InvalidRequest("output_compression: only for jpeg and webp", field="output_compression")
        if self.partial_images and not self.stream:
            raise InvalidRequest("partial_images: needs stream: true", field="partial_images")
        if self.stream and self.n != 1:
            raise InvalidRequest("n: a stream carries one image", field="n")
        if self.stream and self.response_format == "url":
            raise InvalidRequest("response_format: a stream carries base64 images", field="response_format")
        return fmt

    @property
    def end_user(self) -> str | None:
        """``safety_identifier``, or the deprecated ``user`` when it is empty."""
        return self.safety_identifier or self.user or None

    def image_request(self, **extra: Any) -> ImageRequest:
        """What to generate: ``n`` of the prompt at the asked size, with the client's
        seeds (``extra``: an edit's picture, mask and strength)."""
        width, height = openai_size(self.size)
        return ImageRequest(
            prompts=(self.prompt,) * self.n,
            seeds=client_seeds(self.seed, self.n),
            steps=self.steps,
            width=width,
            height=height,
            **extra,
        )

    def routing_fields(self) -> dict[str, str]:
        """What the routing rules may match on or stick by (``quality``, ``user``)."""
        fields: dict[str, str] = {"quality": self.quality or "auto"}
        if self.end_user:
            fields["user"] = self.end_user
        return fields

    def described(self, fmt: str) -> dict[str, str]:
        """The fields an OpenAI answer repeats about the images."""
        out: dict[str, str] = {"background": "opaque", "quality": self.quality or "auto", "output_format": fmt}
        if self.end_user:
            out["safety_identifier"] = self.end_user
        return out


class GenerateRequest(GenerationFields):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    response: Literal["png", "json", "image"] | None = None
    format: str | None = None
    quality: int | None = Field(default=None, ge=0, le=100)
    partial_images: int = Field(default=0, ge=0, le=3)  # with Accept: text/event-stream


def openai_size(size: str | None) -> tuple[int | None, int | None]:
    if size is None or size == "auto":
        return None, None
    match = _SIZE.match(size)
    if match is None:
        raise InvalidRequest("size must look like 256x256 (or auto)", field="size")
    return int(match.group(1)), int(match.group(2))


async def openai_images(request: Request) -> Response:
    if "respond-async" in (header(request, "prefer") or ""):  # an async job instead (issue 32)
        from image_router.http.jobs_api import respond_async  # here: jobs_api builds on this module

        return await respond_async(request)
    started = time.monotonic()
    tenant_of(request)
    body = parse_json_model(await read_body(request), OpenAIImagesRequest, header(request, "content-type"))
    fmt = body.check()
    image_request = body.image_request()
    facts = facts_for(request, body.prompt, body.intent, body.model, body.routing_fields())
    described = body.described(fmt)
    if body.stream:
        ask = ask_for(request, facts, image_request, started)
        return await stream_images(request, ask, body.partial_images or 0, fmt, body.output_compression, described)
    return await openai_answer(request, body, facts, image_request, started, fmt)


async def openai_answer(
    request: Request,
    body: OpenAIImagesRequest,
    facts: RequestFacts,
    image_request: ImageRequest,
    started: float,
    fmt: str,
) -> Response:
    """Serve ``image_request`` and answer as OpenAI does: the images (base64 or URLs)
    and what they are; an error from a limit names the OpenAI field."""
    described = body.described(fmt)
    try:
        served = await serve(request, facts, image_request, started)
    except (BackendRejected, InvalidRequest) as exc:  # a limit of the route or the model: the OpenAI field
        field = exc.details.get("field") or _OPENAI_FIELDS.get(exc.message.split(":", 1)[0].strip(), "prompt")
        exc.details["field"] = {"width": "size", "height": "size"}.get(field, field)
        raise
    headers = served_headers(served)
    ids = await tag_images(served, headers)
    data: list[dict[str, str]] | None = None
    if body.response_format == "url":
        data = await publish(request, served, fmt, body.output_compression)
    if data is None:  # b64_json, or no store could take the images: inline after all
        texts = await b64_images(request, served.result, ids, fmt, body.output_compression)
        data = [{"b64_json": text} for text in texts]
    answer: dict[str, object] = {"created": int(time.time()), "data": data, **described, "size": _size_of(served)}
    if served.usage is not None:  # OpenAI's `usage`, with what the image cost (billing:)
        answer["usage"] = served.usage.body()
    return FastJSONResponse(answer, headers=headers)


def _size_of(served: Served) -> str:
    """``WIDTHxHEIGHT`` of the images served."""
    size = served.result.dimensions()
    return f"{size[0]}x{size[1]}" if size is not None else "auto"


async def generate(request: Request) -> Response:
    if "respond-async" in (header(request, "prefer") or ""):  # an async job instead (issue 32)
        from image_router.http.jobs_api import respond_async  # here: jobs_api builds on this module

        return await respond_async(request, "generate")
    started = time.monotonic()
    tenant_of(request)
    body = parse_json_model(await read_body(request), GenerateRequest, header(request, "content-type"))
    accept = header(request, "accept") or ""
    if wants_stream(request):
        if body.n != 1:
            raise InvalidRequest("n: a stream carries one image", field="n")
        fmt = canonical(body.format, "format") if body.format else "png"
        facts = facts_for(request, body.prompt, body.intent, body.model)
        image_request = ImageRequest((body.prompt,), client_seeds(body.seed, 1), body.steps, body.width, body.height)
        described = {"background": "opaque", "quality": "auto", "output_format": fmt}
        ask = ask_for(request, facts, image_request, started)
        return await stream_images(request, ask, body.partial_images, fmt, body.quality, described)
    as_json = body.response == "json" or (body.response is None and "application/json" in accept)
    if not as_json and body.n != 1:
        raise InvalidRequest("n > 1 needs a JSON response (response: json)", field="n")
    link = network_of(request).link
    adapted: list[str] = []
    if body.format:
        fmt = canonical(body.format, "format")
    elif body.response == "png":
        fmt = "png"
    else:
        fmt = negotiate(None if as_json else accept)
        if not as_json:  # a JSON answer's format is named in it: a client may read b64_png
            hinted = choose_format(link, accepted(accept), fmt, available())
            adapted += [f"format={hinted}"] if hinted != fmt else []
            fmt = hinted
    quality = body.quality if fmt == "png" else choose_quality(link, body.quality)
    adapted += [f"quality={quality}"] if quality != body.quality else []
    facts = facts_for(request, body.prompt, body.intent, body.model, {FIELD: link} if link != FAST else None)
    request_seeds = client_seeds(body.seed, body.n)
    image_request = ImageRequest((body.prompt,) * body.n, request_seeds, body.steps, body.width, body.height)
    served = await serve(request, facts, image_request, started)
    headers = served_headers(served)
    ids = await tag_images(served, headers)
    seeds = served.seeds or ()
    adapted += _route_adapted(served, link, body.width, body.height)
    # the hints could change these bytes (present or not): a cache must key on them
    hintable = body.format is None or (fmt != "png" and body.quality is None) or served.route.client_hints is not None
    vary = ([] if as_json else ["Accept"]) + (list(VARY) if hintable else [])
    tell_hints(headers, vary, adapted)
    if not as_json:
        if seeds:
            headers["X-Router-Seed"] = str(seeds[0])
        (data,) = await encode_images(request, served.result, ids, fmt, quality, count=1)
        return Response(data, media_type=MIME[fmt], headers=headers)
    key = "b64_png" if fmt == "png" else "b64"
    images: list[dict[str, object]] = []
    for i, text in enumerate(await b64_images(request, served.result, ids, fmt, quality)):
        item: dict[str, object] = {key: text}
        if i < len(seeds):
            item["seed"] = seeds[i]
        images.append(item)
    payload: dict[str, object] = {
        "images": images,
        "format": fmt,
        "route": served.route.name,
        "model": served.model_tag,
    }
    if served.cache is not None:
        payload["cache"] = served.cache
    if served.usage is not None:
        payload["usage"] = served.usage.body()
    return FastJSONResponse(payload, headers=headers)


def _route_adapted(served: Served, link: str, width: int | None, height: int | None) -> list[str]:
    """What the route's ``client_hints`` opt-in changed (the data plane applied the same
    pure rules: :func:`image_router.decide.hinted` and ``arm_phase``): ``size=`` the
    size made, ``tier=`` the tier that answered, the chain started at its fallback."""
    hints, out = served.route.client_hints, []
    if downsized(hints, link, width, height, served.model.native_side) is not None:
        size = served.result.dimensions()
        out.append(f"size={size[0]}x{size[1]}" if size is not None else "size")
    if downgrades(hints, link, 2):  # compile refuses a downgrade without a fallback
        out.append(f"tier={served.model.name}")
    return out
