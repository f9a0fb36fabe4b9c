"""Images by URL: ``GET /v1/images/{id}.{ext}``, served by any replica from the store.

``id`` is the image's content hash (:func:`image_router.cache.image_id`), so a URL names
exactly one picture forever: answers are ``Cache-Control: public, max-age=…,
immutable``, carry an ``ETag`` per representation (``If-None-Match`` → 304), and
``Surrogate-Key`` / ``Cache-Tag`` naming the model (``model:quality@1``) and route
(``route:photo``) so a CDN can purge by model. ``ext`` picks the format (png, jpeg,
webp, avif) and ``?q=`` the quality (0-100) — without ``?q=``, a client on a slow or
data-saving link (Client Hints, :mod:`image_router.policy.hints`) gets a lower one,
with ``Vary`` on the hints and its own ``ETag``; each encoded variant is cached in the
store too, and encoding runs off the event loop. An unknown, evicted or purged id is a
404 ``image_not_found``; anything but 32 hex digits never reaches the store; a ``q``
that is not 0-100 in ASCII digits is a 400 naming ``q``.

In ``tenants: {mode: keys}`` an image is a tenant's (an edit of an uploaded photo is
someone's photo): the URL carries ``expires`` and ``sig`` (:class:`UrlSigner`, valid
:data:`SIGNED_URL_S`, as OpenAI's image URLs are) or the request a valid key, else a
401; such answers are ``Cache-Control: private``. The URL's host is the cache's
``public_url``, else the address the gateway listens on — never the request's
``Host`` header, which a client chooses.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response

from image_router.cache import Entry
from image_router.dispatch import Served
from image_router.errors import ImageNotFound, InvalidRequest, Unauthorized
from image_router.http.common import gateway_of, header, image_ids
from image_router.http.encode import encode_images_off_loop
from image_router.http.formats import DEFAULT_QUALITY, MIME, canonical, tell_hints
from image_router.policy.hints import FAST, VARY, Network, choose_quality

__all__ = ["SIGNED_URL_S", "UrlSigner", "image_file", "network_of", "publish", "signer_of"]

_NAME = re.compile(r"^([0-9a-f]{32})\.([a-z]{3,4})$")
SIGNED_URL_S = 3600


class UrlSigner:
    """Expiring image URLs: ``sig`` is an HMAC-SHA256 of ``<id>.<expires>`` (epoch
    seconds), so a URL can be handed on but not extended or moved to another image.

    The secret is ``ROUTER_URL_SECRET``; without it, one derived from
    ``ROUTER_ADMIN_TOKEN`` (replicas that share the token verify each other's URLs, and
    the derivation is one-way); without either, a random one for this process only."""

    def __init__(self, secret: bytes, clock: Callable[[], float] = time.time) -> None:
        self.secret = secret
        self.clock = clock

    @classmethod
    def from_env(cls) -> UrlSigner:
        explicit = os.environ.get("ROUTER_URL_SECRET")
        if explicit:
            return cls(explicit.encode())
        token = os.environ.get("ROUTER_ADMIN_TOKEN")
        if token:
            return cls(hmac.new(token.encode(), b"router-image-url-secret", hashlib.sha256).digest())
        return cls(secrets.token_bytes(32))

    def _mac(self, name: str, expires: int) -> str:
        return hmac.new(self.secret, f"{name}.{expires}".encode(), hashlib.sha256).hexdigest()[:32]

    def query(self, name: str, ttl_s: int = SIGNED_URL_S) -> str:
        expires = int(self.clock()) + ttl_s
        return f"expires={expires}&sig={self._mac(name, expires)}"

    def valid(self, name: str, expires: str | None, sig: str | None) -> bool:
        if not expires or not sig or not (expires.isascii() and expires.isdigit() and len(expires) <= 12):
            return False
        if int(expires) < self.clock():
            return False
        return hmac.compare_digest(sig.encode(), self._mac(name, int(expires)).encode())


def signer_of(request: Request) -> UrlSigner:
    signer: UrlSigner | None = getattr(request.app.state, "url_signer", None)
    if signer is None:
        signer = request.app.state.url_signer = UrlSigner.from_env()
    return signer


def _base_url(request: Request, public_url: str | None) -> str:
    """``public_url``, else where this server listens (the socket, not ``Host``)."""
    if public_url:
        return public_url.rstrip("/")
    host, port = request.scope.get("server") or ("127.0.0.1", None)
    host = f"[{host}]" if ":" in host else host
    return f"{request.url.scheme}://{host}" + (f":{port}" if port else "")


def _private(request: Request) -> bool:
    return gateway_of(request).table.tenant_mode == "keys"


def _quality(raw_q: str | None) -> int | None:
    if raw_q is None:
        return None
    if not (raw_q.isascii() and raw_q.isdigit() and len(raw_q) <= 3 and int(raw_q) <= 100):
        raise InvalidRequest("q: must be an integer from 0 to 100", field="q")
    return int(raw_q)


def network_of(request: Request) -> Network:
    """The Client Hints the request carried (``Save-Data``, ``ECT``, ``Downlink``)."""
    hints = {name: value for name in ("save-data", "ect", "downlink") if (value := header(request, name)) is not None}
    return Network.of(hints)


def _check_access(request: Request, name: str) -> None:
    """In keys mode: a valid signature, or a valid key (a 401 otherwise)."""
    params = request.query_params
    if signer_of(request).valid(name, params.get("expires"), params.get("sig")):
        return
    authorization = header(request, "authorization")
    if authorization is None:
        raise Unauthorized("this image needs a signed URL (expires, sig) or Authorization: Bearer <key>")
    gateway_of(request).authenticate(authorization)  # a 401 for a wrong key


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
    version = served.version
    ttl = served.route.cache.ttl_s if served.route.cache else cache.config.ttl_s
    for i, (image, name) in enumerate(zip(images, ids, strict=True)):
        seeds = (served.seeds[i],) if served.seeds and i < len(served.seeds) else ()
        entry = Entry(image[None], served.model.name, version, served.route.name, seeds, cache.wall_clock())
        if not await cache.save_image(name, entry, ttl):
            return None
    base = _base_url(request, cache.config.public_url)
    query = [f"q={quality}"] if quality is not None and fmt != "png" else []
    signer = signer_of(request) if _private(request) else None
    urls = []
    for name in ids:
        parts = [*query, signer.query(name)] if signer is not None else query
        urls.append(f"{base}/v1/images/{name}.{fmt}" + ("?" + "&".join(parts) if parts else ""))
    return [{"url": url} for url in urls]


async def image_file(request: Request) -> Response:
    match = _NAME.match(request.path_params["name"])
    if match is None:
        raise ImageNotFound("no such image: an image id is 32 hex digits and an extension")
    name, ext = match.groups()
    fmt = canonical(ext, "format")
    asked = _quality(request.query_params.get("q"))
    link = network_of(request).link
    hinted = choose_quality(link, asked) if fmt != "png" else None  # ?q= wins; PNG has none
    quality = DEFAULT_QUALITY if hinted is None else hinted
    private = _private(request)
    if private:
        _check_access(request, name)
    cache = gateway_of(request).cache
    if cache is None:
        raise ImageNotFound("no such image: this gateway has no cache store")
    record = await cache.image(name)
    if record is None:
        raise ImageNotFound(f"no such image: {name} is unknown, expired or purged")
    tag = f'"{name}-{fmt}-{quality}"'
    headers = {
        "ETag": tag,
        "Cache-Control": f"{'private' if private else 'public'}, max-age={cache.config.image_max_age_s}, immutable",
        "Surrogate-Key": f"model:{record.tag} model:{record.model} route:{record.route}",
        "Cache-Tag": f"model:{record.tag},model:{record.model},route:{record.route}",
        "X-Router-Model": record.tag,
        "X-Router-Route": record.route,
    }
    adaptable = fmt != "png" and asked is None  # the extension and ?q= are the client's own
    adapted = [f"quality={quality}"] if adaptable and link != FAST else []
    tell_hints(headers, list(VARY) if adaptable else [], adapted)
    if tag in {t.strip() for t in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers=headers)
    data = await cache.variant(name, fmt, quality)
    if data is None:
        (data,) = await encode_images_off_loop(record.images[:1], fmt, quality)
        cache.save_variant(name, fmt, quality, data, cache.config.ttl_s)
    return Response(data, media_type=MIME[fmt], headers=headers)
