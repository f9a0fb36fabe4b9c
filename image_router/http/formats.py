"""Image formats the gateway delivers: PNG, JPEG, WebP and AVIF, all through Pillow.

AVIF comes from Pillow's own plugin: Pillow 11.3+ wheels bundle libavif (13.0 here;
``PIL.features.check("avif")`` says so at run time, and an AVIF request to a build
without it is a clear 400, never a 500). ``quality`` is 0-100 as OpenAI's
``output_compression``: JPEG/WebP/AVIF quality; for PNG (lossless) it is ignored.
Encoding costs time in proportion to the image: callers run it through
:func:`image_router.http.encode.encode_off_loop`.
"""

from __future__ import annotations

import io
from typing import Any

from numpy.typing import NDArray
from PIL import Image, features

from image_router.errors import InvalidRequest
from image_router.policy.hints import ACCEPT_CH

__all__ = [
    "DEFAULT_QUALITY",
    "FORMATS",
    "MIME",
    "accepted",
    "available",
    "encode_image",
    "negotiate",
    "supported",
    "tell_hints",
]

FORMATS = ("png", "jpeg", "webp", "avif")
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "avif": "image/avif"}
DEFAULT_QUALITY = 90
_EXTENSIONS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp", "avif": "avif"}


def supported(fmt: str) -> bool:
    return fmt != "avif" or bool(features.check("avif"))


def available() -> tuple[str, ...]:
    """The formats this build can write."""
    return tuple(f for f in FORMATS if supported(f))


def canonical(fmt: str, field: str) -> str:
    """``fmt`` as one of :data:`FORMATS` (``jpg`` is ``jpeg``), else a 400 naming ``field``."""
    name = _EXTENSIONS.get(fmt.lower())
    if name is None:
        raise InvalidRequest(f"{field}: {fmt!r} is not one of png, jpeg, webp, avif", field=field)
    if not supported(name):
        raise InvalidRequest(f"{field}: this build of Pillow cannot write AVIF", field=field)
    return name


def encode_image(image: NDArray[Any], fmt: str, quality: int = DEFAULT_QUALITY) -> bytes:
    buffer = io.BytesIO()
    picture = Image.fromarray(image, mode="RGB")
    if fmt == "png":
        picture.save(buffer, format="PNG", compress_level=1)
    elif fmt == "jpeg":
        picture.save(buffer, format="JPEG", quality=quality)
    elif fmt == "webp":
        picture.save(buffer, format="WEBP", quality=quality, method=4)
    elif fmt == "avif":
        picture.save(buffer, format="AVIF", quality=quality, speed=8)
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return buffer.getvalue()


def _ranges(accept: str) -> list[tuple[str, float]]:
    """``Accept``'s media ranges, lower-case, each with its q-value (unreadable: 0)."""
    out = []
    for part in accept.split(","):
        media, _, params = part.strip().partition(";")
        q = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        out.append((media.strip().lower(), q))
    return out


def negotiate(accept: str | None, default: str = "png") -> str:
    """The best format an ``Accept`` header allows, by its q-values, ties broken by
    size (AVIF, WebP, JPEG, PNG); ``default`` when it names no image type we make."""
    if not accept:
        return default
    best: tuple[float, int, str] | None = None
    preference = {"avif": 3, "webp": 2, "jpeg": 1, "png": 0}
    for media, q in _ranges(accept):
        candidates = [f for f in FORMATS if MIME[f] == media and supported(f)]
        if media in ("image/*", "*/*"):
            candidates = [default]
        for fmt in candidates:
            rank = (q, preference[fmt] if media.startswith("image/") and media != "image/*" else -1, fmt)
            if q > 0 and (best is None or rank > best):
                best = rank
    return best[2] if best else default


def accepted(accept: str | None) -> dict[str, float]:
    """What ``Accept`` says of each format it names, by q-value, and of any other as
    ``"*"`` (``image/*`` or ``*/*``): the input of
    :func:`image_router.policy.hints.choose_format`. Empty: no ``Accept``."""
    out: dict[str, float] = {}
    if not accept or not accept.strip():
        return out
    for media, q in _ranges(accept):
        name = "*" if media in ("image/*", "*/*") else next((f for f in FORMATS if MIME[f] == media), "")
        if name:
            out[name] = max(q, out.get(name, 0.0))
    return out


def tell_hints(headers: dict[str, str], vary: list[str], adapted: list[str]) -> None:
    """An answer's Client Hints headers: ``Accept-CH`` on every one (a browser sends
    ``ECT`` and ``Downlink`` only to an origin that asked for them), ``Vary`` naming what
    the choice of bytes depended on (``vary``, hints included wherever they could have
    changed it, present or not), and ``X-Router-Adapted`` saying what they changed."""
    headers["Accept-CH"] = ACCEPT_CH
    if vary:
        headers["Vary"] = ", ".join(vary)
    if adapted:
        headers["X-Router-Adapted"] = ", ".join(adapted)
