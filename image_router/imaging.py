"""Image arithmetic the gateway does itself, off the event loop: upscaling a tier's
image to the size a client asked for (``resize: upscale``).

Upscaling is the one place the gateway makes pixels, so it is bounded twice: by the
output pixels of one request (:data:`~image_router.policy.size.MAX_UPSCALED_PIXELS`, checked
when the request is routed and again here) and by :data:`UPSCALE_SLOTS` resizes at
once, so concurrent requests queue instead of multiplying the process's memory.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from image_router.backends.base import ImageResult
from image_router.errors import BackendRejected
from image_router.policy.size import upscale_refusal

__all__ = ["UPSCALE_SLOTS", "upscaled"]

UPSCALE_SLOTS = 2  # of the machine's cores, at most this many resize at once
_slots: asyncio.Semaphore | None = None


def _resize(images: NDArray[Any], width: int, height: int) -> NDArray[Any]:
    out = [np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS)) for image in images]
    stacked: NDArray[Any] = np.stack(out).astype(np.uint8, copy=False)
    return stacked


def _semaphore() -> asyncio.Semaphore:
    global _slots
    if _slots is None:
        _slots = asyncio.Semaphore(UPSCALE_SLOTS)
    return _slots


async def upscaled(result: ImageResult, width: int, height: int) -> ImageResult:
    """``result`` resized to ``width`` x ``height`` with a Lanczos filter (in a thread: a
    1024x1024 image takes tens of milliseconds); ``memo["upscaled_from"]`` says from what.
    Over the output-pixel bound it is refused (a 400), never attempted."""
    pixels = await result.pixels()
    refusal = upscale_refusal(width, height, len(pixels))
    if refusal is not None:
        raise BackendRejected(refusal, field="n")
    made = f"{pixels.shape[2]}x{pixels.shape[1]}"
    async with _semaphore():
        images = await asyncio.to_thread(_resize, pixels, width, height)
    return ImageResult(images, result.model_version, memo={"upscaled_from": made}, compute_ns=result.compute_ns)
