"""Image health, judged by the pixels: the classic failures of a new diffusion
checkpoint are blank or constant images (NaNs turned black, a safety filter's black
square, a collapsed decoder), which an error rate never shows.

Both checks read a strided sample of at most ~64x64 pixels, so their cost does not
grow with the image: ~60 µs for :func:`degenerate` on this machine (512x512 or
1024x1024 alike), small enough for the event loop.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["degenerate", "difference", "thumbnail"]

SAMPLE_SIDE = 64
MIN_STD = 4.0  # of 255: below this the image is flat (blank, one colour)
MAX_MODAL_SHARE = 0.9  # one value covering this share of the sample: a flat image with specks


def _sample(image: NDArray[Any]) -> NDArray[Any]:
    h, w = image.shape[:2]
    return np.ascontiguousarray(image[:: max(1, h // SAMPLE_SIDE), :: max(1, w // SAMPLE_SIDE)])


def degenerate(image: NDArray[Any]) -> bool:
    """Blank, constant or otherwise flat: too little variation to be a picture."""
    sample = _sample(image)
    if sample.size == 0 or float(sample.std(dtype=np.float32)) < MIN_STD:
        return True
    if sample.ndim == 3 and sample.shape[-1] >= 3:
        flat = sample.reshape(-1, sample.shape[-1])
        grey = flat[:, 0].astype(np.uint16) + flat[:, 1] + flat[:, 2]  # a bincount of these: no sort
    else:
        grey = sample.ravel()
    return bool(int(np.bincount(grey).max()) / grey.size > MAX_MODAL_SHARE)


def difference(a: NDArray[Any], b: NDArray[Any]) -> float:
    """Mean absolute pixel difference in [0, 1] between two images of one request (1
    when their sizes differ)."""
    if a.shape != b.shape:
        return 1.0
    sa, sb = _sample(a).astype(np.int16), _sample(b).astype(np.int16)
    return float(np.abs(sa - sb).mean()) / 255.0


def thumbnail(image: NDArray[Any], side: int = 96) -> str:
    """A small JPEG as a data URI (a few KB: the status page polls it), for the
    gallery; run it in a thread."""
    from PIL import Image

    picture = Image.fromarray(np.ascontiguousarray(image))
    picture.thumbnail((side, side))
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()
