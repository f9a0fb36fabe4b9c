"""Image-sized work off the event loop.

Encoding an answer — PNG, base64, a KServe tensor as JSON — costs time in proportion to
the image; on the event loop it stalls every other request (a 768x768 KServe JSON
answer once cost ~190 ms of loop time). Above :data:`INLINE_PIXELS` such work runs in
a bounded pool of threads: zlib releases the GIL while it compresses, and work that
holds the GIL is still cut into the interpreter's 5 ms switch intervals instead of
blocking the loop for its whole length. Small images (the draft and noop tiers) are
encoded inline: the hop to a thread costs more than they do.

One encoder is different: libavif (through Pillow) holds the GIL in stretches of about
5 ms (measured: a 768x768 AVIF encode left the loop's thread a 4-5 ms gap whatever the
switch interval; PNG, JPEG and WebP under 2 ms). Large AVIF encodes therefore run in a
small pool of *processes* (:func:`encode_images_off_loop`), started on first use, at a
lower scheduling priority than the gateway. A worker leaves when the gateway dies,
however it dies (:func:`_start_worker`): a SIGKILLed gateway on a plain host otherwise
left its workers, ~90 MB each, blocked on their queue for good.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import multiprocessing.connection
import os
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from numpy.typing import NDArray

from image_router.http.formats import encode_image

__all__ = ["GIL_BOUND_FORMATS", "INLINE_PIXELS", "encode_images_off_loop", "encode_off_loop", "shutdown_processes"]

T = TypeVar("T")

INLINE_PIXELS = 128 * 128  # per answer; at 128x128 a PNG encode is well under a millisecond
GIL_BOUND_FORMATS = frozenset({"avif"})  # encoders that hold the GIL for milliseconds
_POOL: CapacityLimiter | None = None
_PROCESSES: ProcessPoolExecutor | None = None


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


def _processes() -> ProcessPoolExecutor:
    global _PROCESSES
    if _PROCESSES is None:  # spawned, not forked: the gateway's threads and loop stay behind
        workers = max(1, min(2, os.cpu_count() or 1))
        _PROCESSES = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker
        )
    return _PROCESSES


def _start_worker() -> None:
    """Encoding is background work beside the loop: on a busy host the scheduler should
    run the gateway's requests first (nice 10). And a worker outlives no gateway: a
    daemon thread waits on the parent's sentinel (a pipe the parent holds open for as
    long as it lives, so it reads as closed the moment the parent is gone, SIGKILL
    included) and ends the worker then. ``PR_SET_PDEATHSIG`` would do it on Linux only,
    and fires when the *thread* that spawned the worker ends, not the process."""
    os.nice(10)
    parent = multiprocessing.parent_process()
    if parent is not None:
        threading.Thread(target=_exit_with, args=(parent.sentinel,), name="encode-parent-watch", daemon=True).start()


def _exit_with(sentinel: int) -> None:
    """End this worker once ``sentinel`` (the parent's) reads as closed. A gateway that
    forked without exec after the pool started would keep it open in the child; none does."""
    multiprocessing.connection.wait([sentinel])
    os._exit(0)  # no cleanup to run: the worker holds nothing but its queue ends


def _encode_all(images: NDArray[Any], fmt: str, quality: int) -> list[bytes]:
    return [encode_image(image, fmt, quality) for image in images]


async def encode_images_off_loop(images: NDArray[Any], fmt: str, quality: int) -> list[bytes]:
    """Each of ``images`` (``uint8[n, h, w, 3]``) encoded as ``fmt``: inline when small,
    on the thread pool, or — for an encoder that holds the GIL — in a worker process."""
    if fmt in GIL_BOUND_FORMATS and images.size // 3 >= INLINE_PIXELS:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(_processes(), _encode_all, images, fmt, quality)
    return await encode_off_loop(images, lambda: _encode_all(images, fmt, quality))


def shutdown_processes() -> None:
    global _PROCESSES
    if _PROCESSES is not None:
        _PROCESSES.shutdown(wait=False, cancel_futures=True)
        _PROCESSES = None
