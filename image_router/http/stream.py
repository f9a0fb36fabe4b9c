"""Progressive previews: an image request answered as server-sent events.

``stream: true`` on ``/v1/images/generations`` (OpenAI's event format, read unchanged by
the SDK's streaming iterator) and ``Accept: text/event-stream`` on ``/api/v1/generate``.
The routed generation starts at once and, beside it, the faster tiers of the route's
fallback chain (``partial_images`` of them, fastest first) on the same seed — one
decision for all of them (:meth:`~image_router.gateway.Gateway.stream`: the same steering,
tenant rules and counting as any request, every image sent counted): each that
finishes first goes out as an ``image_generation.partial_image`` event, the routed
tier's image as ``image_generation.completed``. When the routed generation fails — its
budget ran out and the route has nothing left — the last partial image is sent as the
completed one, marked ``router_downgraded``; with no partial image either, an ``error``
event (the SDK raises it). What served each event is in its ``router_model``.

A client that goes away cancels everything still running for it (Starlette cancels the
stream; the tasks are cancelled in ``finally``), and so, over gRPC, Triton's work.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from image_router.ask import Ask
from image_router.errors import RouterError
from image_router.http.common import b64_images, gateway_of, header
from image_router.inference import served_tags
from image_router.served import Served

__all__ = ["stream_images", "wants_stream"]


def wants_stream(request: Request) -> bool:
    return "text/event-stream" in (header(request, "accept") or "")


def _event(kind: str, payload: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **payload}) + b"\n\n"


def _size(served: Served) -> str:
    size = served.result.dimensions()
    return f"{size[0]}x{size[1]}" if size is not None else "auto"


async def stream_images(
    request: Request, ask: Ask, partial_images: int, fmt: str, quality: int | None, described: dict[str, str]
) -> Response:
    main, partials = await gateway_of(request).stream(ask, partial_images)

    async def payload(served: Served) -> dict[str, Any]:
        (text,) = (await b64_images(request, served.result, None, fmt, quality))[:1]
        tags = served_tags(served)
        out = {"b64_json": text, "created_at": int(time.time()), "size": _size(served), **described}
        out["router_model"] = tags["X-Router-Model"]
        out["router_route"] = tags["X-Router-Route"]
        for tag in ("Fallback", "Priority", "Tenant"):
            if f"X-Router-{tag}" in tags:
                out[f"router_{tag.lower()}"] = tags[f"X-Router-{tag}"]
        return out

    async def events() -> AsyncIterator[bytes]:
        pending: set[asyncio.Future[Served]] = {main, *partials}
        last: Served | None = None
        index = 0
        try:
            while not main.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    if task is main or task.cancelled() or task.exception() is not None or main.done():
                        continue  # a failed preview is simply not shown
                    last = task.result()
                    yield _event(
                        "image_generation.partial_image", {**await payload(last), "partial_image_index": index}
                    )
                    index += 1
            try:
                served = main.result()
            except RouterError as exc:
                if last is None:
                    yield b"event: error\ndata: " + orjson.dumps({"error": exc.to_dict()}) + b"\n\n"
                    return
                served = last
                completed = {**await payload(served), "router_downgraded": True, "router_error": exc.code}
            else:
                completed = {**await payload(served), "router_downgraded": bool(served.fallback)}
            if served.usage is not None:  # what was billed: the answer's own image (a preview's is not)
                completed["usage"] = served.usage.body()
            request.state.served = served  # what the access log and metrics record
            yield _event("image_generation.completed", completed)
        finally:
            for task in (main, *partials):
                task.cancel()

    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return StreamingResponse(events(), media_type="text/event-stream", headers=headers)
