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

__all__ = ["DEFAULT_QUALITY", "FORMATS", "MIME", "encode_image", "negotiate", "supported"]

FORMATS = ("png", "jpeg", "webp", "avif")
MIME = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp", "avif": "image/avif"}
DEFAULT_QUALITY = 90
_EXTENSIONS = {"png": "png", "jpeg": "jpeg", "jpg": "jpeg", "webp": "webp", "avif": "avif"}


def supported(fmt: str) -> bool:
    return fmt != "avif" or bool(features.check("avif"))


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


def negotiate(accept: str | None, default: str = "png") -> str:
    """The best format an ``Accept`` header allows, by its q-values, ties broken by
    size (AVIF, WebP, JPEG, PNG); ``default`` when it names no image type we make."""
    if not accept:
        return default
    best: tuple[float, int, str] | None = None
    preference = {"avif": 3, "webp": 2, "jpeg": 1, "png": 0}
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
        media = media.strip().lower()
        candidates = [f for f in FORMATS if MIME[f] == media and supported(f)]
        if media in ("image/*", "*/*"):
            candidates = [default]
        for fmt in candidates:
            rank = (q, preference[fmt] if media.startswith("image/") and media != "image/*" else -1, fmt)
            if q > 0 and (best is None or rank > best):
                best = rank
    return best[2] if best else default
