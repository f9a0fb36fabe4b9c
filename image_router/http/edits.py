"""``POST /v1/images/edits`` and ``/v1/images/variations`` (OpenAI Images, multipart).

Both start from the client's picture (``INIT_IMAGE`` in the model contract) and are
routed like any request, with the same budgets and downgrades. An edit repaints it to
the prompt — with a ``mask``, only where the mask is transparent (OpenAI's convention),
by the tiers' inpainting pipelines; a variation redraws it freely, with no prompt of the
client's. How far from the picture the result may go is ``strength`` (this gateway's
extra, 0 to 1; OpenAI's ``input_fidelity: high`` is 0.5, ``low`` 0.8; a variation 0.6).

Bad parts are 400s naming the part (``param``): an image that does not decode or is too
large, more than one image, a mask that is not an RGBA picture of the image's size.
Edits are not stored in the result cache (its keys hold no picture) and not streamed.

An upload is an attack surface (issue 30, items 4-5), so it is bounded before it costs:

- the body's bytes are counted as they arrive, whatever the framing (a declared length
  or chunked): past :data:`MAX_FORM_BYTES` it is a 413 at once, and the parts spooled
  so far are deleted — nothing past the limit reaches ``/tmp``;
- a picture's header is read first (Pillow opens lazily): only PNG, JPEG and WebP (a
  400 naming the part otherwise), each side within [8, :data:`MAX_IMAGE_SIDE`] px,
  before a single pixel is decoded — a 0.6 MB PNG claiming 20000² is refused unread;
- decoding runs in a worker thread, at most :data:`DECODE_SLOTS` at once, so the event
  loop keeps serving and decoded pixels in flight stay bounded
  (``DECODE_SLOTS`` x 4096² x 4 bytes x 2 copies, about 256 MiB at most).
"""

from __future__ import annotations

import asyncio
import io
import time
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError
from pydantic import Field
from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message

from image_router.errors import InvalidRequest, PayloadTooLarge, UnsupportedMediaType
from image_router.http.common import facts_for, tenant_of, validated
from image_router.http.images_api import OpenAIImagesRequest, openai_answer

__all__ = ["openai_edits", "openai_variations"]

MAX_FORM_BYTES = 32 << 20  # the whole multipart body
MAX_IMAGE_BYTES = 16 << 20  # one uploaded picture
MAX_IMAGE_SIDE = 4096
FORMATS = frozenset({"PNG", "JPEG", "WEBP"})  # what the docs promise; TIFF, BMP, ICO, GIF are refused
DECODE_SLOTS = 2
_decoding = asyncio.Semaphore(DECODE_SLOTS)  # module-wide: one gateway process, one loop
VARIATION_PROMPT = "a variation of this picture"
_FIDELITY = {"high": 0.5, "low": 0.8}


class OpenAIEditsRequest(OpenAIImagesRequest):
    input_fidelity: Literal["high", "low"] | None = None
    strength: float | None = Field(default=None, gt=0, le=1)


class OpenAIVariationsRequest(OpenAIEditsRequest):
    prompt: str = VARIATION_PROMPT


