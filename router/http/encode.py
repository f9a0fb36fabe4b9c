"""Image-sized work off the event loop.

Encoding an answer — PNG, base64, a KServe tensor as JSON — costs time in proportion to
the image; on the event loop it stalls every other request (a 768x768 KServe JSON
answer once cost ~190 ms of loop time). Above :data:`INLINE_PIXELS` such work runs in
a bounded pool of threads: zlib releases the GIL while it compresses, and work that
holds the GIL is still cut into the interpreter's 5 ms switch intervals instead of
blocking the loop for its whole length. Small images (the draft and noop tiers) are
encoded inline: the hop to a thread costs more than they do.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from numpy.typing import NDArray

__all__ = ["INLINE_PIXELS", "encode_off_loop"]

T = TypeVar("T")

INLINE_PIXELS = 128 * 128  # per answer; at 128x128 a PNG encode is well under a millisecond
_POOL: CapacityLimiter | None = None


def _pool() -> CapacityLimiter:
    """At most one encoding per core at a time: more would only queue for the GIL."""
    global _POOL
    if _POOL is None:  # made on first use, inside the running loop
        _POOL = CapacityLimiter(os.cpu_count() or 2)
    return _POOL


async def encode_off_loop(images: NDArray[Any], fn: Callable[[], T]) -> T:
    """``fn()``, which encodes ``images`` (``uint8[..., 3]``): inline when they hold
    fewer than :data:`INLINE_PIXELS` pixels, else on the encoding pool."""
    if images.size // 3 < INLINE_PIXELS:
        return fn()
    return await anyio.to_thread.run_sync(fn, limiter=_pool())
