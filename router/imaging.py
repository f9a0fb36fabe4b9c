"""Image arithmetic the gateway does itself, off the event loop: upscaling a tier's
image to the size a client asked for (``resize: upscale``)."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from router.backends.base import ImageResult

__all__ = ["upscaled"]


def _resize(images: NDArray[Any], width: int, height: int) -> NDArray[Any]:
    out = [np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.LANCZOS)) for image in images]
    stacked: NDArray[Any] = np.stack(out).astype(np.uint8, copy=False)
    return stacked


async def upscaled(result: ImageResult, width: int, height: int) -> ImageResult:
    """``result`` resized to ``width`` x ``height`` with a Lanczos filter (in a thread: a
    1024x1024 image takes tens of milliseconds); ``memo["upscaled_from"]`` says from what."""
    pixels = await result.pixels()
    made = f"{pixels.shape[2]}x{pixels.shape[1]}"
    images = await asyncio.to_thread(_resize, pixels, width, height)
    return ImageResult(images, result.model_version, memo={"upscaled_from": made})