async def _form(request: Request) -> tuple[dict[str, Any], list[UploadFile], UploadFile | None]:
    """The text fields, the ``image`` (or ``image[]``) files and the ``mask`` file."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise UnsupportedMediaType(f"expected multipart/form-data, got {content_type or 'nothing'}")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and len(declared) < 20 and int(declared) > MAX_FORM_BYTES:
        raise PayloadTooLarge(f"body of {declared} bytes is over the {MAX_FORM_BYTES}-byte limit", limit=MAX_FORM_BYTES)
    form = await Request(request.scope, _counted(request)).form(max_files=8, max_fields=64)
    fields: dict[str, Any] = {}
    images: list[UploadFile] = []
    mask: UploadFile | None = None
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            if key in ("image", "image[]"):
                images.append(value)
            elif key == "mask":
                mask = value
            else:
                raise InvalidRequest(f"{key}: unexpected file", field=key)
        else:
            fields[key] = value
    return fields, images, mask


def _counted(request: Request) -> Any:
    """``request``'s ASGI ``receive``, raising :class:`PayloadTooLarge` once the body's
    bytes pass :data:`MAX_FORM_BYTES` — chunked bodies declare no length to check."""
    receive = request.receive
    seen = 0

    async def counted() -> Message:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > MAX_FORM_BYTES:
            raise PayloadTooLarge(f"body is over the {MAX_FORM_BYTES}-byte limit", limit=MAX_FORM_BYTES)
        return message

    return counted


def _header(data: bytes, part: str) -> Image.Image:
    """The picture's format and size, from its header only (nothing decoded yet)."""
    try:
        picture = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError:  # Pillow's own bound (2 x 89 M pixels) is looser than ours
        raise InvalidRequest(f"{part}: sides must be within [8, {MAX_IMAGE_SIDE}] pixels", field=part) from None
    except (UnidentifiedImageError, OSError, ValueError):
        raise InvalidRequest(f"{part}: not a PNG, JPEG or WebP picture", field=part) from None
    if picture.format not in FORMATS:
        raise InvalidRequest(f"{part}: {picture.format} is not accepted (PNG, JPEG or WebP)", field=part)
    if not (8 <= picture.width <= MAX_IMAGE_SIDE and 8 <= picture.height <= MAX_IMAGE_SIDE):
        raise InvalidRequest(
            f"{part}: {picture.width}x{picture.height}: sides must be within [8, {MAX_IMAGE_SIDE}] pixels", field=part
        )
    return picture


def _decoded(picture: Image.Image, part: str) -> Image.Image:
    try:
        picture.load()
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError):
        raise InvalidRequest(f"{part}: the picture does not decode", field=part) from None
    return picture


async def _picture(upload: UploadFile, part: str) -> Image.Image:
    data = await upload.read(MAX_IMAGE_BYTES + 1)
    if len(data) > MAX_IMAGE_BYTES:
        raise PayloadTooLarge(f"{part}: over the {MAX_IMAGE_BYTES}-byte limit", limit=MAX_IMAGE_BYTES, field=part)
    picture = _header(data, part)
    async with _decoding:
        return await asyncio.to_thread(_decoded, picture, part)


def _mask_of(mask: Image.Image, image: Image.Image) -> NDArray[Any]:
    """OpenAI's mask: a picture of the image's size whose fully transparent pixels mark
    where to paint; as the model's MASK (255 there, 0 elsewhere)."""
    if mask.size != image.size:
        raise InvalidRequest(f"mask: {mask.width}x{mask.height} is not the image's {image.width}x{image.height}",
                             field="mask")  # fmt: skip
    if "A" not in mask.getbands():
        raise InvalidRequest("mask: needs an alpha channel (transparent where to paint)", field="mask")
    alpha = np.asarray(mask.getchannel("A"))
    return np.where(alpha == 0, 255, 0).astype(np.uint8)


async def _image_edit(request: Request, model: type[OpenAIEditsRequest], default_strength: float) -> Response:
    started = time.monotonic()
    tenant_of(request)
    fields, images, mask_file = await _form(request)
    body = validated(model, fields)
    fmt = body.check()
    if body.stream:
        raise InvalidRequest("stream: edits and variations are not streamed here", field="stream")
    if not images:
        raise InvalidRequest("image: required", field="image")
    if len(images) > 1:
        raise InvalidRequest("image: one picture per request here", field="image")
    picture = await _picture(images[0], "image")
    mask_picture = await _picture(mask_file, "mask") if mask_file is not None else None
    strength = body.strength or (_FIDELITY[body.input_fidelity] if body.input_fidelity else default_strength)
    async with _decoding:
        init_image = await asyncio.to_thread(lambda: np.asarray(picture.convert("RGB")))
        mask = await asyncio.to_thread(_mask_of, mask_picture, picture) if mask_picture is not None else None
    image_request = body.image_request(init_image=init_image, mask=mask, strength=strength)
    facts = facts_for(request, body.prompt, body.intent, body.model, body.routing_fields())
    return await openai_answer(request, body, facts, image_request, started, fmt)


async def openai_edits(request: Request) -> Response:
    return await _image_edit(request, OpenAIEditsRequest, default_strength=0.75)


async def openai_variations(request: Request) -> Response:
    return await _image_edit(request, OpenAIVariationsRequest, default_strength=0.6)
