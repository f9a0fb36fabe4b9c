"""Images by URL: ``GET /v1/images/{id}.{ext}``, served by any replica from the store.

``id`` is the image's content hash (:func:`router.cache.image_id`), so a URL names
exactly one picture forever: answers are ``Cache-Control: public, max-age=…,
immutable``, carry an ``ETag`` per representation (``If-None-Match`` → 304), and
``Surrogate-Key`` / ``Cache-Tag`` naming the model (``model:quality@1``) and route
(``route:photo``) so a CDN can purge by model. ``ext`` picks the format (png, jpeg,
webp, avif) and ``?q=`` the quality (0-100); each encoded variant is cached in the
store too, and encoding runs off the event loop. An unknown, evicted or purged id is a
404 ``image_not_found``; anything but 32 hex digits never reaches the store.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from router.cache import Entry
from router.dispatch import Served
from router.errors import ImageNotFound, InvalidRequest
from router.http.common import gateway_of, image_ids
from router.http.encode import encode_images_off_loop
from router.http.formats import DEFAULT_QUALITY, MIME, canonical

__all__ = ["image_file", "publish"]

_NAME = re.compile(r"^([0-9a-f]{32})\.([a-z]{3,4})$")


def _base_url(request: Request, public_url: str | None) -> str:
    if public_url:
        return public_url
    return f"{request.url.scheme}://{request.headers.get('host') or request.url.netloc}"


async def publish(request: Request, served: Served, fmt: str, quality: int | None) -> list[dict[str, str]] | None:
    """Store each image of ``served`` for its URL and return OpenAI's ``data`` items;
    ``None`` when the store would not take them (the caller answers inline instead: a
    URL that points nowhere would be worse). Without a store at all, a 400."""
    cache = gateway_of(request).cache
    if cache is None:
        raise InvalidRequest(
            "response_format 'url' needs a cache store (a cache block in routes.yaml); use b64_json",
            field="response_format",
        )
    images = await served.result.pixels()
    ids = await image_ids(served.result)  # the ETag's hashes, when the route is cached
    version = served.result.model_version or served.model.version or ""
    ttl = served.route.cache.ttl_s if served.route.cache else cache.config.ttl_s
    for i, (image, name) in enumerate(zip(images, ids, strict=True)):
        seeds = (served.seeds[i],) if served.seeds and i < len(served.seeds) else ()
        entry = Entry(image[None], served.model.name, version, served.route.name, seeds, cache.wall_clock())
        if not await cache.store.set(f"i:{name}", entry.to_bytes(), ttl):
            return None
    base = _base_url(request, cache.config.public_url)
    suffix = f"?q={quality}" if quality is not None and fmt != "png" else ""
    return [{"url": f"{base}/v1/images/{name}.{fmt}{suffix}"} for name in ids]


async def image_file(request: Request) -> Response:
    match = _NAME.match(request.path_params["name"])
    if match is None:
        raise ImageNotFound("no such image: an image id is 32 hex digits and an extension")
    name, ext = match.groups()
    fmt = canonical(ext, "format")
    raw_q = request.query_params.get("q")
    if raw_q is not None and not (raw_q.isdigit() and 0 <= int(raw_q) <= 100):
        raise ImageNotFound("no such image: q must be 0-100")
    quality = DEFAULT_QUALITY if raw_q is None or fmt == "png" else int(raw_q)
    cache = gateway_of(request).cache
    if cache is None:
        raise ImageNotFound("no such image: this gateway has no cache store")
    record = await cache.image(name)
    if record is None:
        raise ImageNotFound(f"no such image: {name} is unknown, expired or purged")
    tag = f'"{name}-{fmt}-{quality}"'
    headers = {
        "ETag": tag,
        "Cache-Control": f"public, max-age={cache.config.image_max_age_s}, immutable",
        "Surrogate-Key": f"model:{record.tag} model:{record.model} route:{record.route}",
        "Cache-Tag": f"model:{record.tag},model:{record.model},route:{record.route}",
        "X-Router-Model": record.tag,
        "X-Router-Route": record.route,
    }
    if tag in {t.strip() for t in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers=headers)
    data = await cache.variant(name, fmt, quality)
    if data is None:
        (data,) = await encode_images_off_loop(record.images[:1], fmt, quality)
        cache.save_variant(name, fmt, quality, data, cache.config.ttl_s)
    return Response(data, media_type=MIME[fmt], headers=headers)
